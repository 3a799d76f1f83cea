"""INT8 for the NPU profiles' old opsets (hisilicon 11, rk3588 12): per-channel DequantizeLinear needs opset 13."""
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edgekit.host.profiles import load_profile
from edgekit.host.quantize import quantize_int8


@pytest.mark.parametrize("name", ["hisilicon", "rk3588"])
def test_npu_profiles_build_int8_at_their_opset(name, demo_calib, tmp_path):
    import onnxruntime as ort

    from edgekit.host.demo import build_demo_model
    from edgekit.host.export import export_onnx, simplify_onnx

    profile = load_profile(name)
    assert profile.opset < 13
    raw, fp32, out = (str(tmp_path / f) for f in ("raw.onnx", "fp32.onnx", "int8.onnx"))
    export_onnx(build_demo_model().eval(), (320, 320), raw, profile.opset)
    simplify_onnx(raw, fp32)
    warnings = []
    result = quantize_int8(fp32, out, demo_calib, profile, "minmax", 8, 0.0, "yolov5", str(tmp_path), warn=warnings.append, check_images=2)
    model = onnx.load(out)
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [profile.opset]
    # Every scale is a scalar: no per-axis DequantizeLinear, which opset < 13 lacks.
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    assert dq and all(inits[n.input[1]].size == 1 for n in dq)
    assert not any(a.name == "axis" for n in dq for a in n.attribute)
    assert result.quantization_dict()["weights"] == "int8 symmetric per-tensor"
    assert len(warnings) == 1 and "per-channel DequantizeLinear needs opset 13" in warnings[0]
    session = ort.InferenceSession(out, providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {session.get_inputs()[0].name: np.zeros((1, 3, 320, 320), np.float32)})
    assert np.isfinite(y).all()
