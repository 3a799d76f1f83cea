"""Stage timing of a build, reported in the host's progress protocol
(edgekit.host.progress): the CLI draws the events, tests and the benchmark
read the timings.
"""
import contextlib
import time
from typing import Any, Dict, Iterator, List, Optional

from edgekit.host.progress import Callback, StepCounter


class Reporter(object):
    def __init__(self, callback: Optional[Callback] = None) -> None:
        self.callback = callback
        self.seconds: Dict[str, float] = {}  # stage -> total seconds over all variants
        self.timeline: List[Dict[str, Any]] = []  # one entry per finished stage
        self.warnings: List[str] = []

    def emit(self, event: Dict[str, Any]) -> None:
        if self.callback is not None:
            self.callback(event)

    @contextlib.contextmanager
    def stage(self, stage: str, variant: Optional[str] = None) -> Iterator[Dict[str, Any]]:
        """Time a stage; the body may set ``info["detail"]`` for the display."""
        info: Dict[str, Any] = {"detail": ""}
        self.emit({"event": "stage", "stage": stage, "variant": variant, "status": "start", "seconds": 0.0, "detail": ""})
        start = time.perf_counter()
        yield info
        seconds = time.perf_counter() - start
        self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds
        self.timeline.append({"stage": stage, "variant": variant, "seconds": round(seconds, 3)})
        self.emit({"event": "stage", "stage": stage, "variant": variant, "status": "done", "seconds": seconds, "detail": info["detail"]})

    def counter(self, stage: str, variant: Optional[str], unit: str) -> StepCounter:
        """A ``(done, total)`` callback for library code, emitting step events of ``stage``."""
        return StepCounter(self.callback, stage, unit, variant)

    def warn(self, message: str) -> None:
        if message not in self.warnings:  # warn once
            self.warnings.append(message)
            self.emit({"event": "warning", "message": message})
