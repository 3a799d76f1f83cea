"""Pruning Ultralytics YOLOv8 / YOLO11 (from the package's own yaml, random
weights): params, MACs, alignment, what was left whole, ONNX Runtime CPU latency.

Needs the ``ultralytics`` package (``make venv`` installs it; where torchvision
is missing, put tests/ultralytics_shim on PYTHONPATH). Nothing is downloaded.
Each model is pruned uniformly at ``--ratio`` with channels aligned to
``--alignment``, both the unpruned and the pruned model are exported to ONNX
(opset 17) and timed with ONNX Runtime on the CPU, timing rounds alternating
between the two. Accuracy is not measured (random weights).

    PYTHONPATH=tests/ultralytics_shim python benchmarks/ultralytics_prune_bench.py   # the table in docs/prune.md
"""
import argparse
import os
import platform
import sys
import tempfile
import time
from typing import List

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from prune_bench import ort_latency  # noqa: E402 - the same interleaved timing as the demo's pruning table


def parse_args(argv: List[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="yolov8n,yolov8s,yolo11n,yolo11s")
    p.add_argument("--ratio", type=float, default=0.5)
    p.add_argument("--alignment", type=int, default=8)
    p.add_argument("--size", type=int, default=640)
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--runs", type=int, default=10, help="timed runs per model per round")
    return p.parse_args(argv)


def main(argv: List[str]) -> None:
    args = parse_args(argv)
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_VERBOSE", "False")
    from ultralytics.nn.tasks import DetectionModel

    from edgekit.host.export.onnx_export import export_onnx
    from edgekit.host.prune import PruneConfig, prune_model

    torch.set_num_threads(1)
    rows = []
    folder = tempfile.mkdtemp(prefix="ultralytics-bench-")
    for name in args.models.split(","):
        torch.manual_seed(0)
        model = DetectionModel(name + ".yaml", verbose=False).eval()
        started = time.time()
        result = prune_model(model, torch.rand(1, 3, args.size, args.size), PruneConfig(ratio=args.ratio, alignment=args.alignment))
        seconds = time.time() - started
        r = result.report
        paths = [os.path.join(folder, "%s-%s.onnx" % (name, tag)) for tag in ("base", "pruned")]
        export_onnx(model, (args.size, args.size), paths[0], 17)
        export_onnx(result.model, (args.size, args.size), paths[1], 17)
        timed = ort_latency({"base": paths[0], "pruned": paths[1]}, (args.size, args.size), args.threads, args.rounds, args.runs)
        before_ms, after_ms = timed["base"]["p50_ms"], timed["pruned"]["p50_ms"]
        left = "; ".join("%s (%s)" % (e["block"], e["group"]) for e in r.excluded) or "-"
        rows.append(
            (name, r.params_before / 1e6, r.params_after / 1e6, r.macs_before / 1e9, r.macs_after / 1e9, r.aligned, before_ms, after_ms, left, seconds, r.problems)
        )
        print("done %s in %.0fs" % (name, seconds), file=sys.stderr)
    print(
        "%dx%d, ratio %g (uniform, L1), alignment %d; ONNX Runtime CPU, %d thread(s), median of %d runs; %s, %s, %d CPUs, load %s"
        % (args.size, args.size, args.ratio, args.alignment, args.threads, args.rounds * args.runs, platform.processor() or platform.machine(), platform.python_version(), os.cpu_count() or 0, "/".join("%.1f" % v for v in os.getloadavg()))
    )
    print("| model | params M | GMACs | aligned | ORT p50 ms | speedup | left unpruned | prune s |")
    print("|---|---|---|---|---|---|---|---|")
    for name, pb, pa, mb, ma, aligned, tb, ta, left, seconds, problems in rows:
        print("| %s | %.2f -> %.2f | %.2f -> %.2f | %s | %.1f -> %.1f | %.2fx | %s | %.0f |" % (name, pb, pa, mb, ma, "yes" if aligned else "no: %s" % problems[0], tb, ta, tb / ta, left, seconds))


if __name__ == "__main__":
    main(sys.argv[1:])
