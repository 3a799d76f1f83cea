"""Build time per stage and ONNX Runtime latency of fp32 vs int8, on this CPU.

Two models through `edgekit build --profile cpu` (fp32 + int8, 128
calibration images by default):

- ``demo``: the shipped demo detector at 320x320, with host mAP;
- ``yolov5s``: DemoDetector(num_classes=80, width=(32, 64, 128, 256, 512),
  depth=(1, 2, 3, 1)) at 640x640, about 7M parameters like YOLOv5s, random
  initialisation (timing only; calibrated on the demo's images).

Then the latency of each variant's ONNX file under ONNX Runtime's CPU
provider (all cores, sequential runs of one image, after warm-up).

    .venv/bin/python benchmarks/build_bench.py [--models demo,yolov5s] [--calib-images 128] [--runs 30]

Targets: int8 at most 0.6x the fp32 latency on the cpu profile; the whole
yolov5s-size build with 128 calibration images within 90 s.
"""
import argparse
import os
import statistics
import sys
import tempfile
import time
from typing import Dict, List

import numpy as np

HERE = os.path.abspath(__file__)


def yolov5s_size():
    """YOLOv5s-size detector for timing (random weights): loaded by edgekit as `build_bench.py:yolov5s_size`."""
    from edgekit.host.demo.model import DemoDetector

    return DemoDetector(num_classes=80, width=(32, 64, 128, 256, 512), depth=(1, 2, 3, 1)).eval()


def latency_ms(path: str, runs: int, warmup: int = 5) -> Dict[str, float]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    x = np.random.default_rng(0).random([d if isinstance(d, int) else 1 for d in inp.shape], dtype=np.float32)
    for _ in range(warmup):
        session.run(None, {inp.name: x})
    times: List[float] = []
    for _ in range(runs):
        t = time.perf_counter()
        session.run(None, {inp.name: x})
        times.append((time.perf_counter() - t) * 1000.0)
    times.sort()
    return {"p50": statistics.median(times), "mean": statistics.fmean(times), "min": times[0]}


def build(model: str, calib_images: int, out: str, eval_images):
    from edgekit.host.bundle import BuildOptions, build_bundle
    from edgekit.host.demo import demo_data

    options = BuildOptions(profile="cpu", out=out, calib_images=calib_images)
    if model == "demo":
        options.eval_images = eval_images
    else:
        options.model = "%s:yolov5s_size" % HERE
        options.calib = demo_data().calib_dir
        options.eval = "none"
    return build_bundle(options)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="demo,yolov5s")
    parser.add_argument("--calib-images", type=int, default=128)
    parser.add_argument("--eval-images", type=int, default=None, help="demo: evaluate on the first N validation images (default all)")
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args(argv)
    import onnxruntime
    import torch

    print("edgekit build benchmark: %d CPU cores (os.cpu_count), onnxruntime %s, torch %s" % (os.cpu_count(), onnxruntime.__version__, torch.__version__))
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgekit-bench-") as tmp:
        for model in args.models.split(","):
            result = build(model, args.calib_images, os.path.join(tmp, model), args.eval_images)
            print("\n## %s: build %.1f s (%d calibration images)" % (model, result.total_seconds, args.calib_images))
            print("| stage | seconds |\n|---|---:|")
            for stage, seconds in result.stage_seconds.items():
                print("| %s | %.1f |" % (stage, seconds))
            lat = {}
            for v in result.manifest["variants"]:
                lat[v["name"]] = latency_ms(os.path.join(result.out_dir, v["file"]), args.runs)
            m = {v["name"]: v for v in result.manifest["variants"]}
            q = m["int8"]["quantization"]
            rows.append((model, result, lat, m, q))
            print("\n| variant | size MB | p50 ms | mean ms | host mAP | mAP50 |\n|---|---:|---:|---:|---:|---:|")
            for name, l in lat.items():
                hm = m[name].get("host_metrics") or {}
                size = result.manifest["files"][m[name]["file"]]["size"] / 1e6
                print(
                    "| %s | %.2f | %.1f | %.1f | %s | %s |"
                    % (name, size, l["p50"], l["mean"], "%.3f" % hm["map"] if hm else "-", "%.3f" % hm["map50"] if hm else "-")
                )
            # What ONNX Runtime runs in float (runtime_float), not only what edgekit chose to keep float.
            runtime = q.get("runtime_float") or {}
            print(
                "\nint8/fp32 latency (p50): %.2fx; int8 SQNR %s dB; %d nodes run float in ONNX Runtime (%s), "
                "edgekit left %d decode-tail and %d mixed-precision nodes out of the QDQ graph"
                % (lat["int8"]["p50"] / lat["fp32"]["p50"], q["sqnr_db"], int(runtime.get("float_nodes", 0)),
                   ", ".join("%s %d" % kv for kv in sorted((runtime.get("by_op") or {}).items())) or "none",
                   len(q["head_float"]["nodes"]), sum(len(u["nodes"]) for u in q["float_nodes"]))
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
