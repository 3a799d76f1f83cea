"""The agent result contract (format ``edgekit-result/1``).

The agent prints one such JSON object on stdout (or writes it with --out); the
host stores it under results/<target>/<bundle>/<time>.json and reads it back
for reports. This module is the one place its shape is written down; both
sides build and check results through it. Python 3.8, stdlib only.

Top level::

    format           "edgekit-result/1"
    edgekit_version  agent version
    command          "run" | "bench" | "eval"
    started, finished  ISO 8601 UTC
    ok               true when no run failed, at least one succeeded, every gate passed and
                     there are no errors; a "skipped" run (a variant this board cannot run
                     by design, e.g. fp16 without a GPU) does not make it false
                     (results of edgekit <= 0.1.0 said false for any skipped run)
    device           the agent's `info` (hostname, board, l4t, jetpack, cpu, memory_mb,
                     gpu, runtimes {onnxruntime, tensorrt, cuda}, providers, power_mode, ...)
    bundle           {name, manifest_sha256, path}
    settings         {warmup, warmup_seconds, iterations, min_seconds, threads, max_drift, ...}
    runs             [run, ...] one per variant x backend
    warnings         [str]    e.g. throttling, calibration cache not accepted
    errors           [str]    problems outside any one run

Stored on the host (results/<target>/<bundle>/<time>.json) the object gains
one key, added by edgekit.host.deploy.results.save_result, never by the agent::

    deploy           {target, address, bundle, bundle_path, manifest_sha256, remote_dir,
                      python, host_time, sync {uploaded, skipped, bytes, ...} or null,
                      seconds {stage: s}, variants {name: {precision, file, size_bytes,
                      params, macs, prune_ratio, host_metrics}}}

A run::

    variant, precision, backend ("tensorrt" | "onnxruntime"), provider
    status           "ok" | "failed" | "skipped" (the board cannot run this variant by design:
                     not a fault, and not counted against ``ok``)
    error            null or one line saying what went wrong (or why it was skipped) and the fix
    latency_ms       {mean, std, min, p50, p90, p95, p99, max}  (inference only, like trtexec's GPU compute)
    throughput_fps   1000 / mean latency
    stages_ms        {preprocess, inference, postprocess}: each {mean, p50, p99} on real images
    end_to_end_ms    {mean, p50, p99}: preprocess + inference + postprocess per image
    iterations, warmup
    memory           {peak_rss_mb, gpu_mb (or null)}
    engine           null, or {build_s, cache_hit, cache_key, path} (TensorRT adds tensorrt, cuda,
                      api, flags, int8_mode, dla_core, max_batch: the optimisation profile's largest batch)
    accuracy         null, or {metric: "coco_map" | "top1", stats {12 COCO names or top1/top5},
                      images, host_reference, drift (device - host), max_drift,
                      passed (null: not gated, e.g. no reference or a subset), note,
                      curves (detection; absent in older results) {source, recall [101 points 0..1],
                        precision {map [101]: mean over IoU 0.50:0.95 and classes, map50 [101]: IoU 0.50},
                        per_class [{id, name, ap, ap50 (null: no ground truth), gt (boxes)}]}
                      from pycocotools' COCOeval.eval['precision'], area all, 100 detections,
                      4 decimals (edgekit.device.coco_eval.pr_curves)}
    environment      {governor, power_mode, clocks {start, end}, temperature_c: {start, end, zones_end},
                      throttled, throttle_reasons}
    layers           null, or (bench/run --profile-layers) per-layer time from the runtime's profiler,
                     taken on a separate session after the timed loop (edgekit.device.layer_profile):
                     {source "onnxruntime-profiler" | "tensorrt-profiler", runs, run_ms (the runtime's own run span),
                      nodes_ms (sum of node means), nodes [{name, op_type, provider, mean_ms, share}]
                      slowest first, by_op_type [{op_type, count, mean_ms, share}]}; node names are
                     the runtime's optimised graph (fused nodes keep the fused name); each node's
                     source: the node of the variant's ONNX graph it came from (null: inserted by
                     the runtime); also median_ms per node, source_graph, source_share
    energy           null (--energy off, or eval), or (bench/run) power during the timed loop
                     (edgekit.device.energy): {source "ina3221-hwmon" | "ina3221-iio" | "tegrastats",
                     reason null, interval_ms, measured_interval_ms, samples, seconds, inferences,
                     idle_seconds, rails [{name, watts, idle_watts, mj_per_inference,
                     mj_per_inference_above_idle}], total / gpu / cpu {rails, rule, watts, idle_watts,
                     mj_per_inference, mj_per_inference_above_idle}, note}; a board without power
                     monitors: {source null, reason "..."} (absent, never zero)
    throughput       null (no --batch), or (bench/run --batch 1,4,8) one entry per batch size
                     asked, in that order: {batch, status "ok" | "skipped", reason (null, or
                     why the size was not run, e.g. a bundle exported with a fixed batch),
                     iterations, latency_ms {mean, std, min, p50, ...} per batched inference,
                     images_per_s (batch * 1000 / mean latency; trtexec's throughput figure
                     times the batch)}; the timed input is the bench input repeated batch times
"""
import datetime
from typing import Any, Dict, List, Optional, Tuple

from ._version import __version__
from .errors import EdgekitError
from .words import RUN_STATUSES

FORMAT = "edgekit-result/1"
STATUSES = RUN_STATUSES
LATENCY_KEYS = ("mean", "std", "min", "p50", "p90", "p95", "p99", "max")
STAGES = ("preprocess", "inference", "postprocess")


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def new_result(command: str, device: Dict[str, Any], bundle: Dict[str, Any], settings: Dict[str, Any]) -> Dict[str, Any]:
    return {
        "format": FORMAT,
        "edgekit_version": __version__,
        "command": command,
        "started": utc_now(),
        "finished": None,
        "ok": False,
        "device": device,
        "bundle": bundle,
        "settings": settings,
        "runs": [],
        "warnings": [],
        "errors": [],
    }


def new_run(variant: str, precision: str, backend: str, provider: Optional[str] = None) -> Dict[str, Any]:
    return {
        "variant": variant,
        "precision": precision,
        "backend": backend,
        "provider": provider,
        "status": "skipped",
        "error": None,
        "latency_ms": None,
        "throughput_fps": None,
        "stages_ms": None,
        "end_to_end_ms": None,
        "iterations": 0,
        "warmup": 0,
        "memory": None,
        "engine": None,
        "accuracy": None,
        "environment": None,
        "layers": None,
        "energy": None,
        "throughput": None,
    }


# Why no run counted, when every one was skipped (finish adds it to ``errors``).
ALL_SKIPPED = "no variant ran here: every one was skipped (each run's error says why)"


def finish(result: Dict[str, Any]) -> Dict[str, Any]:
    """Stamp the end time and decide ``ok``.

    ok: no errors, at least one run ok, none failed, every gate passed. A
    ``skipped`` run (the board cannot run that variant by design, e.g. fp16
    without a GPU) does not make the result fail; when every run is skipped
    nothing was measured, which is an error (``ALL_SKIPPED``).
    """
    result["finished"] = utc_now()
    runs = result["runs"]
    if runs and all(r["status"] == "skipped" for r in runs) and ALL_SKIPPED not in result["errors"]:
        result["errors"].append(ALL_SKIPPED)
    result["ok"] = (
        any(r["status"] == "ok" for r in runs)
        and not result["errors"]
        and all(r["status"] in ("ok", "skipped") for r in runs)
        and all(r["status"] != "ok" or r.get("accuracy") is None or r["accuracy"].get("passed", True) is not False for r in runs)
    )
    return result


def largest_batch(run: Dict[str, Any]) -> Tuple[Optional[int], Optional[float]]:
    """(batch, images/s) of the largest ``--batch`` size that ran (``run["throughput"]``); (None, None) when none did.

    One reading for the agent's table and the host's report.
    """
    entries = run.get("throughput")
    done = [e for e in entries if isinstance(e, dict) and e.get("status") == "ok" and isinstance(e.get("images_per_s"), (int, float))
            and not isinstance(e.get("images_per_s"), bool)] if isinstance(entries, list) else []
    if not done:
        return None, None
    top = max(done, key=lambda e: int(e.get("batch") or 0))
    return int(top.get("batch") or 0), float(top["images_per_s"])


def validate_result(data: Any, where: str = "result") -> List[str]:
    """Problems with a result's shape (empty when it is well formed)."""
    problems = []
    if not isinstance(data, dict):
        return ["%s is not a JSON object" % where]
    if data.get("format") != FORMAT:
        problems.append("%s has format %r, expected %r" % (where, data.get("format"), FORMAT))
    for key in ("device", "bundle", "runs", "ok"):
        if key not in data:
            problems.append("%s lacks key '%s'" % (where, key))
    runs = data.get("runs")
    if runs is not None and not isinstance(runs, list):
        return problems + ["%s: runs is %s, not a list" % (where, type(runs).__name__)]
    for i, run in enumerate(runs or []):
        if not isinstance(run, dict):
            problems.append("%s: runs[%d] is not a JSON object" % (where, i))
            continue
        for key in ("variant", "precision", "backend", "status"):
            if key not in run:
                problems.append("%s: runs[%d] lacks '%s'" % (where, i, key))
        if run.get("status") not in STATUSES:
            problems.append("%s: runs[%d].status is %r" % (where, i, run.get("status")))
        if run.get("status") == "ok":
            lat = run.get("latency_ms") or {}
            missing = [k for k in LATENCY_KEYS if k not in lat]
            if missing:
                problems.append("%s: runs[%d].latency_ms lacks %s" % (where, i, ", ".join(missing)))
    return problems


# --- typed records ---------------------------------------------------------------
# The agent builds results as dicts (new_result/new_run above: one JSON object
# grows as runs finish); the host reads them back through these records, which
# validate first. Blocks only one side interprets stay dicts.


class RunRecord(object):
    """One run of one variant on one backend."""

    def __init__(self, data: Dict[str, Any]) -> None:
        self.variant = data["variant"]  # type: str
        self.precision = data["precision"]  # type: str
        self.backend = data["backend"]  # type: str
        self.status = data["status"]  # type: str
        self.error = data.get("error")  # type: Optional[str]
        self.latency_ms = data.get("latency_ms")  # type: Optional[Dict[str, float]]
        self.accuracy = data.get("accuracy")  # type: Optional[Dict[str, Any]]
        self._data = dict(data)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> Dict[str, Any]:
        return dict(self._data)


class ResultRecord(object):
    """An agent result (format ``edgekit-result/1``), validated."""

    def __init__(self, data: Dict[str, Any]) -> None:
        self.ok = bool(data["ok"])
        self.command = data.get("command")  # type: Optional[str]
        self.device = data["device"]  # type: Dict[str, Any]
        self.bundle = data["bundle"]  # type: Dict[str, Any]
        self.runs = [RunRecord(r) for r in data["runs"]]
        self.warnings = list(data.get("warnings") or [])
        self.errors = list(data.get("errors") or [])
        self._data = data

    def to_dict(self) -> Dict[str, Any]:
        out = dict(self._data)
        out["runs"] = [r.to_dict() for r in self.runs]
        return out

    @classmethod
    def from_dict(cls, data: Any, where: str = "result", problem: str = "%s", fix: str = "rerun the agent of this edgekit version") -> "ResultRecord":
        """Validate and wrap; ``problem`` frames the first problem found (``%s``), ``fix`` is the caller's advice."""
        problems = validate_result(data, where)
        if problems:
            more = " (and %d more)" % (len(problems) - 1) if len(problems) > 1 else ""
            raise EdgekitError(problem % (problems[0] + more), fix)
        return cls(data)

    def first_problem(self) -> Optional[str]:
        """Why this result is not ok, in one line: an error, a failed run, or an accuracy check that failed."""
        for err in self.errors:
            return str(err)
        for run in self.runs:
            if run.status == "failed":
                return "%s: %s" % (run.variant, run.error or "failed")
            if (run.accuracy or {}).get("passed") is False:
                return "%s: %s" % (run.variant, run.accuracy.get("note") or "accuracy drift beyond the limit")
        return None
