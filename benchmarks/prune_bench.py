"""Pruning benchmark on the demo detector: accuracy and ONNX Runtime CPU latency.

For each strategy: prune the shipped demo detector to ``--target-macs`` fewer
MACs (channels aligned to ``--alignment``), measure COCO mAP@0.5:0.95 on the
demo validation split before recovery, distil it back from the unpruned model
on the calibration images within ``--recover-seconds`` seconds of CPU time, and
measure again. Every model is exported to ONNX and timed with ONNX Runtime on
the CPU; timing rounds alternate between the models so that a busy machine
slows them all alike. Prints a table (and ``--json`` writes the numbers).

    python benchmarks/prune_bench.py                       # the table in docs/prune.md
    python benchmarks/prune_bench.py --strategies uniform --recover-seconds 60 --eval-images 100
"""
import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from typing import Dict, List

import numpy as np
import torch



def _print_progress(event) -> None:
    """Recovery's step events, as one overwritten stderr line (the library does not draw)."""
    if event.get("event") == "step":
        print("\r%s %d/%d %s  %s" % (event["stage"], event["done"], event["total"], event["unit"], event.get("info", "")), end="", file=sys.stderr)

def parse_args(argv: List[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="demo", choices=["demo", "demo-v8"], help="which built-in demo detector")
    p.add_argument("--target-macs", type=float, default=0.5, help="fraction of MACs to remove")
    p.add_argument("--strategies", default="uniform,global,sensitivity", help="comma-separated: uniform, global, sensitivity")
    p.add_argument("--criterion", default="l1", choices=["l1", "bn"])
    p.add_argument("--alignment", type=int, default=8)
    p.add_argument("--recover-seconds", type=float, default=600.0, help="distillation budget per model, seconds")
    p.add_argument("--recover-steps", type=int, default=None, help="or a step count (whichever ends first)")
    p.add_argument("--recover-lr", type=float, default=1e-3)
    p.add_argument("--calib-images", type=int, default=128)
    p.add_argument(
        "--recover-images",
        type=int,
        default=0,
        help="distil on this many unlabelled images of the demo's training split instead of the calibration images (0: calibration images)",
    )
    p.add_argument("--eval-images", type=int, default=None, help="evaluate on the first N validation images (default: all)")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads for the latency runs")
    p.add_argument("--torch-threads", type=int, default=1, help="torch threads for pruning, recovery and evaluation")
    p.add_argument("--rounds", type=int, default=10, help="timing rounds (each times every model)")
    p.add_argument("--runs", type=int, default=20, help="timed runs per model per round")
    p.add_argument("--json", default=None, help="write the results here too")
    p.add_argument(
        "--latency-model",
        default=None,
        metavar="REF",
        help="instead: any --model reference (e.g. a yolov5s train.py checkpoint, random weights) for MACs and latency rows only, no accuracy",
    )
    p.add_argument("--code-path", default=None, help="with --latency-model: the model's source tree (e.g. a yolov5 clone)")
    p.add_argument("--trust-checkpoint", action="store_true", help="with --latency-model: allow unpickling a model checkpoint")
    p.add_argument("--input-size", type=int, default=640, help="with --latency-model: square input size")
    return p.parse_args(argv)


def ort_latency(paths: Dict[str, str], input_size, threads: int, rounds: int, runs: int) -> Dict[str, Dict[str, float]]:
    """Median and p90 latency (ms) per model, rounds interleaved across models."""
    from edgekit.host.export import open_session

    sessions = {name: open_session(path, threads=threads) for name, path in paths.items()}
    x = np.random.default_rng(0).random((1, 3) + tuple(input_size), dtype=np.float32)
    feeds = {name: {s.get_inputs()[0].name: x} for name, s in sessions.items()}
    for name, s in sessions.items():  # warm-up
        for _ in range(5):
            s.run(None, feeds[name])
    times: Dict[str, List[float]] = {name: [] for name in sessions}
    for _ in range(rounds):
        for name, s in sessions.items():
            for _ in range(runs):
                t = time.perf_counter()
                s.run(None, feeds[name])
                times[name].append((time.perf_counter() - t) * 1000.0)
    out = {}
    for name, values in times.items():
        values.sort()
        out[name] = {"p50_ms": statistics.median(values), "p90_ms": values[int(0.9 * (len(values) - 1))], "runs": len(values)}
    return out


def main(argv: List[str]) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.torch_threads)
    if args.latency_model:
        return latency_rows(args)
    from edgekit.host.demo import demo_data, evaluate_torch, preprocess_spec
    from edgekit.host.export import export_onnx
    from edgekit.host.model.loading import load_model
    from edgekit.host.prune import PruneConfig, prune_model, recover
    from edgekit.host.prune.run import calibration_tensors

    loaded = load_model(args.model)
    base = loaded.module
    size = loaded.input_size
    data = demo_data(train=args.recover_images > 0)
    calib = calibration_tensors(data.calib_dir, preprocess_spec(), args.calib_images)
    recovery_images = calib
    if args.recover_images > 0:
        from edgekit.calibration.images import load_images

        # Kept as uint8 and converted per batch (thousands of images fit in memory); labels unused.
        recovery_images = load_images(data.train_images_dir, preprocess_spec(), count=args.recover_images, seed=0, what="recovery")
    example = calib[0]

    def evaluate(model) -> Dict[str, float]:
        stats = evaluate_torch(model, data, limit=args.eval_images)
        return {"map": stats["map"], "map50": stats["map50"]}

    rows = []
    models = {"unpruned": base}
    t0 = time.process_time()
    base_metrics = evaluate(base)
    rows.append({"model": "unpruned", "strategy": "-", "recovery": "-", **base_metrics})
    print("unpruned: mAP %.4f (eval %.0f s CPU)" % (base_metrics["map"], time.process_time() - t0), file=sys.stderr)
    for strategy in [s.strip() for s in args.strategies.split(",") if s.strip()]:
        config = PruneConfig(strategy=strategy, target_macs=args.target_macs, criterion=args.criterion, alignment=args.alignment)
        t0 = time.process_time()
        result = prune_model(base, example, config, calib_images=calib, layout=loaded.output_layout)
        prune_cpu = time.process_time() - t0
        report = result.report
        assert report.ok, report.problems
        pruned_metrics = evaluate(result.model)
        rows.append(
            {
                "model": "%s (no recovery)" % strategy,
                "strategy": strategy,
                "recovery": "none",
                "prune_cpu_s": round(prune_cpu, 1),
                "params": report.params_after,
                "macs": report.macs_after,
                "macs_reduction": report.macs_reduction,
                **pruned_metrics,
            }
        )
        print("%s: pruned in %.0f s CPU, %.1f%% fewer MACs, mAP %.4f" % (strategy, prune_cpu, 100 * report.macs_reduction, pruned_metrics["map"]), file=sys.stderr)
        t0 = time.process_time()
        stats = recover(
            result.model,
            base,
            recovery_images,
            steps=args.recover_steps,
            time_budget_s=args.recover_seconds,
            progress=_print_progress if sys.stderr.isatty() else None,
            layout=loaded.output_layout,
            lr=args.recover_lr,
        )
        recover_cpu = time.process_time() - t0
        recovered = evaluate(result.model)
        rows.append(
            {
                "model": "%s + distillation" % strategy,
                "strategy": strategy,
                "recovery": "%d steps on %d images, %.0f s wall, %.0f s CPU" % (stats["steps"], stats["images"], stats["seconds_total"], recover_cpu),
                "params": report.params_after,
                "macs": report.macs_after,
                "macs_reduction": report.macs_reduction,
                **recovered,
            }
        )
        models[strategy] = result.model
        print("%s: recovered in %d steps, mAP %.4f" % (strategy, stats["steps"], recovered["map"]), file=sys.stderr)

    from edgekit.host.prune.metrics import count_macs_params

    base_macs, base_params = count_macs_params(base, example)
    rows[0].update({"params": base_params, "macs": base_macs, "macs_reduction": 0.0})
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for name, model in models.items():
            path = os.path.join(tmp, "%s.onnx" % name)
            export_onnx(model, size, path, opset=17)
            paths[name] = path
        latency = ort_latency(paths, size, args.threads, args.rounds, args.runs)
    for row in rows:
        key = "unpruned" if row["strategy"] == "-" else row["strategy"]
        row.update(latency[key])
        row["speedup"] = latency["unpruned"]["p50_ms"] / latency[key]["p50_ms"]
        row["map_change_points"] = 100.0 * (row["map"] - base_metrics["map"])

    header = ("model", "params", "GMACs", "mAP@.5:.95", "change", "mAP@.5", "ORT p50 ms", "speedup", "recovery")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print(
            "| %s | %.2fM | %.3f | %.4f | %+.2f | %.4f | %.2f | %.2fx | %s |"
            % (row["model"], row["params"] / 1e6, row["macs"] / 1e9, row["map"], row["map_change_points"], row["map50"], row["p50_ms"], row["speedup"], row["recovery"])
        )
    print(
        "\ninput %dx%d, target %.0f%% fewer MACs, alignment %d, criterion %s; ONNX Runtime CPU, %d thread(s), %d runs per model; "
        "mAP on %s demo validation images; %s, torch %s, %d CPUs"
        % (
            size[0],
            size[1],
            100 * args.target_macs,
            args.alignment,
            args.criterion,
            args.threads,
            args.rounds * args.runs,
            args.eval_images or "all",
            platform.processor() or platform.machine(),
            torch.__version__,
            os.cpu_count() or 0,
        )
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rows": rows}, f, indent=2)
    return 0


def latency_rows(args: argparse.Namespace) -> int:
    """MACs and ONNX Runtime latency of a model without labelled data (random weights are fine), pruned per strategy.

    No accuracy: a model with random weights has none (the sensitivity
    strategy, if listed, ranks groups by output damage on random images).
        python benchmarks/prune_bench.py --latency-model yolov5s.pt --trust-checkpoint --code-path yolov5 --strategies uniform,global
    """
    from edgekit.host.export import export_onnx
    from edgekit.host.model.loading import load_model
    from edgekit.host.prune import PruneConfig, prune_model
    from edgekit.host.prune.metrics import count_macs_params

    loaded = load_model(args.latency_model, trust_checkpoint=args.trust_checkpoint, code_path=args.code_path)
    size = (args.input_size, args.input_size)
    gen = torch.Generator().manual_seed(0)
    images = [torch.rand(1, 3, size[0], size[1], generator=gen) for _ in range(8)]
    base = loaded.module
    macs, params = count_macs_params(base, images[0])
    rows = [{"model": "unpruned", "strategy": "-", "params": params, "macs": macs, "macs_reduction": 0.0, "prune_cpu_s": 0.0, "prune_wall_s": 0.0}]
    models = {"unpruned": base}
    for strategy in [s.strip() for s in args.strategies.split(",") if s.strip()]:
        config = PruneConfig(strategy=strategy, target_macs=args.target_macs, criterion=args.criterion, alignment=args.alignment)
        t0, w0 = time.process_time(), time.time()
        result = prune_model(base, images[0], config, calib_images=images, layout=loaded.output_layout)
        report = result.report
        assert report.ok, report.problems
        rows.append(
            {
                "model": "%s" % strategy,
                "strategy": strategy,
                "params": report.params_after,
                "macs": report.macs_after,
                "macs_reduction": report.macs_reduction,
                "prune_cpu_s": round(time.process_time() - t0, 1),
                "prune_wall_s": round(time.time() - w0, 1),
                "excluded": [e["group"] for e in report.excluded],
            }
        )
        models[strategy] = result.model
        print("%s: pruned in %.0f s CPU, %.1f%% fewer MACs" % (strategy, rows[-1]["prune_cpu_s"], 100 * report.macs_reduction), file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for name, model in models.items():
            paths[name] = os.path.join(tmp, "%s.onnx" % name)
            export_onnx(model, size, paths[name], opset=17)
        latency = ort_latency(paths, size, args.threads, args.rounds, args.runs)
    header = ("model", "params", "GMACs", "MACs removed", "ORT p50 ms", "p90 ms", "speedup", "prune s (wall/CPU)")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        key = "unpruned" if row["strategy"] == "-" else row["strategy"]
        row.update(latency[key])
        row["speedup"] = latency["unpruned"]["p50_ms"] / latency[key]["p50_ms"]
        print(
            "| %s %s | %.2fM | %.3f | %.1f%% | %.2f | %.2f | %.2fx | %.0f / %.0f |"
            % (os.path.basename(args.latency_model), row["model"], row["params"] / 1e6, row["macs"] / 1e9, 100 * row["macs_reduction"], row["p50_ms"], row["p90_ms"], row["speedup"], row["prune_wall_s"], row["prune_cpu_s"])
        )
    print(
        "\ninput %dx%d, target %.0f%% fewer MACs, alignment %d; random weights (latency and MACs only); ONNX Runtime CPU, %d thread(s), %d runs per model; %s, torch %s, %d CPUs, load %s"
        % (size[0], size[1], 100 * args.target_macs, args.alignment, args.threads, args.rounds * args.runs, platform.processor() or platform.machine(), torch.__version__, os.cpu_count() or 0, open("/proc/loadavg").read().split()[0] if os.path.exists("/proc/loadavg") else "?")
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
