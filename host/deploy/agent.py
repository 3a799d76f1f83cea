"""What the host knows about the agent: how to build it, call it, and read it.

Everything that depends on the agent's command line (edgekit.device.cli) is here,
so a change there is a change in one place. The agent is used as::

    python3 edgekit-agent.pyz doctor BUNDLE --json   -> {ok, checks: [{name, ok, required, found, needed_for, fix}]}
    python3 edgekit-agent.pyz run BUNDLE --out FILE --progress json [--engine-cache DIR]
        [--variant NAME]... [--warmup N] [--iterations N] [--max-drift F] [--max-images N] [--timeout S]

``run`` writes the result (edgekit.device.result) to FILE and JSON progress lines
on stderr (edgekit.device.progress: start, phase, progress, warning, log, run, done).
"""
import json
import os
import tempfile
from typing import Any, Dict, List, Optional, Sequence, Tuple

from edgekit.device.manifest import sha256_file

from ..errors import EdgekitError

# Doctor checks that do not apply before the sync has finished.
EARLY_CHECKS_SKIPPED = ("bundle files",)


def build_agent(out_dir: Optional[str] = None) -> Tuple[str, str]:
    """Build edgekit-agent.pyz from the installed edgekit; returns (path, sha256)."""
    from ..agent_pyz import build_agent_pyz

    out_dir = out_dir or tempfile.mkdtemp(prefix="edgekit-agent-")
    path = build_agent_pyz(os.path.join(out_dir, "edgekit-agent.pyz"))
    if isinstance(path, tuple):  # (path, sha256) in some versions of agent_pyz
        path = path[0]
    return path, sha256_file(path)


def doctor_argv(python: str, agent: str, bundle_dir: str, run_args: Sequence[str] = ()) -> List[str]:
    """The doctor asks about the backend the run will use (``--backend`` among ``run_args``)."""
    argv = [python, agent, "doctor", bundle_dir, "--json"]
    args = list(run_args)
    if "--backend" in args and args.index("--backend") + 1 < len(args):
        argv += ["--backend", args[args.index("--backend") + 1]]
    return argv


def run_argv(python: str, agent: str, bundle_dir: str, out_file: str, engine_cache: Optional[str], extra: Sequence[str] = ()) -> List[str]:
    argv = [python, agent, "run", bundle_dir, "--out", out_file, "--progress", "json"]
    if engine_cache:
        argv += ["--engine-cache", engine_cache]
    return argv + list(extra)


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
