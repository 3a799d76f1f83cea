"""Model loading: demo, module:factory, file.py:factory, weights, YOLOv5-style checkpoints, TorchScript, ONNX."""
import os
import sys

import pytest
import torch

from edgekit.contract.errors import EdgekitError
from edgekit.host.model.loading import load_model


def test_file_factory_with_state_dict_weights(zoo_file, tmp_path):
    loaded = load_model("%s:depthwise" % zoo_file)
    assert loaded.task == "classify" and loaded.output_layout == "logits"
    assert loaded.class_names == ["class%d" % i for i in range(10)]
    assert loaded.module is not None and not loaded.module.training
    # Weights saved as fp16 come back as float32, with a note.
    torch.manual_seed(5)
    other = load_model("%s:depthwise" % zoo_file).module
    for p in other.parameters():
        p.data.normal_()
    path = tmp_path / "w.pt"
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in other.state_dict().items()}, str(path))
    again = load_model("%s:depthwise" % zoo_file, weights=str(path))
    assert any("float32" in n for n in again.notes)
    assert torch.allclose(again.module.fc.weight, other.fc.weight.half().float())
    assert again.module.fc.weight.dtype == torch.float32


def test_module_factory_via_code_path(zoo_file, tmp_path):
    folder = os.path.dirname(zoo_file)
    loaded = load_model("zoo_models:tiny_yolo", code_path=folder)
    assert loaded.task == "detect" and loaded.output_layout == "yolov5"
    assert loaded.class_names == ["cat", "dog", "bird"]
    sys.modules.pop("zoo_models", None)


def test_weights_that_do_not_fit(zoo_file, tmp_path):
    path = tmp_path / "bad.pt"
    torch.save({"fc.weight": torch.zeros(3, 3)}, str(path))
    with pytest.raises(EdgekitError, match="do not fit the model"):
        load_model("%s:depthwise" % zoo_file, weights=str(path))
    pickled = tmp_path / "pickled.pt"
    torch.save({"model": torch.nn.Linear(2, 2)}, str(pickled))
    with pytest.raises(EdgekitError, match="weights_only=True"):
        load_model("%s:depthwise" % zoo_file, weights=str(pickled))


def test_yolov5_style_checkpoint_needs_trust_and_code_path(yolo_checkpoint):
    ckpt, code, package = yolo_checkpoint
    with pytest.raises(EdgekitError) as info:
        load_model(ckpt)
    assert "pickled model object" in info.value.problem and "--trust-checkpoint" in info.value.fix
    with pytest.raises(EdgekitError) as info:
        load_model(ckpt, trust_checkpoint=True)
    assert "needs Python module '%s" % package in info.value.problem and "--code-path" in info.value.fix
    loaded = load_model(ckpt, trust_checkpoint=True, code_path=code)
    assert loaded.task == "detect" and loaded.output_layout == "yolov5"
    assert loaded.class_names == ["cat", "dog", "bird"]
    assert all(p.dtype == torch.float32 for p in loaded.module.parameters())
    assert any("float16" in n for n in loaded.notes)
    # YOLOv5 heads are switched to their single-tensor export output.
    assert loaded.module.detect.export is True
    out = loaded.module(torch.zeros(1, 3, 64, 64))
    assert len(out) == 1 and out[0].shape == (1, 2 * (32 * 32 + 16 * 16), 8)


def test_yolov5_style_checkpoint_prunes_aligned(yolo_checkpoint):
    from edgekit.host.prune import PruneConfig, prune_model

    ckpt, code, _ = yolo_checkpoint
    loaded = load_model(ckpt, trust_checkpoint=True, code_path=code)
    result = prune_model(loaded.module, torch.zeros(1, 3, 64, 64), PruneConfig(ratio=0.5, alignment=8))
    assert result.report.ok and result.report.params_after < result.report.params_before


def test_state_dict_file_as_model_is_refused(tmp_path):
    path = tmp_path / "sd.pt"
    torch.save(torch.nn.Conv2d(3, 8, 3).state_dict(), str(path))
    with pytest.raises(EdgekitError, match="holds only weights"):
        load_model(str(path))


def test_torchscript_is_refused(tmp_path, zoo):
    path = tmp_path / "model.pt"
    torch.jit.save(torch.jit.trace(zoo.Concat().eval(), torch.zeros(1, 3, 32, 32)), str(path))
    with pytest.raises(EdgekitError, match="TorchScript file, which is not prunable"):
        load_model(str(path))


def test_onnx_input_skips_the_module(tmp_path, zoo):
    path = tmp_path / "m.onnx"
    model = zoo.TinyYolo().eval()
    model.detect.export = True
    torch.onnx.export(model, (torch.zeros(1, 3, 64, 64),), str(path), dynamo=False, opset_version=13)
    loaded = load_model(str(path))
    assert loaded.module is None and loaded.onnx_path == str(path)
    assert loaded.task == "detect" and loaded.output_layout == "yolov5" and loaded.input_size == (64, 64)
    assert loaded.class_names == ["class0", "class1", "class2"]
    with pytest.raises(EdgekitError, match="does not apply to an ONNX model"):
        load_model(str(path), weights=str(path))


@pytest.mark.parametrize(
    "ref,text",
    [
        ("nosuchfile.pt", "does not exist"),
        ("no_such_module_xyz:factory", "cannot import module"),
        ("edgekit.host.model.loading:nothing_here", "has no callable"),
        ("edgekit.host.model.loading:_short", "raised TypeError"),
        ("something", "cannot tell what model"),
        ("missing.onnx", "does not exist"),
    ],
)
def test_bad_references(ref, text):
    with pytest.raises(EdgekitError, match=text):
        load_model(ref)


def test_code_path_must_be_a_folder(tmp_path):
    with pytest.raises(EdgekitError, match="--code-path"):
        load_model("demo", code_path=str(tmp_path / "nope"))


def test_demo_with_weights_file(tmp_path):
    """`demo` with --weights: the demo architecture with the given state_dict (no shipped weights needed)."""
    from edgekit.host.demo import INPUT_SIZE, build_demo_model

    torch.manual_seed(0)
    model = build_demo_model()
    path = tmp_path / "demo.pt"
    torch.save(model.state_dict(), str(path))
    loaded = load_model("demo", weights=str(path))
    assert loaded.output_layout == "yolov5" and loaded.input_size == tuple(INPUT_SIZE)
    assert len(loaded.class_names) == 8 and loaded.category_ids and len(loaded.category_ids) == 8
    assert torch.equal(loaded.module.stem.conv.weight, model.stem.conv.weight)


def test_pruned_model_round_trip(zoo_file, tmp_path):
    """A model written by save_pruned loads with weights_only=True into the unpruned definition."""
    from edgekit.host.prune import PruneConfig, prune_model, save_pruned

    loaded = load_model("%s:depthwise" % zoo_file)
    result = prune_model(loaded.module, torch.zeros(1, 3, 32, 32), PruneConfig(ratio=0.5))
    path = tmp_path / "pruned.pt"
    save_pruned(result.model, str(path), {"input_size": [32, 32], "output_layout": "logits"})
    data = torch.load(str(path), weights_only=True)  # plain data, no code
    assert data["format"] == "edgekit-pruned/1"
    again = load_model("%s:depthwise" % zoo_file, weights=str(path))
    assert again.input_size == (32, 32)
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(again.module(x), result.model(x), atol=1e-6)
    assert again.module.dw[0].groups == again.module.dw[0].out_channels == result.model.dw[0].out_channels
    # The wrong definition is refused in one line.
    with pytest.raises(EdgekitError, match="does not fit this model"):
        load_model("%s:tiny_yolo" % zoo_file, weights=str(path))
