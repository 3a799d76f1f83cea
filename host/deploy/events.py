"""What a deploy reports while it works. The CLI's display implements these;
library callers and tests may pass the no-op base or record the calls."""
from typing import Any, Dict

from .targets import Target


class Events(object):
    """No-op base; methods may be called from worker threads (one per target)."""

    def stage(self, target: Target, stage: str, detail: str = "") -> None:
        """connect, preflight, sync, doctor, verify, run, fetch, done, or failed (detail: the error)."""

    def transfer_start(self, target: Target, total_bytes: int, files: int) -> None:
        pass

    def transfer_more(self, target: Target, nbytes: int) -> None:
        """The transfer grew by ``nbytes`` (files found missing after it started)."""

    def transfer(self, target: Target, nbytes: int) -> None:
        pass

    def transfer_done(self, target: Target, stats: Any) -> None:
        pass

    def agent_event(self, target: Target, event: Dict[str, Any]) -> None:
        """One JSON progress event from the agent (edgekit.contract.agent_events)."""

    def log(self, target: Target, line: str) -> None:
        """A line the agent wrote on stderr that is not a progress event."""


class RecordingEvents(Events):
    """Keeps every call, for tests and for --json output."""

    def __init__(self) -> None:
        self.calls = []

    def stage(self, target, stage, detail=""):
        self.calls.append(("stage", target.name, stage, detail))

    def transfer_start(self, target, total_bytes, files):
        self.calls.append(("transfer_start", target.name, total_bytes, files))

    def transfer_more(self, target, nbytes):
        self.calls.append(("transfer_more", target.name, nbytes))

    def transfer(self, target, nbytes):
        self.calls.append(("transfer", target.name, nbytes))

    def transfer_done(self, target, stats):
        self.calls.append(("transfer_done", target.name, stats))

    def agent_event(self, target, event):
        self.calls.append(("agent_event", target.name, event))

    def log(self, target, line):
        self.calls.append(("log", target.name, line))

    def stages(self, target_name: str):
        return [c[2] for c in self.calls if c[0] == "stage" and c[1] == target_name]
