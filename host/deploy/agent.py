"""What the host knows about the agent: how to build it, call it, and read it.

The command line itself is defined once, in edgekit.contract.agent_command
(the agent parses it, deploy builds it with AgentCall); this module builds the
zipapp and reads what the agent answers: the doctor's JSON, progress events
(edgekit.contract.agent_events) and the result (edgekit.contract.result).
"""
import json
import os
import tempfile
from typing import Any, Dict, List, Optional, Tuple

from edgekit.contract.manifest import sha256_file

from edgekit.contract.errors import EdgekitError

# Doctor checks that do not apply before the sync has finished.
EARLY_CHECKS_SKIPPED = ("bundle files",)


def build_agent(out_dir: Optional[str] = None) -> Tuple[str, str]:
    """Build edgekit-agent.pyz from the installed edgekit; returns (path, sha256)."""
    from ..agent_pyz import build_agent_pyz

    out_dir = out_dir or tempfile.mkdtemp(prefix="edgekit-agent-")
    path = build_agent_pyz(os.path.join(out_dir, "edgekit-agent.pyz"))
    return path, sha256_file(path)


def doctor_problems(rc: int, stdout: str, stderr: str) -> List[Tuple[str, str, Optional[str]]]:
    """The doctor's complaints about required things: (name, what was found, fix); empty: ready.

    The doctor also hash-checks the bundle; the deploy runs it before the large
    files have travelled (and verifies them itself afterwards), so that check is
    left out here.
    """
    try:
        report = json.loads(stdout)
    except ValueError:
        report = None
    if isinstance(report, dict) and isinstance(report.get("checks"), list):
        problems = []
        for check in report["checks"]:
            if not isinstance(check, dict) or check.get("ok") or not check.get("required") or check.get("name") in EARLY_CHECKS_SKIPPED:
                continue
            problems.append((str(check.get("name")), str(check.get("found") or "missing"), check.get("fix")))
        return problems
    lines = [l.strip() for l in (stderr or stdout).splitlines() if l.strip()]
    return [("agent doctor", lines[-1] if lines else "exit status %d" % rc, None)]


def parse_event(line: str) -> Optional[Dict[str, Any]]:
    """A progress event from one stderr line of the agent (None for other output)."""
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        event = json.loads(line)
    except ValueError:
        return None
    return event if isinstance(event, dict) and "event" in event else None


def read_result(raw: bytes, where: str) -> Dict[str, Any]:
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise EdgekitError("the agent's result %s is not JSON (%s)" % (where, exc), "rerun with --debug and report it")
    if not isinstance(data, dict):
        raise EdgekitError("the agent's result %s is not a JSON object" % where, "rerun with --debug and report it")
    return data


def fail_reason(rc: int, stderr: str) -> str:
    """The agent's last words when it produced no result."""
    for line in reversed([l.strip() for l in stderr.splitlines() if l.strip()]):
        event = parse_event(line)
        if event is None:
            return line
        if event.get("event") in ("warning", "log") and event.get("message"):
            return str(event["message"])
    return "exit status %d" % rc
