"""Per-layer time from ONNX Runtime's profiler (``bench --profile-layers``).

ONNX Runtime writes a Chrome trace (JSON list of events) when a session has
``enable_profiling``: one ``Node`` event per kernel per run (name
``<node>_kernel_time``, ``args.op_name``, ``args.provider``) and one
``Session`` event ``model_run`` per run. The names are those of the
*optimised* graph ONNX Runtime executes, so fused nodes appear under the fused
name (e.g. ``mul0/QuickGeluFusion/``) and its op type (``QuickGelu``): that is
where the time really goes, not the exported graph's node list.

The profile is taken on a second session opened only for it, after the timed
loop, so the profiler's own cost never enters ``latency_ms``. Each node's
event is attributed to the ``model_run`` whose span contains it; the first
``skip_runs`` runs (warm-up) are dropped.

Result (run ``layers``)::

    source        "onnxruntime-profiler"
    runs          profiled runs averaged
    run_ms        mean of ONNX Runtime's own model_run span
    nodes_ms      sum of the nodes' means (below run_ms by the executor's overhead)
    nodes         [{name, op_type, provider, mean_ms, share}], slowest first; share of nodes_ms
    by_op_type    [{op_type, count, mean_ms, share}], slowest first

Stdlib only.
"""
import bisect
import json
import math
from typing import Any, Dict, Iterable, List, Optional, Tuple

from edgekit.contract.errors import EdgekitError

SOURCE_ORT = "onnxruntime-profiler"
KERNEL_SUFFIX = "_kernel_time"
# Profiled runs after the timed loop: enough for a stable mean, short next to the loop.
PROFILE_WARMUP = 3
PROFILE_RUNS = 20


def _runs(events: List[Dict[str, Any]]) -> List[Tuple[float, float]]:
    spans = [(float(e["ts"]), float(e["ts"]) + float(e.get("dur", 0))) for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    spans.sort()
    return spans


def _run_index(spans: List[Tuple[float, float]], starts: List[float], ts: float) -> Optional[int]:
    """Index of the model_run whose span contains ``ts``, or None (a node outside any run)."""
    i = bisect.bisect_right(starts, ts) - 1
    if i >= 0 and ts <= spans[i][1]:
        return i
    return None


def parse_ort_profile(events: Iterable[Dict[str, Any]], skip_runs: int = 0) -> Dict[str, Any]:
    """Per-node and per-op-type mean milliseconds from ONNX Runtime's trace events."""
    events = list(events)
    spans = _runs(events)
    starts = [s for s, _ in spans]
    kept = set(range(skip_runs, len(spans)))
    if not kept:
        raise EdgekitError("the ONNX Runtime profile holds %d runs, %d needed" % (len(spans), skip_runs + 1), "profile more runs")
    totals = {}  # type: Dict[str, Dict[str, Any]]
    for e in events:
        if e.get("cat") != "Node" or not str(e.get("name", "")).endswith(KERNEL_SUFFIX):
            continue
        if _run_index(spans, starts, float(e["ts"])) not in kept:
            continue
        name = e["name"][: -len(KERNEL_SUFFIX)]
        args = e.get("args") or {}
        node = totals.setdefault(name, {"name": name, "op_type": args.get("op_name", "?"), "provider": args.get("provider"), "us": 0.0})
        node["us"] += float(e.get("dur", 0))
    runs = len(kept)
    run_ms = math.fsum(spans[i][1] - spans[i][0] for i in kept) / runs / 1000.0
    nodes = [{"name": n["name"], "op_type": n["op_type"], "provider": n["provider"], "mean_ms": n["us"] / runs / 1000.0} for n in totals.values()]
    return summarize_nodes(nodes, SOURCE_ORT, runs, run_ms)


def summarize_nodes(nodes: List[Dict[str, Any]], source: str, runs: int, run_ms: Optional[float]) -> Dict[str, Any]:
    """The ``layers`` block from per-node means: shares, slowest first, and the op-type aggregate.

    Shared by every backend's profiler so the result has one shape.
    """
    nodes_ms = math.fsum(n["mean_ms"] for n in nodes)
    by_type = {}  # type: Dict[str, Dict[str, Any]]
    for n in nodes:
        t = by_type.setdefault(n["op_type"], {"op_type": n["op_type"], "count": 0, "mean_ms": 0.0})
        t["count"] += 1
        t["mean_ms"] += n["mean_ms"]

    def finish(rows: Iterable[Dict[str, Any]]) -> List[Dict[str, Any]]:
        out = []
        for r in sorted(rows, key=lambda r: (-r["mean_ms"], r.get("name", r["op_type"]))):
            r = dict(r)
            r["share"] = round(r["mean_ms"] / nodes_ms, 4) if nodes_ms > 0 else 0.0
            r["mean_ms"] = round(r["mean_ms"], 4)
            out.append(r)
        return out

    return {
        "source": source,
        "runs": runs,
        "run_ms": round(run_ms, 4) if run_ms is not None else None,
        "nodes_ms": round(nodes_ms, 4),
        "nodes": finish(nodes),
        "by_op_type": finish(by_type.values()),
    }


def read_ort_profile(path: str, skip_runs: int = 0) -> Dict[str, Any]:
    """Parse the trace file ``InferenceSession.end_profiling()`` wrote."""
    try:
        with open(path, encoding="utf-8") as f:
            events = json.load(f)
    except (OSError, ValueError) as exc:
        raise EdgekitError("cannot read the ONNX Runtime profile %s (%s)" % (path, exc), "check free space in the temporary folder")
    if not isinstance(events, list):
        raise EdgekitError("the ONNX Runtime profile %s is not a list of events" % path, "use an onnxruntime release that writes Chrome traces (1.8+)")
    return parse_ort_profile(events, skip_runs)
