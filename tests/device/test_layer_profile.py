"""Per-layer time: ONNX Runtime's profiler trace parsed into the result's ``layers``."""
import os

import numpy as np
import pytest

from edgekit.contract.errors import EdgekitError
from edgekit.device.layer_profile import SOURCE_ORT, SourceGraph, attach_sources, parse_ort_profile, read_onnx_nodes


def _event(cat, name, ts, dur, op=None):
    e = {"cat": cat, "name": name, "ts": ts, "dur": dur, "ph": "X", "pid": 1, "tid": 1, "args": {}}
    if op:
        e["args"] = {"op_name": op, "provider": "CPUExecutionProvider"}
    return e


def _trace():
    """Three runs of conv -> fused SiLU -> conv, as ONNX Runtime writes them (node events before their run's)."""
    events = [_event("Session", "model_loading_uri", 0, 50), _event("Session", "session_initialization", 60, 500)]
    for r, (a, b, c) in enumerate(((900, 90, 10), (400, 100, 300), (600, 100, 100))):
        t0 = 1000 + r * 5000
        events += [
            _event("Node", "conv0_kernel_time", t0 + 10, a, "Conv"),
            _event("Node", "mul0/SiLUFusion/_kernel_time", t0 + 20 + a, b, "QuickGelu"),
            _event("Node", "conv1_kernel_time", t0 + 30 + a + b, c, "Conv"),
            _event("Session", "SequentialExecutor::Execute", t0 + 5, a + b + c + 40),
            _event("Session", "model_run", t0, a + b + c + 60),
        ]
    return events


def test_parse_averages_the_runs_after_warmup_per_node_and_op_type():
    layers = parse_ort_profile(_trace(), skip_runs=1)
    assert layers["source"] == SOURCE_ORT and layers["runs"] == 2
    # runs 2 and 3: conv0 (400 + 600) / 2 us, fused (100 + 100) / 2, conv1 (300 + 100) / 2
    nodes = {n["name"]: n for n in layers["nodes"]}
    assert nodes["conv0"]["mean_ms"] == pytest.approx(0.5)
    assert nodes["mul0/SiLUFusion/"]["mean_ms"] == pytest.approx(0.1) and nodes["mul0/SiLUFusion/"]["op_type"] == "QuickGelu"
    assert nodes["conv1"]["mean_ms"] == pytest.approx(0.2)
    assert [n["name"] for n in layers["nodes"]] == ["conv0", "conv1", "mul0/SiLUFusion/"]
    assert layers["nodes_ms"] == pytest.approx(0.8)
    assert layers["run_ms"] == pytest.approx((860 + 860) / 2 / 1000.0)
    assert nodes["conv0"]["share"] == pytest.approx(0.625)
    # the median of two runs is their mean; of three (below) the middle one
    assert nodes["conv1"]["median_ms"] == pytest.approx(0.2)
    types = {t["op_type"]: t for t in layers["by_op_type"]}
    assert types["Conv"]["count"] == 2 and types["Conv"]["mean_ms"] == pytest.approx(0.7) and types["Conv"]["share"] == pytest.approx(0.875)
    assert [t["op_type"] for t in layers["by_op_type"]] == ["Conv", "QuickGelu"]


def test_parse_without_skip_counts_the_first_run():
    layers = parse_ort_profile(_trace())
    conv0 = [n for n in layers["nodes"] if n["name"] == "conv0"][0]
    assert layers["runs"] == 3 and conv0["mean_ms"] == pytest.approx((0.9 + 0.4 + 0.6) / 3, abs=1e-4)
    assert conv0["median_ms"] == pytest.approx(0.6)


def test_parse_says_when_the_trace_has_too_few_runs():
    with pytest.raises(EdgekitError, match="holds 3 runs, 4 needed"):
        parse_ort_profile(_trace(), skip_runs=3)


def _tiny_model(path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((16, 3, 3, 3)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((16, 16, 3, 3)).astype(np.float32), "w2")
    nodes = [
        helper.make_node("Conv", ["images", "w1"], ["a"], name="stem", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["b"], name="act"),
        helper.make_node("Conv", ["b", "w2"], ["c"], name="body", pads=[1, 1, 1, 1]),
        helper.make_node("GlobalAveragePool", ["c"], ["out"], name="pool"),
    ]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 64, 64])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 16, 1, 1])], [w1, w2],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_ort_runner_profiles_a_real_session(tmp_path):
    from edgekit.device.backends.onnxruntime_runner import OrtRunner

    path = _tiny_model(str(tmp_path / "tiny.onnx"))
    runner = OrtRunner(path, "tiny.onnx", "fp32", "images", [1, 3, 64, 64], threads=1)
    x = np.random.default_rng(1).random((1, 3, 64, 64), dtype=np.float32)
    layers = runner.profile_layers(x, warmup=2, runs=5)
    assert layers["runs"] == 5
    assert {t["op_type"] for t in layers["by_op_type"]} >= {"Conv"}
    assert all(n["mean_ms"] >= 0 and n["provider"] == "CPUExecutionProvider" for n in layers["nodes"])
    assert sum(n["share"] for n in layers["nodes"]) == pytest.approx(1.0, abs=1e-3)
    # NCHWc convs are named after their output tensor: "c_nchwc" is the node writing "c" ("body"; the
    # stem conv fused with its Relu writes "b", the Relu's tensor). Only the runtime's ReorderOutput has no source.
    sources = {n["name"]: n["source"] for n in layers["nodes"]}
    assert sources["c_nchwc"] == "body" and sources.get("b_nchwc", "act") == "act", sources
    assert all(s in {"stem", "act", "body", "pool"} for name, s in sources.items() if not name.startswith("ReorderOutput")), sources
    assert layers["source_graph"] == "tiny.onnx" and 0.9 < layers["source_share"] <= 1.0
    # the nodes run inside model_run: their sum cannot exceed it
    assert 0 < layers["nodes_ms"] <= layers["run_ms"]
    # the profiling session leaves no trace file behind in the working directory
    assert not list(tmp_path.glob("*.json"))
    runner.close()


def test_bench_profile_layers_on_the_demo(cpu_bundle, tools):
    agent = tools.run(tools.quick("bench", cpu_bundle, "--profile-layers", "--threads", "1"))
    assert agent.rc == 0, agent.stderr
    assert agent.result["settings"]["profile_layers"] is True
    for run in agent.result["runs"]:
        layers = run["layers"]
        assert layers["source"] == SOURCE_ORT and layers["runs"] == 20
        assert layers["nodes"] and layers["by_op_type"]
        assert sum(t["count"] for t in layers["by_op_type"]) == len(layers["nodes"])
        # Node times are part of ONNX Runtime's own run time, never more. How much
        # of it they cover is a timing figure (83.5 % measured here on the demo), so
        # it is reported by the agent, not asserted in a unit test.
        assert 0 < layers["nodes_ms"] <= layers["run_ms"], layers
        # all but the runtime's own layout nodes trace back to the variant's ONNX graph (99.5 % of time measured here)
        assert layers["source_graph"] == run["variant"] + ".onnx" and layers["source_share"] > 0.9
        assert all(n["source"] is not None for n in layers["nodes"] if n["op_type"] not in ("Transpose", "ReorderOutput"))
    int8 = [r for r in agent.result["runs"] if r["precision"] == "int8"]
    assert int8, "the cpu bundle has an int8 variant"
    if int8:
        assert any("QLinear" in t["op_type"] or "Integer" in t["op_type"] or t["op_type"] == "QuantizeLinear" for t in int8[0]["layers"]["by_op_type"])


def test_bench_without_the_flag_has_no_layers(cpu_bundle, tools):
    agent = tools.run(tools.quick("bench", cpu_bundle, "--variant", "fp32"))
    assert agent.rc == 0, agent.stderr
    assert agent.result["runs"][0]["layers"] is None
    assert agent.result["settings"]["profile_layers"] is False


def test_source_rule_traces_runtime_names_to_graph_nodes():
    graph = SourceGraph([
        {"name": "/down1/conv/Conv", "op_type": "Conv", "outputs": ["/down1/conv/Conv_output_0"]},
        {"name": "/down1/act/Sigmoid", "op_type": "Sigmoid", "outputs": ["/down1/act/Sigmoid_output_0"]},
        {"name": "/down1/act/Mul", "op_type": "Mul", "outputs": ["/down1/act/Mul_output_0"]},
        {"name": "/sppf/m/MaxPool", "op_type": "MaxPool", "outputs": ["pooled"]},
        {"name": "/detect/Slice_2", "op_type": "Slice", "outputs": ["s2"]},
    ])
    cases = {
        "/down1/conv/Conv": "/down1/conv/Conv",  # kept name (QLinearConv from a Q/DQ group)
        "/down1/conv/Conv_token_31": "/down1/conv/Conv",  # re-created node
        "/down1/conv/Conv_output_0_nchwc": "/down1/conv/Conv",  # NCHWc: named after the output tensor
        "pooled_nchwc": "/sppf/m/MaxPool",  # output tensor not named after its node
        "/down1/act/Mul/QuickGeluFusion/": "/down1/act/Mul",  # fusion
        "/detect/Slice_2/GatherSliceToSplitFusion": "/detect/Slice_2",
        "/down1/act/Mul/QuickGeluFusion/_token_7": "/down1/act/Mul",  # both, chained
        "/down1/conv/Conv + /down1/act/Sigmoid + /down1/act/Mul": "/down1/conv/Conv",  # TensorRT's fused layer
        "Reformatting CopyNode for Input Tensor 0 to /down1/conv/Conv + /down1/act/Mul": None,  # TensorRT's layout copy
        "Transpose_token_250": None,  # inserted by the runtime
        "ReorderOutput": None,
        "": None,
    }
    assert {name: graph.source_of(name) for name in cases} == cases


def test_onnx_reader_gives_the_onnx_packages_nodes(tmp_path):
    import onnx

    path = _tiny_model(str(tmp_path / "tiny.onnx"))
    expected = [{"name": n.name, "op_type": n.op_type, "outputs": list(n.output)} for n in onnx.load(path).graph.node]
    assert read_onnx_nodes(path) == expected and len(expected) == 4


def test_onnx_reader_on_the_demo_bundle_matches_onnx(cpu_bundle):
    import onnx

    for rel in ("models/fp32.onnx", "models/int8.onnx"):
        path = os.path.join(cpu_bundle, *rel.split("/"))
        expected = [(n.name, n.op_type, list(n.output)) for n in onnx.load(path).graph.node]
        assert [(n["name"], n["op_type"], n["outputs"]) for n in read_onnx_nodes(path)] == expected


def test_onnx_reader_refuses_a_damaged_file_in_one_line(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x3a\xff\xff\xff\x0f garbage")
    with pytest.raises(EdgekitError, match="not a readable ONNX model") as info:
        read_onnx_nodes(str(bad))
    assert "\n" not in str(info.value)
    layers = attach_sources({"nodes": [{"name": "a", "mean_ms": 1.0}]}, str(bad))
    assert layers["nodes"][0]["source"] is None and layers["source_graph"] is None and layers["source_share"] == 0.0


def test_tensorrt_layer_names_and_op_types():
    graph = SourceGraph([
        {"name": "/m/conv/Conv", "op_type": "Conv", "outputs": ["c"]},
        {"name": "/m/act/Sigmoid", "op_type": "Sigmoid", "outputs": ["s"]},
        {"name": "/m/act/Mul", "op_type": "Mul", "outputs": ["m"]},
    ])
    assert graph.source_of("PWN(PWN(/m/act/Sigmoid), /m/act/Mul)") == "/m/act/Sigmoid"
    assert graph.op_type_of("PWN(PWN(/m/act/Sigmoid), /m/act/Mul)") == "Sigmoid+Mul"
    assert graph.op_type_of("/m/conv/Conv + /m/act/Sigmoid + /m/act/Mul") == "Conv+Sigmoid+Mul"
    assert graph.op_type_of("/m/conv/Conv") == "Conv" and graph.op_type_of("Reformatting CopyNode for Input Tensor 0 to /m/conv/Conv") == "Reformat"
    assert graph.op_type_of("unknown layer") == "?"


def test_layer_times_from_a_per_layer_callback():
    from edgekit.device.layer_profile import SOURCE_TRT, LayerTimes

    times = LayerTimes()
    times.add("warm-up call", 9.0)  # before the first run: ignored
    for a, b in ((1.0, 0.2), (3.0, 0.2), (2.0, None)):
        times.start_run()
        times.add("conv", a)
        if b is not None:
            times.add("act", b)
    layers = times.summary(SOURCE_TRT, 4.0, "TensorRT 10.3", lambda name: name.upper())
    nodes = {n["name"]: n for n in layers["nodes"]}
    assert set(nodes) == {"conv", "act"} and layers["runs"] == 3 and layers["source"] == SOURCE_TRT
    assert nodes["conv"]["mean_ms"] == pytest.approx(2.0) and nodes["conv"]["median_ms"] == pytest.approx(2.0)
    assert nodes["act"]["mean_ms"] == pytest.approx(0.4 / 3, abs=1e-4) and nodes["act"]["median_ms"] == pytest.approx(0.2)
    assert nodes["conv"]["op_type"] == "CONV" and nodes["conv"]["provider"] == "TensorRT 10.3"
    with pytest.raises(EdgekitError, match="no layer times"):
        LayerTimes().summary(SOURCE_TRT, None, None, str)
