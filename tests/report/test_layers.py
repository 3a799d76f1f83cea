"""Per-layer times in the report: top nodes, op-type bars, fp32 against int8 layer by layer."""
import json
import os
import subprocess
import sys

import pytest

from edgekit.contract.result import finish, new_result, new_run
from edgekit.host.report.layers import (
    LAYERS_MD,
    LAYERS_PNG,
    RUNTIME,
    compare_layers,
    layer_key,
    layers_markdown,
    op_family,
    pairs,
    profiles_from,
    write_layers_report,
)
from edgekit.host.report.load import load_results
from edgekit.host.report.make import make_report


def _node(name, op, ms, source, median=None):
    return {"name": name, "op_type": op, "provider": "CPUExecutionProvider", "mean_ms": ms, "median_ms": ms if median is None else median, "share": 0.0, "source": source}


def _layers(nodes):
    total = sum(n["mean_ms"] for n in nodes)
    for n in nodes:
        n["share"] = round(n["mean_ms"] / total, 4)
    by = {}
    for n in nodes:
        t = by.setdefault(n["op_type"], {"op_type": n["op_type"], "count": 0, "mean_ms": 0.0})
        t["count"] += 1
        t["mean_ms"] += n["mean_ms"]
    for t in by.values():
        t["share"] = round(t["mean_ms"] / total, 4)
    return {"source": "onnxruntime-profiler", "runs": 20, "run_ms": total * 1.1, "nodes_ms": total,
            "nodes": sorted(nodes, key=lambda n: -n["mean_ms"]), "by_op_type": sorted(by.values(), key=lambda t: -t["mean_ms"]),
            "source_graph": "x.onnx", "source_share": 1.0}


# Names as ONNX Runtime gives them for the demo (fp32: NCHWc convs, SiLU fused
# into QuickGelu; int8: QLinear ops keeping the replaced op's name, the head
# conv split in parts with a float Concat, the input's QuantizeLinear, NHWC Transposes).
FP32 = [
    _node("/stem/conv/Conv_output_0_nchwc", "Conv", 2.0, "/stem/conv/Conv"),
    _node("/stem/act/Mul/QuickGeluFusion/", "QuickGelu", 0.5, "/stem/act/Mul"),
    _node("/down1/conv/Conv_output_0_nchwc", "Conv", 3.0, "/down1/conv/Conv"),
    _node("/detect/m.0/Conv", "Conv", 0.4, "/detect/m.0/Conv"),
    _node("ReorderOutput", "ReorderOutput", 0.1, None),
]
INT8 = [
    _node("/stem/conv/Conv_token_31", "QLinearConv", 2.5, "/stem/conv/Conv"),
    _node("/stem/act/Sigmoid", "QLinearSigmoid", 0.3, "/stem/act/Sigmoid"),
    _node("/stem/act/Mul", "QLinearMul", 0.4, "/stem/act/Mul"),
    _node("/down1/conv/Conv_token_40", "QLinearConv", 1.0, "/down1/conv/Conv", median=0.8),
    _node("/detect/m.0/Conv_anchor0_part0_token_9", "QLinearConv", 0.2, "/detect/m.0/Conv_anchor0_part0"),
    _node("/detect/m.0/Conv_anchor0_part1_token_10", "QLinearConv", 0.25, "/detect/m.0/Conv_anchor0_part1"),
    _node("/detect/m.0/Conv_concat", "Concat", 0.05, "/detect/m.0/Conv_concat"),
    _node("images_QuantizeLinear", "QuantizeLinear", 0.3, "images_QuantizeLinear"),
    _node("Transpose_token_250", "Transpose", 0.2, None),
    _node("Transpose", "Transpose", 0.1, None),
]


def _result(variants=(("fp32", "fp32", FP32), ("int8", "int8", INT8), ("p30-int8", "int8", INT8[:3]))):
    result = new_result("bench", {"hostname": "board"}, {"name": "demo-cpu", "manifest_sha256": "a" * 64}, {"profile_layers": True})
    for name, precision, nodes in variants:
        run = new_run(name, precision, "onnxruntime", "CPUExecutionProvider")
        run.update(status="ok", latency_ms={k: 5.0 for k in ("mean", "std", "min", "p50", "p90", "p95", "p99", "max")}, layers=_layers([dict(n) for n in nodes]))
        result["runs"].append(run)
    return finish(result)


def _write(tmp_path, result, name="r.json"):
    path = tmp_path / "results" / "board" / "demo-cpu" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result))
    return str(path)


def test_layer_key_is_the_module_of_the_source_node():
    assert layer_key({"source": "/stem/conv/Conv"}) == "/stem/conv"
    assert layer_key({"source": "/stem/act/Sigmoid"}) == layer_key({"source": "/stem/act/Mul"}) == "/stem/act"
    assert layer_key({"source": "/detect/m.0/Conv_anchor0_part1"}) == "/detect/m.0"
    assert layer_key({"source": "/c3_1/cv1/act/Mul_output_0_QuantizeLinear"}) == "/c3_1/cv1/act"
    assert layer_key({"source": "images_QuantizeLinear"}) == "images_QuantizeLinear"
    assert layer_key({"source": "Conv_12"}) == "Conv_12"  # a graph without module paths: the node is its layer
    assert layer_key({"source": None, "op_type": "Transpose"}) == RUNTIME + "Transpose"


def test_pairs_match_each_lower_precision_with_the_fp32_of_its_model(tmp_path):
    four = _result((("fp32", "fp32", FP32), ("int8", "int8", INT8), ("p30-fp32", "fp32", FP32), ("p30-int8", "int8", INT8)))
    profiles = profiles_from(load_results([_write(tmp_path, four)]))
    assert [(a.variant, b.variant) for a, b in pairs(profiles)] == [("fp32", "int8"), ("p30-fp32", "p30-int8")]


def test_int8_against_fp32_layer_by_layer(tmp_path):
    profiles = profiles_from(load_results([_write(tmp_path, _result())]))
    fp32, int8 = profiles[0], profiles[1]
    deltas = {d.layer: d for d in compare_layers(fp32, int8)}
    # SiLU: one fused QuickGelu in fp32 against QLinearSigmoid + QLinearMul in int8, same module.
    act = deltas["/stem/act"]
    assert act.base_ms == pytest.approx(0.5) and act.other_ms == pytest.approx(0.7) and act.change_ms == pytest.approx(0.2)
    assert act.base_ops == "QuickGelu" and act.other_ops == "QLinearMul, QLinearSigmoid"
    # The split head conv: its parts and Concat against the one fp32 conv.
    head = deltas["/detect/m.0"]
    assert head.other_ms == pytest.approx(0.5) and head.other_ops == "QLinearConv x2, Concat"
    # The comparison uses the per-node median (0.8, not the mean 1.0) when every node has one.
    down = deltas["/down1/conv"]
    assert down.other_ms == pytest.approx(0.8) and down.ratio == pytest.approx(3.75)
    assert compare_layers(fp32, int8, stat="mean_ms")[0].layer == "/down1/conv"
    assert deltas["images_QuantizeLinear"].base_ms is None and deltas["images_QuantizeLinear"].other_ms == pytest.approx(0.3)
    assert deltas[RUNTIME + "Transpose"].other_ms == pytest.approx(0.3) and deltas[RUNTIME + "ReorderOutput"].other_ms is None
    # largest change first
    changes = [abs(d.change_ms) for d in compare_layers(fp32, int8)]
    assert changes == sorted(changes, reverse=True)


def test_markdown_lists_top_nodes_and_the_comparison(tmp_path):
    profiles = profiles_from(load_results([_write(tmp_path, _result())]))
    text = layers_markdown(profiles, top=3)
    assert "## board demo-cpu/fp32 (onnxruntime, onnxruntime-profiler)" in text
    assert "| 1 | `/down1/conv/Conv_output_0_nchwc` | Conv | `/down1/conv/Conv` | 3.000 | 3.000 | 50.0 % | 50.0 % |" in text
    assert "| 3 | `/stem/act/Mul/QuickGeluFusion/` | QuickGelu | `/stem/act/Mul` | 0.500 | 0.500 | 8.3 % | 91.7 % |" in text
    assert "## board demo-cpu: int8 against fp32, layer by layer" in text
    assert "| `/down1/conv` | 3.000 | 0.800 | -2.200 | 3.75x | Conv | QLinearConv |" in text
    assert "| `/stem/conv` | 2.000 | 2.500 | +0.500 | 0.80x | Conv | QLinearConv |" in text
    assert "**Only in int8**" in text and "`(runtime) Transpose`" in text and "**Only in fp32**" in text
    # p30-int8 has no fp32 of its own model in this result: no comparison for it
    assert "p30-int8 against" not in text


def test_report_writes_layers_files_only_for_profiled_runs(tmp_path):
    out = str(tmp_path / "reports")
    rep = make_report([_write(tmp_path, _result())], out_dir=out)
    assert os.path.join(out, LAYERS_MD) in rep.files and os.path.join(out, LAYERS_PNG) in rep.files
    assert os.path.getsize(os.path.join(out, LAYERS_PNG)) > 10000
    plain = _result()
    for run in plain["runs"]:
        run["layers"] = None
    out2 = str(tmp_path / "plain")
    rep2 = make_report([_write(tmp_path / "b", plain)], out_dir=out2)
    assert not any(os.path.basename(f).startswith("layers") for f in rep2.files) and not os.path.exists(os.path.join(out2, LAYERS_MD))
    assert write_layers_report(load_results([_write(tmp_path / "c", plain)]), str(tmp_path / "c")) == []


def test_op_families_pair_quantized_ops_with_their_float_op():
    assert [op_family(t) for t in ("Conv", "QLinearConv", "ConvInteger", "NhwcFusedConv", "QLinearMul", "NhwcMaxPool", "QuickGelu")] == [
        "Conv", "Conv", "Conv", "Conv", "Mul", "MaxPool", "QuickGelu"]
    assert op_family("DequantizeLinear") == op_family("QuantizeLinear") == op_family("DynamicQuantizeLinear") == "QuantizeLinear"


def test_report_cli_writes_layers_md(tmp_path):
    path = _write(tmp_path, _result())
    out = tmp_path / "rep"
    proc = subprocess.run([sys.executable, "-c", "from edgekit.host.cli.main import main; main()", "report", path, "--out", str(out), "--top-layers", "2", "--no-plots"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    text = (out / LAYERS_MD).read_text()
    assert "| 2 |" in text and "| 3 |" not in text.split("By op type")[0]
    assert not (out / LAYERS_PNG).exists()


def test_a_preempted_node_does_not_lead_the_tables(tmp_path):
    # On a busy machine one preempted run inflates a node's mean; the report ranks and sums medians.
    nodes = [_node("a", "Conv", 5.0, "/m/a/Conv", median=0.5), _node("b", "Mul", 1.0, "/m/b/Mul", median=1.0)]
    profiles = profiles_from(load_results([_write(tmp_path, _result((("fp32", "fp32", nodes),)))]))
    p = profiles[0]
    assert p.stat == "median_ms" and [n["name"] for n in p.ranked()] == ["b", "a"] and p.total_ms == pytest.approx(1.5)
    assert [(t["op_type"], round(t["share"], 4)) for t in p.op_types()] == [("Mul", 0.6667), ("Conv", 0.3333)]
    text = layers_markdown(profiles)
    assert "| 1 | `b` | Mul | `/m/b/Mul` | 1.000 | 1.000 | 66.7 % | 66.7 % |" in text
    assert "| 2 | `a` | Conv | `/m/a/Conv` | 0.500 | 5.000 | 33.3 % | 100.0 % |" in text
    assert "1.500 ms summed node medians; 6.000 ms summed node means" in text


def test_variants_are_compared_within_one_result_file(tmp_path):
    only_fp32 = _result((("fp32", "fp32", FP32),))
    only_int8 = _result((("int8", "int8", INT8),))
    files = [_write(tmp_path, only_fp32, "a.json"), _write(tmp_path, only_int8, "b.json")]
    profiles = profiles_from(load_results(files, latest_only=False))
    assert len(profiles) == 2 and pairs(profiles) == []
