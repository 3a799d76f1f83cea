"""The optional modelopt int8 tool: off by default, one-line errors, and (where installed) a TensorRT-rules-clean graph."""
import onnx
import pytest

from edgekit.contract.errors import EdgekitError
from edgekit.host.profiles import load_profile
from edgekit.host.quantize import quantize_int8
from edgekit.host.quantize.trt_rules import tensorrt_violations


def _modelopt_usable():
    try:
        import modelopt.onnx.quantization  # noqa: F401
    except Exception:
        return False
    return True


def test_modelopt_is_refused_for_a_cpu_scheme_before_any_work(demo_onnx, demo_calib, tmp_path):
    with pytest.raises(EdgekitError) as info:
        quantize_int8(demo_onnx[1], str(tmp_path / "x.onnx"), demo_calib, load_profile("cpu"), "minmax", 8, 0.0, "yolov5", str(tmp_path), tool="modelopt")
    assert "scheme is u8s8" in info.value.problem and not list(tmp_path.iterdir())


def test_unknown_tool_from_the_environment_is_one_line(demo_onnx, demo_calib, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKIT_INT8_TOOL", "tensorrt-magic")
    with pytest.raises(EdgekitError) as info:
        quantize_int8(demo_onnx[1], str(tmp_path / "x.onnx"), demo_calib, load_profile("jetson"), "minmax", 8, 0.0, "yolov5", str(tmp_path))
    assert "unknown int8 tool 'tensorrt-magic'" in info.value.problem and "onnxruntime, modelopt" in info.value.fix


@pytest.mark.skipif(_modelopt_usable(), reason="nvidia-modelopt is installed here")
def test_modelopt_missing_says_how_to_get_it(demo_onnx, demo_calib, tmp_path):
    with pytest.raises(EdgekitError) as info:
        quantize_int8(demo_onnx[1], str(tmp_path / "x.onnx"), demo_calib, load_profile("jetson"), "minmax", 8, 0.0, "yolov5", str(tmp_path), tool="modelopt")
    assert "modelopt is not usable here" in info.value.problem and "docs/build.md" in info.value.fix


@pytest.mark.skipif(not _modelopt_usable(), reason="nvidia-modelopt not installed (optional; docs/build.md)")
def test_modelopt_graph_passes_the_tensorrt_rules(demo_onnx, demo_calib, tmp_path):
    out = str(tmp_path / "int8.onnx")
    result = quantize_int8(demo_onnx[1], out, demo_calib, load_profile("jetson"), "minmax", 8, 0.0, "yolov5", str(tmp_path), check_images=2, tool="modelopt")
    assert result.tool == "modelopt" and result.quantization_dict()["tool"].startswith("nvidia-modelopt")
    model = onnx.load(out)
    assert tensorrt_violations(model) == []
    assert sum(1 for n in model.graph.node if n.op_type == "QuantizeLinear") > 50
