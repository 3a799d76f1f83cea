"""One deploy to one target: connect, preflight, sync, doctor, run, fetch, store.

:func:`deploy_target` never raises for a problem with the target: it returns a
:class:`DeployOutcome` with the one-line error, so a fleet carries on with the
other boards. Ctrl-C (or the fleet's cancel event) stops the remote agent's
process group before returning.
"""
import dataclasses
import os
import posixpath
import sys
import tempfile
import threading
import time
import uuid
from typing import Any, Callable, Dict, List, Optional

import paramiko

from edgekit.contract.agent_command import AgentCall
from edgekit.contract.errors import EdgekitError
from edgekit.contract.result import ResultRecord
from . import agent as agent_cli
from .events import DeployReporter
from .helper import RemoteHelper
from .preflight import check_doctor, check_probe
from .results import DEFAULT_RESULTS_DIR, host_timestamp, save_result, variant_facts
from .shell import Host, LocalHost, SSHHost
from .ssh import SSHOptions, connect
from .sync import MANIFEST_NAME, LocalBundle, Sync, SyncProgress, SyncStats, agent_rel, bundle_rel, deploy_files, make_dirs
from .targets import Target

DEFAULT_REMOTE_DIR = "~/.edgekit"
DEFAULT_REMOTE_PYTHON = "python3"


@dataclasses.dataclass(frozen=True)
class DeployOptions:
    remote_dir: str = DEFAULT_REMOTE_DIR
    python: Optional[str] = None  # remote interpreter; default python3 (ssh) or this one (local)
    results_dir: str = DEFAULT_RESULTS_DIR
    run: bool = True  # False: preflight, sync and doctor only
    doctor: bool = True
    rehash: bool = False  # the board hashes every file it has again, ignoring its stat cache
    agent: AgentCall = dataclasses.field(default_factory=AgentCall)  # what `agent run` is asked
    run_timeout: float = 3600.0
    doctor_timeout: float = 120.0


@dataclasses.dataclass
class DeployOutcome:
    target: Target
    ok: bool = False
    error: Optional[str] = None
    stage: str = "connect"
    result: Optional[Dict[str, Any]] = None
    result_path: Optional[str] = None
    sync: Optional[SyncStats] = None
    seconds: Dict[str, float] = dataclasses.field(default_factory=dict)
    warnings: List[str] = dataclasses.field(default_factory=list)


class _Stages(object):
    """Times each stage and tells the display."""

    def __init__(self, outcome: DeployOutcome, events: DeployReporter) -> None:
        self.outcome = outcome
        self.events = events
        self._t = time.monotonic()

    def enter(self, stage: str, detail: str = "") -> None:
        now = time.monotonic()
        prev = self.outcome.stage
        self.outcome.seconds[prev] = self.outcome.seconds.get(prev, 0.0) + now - self._t
        self._t = now
        self.outcome.stage = stage
        self.events.stage(self.outcome.target, stage, detail)


def _python_for(target: Target, options: DeployOptions) -> str:
    if target.python:
        return target.python
    if options.python:
        return options.python
    return sys.executable if target.is_local else DEFAULT_REMOTE_PYTHON


def deploy_target(
    target: Target,
    bundle: LocalBundle,
    agent_path: str,
    agent_sha: str,
    ssh_options: SSHOptions,
    options: DeployOptions,
    events: Optional[DeployReporter] = None,
    cancel: Optional[threading.Event] = None,
) -> DeployOutcome:
    """Deploy ``bundle`` to one target and (unless ``options.run`` is off) measure it there."""
    events = events or DeployReporter()
    outcome = DeployOutcome(target=target)
    stages = _Stages(outcome, events)
    started = time.monotonic()
    host: Optional[Host] = None
    try:
        stages.enter("connect", target.address)
        if target.is_local:
            host = LocalHost(target.name)
        else:
            host = SSHHost(connect(target, ssh_options))
        host.cancel = cancel
        python = _python_for(target, options)
        with RemoteHelper(host, python, idle_timeout=ssh_options.idle_timeout) as helper:
            stages.enter("preflight", python)
            if target.is_local:
                _deploy_local(host, helper, python, bundle, agent_path, options, outcome, stages, events)
            else:
                assert isinstance(host, SSHHost)
                _deploy_remote(host, helper, python, bundle, agent_path, agent_sha, options, outcome, stages, events)
        outcome.ok = outcome.error is None and (outcome.result is None or bool(outcome.result.get("ok")))
        if outcome.result is not None and not outcome.result.get("ok"):
            outcome.error = _result_problem(outcome.result)
        stages.enter("done" if outcome.ok else "failed", outcome.error or "")
    except EdgekitError as exc:
        outcome.ok = False
        outcome.error = exc.one_line()
        events.stage(target, "failed", outcome.error)
    except (paramiko.SSHException, EOFError, OSError) as exc:
        # The connection broke half-way (board rebooted, cable pulled, sshd restarted).
        outcome.ok = False
        outcome.error = EdgekitError(
            "the connection to %s broke during %s (%s: %s)" % (target.address, outcome.stage, type(exc).__name__, exc),
            "check the board and deploy again: the sync resumes where it stopped",
        ).one_line()
        events.stage(target, "failed", outcome.error)
    finally:
        if host is not None:
            host.close()
        outcome.seconds["total"] = time.monotonic() - started
    return outcome


def _result_problem(result: Dict[str, Any]) -> str:
    return ResultRecord.from_dict(result, "the agent's result").first_problem() or "the agent reported a failure"


def _deploy_record(target: Target, bundle: LocalBundle, python: str, remote_dir: str, outcome: DeployOutcome) -> Dict[str, Any]:
    return {
        "target": target.name,
        "address": target.address,
        "bundle": bundle.name,
        "bundle_path": bundle.path,
        "manifest_sha256": bundle.manifest_sha256,
        "remote_dir": remote_dir,
        "python": python,
        "host_time": host_timestamp(),
        "sync": outcome.sync.to_dict() if outcome.sync else None,
        "seconds": {k: round(v, 3) for k, v in outcome.seconds.items()},
        "variants": variant_facts(bundle.manifest),
    }


def _on_agent_line(target: Target, events: DeployReporter, outcome: DeployOutcome):
    def handle(line: str) -> None:
        event = agent_cli.parse_event(line)
        if event is None:
            if line.strip():
                events.log(target, line.strip())
            return
        if event.get("event") == "warning" and event.get("message"):
            outcome.warnings.append(str(event["message"]))
        events.agent_event(target, event)

    return handle


def _run_agent(host: Host, argv: List[str], options: DeployOptions, target: Target, events: DeployReporter, outcome: DeployOutcome):
    # idle_timeout None: the connection's idle limit, the same as every other remote phase
    # (the launcher's heartbeat keeps a live but quiet agent from looking idle).
    idle = None if not host.is_local else 0
    return host.run(argv, timeout=options.run_timeout, idle_timeout=idle, on_stderr_line=_on_agent_line(target, events, outcome), stoppable=True)


def _deploy_local(host, helper, python, bundle, agent_path, options, outcome, stages, events) -> None:
    probe = helper.request("probe", dir=tempfile.gettempdir())
    check_probe(probe, host.name, python, need_dir=False)
    if options.doctor:
        stages.enter("doctor")
        check_doctor(helper.run(options.agent.doctor_argv(python, agent_path, bundle.path), options.doctor_timeout), host.name)
    if not options.run:
        return
    stages.enter("run")
    fd, out_file = tempfile.mkstemp(prefix="edgekit-result-", suffix=".json")
    os.close(fd)
    try:
        argv = options.agent.run_argv(python, agent_path, bundle.path, out_file)
        res = _run_agent(host, argv, options, outcome.target, events, outcome)
        stages.enter("fetch")
        with open(out_file, "rb") as f:
            raw = f.read()
        if not raw:
            raise EdgekitError("the agent on %s produced no result (%s)" % (host.name, agent_cli.fail_reason(res.rc, res.err)), "rerun with --debug, or run edgekit-agent by hand")
        _store(agent_cli.read_result(raw, out_file), outcome, bundle, python, "(local)", options)
    finally:
        if os.path.exists(out_file):
            os.remove(out_file)


class _SyncEvents(SyncProgress):
    """The sync's progress as the deploy's stages and transfer events."""

    def __init__(self, target: Target, files: int, stages: _Stages, events: DeployReporter) -> None:
        self.target, self.files, self.stages, self.events = target, files, stages, events

    def planned(self, nbytes: int, files: int) -> None:
        if files:
            self.stages.enter("sync", "%d of %d files to send" % (files, self.files))
        self.events.transfer_start(self.target, nbytes, files)

    def more(self, nbytes: int, files: int) -> None:
        self.stages.enter("sync", "%d more files to send" % files)
        self.events.transfer_more(self.target, nbytes)

    def sent(self, nbytes: int) -> None:
        self.events.transfer(self.target, nbytes)

    def verifying(self) -> None:
        self.stages.enter("verify")


class _RemoteDoctor(object):
    """The agent's doctor, started by the helper in the background as soon as the
    agent and manifest are on the board, while the rest of the files travel."""

    def __init__(self, helper: RemoteHelper, argv: List[str], needs: Dict[str, str], timeout: float, target: Target, events: DeployReporter,
                 root: Optional[str] = None) -> None:
        self.helper, self.argv, self.needs, self.timeout, self.target, self.events = helper, argv, needs, timeout, target, events
        self.root = root  # the store whose stat cache knows the files just received
        self.id: Optional[str] = None

    def start(self) -> Callable[[], None]:
        """Queue the start (the sync's ``between``); what it returns reads the answer."""
        self.helper.send("start", argv=self.argv, needs=self.needs, root=self.root)
        self.events.stage(self.target, "doctor", "while the files travel")

        def started() -> None:
            self.id = str(self.helper.receive("start")["id"])

        return started

    def finish(self) -> Dict[str, Any]:
        assert self.id is not None
        saved = self.helper.idle_timeout
        self.helper.idle_timeout = None if saved is None else max(saved, self.timeout + 10)
        try:
            return self.helper.request("wait", id=self.id, timeout=self.timeout)
        finally:
            self.helper.idle_timeout = saved


def _deploy_remote(host: SSHHost, helper, python, bundle, agent_path, agent_sha, options, outcome, stages, events) -> None:
    root = _sync_remote(host, helper, python, bundle, agent_path, agent_sha, options, outcome, stages, events)
    if options.run:
        _run_remote(host, root, python, bundle, agent_sha, options, outcome, stages, events)


def _sync_remote(host: SSHHost, helper: RemoteHelper, python: str, bundle: LocalBundle, agent_path: str, agent_sha: str,
                 options: DeployOptions, outcome: DeployOutcome, stages: _Stages, events: DeployReporter) -> str:
    """Probe, plan, upload and verify (sync.Sync), with the doctor running alongside; returns the remote root."""
    files = deploy_files(bundle, agent_path, agent_sha)
    early = [agent_rel(agent_sha), "%s/%s" % (bundle_rel(bundle.manifest_sha256), MANIFEST_NAME)]
    sync = Sync(host, helper, options.remote_dir, files, early=early, progress=_SyncEvents(outcome.target, len(files), stages, events), rehash=options.rehash)
    doctor: Optional[_RemoteDoctor] = None

    def start_doctor() -> Callable[[], None]:
        # Its paths are known once the board has expanded --remote-dir, so it is built here.
        nonlocal doctor
        remote_agent, remote_bundle = posixpath.join(sync.root, agent_rel(agent_sha)), posixpath.join(sync.root, bundle_rel(bundle.manifest_sha256))
        argv = options.agent.doctor_argv(python, remote_agent, remote_bundle)
        # The helper starts it at once when agent and manifest are in place, else once the upload is done.
        needs = {remote_agent: agent_sha, posixpath.join(remote_bundle, MANIFEST_NAME): bundle.manifest_sha256}
        doctor = _RemoteDoctor(helper, argv, needs, options.doctor_timeout, outcome.target, events, root=sync.root)
        return doctor.start()

    outcome.sync = sync.run(start_doctor if options.doctor else None)
    events.transfer_done(outcome.target, outcome.sync)
    if doctor is not None:
        stages.enter("doctor")
        check_doctor(doctor.finish(), host.name)
    return sync.root


def _run_remote(host: SSHHost, root: str, python: str, bundle: LocalBundle, agent_sha: str, options: DeployOptions, outcome: DeployOutcome,
                stages: _Stages, events: DeployReporter) -> None:
    """Run the agent on the board, fetch its result over SFTP and store it."""
    stages.enter("run")
    sftp = host.conn.sftp()
    remote_agent = posixpath.join(root, agent_rel(agent_sha))
    remote_bundle = posixpath.join(root, bundle_rel(bundle.manifest_sha256))
    out_file = posixpath.join(root, "results", "%s-%s.json" % (host_timestamp(), uuid.uuid4().hex[:8]))
    make_dirs(sftp, root, ["results/x"])
    argv = options.agent.run_argv(python, remote_agent, remote_bundle, out_file, posixpath.join(root, "engines"))
    res = _run_agent(host, argv, options, outcome.target, events, outcome)
    stages.enter("fetch")
    try:
        with sftp.open(out_file, "rb") as f:
            raw = f.read()
    except IOError:
        raise EdgekitError("the agent on %s produced no result (%s)" % (host.name, agent_cli.fail_reason(res.rc, res.err)), "rerun with --debug, or run the agent on the board by hand")
    _store(agent_cli.read_result(raw, "%s:%s" % (host.name, out_file)), outcome, bundle, python, root, options)
    try:
        sftp.remove(out_file)
    except IOError:
        pass  # the host has it; a leftover on the board is harmless


def _store(result: Dict[str, Any], outcome: DeployOutcome, bundle: LocalBundle, python: str, remote_dir: str, options: DeployOptions) -> None:
    record = _deploy_record(outcome.target, bundle, python, remote_dir, outcome)
    outcome.result_path, outcome.result = save_result(options.results_dir, outcome.target.name, bundle.name, result, record)
