"""Timing loop and statistics, defined as trtexec defines them."""
import time

import pytest

from edgekit.device.latency import measure, median, percentile, stage_summary, summarize, throughput_fps
from edgekit.contract.result import LATENCY_KEYS


def test_percentiles_are_trtexecs_nearest_rank():
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert percentile(values, 90) == 90.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 95) == 95.0
    assert percentile(values, 0) == 1.0 and percentile(values, 100) == 100.0
    ten = [float(v) for v in range(10, 110, 10)]  # 10..100, n = 10
    assert percentile(ten, 90) == 90.0  # ceil(0.9 * 10) - 1 = index 8
    assert percentile(ten, 99) == 100.0  # ceil(9.9) - 1 = index 9
    assert percentile([3.0], 50) == 3.0
    with pytest.raises(ValueError):
        percentile([], 50)


def test_median_averages_the_middle_pair():
    assert median([1.0, 2.0, 3.0]) == 2.0
    assert median([1.0, 2.0, 3.0, 10.0]) == 2.5


def test_summarize_gives_every_latency_key():
    stats = summarize([4.0, 2.0, 3.0, 1.0])
    assert tuple(stats) == LATENCY_KEYS
    assert stats == {"mean": 2.5, "std": pytest.approx(1.118, abs=1e-3), "min": 1.0, "p50": 2.5, "p90": 4.0, "p95": 4.0, "p99": 4.0, "max": 4.0}
    assert throughput_fps(2.5) == 400.0
    assert stage_summary([]) is None
    assert stage_summary([1.0, 3.0]) == {"mean": 2.0, "p50": 2.0, "p99": 3.0}


def test_measure_runs_warmup_then_at_least_the_iterations():
    calls = []

    def step():
        calls.append(1)
        return float(len(calls))

    events = []
    samples, warm, _ = measure(step, warmup=3, iterations=5, on_progress=lambda phase, done, total: events.append((phase, done, total)))
    assert warm == 3 and len(calls) == 8
    assert samples == [4.0, 5.0, 6.0, 7.0, 8.0]  # warm-up calls are not in the samples
    assert events[2] == ("warmup", 3, 3) and events[-1] == ("bench", 5, 5)


def test_measure_honours_minimum_durations():
    def step():
        time.sleep(0.002)
        return 2.0

    started = time.perf_counter()
    samples, warm, wall = measure(step, warmup=0, warmup_seconds=0.05, iterations=1, min_seconds=0.1)
    elapsed = time.perf_counter() - started
    assert warm >= 5 and len(samples) >= 20
    assert wall >= 0.1 and elapsed >= 0.15


def test_measure_start_hook_runs_between_warmup_and_timing():
    order = []
    measure(lambda: order.append("step") or 1.0, warmup=2, iterations=2, on_measure_start=lambda: order.append("start"))
    assert order == ["step", "step", "start", "step", "step"]
