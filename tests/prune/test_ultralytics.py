"""Ultralytics YOLOv8 and YOLO11, built from the ``ultralytics`` package's own
yaml files with random weights (nothing is downloaded): verified rewrites,
pruning at 0.3/0.5 with alignment 8/16, export-mode outputs, checkpoints.

``make venv`` installs ultralytics with --no-deps plus cv2 and yaml; torchvision,
which it imports, has no build for this torch, so tests/ultralytics_shim
stands in for it (import-time names only; edgekit itself never imports it).
Outside CI the tests skip when ultralytics is not installed.
"""
import os
import sys

import pytest
import torch

from edgekit.host.prune import PruneConfig, prune_model
from edgekit.host.prune import rewrites as R
from edgekit.host.prune.graph import flat_outputs

HERE = os.path.dirname(os.path.abspath(__file__))
SHIM = os.path.join(os.path.dirname(HERE), "ultralytics_shim")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
SIZE = 256  # YOLO models take any multiple of 32; small keeps the tests fast
ANCHORS = (SIZE // 8) ** 2 + (SIZE // 16) ** 2 + (SIZE // 32) ** 2  # 1344: one per cell of strides 8, 16, 32


def ultralytics_env(config_dir: str) -> dict:
    """Environment for a process that imports ultralytics here: the shim on the path, offline, settings in ``config_dir``."""
    env = dict(os.environ)
    shim = [SHIM] if SHIM in sys.path else []  # the `tasks` fixture put it there: no real torchvision here
    env["PYTHONPATH"] = os.pathsep.join(shim + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.update(YOLO_OFFLINE="1", YOLO_CONFIG_DIR=config_dir, YOLO_VERBOSE="False")
    return env


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    try:
        import torchvision  # noqa: F401  (a real one, where installed)
    except ImportError:
        sys.path.insert(0, SHIM)
        sys.modules.pop("torchvision", None)
    os.environ.setdefault("YOLO_OFFLINE", "1")  # no downloads, no update checks
    os.environ.setdefault("YOLO_CONFIG_DIR", str(tmp_path_factory.mktemp("ultralytics-config")))
    os.environ.setdefault("YOLO_VERBOSE", "False")
    if IN_CI:
        import ultralytics.nn.tasks as tasks  # CI installs it (Makefile venv): a missing package is a failure there
    else:
        tasks = pytest.importorskip("ultralytics.nn.tasks")
    return tasks


def build(tasks, yaml: str):
    torch.manual_seed(0)
    return tasks.DetectionModel(yaml, verbose=False).eval()


def export_output(model, x):
    """What is exported: the model with its Detect head in export mode."""
    heads = R.set_export_mode(model)
    try:
        with torch.no_grad():
            return model(x)
    finally:
        R.restore_mode(model, heads)


def real_images(count: int = 2) -> torch.Tensor:
    """Demo calibration images (shapes and glyphs on clutter), letterboxed to SIZE."""
    from edgekit.calibration.images import load_images
    from edgekit.calibration.preprocess import PreprocessSpec
    from edgekit.host.demo import demo_data

    batch = load_images(demo_data().calib_dir, PreprocessSpec(size=[SIZE, SIZE]), count=count)
    return torch.cat([torch.from_numpy(batch.tensor(i)) for i in range(len(batch))], 0).float()


@pytest.mark.parametrize("yaml,cut", [("yolov8n.yaml", 8), ("yolo11n.yaml", 9)])
def test_rewrite_is_numerically_equal_and_keeps_ultralytics_classes(tasks, yaml, cut):
    from ultralytics.nn.modules import C2f, Conv

    model = build(tasks, yaml)
    images = real_images()
    before = export_output(model, images)
    R.set_export_mode(model)
    result = R.rewrite_splits(model, [images], R.head_prefixes(model))
    R.restore_mode(model, R.head_prefixes(model))
    assert [r.name for r in result.rewritten][:2] == ["model.2.cv1", "model.4.cv1"] and len(result.rewritten) == cut
    assert result.refused == {} and result.inputs == 2 and result.max_abs_diff <= R.ATOL
    after = export_output(model, images)
    assert after.shape == before.shape == (2, 84, ANCHORS)
    assert torch.allclose(after, before, rtol=R.RTOL, atol=R.ATOL)
    block = model.model[2]
    assert isinstance(block, C2f) and isinstance(block.cv1, R.SplitConv)  # Ultralytics' own block, its forward as written
    assert all(isinstance(p, Conv) for p in block.cv1.pieces) and [p.conv.out_channels for p in block.cv1.pieces] == [block.c, block.c]
    if yaml == "yolo11n.yaml":
        assert result.opaque == ["model.10.m.0.attn"]


def test_a_rewrite_that_changes_the_outputs_is_undone(tasks):
    # A block that uses the cut tensor as a whole as well: the rewrite cannot serve it.
    from torch import nn
    from ultralytics.nn.modules import Conv

    class Both(nn.Module):
        def __init__(self):
            super().__init__()
            self.cv1 = Conv(3, 16, 3, 2)
            self.cv2 = Conv(16, 8, 1)

        def forward(self, x):
            y = self.cv1(x)
            a, b = y.chunk(2, 1)
            return self.cv2(torch.cat([a, b[:, :4] * 2, y[:, :4]], 1))

    model = Both().eval()
    x = torch.rand(1, 3, 32, 32)
    ref = model(x)
    result = R.rewrite_splits(model, [x])
    assert result.rewritten == [] and "cv1" in result.refused and "changes the outputs" in result.refused["cv1"]
    assert isinstance(model.cv1, Conv) and torch.equal(model(x), ref)
    # ... and pruning keeps that layer whole instead of refusing the model.
    pruned = prune_model(model, x, PruneConfig(ratio=0.5))
    assert pruned.report.runs and pruned.report.outputs_unchanged
    assert any(e["group"] == "cv1.conv" for e in pruned.report.excluded)


def _check_pruned(model, result, alignment, yaml):
    report = result.report
    # YOLO11n's first C3k2 bottleneck (model.2.m.0) is 8 channels wide: at
    # alignment 16 no pruning can align it (pruning removes channels, never
    # adds), and the report says so; every other conv outside the head is aligned.
    narrow = {"model.2.m.0.cv1.conv"} if (yaml.startswith("yolo11n") and alignment == 16) else set()
    assert report.runs and report.outputs_unchanged
    assert report.aligned == (not narrow), report.problems
    if narrow:
        assert len(report.problems) == 2 and "'model.2.m.0.cv1.conv' keeps 8 output channels" in report.problems[0] and "fewer than one unit of 16" in report.problems[0]
        assert "'model.2.m.0.cv2.conv' has 8 input channels" in report.problems[1]
    assert report.outputs_before == report.outputs_after == [[1, 84, ANCHORS]]
    head = "model.%d." % (len(model.model) - 1)
    for row in report.layers:
        if row.name.startswith(head):
            continue
        if row.name in narrow:
            assert row.out_before == row.out_after == 8
            continue
        assert row.out_after % alignment == 0, row
        assert row.input_is_image or row.in_after % alignment == 0 or row.in_before == 8, row
    assert report.macs_after < 0.8 * report.macs_before and report.params_after < report.params_before
    excluded = {e["group"]: e["block"] for e in report.excluded}
    if yaml.startswith("yolo11"):
        assert excluded == {"model.10.cv1.pieces.1.conv": "model.10.m.0.attn (Attention)"}
    else:
        assert excluded == {}
    from ultralytics.nn.modules import C2f, Detect

    pruned = result.model
    assert type(pruned).__name__ == "DetectionModel" and isinstance(pruned.model[2], C2f) and isinstance(pruned.model[-1], Detect)
    assert pruned.model[-1].export is False  # the user's mode is given back
    x = torch.rand(1, 3, SIZE, SIZE)
    out = export_output(pruned, x)
    assert list(out.shape) == report.outputs_before[0]
    with torch.no_grad():
        y, preds = pruned(x)  # and in eval mode it still returns what Ultralytics' own code expects
    assert torch.allclose(y, out) and set(preds) >= {"boxes", "scores", "feats"}


@pytest.mark.slow
@pytest.mark.parametrize(
    "yaml,ratio,alignment",
    [("yolov8n.yaml", 0.5, 8), ("yolov8n.yaml", 0.3, 16), ("yolo11n.yaml", 0.5, 16), ("yolo11n.yaml", 0.3, 8)],
)
def test_prune_yolov8_and_yolo11_aligned_with_export_outputs_unchanged(tasks, yaml, ratio, alignment):
    model = build(tasks, yaml)
    result = prune_model(model, torch.rand(1, 3, SIZE, SIZE), PruneConfig(ratio=ratio, alignment=alignment))
    _check_pruned(model, result, alignment, yaml)
    assert isinstance(model.model[2].cv1, type(model.model[1]))  # the caller's model is untouched (no rewrite in place)
    if yaml.startswith("yolo11") and ratio == 0.3:
        # Recovery trains through the rewrites: gradients reach every piece and, through the one-node wrapper, the attention.
        pruned = result.model
        pruned.train()
        loss = sum(t.float().square().mean() for t in flat_outputs(pruned(torch.rand(2, 3, SIZE, SIZE))))  # train mode: the raw maps
        loss.backward()
        params = dict(pruned.named_parameters())
        for name in ("model.2.cv1.pieces.0.conv.weight", "model.2.cv1.pieces.1.conv.weight", "model.10.m.0.attn.block.qkv.conv.weight"):
            assert params[name].grad is not None and float(params[name].grad.abs().sum()) > 0, name


def save_ultralytics_checkpoint(tasks, yaml: str, path: str, imgsz: int = SIZE) -> str:
    """A checkpoint as Ultralytics' trainer leaves it after strip_optimizer: fp16 model (the EMA), frozen, 'ema' None, train_args."""
    from edgekit.host.demo import CLASS_NAMES

    torch.manual_seed(0)
    model = tasks.DetectionModel(yaml, nc=len(CLASS_NAMES), verbose=False)
    model.names = dict(enumerate(CLASS_NAMES))
    model = model.half()
    for p in model.parameters():
        p.requires_grad_(False)
    torch.save(
        {
            "date": "2026-12-02T00:00:00",
            "version": "8.4.190",
            "license": "AGPL-3.0 License (https://ultralytics.com/license)",
            "epoch": -1,
            "best_fitness": None,
            "model": model,
            "ema": None,
            "updates": 100,
            "optimizer": None,
            "train_args": {"model": yaml, "imgsz": imgsz, "epochs": 1},
            "train_metrics": {},
        },
        path,
    )
    return path


@pytest.mark.parametrize("yaml", ["yolov8n.yaml", "yolo11n.yaml"])
def test_ultralytics_checkpoint_loads_without_code_path(tasks, tmp_path, yaml):
    from edgekit.contract.errors import EdgekitError
    from edgekit.host.demo import CLASS_NAMES
    from edgekit.host.model.loading import load_model

    path = save_ultralytics_checkpoint(tasks, yaml, str(tmp_path / "best.pt"))
    with pytest.raises(EdgekitError, match="--trust-checkpoint"):
        load_model(path)
    loaded = load_model(path, trust_checkpoint=True)
    assert loaded.output_layout == "yolov8" and loaded.task == "detect"
    assert loaded.class_names == list(CLASS_NAMES) and loaded.input_size == (SIZE, SIZE)
    assert any(n.startswith("Ultralytics 8.4.190 checkpoint (DetectionModel, 8 classes, trained at 256x256)") for n in loaded.notes)
    assert any("float16 to float32" in n for n in loaded.notes)
    # strip_optimizer froze everything; recovery needs it trainable (Ultralytics' trainer keeps only the DFL frozen).
    assert any("frozen parameter(s) made trainable" in n for n in loaded.notes)
    assert all(p.requires_grad == (".dfl" not in n) for n, p in loaded.module.named_parameters())
    module = loaded.module
    assert {p.dtype for p in module.parameters()} == {torch.float32} and module.model[-1].export is True
    with torch.no_grad():
        out = module(torch.rand(1, 3, SIZE, SIZE))
    assert list(out.shape) == [1, 4 + len(CLASS_NAMES), ANCHORS]


@pytest.mark.slow
def test_build_pruned_yolo11_checkpoint_and_run_it_on_the_agent(tasks, tmp_path):
    """`edgekit build --profile hisilicon --model best.pt --trust-checkpoint --prune 0.5`, then the agent (decode, mAP) on it."""
    import json
    import subprocess

    from edgekit.host.demo import demo_data

    data = demo_data()
    path = save_ultralytics_checkpoint(tasks, "yolo11n.yaml", str(tmp_path / "best.pt"))
    env = ultralytics_env(str(tmp_path / "ultralytics-config"))
    env["HOME"] = str(tmp_path / "home")
    cli = [sys.executable, "-c", "from edgekit.host.cli.main import main; main()"]
    bundle = str(tmp_path / "bundle")
    build = subprocess.run(
        cli + ["build", "--profile", "hisilicon", "--model", path, "--trust-checkpoint", "--prune", "0.5", "--variants", "fp32", "--recover-steps", "2",
               "--calib", data.calib_dir, "--calib-images", "8", "--eval", data.val_annotations, "--eval-images", "8", "--out", bundle],
        cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=600,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    with open(os.path.join(bundle, "manifest.json")) as f:
        manifest = json.load(f)
    post = manifest["postprocess"]
    assert post["layout"] == "yolov8" and len(post["class_names"]) == 8 and manifest["model"]["input_size"] == [SIZE, SIZE]
    [variant] = manifest["variants"]
    prune = variant["prune"]
    assert prune["aligned"] is True and prune["ratio"] == 0.5 and prune["macs"]["reduction"] > 0.4
    assert prune["recovery"]["steps"] == 2 and prune["recovery"]["layout"] == "yolov8"
    with open(os.path.join(bundle, prune["report"])) as f:
        report = json.load(f)
    assert [e["block"] for e in report["excluded"]] == ["model.10.m.0.attn (Attention)"] and report["outputs"] == {"before": [[1, 12, ANCHORS]], "after": [[1, 12, ANCHORS]], "unchanged": True}
    deploy = subprocess.run(
        cli + ["deploy", "local", "--bundle", bundle, "--iterations", "3", "--warmup", "1", "--max-images", "8"],
        cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=600,
    )
    assert deploy.returncode == 0, deploy.stderr[-2000:]
    [result_file] = [os.path.join(d, f) for d, _, fs in os.walk(str(tmp_path / "results")) for f in fs if f.endswith(".json")]
    with open(result_file) as f:
        run = json.load(f)["runs"][0]
    assert run["status"] == "ok"
    assert run["accuracy"]["images"] == 8  # decoded and scored (random weights: mAP near 0 is the honest number)


def test_pruned_file_loads_into_the_unrewritten_definition(tasks, tmp_path):
    # edgekit prune writes plain data; loading it rebuilds the rewritten structure (pieces, attention wrapper) first.
    from edgekit.host.prune import load_pruned_state, save_pruned

    model = build(tasks, "yolo11n.yaml")
    x = torch.rand(1, 3, SIZE, SIZE)
    result = prune_model(model, x, PruneConfig(ratio=0.5, alignment=8))
    path = save_pruned(result.model, str(tmp_path / "model.pt"))
    fresh = load_pruned_state(build(tasks, "yolo11n.yaml"), torch.load(path, weights_only=True)).eval()
    assert isinstance(fresh.model[2].cv1, R.SplitConv) and isinstance(fresh.model[10].m[0].attn, R.Opaque)
    assert torch.equal(export_output(fresh, x), export_output(result.model, x))


def test_an_attention_block_that_cannot_run_whole_is_left_as_it_was():
    # Named like Ultralytics' Attention, but called with two arguments: the
    # one-node wrapper does not fit it, so it is undone (and the split rewrite still happens).
    from torch import nn

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = nn.Conv2d(8, 8, 1)

        def forward(self, x, scale):
            return self.qkv(x) * scale

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.cv1 = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.SiLU())
            self.attn = Attention()
            self.cv2 = nn.Conv2d(16, 4, 1)

        def forward(self, x):
            a, b = self.cv1(x).chunk(2, 1)
            return self.cv2(torch.cat([a, self.attn(b, 0.5)], 1))

    model = Net().eval()
    x = torch.rand(2, 3, 32, 32)
    ref = model(x)
    result = R.rewrite_splits(model, [x])
    assert result.opaque == [] and "running it as one node changes the outputs" in result.refused["attn"]
    assert [r.name for r in result.rewritten] == ["cv1"] and isinstance(model.attn, Attention)
    assert torch.allclose(model(x), ref, rtol=R.RTOL, atol=R.ATOL)
