"""edgekit int8 against ONNX Runtime's plain quantizer and fp32, on this CPU.

For each model, from the same fp32 graph after ``quant_pre_process``:

- ``fp32``: that graph;
- ``edgekit``: ``quantize_int8`` with the cpu profile (u8s8, MinMax);
- ``plain``: ``onnxruntime.quantization.quantize_static`` with QDQ, uint8
  activations, per-channel int8 weights, MinMax, on the same images.

Latency is measured interleaved (fp32, edgekit, plain, fp32, ... in rounds, in
one process) at 1 and 2 intra-op threads; each cell is the median over rounds
of each round's median. The demo rows also get host mAP on the demo's
validation set. Prints the machine, ONNX Runtime version and load average.

    .venv/bin/python benchmarks/quant_bench.py [--models demo,demo-p50,yolov5s] [--calib-images 32] [--rounds 15] [--runs 5] [--profile-ops] [--gemm]

``demo-p50`` is the demo pruned to 50 % fewer MACs (sensitivity, alignment 16)
and recovered for PRUNED_RECOVER_SECONDS; ``--gemm`` adds the physical
reference, int8 against fp32 GEMM throughput of this CPU.

``--profile-ops`` also prints, per variant, ONNX Runtime's profiler time by op
type at 1 thread: sessions profiled interleaved, each node's 20th percentile
over the runs (robust to a loaded machine), summed per op type.
"""
import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
VARIANTS = ("fp32", "edgekit", "plain")


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# The 50 %-pruned demo: the cpu profile's alignment and the sensitivity strategy
# (edgekit build's defaults), then a short distillation so that its mAP means something.
PRUNED_RECOVER_SECONDS = 240.0


def _pruned_demo():
    import torch

    from edgekit.host.demo import demo_data, load_demo_model, preprocess_spec
    from edgekit.host.prune import PruneConfig, prune_model, recover
    from edgekit.host.prune.run import calibration_tensors

    base = load_demo_model()
    calib = calibration_tensors(demo_data().calib_dir, preprocess_spec(), 32)
    torch.manual_seed(0)
    result = prune_model(base, calib[0], PruneConfig(strategy="sensitivity", target_macs=0.5, alignment=16), calib_images=calib, layout="yolov5")
    assert result.report.ok, result.report.problems
    stats = recover(result.model, base, calib, time_budget_s=PRUNED_RECOVER_SECONDS, layout="yolov5", device="cpu")
    r = result.report
    print("demo-p50: %.2fM -> %.2fM params, %.3f -> %.3f GMACs, recovered %s steps in %.0f s"
          % (r.params_before / 1e6, r.params_after / 1e6, r.macs_before / 1e9, r.macs_after / 1e9, stats.get("steps"), PRUNED_RECOVER_SECONDS))
    return result.model.eval()


def _model(name: str):
    from edgekit.host.demo import load_demo_model

    if name == "demo":
        return load_demo_model(), (320, 320)
    if name == "demo-p50":
        return _pruned_demo(), (320, 320)
    sys.path.insert(0, HERE)
    from build_bench import yolov5s_size

    return yolov5s_size(), (640, 640)


def _plain_int8(pre: str, out: str, calib, input_name: str, count: int) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from edgekit.calibration.readers import ImageBatchReader

    quantize_static(
        pre,
        out,
        ImageBatchReader(calib, input_name, range(count)),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
    )


def prepare(name: str, calib_images: int, work: str) -> Dict[str, str]:
    from edgekit.calibration.images import load_images
    from edgekit.host.demo import demo_data, preprocess_spec
    from edgekit.host.export import export_onnx, simplify_onnx
    from edgekit.host.profiles import load_profile
    from edgekit.host.quantize import quantize_int8
    from edgekit.host.quantize.int8 import _quiet, pre_process

    model, size = _model(name)
    raw, fp32, pre = (os.path.join(work, "%s-%s.onnx" % (name, k)) for k in ("raw", "fp32", "pre"))
    export_onnx(model, size, raw, 17)
    simplify_onnx(raw, fp32)
    graph = pre_process(fp32, pre)
    input_name = graph.graph.input[0].name
    spec = preprocess_spec()
    spec.size = size  # the yolov5s-size model runs at 640x640 on the same images
    calib = load_images(demo_data().calib_dir, spec, count=calib_images)
    paths = {"fp32": pre, "edgekit": os.path.join(work, "%s-edgekit.onnx" % name), "plain": os.path.join(work, "%s-plain.onnx" % name)}
    quantize_int8(fp32, paths["edgekit"], calib, load_profile("cpu"), "minmax", calib_images, 0.0, "yolov5", work)
    with _quiet():
        _plain_int8(pre, paths["plain"], calib, input_name, len(calib))
    return paths


def _session(path: str, threads: int, profile_prefix: Optional[str] = None) -> Any:
    """A CPU session with ``threads`` intra-op threads (and ORT's profiler when a prefix is given)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])


def interleaved_ms(paths: Dict[str, str], threads: int, rounds: int, runs: int) -> Dict[str, float]:
    sessions = {k: _session(p, threads) for k, p in paths.items()}
    first = next(iter(sessions.values())).get_inputs()[0]
    x = np.random.default_rng(0).random([d if isinstance(d, int) else 1 for d in first.shape], dtype=np.float32)
    for s in sessions.values():  # warm-up
        for _ in range(3):
            s.run(None, {s.get_inputs()[0].name: x})
    medians: Dict[str, List[float]] = {k: [] for k in sessions}
    every: Dict[str, List[float]] = {k: [] for k in sessions}
    for _ in range(rounds):
        for k, s in sessions.items():
            name = s.get_inputs()[0].name
            times = []
            for _ in range(runs):
                t = time.perf_counter()
                s.run(None, {name: x})
                times.append((time.perf_counter() - t) * 1000.0)
            medians[k].append(statistics.median(times))
            every[k].extend(times)
    result = {k: statistics.median(v) for k, v in medians.items()}
    # The 10th percentile of all runs: on a loaded machine closer to the uncontended time.
    result.update({k + "@p10": float(np.percentile(v, 10)) for k, v in every.items()})
    return result


def profile_ops(paths: Dict[str, str], runs: int = 30, threads: int = 1) -> Dict[str, Dict[str, float]]:
    """{variant: {op type: ms}} from ONNX Runtime's profiler, sessions run interleaved."""
    import json

    sessions = {k: _session(p, threads, profile_prefix=os.path.join(os.path.dirname(p), "profile-%s" % k)) for k, p in paths.items()}
    first = next(iter(sessions.values())).get_inputs()[0]
    x = np.random.default_rng(0).random([d if isinstance(d, int) else 1 for d in first.shape], dtype=np.float32)
    for _ in range(runs):
        for s in sessions.values():
            s.run(None, {s.get_inputs()[0].name: x})
    result = {}
    for k, s in sessions.items():
        path = s.end_profiling()
        with open(path) as f:
            events = json.load(f)
        os.remove(path)
        samples: Dict[tuple, List[float]] = {}
        for e in events:
            if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
                samples.setdefault((e["name"], e["args"]["op_name"]), []).append(e["dur"] / 1000.0)
        by_op: Dict[str, float] = {}
        for (_, op), v in samples.items():
            by_op[op] = by_op.get(op, 0.0) + float(np.percentile(v[min(3, len(v) - 1):], 20))
        result[k] = dict(sorted(by_op.items(), key=lambda kv: -kv[1]))
    return result


def demo_map(path: str) -> float:
    from edgekit.host.bundle.reference import evaluate_onnx
    from edgekit.host.demo import demo_data, postprocess_spec, preprocess_spec

    data = demo_data()
    return evaluate_onnx(path, data.val_images_dir, data.val_annotations, preprocess_spec(), postprocess_spec())["map"]


def main(argv: List[str]) -> int:
    import onnxruntime as ort

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="demo")
    parser.add_argument("--calib-images", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--no-map", action="store_true")
    parser.add_argument("--profile-ops", action="store_true")
    parser.add_argument("--gemm", action="store_true", help="also print the int8 against fp32 GEMM throughput of this CPU (the physical reference)")
    args = parser.parse_args(argv)
    print("machine: %s, %d logical CPUs, onnxruntime %s, python %s" % (_cpu_name(), os.cpu_count() or 0, ort.__version__, platform.python_version()))
    print("load average before: %.2f %.2f %.2f" % os.getloadavg())
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgekit-qbench-") as work:
        for name in args.models.split(","):
            paths = prepare(name, args.calib_images, work)
            maps = {k: demo_map(p) for k, p in paths.items()} if name.startswith("demo") and not args.no_map else {}
            for threads in [int(t) for t in args.threads.split(",")]:
                ms = interleaved_ms(paths, threads, args.rounds, args.runs)
                rows.append((name, threads, ms, maps, os.getloadavg()[0]))
            if args.profile_ops:
                for k, ops in profile_ops(paths).items():
                    print("%s %s profiler ms by op (1 thread): total %.2f; %s" % (name, k, sum(ops.values()), ", ".join("%s %.3f" % kv for kv in ops.items())))
    print("")
    print("| model | threads | fp32 ms | edgekit int8 ms | plain QDQ int8 ms | edgekit / plain | edgekit / fp32 | mAP fp32 / edgekit / plain | load |")
    print("|---|---:|---:|---:|---:|---:|---:|---|---:|")
    for name, threads, ms, maps, load in rows:
        m = " / ".join("%.3f" % maps[k] for k in VARIANTS) if maps else "-"
        print(
            "| %s | %d | %.2f | %.2f | %.2f | %.2f | %.2f | %s | %.1f |"
            % (name, threads, ms["fp32"], ms["edgekit"], ms["plain"], ms["edgekit"] / ms["plain"], ms["edgekit"] / ms["fp32"], m, load)
        )
    print("")
    print("10th percentile of all runs (same runs):")
    print("")
    print("| model | threads | fp32 ms | edgekit int8 ms | plain QDQ int8 ms | edgekit / plain | edgekit / fp32 |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, threads, ms, maps, load in rows:
        f, e, p = ms["fp32@p10"], ms["edgekit@p10"], ms["plain@p10"]
        print("| %s | %d | %.2f | %.2f | %.2f | %.2f | %.2f |" % (name, threads, f, e, p, e / p, e / f))
    if args.gemm:
        gemm_reference([int(t) for t in args.threads.split(",")], args.rounds)
    print("load average after: %.2f %.2f %.2f" % os.getloadavg())
    return 0


def _matmul_graph(path: str, n: int, integer: bool) -> None:
    """One (n x n) @ (n x n) product: float MatMul, or MatMulInteger (uint8 x int8 -> int32, MLAS's int8 GEMM)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    if integer:
        w = numpy_helper.from_array(rng.integers(-127, 128, (n, n)).astype(np.int8), "w")
        node = helper.make_node("MatMulInteger", ["x", "w"], ["y"])
        x_type, y_type = TensorProto.UINT8, TensorProto.INT32
    else:
        w = numpy_helper.from_array(rng.standard_normal((n, n)).astype(np.float32), "w")
        node = helper.make_node("MatMul", ["x", "w"], ["y"])
        x_type, y_type = TensorProto.FLOAT, TensorProto.FLOAT
    graph = helper.make_graph([node], "gemm", [helper.make_tensor_value_info("x", x_type, [n, n])], [helper.make_tensor_value_info("y", y_type, [n, n])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def gemm_reference(threads_list: List[int], rounds: int, n: int = 1024) -> None:
    """The physical reference: int8 against fp32 GEMM throughput of this CPU through ONNX Runtime's MLAS kernels.

    The ceiling of what int8 can gain on convolutions here (a conv is a GEMM
    after im2col); interleaved like the model rows.
    """
    with tempfile.TemporaryDirectory(prefix="edgekit-gemm-") as work:
        paths = {"fp32": os.path.join(work, "f.onnx"), "int8": os.path.join(work, "i.onnx")}
        _matmul_graph(paths["fp32"], n, False)
        _matmul_graph(paths["int8"], n, True)
        feeds = {"fp32": np.random.default_rng(1).standard_normal((n, n)).astype(np.float32),
                 "int8": np.random.default_rng(1).integers(0, 256, (n, n)).astype(np.uint8)}
        print("")
        print("GEMM reference: %dx%d @ %dx%d, ONNX Runtime MatMul (fp32) against MatMulInteger (u8 x s8 -> s32), medians of %d interleaved rounds" % (n, n, n, n, rounds))
        print("")
        print("| threads | fp32 ms | int8 ms | fp32 GFLOP/s | int8 GOP/s | int8 / fp32 time |")
        print("|---:|---:|---:|---:|---:|---:|")
        for threads in threads_list:
            sessions = {k: _session(p, threads) for k, p in paths.items()}
            times: Dict[str, List[float]] = {k: [] for k in paths}
            for s_name, s in sessions.items():
                s.run(None, {"x": feeds[s_name]})
            for _ in range(rounds):
                for k, s in sessions.items():
                    t = time.perf_counter()
                    for _ in range(3):
                        s.run(None, {"x": feeds[k]})
                    times[k].append((time.perf_counter() - t) * 1000.0 / 3)
            f, i = statistics.median(times["fp32"]), statistics.median(times["int8"])
            ops = 2.0 * n ** 3
            print("| %d | %.2f | %.2f | %.1f | %.1f | %.2f |" % (threads, f, i, ops / f / 1e6, ops / i / 1e6, i / f))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
