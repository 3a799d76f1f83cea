"""The timing loop and its statistics, defined the way ``trtexec`` defines them
so the agent's numbers can be checked against it.

- warm-up: at least ``warmup`` iterations and at least ``warmup_seconds``;
- measurement: at least ``iterations`` and at least ``min_seconds``
  (trtexec's --iterations and --duration);
- median: the mean of the two middle values for an even count (trtexec's
  findMedian); other percentiles: nearest rank, ``ceil(p / 100 * n) - 1``
  (trtexec's findPercentile); std: population standard deviation.

Each step returns its own milliseconds: the runner decides what is timed
(ONNX Runtime: the run call; TensorRT: CUDA events around the enqueue, which
is trtexec's "GPU Compute Time"). Stdlib only.
"""
import math
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from edgekit.contract.result import LATENCY_KEYS

# Guard against a min_seconds loop on a very fast model filling memory.
MAX_ITERATIONS = 10000000


def percentile(sorted_ms: Sequence[float], p: float) -> float:
    """trtexec's nearest-rank percentile of an ascending list."""
    n = len(sorted_ms)
    if n == 0:
        raise ValueError("no samples")
    if p <= 0:
        return float(sorted_ms[0])
    index = int(math.ceil(p / 100.0 * n)) - 1
    return float(sorted_ms[min(max(index, 0), n - 1)])


def median(sorted_ms: Sequence[float]) -> float:
    n = len(sorted_ms)
    if n == 0:
        raise ValueError("no samples")
    mid = n // 2
    if n % 2:
        return float(sorted_ms[mid])
    return (sorted_ms[mid - 1] + sorted_ms[mid]) / 2.0


def summarize(samples_ms: Sequence[float]) -> Dict[str, float]:
    """mean, std, min, p50, p90, p95, p99, max (the result's latency_ms)."""
    values = sorted(float(v) for v in samples_ms)
    n = len(values)
    if n == 0:
        raise ValueError("no samples")
    mean = math.fsum(values) / n
    var = math.fsum((v - mean) ** 2 for v in values) / n
    stats = {
        "mean": mean,
        "std": math.sqrt(var),
        "min": values[0],
        "p50": median(values),
        "p90": percentile(values, 90),
        "p95": percentile(values, 95),
        "p99": percentile(values, 99),
        "max": values[-1],
    }
    assert tuple(stats) == LATENCY_KEYS
    return {k: round(v, 4) for k, v in stats.items()}


def stage_summary(samples_ms: Sequence[float]) -> Optional[Dict[str, float]]:
    """{mean, p50, p99} for a per-image stage, or None without samples."""
    if not samples_ms:
        return None
    values = sorted(float(v) for v in samples_ms)
    return {
        "mean": round(math.fsum(values) / len(values), 4),
        "p50": round(median(values), 4),
        "p99": round(percentile(values, 99), 4),
    }


def throughput_fps(mean_ms: float) -> Optional[float]:
    return round(1000.0 / mean_ms, 2) if mean_ms > 0 else None


def batch_entry(batch: int, latency_ms: Optional[Dict[str, float]], reason: Optional[str] = None, iterations: int = 0) -> Dict[str, Any]:
    """One entry of run["throughput"] (edgekit.contract.result): images/s = batch * 1000 / mean ms."""
    if latency_ms is None:
        return {"batch": batch, "status": "skipped", "reason": reason, "iterations": 0, "latency_ms": None, "images_per_s": None}
    mean = latency_ms["mean"]
    return {
        "batch": batch,
        "status": "ok",
        "reason": None,
        "iterations": iterations,
        "latency_ms": latency_ms,
        "images_per_s": round(batch * 1000.0 / mean, 2) if mean > 0 else None,
    }


def measure(
    step: Callable[[], float],
    warmup: int = 10,
    warmup_seconds: float = 0.0,
    iterations: int = 100,
    min_seconds: float = 0.0,
    on_progress: Optional[Callable[[str, int, Optional[int]], None]] = None,
    on_measure_start: Optional[Callable[[], None]] = None,
) -> Tuple[List[float], int, float]:
    """Warm up, then time ``step``; returns (samples in ms, warm-up count, measured wall seconds)."""
    clock = time.perf_counter
    warm_done = 0
    deadline = clock() + max(warmup_seconds, 0.0)
    while warm_done < warmup or clock() < deadline:
        step()
        warm_done += 1
        if on_progress is not None:
            on_progress("warmup", warm_done, warmup if warmup_seconds <= 0 else None)
    if on_measure_start is not None:
        on_measure_start()
    samples = []  # type: List[float]
    append = samples.append
    start = clock()
    total = iterations if min_seconds <= 0 else None
    while len(samples) < iterations or (clock() - start) < min_seconds:
        append(step())
        if on_progress is not None:
            on_progress("bench", len(samples), total)
        if len(samples) >= MAX_ITERATIONS:
            break
    return samples, warm_done, clock() - start
