"""The demo detector: output contract, shipped weights, and the mAP the README states."""
import os
import re

import pytest
import torch

from edgekit.host.demo import (
    CATEGORY_IDS,
    CLASS_NAMES,
    INPUT_SIZE,
    WEIGHTS_PATH,
    build_demo_model,
    evaluate_torch,
    load_demo_model,
    postprocess_spec,
    preprocess_spec,
)
from edgekit.contract.errors import EdgekitError

README_LINE = re.compile(r"^Demo detector on its validation split \(pycocotools\): mAP@0\.5:0\.95 = (0\.\d{3}), mAP@0\.5 = (0\.\d{3})$", re.M)


def test_export_mode_output_has_yolov5_layout():
    model = load_demo_model(pretrained=False)
    h, w = INPUT_SIZE
    with torch.no_grad():
        out = model(torch.rand(1, 3, h, w))
    cells = sum((h // s) * (w // s) for s in (8, 16, 32))
    assert out.shape == (1, 3 * cells, 5 + len(CLASS_NAMES))
    assert out.dtype == torch.float32
    # Decoded: centres inside the input (up to the head's half-cell reach), scores in [0, 1].
    assert float(out[..., 0].min()) > -0.5 * 32 and float(out[..., 0].max()) < w + 0.5 * 32
    assert float(out[..., 4:].min()) >= 0.0 and float(out[..., 4:].max()) <= 1.0
    assert (out[..., 2:4] >= 0).all()


def test_train_mode_returns_raw_maps_per_scale():
    model = build_demo_model().train()
    raw = model(torch.rand(2, 3, 64, 96))
    assert [tuple(r.shape) for r in raw] == [(2, 3, 8, 12, 13), (2, 3, 4, 6, 13), (2, 3, 2, 3, 13)]


def test_specs_describe_the_demo():
    pre, post = preprocess_spec(), postprocess_spec()
    assert pre.size == INPUT_SIZE and pre.resize == "letterbox" and pre.layout == "NCHW"
    assert post.layout == "yolov5" and post.class_names == CLASS_NAMES and post.category_ids == CATEGORY_IDS
    # Round trip through the manifest form.
    assert type(pre).from_dict(pre.to_dict()) == pre
    assert type(post).from_dict(post.to_dict()).to_dict() == post.to_dict()


def test_shipped_weights_are_small_and_load_with_weights_only():
    assert os.path.isfile(WEIGHTS_PATH)
    assert os.path.getsize(WEIGHTS_PATH) < 5 * 1024 * 1024
    state = torch.load(WEIGHTS_PATH, map_location="cpu", weights_only=True)
    fresh = build_demo_model().state_dict()
    assert set(state) == set(fresh)
    for key, value in state.items():
        assert value.shape == fresh[key].shape, key
    model = load_demo_model()
    assert not model.training
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_missing_or_broken_weights_are_one_line_errors(tmp_path):
    with pytest.raises(EdgekitError) as err:
        load_demo_model(weights=str(tmp_path / "nope.pt"))
    assert "missing" in str(err.value) and err.value.fix
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(EdgekitError) as err:
        load_demo_model(weights=str(bad))
    assert "\n" not in str(err.value)
    wrong = tmp_path / "wrong.pt"
    torch.save({"stem.conv.weight": torch.zeros(1)}, str(wrong))
    with pytest.raises(EdgekitError) as err:
        load_demo_model(weights=str(wrong))
    assert "do not fit" in str(err.value)


@pytest.fixture(scope="module")
def readme_map(repo_root):
    with open(os.path.join(repo_root, "README.md")) as f:
        found = README_LINE.findall(f.read())
    assert len(found) == 1, "README.md must state the demo's mAP in exactly one line"
    return float(found[0][0]), float(found[0][1])


def test_shipped_weights_reach_the_readme_map(demo_dataset, val_coco, readme_map, one_thread):
    stats = evaluate_torch(load_demo_model(), demo_dataset)
    reported_map, reported_map50 = readme_map
    assert stats["map"] >= reported_map - 0.01, stats
    assert stats["map50"] >= reported_map50 - 0.01, stats
    assert len(val_coco.getImgIds()) >= 200  # the full split, not a sample


def test_untrained_model_scores_nothing(demo_dataset, one_thread):
    # The metric must be able to fail: random weights find (almost) nothing.
    stats = evaluate_torch(load_demo_model(pretrained=False), demo_dataset, limit=16)
    assert stats["map"] < 0.01
