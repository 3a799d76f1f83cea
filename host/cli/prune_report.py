"""Draws a pruning report (edgekit.host.prune.summary.PruneReport) on the
terminal: the summary, the per-layer table, what was left unpruned and why,
and the verdict. The report itself only holds numbers and writes files."""
from typing import Any

from edgekit.host.prune.summary import PruneReport


def render_prune_report(report: PruneReport, console: Any = None, layers: bool = True) -> None:
    """Print the summary, the per-layer table and any problems (rich)."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    summary = Table(box=None, show_header=True, header_style="bold")
    for col in ("", "before", "after", "change"):
        summary.add_column(col, justify="right" if col else "left")
    summary.add_row("parameters", _count(report.params_before), _count(report.params_after), _pct(report.params_before, report.params_after))
    summary.add_row("MACs (conv, linear, matmul)", _count(report.macs_before), _count(report.macs_after), _pct(report.macs_before, report.macs_after))
    summary.add_row("file size", _bytes(report.size_before), _bytes(report.size_after), _pct(report.size_before, report.size_after))
    how = report.strategy
    if report.bn_threshold is not None:
        how = "bn-threshold %g" % report.bn_threshold
    elif report.target_macs is not None:
        how += ", target MACs -%g%%" % (100 * report.target_macs)
    elif report.ratio is not None:
        how += ", ratio %g" % report.ratio
    console.print("[bold]Pruning[/bold] %s, criterion %s, alignment %d, input %s" % (how, report.criterion, report.alignment, "x".join(map(str, report.input_shape))))
    console.print(summary)
    if layers:
        table = Table(box=None, header_style="bold")
        for col, justify in (("layer", "left"), ("type", "left"), ("in", "right"), ("out orig", "right"), ("target", "right"), ("kept", "right"), ("+align", "right"), ("", "left")):
            table.add_column(col, justify=justify)
        for r in report.layers:
            mark = "[green]ok[/green]" if r.aligned else "[red]NOT ALIGNED[/red]"
            if r.fixed:
                mark += " [dim]fixed: %s[/dim]" % r.fixed
            table.add_row(
                r.name,
                r.kind,
                "%d->%d" % (r.in_before, r.in_after) if r.in_before != r.in_after else str(r.in_after),
                str(r.out_before),
                "" if r.out_target is None else str(r.out_target),
                str(r.out_after),
                "" if r.added_by_alignment in (None, 0) else "%+d" % r.added_by_alignment,
                mark,
            )
        console.print(table)
    if report.sparsity:
        console.print("[bold]Sparsity[/bold] %s: %s" % (report.sparsity.get("kind"), report.sparsity.get("summary", "")))
    if report.recovery:
        rec = report.recovery
        console.print(
            "[bold]Recovery[/bold] %s: %d steps in %.1f s, loss %.4g -> %.4g"
            % (rec.get("method", "distillation"), rec.get("steps", 0), rec.get("seconds", 0.0), rec.get("loss_first", float("nan")), rec.get("loss_last", float("nan")))
        )
    for note in report.notes:
        console.print("[yellow]note:[/yellow] %s" % note)
    for item in report.excluded:
        console.print("[yellow]left unpruned:[/yellow] group %s in %s: %s" % (item["group"], item["block"], item["reason"]), highlight=False)
    for problem in report.problems:
        console.print("[red]problem:[/red] %s" % problem)
    verdict = []
    verdict.append("all channels aligned to %d" % report.alignment if report.aligned else "[red]NOT all channels aligned to %d[/red]" % report.alignment)
    verdict.append("model runs" if report.runs else "[red]model does not run[/red]")
    verdict.append("output shapes unchanged" if report.outputs_unchanged else "[red]output shapes changed[/red]")
    console.print("; ".join(verdict))

def _count(n: float) -> str:
    if n >= 1e9:
        return "%.2fG" % (n / 1e9)
    if n >= 1e6:
        return "%.2fM" % (n / 1e6)
    if n >= 1e3:
        return "%.1fK" % (n / 1e3)
    return str(int(n))


def _bytes(n: float) -> str:
    for unit, size in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if n >= size:
            return "%.2f %s" % (n / size, unit)
    return "%d B" % n


def _pct(before: float, after: float) -> str:
    if not before:
        return ""
    return "%+.1f%%" % (100.0 * (after - before) / before)
