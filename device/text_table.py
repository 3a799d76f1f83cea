"""Plain-text tables for a person at a terminal (stdout is a TTY).

No third-party packages: the agent runs on boards that have only Python.
Tables fit the terminal: the least important columns are left out (and named)
rather than letting lines wrap into an unreadable block.
"""
import shutil
from typing import Any, Dict, List, Optional, Sequence, Tuple

from edgekit.contract.result import largest_batch


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "%.*f" % (digits, value)
    return str(value)


def grid(headers: Sequence[str], rows: List[Sequence[str]], right: Sequence[bool]) -> str:
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))

    def line(cells: Sequence[str]) -> str:
        out = []
        for i, cell in enumerate(cells):
            out.append(cell.rjust(widths[i]) if right[i] else cell.ljust(widths[i]))
        return "  ".join(out).rstrip()

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), sep] + [line(r) for r in rows])


def terminal_width() -> int:
    """The terminal's width (COLUMNS wins), 100 when it cannot be told."""
    return shutil.get_terminal_size((100, 24)).columns


def fit(
    headers: Sequence[str], rows: List[Sequence[str]], right: Sequence[bool], importance: Sequence[int], width: int
) -> Tuple[str, List[str]]:
    """(grid, left-out headers): columns by ``importance`` (indexes, most important first) while they fit ``width``.

    Columns not named in ``importance`` are always kept.
    """
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    keep = set(range(len(headers))) - set(importance)
    used = sum(widths[i] + 2 for i in keep) - 2
    for i in importance:
        if used + widths[i] + 2 <= width:
            keep.add(i)
            used += widths[i] + 2
    cols = [i for i in range(len(headers)) if i in keep]
    text = grid([headers[i] for i in cols], [[r[i] for i in cols] for r in rows], [right[i] for i in cols])
    return text, [headers[i] for i in range(len(headers)) if i not in keep]


def _stage(run: Dict[str, Any], stage: str) -> Optional[float]:
    stages = run.get("stages_ms") or {}
    entry = stages.get(stage) or {}
    return entry.get("p50")


def device_line(device: Dict[str, Any]) -> str:
    cpu = device.get("cpu") or {}
    parts = [device.get("hostname") or "?"]
    if device.get("board"):
        parts.append(device["board"])
    if device.get("jetpack"):
        parts.append("JetPack %s (L4T %s)" % (device["jetpack"], device.get("l4t")))
    parts.append("%s, %s cores" % (cpu.get("model") or "CPU", cpu.get("cores")))
    for gpu in device.get("gpu") or []:
        parts.append("GPU %s (sm %s)" % (gpu.get("name"), gpu.get("compute_capability")))
    runtimes = device.get("runtimes") or {}
    for name in ("tensorrt", "onnxruntime"):
        if runtimes.get(name):
            parts.append("%s %s" % (name, runtimes[name]))
    mode = device.get("power_mode")
    if mode:
        parts.append("power mode %s" % mode.get("name"))
    return ", ".join(parts)


# render_result's columns by importance (indexes into its headers); variant, backend
# and status are always shown.
RESULT_IMPORTANCE = (3, 11, 12, 13, 5, 7, 15, 16, 4, 9, 6, 8, 10, 14)


def render_result(result: Dict[str, Any], width: Optional[int] = None) -> str:
    bundle = result.get("bundle") or {}
    sha = (bundle.get("manifest_sha256") or "")[:12]
    lines = [
        "edgekit-agent %s: bundle %s%s" % (result.get("command"), bundle.get("name"), " (manifest %s)" % sha if sha else ""),
        "device: %s" % device_line(result.get("device") or {}),
        "",
    ]
    headers = ["variant", "backend", "status", "p50 ms", "p90 ms", "p99 ms", "mean ms", "fps", "pre ms", "infer ms", "post ms", "metric", "value", "drift", "peak MB", "img/s", "mJ/inf"]
    right = [False, False, False] + [True] * 8 + [False] + [True] * 5
    rows = []
    for run in result.get("runs") or []:
        lat = run.get("latency_ms") or {}
        acc = run.get("accuracy") or {}
        stats = acc.get("stats") or {}
        metric = acc.get("metric")
        key = {"coco_map": "map", "top1": "top1"}.get(metric or "")
        mem = run.get("memory") or {}
        backend = run.get("backend") or ""
        if run.get("provider"):
            backend = "%s/%s" % (backend, str(run["provider"]).replace("ExecutionProvider", ""))
        drift = acc.get("drift")
        batch, images_per_s = largest_batch(run)
        drift_cell = "-" if drift is None else "%+.4f%s" % (drift, "" if acc.get("passed") is not False else " FAIL")
        rows.append(
            [
                run.get("variant") or "?",
                backend,
                run.get("status") or "?",
                _fmt(lat.get("p50")),
                _fmt(lat.get("p90")),
                _fmt(lat.get("p99")),
                _fmt(lat.get("mean")),
                _fmt(run.get("throughput_fps"), 1),
                _fmt(_stage(run, "preprocess")),
                _fmt(_stage(run, "inference")),
                _fmt(_stage(run, "postprocess")),
                {"coco_map": "mAP", "top1": "top-1"}.get(metric or "", "-"),
                _fmt(stats.get(key) if key else None, 4),
                drift_cell,
                _fmt(mem.get("peak_rss_mb"), 0),
                "-" if images_per_s is None else "%.1f (b%d)" % (images_per_s, batch),
                _fmt(((run.get("energy") or {}).get("total") or {}).get("mj_per_inference"), 1),
            ]
        )
    # img/s and mJ/inf only when some run has them (bench --batch, a board with power monitors).
    drop = {i for i in (15, 16) if all(r[i] == "-" for r in rows)}
    keep = [i for i in range(len(headers)) if i not in drop]
    importance = [keep.index(i) for i in RESULT_IMPORTANCE if i in keep]
    headers, right = [headers[i] for i in keep], [right[i] for i in keep]
    rows = [[r[i] for i in keep] for r in rows]
    table, left_out = fit(headers, rows, right, importance, width or terminal_width())
    lines.append(table)
    if left_out:
        lines.append("(not shown at this width: %s; --json has everything)" % ", ".join(left_out))
    shown = [h for h in headers if h not in left_out]
    if "img/s" in shown:
        lines.append("img/s: images per second at the largest --batch timed (bN), batch x 1000 / mean batched latency; fps: batch 1")
    if "mJ/inf" in shown:
        lines.append("mJ/inf: energy per inference, total power rail, idle included (--json: per rail and above idle)")
    problems = [(r.get("variant"), r.get("error")) for r in result.get("runs") or [] if r.get("error")]
    if problems or result.get("errors") or result.get("warnings"):
        lines.append("")
    for variant, error in problems:
        lines.append("%s: %s" % (variant, error))
    for error in result.get("errors") or []:
        lines.append("error: %s" % error)
    for warning in result.get("warnings") or []:
        lines.append("warning: %s" % warning)
    lines.append("")
    lines.append("ok" if result.get("ok") else "NOT ok")
    return "\n".join(lines) + "\n"


def render_info(info: Dict[str, Any]) -> str:
    lines = []

    def add(key: str, value: Any) -> None:
        lines.append("%-14s %s" % (key, _fmt(value)))

    cpu = info.get("cpu") or {}
    mem = info.get("memory_mb") or {}
    add("hostname", info.get("hostname"))
    add("board", info.get("board"))
    add("l4t", info.get("l4t"))
    add("jetpack", info.get("jetpack"))
    add("os", "%s, kernel %s, %s" % ((info.get("os") or {}).get("name"), (info.get("os") or {}).get("kernel"), (info.get("os") or {}).get("arch")))
    add("python", info.get("python"))
    add("cpu", "%s (%s cores, %s available)" % (cpu.get("model"), cpu.get("cores"), cpu.get("available")))
    add("memory", "%s MB (%s MB available)" % (mem.get("total"), mem.get("available")))
    gpus = info.get("gpu") or []
    add("gpu", ", ".join("%s (sm %s, %s MB)" % (g.get("name"), g.get("compute_capability"), g.get("memory_mb")) for g in gpus) or None)
    add("cuda driver", (info.get("cuda") or {}).get("driver"))
    add("governor", ", ".join(info.get("governor") or []) or None)
    mode = info.get("power_mode")
    add("power mode", "%s (%s)" % (mode.get("name"), mode.get("id")) if mode else None)
    for name, version in sorted((info.get("runtimes") or {}).items()):
        add(name, version if version else "missing (%s)" % (info.get("problems") or {}).get(name, "not installed"))
    add("providers", ", ".join(info.get("providers") or []) or None)
    return "\n".join(lines) + "\n"


def render_doctor(report: Dict[str, Any], width: Optional[int] = None) -> str:
    """The checks as a table; when the fixes do not fit beside it, each goes on its own line below."""
    headers = ["check", "status", "found", "needed for", "fix"]
    rows = []
    for check in report.get("checks") or []:
        status = "ok" if check["ok"] else ("MISSING" if check.get("required") else "missing (optional)")
        rows.append([check["name"], status, _fmt(check.get("found")), check.get("needed_for") or "", "" if check["ok"] else (check.get("fix") or "")])
    text = grid(headers, rows, [False] * 5)
    if max(len(line) for line in text.splitlines()) > (width or terminal_width()):
        text = grid(headers[:4], [r[:4] for r in rows], [False] * 4)
        fixes = ["fix %s: %s" % (r[0], r[4]) for r in rows if r[4]]
        if fixes:
            text += "\n\n" + "\n".join(fixes)
    return text + "\n\n" + ("ready" if report.get("ok") else "NOT ready: install what is marked MISSING") + "\n"
