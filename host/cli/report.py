"""`edgekit report`: tables and plots from stored results."""
from typing import Optional, Tuple

import click

from ..report.make import DEFAULT_OUT, make_report
from ..report.table import rich_pivots, rich_table


@click.command("report")
@click.argument("results", nargs=-1, type=click.Path())
@click.option("--out", "out_dir", default=DEFAULT_OUT, show_default=True, type=click.Path(file_okay=False), help="Folder for report.md, report.csv and the PNG plots.")
@click.option("--baseline", default=None, help="Variant (or bundle/variant) the 'x base' and 'd mAP' columns compare with; default: the first row of each target.")
@click.option("--all", "all_runs", is_flag=True, help="Every result file, not only the newest per target and bundle.")
@click.option("--no-plots", is_flag=True, help="Skip the PNG plots.")
def report(results: Tuple[str, ...], out_dir: str, baseline: Optional[str], all_runs: bool, no_plots: bool) -> None:
    """Tables and plots from RESULTS (files or folders; default: ./results).

    Prints one row per variant x target (latency p50/p99, FPS, pre/infer/post ms,
    mAP, drift vs host, size, params, MACs) and writes Markdown, CSV and PNG plots.
    Pass two bundles' results to compare them side by side.
    """
    from rich.console import Console

    rep = make_report(results, out_dir=out_dir, baseline=baseline, latest_only=not all_runs, plots=not no_plots)
    plain = Console()
    console = plain if plain.is_terminal else Console(width=240)
    console.print(rich_table(rep.rows))
    for table in rich_pivots(rep.rows):
        console.print()
        console.print(table)
    click.echo("read %d result file(s); wrote %s" % (len(rep.sources), ", ".join(rep.files)))
