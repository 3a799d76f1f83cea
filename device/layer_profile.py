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
    nodes         [{name, op_type, provider, source, mean_ms, median_ms, share}], slowest first (by
                  mean); share of nodes_ms; median_ms: the median over the profiled runs, steadier
                  than the mean on a busy board (one preempted run moves a mean a lot)
    by_op_type    [{op_type, count, mean_ms, share}], slowest first
    source_graph  the ONNX file the node names were matched against (null: not readable)
    source_share  share of nodes_ms whose node has a ``source``

Each node also carries ``source``: the name of the node of the variant's own
ONNX graph (the bundle's file) it came from, or null when the runtime inserted
it (layout Transposes, ``ReorderOutput``). The rule, applied until a name of
the graph comes out (at most a few steps), verified against the graph's node
names and output tensors read from the ONNX file itself (a small protobuf
reader, no ``onnx`` package needed on the board):

1. a name of the graph is its own source (QLinearConv/QLinearMul etc. made from
   a Q/DQ group keep the name of the op they replace; the group's Q and DQ
   nodes are folded into it, so they have no time of their own);
2. ``X_token_N`` (a node ONNX Runtime re-created, ``GenerateNodeName``) -> ``X``;
3. ``X/SomethingFusion/`` or ``X/SomethingFusion`` (a fusion, e.g. SiLU's
   Sigmoid and Mul as ``QuickGelu``) -> ``X``, the node the fusion is named after;
4. ``T_nchwc`` (the NCHWc layout rewrite names a node after its output tensor
   ``T``) -> the node that writes ``T``;
5. TensorRT's fused layers ``A + B + C`` or ``PWN(PWN(A), B)`` -> the first part
   that resolves; its ``Reformatting CopyNode ...`` layers are the runtime's own (null).
   (Written against TensorRT's layer naming; not checked on a real engine here.)

Stdlib only.
"""
import bisect
import json
import math
import os
import re
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
        run = _run_index(spans, starts, float(e["ts"]))
        if run not in kept:
            continue
        name = e["name"][: -len(KERNEL_SUFFIX)]
        args = e.get("args") or {}
        node = totals.setdefault(name, {"name": name, "op_type": args.get("op_name", "?"), "provider": args.get("provider"), "us": {}})
        node["us"][run] = node["us"].get(run, 0.0) + float(e.get("dur", 0))
    runs = len(kept)
    run_ms = math.fsum(spans[i][1] - spans[i][0] for i in kept) / runs / 1000.0
    nodes = [
        {
            "name": n["name"], "op_type": n["op_type"], "provider": n["provider"],
            "mean_ms": math.fsum(n["us"].values()) / runs / 1000.0,
            # A run in which the node did not appear counts as 0 us.
            "median_ms": _median(list(n["us"].values()) + [0.0] * (runs - len(n["us"]))) / 1000.0,
        }
        for n in totals.values()
    ]
    return summarize_nodes(nodes, SOURCE_ORT, runs, run_ms)


def _median(values: List[float]) -> float:
    values = sorted(values)
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2.0


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
            if "median_ms" in r:
                r["median_ms"] = round(r["median_ms"], 4)
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


# --- source ONNX nodes -------------------------------------------------------------
# ONNX is protobuf: ModelProto.graph = field 7, GraphProto.node = field 1,
# NodeProto.output = 2, .name = 3, .op_type = 4. Everything else is skipped by length.


def _varint(buf: memoryview, i: int) -> Tuple[int, int]:
    shift = value = 0
    while True:
        if i >= len(buf):
            raise ValueError("truncated varint")
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, i
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _fields(buf: memoryview) -> Iterable[Tuple[int, Any]]:
    """(field number, value) of one protobuf message: ints for varints, memoryviews for length-delimited."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 1:
            value, i = None, i + 8
        elif wire == 2:
            n, i = _varint(buf, i)
            if i + n > len(buf):
                raise ValueError("truncated field %d" % field)
            value, i = buf[i:i + n], i + n
        elif wire == 5:
            value, i = None, i + 4
        else:
            raise ValueError("wire type %d" % wire)
        yield field, value


def read_onnx_nodes(path: str) -> List[Dict[str, Any]]:
    """[{name, op_type, outputs}] of an ONNX file's main graph (no ``onnx`` package needed)."""
    try:
        with open(path, "rb") as f:
            data = memoryview(f.read())
    except OSError as exc:
        raise EdgekitError("cannot read %s (%s)" % (path, exc.strerror), "copy the bundle again")
    try:
        graphs = [v for k, v in _fields(data) if k == 7 and v is not None]
        if not graphs:
            raise ValueError("no graph")
        nodes = []
        for k, v in _fields(graphs[-1]):
            if k != 1 or v is None:
                continue
            node = {"name": "", "op_type": "", "outputs": []}  # type: Dict[str, Any]
            for nk, nv in _fields(v):
                if nv is None:
                    continue
                if nk == 2:
                    node["outputs"].append(bytes(nv).decode("utf-8", "replace"))
                elif nk == 3:
                    node["name"] = bytes(nv).decode("utf-8", "replace")
                elif nk == 4:
                    node["op_type"] = bytes(nv).decode("utf-8", "replace")
            nodes.append(node)
    except (ValueError, TypeError) as exc:
        raise EdgekitError("%s is not a readable ONNX model (%s)" % (path, exc), "copy the bundle again or rebuild it")
    return nodes


_TOKEN = re.compile(r"^(.+)_token_\d+$")
_FUSION = re.compile(r"^(.+)/[A-Za-z0-9_]*Fusion/?$")
_NCHWC = "_nchwc"
_TRT_REFORMAT = "Reformatting CopyNode"
_MAX_STEPS = 8


_COMPOSITE = re.compile(r"[+(),]")


def _parts(name: str) -> List[str]:
    """The layer names inside a TensorRT composite name: ``A + B``, ``PWN(PWN(A), B)``."""
    return [p.strip() for p in _COMPOSITE.split(name) if p.strip() and p.strip() != "PWN"]


class SourceGraph(object):
    """The names, op types and output tensors of one ONNX graph, to trace runtime node names back to it."""

    def __init__(self, nodes: Iterable[Dict[str, Any]]) -> None:
        self.names = set()  # type: set
        self.op_type = {}  # type: Dict[str, str]
        self.writer = {}  # type: Dict[str, str]
        for n in nodes:
            if n["name"]:
                self.names.add(n["name"])
                self.op_type[n["name"]] = n.get("op_type") or "?"
                for out in n.get("outputs", ()):
                    self.writer.setdefault(out, n["name"])

    def source_of(self, name: str) -> Optional[str]:
        """The graph node a runtime node name came from (module docstring's rule), or None."""
        if name.startswith(_TRT_REFORMAT):  # TensorRT's own layout copies
            return None
        found = self._resolve(name)
        if found is None and _COMPOSITE.search(name):  # TensorRT's fused layer: its first part that resolves
            for part in _parts(name):
                found = self._resolve(part)
                if found is not None:
                    break
        return found

    def op_type_of(self, name: str) -> str:
        """A TensorRT layer's op type from its parts' ONNX ops: ``Conv+Sigmoid+Mul``; ``Reformat``; ``?``."""
        if name.startswith(_TRT_REFORMAT):
            return "Reformat"
        sources = [self._resolve(p) for p in ([name] if self._resolve(name) else _parts(name))]
        types = [self.op_type[s] for s in sources if s is not None]
        return "+".join(dict.fromkeys(types)) or "?"

    def _resolve(self, name: str) -> Optional[str]:
        for _ in range(_MAX_STEPS):
            if name in self.names:
                return name
            if name.endswith(_NCHWC):
                name = name[: -len(_NCHWC)]
                if name in self.writer:
                    return self.writer[name]
                continue
            m = _TOKEN.match(name) or _FUSION.match(name)
            if not m:
                return None
            name = m.group(1)
        return None


def attach_sources(layers: Dict[str, Any], model_path: Optional[str]) -> Dict[str, Any]:
    """Add each node's ``source`` (and the block's ``source_graph``, ``source_share``), in place.

    A model that cannot be read leaves every source null: the times stay valid.
    """
    graph = None
    if model_path:
        try:
            graph = SourceGraph(read_onnx_nodes(model_path))
        except EdgekitError:
            graph = None
    total = mapped = 0.0
    for n in layers.get("nodes") or []:
        n["source"] = graph.source_of(n["name"]) if graph is not None else None
        total += n["mean_ms"]
        if n["source"] is not None:
            mapped += n["mean_ms"]
    layers["source_graph"] = os.path.basename(model_path) if (graph is not None and model_path) else None
    layers["source_share"] = round(mapped / total, 4) if total > 0 else None
    return layers


# --- TensorRT: IProfiler's per-layer callback ----------------------------------------

SOURCE_TRT = "tensorrt-profiler"


class LayerTimes(object):
    """Per-layer ms per run, as a runtime's callback reports them (TensorRT's ``IProfiler``).

    Calls before the first :meth:`start_run` (warm-up) are ignored; a layer a run
    did not report counts 0 ms in that run.
    """

    def __init__(self) -> None:
        self.runs = []  # type: List[Dict[str, float]]
        self.order = []  # type: List[str]

    def start_run(self) -> None:
        self.runs.append({})

    def add(self, name: str, ms: float) -> None:
        if not self.runs:
            return
        run = self.runs[-1]
        if name not in run and all(name not in r for r in self.runs[:-1]) and name not in self.order:
            self.order.append(name)
        run[name] = run.get(name, 0.0) + float(ms)

    def summary(self, source: str, run_ms: Optional[float], provider: Optional[str], op_type_of: Any) -> Dict[str, Any]:
        runs = len(self.runs)
        if runs == 0 or not self.order:
            raise EdgekitError("the profiler reported no layer times", "rerun without --profile-layers")
        nodes = []
        for name in self.order:
            per_run = [r.get(name, 0.0) for r in self.runs]
            nodes.append({"name": name, "op_type": op_type_of(name), "provider": provider,
                          "mean_ms": math.fsum(per_run) / runs, "median_ms": _median(per_run)})
        return summarize_nodes(nodes, source, runs, run_ms)
