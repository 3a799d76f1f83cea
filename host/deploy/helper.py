"""Host side of edgekit/device/remote_helper.py: one helper process per deploy, asked by JSON lines."""
import json
import os
from typing import Any, Dict, List, Optional, Sequence

import edgekit.device
from edgekit.contract.errors import EdgekitError
from .shell import CommandTimeout, Host

# The helper runs on the board, so it lives with the device code; it is sent as
# ``python -c SOURCE`` (stdlib only), before the agent zipapp is there.
_SOURCE_PATH = os.path.join(os.path.dirname(os.path.abspath(edgekit.device.__file__)), "remote_helper.py")
_source_cache: List[str] = []


def helper_source() -> str:
    if not _source_cache:
        with open(_SOURCE_PATH, "r", encoding="utf-8") as f:
            _source_cache.append(f.read())
    return _source_cache[0]


class RemoteHelper(object):
    """The helper running under the target's ``python``; use as a context manager."""

    def __init__(self, host: Host, python: str, idle_timeout: Optional[float] = 60.0) -> None:
        self.host = host
        self.python = python
        self.idle_timeout = idle_timeout
        # -S: the helper is stdlib only, so the board's site-packages (.pth files, an
        # editable install's finder) need not load: its start is on every deploy's path.
        self.proc = host.spawn([python, "-S", "-c", helper_source()])
        self._closed = False

    def request(self, op: str, **fields: Any) -> Dict[str, Any]:
        self.send(op, **fields)
        return self.receive(op)

    def send(self, op: str, **fields: Any) -> None:
        """Queue a request; the helper answers in order (see :meth:`receive`)."""
        fields["op"] = op
        self.proc.send((json.dumps(fields) + "\n").encode("utf-8"))

    def send_bytes(self, data: bytes) -> None:
        """Raw bytes after a request that reads them (``receive``), within the idle limit."""
        try:
            self.proc.send(data, self.idle_timeout)
        except CommandTimeout:
            raise
        except EdgekitError:
            raise self._died("the upload") from None  # it ended: say why (no interpreter, too old, ...)

    def abort(self) -> None:
        """Give the helper up without waiting (after a failed stream: it is out of step)."""
        self._closed = True
        self.proc.abort()

    def receive(self, op: str) -> Dict[str, Any]:
        """The answer to the oldest request not yet received."""
        line = self.proc.readline(self.idle_timeout)
        if not line:
            raise self._died(op)
        try:
            answer = json.loads(line.decode("utf-8"))
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise EdgekitError("the deploy helper on %s answered %r to %s" % (self.host.name, line[:80], op), "check that --python is a plain Python 3 interpreter")
        if answer.get("error"):
            raise EdgekitError("%s on %s failed: %s" % (op, self.host.name, answer["error"]), "check permissions and free space under --remote-dir")
        return answer

    def _died(self, op: str) -> EdgekitError:
        rc, err = self.proc.finish()
        self._closed = True
        lines = [l.strip() for l in err.splitlines() if l.strip()]
        last = lines[-1] if lines else "exit status %d" % rc
        if rc == 127 or "not found" in err or "No such file" in err:
            return EdgekitError(
                "%s has no Python interpreter %r (%s)" % (self.host.name, self.python, last),
                "install Python 3.8 or newer there (apt install python3) or pass --python PATH",
            )
        if "SyntaxError" in err:
            return EdgekitError("%r on %s is too old to run the deploy helper (%s)" % (self.python, self.host.name, last), "pass a Python 3.8+ interpreter with --python")
        return EdgekitError("the deploy helper on %s stopped during %s (%s)" % (self.host.name, op, last), "check that %r is a working Python 3 interpreter (or pass --python)" % self.python)

    def run(self, argv: Sequence[str], timeout: float) -> Dict[str, Any]:
        """Run a short command next to the helper (no new SSH session): {rc, stdout, stderr}."""
        saved = self.idle_timeout
        self.idle_timeout = None if saved is None else max(saved, timeout + 10)
        try:
            return self.request("run", argv=list(argv), timeout=timeout)
        finally:
            self.idle_timeout = saved

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.proc.finish()

    def __enter__(self) -> "RemoteHelper":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
