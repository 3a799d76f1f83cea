"""A timeout or Ctrl-C stops the whole remote process group: nothing is left running."""
import os
import threading
import time

import pytest

from edgekit.host.deploy.shell import Cancelled, CommandTimeout, LocalHost, SSHHost
from edgekit.host.deploy.ssh import connect
from edgekit.host.deploy.targets import parse_target

# A parent that starts a child; both write their pid and then sleep.
SPAWNER = r"""
import os, subprocess, sys, time
pids = sys.argv[1]
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
with open(pids, "w") as f:
    f.write("%d %d\n" % (os.getpid(), child.pid))
sys.stderr.write('{"event": "phase", "variant": "fp32", "phase": "bench"}\n'); sys.stderr.flush()
time.sleep(120)
"""


def _alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _wait_gone(pids, within=10.0):
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not any(_alive(p) for p in pids):
            return True
        time.sleep(0.1)
    return False


def _read_pids(path, within=10.0):
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if os.path.exists(path) and open(path).read().endswith("\n"):
            return [int(x) for x in open(path).read().split()]
        time.sleep(0.05)
    raise AssertionError("the spawner never started")


@pytest.fixture
def ssh_host(sshd, ssh_options, tmp_path):
    (tmp_path / "c").write_text("")
    conn = connect(parse_target(sshd.target, ssh_config=str(tmp_path / "c")), ssh_options)
    yield SSHHost(conn)
    conn.close()


@pytest.mark.ssh
def test_timeout_stops_the_remote_process_group(ssh_host, tmp_path, remote_python):
    pids_file = str(tmp_path / "pids")
    lines = []
    with pytest.raises(CommandTimeout, match="did not finish within 2s"):
        ssh_host.run([remote_python, "-c", SPAWNER, pids_file], timeout=2, idle_timeout=0, on_stderr_line=lines.append, stoppable=True)
    pids = _read_pids(pids_file)
    assert _wait_gone(pids), "remote processes %s still running" % pids
    # The launcher's own line is consumed; the agent's lines come through.
    assert lines == ['{"event": "phase", "variant": "fp32", "phase": "bench"}']


@pytest.mark.ssh
def test_cancel_stops_the_remote_process_group(ssh_host, tmp_path, remote_python):
    pids_file = str(tmp_path / "pids")
    ssh_host.cancel = threading.Event()
    timer = threading.Timer(1.5, ssh_host.cancel.set)
    timer.start()
    try:
        with pytest.raises(Cancelled):
            ssh_host.run([remote_python, "-c", SPAWNER, pids_file], timeout=60, idle_timeout=0, stoppable=True)
    finally:
        timer.cancel()
    assert _wait_gone(_read_pids(pids_file))


def test_local_timeout_stops_the_process_group(tmp_path, remote_python):
    pids_file = str(tmp_path / "pids")
    host = LocalHost()
    start = time.monotonic()
    with pytest.raises(CommandTimeout):
        host.run([remote_python, "-c", SPAWNER, pids_file], timeout=2, stoppable=True)
    assert time.monotonic() - start < 10
    assert _wait_gone(_read_pids(pids_file))


@pytest.mark.ssh
def test_ctrl_c_is_seen_while_waiting_for_a_line_from_the_helper(ssh_host, remote_python):
    # The doctor's answer is waited for with a 2-minute limit: a Ctrl-C then went
    # unnoticed until the limit (the deploy hung after SIGINT under load).
    proc = ssh_host.spawn([remote_python, "-c", "import time; time.sleep(30)"])
    ssh_host.cancel = threading.Event()
    threading.Timer(0.5, ssh_host.cancel.set).start()
    started = time.monotonic()
    try:
        with pytest.raises(Cancelled):
            proc.readline(20.0)
    finally:
        proc.abort()
    assert time.monotonic() - started < 5.0


@pytest.mark.ssh
def test_lines_split_across_packets_come_back_whole(ssh_host, remote_python):
    code = "import sys, time; w = sys.stdout.write; w('ab'); sys.stdout.flush(); time.sleep(0.6); w('c\\nd\\ne'); sys.stdout.flush()"
    proc = ssh_host.spawn([remote_python, "-c", code])
    try:
        # the silence between 'ab' and the rest is longer than a read slice: the half line is kept
        assert [proc.readline(10.0), proc.readline(10.0), proc.readline(10.0), proc.readline(10.0)] == [b"abc\n", b"d\n", b"e", b""]
    finally:
        proc.abort()
