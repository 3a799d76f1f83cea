"""Postprocess speed: decode + NMS (edgekit.device.postprocess) against ONNX Runtime fp32
inference of a YOLOv5s- and a YOLOv8n-size model at 640x640, one thread; prints a table.

    .venv/bin/python benchmarks/postprocess_bench.py [--quick]

Models: random weights, real shapes. YOLOv5s-size: the demo architecture at YOLOv5s
widths (32..512, C3 repeats 1, 2, 3, 1; 7.2 M parameters, 80 classes) -> (1, 25200, 85).
YOLOv8n-size: the YOLOv8-style demo (edgekit.host.demo.model_v8) at YOLOv8n widths
(16..256, C2f repeats 1, 2, 2, 1, head width 64; 2.6 M parameters) -> (1, 84, 8400);
skipped with a note when that module is not in this checkout.

Outputs decoded (score 0.001, IoU 0.6, 300 detections: mAP settings):
- "typical" / "crowded": synthetic outputs shaped like a trained detector's (10 or
  40 objects lighting up neighbouring cells, a background mostly under the threshold;
  benchmarks/agent_bench.py's generator, converted to the YOLOv8 layout for v8);
- "random-weight model": the model's own output on a random image (every box
  passes 0.001: the many-candidates case of an untrained model);
- "all pass, uniform": every box above the threshold with uniform scores.

Rounds interleave one inference and one decode of every case, so load from other
processes hits both alike; medians. Times are the calling thread's CPU time by
default (``time.thread_time``; ONNX Runtime at one intra-op thread computes in the
calling thread): on a shared machine wall time mostly measures the wait for a core.
``--clock wall`` for wall time. Goal: decode + NMS at most 5 % of inference.
The "full sort" column is the same decode with NMS sorting every candidate first
(NMS_PRESORT disabled: the previous NMS), to show what the partial presort buys.
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from agent_bench import export_detector, synthetic_yolov5_output  # noqa: E402

from edgekit.device import postprocess as pp  # noqa: E402
from edgekit.device.postprocess import PostprocessSpec, postprocess  # noqa: E402

SIZE = 640
CLASSES = 80


def export_v8n(path: str):
    try:
        import torch

        from edgekit.host.demo.model_v8 import DemoDetectorV8
    except ImportError as exc:
        return None, "YOLOv8n-size model skipped (%s)" % exc
    torch.manual_seed(0)
    model = DemoDetectorV8(num_classes=CLASSES, width=(16, 32, 64, 128, 256), depth=(1, 2, 2, 1), head_width=64).eval()
    params = sum(p.numel() for p in model.parameters())
    x = torch.zeros(1, 3, SIZE, SIZE)
    torch.onnx.export(model, (x,), path, input_names=["images"], output_names=["output0"], opset_version=17, dynamo=False)
    return path, "YOLOv8n-size: %.2f M parameters" % (params / 1e6)


def v8_from_v5(out5: np.ndarray) -> np.ndarray:
    """A trained-YOLOv8-like (1, 84, 8400) output from the v5 generator: per cell its best anchor's row, no objectness."""
    rows, start = [], 0
    for stride in (8, 16, 32):
        cells = (SIZE // stride) ** 2
        block = out5[0, start : start + 3 * cells].reshape(3, cells, -1)
        best = block[:, :, 4].argmax(axis=0)
        rows.append(block[best, np.arange(cells)])
        start += 3 * cells
    r = np.concatenate(rows)
    cls = r[:, 5:] * r[:, 4:5]  # objectness folded into the class scores, as YOLOv8's scores behave
    return np.ascontiguousarray(np.concatenate([r[:, :4], cls], 1).T[None], dtype=np.float32)  # C order, as a runtime returns it


def uniform_output(rng, layout: str) -> np.ndarray:
    if layout == "yolov8":
        out = np.empty((1, 4 + CLASSES, 8400), np.float32)
        out[0, :2] = rng.uniform(0, SIZE, (2, 8400))
        out[0, 2:4] = rng.uniform(8, 200, (2, 8400))
        out[0, 4:] = rng.uniform(0.05, 1.0, (CLASSES, 8400))
        return out
    return synthetic_yolov5_output(rng, all_pass=True)


def candidates(out: np.ndarray, spec: PostprocessSpec) -> int:
    if spec.layout == "yolov8":
        return int((out[0, 4:].max(axis=0) > spec.score_threshold).sum())
    o = out[0]
    return int(((o[:, 5:] * o[:, 4:5]).max(axis=1) > spec.score_threshold).sum())


CLOCKS = {"cpu": time.thread_time, "wall": time.perf_counter}
CLOCK = CLOCKS["cpu"]


def timed(fn) -> float:
    t0 = CLOCK()
    fn()
    return (CLOCK() - t0) * 1000.0


def run_model(name: str, path: str, layout: str, cases, rounds: int) -> None:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).random((1, 3, SIZE, SIZE), dtype=np.float32)
    feed = {session.get_inputs()[0].name: x}
    own = session.run(None, feed)[0]
    cases = cases + [("random-weight model", own)]
    spec = PostprocessSpec(layout, score_threshold=0.001, iou_threshold=0.6, max_detections=300, class_names=[str(i) for i in range(CLASSES)])
    infer = []
    post = {n: [] for n, _ in cases}
    full = {n: [] for n, _ in cases}
    presort = pp.NMS_PRESORT
    for _ in range(2):  # warm-up
        session.run(None, feed)
        for _n, out in cases:
            postprocess(out, spec)
    def full_sort(out: np.ndarray) -> float:
        pp.NMS_PRESORT = 10 ** 9
        try:
            return timed(lambda: postprocess(out, spec))
        finally:
            pp.NMS_PRESORT = presort

    for r in range(rounds):
        infer.append(timed(lambda: session.run(None, feed)))
        for n, out in cases:
            # Alternate which goes first: the second finds the output in cache.
            if r % 2:
                full[n].append(full_sort(out))
                post[n].append(timed(lambda: postprocess(out, spec)))
            else:
                post[n].append(timed(lambda: postprocess(out, spec)))
                full[n].append(full_sort(out))
    med = statistics.median
    inf = med(infer)
    print("\n%s %s, ONNX Runtime fp32, 1 thread: inference p50 %.1f ms (%d rounds)" % (name, tuple(own.shape), inf, rounds))
    print("%-22s %11s %6s %14s %10s %6s %16s" % ("output", "candidates", "kept", "decode+NMS p50", "% infer", "goal", "full sort p50"))
    for n, out in cases:
        ms = med(post[n])
        kept = len(postprocess(out, spec)[0])
        share = ms / inf * 100.0
        print("%-22s %11d %6d %11.2f ms %9.2f%% %6s %13.2f ms" % (n, candidates(out, spec), kept, ms, share, "ok" if share <= 5.0 else "MISSED", med(full[n])))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="cpu", help="cpu: this thread's CPU time (default; ONNX Runtime at 1 thread runs in it); wall: perf_counter")
    args = parser.parse_args()
    global CLOCK
    CLOCK = CLOCKS[args.clock]
    import onnxruntime as ort

    rounds = 5 if args.quick else 25
    print("python %s, numpy %s, onnxruntime %s, %d CPUs; clock: %s" % (sys.version.split()[0], np.__version__, ort.__version__, os.cpu_count(),
          "this thread's CPU time" if args.clock == "cpu" else "wall (perf_counter)"))
    rng = np.random.default_rng(0)
    typical, crowded = synthetic_yolov5_output(rng), synthetic_yolov5_output(rng, objects=40, background=(-8.0, 2.0))
    with tempfile.TemporaryDirectory() as tmp:
        v5 = export_detector(os.path.join(tmp, "v5s.onnx"), SIZE, (32, 64, 128, 256, 512), CLASSES)
        run_model("YOLOv5s-size", v5, "yolov5", [("typical (10 objects)", typical), ("crowded (40 objects)", crowded), ("all pass, uniform", uniform_output(rng, "yolov5"))], rounds)
        v8, note = export_v8n(os.path.join(tmp, "v8n.onnx"))
        print("\n" + note)
        if v8:
            cases = [("typical (10 objects)", v8_from_v5(typical)), ("crowded (40 objects)", v8_from_v5(crowded)), ("all pass, uniform", uniform_output(rng, "yolov8"))]
            run_model("YOLOv8n-size", v8, "yolov8", cases, rounds)


if __name__ == "__main__":
    main()
