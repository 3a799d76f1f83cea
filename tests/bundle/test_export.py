"""edgekit.host.export: ONNX export with fallback, onnxsim fallback, parity, operator checks."""
import importlib.util
import os

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from edgekit.contract.errors import EdgekitError
from edgekit.host.export import check_operators, check_parity, compare, export_onnx, op_counts, open_session, simplify_onnx


class TwoOutputs(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        return y.sigmoid(), y.mean(dim=(2, 3))


def test_export_names_shapes_and_exporter(tmp_path):
    path = str(tmp_path / "m.onnx")
    result = export_onnx(TwoOutputs(), (64, 96), path, opset=13)
    assert result.exporter == "torchscript" and result.failures == []
    model = onnx.load(path)
    assert [i.name for i in model.graph.input] == ["images"]
    assert [o.name for o in model.graph.output] == ["output0", "output1"]
    assert result.output_shapes == [[1, 8, 64, 96], [1, 8]]
    assert model.opset_import[0].version == 13


def test_exporter_fallback_is_recorded(tmp_path):
    path = str(tmp_path / "m.onnx")
    result = export_onnx(TwoOutputs(), (32, 32), path, opset=17, exporters=("dynamo", "torchscript"))
    if importlib.util.find_spec("onnxscript") is None:
        # The dynamo exporter needs onnxscript: it fails, the TorchScript one takes over.
        assert result.exporter == "torchscript"
        assert len(result.failures) == 1 and result.failures[0].startswith("dynamo exporter:") and "onnxscript" in result.failures[0]
    else:
        assert result.exporter == "dynamo" and result.failures == []
    assert os.path.isfile(path)


def test_export_failure_of_every_exporter_is_one_error(tmp_path):
    class Bad(torch.nn.Module):
        def forward(self, x):
            return {"not": x}  # neither exporter accepts a dict of outputs as a detector output

    with pytest.raises(EdgekitError, match="not a tensor"):
        export_onnx(Bad(), (32, 32), str(tmp_path / "m.onnx"), 17)
    assert not os.path.exists(tmp_path / "m.onnx")


def test_simplify_shrinks_the_demo_graph(demo_onnx, tmp_path):
    _, path = demo_onnx
    model, _ = demo_onnx
    raw = str(tmp_path / "raw.onnx")
    export_onnx(model, (320, 320), raw, 17)
    result = simplify_onnx(raw, str(tmp_path / "s.onnx"))
    assert result.simplified and result.reason == ""
    assert result.nodes_after < result.nodes_before
    assert len(onnx.load(str(tmp_path / "s.onnx")).graph.node) == result.nodes_after


def test_simplify_keeps_the_original_when_onnxsim_fails(tmp_path):
    # An operator of an unknown domain: onnxsim cannot infer or fold it.
    node = helper.make_node("Frobnicate", ["x"], ["y"], domain="com.example")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    src = str(tmp_path / "custom.onnx")
    onnx.save(model, src)
    result = simplify_onnx(src, str(tmp_path / "out.onnx"))
    assert not result.simplified and result.reason
    assert open(src, "rb").read() == open(str(tmp_path / "out.onnx"), "rb").read()


def test_simplify_keeps_the_original_when_folding_bloats_it(tmp_path):
    # Expand of a scalar to 1x512x512: folding writes a 1 MB constant in place of a few bytes.
    shape = numpy_helper.from_array(np.array([1, 512, 512], dtype=np.int64), "shape")
    one = numpy_helper.from_array(np.array([1.0], dtype=np.float32), "one")
    nodes = [helper.make_node("Expand", ["one", "shape"], ["big"]), helper.make_node("Add", ["x", "big"], ["y"])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 512, 512])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 512, 512])], [shape, one]
    )
    src = str(tmp_path / "expand.onnx")
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), src)
    result = simplify_onnx(src, str(tmp_path / "out.onnx"))
    assert not result.simplified and "grew the file" in result.reason, result
    assert os.path.getsize(str(tmp_path / "out.onnx")) == os.path.getsize(src)


def test_parity_passes_on_a_faithful_export_and_stops_on_a_wrong_one(demo_onnx, demo_calib, tmp_path):
    model, path = demo_onnx
    inputs = [demo_calib.tensor(i) for i in range(2)]
    ok = check_parity(model, path, inputs, tolerance=0.01)
    assert ok.ok and ok.cosine > 0.99999 and ok.max_abs_error < 1e-3 and ok.images == 2
    # Corrupt one head convolution's bias in the graph: the check must stop the build.
    bad = onnx.load(path)
    init = next(i for i in bad.graph.initializer if i.name == "detect.m.0.bias")
    arr = numpy_helper.to_array(init).copy()
    arr += 1.0
    init.CopyFrom(numpy_helper.from_array(arr, init.name))
    bad_path = str(tmp_path / "bad.onnx")
    onnx.save(bad, bad_path)
    with pytest.raises(EdgekitError, match="does not match PyTorch"):
        check_parity(model, bad_path, inputs, tolerance=0.01)


def test_compare_reports_error_and_cosine():
    ref = [np.array([1.0, 2.0, 3.0])]
    assert compare(ref, [np.array([1.0, 2.0, 3.0])], 0.01).ok
    worse = compare(ref, [np.array([1.0, 2.0, 3.5])], 0.01)
    assert not worse.ok and worse.max_abs_error == pytest.approx(0.5)
    assert 0.99 < worse.cosine < 1.0
    assert not compare(ref, [np.array([1.0, np.nan, 3.0])]).ok


def test_operator_check_names_what_the_target_cannot_run(demo_onnx):
    _, path = demo_onnx
    counts = op_counts(path)
    assert counts["Conv"] == 60 and "Resize" in counts
    assert check_operators(path, ["NonMaxSuppression"], "cpu", "the fp32 graph") == counts
    with pytest.raises(EdgekitError, match=r"Resize \(x2\).*profile myboard"):
        check_operators(path, ["Resize", "Einsum"], "myboard", "the fp32 graph")


def test_unloadable_onnx_is_a_one_line_error(tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x08\x07garbage")
    with pytest.raises(EdgekitError, match="ONNX Runtime cannot load"):
        open_session(str(junk))
