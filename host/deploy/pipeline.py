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
from typing import Any, Dict, List, Optional, Sequence

import paramiko

from edgekit.contract.agent_command import AgentCall
from edgekit.contract.errors import EdgekitError
from edgekit.contract.result import ResultRecord
from . import agent as agent_cli
from .events import DeployReporter
from .helper import RemoteHelper
from .preflight import check_disk, check_doctor, check_probe
from .results import DEFAULT_RESULTS_DIR, host_timestamp, save_result, variant_facts
from .shell import Host, LocalHost, SSHHost, check_cancel
from .ssh import SSHOptions, connect
from .sync import (
    MANIFEST_NAME,
    LocalBundle,
    LocalFile,
    SyncPlan,
    SyncStats,
    agent_rel,
    bundle_rel,
    deploy_files,
    fresh_files,
    make_dirs,
    plan_sync,
    resolve_remote_root,
    upload,
    verify_uploaded,
)
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


class _Preflight(threading.Thread):
    """The helper's side of a remote deploy, run while the main thread uploads.

    probe (interpreter, folder) -> plan of the files not known fresh (hash check,
    reuse, partial uploads) -> free disk for everything to send -> the early files
    (agent, manifest) it must send itself -> wait until the main thread's early files
    are there -> the agent's doctor. The first failure is kept in ``error``; the main
    thread's upload checks it between blocks and stops.
    """

    def __init__(self, host: SSHHost, helper: RemoteHelper, python: str, root: str, files: List[LocalFile], fresh: List[LocalFile],
                 early: List[str], remote_agent: str, remote_bundle: str, options: DeployOptions, outcome: DeployOutcome,
                 events: DeployReporter) -> None:
        super().__init__(name="preflight-%s" % host.name, daemon=True)
        self.host, self.helper, self.python, self.root = host, helper, python, root
        self.files, self.fresh, self.early = files, fresh, early
        self.remote_agent, self.remote_bundle = remote_agent, remote_bundle
        self.options, self.outcome, self.events = options, outcome, events
        self.early_ready = threading.Event()  # set by the main thread once its early files are up
        self.room_checked = threading.Event()  # set once the free space for the fresh files is known to suffice
        self.stop = threading.Event()  # set by the main thread when it gives up
        self.error: Optional[BaseException] = None
        self.plan: Optional[SyncPlan] = None
        self.probe: Optional[Dict[str, Any]] = None

    def run(self) -> None:
        try:
            probe = self.probe = self.helper.receive("probe")
            check_probe(probe, self.host.name, self.python, need_dir=True)
            # The fresh files wait for this: not one byte goes to a disk that cannot hold them.
            check_disk(probe, sum(f.size for f in self.fresh), self.host.name)
            self.room_checked.set()
            fresh_rels = {f.rel for f in self.fresh}
            plan = self.plan = plan_sync(self.helper, self.root, [f for f in self.files if f.rel not in fresh_rels])
            check_disk(probe, sum(f.size for f in self.fresh) + plan.bytes_to_send, self.host.name)
            own = [r for r in self.early if r not in fresh_rels]
            if any(f.rel in own for f in plan.missing):
                # Its own SFTP session: paramiko's client must not be shared by two writing threads.
                sftp = paramiko.SFTPClient.from_transport(self.host.conn.transport)
                try:
                    upload(self.host, plan, only=own, sftp=sftp, on_bytes=self._bytes)
                finally:
                    sftp.close()
            if self.options.doctor:
                while not self.early_ready.wait(0.2):
                    if self.stop.is_set():
                        return
                if not self.stop.is_set():
                    self.events.stage(self.outcome.target, "doctor", "while the files travel")
                check_doctor(self.helper.run(self.options.agent.doctor_argv(self.python, self.remote_agent, self.remote_bundle), self.options.doctor_timeout), self.host.name)
        except BaseException as exc:  # handed to the main thread
            self.error = exc

    def _bytes(self, n: int) -> None:
        if self.stop.is_set():
            raise EdgekitError("stopped", "")
        self.events.transfer(self.outcome.target, n)


def _deploy_remote(host: SSHHost, helper, python, bundle, agent_path, agent_sha, options, outcome, stages, events) -> None:
    start = time.monotonic()
    sftp = host.conn.sftp()
    root = resolve_remote_root(sftp, options.remote_dir)
    # The helper's login shell is starting on the board; the probe waits in its stdin.
    helper.send("probe", dir=root)
    files = deploy_files(bundle, agent_path, agent_sha)
    fresh = fresh_files(sftp, root, files, bundle.manifest_sha256, agent_sha)
    remote_agent = posixpath.join(root, agent_rel(agent_sha))
    remote_bundle = posixpath.join(root, bundle_rel(bundle.manifest_sha256))
    early = [agent_rel(agent_sha), "%s/%s" % (bundle_rel(bundle.manifest_sha256), MANIFEST_NAME)]
    pre = _Preflight(host, helper, python, root, files, fresh, early, remote_agent, remote_bundle, options, outcome, events)
    pre.start()
    clock = _Stopwatch()
    try:
        if fresh:
            # Files the board certainly lacks travel at once, while the helper starts,
            # plans the rest and runs the doctor; a preflight failure stops them.
            stages.enter("sync", "%d new files" % len(fresh))
            events.transfer_start(outcome.target, sum(f.size for f in fresh), len(fresh))
            fresh_plan = SyncPlan(root=root, files=fresh, have=[], reused=[], missing=sorted(fresh, key=lambda f: (f.rel not in early, f.size)), resume_at={})
            make_dirs(sftp, root, [f.rel for f in fresh])

            def on_bytes(n: int) -> None:
                if pre.error is not None:
                    raise pre.error
                events.transfer(outcome.target, n)

            while not pre.room_checked.wait(0.05):
                if pre.error is not None or not pre.is_alive():
                    break
                check_cancel(host.cancel, host.name)
            if pre.error is not None:
                raise pre.error
            with clock:
                upload(host, fresh_plan, only=early, on_bytes=on_bytes)
            pre.early_ready.set()
            with clock:
                upload(host, fresh_plan, on_bytes=on_bytes)
        else:
            pre.early_ready.set()
        while pre.is_alive():
            pre.join(0.2)
            check_cancel(host.cancel, host.name)
    except BaseException:
        pre.stop.set()
        raise
    if pre.error is not None:
        raise pre.error
    plan = pre.plan
    assert plan is not None
    rest_total = plan.bytes_to_send
    if any(f.rel not in plan.sent for f in plan.missing):
        stages.enter("sync", "%d of %d files to send" % (len(plan.missing) - len(plan.sent), len(files)))
        if not fresh:
            events.transfer_start(outcome.target, rest_total, len(plan.missing))
        else:
            events.transfer_more(outcome.target, rest_total - sum(f.size for f in plan.missing if f.rel in plan.sent))
        with clock:
            upload(host, plan, on_bytes=lambda n: events.transfer(outcome.target, n))
    elif not fresh:
        events.transfer_start(outcome.target, 0, 0)
    stages.enter("verify")
    sent = [f.rel for f in fresh] + list(plan.sent)
    verify_uploaded(helper, SyncPlan(root=root, files=files, have=[], reused=[], missing=[], resume_at={}), sent)
    outcome.sync = SyncStats(
        files_total=len(files),
        files_present=len(plan.have),
        files_reused=len(plan.reused),
        files_sent=len(sent),
        files_resumed=sum(1 for rel in plan.sent if rel in plan.resumed),
        bytes_total=sum(f.size for f in files),
        bytes_sent=sum(f.size for f in fresh) + rest_total,
        seconds=time.monotonic() - start,
        upload_seconds=clock.seconds,
    )
    events.transfer_done(outcome.target, outcome.sync)
    if not options.run:
        return
    stages.enter("run")
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


class _Stopwatch(object):
    """Adds up the time spent inside ``with`` blocks (the sync, without the doctor)."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def __enter__(self) -> "_Stopwatch":
        self._t = time.monotonic()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.seconds += time.monotonic() - self._t


def _store(result: Dict[str, Any], outcome: DeployOutcome, bundle: LocalBundle, python: str, remote_dir: str, options: DeployOptions) -> None:
    record = _deploy_record(outcome.target, bundle, python, remote_dir, outcome)
    outcome.result_path, outcome.result = save_result(options.results_dir, outcome.target.name, bundle.name, result, record)
