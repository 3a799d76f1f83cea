"""YOLOv5 ``train.py`` checkpoints: {'model': model.half(), 'ema': ema.half(), 'optimizer': ..., 'epoch': ...}.

The structure is reproduced with the synthetic TinyYolo (YOLOv5's own code is
not ours to commit): the EMA differs from the model and is frozen, as
``ModelEMA`` leaves it; ``model`` has one layer frozen, as ``train.py --freeze`` does.
"""
import json
import sys
from copy import deepcopy

import numpy as np
import pytest
import torch
from PIL import Image

from edgekit.host.model.loading import load_model

from .conftest import fake_yolo_module


def _save_train_checkpoint(tmp_path, ema=True):
    with fake_yolo_module(tmp_path) as (mod, code, package):
        torch.manual_seed(0)
        model = mod.TinyYolo()
        for p in model.b1.parameters():  # train.py --freeze
            p.requires_grad_(False)
        average = deepcopy(model).eval()
        with torch.no_grad():
            for p in average.parameters():
                p.mul_(0.5)
                p.requires_grad_(False)  # ModelEMA freezes every EMA parameter
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
        model.train()
        sum(r.sum() for r in model(torch.rand(1, 3, 64, 64))).backward()
        opt.step()
        ckpt = {
            "epoch": 4,
            "best_fitness": np.array([0.25]),
            "model": deepcopy(model).half(),
            "ema": deepcopy(average).half() if ema else None,
            "updates": 40,
            "optimizer": opt.state_dict() if ema else None,
            "opt": {"epochs": 5, "imgsz": 64, "freeze": [0]},
            "git": {"remote": None, "branch": None, "commit": None},
            "date": "2026-12-02T12:00:00",
        }
        path = tmp_path / "last.pt"
        torch.save(ckpt, str(path))
        expected = {k: v.half().float() for k, v in (average if ema else model).state_dict().items() if v.is_floating_point()}
    return str(path), str(code), package, expected


@pytest.fixture()
def train_checkpoint(tmp_path):
    path, code, package, expected = _save_train_checkpoint(tmp_path)
    yield path, code, expected
    if code in sys.path:
        sys.path.remove(code)
    for key in [k for k in sys.modules if k == package or k.startswith(package + ".")]:
        del sys.modules[key]


def test_train_checkpoint_loads_the_ema_as_float_with_the_models_trainability(train_checkpoint):
    path, code, expected = train_checkpoint
    loaded = load_model(path, trust_checkpoint=True, code_path=code)
    module = loaded.module
    assert loaded.output_layout == "yolov5" and loaded.class_names == ["cat", "dog", "bird"]
    state = module.state_dict()
    assert all(torch.equal(state[k], v) for k, v in expected.items())  # the EMA's weights (half of the model's), as float32
    assert all(p.dtype == torch.float32 for p in module.parameters())
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert trainable and not any(n.startswith("b1.") for n in trainable)  # frozen in 'model' stays frozen
    assert all(p.requires_grad for n, p in module.named_parameters() if not n.startswith("b1."))
    assert any("EMA weights" in n and "frozen as in 'model'" in n for n in loaded.notes)
    assert any("float16" in n for n in loaded.notes)


def test_stripped_train_checkpoint_without_ema_loads_model(tmp_path):
    # train.py's strip_optimizer: {'model': ema.half(), 'ema': None, 'optimizer': None, ...}
    path, code, package, expected = _save_train_checkpoint(tmp_path, ema=False)
    try:
        loaded = load_model(path, trust_checkpoint=True, code_path=code)
        state = loaded.module.state_dict()
        assert all(torch.equal(state[k], v) for k, v in expected.items())
        assert not any("EMA" in n for n in loaded.notes)
    finally:
        if code in sys.path:
            sys.path.remove(code)
        for key in [k for k in sys.modules if k == package or k.startswith(package + ".")]:
            del sys.modules[key]


def test_train_checkpoint_prunes_and_recovers_from_the_cli(train_checkpoint, run_cli, capsys, tmp_path):
    # Before: the EMA's frozen parameters left recovery "no trainable parameters".
    path, code, _ = train_checkpoint
    calib = tmp_path / "calib"
    calib.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(str(calib / ("%d.png" % i)))
    out = tmp_path / "out"
    args = ["prune", "--model", path, "--trust-checkpoint", "--code-path", code, "--input-size", "64", "--ratio", "0.5", "--profile", "hisilicon"]
    code_, stdout, stderr = run_cli(args + ["--calib", str(calib), "--recover-steps", "2", "--device", "cpu", "--json", "--out", str(out)], capsys)
    assert code_ == 0, stderr
    report = json.loads(stdout)
    assert report["recovery"]["steps"] == 2 and report["recovery"]["layout"] == "yolov5" and report["aligned"]
    assert report["params"]["after"] < report["params"]["before"] and (out / "model.pt").is_file()
