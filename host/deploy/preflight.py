"""Preflight checks on the target, each failure explained with its fix:
interpreter version, remote folder, free disk for what must be sent, and the
agent's ``doctor`` for what the bundle needs (runtime libraries)."""
from typing import Any, Dict

from edgekit.contract.errors import EdgekitError
from . import agent as agent_cli

MIN_PYTHON = (3, 8)
# Room left beyond the files themselves: engines, results, filesystem slack.
DISK_MARGIN_BYTES = 64 * 1024 * 1024


# The doctor's checks about the bundle itself (device/doctor.py), as opposed to what the board lacks.
BUNDLE_CHECKS = ("bundle", "bundle files")


def _problem_only(found: str, fix: Any) -> str:
    """The doctor's ``found`` text is the agent's one-line error, fix included: drop the fix."""
    tail = "; %s" % fix if fix else ""
    return found[: -len(tail)] if tail and found.endswith(tail) else found


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
        mount = probe.get("mount")
        fs = "the filesystem at %s (holding %s)" % (mount, probe.get("dir")) if mount else probe.get("dir")
        raise EdgekitError(
            "%s has %.1f MB free on %s but this deploy needs %.1f MB (%.1f MB of files plus %d MB headroom); nothing was sent"
            % (where, free / 1e6, fs, need / 1e6, bytes_to_send / 1e6, DISK_MARGIN_BYTES // (1024 * 1024)),
            "free space on the board (old bundles live in <remote-dir>/bundles) or pass --remote-dir on a bigger disk",
        )


def check_doctor(answer: Dict[str, Any], where: str) -> None:
    """``answer``: the helper's run of the agent's doctor ({rc, stdout, stderr})."""
    problems = agent_cli.doctor_problems(int(answer.get("rc", 1)), answer.get("stdout", ""), answer.get("stderr", ""))
    if not problems:
        return
    if len(problems) == 1 and problems[0][0] == "agent doctor":
        raise EdgekitError("the agent's doctor failed on %s (%s)" % (where, problems[0][1]), "run the agent's doctor on the board by hand to see why")
    for name, found, fix in problems:
        # A bundle the agent refuses is not something to install: say what it found, and its own fix.
        if name in BUNDLE_CHECKS:
            raise EdgekitError("the agent on %s refuses the bundle: %s" % (where, _problem_only(found, fix)), fix or "rebuild the bundle with edgekit build")
    fixes = [fix for _name, _found, fix in problems if fix]
    names = [name for name, _found, _fix in problems]
    fix = "install with: %s; then deploy again" % "; ".join(dict.fromkeys(fixes)) if fixes else "see the agent's doctor on the board"
    if names == ["tensorrt"] and _check_ok(answer.get("stdout", ""), "onnxruntime"):
        # A jetson bundle on a board (or `local`) without TensorRT: its ONNX files still run.
        fix += ", or measure with ONNX Runtime, which is there: deploy again with --backend onnxruntime"
    raise EdgekitError("%s cannot run this bundle yet: it lacks %s" % (where, ", ".join(names)), fix)


def _check_ok(doctor_stdout: str, name: str) -> bool:
    """Whether the doctor's JSON report has check ``name`` passing."""
    import json

    try:
        report = json.loads(doctor_stdout)
    except ValueError:
        return False
    checks = report.get("checks") if isinstance(report, dict) else None
    return any(isinstance(c, dict) and c.get("name") == name and c.get("ok") for c in checks or [])
