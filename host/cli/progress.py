"""Draws the host's progress events (edgekit.host.progress) on the terminal.

The only place host progress is drawn: one printed line per finished stage,
and one live line for the stage in progress with its count, unit, rate and
time left (``recover p30 120/300 steps  4.1 steps/s  0:29 left``).
"""
from typing import Any, Dict, Optional


def _clock(seconds: float) -> str:
    seconds = max(int(round(seconds)), 0)
    return "%d:%02d" % (seconds // 60, seconds % 60) if seconds < 3600 else "%d:%02d:%02d" % (seconds // 3600, seconds // 60 % 60, seconds % 60)


def step_text(event: Dict[str, Any]) -> str:
    """``stage [variant] done/total unit  rate  time left`` for one step event."""
    where = " %s" % event["variant"] if event.get("variant") else ""
    unit = event.get("unit") or ""
    done, total = event["done"], event["total"]
    text = "%s%s %s/%s%s" % (event["stage"], where, _num(done), _num(total), " " + unit if unit else "")
    elapsed = float(event.get("elapsed") or 0.0)
    if unit != "s" and elapsed > 0 and done > 0:
        rate = done / elapsed
        text += "  %.1f %s/s" % (rate, unit or "it")
        if total and total > done:
            text += "  %s left" % _clock((total - done) / rate)
    elif unit == "s" and total:
        text += "  %s left" % _clock(total - done)
    if event.get("info"):
        text += "  %s" % event["info"]
    return text


def _num(value: Any) -> str:
    return "%d" % value if float(value).is_integer() else "%.1f" % value


class ProgressDisplay(object):
    """Callback for library code: draws stage, step and warning events on a rich console."""

    def __init__(self, console: Any) -> None:
        self.console = console
        self.status: Optional[Any] = None
        self.current = ""

    def __call__(self, event: Dict[str, Any]) -> None:
        kind = event["event"]
        if kind == "warning":
            self.console.print("[yellow]warning:[/yellow] %s" % event["message"], highlight=False)
            return
        if kind == "step":
            self._live(step_text(event))
            return
        where = " [cyan]%s[/cyan]" % event["variant"] if event.get("variant") else ""
        if event["status"] == "start":
            self._live("%s%s ..." % (event["stage"], where))
            return
        self.close()
        detail = (": " + event["detail"]) if event.get("detail") else ""
        self.console.print("[green]done[/green] %-18s%s %6.1fs%s" % (event["stage"], where, event["seconds"], detail), highlight=False)

    def _live(self, text: str) -> None:
        if self.status is None:
            self.status = self.console.status(text)
            self.status.start()
        else:
            self.status.update(text)

    def close(self) -> None:
        if self.status is not None:
            self.status.stop()
            self.status = None
