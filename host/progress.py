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
free text (a loss, a layer name). The agent's events on the board are a
separate, older protocol (edgekit.contract.agent_events) that deploy
translates for its display.
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
