"""``edgekit report`` as one library call: results in, table and files out."""
import dataclasses
import os
from typing import List, Optional, Sequence

from .layers import TOP_LAYERS, write_layers_report
from .load import load_results
from .plots import plot_energy, plot_frontier, plot_per_class, plot_pr, plot_stages
from .table import Row, build_rows
from .writers import write_csv, write_markdown

DEFAULT_OUT = "reports"


@dataclasses.dataclass
class Report:
    rows: List[Row]
    sources: List[str]
    files: List[str]


def make_report(
    paths: Sequence[str],
    out_dir: str = DEFAULT_OUT,
    baseline: Optional[str] = None,
    latest_only: bool = True,
    plots: bool = True,
    top_layers: int = TOP_LAYERS,
) -> Report:
    """Load results, build rows, write report.md, report.csv and (unless ``plots`` is off) the PNGs."""
    results = load_results(paths, latest_only=latest_only)
    rows = build_rows(results, baseline=baseline)
    files = [
        write_markdown(rows, os.path.join(out_dir, "report.md"), title="edgekit report"),
        write_csv(rows, os.path.join(out_dir, "report.csv")),
    ]
    if plots:
        for plot, name in ((plot_frontier, "latency_vs_map.png"), (plot_energy, "energy_vs_map.png"), (plot_stages, "stages.png")):
            written = plot(rows, os.path.join(out_dir, name))
            if written:
                files.append(written)
        # Per-class AP and PR curves (runs whose accuracy stored pycocotools' curves).
        for curve_plot, name in ((plot_per_class, "per_class_ap.png"), (plot_pr, "pr_curves.png")):
            written = curve_plot(results, os.path.join(out_dir, name))
            if written:
                files.append(written)
    # Per-layer times (runs measured with --profile-layers): layers.md and its plot.
    files += write_layers_report(results, out_dir, plots=plots, top=top_layers)
    return Report(rows=rows, sources=[r.path for r in results], files=files)
