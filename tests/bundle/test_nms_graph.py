"""``--nms graph``: decode + NMS inside the graph (host/export/nms_graph.py) against the numpy path."""
import json
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest

from edgekit.contract.errors import EdgekitError
from edgekit.device.postprocess import postprocess
from edgekit.host.export.nms_graph import DETECTIONS, append_nms, nms_spec


def _session(path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module", params=["demo", "demo-v8"])
def trained_pair(request, tmp_path_factory):
    """(name, plain fp32 graph, graph with the ONNX NMS tail) of a trained demo at 320x320."""
    from edgekit.host.demo import load_demo_model, postprocess_spec
    from edgekit.host.export import export_onnx, simplify_onnx

    name = request.param
    folder = tmp_path_factory.mktemp("nms-%s" % name)
    raw, plain, tailed = (str(folder / f) for f in ("raw.onnx", "plain.onnx", "nms.onnx"))
    export_onnx(load_demo_model(name=name), (320, 320), raw, 17)
    simplify_onnx(raw, plain)
    onnx.save(append_nms(onnx.load(plain), postprocess_spec(name)), tailed)
    return name, plain, tailed


def test_graph_nms_equals_numpy_on_real_images(trained_pair):
    from edgekit.calibration.images import load_images
    from edgekit.host.demo import demo_data, postprocess_spec, preprocess_spec

    name, plain, tailed = trained_pair
    spec = postprocess_spec(name)
    a, b = _session(plain), _session(tailed)
    assert [o.name for o in b.get_outputs()] == [DETECTIONS]
    images = load_images(demo_data().val_images_dir, preprocess_spec(), count=12)
    total = 0
    for i in range(len(images)):
        x = images.tensor(i)
        boxes, scores, classes = postprocess(a.run(None, {a.get_inputs()[0].name: x})[0], spec)
        det = b.run(None, {b.get_inputs()[0].name: x})[0]
        assert det.ndim == 3 and det.shape[0] == 1 and det.shape[2] == 6
        gboxes, gscores, gclasses = postprocess(det, nms_spec(spec))
        assert len(gboxes) == len(boxes) > 0
        np.testing.assert_allclose(gboxes, boxes, atol=1e-3)
        np.testing.assert_allclose(gscores, scores, atol=1e-5)
        assert (gclasses == classes).all()
        total += len(boxes)
    assert total > 50  # a trained model on real images: many detections were compared


def test_tail_is_float_and_bounded_by_max_detections(tmp_path):
    """A random output where every box passes: the tail keeps max_detections, as numpy does."""
    from onnx import TensorProto, helper

    from edgekit.contract.specs import PostprocessSpec

    spec = PostprocessSpec(layout="yolov5", score_threshold=0.001, iou_threshold=0.6, max_detections=50)
    g = helper.make_graph([helper.make_node("Identity", ["raw"], ["out"])], "t",
                          [helper.make_tensor_value_info("raw", TensorProto.FLOAT, [1, 2000, 8])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 2000, 8])])
    path = str(tmp_path / "t.onnx")
    onnx.save(append_nms(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), spec), path)
    rng = np.random.default_rng(0)
    raw = rng.random((1, 2000, 8), dtype=np.float32)
    raw[0, :, :2] *= 300
    raw[0, :, 2:4] = raw[0, :, 2:4] * 30 + 2
    det = _session(path).run(None, {"raw": raw})[0]
    boxes, scores, classes = postprocess(raw, spec)
    assert det.shape == (1, 50, 6) and len(boxes) == 50
    np.testing.assert_allclose(det[0, :, :4], boxes, atol=1e-3)
    assert (det[0, :, 5].astype(np.int64) == classes).all()


def test_efficient_nms_structure_for_a_jetson_profile(demo_onnx):
    from edgekit.host.demo import postprocess_spec
    from edgekit.host.profiles import load_profile

    profile = load_profile("jetson")
    assert profile.runtime == "tensorrt"
    spec = postprocess_spec("demo")
    model = append_nms(onnx.load(demo_onnx[1]), spec, profile.runtime)
    nodes = [n for n in model.graph.node if n.op_type == "EfficientNMS_TRT"]
    assert len(nodes) == 1 and not [n for n in model.graph.node if n.op_type == "NonMaxSuppression"]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in nodes[0].attribute}
    assert attrs["background_class"] == -1 and attrs["box_coding"] == 0 and attrs["score_activation"] == 0
    assert attrs["max_output_boxes"] == spec.max_detections
    assert attrs["plugin_version"] == b"1"
    assert abs(attrs["score_threshold"] - spec.score_threshold) < 1e-7 and abs(attrs["iou_threshold"] - spec.iou_threshold) < 1e-7
    assert len(nodes[0].input) == 2 and len(nodes[0].output) == 4
    # Its inputs are boxes (.., 4) xyxy and per-class scores, and its 4 outputs feed the detections tensor.
    produced = {o: n for n in model.graph.node for o in n.output}
    assert produced[nodes[0].input[0]].op_type == "Concat"
    assert [o.name for o in model.graph.output] == [DETECTIONS]
    dims = [d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim]
    assert dims == [1, spec.max_detections, 6]
    final = produced[DETECTIONS]
    assert final.op_type == "Concat"


def test_rejections(demo_onnx):
    from edgekit.contract.specs import PostprocessSpec

    model = onnx.load(demo_onnx[1])
    with pytest.raises(EdgekitError, match="multi_label"):
        append_nms(model, PostprocessSpec(multi_label=True))
    with pytest.raises(EdgekitError, match="yolov5 or yolov8"):
        append_nms(model, PostprocessSpec(layout="boxes"))


def test_bad_nms_option_is_one_line():
    from edgekit.host.bundle.options import BuildOptions, resolve

    with pytest.raises(EdgekitError, match="--nms"):
        resolve(BuildOptions(nms="torch"), "demo")


@pytest.mark.slow
def test_graph_bundle_on_the_agent_equals_numpy_bundle(tmp_path):
    """Both bundles built and run by the real agent: the same mAP (bound 1e-4; measured equal)."""
    from edgekit.host.bundle import BuildOptions, build_bundle

    maps = {}
    for nms in ("numpy", "graph"):
        out = str(tmp_path / nms)
        variants = ["fp32", "int8"] if nms == "graph" else ["fp32"]
        build_bundle(BuildOptions(profile="cpu", variants=variants, nms=nms, out=out, eval_images=60, parity_images=1, calib_images=8))
        manifest = json.load(open(os.path.join(out, "manifest.json")))
        assert manifest["postprocess"]["layout"] == ("boxes" if nms == "graph" else "yolov5")
        if nms == "graph":
            # The tail is appended after int8: none of its nodes is quantized, and the int8 graph ends in it too.
            int8 = onnx.load(os.path.join(out, [v for v in manifest["variants"] if v["precision"] == "int8"][0]["file"]))
            tail = [n for n in int8.graph.node if n.name.startswith("nms_tail/")]
            assert any(n.op_type == "NonMaxSuppression" for n in tail)
            assert not [n for n in tail if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
            assert [o.name for o in int8.graph.output] == [DETECTIONS]
        result = str(tmp_path / ("%s.json" % nms))
        agent = os.path.join(os.path.dirname(sys.executable), "edgekit-agent")
        subprocess.run([agent, "run", out, "--threads", "1", "--iterations", "5", "--warmup", "1", "--progress", "none", "--out", result],
                       check=True, capture_output=True, timeout=300)
        runs = json.load(open(result))["runs"]
        assert [r["status"] for r in runs] == ["ok"] * len(variants)
        run = runs[0]
        maps[nms] = run["accuracy"]["stats"]["map"]
        assert run["accuracy"]["passed"]  # agent mAP matches the host's reference for the same bundle
    assert maps["numpy"] > 0.5
    assert abs(maps["graph"] - maps["numpy"]) <= 1e-4


def test_jetson_build_gets_efficient_nms_after_host_metrics(tmp_path):
    """A TensorRT profile's bundle: the tail is EfficientNMS_TRT, host metrics come from the graph before it."""
    from edgekit.host.bundle import BuildOptions, build_bundle

    out = str(tmp_path / "jet")
    build_bundle(BuildOptions(profile="jetson", variants=["fp32"], nms="graph", out=out, eval_images=20, parity_images=1, calib_images=4))
    manifest = json.load(open(os.path.join(out, "manifest.json")))
    assert manifest["postprocess"]["layout"] == "boxes"
    assert manifest["outputs"] == [{"name": DETECTIONS, "shape": [1, 300, 6]}]
    variant = manifest["variants"][0]
    assert variant["host_metrics"]["map"] > 0.5
    ops = [n.op_type for n in onnx.load(os.path.join(out, variant["file"])).graph.node]
    assert ops.count("EfficientNMS_TRT") == 1 and "NonMaxSuppression" not in ops


def test_nms_graph_with_dynamic_batch_is_refused():
    from edgekit.host.bundle.options import BuildOptions, resolve

    if "dynamic_batch" not in BuildOptions.__dataclass_fields__:
        pytest.skip("no --dynamic-batch in this checkout")
    with pytest.raises(EdgekitError, match="--dynamic-batch"):
        resolve(BuildOptions(nms="graph", dynamic_batch=True), "demo")
