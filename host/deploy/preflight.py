"""Preflight checks on the target, each failure explained with its fix:
interpreter version, remote folder, free disk for what must be sent, and the
agent's ``doctor`` for what the bundle needs (runtime libraries)."""
from typing import Any, Dict

from edgekit.contract.errors import EdgekitError
from . import agent as agent_cli

MIN_PYTHON = (3, 8)
# Room left beyond the files themselves: engines, results, filesystem slack.
DISK_MARGIN_BYTES = 64 * 1024 * 1024


def check_probe(probe: Dict[str, Any], where: str, python: str, need_dir: bool = True) -> None:
    version = tuple(probe.get("python") or ())
    if version < MIN_PYTHON:
        raise EdgekitError(
            "%s runs Python %s as %r; the agent needs %d.%d or newer"
            % (where, ".".join(str(v) for v in version) or "?", python, MIN_PYTHON[0], MIN_PYTHON[1]),
            "install a newer Python on the board (e.g. apt install python3.8) and pass it with --python",
        )
    if need_dir and probe.get("dir_error"):
        raise EdgekitError(
            "cannot create the remote folder %s on %s (%s)" % (probe.get("dir"), where, probe["dir_error"]),
            "pass a writable --remote-dir",
        )


def check_disk(probe: Dict[str, Any], bytes_to_send: int, where: str) -> None:
    free = probe.get("free_bytes")
    if free is None or bytes_to_send == 0:
        return
    need = bytes_to_send + DISK_MARGIN_BYTES
    if free < need:
        raise EdgekitError(
            "%s has %.1f MB free in %s but this deploy needs %.1f MB (%.1f MB of files plus %d MB headroom)"
            % (where, free / 1e6, probe.get("dir"), need / 1e6, bytes_to_send / 1e6, DISK_MARGIN_BYTES // (1024 * 1024)),
            "free space on the board (old bundles live in <remote-dir>/bundles) or pass --remote-dir on a bigger disk",
        )


def check_doctor(answer: Dict[str, Any], where: str) -> None:
    """``answer``: the helper's run of the agent's doctor ({rc, stdout, stderr})."""
    problems = agent_cli.doctor_problems(int(answer.get("rc", 1)), answer.get("stdout", ""), answer.get("stderr", ""))
    if not problems:
        return
    if len(problems) == 1 and problems[0][0] == "agent doctor":
        raise EdgekitError("the agent's doctor failed on %s (%s)" % (where, problems[0][1]), "run the agent's doctor on the board by hand to see why")
    fixes = [fix for _name, _found, fix in problems if fix]
    raise EdgekitError(
        "%s cannot run this bundle yet: it lacks %s" % (where, ", ".join(name for name, _found, _fix in problems)),
        "install with: %s; then deploy again" % "; ".join(dict.fromkeys(fixes)) if fixes else "see the agent's doctor on the board",
    )
