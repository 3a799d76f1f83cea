"""What a deploy reports while it works, in the host's one progress protocol
(edgekit.host.progress): plain dicts, each carrying the target's name, handed to
one callback. host/cli/deploy_display.py draws them; tests read them.

``DeployReporter`` only turns the pipeline's calls into those dicts (and keeps
each target's running byte count, so a sync's step events say done/total in
bytes with the time elapsed). It may be called from worker threads, one per target.
"""
import threading
import time
from typing import Any, Dict, List, Optional

from edgekit.host.progress import Callback, Event

from .targets import Target

# Deploy stages in order; "done" and "failed" end a target's deploy.
STAGES = ("connect", "preflight", "sync", "doctor", "verify", "run", "fetch", "done", "failed")


class DeployReporter(object):
    def __init__(self, callback: Optional[Callback] = None) -> None:
        self.callback = callback
        self._lock = threading.Lock()
        self._bytes: Dict[str, List[float]] = {}  # target -> [done, total, started]

    def _emit(self, event: Event) -> None:
        if self.callback is not None:
            self.callback(event)

    def stage(self, target: Target, stage: str, detail: str = "") -> None:
        """A target entered ``stage``; "done" and "failed" (detail: the error) end its deploy."""
        status = stage if stage in ("done", "failed") else "start"
        self._emit({"event": "stage", "stage": stage, "target": target.name, "variant": None, "status": status, "seconds": 0.0, "detail": detail})

    def transfer_start(self, target: Target, total_bytes: int, files: int) -> None:
        with self._lock:
            self._bytes[target.name] = [0, total_bytes, time.monotonic()]
        self._sync_step(target, "%d files" % files)

    def transfer_more(self, target: Target, nbytes: int) -> None:
        """The transfer grew by ``nbytes`` (files found missing after it started)."""
        with self._lock:
            self._bytes.setdefault(target.name, [0, 0, time.monotonic()])[1] += nbytes
        self._sync_step(target)

    def transfer(self, target: Target, nbytes: int) -> None:
        with self._lock:
            self._bytes.setdefault(target.name, [0, 0, time.monotonic()])[0] += nbytes
        self._sync_step(target)

    def _sync_step(self, target: Target, info: str = "") -> None:
        with self._lock:
            done, total, started = self._bytes[target.name]
        self._emit({"event": "step", "stage": "sync", "target": target.name, "variant": None, "done": done, "total": total,
                    "unit": "bytes", "elapsed": time.monotonic() - started, "info": info})

    def transfer_done(self, target: Target, stats: Any) -> None:
        """The sync finished; ``stats`` is an edgekit.host.deploy.sync.SyncStats."""
        self._emit({"event": "stage", "stage": "sync", "target": target.name, "variant": None, "status": "done",
                    "seconds": stats.seconds, "detail": "", "sync": stats.to_dict()})

    def agent_event(self, target: Target, event: Dict[str, Any]) -> None:
        """One JSON progress event from the agent (edgekit.contract.agent_events), passed on whole."""
        self._emit({"event": "agent", "target": target.name, "agent": event})

    def log(self, target: Target, line: str) -> None:
        """A line the agent wrote on stderr that is not a progress event."""
        self._emit({"event": "log", "target": target.name, "line": line})

