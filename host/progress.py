"""The host's one progress protocol: what long-running library code reports.

Library functions take an optional ``progress`` callback and call it with plain
dicts; only host/cli draws them (edgekit.host.cli.progress), tests and
benchmarks read them. Every event has ``event``; the kinds::

    {"event": "stage", "stage": "export", "variant": "p30-fp32" | None,
     "status": "start" | "done", "seconds": float, "detail": str}
    {"event": "step", "stage": "recover", "variant": ..., "done": 120, "total": 300,
     "unit": "steps" | "images" | "groups" | "s", "elapsed": float, "info": str}
    {"event": "warning", "message": str}

``done``/``total`` count in ``unit``; ``elapsed`` is seconds since the stage
started, so a display can show a rate and a time left. ``info`` is a short
free text (a loss, a layer name).

A deploy (edgekit.host.deploy.events) sends the same kinds with a ``target``
key (the target's name; targets run in parallel threads), and two more::

    {"event": "stage", "stage": "connect" | "preflight" | "sync" | "doctor" | "verify"
     | "run" | "fetch" | "done" | "failed", "target": "orin-1", "status": "start"
     | "done" | "failed", "detail": str, "sync": {...}  (with the sync's "done")}
    {"event": "step", "stage": "sync", "target": ..., "unit": "bytes", ...}
    {"event": "agent", "target": ..., "agent": {...}}   one event of the board's agent
    {"event": "log", "target": ..., "line": str}        an agent stderr line

The agent's own events on the board (edgekit.contract.agent_events) travel
whole inside "agent" events: they are the board's side of the contract.
"""
import time
from typing import Any, Callable, Dict, Optional

Event = Dict[str, Any]
Callback = Callable[[Event], None]


def step_event(stage: str, done: float, total: float, unit: str, elapsed: float, variant: Optional[str] = None, info: str = "") -> Event:
    return {"event": "step", "stage": stage, "variant": variant, "done": done, "total": total, "unit": unit, "elapsed": elapsed, "info": info}


class StepCounter(object):
    """Turns ``(done, total)`` calls of one stage into step events with unit and elapsed time."""

    def __init__(self, callback: Optional[Callback], stage: str, unit: str, variant: Optional[str] = None) -> None:
        self.callback = callback
        self.stage = stage
        self.unit = unit
        self.variant = variant
        self.started = time.perf_counter()

    def __call__(self, done: float, total: float, info: str = "") -> None:
        if self.callback is not None:
            self.callback(step_event(self.stage, done, total, self.unit, time.perf_counter() - self.started, self.variant, info))
