"""A real OpenSSH server on 127.0.0.1 for the deploy tests.

``start_sshd`` runs Debian's ``/usr/sbin/sshd -D -e -f <tmp config>`` on a free
loopback port with a throwaway host key and client key (ssh-keygen) in a temp
folder, public-key authentication only, and stops it at teardown. Where sshd
cannot run here the tests skip with the reason; with CI=true they fail instead.
Nothing touches the real ~/.ssh or ~/.edgekit: every test passes explicit key,
known_hosts and remote-dir paths.
"""
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from typing import List, Optional

import pytest

SSHD = "/usr/sbin/sshd"
SSH_KEYGEN = shutil.which("ssh-keygen") or "/usr/bin/ssh-keygen"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(reason: str) -> None:
    """Skip locally; under CI the SSH tests are required, so fail."""
    if IN_CI:
        pytest.fail("SSH tests must run under CI=true but cannot: %s" % reason)
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def keygen(path: str, kind: str = "ed25519") -> str:
    subprocess.run([SSH_KEYGEN, "-q", "-t", kind, "-N", "", "-C", "edgekit-test", "-f", path], check=True)
    return path


class SSHServer(object):
    """One sshd on 127.0.0.1:port with its own host key and one authorised client key."""

    def __init__(self, folder: str, name: str = "sshd") -> None:
        self.folder = folder
        self.name = name
        os.makedirs(folder, exist_ok=True)
        self.host_key = keygen(os.path.join(folder, "host_ed25519"))
        self.client_key = keygen(os.path.join(folder, "client_ed25519"))
        self.authorized_keys = os.path.join(folder, "authorized_keys")
        shutil.copyfile(self.client_key + ".pub", self.authorized_keys)
        self.known_hosts = os.path.join(folder, "known_hosts")
        self.log_path = os.path.join(folder, "sshd.log")
        self.port = 0
        self.proc: Optional[subprocess.Popen] = None
        self.user = "root" if os.geteuid() == 0 else os.environ.get("USER", "root")

    @property
    def host_key_line(self) -> str:
        with open(self.host_key + ".pub") as f:
            kind, blob = f.read().split()[:2]
        return "[127.0.0.1]:%d %s %s\n" % (self.port, kind, blob)

    @property
    def target(self) -> str:
        return "%s@127.0.0.1:%d" % (self.user, self.port)

    def write_known_hosts(self, path: Optional[str] = None) -> str:
        path = path or self.known_hosts
        with open(path, "w") as f:
            f.write(self.host_key_line)
        return path

    def start(self) -> None:
        self.port = free_port()
        config = os.path.join(self.folder, "sshd_config")
        with open(config, "w") as f:
            f.write(
                "\n".join(
                    [
                        "Port %d" % self.port,
                        "ListenAddress 127.0.0.1",
                        "HostKey %s" % self.host_key,
                        "AuthorizedKeysFile %s" % self.authorized_keys,
                        "PidFile %s" % os.path.join(self.folder, "sshd.pid"),
                        "StrictModes no",
                        "UsePAM no",
                        "PermitRootLogin prohibit-password",
                        "PasswordAuthentication no",
                        "KbdInteractiveAuthentication no",
                        "MaxSessions 64",
                        "MaxStartups 64",
                        "Subsystem sftp internal-sftp",
                        "",
                    ]
                )
            )
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", config], stdout=log, stderr=log, start_new_session=True)
        log.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.settimeout(2)
                    if s.recv(4).startswith(b"SSH-"):
                        self.write_known_hosts()
                        return
            except OSError:
                time.sleep(0.05)
        self.stop()
        with open(self.log_path, "rb") as f:
            tail = f.read().decode("utf-8", "replace").strip().splitlines()[-3:]
        unavailable("sshd did not start: %s" % (" / ".join(tail) or "no output"))

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        self.proc = None


def _check_can_run_sshd() -> None:
    if not os.path.exists(SSHD):
        unavailable("%s is not installed (apt-get install openssh-server)" % SSHD)
    if not os.path.exists(SSH_KEYGEN):
        unavailable("ssh-keygen is not installed (apt-get install openssh-client)")
    if os.geteuid() != 0:
        unavailable("sshd needs root here (privilege separation); run the tests as root")
    # sshd refuses to start without its privilege separation folder, which Debian's
    # init script normally creates at boot.
    if not os.path.isdir("/run/sshd"):
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)


@pytest.fixture(scope="session")
def sshd(tmp_path_factory):
    _check_can_run_sshd()
    server = SSHServer(str(tmp_path_factory.mktemp("sshd-a")), "board-a")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def sshd_b(tmp_path_factory):
    _check_can_run_sshd()
    server = SSHServer(str(tmp_path_factory.mktemp("sshd-b")), "board-b")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def ssh_options(sshd):
    from edgekit.host.deploy.ssh import SSHOptions

    return SSHOptions(
        known_hosts=sshd.known_hosts,
        identity_files=(sshd.client_key,),
        use_agent=False,
        look_for_keys=False,
        connect_timeout=5.0,
        idle_timeout=30.0,
    )


@pytest.fixture
def remote_python() -> str:
    """The interpreter the 'board' runs the agent with: this one has numpy and onnxruntime."""
    return sys.executable


@pytest.fixture
def isolated_env(tmp_path) -> dict:
    """Environment for CLI subprocesses: a throwaway HOME, no ssh-agent."""
    home = tmp_path / "home"
    home.mkdir()
    env = dict(os.environ)
    env["HOME"] = str(home)
    env.pop("SSH_AUTH_SOCK", None)
    env["COLUMNS"] = "160"
    return env


def silent_listener() -> "socket.socket":
    """A port that accepts TCP connections but never says anything (a hung board)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    return s


__all__: List[str] = ["SSHServer", "free_port", "keygen", "silent_listener", "unavailable"]


@pytest.fixture
def make_key(tmp_path):
    """make_key(name) -> path of a fresh ed25519 private key no server knows."""
    return lambda name="stranger": keygen(str(tmp_path / name))


@pytest.fixture
def silent_port():
    s = silent_listener()
    yield s.getsockname()[1]
    s.close()


def write_synthetic_bundle(out_dir: str, name: str, files: dict) -> str:
    """A valid bundle (manifest per edgekit.contract.manifest) holding ``files`` {rel: bytes}.

    The first file is its one variant's model; the contents are arbitrary bytes:
    enough for the transfer tests, which never run the agent on it.
    """
    from edgekit.contract.result import utc_now
    from edgekit.host.bundle.writer import BundleWriter

    rels = list(files)
    with BundleWriter(out_dir) as writer:
        for rel, data in files.items():
            writer.add_bytes(rel, data)
        return writer.commit(
            {
                "name": name,
                "created": utc_now(),
                "edgekit_version": "test",
                "profile": {"name": "cpu", "runtime": "onnxruntime"},
                "task": "detect",
                "input": {"name": "images", "shape": [1, 3, 32, 32], "dtype": "float32"},
                "preprocess": {},
                "postprocess": {},
                "variants": [{"name": "fp32", "precision": "fp32", "file": rels[0]}],
            }
        )


@pytest.fixture
def synthetic_bundle(tmp_path):
    """synthetic_bundle(name, {rel: bytes}) -> bundle folder under tmp_path."""
    return lambda name, files: write_synthetic_bundle(str(tmp_path / "bundles" / name), name, files)


@pytest.fixture(scope="session")
def agent_pyz(tmp_path_factory):
    """(path, sha256) of edgekit-agent.pyz built once from this checkout."""
    from edgekit.host.deploy.agent import build_agent

    return build_agent(str(tmp_path_factory.mktemp("agent")))


@pytest.fixture
def edgekit_cli(isolated_env, tmp_path):
    """edgekit_cli(*args) -> CompletedProcess of `edgekit ...` run in tmp_path/work with a throwaway HOME."""
    work = tmp_path / "work"
    work.mkdir()

    def run(*args, timeout=300):
        return subprocess.run(
            [sys.executable, "-c", "from edgekit.host.cli.main import main; main()"] + [str(a) for a in args],
            cwd=str(work),
            env=isolated_env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    run.cwd = work
    run.env = isolated_env
    return run


class AgentProcesses(object):
    """The agent processes still alive on this machine (the boards of these tests are this machine)."""

    @staticmethod
    def find(marker: str) -> list:
        """Processes whose command line mentions ``marker`` (a test's remote dir or agent path) and `run`."""
        found = []
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    with open("/proc/%s/cmdline" % pid, "rb") as f:
                        argv = f.read().split(b"\0")
                except OSError:
                    continue
                if any(marker.encode() in a for a in argv) and b"run" in argv:
                    found.append(int(pid))
        return found

    def gone_within(self, marker: str, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if not self.find(marker):
                return True
            time.sleep(0.2)
        return False

    @staticmethod
    def descendants(root: int) -> list:
        """Every live process below ``root`` (by parent pid), for stopping one board's session tree."""
        children: dict = {}
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    with open("/proc/%s/stat" % pid) as f:
                        ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                except (OSError, ValueError, IndexError):
                    continue
                children.setdefault(ppid, []).append(int(pid))
        out, todo = [], [root]
        while todo:
            for child in children.get(todo.pop(), []):
                out.append(child)
                todo.append(child)
        return out


@pytest.fixture
def agent_procs() -> AgentProcesses:
    return AgentProcesses()


@pytest.fixture
def make_sshd(tmp_path):
    """Start extra boards (one sshd each) for fleet tests; all stopped at teardown."""
    _check_can_run_sshd()
    servers = []

    def make(name: str) -> SSHServer:
        server = SSHServer(str(tmp_path / ("sshd-" + name)), name)
        server.start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        if server.proc is not None:
            for pid in AgentProcesses.descendants(server.proc.pid):
                try:
                    os.kill(pid, signal.SIGCONT)
                except OSError:
                    pass
        server.stop()


@pytest.fixture
def helper():
    """The board-side helper as a deploy starts it, run here through LocalHost (same program and stdin protocol, no SSH)."""
    from edgekit.host.deploy.helper import RemoteHelper
    from edgekit.host.deploy.shell import LocalHost

    h = RemoteHelper(LocalHost(), sys.executable, idle_timeout=30)
    yield h
    h.close()
