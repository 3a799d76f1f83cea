"""edgekit.host.quantize: schemes, TensorRT placement, head kept float, TensorRT cache, memory-bounded calibration."""
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edgekit.calibration import trt_cache
from edgekit.host.profiles import load_profile
from edgekit.host.quantize import quantize_int8
from edgekit.host.quantize.calibrate import calibrate, chunk_size, tensor_range
from edgekit.host.quantize.qdq_graph import decode_tail, name_nodes, residual_adds, shared_scale_groups, tail_inputs
from edgekit.host.quantize.layer_sqnr import output_parts, output_sqnr, sqnr_db, weight_sqnr


def _inits(model):
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def _qdq_by_input(model):
    """tensor -> list of (Q node, scale, zero point) quantizing it."""
    inits = _inits(model)
    out = {}
    for n in model.graph.node:
        if n.op_type == "QuantizeLinear":
            out.setdefault(n.input[0], []).append((n, inits.get(n.input[1]), inits.get(n.input[2]) if len(n.input) > 2 else None))
    return out


@pytest.fixture(scope="module")
def fp32(demo_onnx):
    return name_nodes(onnx.load(demo_onnx[1]))


def test_decode_tail_is_everything_after_the_last_convs(fp32):
    graph = fp32.graph
    tail = set(decode_tail(fp32))
    by_name = {n.name: n for n in graph.node}
    ops = sorted({by_name[n].op_type for n in tail})
    assert "Conv" not in ops and {"Sigmoid", "Concat", "Mul", "Add", "Pow", "Reshape"} <= set(ops)
    # The raw maps entering the tail are the three head convolutions' outputs.
    producers = [next(n for n in graph.node if t in n.output) for t in tail_inputs(fp32, list(tail))]
    assert sorted(p.op_type for p in producers) == ["Conv", "Conv", "Conv"]


def test_residual_adds_find_the_skip_inputs(fp32):
    graph = fp32.graph
    adds = residual_adds(fp32, exclude=decode_tail(fp32))
    # 1 + 2 + 3 + 1 shortcut bottlenecks in the backbone; the neck's C3 blocks have none.
    assert len(adds) == 7
    producer = {t: n for n in graph.node for t in n.output}
    for _, conv_input, skip_input in adds:
        assert producer[conv_input].op_type == "Mul"  # the SiLU after the bottleneck's second conv
        assert conv_input != skip_input


def test_shared_scale_groups_join_concat_inputs_and_output(fp32):
    graph = fp32.graph
    tail = set(decode_tail(fp32))
    groups = shared_scale_groups(fp32, exclude=tail)
    concats = [n for n in graph.node if n.op_type == "Concat" and n.name not in tail]
    members = {t for g in groups for t in g}
    for c in concats:
        group = next(g for g in groups if c.output[0] in g)
        assert set(c.input) <= set(group)
    # SPPF: the max-pool chain shares its input's scale, and joins the concat.
    pool = next(n for n in graph.node if n.op_type == "MaxPool")
    assert pool.input[0] in members and pool.output[0] in members


@pytest.fixture(scope="module")
def trt_int8(demo_onnx, demo_calib, tmp_path_factory):
    work = tmp_path_factory.mktemp("trt")
    out = str(work / "int8.onnx")
    result = quantize_int8(demo_onnx[1], out, demo_calib, load_profile("jetson"), "entropy", 8, 0.0, "yolov5", str(work))
    return result, onnx.load(out)


def test_tensorrt_scheme_is_symmetric_int8_with_per_channel_weights(trt_int8):
    result, model = trt_int8
    inits = _inits(model)
    q_nodes = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert q_nodes
    for n in q_nodes:
        zp = inits[n.input[2]]
        assert zp.dtype == np.int8 and not zp.any(), n.name  # zero points at 0, int8
    # Weights: float initializers behind Q/DQ (TensorRT's parser wants pairs), one scale per output channel.
    weight_q = [n for n in q_nodes if n.input[0] in inits and inits[n.input[0]].ndim == 4]
    assert len(weight_q) == 60
    assert all(inits[n.input[1]].shape == (inits[n.input[0]].shape[0],) for n in weight_q)
    assert result.quantization_dict()["activations"] == "int8 symmetric"


def test_tensorrt_placement_rules(trt_int8, fp32):
    result, model = trt_int8
    producer = {t: n for n in model.graph.node for t in n.output}
    by_name = {n.name: n for n in model.graph.node}
    # Head decode tail: no node of it reads a dequantized tensor, and it kept its float ops.
    for name in result.head_float:
        node = by_name[name]
        assert all(producer.get(t) is None or producer[t].op_type != "DequantizeLinear" for t in node.input), name
    # Residual Add: the skip input arrives through Q/DQ, the conv branch does not.
    adds = residual_adds(fp32, exclude=decode_tail(fp32))
    for add_name, conv_input, _ in adds:
        node = by_name[add_name]
        kinds = {t: producer[t].op_type for t in node.input}
        assert kinds[conv_input] != "DequantizeLinear"
        assert sorted(kinds.values()).count("DequantizeLinear") == 1, kinds
    assert result.residual_skips == len(adds) == 7
    # No convolution output is quantized by itself (TensorRT fuses conv + activation).
    conv_outputs = {n.output[0] for n in model.graph.node if n.op_type == "Conv"}
    assert not conv_outputs & set(_qdq_by_input(model))
    # Concat: every quantized input and the output share one scale.
    concats = [n for n in model.graph.node if n.op_type == "Concat" and n.name not in set(result.head_float)]
    assert concats
    for c in concats:
        scales = set()
        for t in c.input:
            dq = producer.get(t)
            if dq is not None and dq.op_type == "DequantizeLinear":
                scales.add(float(_inits(model)[dq.input[1]]))
        assert len(scales) == 1, (c.name, scales)
    assert result.shared_scale_tensors > 0


def test_tensorrt_calibration_cache_is_in_tensorrts_format(trt_int8, demo_onnx):
    result, _ = trt_int8
    text = result.trt_cache
    assert text.splitlines()[0] == "TRT-8502-EntropyCalibration2"
    cache = trt_cache.loads(text)
    fp32 = onnx.load(demo_onnx[1])
    names = {i.name for i in fp32.graph.input} | {t for n in fp32.graph.node for t in n.output}
    assert set(cache.scales) <= names and "images" in cache.scales
    # Input pixels are in [0, 1]: its scale is at most 1/127.
    assert 0 < cache.scales["images"] <= 1 / 127.0 + 1e-9
    line = [ln for ln in text.splitlines() if ln.startswith("images: ")][0]
    assert len(line.split(": ")[1]) == 8  # 8 hex digits of a big-endian float32


@pytest.mark.parametrize("profile, act_dtype", [("cpu", np.uint8), ("rk3588", np.int8)])
def test_cpu_schemes_pick_activation_types(profile, act_dtype, demo_onnx, demo_calib, tmp_path):
    out = str(tmp_path / "int8.onnx")
    result = quantize_int8(demo_onnx[1], out, demo_calib, load_profile(profile), "minmax", 8, 0.0, "yolov5", str(tmp_path))
    model = onnx.load(out)
    inits = _inits(model)
    acts = [n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in inits]
    assert acts and all(inits[n.input[2]].dtype == act_dtype for n in acts)
    assert result.trt_cache is None
    assert not set(result.head_float) & {n.name for n in acts}


def test_histogram_calibration_in_chunks_matches_one_pass(demo_onnx, demo_calib):
    path = demo_onnx[1]
    ops = ["Conv"]
    assert chunk_size(path, ops, "percentile", 8, budget_mb=1) == 1
    assert chunk_size(path, ops, "minmax", 8, budget_mb=1) == 8
    one = calibrate(path, demo_calib, "images", "percentile", ops, 4, budget_mb=4096)
    chunked = calibrate(path, demo_calib, "images", "percentile", ops, 4, budget_mb=1)
    assert set(one.keys()) == set(chunked.keys())
    for name in one.keys():
        a, b = tensor_range(one, name), tensor_range(chunked, name)
        width = max(a[1] - a[0], 1e-6)
        assert abs(a[0] - b[0]) <= 0.05 * width and abs(a[1] - b[1]) <= 0.05 * width, (name, a, b)


def test_sqnr_helpers():
    x = np.linspace(-1, 1, 1000)
    assert sqnr_db(x, x) == 200.0
    assert sqnr_db(x, x + 0.01) == pytest.approx(20 * np.log10(np.linalg.norm(x) / (0.01 * np.sqrt(1000))), rel=1e-4)
    assert weight_sqnr(np.random.default_rng(0).normal(size=(8, 4, 3, 3)), per_channel=True) > 35
    assert [p for p, _ in output_parts("yolov5", (1, 100, 13))] == ["boxes", "scores"]
    # Scores collapsing to zero show up even when the boxes dominate the energy.
    ref = np.zeros((1, 100, 13), np.float32)
    ref[..., :4] = 300.0
    ref[..., 4:] = 0.5
    bad = ref.copy()
    bad[..., 4:] = 0.0
    parts = output_sqnr([[ref]], [[bad]], "yolov5")
    assert parts["boxes"] == 200.0 and parts["scores"] == pytest.approx(0.0, abs=1e-6)
    assert sqnr_db(ref, bad) > 40  # the whole-tensor number would have hidden it


def test_mixed_precision_keeps_the_worst_layers_float_until_the_target(demo_onnx, demo_calib, tmp_path):
    """A target the all-int8 graph misses: layers go back to float, each with its reason, within the cap."""
    from edgekit.host.quantize.int8 import MAX_FLOAT_FRACTION

    warnings = []
    out = str(tmp_path / "int8.onnx")
    cpu = load_profile("cpu")
    plain = quantize_int8(demo_onnx[1], str(tmp_path / "plain.onnx"), demo_calib, cpu, "minmax", 4, 0.0, "yolov5", str(tmp_path), check_images=2)
    target = min(plain.sqnr_db.values()) + 6.0  # 6 dB better than all-int8 achieves
    result = quantize_int8(demo_onnx[1], out, demo_calib, cpu, "minmax", 4, target, "yolov5", str(tmp_path), warn=warnings.append, check_images=2, max_rounds=3)
    assert result.float_units, "nothing was kept in float"
    assert all(u["reason"] and u["nodes"] for u in result.float_units)
    assert [h["float_nodes"] for h in result.history] == sorted(h["float_nodes"] for h in result.history)
    assert result.history[0]["sqnr_db"] == plain.sqnr_db
    floats = {n for u in result.float_units for n in u["nodes"]}
    conv_count = 60
    assert len(floats) <= max(1, int(MAX_FLOAT_FRACTION * 250)) and len(floats) < conv_count * 4
    reached = min(result.sqnr_db.values()) >= target
    assert reached or (warnings and "stays below" in warnings[0])
    if reached:
        assert min(result.sqnr_db.values()) > min(plain.sqnr_db.values())
    # A float Conv reads a float weight: no DequantizeLinear feeds its weight input.
    model = onnx.load(out)
    producer = {t: n for n in model.graph.node for t in n.output}
    by_name = {n.name: n for n in model.graph.node}
    float_convs = [by_name[n] for n in floats if n in by_name and by_name[n].op_type == "Conv"]
    for conv in float_convs:
        w = producer.get(conv.input[1])
        assert w is None or w.op_type != "DequantizeLinear", conv.name
    d = result.quantization_dict()
    assert d["float_nodes"] == result.float_units and d["sqnr_target_db"] == target


def test_quantizing_the_head_collapses_the_scores(demo_onnx, demo_calib, tmp_path):
    """Why the decode tail stays float: one int8 scale over pixels and probabilities."""
    import dataclasses

    cpu = load_profile("cpu")
    bare = dataclasses.replace(cpu, quantization=dataclasses.replace(cpu.quantization, keep_head_float=False))
    kept = quantize_int8(demo_onnx[1], str(tmp_path / "kept.onnx"), demo_calib, cpu, "minmax", 4, 0.0, "yolov5", str(tmp_path), check_images=2)
    lost = quantize_int8(demo_onnx[1], str(tmp_path / "lost.onnx"), demo_calib, bare, "minmax", 4, 0.0, "yolov5", str(tmp_path), check_images=2)
    assert lost.head_float == [] and kept.head_float
    assert lost.sqnr_db["scores"] < 6.0 < 20.0 < kept.sqnr_db["scores"], (lost.sqnr_db, kept.sqnr_db)
