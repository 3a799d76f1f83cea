"""The upload's idle limit against a real sshd: a board that stops taking bytes
mid-upload is given up within 1.5x the limit (issue 14, item 3).

The stall is real: the process on the board that writes the upload's files (found
by the partial file it holds open under this test's remote folder), or the sshd
process serving the session above it, is stopped with SIGSTOP in the middle of a
large file.
"""
import dataclasses
import os
import signal
import time

import pytest

from edgekit.contract.errors import EdgekitError
from edgekit.host.deploy.helper import RemoteHelper
from edgekit.host.deploy.shell import SSHHost
from edgekit.host.deploy.ssh import connect
from edgekit.host.deploy.sync import deploy_files, load_local_bundle, sync
from edgekit.host.deploy.targets import parse_target

pytestmark = pytest.mark.ssh

MB = 1024 * 1024
IDLE = 2.0


def _writer_of(root: str):
    """The pid of the process holding a partial upload open under ``root``, or None."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            for fd in os.listdir("/proc/%s/fd" % pid):
                try:
                    where = os.readlink("/proc/%s/fd/%s" % (pid, fd))
                except OSError:
                    continue
                if where.startswith(root) and ".partial" in where:
                    return int(pid)
        except OSError:
            continue
    return None


def _parent(pid: int) -> int:
    with open("/proc/%d/stat" % pid) as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def _comm(pid: int) -> str:
    with open("/proc/%d/comm" % pid) as f:
        return f.read().strip()


@pytest.mark.parametrize("stop", ["receiver", "sshd session"])
def test_a_stalled_upload_is_given_up_within_one_and_a_half_idle_limits(stop, sshd, ssh_options, synthetic_bundle, tmp_path, remote_python):
    bundle = load_local_bundle(synthetic_bundle("stalled", {"models/fp32.onnx": os.urandom(64 * MB)}))
    agent = tmp_path / "edgekit-agent.pyz"
    agent.write_bytes(b"PK agent")
    import hashlib

    files = deploy_files(bundle, str(agent), hashlib.sha256(agent.read_bytes()).hexdigest())
    root = str(tmp_path / "remote stalled")
    (tmp_path / "ssh_config").write_text("")
    options = dataclasses.replace(ssh_options, idle_timeout=IDLE)
    conn = connect(parse_target(sshd.target, ssh_config=str(tmp_path / "ssh_config")), options)
    host = SSHHost(conn)
    helper = RemoteHelper(host, remote_python, idle_timeout=IDLE)
    sent = [0]
    stopped = []

    def stall_the_board(n):
        sent[0] += n
        if stopped or sent[0] < 8 * MB:
            return
        deadline = time.monotonic() + 5
        pid = _writer_of(root)
        while pid is None and time.monotonic() < deadline:
            time.sleep(0.01)
            pid = _writer_of(root)
        assert pid is not None, "no process on the board holds the upload open"
        if stop == "sshd session":
            pid = _parent(pid)
            assert _comm(pid) == "sshd", _comm(pid)
        os.kill(pid, signal.SIGSTOP)
        stopped.append((pid, time.monotonic()))

    try:
        with pytest.raises(EdgekitError) as info:
            sync(host, helper, root, files, on_bytes=stall_the_board)
        gave_up = time.monotonic() - stopped[0][1]
    finally:
        for pid, _t in stopped:
            os.kill(pid, signal.SIGCONT)  # it then sees the session gone and ends
        host.close()
    line = info.value.one_line()
    assert "went silent for 2s" in line and "resumes" in line, line
    assert sent[0] < 64 * MB  # it stopped mid-file
    # Not before the limit (minus the board's buffers draining), never after 1.5x it.
    assert IDLE * 0.9 <= gave_up <= 1.5 * IDLE, "gave up %.2f s after the stall with an idle limit of %g s" % (gave_up, IDLE)


class _StallingLink(object):
    """A TCP relay to the sshd with small buffers that, once ``stall`` is set, stops
    carrying bytes towards the board: a hung link, where the TCP buffers fill long
    before the board's SSH window does (paramiko then retries its socket write with
    no limit of its own)."""

    def __init__(self, port: int) -> None:
        import socket
        import threading

        self.port_to = port
        self.stall = threading.Event()
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)  # inherited by the accepted socket
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(1)
        self.port = self.listener.getsockname()[1]
        self.sockets = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        import socket
        import threading

        try:
            client, _ = self.listener.accept()
        except OSError:
            return
        server = socket.create_connection(("127.0.0.1", self.port_to))
        self.sockets += [client, server]
        threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
        threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, src, dst, towards_board: bool) -> None:
        try:
            while True:
                if towards_board and self.stall.is_set():
                    time.sleep(0.05)  # reads nothing more: the sender's buffers fill
                    continue
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass

    def close(self) -> None:
        self.listener.close()
        for s in self.sockets:
            try:
                s.close()
            except OSError:
                pass


def test_a_hung_link_is_given_up_within_one_and_a_half_idle_limits(sshd, ssh_options, synthetic_bundle, tmp_path, remote_python):
    import socket
    import threading

    bundle = load_local_bundle(synthetic_bundle("hung", {"models/fp32.onnx": os.urandom(32 * MB)}))
    agent = tmp_path / "edgekit-agent.pyz"
    agent.write_bytes(b"PK agent")
    import hashlib

    files = deploy_files(bundle, str(agent), hashlib.sha256(agent.read_bytes()).hexdigest())
    link = _StallingLink(sshd.port)
    known = tmp_path / "known_hosts"
    known.write_text(sshd.host_key_line.replace("]:%d " % sshd.port, "]:%d " % link.port))
    (tmp_path / "ssh_config").write_text("")
    options = dataclasses.replace(ssh_options, idle_timeout=IDLE, known_hosts=str(known))
    conn = connect(parse_target("%s@127.0.0.1:%d" % (sshd.user, link.port), ssh_config=str(tmp_path / "ssh_config")), options)
    conn.transport.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)  # no room for the SSH window in TCP
    host = SSHHost(conn)
    helper = RemoteHelper(host, remote_python, idle_timeout=IDLE)
    sent = [0]
    stalled = []
    outcome = {}

    def stall_the_link(n):
        sent[0] += n
        if not stalled and sent[0] >= 4 * MB:
            link.stall.set()
            stalled.append(time.monotonic())

    def upload():
        try:
            sync(host, helper, str(tmp_path / "remote hung"), files, on_bytes=stall_the_link)
        except EdgekitError as exc:
            outcome["error"] = exc
        outcome["at"] = time.monotonic()

    worker = threading.Thread(target=upload, daemon=True)
    worker.start()
    worker.join(5 * IDLE + 10)
    stuck = worker.is_alive()
    if stuck:
        conn.transport.close()  # unstick it, so the test ends
        worker.join(10)
    host.close()
    link.close()
    assert not stuck, "the upload was still stuck %g s after the link hung" % (5 * IDLE + 10)
    assert stalled, "the link never stalled"
    line = outcome["error"].one_line()
    assert "went silent for 2s" in line, line
    gave_up = outcome["at"] - stalled[0]
    assert IDLE * 0.9 <= gave_up <= 1.5 * IDLE, "gave up %.2f s after the link hung, with an idle limit of %g s" % (gave_up, IDLE)
