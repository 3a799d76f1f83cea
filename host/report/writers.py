"""Markdown and CSV versions of the report table (written atomically)."""
import csv
import dataclasses
import io
import json
import os
from typing import Any, Callable, Dict, Optional, Sequence

from edgekit.contract.errors import EdgekitError
from .table import COLUMNS, PIVOTS, Row, cell, column_notes, pivot, used_columns


def _write_atomic(path: str, write: Callable[[io.StringIO], None]) -> str:
    buf = io.StringIO()
    write(buf)
    folder = os.path.dirname(os.path.abspath(path))
    tmp = "%s.partial" % path
    try:
        os.makedirs(folder, exist_ok=True)
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(buf.getvalue())
        os.replace(tmp, path)
    except OSError as exc:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise EdgekitError("cannot write %s (%s)" % (path, exc.strerror), "pass a writable --out folder")
    return path


def markdown(rows: Sequence[Row], title: Optional[str] = None) -> str:
    columns = used_columns(rows)
    lines = []
    if title:
        lines += ["# %s" % title, ""]
    lines.append("| " + " | ".join(h for _a, h, _f in columns) + " |")
    lines.append("|" + "|".join("---" if a in ("target", "bundle", "variant", "backend", "status") else "---:" for a, _h, _f in columns) + "|")
    for r in rows:
        lines.append("| " + " | ".join(cell(r, a, f).replace("|", "\\|") for a, _h, f in columns) + " |")
    notes = [
        "",
        "Latency: inference only (p50/p99, FPS = 1000 / mean); pre/infer/post: mean per image on real images; "
        "drift: device mAP minus the host's; x base and d mAP: against the first row of each target.",
    ]
    notes += ["", *column_notes(rows)] if column_notes(rows) else []
    if len({r.target for r in rows}) > 1:
        for attr, title, fmt in PIVOTS:
            if any(getattr(r, attr) is not None for r in rows):
                header, body = pivot(rows, attr, fmt)
                notes += ["", "## %s, variant x target" % title, ""]
                notes.append("| " + " | ".join(h.replace("|", "\\|") for h in header) + " |")
                notes.append("|---|" + "---:|" * (len(header) - 1))
                notes += ["| " + " | ".join(c.replace("|", "\\|") for c in line) + " |" for line in body]
    for status, heading in (("failed", "Failed runs:"), ("skipped", "Skipped runs (the target cannot run them by design; not a failure):")):
        these = [r for r in rows if r.status == status]
        if these:
            notes += ["", heading, ""]
            notes += ["- %s %s/%s: %s" % (r.target, r.bundle, r.variant, r.error or r.status) for r in these]
    return "\n".join(lines + notes) + "\n"


def write_markdown(rows: Sequence[Row], path: str, title: Optional[str] = None) -> str:
    return _write_atomic(path, lambda buf: buf.write(markdown(rows, title)))


CSV_FIELDS = [f.name for f in dataclasses.fields(Row)]


def csv_text(rows: Sequence[Row]) -> str:
    """Every field of every row, numbers unrounded, empty where unknown."""
    buf = io.StringIO()
    out = csv.writer(buf)
    out.writerow(CSV_FIELDS)
    for r in rows:
        values = dataclasses.asdict(r)
        out.writerow(["" if values[k] is None else values[k] for k in CSV_FIELDS])
    return buf.getvalue()


def write_csv(rows: Sequence[Row], path: str) -> str:
    return _write_atomic(path, lambda buf: buf.write(csv_text(rows)))


# The JSON report's shape (docs/deploy.md, "edgekit report"): bump the version on
# any change a reader could trip over (a field renamed, removed or retyped).
JSON_FORMAT = "edgekit-report"
JSON_VERSION = 1


def report_dict(rows: Sequence[Row], sources: Sequence[str], baseline: Optional[str] = None) -> Dict[str, Any]:
    """The machine-readable report: one object per row with every field, null where unknown."""
    return {
        "format": JSON_FORMAT,
        "version": JSON_VERSION,
        "baseline": baseline,
        "sources": list(sources),
        "columns": [{"field": a, "header": h} for a, h, _f in COLUMNS],
        "rows": [dataclasses.asdict(r) for r in rows],
    }


def json_text(rows: Sequence[Row], sources: Sequence[str], baseline: Optional[str] = None) -> str:
    return json.dumps(report_dict(rows, sources, baseline), indent=2) + "\n"
