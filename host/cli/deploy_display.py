"""The live display of ``edgekit deploy``: one status line per target.

On a terminal (rich Live, on stderr): stage, a byte progress bar with
throughput while syncing, the agent's variant/phase/step while running. Not on a
terminal (CI logs, tests): one plain line per stage change and per finished
variant, so logs stay readable.
"""
import threading
import time
from typing import Any, Dict, Optional

from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text



def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return ("%.0f %s" if unit == "B" else "%.1f %s") % (n, unit)
        n /= 1000.0
    return "%.1f GB" % n


def sync_summary(stats: Dict[str, Any]) -> str:
    """One line about a sync (edgekit.host.deploy.sync.SyncStats.to_dict())."""
    text = "%d of %d files sent (%s" % (stats["files_sent"], stats["files_total"], human_bytes(stats["bytes_sent"]))
    if stats["bytes_sent"] and stats.get("upload_seconds"):
        text += " at %s/s" % human_bytes(stats["bytes_sent"] / stats["upload_seconds"])
    text += "), %d already there" % stats["files_present"]
    if stats.get("files_reused"):
        text += ", %d reused from other bundles" % stats["files_reused"]
    if stats.get("files_resumed"):
        text += ", %d resumed" % stats["files_resumed"]
    return text + "; %.2f s" % stats["seconds"]


class _State(object):
    def __init__(self, name: str) -> None:
        self.name = name
        self.stage = "waiting"
        self.detail = ""
        self.total = 0
        self.done = 0
        self.t_start = 0.0
        self.t_last = 0.0
        self.agent = ""  # e.g. "[fp32] bench 40/100"
        self.finished: list = []
        self.variants: list = []  # from the agent's start event: how many there are in all


def _variant_count(s: _State) -> str:
    """Where the agent is among the variants: 'variant 2/4, 1 ok' while running, '3 of 4 variants ok' after."""
    ok = sum(1 for e in s.finished if e.get("status") == "ok")
    total = max(len(s.variants), len(s.finished))
    if s.stage == "run" and total and len(s.finished) < total:
        return "variant %d/%d, %d ok" % (len(s.finished) + 1, total, ok)
    if s.finished and s.stage in ("run", "fetch", "done"):
        return "%d of %d variants ok" % (ok, total)
    return ""


class LiveDisplay(object):
    """The deploy's progress callback. Use as a context manager around the deploy; safe to call from worker threads."""

    def __init__(self, console: Optional[Console] = None) -> None:
        self.console = console or Console(stderr=True)
        self.live_mode = self.console.is_terminal
        self._lock = threading.Lock()
        self._states: Dict[str, _State] = {}
        self._live: Optional[Live] = None

    # --- context ----------------------------------------------------------------------
    def __enter__(self) -> "LiveDisplay":
        if self.live_mode:
            self._live = Live(get_renderable=self.render, console=self.console, refresh_per_second=8, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._live is not None:
            self._live.refresh()
            self._live.__exit__(*exc)
            self._live = None

    def _state(self, name: str) -> _State:
        state = self._states.get(name)
        if state is None:
            state = self._states[name] = _State(name)
        return state

    def _plain(self, name: str, text: str) -> None:
        if not self.live_mode:
            self.console.print(Text("%s: %s" % (name, text)), soft_wrap=True, highlight=False)

    # --- events (edgekit.host.progress dicts from edgekit.host.deploy.events) ---------
    def __call__(self, event: Dict[str, Any]) -> None:
        kind = event["event"]
        if kind == "warning":
            self.console.print(Text("warning: %s" % event["message"]), soft_wrap=True, highlight=False)
            return
        name = event["target"]
        if kind == "stage":
            self._stage(name, event)
        elif kind == "step":
            with self._lock:
                state = self._state(name)
                first = state.total == 0 and state.done == 0 and not state.t_start
                state.done, state.total = event["done"], event["total"]
                state.t_start = time.monotonic() - float(event.get("elapsed") or 0.0)
            if first and event["total"] == 0:
                self._plain(name, "everything already on the target, nothing to send")
        elif kind == "agent":
            self._agent(name, event["agent"])
        elif kind == "log":
            self._plain(name, event["line"])

    def _stage(self, name: str, event: Dict[str, Any]) -> None:
        stage, detail = event["stage"], event.get("detail") or ""
        if event["status"] == "done" and stage != "done":
            if event.get("sync") is not None:
                self._plain(name, "synced: %s" % sync_summary(event["sync"]))
            return
        with self._lock:
            state = self._state(name)
            state.stage, state.detail = stage, detail
            if stage not in ("run",):
                state.agent = ""
        # A failure's message is printed once, as the command's closing error line.
        self._plain(name, stage + (" (%s)" % detail if detail and stage != "failed" else ""))

    def _agent(self, name: str, event: Dict[str, Any]) -> None:
        kind = event.get("event")
        variant = event.get("variant")
        with self._lock:
            state = self._state(name)
            if kind == "start":
                state.variants = list(event.get("variants") or [])
            elif kind == "phase":
                state.agent = "[%s] %s" % (variant, event.get("phase"))
            elif kind == "progress":
                total = event.get("total")
                state.agent = "[%s] %s %s%s" % (variant, event.get("phase"), event.get("done"), "/%s" % total if total else "")
            elif kind == "run":
                state.finished.append(event)
        if kind == "run":
            bits = [str(event.get("status"))]
            if event.get("p50_ms") is not None:
                bits.append("p50 %.2f ms" % event["p50_ms"])
            if event.get("map") is not None:
                bits.append("mAP %.4f" % event["map"])
            if event.get("error"):
                bits.append(str(event["error"]))
            self._plain(name, "[%s] %s" % (variant, ", ".join(bits)))
        elif kind == "warning":
            self._plain(name, "warning: %s" % event.get("message"))

    # --- rendering ----------------------------------------------------------------------
    def render(self) -> Any:
        table = Table(box=None, show_header=False, pad_edge=False, expand=False)
        table.add_column("target", style="bold", no_wrap=True)
        table.add_column("stage", no_wrap=True)
        table.add_column("bar", no_wrap=True)
        table.add_column("detail", overflow="ellipsis", no_wrap=True)
        with self._lock:
            states = list(self._states.values())
            for s in states:
                style = {"failed": "red", "done": "green"}.get(s.stage, "yellow")
                bar: Any = ""
                detail = s.detail
                if s.stage in ("sync", "doctor") and s.total and s.done < s.total:
                    bar = ProgressBar(total=s.total, completed=s.done, width=24)
                    elapsed = time.monotonic() - s.t_start
                    rate = "%s/s" % human_bytes(s.done / elapsed) if elapsed >= 0.2 else ""
                    detail = "%s / %s  %s" % (human_bytes(s.done), human_bytes(s.total), rate)
                elif s.stage == "run" and s.agent:
                    detail = s.agent
                count = _variant_count(s)
                if count:
                    detail = "%s  (%s)" % (detail, count) if detail else count
                # Text, not markup: "[fp32]" must not be read as a style tag.
                table.add_row(Text(s.name), Text(s.stage, style=style), bar, Text(detail))
        return Group(table)
