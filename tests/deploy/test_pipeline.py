"""The deploy pipeline: interrupted deploys resume; Ctrl-C and --timeout leave nothing running."""
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from edgekit.host.deploy.pipeline import DeployOptions
from edgekit.host.deploy.service import deploy
from edgekit.host.deploy.targets import parse_target

pytestmark = pytest.mark.ssh
MB = 1024 * 1024




def test_interrupted_deploy_resumes_and_sends_only_the_rest(sshd, ssh_options, synthetic_bundle, agent_pyz, tmp_path, remote_python):
    import random

    size = 16 * MB
    bundle = synthetic_bundle("resume me", {"models/fp32.onnx": random.Random(7).randbytes(size), "eval/x.json": b"{}"})
    (tmp_path / "c").write_text("")
    target = parse_target(sshd.target, ssh_config=str(tmp_path / "c"))
    options = DeployOptions(remote_dir=str(tmp_path / "remote"), python=remote_python, run=False, results_dir=str(tmp_path / "results"))
    cancel = threading.Event()

    def cut_halfway(event):
        if event["event"] == "step" and event["stage"] == "sync" and event["done"] > size // 2:
            cancel.set()  # what Ctrl-C does in a fleet

    first = deploy([target], bundle, ssh_options, options, progress=cut_halfway, agent=agent_pyz[0], cancel=cancel)[0]
    assert not first.ok and "interrupted" in first.error
    # What the board kept: bytes still in flight when the cut came (SSH window, socket
    # buffers) are lost, so the kept part is at most what the host had sent.
    remote = str(tmp_path / "remote")
    kept = max([0] + [os.path.getsize(os.path.join(d, f)) for d, _, names in os.walk(remote) for f in names
                      if f.endswith(".partial") and "fp32.onnx" in f])
    assert 0 < kept < size
    events = []
    second = deploy([target], bundle, ssh_options, options, progress=events.append, agent=agent_pyz[0])[0]
    assert second.ok, second.error
    stats = second.sync
    assert stats.files_resumed == 1
    # Only the missing tail travelled: the resume started at least where the board's
    # partial file stood when the first deploy gave up (the board may still have been
    # writing what had arrived; the resumed prefix is hash-checked either way).
    assert kept <= size - stats.bytes_sent < size
    # The sync's step events count bytes up to what was sent, in the host's progress protocol.
    steps = [e for e in events if e["event"] == "step"]
    assert steps and all(e["stage"] == "sync" and e["unit"] == "bytes" and e["target"] == target.name for e in steps)
    assert steps[-1]["done"] == steps[-1]["total"] == stats.bytes_sent
    assert [e["done"] for e in steps] == sorted(e["done"] for e in steps)
    (done,) = [e for e in events if e["event"] == "stage" and e["status"] == "done" and e["stage"] == "sync"]
    assert done["sync"] == stats.to_dict()
    assert [e["stage"] for e in events if e["event"] == "stage" and e["status"] != "done"][:2] == ["connect", "preflight"]
    third = deploy([target], bundle, ssh_options, options, agent=agent_pyz[0])[0]
    assert third.ok and third.sync.bytes_sent == 0 and third.sync.files_present == third.sync.files_total


def _start_long_deploy(sshd, cpu_bundle, agent_pyz, edgekit_cli, remote, *extra):
    args = [
        sys.executable, "-c", "from edgekit.host.cli.main import main; main()", "deploy", sshd.target, "--bundle", cpu_bundle,
        "--agent", agent_pyz[0], "-i", sshd.client_key, "--known-hosts", sshd.known_hosts, "--remote-dir", remote,
        "--python", sys.executable, "--variant", "fp32", "--iterations", "1000000", "--warmup", "1",
    ] + list(extra)
    return subprocess.Popen(args, cwd=str(edgekit_cli.cwd), env=edgekit_cli.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_run_stage(proc, marker, agent_procs, within=60):
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if agent_procs.find(marker + "/agent/"):
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.2)
    return False


def test_ctrl_c_stops_the_remote_agent(sshd, cpu_bundle, agent_pyz, edgekit_cli, tmp_path, agent_procs):
    remote = str(tmp_path / "remote ctrl-c")
    proc = _start_long_deploy(sshd, cpu_bundle, agent_pyz, edgekit_cli, remote)
    try:
        assert _wait_for_run_stage(proc, remote, agent_procs), proc.communicate()[1]
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "error: interrupted" in err
    deadline = time.monotonic() + 10
    while agent_procs.find(remote + "/agent/") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert agent_procs.find(remote + "/agent/") == []


def test_timeout_stops_the_remote_agent(sshd, cpu_bundle, agent_pyz, edgekit_cli, tmp_path, agent_procs):
    remote = str(tmp_path / "remote timeout")
    proc = _start_long_deploy(sshd, cpu_bundle, agent_pyz, edgekit_cli, remote, "--timeout", "8")
    try:
        _out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 2, err
    assert "did not finish within 8s" in err and "Traceback" not in err
    assert agent_procs.find(remote + "/agent/") == []
