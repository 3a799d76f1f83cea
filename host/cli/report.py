"""`edgekit report`: tables and plots from stored results."""
from typing import List, Optional, Tuple

import click

from ..report.make import DEFAULT_OUT, make_report
from ..report.table import column_names, column_notes, fit_columns, rich_pivots, rich_table, table_width
from ..report.writers import csv_text, json_text, markdown

FORMATS = ("table", "md", "csv", "json")


def _split(columns: Optional[str]) -> Optional[List[str]]:
    return [c for c in columns.split(",") if c.strip()] if columns else None


@click.command("report")
@click.argument("results", nargs=-1, type=click.Path())
@click.option("--out", "out_dir", default=DEFAULT_OUT, show_default=True, type=click.Path(file_okay=False), help="Folder for report.md, report.csv and the PNG plots.")
@click.option("--baseline", default=None, help="Variant (or bundle/variant) the 'x base' and 'd mAP' columns compare with; default: the first row of each target.")
@click.option("--all", "all_runs", is_flag=True, help="Every result file, not only the newest per target and bundle.")
@click.option("--no-plots", is_flag=True, help="Skip the PNG plots.")
@click.option(
    "--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True,
    help="What goes to stdout: the terminal table, or the full table as Markdown, CSV or JSON (schema: docs/deploy.md).",
)
@click.option("--json", "as_json", is_flag=True, help="Same as --format json.")
@click.option("--top-layers", type=click.IntRange(1), default=10, show_default=True, help="Slowest nodes (and largest per-layer changes) listed per variant in layers.md, for runs with --profile-layers.")
@click.option("--columns", default=None, help="Comma-separated columns for the terminal table, in this order, e.g. target,variant,p50_ms,map; default: the most important that fit.")
def report(
    results: Tuple[str, ...], out_dir: str, baseline: Optional[str], all_runs: bool, no_plots: bool, fmt: str, as_json: bool, columns: Optional[str],
    top_layers: int = 10,
) -> None:
    """Tables and plots from RESULTS (files or folders; default: ./results).

    Prints one row per variant x target (latency p50/p99, FPS, pre/infer/post ms,
    mAP, drift vs host, size, params, MACs) and writes Markdown, CSV and PNG plots.
    On a narrow terminal the less important columns are left out (named below the
    table); report.md, report.csv and --format md|csv|json always hold them all.
    Pass two bundles' results to compare them side by side. Runs measured with
    --profile-layers add layers.md (slowest nodes, time by op type, fp32 against
    int8 layer by layer) and layers_op_types.png.
    """
    from rich.console import Console

    fmt = "json" if as_json else fmt
    names = _split(columns)
    rep = make_report(results, out_dir=out_dir, baseline=baseline, latest_only=not all_runs, plots=not no_plots, top_layers=top_layers)
    done = "read %d result file(s); wrote %s" % (len(rep.sources), ", ".join(rep.files))
    if fmt != "table":
        # stdout is the data alone (for jq, a spreadsheet, a wiki); the note goes to stderr.
        text = {"md": lambda: markdown(rep.rows, title="edgekit report"), "csv": lambda: csv_text(rep.rows), "json": lambda: json_text(rep.rows, rep.sources, baseline)}[fmt]()
        click.echo(text, nl=False)
        click.echo(done, err=True)
        return
    plain = Console()
    if plain.is_terminal:
        console, width = plain, plain.width
    else:
        # A pipe or a file: every column, as wide as it needs (never cut).
        width = None
        console = Console(width=max(80, table_width(rep.rows, fit_columns(rep.rows, names=names)[0]) + 1))
    console.print(rich_table(rep.rows, width=width, names=names))
    shown, hidden = fit_columns(rep.rows, width=width, names=names)
    for note in column_notes(rep.rows, [attr for attr, _h, _f in shown]):
        console.print(note, highlight=False, soft_wrap=True)
    if hidden:
        console.print(
            "not shown at %d columns: %s (widen the terminal, pick with --columns, or use --format md|csv|json)"
            % (width or 0, ", ".join(a for a, _h, _f in hidden)),
            highlight=False, soft_wrap=True,
        )
    for table in rich_pivots(rep.rows):
        console.print()
        console.print(table)
    click.echo(done)


report.help = (report.help or "") + "\n\nColumns: " + ", ".join(column_names()) + "."
