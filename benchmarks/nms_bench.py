"""In-graph NMS (``edgekit build --nms graph``) against the agent's numpy decode + NMS, on the demo.

    .venv/bin/python benchmarks/nms_bench.py [--images 100] [--rounds 5]

For the trained demo (``yolov5`` layout, 320x320) and demo-v8 (``yolov8`` layout),
with ONNX Runtime on the CPU at one intra-op thread, on the demo's real
validation images:

- "decode+NMS": the numpy path (edgekit.device.postprocess on the raw output)
  against the tail alone (a graph whose input is the raw output and whose
  output is ``detections``, run by ONNX Runtime, plus the ``boxes`` read);
- "end to end": raw graph + numpy against the graph with the tail + ``boxes`` read;
- mAP (pycocotools, host evaluation, every validation image) of both graphs.

A and B interleave image by image in one process, so machine load hits both
alike; medians of the calling thread's CPU time (``time.thread_time``: ONNX
Runtime at one thread computes in the calling thread) and of wall time.
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # postprocess_bench's generator


def _session(path: str):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def _tail_only(raw_shape, spec, path: str) -> None:
    """A graph that is only the tail: input = the raw model output."""
    import onnx
    from onnx import TensorProto, helper

    from edgekit.host.export.nms_graph import append_nms

    g = helper.make_graph([helper.make_node("Identity", ["raw"], ["raw_out"])], "tail",
                          [helper.make_tensor_value_info("raw", TensorProto.FLOAT, list(raw_shape))],
                          [helper.make_tensor_value_info("raw_out", TensorProto.FLOAT, list(raw_shape))])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(append_nms(model, spec), path)


def _timed(fn):
    c0, w0 = time.thread_time(), time.perf_counter()
    out = fn()
    return out, (time.thread_time() - c0) * 1e3, (time.perf_counter() - w0) * 1e3


def bench(name: str, images: int, rounds: int, tmp: str):
    import onnx

    from edgekit.calibration.images import load_images
    from edgekit.device.postprocess import postprocess
    from edgekit.host.bundle.reference import evaluate_onnx
    from edgekit.host.demo import demo_data, load_demo_model, postprocess_spec, preprocess_spec
    from edgekit.host.export import export_onnx, simplify_onnx
    from edgekit.host.export.nms_graph import append_nms, nms_spec

    spec, pre = postprocess_spec(name), preprocess_spec()
    raw, plain, tailed, tail = (os.path.join(tmp, "%s.%s.onnx" % (name, k)) for k in ("raw", "plain", "nms", "tail"))
    export_onnx(load_demo_model(name=name), tuple(pre.size), raw, 17)
    simplify_onnx(raw, plain)
    onnx.save(append_nms(onnx.load(plain), spec), tailed)
    boxes = nms_spec(spec)
    data = demo_data()
    batch = load_images(data.val_images_dir, pre, count=images)
    a, b = _session(plain), _session(tailed)
    inp = a.get_inputs()[0].name
    raws = [a.run(None, {inp: batch.tensor(i)})[0] for i in range(len(batch))]
    _tail_only(raws[0].shape, spec, tail)
    t = _session(tail)
    cols = {k: [] for k in ("np_cpu", "np_wall", "g_cpu", "g_wall", "npe_cpu", "npe_wall", "ge_cpu", "ge_wall")}
    dets = []
    for _ in range(rounds):
        for i in range(len(batch)):
            x = batch.tensor(i)
            r1, c, w = _timed(lambda: postprocess(raws[i], spec))
            cols["np_cpu"].append(c); cols["np_wall"].append(w)
            r2, c, w = _timed(lambda: postprocess(t.run(None, {"raw": raws[i]})[0], boxes))
            cols["g_cpu"].append(c); cols["g_wall"].append(w)
            _, c, w = _timed(lambda: postprocess(a.run(None, {inp: x})[0], spec))
            cols["npe_cpu"].append(c); cols["npe_wall"].append(w)
            _, c, w = _timed(lambda: postprocess(b.run(None, {inp: x})[0], boxes))
            cols["ge_cpu"].append(c); cols["ge_wall"].append(w)
            if len(dets) < len(batch):
                same = len(r1[0]) == len(r2[0]) and (r1[2] == r2[2]).all() and (len(r1[0]) == 0 or float(np.abs(r1[0] - r2[0]).max()) <= 1e-3)
                dets.append((len(r1[0]), same))
    m_np = evaluate_onnx(plain, data.val_images_dir, data.val_annotations, pre, spec)
    m_g = evaluate_onnx(tailed, data.val_images_dir, data.val_annotations, pre, boxes)
    med = {k: statistics.median(v) for k, v in cols.items()}
    return {
        "model": "%s (%s, %dx%d, out %s)" % (name, spec.layout, pre.size[0], pre.size[1], "x".join(str(d) for d in raws[0].shape)),
        "med": med,
        "boxes": statistics.mean(n for n, _ in dets),
        "same": sum(s for _, s in dets),
        "n": len(dets),
        "map": (m_np["map"], m_g["map"], m_np["map50"], m_g["map50"], m_np["images"]),
    }


def bench_shapes(rounds: int, tmp: str):
    """decode+NMS only, on synthetic trained-like outputs at 640 (postprocess_bench.py's generator)."""
    from postprocess_bench import synthetic_yolov5_output, v8_from_v5

    from edgekit.contract.specs import PostprocessSpec
    from edgekit.device.postprocess import postprocess
    from edgekit.host.export.nms_graph import nms_spec

    rng = np.random.default_rng(0)
    rows = []
    for objects, label in ((10, "typical"), (40, "crowded")):
        out5 = synthetic_yolov5_output(rng, objects=objects, background=(-9.0, 2.0) if objects == 10 else (-8.0, 2.0))
        for layout, out in (("yolov5", out5), ("yolov8", v8_from_v5(out5))):
            spec = PostprocessSpec(layout=layout, score_threshold=0.001, iou_threshold=0.6, max_detections=300)
            path = os.path.join(tmp, "tail-%s-%s.onnx" % (layout, label))
            _tail_only(out.shape, spec, path)
            t = _session(path)
            np_c, g_c, same = [], [], None
            for _ in range(rounds):
                r1, c, _w = _timed(lambda: postprocess(out, spec))
                np_c.append(c)
                r2, c, _w = _timed(lambda: postprocess(t.run(None, {"raw": out})[0], nms_spec(spec)))
                g_c.append(c)
                if same is None:
                    same = len(r1[0]) == len(r2[0]) and (r1[2] == r2[2]).all() and (len(r1[0]) == 0 or float(np.abs(r1[0] - r2[0]).max()) <= 1e-3)
            rows.append((layout, label, "x".join(str(d) for d in out.shape), statistics.median(np_c), statistics.median(g_c), len(r1[0]), same))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    import onnxruntime

    print("ONNX Runtime %s, CPUExecutionProvider, 1 intra-op thread; %d images x %d rounds, interleaved; medians"
          % (onnxruntime.__version__, args.images, args.rounds))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("demo", "demo-v8"):
            rows.append(bench(name, args.images, args.rounds, tmp))
    hdr = "| model | decode+NMS numpy ms (cpu / wall) | decode+NMS in graph ms (cpu / wall) | end to end numpy ms | end to end graph ms | same detections | mAP numpy / graph | mAP50 numpy / graph |"
    print(hdr)
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        m = r["med"]
        mp = r["map"]
        print("| %s | %.3f / %.3f | %.3f / %.3f | %.2f / %.2f | %.2f / %.2f | %d of %d images (%.1f boxes each) | %.4f / %.4f | %.4f / %.4f (%d images) |" % (
            r["model"], m["np_cpu"], m["np_wall"], m["g_cpu"], m["g_wall"], m["npe_cpu"], m["npe_wall"], m["ge_cpu"], m["ge_wall"],
            r["same"], r["n"], r["boxes"], mp[0], mp[1], mp[2], mp[3], mp[4]))
    with tempfile.TemporaryDirectory() as tmp:
        shapes = bench_shapes(max(5, args.rounds * 4), tmp)
    print()
    print("decode+NMS only, synthetic trained-like outputs at 640 (score 0.001, IoU 0.6, 300 detections), CPU ms, medians")
    print("| layout | case | output | numpy ms | in graph ms | kept | same detections |")
    print("|---|---|---|---|---|---|---|")
    for layout, label, shape, a, b, kept, same in shapes:
        print("| %s | %s | %s | %.2f | %.2f | %d | %s |" % (layout, label, shape, a, b, kept, "yes" if same else "no"))


if __name__ == "__main__":
    main()
