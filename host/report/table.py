"""One row per (target, bundle, variant, backend), with the columns people compare.

Latency is the agent's inference-only measurement (p50/p99, FPS = 1000 / mean);
pre/infer/post are per-image stage means on real images; mAP and drift come
from the agent's accuracy block; size, params and MACs from the manifest (via the
``deploy`` record the host adds). ``x base`` and ``d mAP`` compare each row with
the baseline row of its target: the first row by default (the first bundle given,
its first variant), or the variant named by ``baseline``.
"""
import dataclasses
from typing import Any, Dict, List, Optional, Sequence, Tuple

from edgekit.contract.errors import EdgekitError
from edgekit.contract.result import largest_batch
from .load import LoadedResult


@dataclasses.dataclass
class Row:
    target: str
    bundle: str
    variant: str
    precision: str
    backend: str
    status: str
    error: Optional[str] = None
    device: str = ""
    p50_ms: Optional[float] = None
    p99_ms: Optional[float] = None
    p90_ms: Optional[float] = None
    mean_ms: Optional[float] = None
    fps: Optional[float] = None
    mj_per_inf: Optional[float] = None  # energy per inference, total rail (boards with power monitors)
    img_s: Optional[float] = None  # images/s at the largest batch timed (bench --batch), throughput key
    img_s_batch: Optional[int] = None  # that batch size
    pre_ms: Optional[float] = None
    infer_ms: Optional[float] = None
    post_ms: Optional[float] = None
    e2e_ms: Optional[float] = None
    metric: Optional[str] = None
    map: Optional[float] = None
    map50: Optional[float] = None
    drift: Optional[float] = None
    passed: Optional[bool] = None
    size_mb: Optional[float] = None
    params_m: Optional[float] = None
    gmacs: Optional[float] = None
    speedup: Optional[float] = None
    dmap: Optional[float] = None
    path: str = ""

    @property
    def label(self) -> str:
        return "%s/%s" % (self.bundle, self.variant)


# (attribute, header, format) in display order. Formats apply to numbers only.
COLUMNS: Tuple[Tuple[str, str, str], ...] = (
    ("target", "target", "%s"),
    ("bundle", "bundle", "%s"),
    ("variant", "variant", "%s"),
    ("backend", "backend", "%s"),
    ("status", "status", "%s"),
    ("p50_ms", "p50 ms", "%.2f"),
    ("p99_ms", "p99 ms", "%.2f"),
    ("fps", "FPS", "%.1f"),
    ("mj_per_inf", "mJ/inf", "%.1f"),
    ("img_s", "img/s", "%.1f"),
    ("pre_ms", "pre ms", "%.2f"),
    ("infer_ms", "infer ms", "%.2f"),
    ("post_ms", "post ms", "%.2f"),
    ("map", "mAP@.5:.95", "%.4f"),
    ("map50", "mAP@.5", "%.4f"),
    ("drift", "drift", "%+.4f"),
    ("size_mb", "size MB", "%.2f"),
    ("params_m", "params M", "%.3f"),
    ("gmacs", "GMACs", "%.3f"),
    ("speedup", "x base", "%.2fx"),
    ("dmap", "d mAP", "%+.4f"),
)


def _get(d: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(key)
    return d


def _num(value: Any) -> Optional[float]:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _stage(run: Dict[str, Any], name: str) -> Optional[float]:
    stage = _get(run, "stages_ms", name)
    if isinstance(stage, dict):
        return _num(stage.get("mean", stage.get("p50")))
    return _num(stage)


def _device_label(data: Dict[str, Any]) -> str:
    device = data.get("device") or {}
    return str(device.get("board") or device.get("model") or device.get("hostname") or "")


def rows_for(result: LoadedResult) -> List[Row]:
    data = result.data
    facts = _get(data, "deploy", "variants") or {}
    rows = []
    for run in data.get("runs") or []:
        lat = run.get("latency_ms") or {}
        acc = run.get("accuracy") or {}
        stats = acc.get("stats") or {}
        fact = facts.get(run.get("variant")) or {}
        metric = acc.get("metric")
        top = "top1" if metric == "top1" else "map"
        second = "top5" if metric == "top1" else "map50"
        size = _num(fact.get("size_bytes"))
        params = _num(fact.get("params"))
        macs = _num(fact.get("macs"))
        batch, images_per_s = largest_batch(run)
        rows.append(
            Row(
                target=result.target,
                bundle=result.bundle,
                variant=str(run.get("variant")),
                precision=str(run.get("precision")),
                backend=str(run.get("backend")),
                status=str(run.get("status")),
                error=run.get("error"),
                device=_device_label(data),
                p50_ms=_num(lat.get("p50")),
                p99_ms=_num(lat.get("p99")),
                p90_ms=_num(lat.get("p90")),
                mean_ms=_num(lat.get("mean")),
                fps=_num(run.get("throughput_fps")),
                mj_per_inf=_num(_get(run, "energy", "total", "mj_per_inference")),
                img_s=images_per_s,
                img_s_batch=batch,
                pre_ms=_stage(run, "preprocess"),
                infer_ms=_stage(run, "inference"),
                post_ms=_stage(run, "postprocess"),
                e2e_ms=_num(_get(run, "end_to_end_ms", "mean")),
                metric=metric,
                map=_num(stats.get(top)),
                map50=_num(stats.get(second)),
                drift=_num(acc.get("drift")),
                passed=acc.get("passed"),
                size_mb=size / 1e6 if size is not None else None,
                params_m=params / 1e6 if params is not None else None,
                gmacs=macs / 1e9 if macs is not None else None,
                path=result.path,
            )
        )
    return rows


def _pick_baseline(rows: List[Row], baseline: Optional[str]) -> Optional[Row]:
    ok = [r for r in rows if r.status == "ok"]
    if not ok:
        return None
    if not baseline:
        return ok[0]
    for r in ok:
        if baseline in (r.variant, r.label, "%s:%s" % (r.bundle, r.variant)):
            return r
    return None


def build_rows(results: Sequence[LoadedResult], baseline: Optional[str] = None) -> List[Row]:
    """Rows in the order given (targets grouped), with x-base and d-mAP filled in per target."""
    rows: List[Row] = []
    for result in results:
        rows.extend(rows_for(result))
    targets = list(dict.fromkeys(r.target for r in rows))
    ordered: List[Row] = []
    found_baseline = not baseline
    for target in targets:
        group = [r for r in rows if r.target == target]
        base = _pick_baseline(group, baseline)
        found_baseline = found_baseline or base is not None
        for r in group:
            if base is not None and r.status == "ok":
                if base.p50_ms and r.p50_ms:
                    r.speedup = base.p50_ms / r.p50_ms
                if base.map is not None and r.map is not None:
                    r.dmap = r.map - base.map
        ordered.extend(group)
    if not found_baseline:
        # Only runs that can be a baseline: a skipped or failed run has no latency to compare with.
        names = sorted({r.label for r in rows if r.status == "ok"})
        raise EdgekitError("baseline %r matches no successful run" % baseline, "use a variant or bundle/variant among: %s" % ", ".join(names))
    return ordered


def column_notes(rows: Sequence[Row], shown: Optional[Sequence[str]] = None) -> List[str]:
    """One line per shown column whose figure needs its definition next to it (img/s, mJ/inf).

    ``shown``: the attributes on screen (None: every column that has a value).
    """
    def wanted(attr: str) -> bool:
        return (shown is None or attr in shown) and any(getattr(r, attr) is not None for r in rows)

    notes = []
    if wanted("img_s"):
        batches = sorted({r.img_s_batch for r in rows if r.img_s is not None and r.img_s_batch})
        notes.append(
            "img/s: images per second at each variant's largest batch timed (here batch %s; agent --batch), batch x 1000 / mean latency "
            "of one batched inference, like trtexec's throughput; FPS is 1000 / mean batch-1 latency"
            % ", ".join(str(b) for b in batches)
        )
    if wanted("mj_per_inf"):
        notes.append(
            "mJ/inf: energy per inference on the board's total power rail during the timed loop (watts x loop seconds / "
            "inferences), idle baseline included; the result's energy block has it per rail and above idle"
        )
    return notes


def cell(row: Row, attr: str, fmt: str) -> str:
    value = getattr(row, attr)
    if value is None:
        return "-"
    if isinstance(value, float):
        return fmt % value
    return str(value)


def used_columns(rows: Sequence[Row]) -> List[Tuple[str, str, str]]:
    """Drop columns that are empty in every row (e.g. mAP when no run evaluated accuracy)."""
    keep = []
    for attr, header, fmt in COLUMNS:
        if attr in ("target", "bundle", "variant", "status") or any(getattr(r, attr) is not None for r in rows):
            keep.append((attr, header, fmt))
    return keep


# The deploy summary leaves out what only matters when comparing (see edgekit report).
SUMMARY_COLUMNS = ("target", "bundle", "variant", "backend", "status", "p50_ms", "p99_ms", "fps", "pre_ms", "infer_ms", "post_ms", "map", "map50", "drift")

# Most important first: when the terminal is narrow, columns are taken in this
# order while they fit (whole, never cut), then shown in COLUMNS order.
IMPORTANCE = (
    "target", "bundle", "variant", "status", "p50_ms", "map", "speedup", "dmap", "fps", "p99_ms",
    "drift", "mj_per_inf", "img_s", "backend", "size_mb", "infer_ms", "map50", "pre_ms", "post_ms", "gmacs", "params_m",
)
# Without these a row cannot be told apart, so they are kept whatever the width.
REQUIRED = ("target", "bundle", "variant", "status")
# rich with box=None and pad_edge=False: one space of padding each side between columns.
GAP = 2
TEXT_COLUMNS = ("target", "bundle", "variant", "backend", "status")

Column = Tuple[str, str, str]


def column_names() -> List[str]:
    """The names ``--columns`` accepts (the CSV/JSON field names)."""
    return [attr for attr, _h, _f in COLUMNS]


def natural_width(rows: Sequence[Row], column: Column) -> int:
    """Characters the column needs so that neither its header nor any cell is cut."""
    attr, header, fmt = column
    return max([len(header)] + [len(cell(r, attr, fmt)) for r in rows])


def _parse_names(names: Sequence[str]) -> List[Column]:
    by_name = {}
    for column in COLUMNS:
        by_name[column[0].lower()] = column
        by_name[column[1].lower()] = column
    chosen = []
    for name in names:
        column = by_name.get(name.strip().lower())
        if column is None:
            raise EdgekitError("unknown column %r" % name, "pass --columns with names among: %s" % ", ".join(column_names()))
        if column not in chosen:
            chosen.append(column)
    return chosen


def fit_columns(
    rows: Sequence[Row], width: Optional[int] = None, names: Optional[Sequence[str]] = None, summary: bool = False
) -> Tuple[List[Column], List[Column]]:
    """(shown, hidden) columns: ``names`` as given, else every used column that fits ``width``.

    ``width`` None means no limit (a pipe or a file gets the full table).
    """
    if names:
        return _parse_names(names), []
    available = [c for c in used_columns(rows) if not summary or c[0] in SUMMARY_COLUMNS]
    by_attr = {c[0]: c for c in available}
    chosen = set()
    total = -GAP
    for attr in IMPORTANCE:
        column = by_attr.get(attr)
        if column is None:
            continue
        need = natural_width(rows, column) + GAP
        if attr in REQUIRED or width is None or total + need <= width:
            chosen.add(attr)
            total += need
    shown = [c for c in available if c[0] in chosen]
    hidden = [c for c in available if c[0] not in chosen]
    return shown, hidden


def table_width(rows: Sequence[Row], columns: Sequence[Column]) -> int:
    return sum(natural_width(rows, c) for c in columns) + GAP * max(len(columns) - 1, 0)


def rich_table(
    rows: Sequence[Row],
    title: Optional[str] = None,
    summary: bool = False,
    width: Optional[int] = None,
    names: Optional[Sequence[str]] = None,
) -> Any:
    """The table for the terminal (rich): the columns that fit ``width``, each cell whole."""
    from rich.table import Table

    table = Table(title=title, header_style="bold", box=None, pad_edge=False)
    columns, _hidden = fit_columns(rows, width=width, names=names, summary=summary)
    for column in columns:
        attr, header, _fmt = column
        justify = "left" if attr in TEXT_COLUMNS else "right"
        # min_width and no_wrap: rich must never squeeze a number into "0.7…".
        table.add_column(header, justify=justify, no_wrap=True, min_width=natural_width(rows, column))
    from rich.text import Text

    from .map_loss import MAX_LOSS_POINTS

    for r in rows:
        cells = [cell(r, attr, fmt) for attr, _h, fmt in columns]
        # A row more than MAX_LOSS_POINTS mAP points below its baseline: its d mAP in red.
        if r.dmap is not None and r.dmap * 100.0 < -MAX_LOSS_POINTS:
            cells = [Text(c, style="bold red") if attr == "dmap" else c for c, (attr, _h, _f) in zip(cells, columns)]
        # Failed: red. Skipped (the target cannot run it by design): dim, not an alarm.
        style = {"ok": None, "skipped": "dim"}.get(r.status, "red")
        table.add_row(*cells, style=style)
    return table


def pivot(rows: Sequence[Row], attr: str, fmt: str) -> Tuple[List[str], List[List[str]]]:
    """Variant x target view of one column: (header, body rows) with one row per bundle/variant."""
    targets = list(dict.fromkeys(r.target for r in rows))
    labels = list(dict.fromkeys(r.label for r in rows))
    cells = {(r.label, r.target): cell(r, attr, fmt) if r.status == "ok" else r.status for r in rows}
    body = [[label] + [cells.get((label, t), "") for t in targets] for label in labels]
    return ["variant"] + targets, body


PIVOTS = (("p50_ms", "p50 latency (ms)", "%.2f"), ("map", "mAP@0.5:0.95", "%.4f"))


def rich_pivots(rows: Sequence[Row]) -> List[Any]:
    """Variant x target tables (p50, mAP) for the terminal; empty with one target."""
    from rich.table import Table

    if len({r.target for r in rows}) < 2:
        return []
    tables = []
    for attr, title, fmt in PIVOTS:
        if not any(getattr(r, attr) is not None for r in rows):
            continue
        header, body = pivot(rows, attr, fmt)
        table = Table(title=title, header_style="bold", box=None, pad_edge=False, title_justify="left")
        for i, name in enumerate(header):
            table.add_column(name, justify="left" if i == 0 else "right")
        for line in body:
            table.add_row(*line)
        tables.append(table)
    return tables
