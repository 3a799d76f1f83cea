"""Content-addressed, resumable, verified sync against a real sshd."""
import hashlib
import os

import pytest

from edgekit.host.deploy.helper import RemoteHelper
from edgekit.host.deploy.preflight import check_disk, check_probe
from edgekit.host.deploy.shell import SSHHost
from edgekit.host.deploy.ssh import connect
from edgekit.host.deploy.sync import bundle_rel, deploy_files, load_local_bundle, partial_name, sync
from edgekit.host.deploy.targets import parse_target
from edgekit.contract.errors import EdgekitError

pytestmark = pytest.mark.ssh

MB = 1024 * 1024


@pytest.fixture
def session(sshd, ssh_options, tmp_path, remote_python):
    (tmp_path / "ssh_config").write_text("")
    conn = connect(parse_target(sshd.target, ssh_config=str(tmp_path / "ssh_config")), ssh_options)
    host = SSHHost(conn)
    helper = RemoteHelper(host, remote_python)
    yield host, helper
    helper.close()
    host.close()


@pytest.fixture
def agent_file(tmp_path):
    path = tmp_path / "edgekit-agent.pyz"
    path.write_bytes(b"PK fake agent for transfer tests\n")
    return str(path), hashlib.sha256(path.read_bytes()).hexdigest()


def _remote_root(tmp_path):
    # Spaces, quotes and a semicolon: every remote path must survive them.
    return str(tmp_path / "remote dir's; \"x\"")


def _random(n, seed):
    import random

    return random.Random(seed).randbytes(n)


def test_first_sync_sends_all_second_sends_nothing(session, synthetic_bundle, agent_file, tmp_path):
    host, helper = session
    bundle = load_local_bundle(synthetic_bundle("demo 'one'", {"models/fp32.onnx": _random(3 * MB, 1), "eval/a b.jpg": b"jpeg"}))
    root = _remote_root(tmp_path)
    files = deploy_files(bundle, *agent_file)
    first = sync(host, helper, root, files)
    assert first.files_sent == len(files) == 4 and first.bytes_sent == sum(f.size for f in files)
    assert os.path.isfile(os.path.join(root, bundle_rel(bundle.manifest_sha256), "eval", "a b.jpg"))
    for f in files:
        with open(os.path.join(root, *f.rel.split("/")), "rb") as g:
            assert hashlib.sha256(g.read()).hexdigest() == f.sha256
    second = sync(host, helper, root, files)
    assert (second.files_sent, second.bytes_sent, second.files_present) == (0, 0, 4)
    # No temporary files left behind.
    leftovers = [n for _d, _s, names in os.walk(root) for n in names if n.endswith(".partial")]
    assert leftovers == []


def test_changed_remote_file_is_sent_again(session, synthetic_bundle, agent_file, tmp_path):
    host, helper = session
    bundle = load_local_bundle(synthetic_bundle("b", {"models/fp32.onnx": _random(MB, 2), "x.txt": b"x"}))
    root = _remote_root(tmp_path)
    files = deploy_files(bundle, *agent_file)
    sync(host, helper, root, files)
    victim = os.path.join(root, bundle_rel(bundle.manifest_sha256), "models", "fp32.onnx")
    with open(victim, "r+b") as f:
        f.write(b"tampered")  # same size, different bytes
    again = sync(host, helper, root, files)
    assert again.files_sent == 1 and again.bytes_sent == MB


def _settled_size(path, timeout=10.0):
    """The file's size once the board-side helper, given up by the host, has written what it read."""
    import time

    deadline = time.monotonic() + timeout
    last = -1
    while time.monotonic() < deadline:
        size = os.path.getsize(path) if os.path.exists(path) else -1
        if size == last and size >= 0:
            return size
        last = size
        time.sleep(0.3)
    return last


def test_interrupted_upload_resumes_from_the_partial_file(sshd, ssh_options, synthetic_bundle, agent_file, tmp_path, remote_python):
    size = 8 * MB
    bundle = load_local_bundle(synthetic_bundle("big", {"models/fp32.onnx": _random(size, 3)}))
    root = _remote_root(tmp_path)
    files = deploy_files(bundle, *agent_file)
    sent = []

    class Cut(Exception):
        pass

    def cut_midway(n):
        sent.append(n)
        if sum(sent) >= size // 2 + MB:  # the agent and manifest are tiny; cut inside the model
            raise Cut()

    (tmp_path / "ssh_config").write_text("")
    target = parse_target(sshd.target, ssh_config=str(tmp_path / "ssh_config"))
    with connect(target, ssh_options) as conn:
        host = SSHHost(conn)
        helper = RemoteHelper(host, remote_python)
        with pytest.raises(Cut):
            sync(host, helper, root, files, on_bytes=cut_midway)
        assert helper._closed  # the stream was given up: the helper is not asked anything more
    model = [f for f in files if f.rel.endswith("fp32.onnx")][0]
    remote = os.path.join(root, *model.rel.split("/"))
    partials = [n for n in os.listdir(os.path.dirname(remote)) if n.startswith(os.path.basename(partial_name(remote, model.sha256))[:-len("partial")])]
    assert not os.path.exists(remote) and len(partials) == 1
    partial = os.path.join(os.path.dirname(remote), partials[0])
    have = _settled_size(partial)
    assert 0 < have < size
    with connect(target, ssh_options) as conn:
        host = SSHHost(conn)
        with RemoteHelper(host, remote_python) as helper:
            resumed = sync(host, helper, root, files)
    assert resumed.files_resumed == 1 and resumed.files_sent == 1
    assert resumed.bytes_sent == size - have  # only the missing tail travelled
    with open(remote, "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == model.sha256
    # The new writer resumed from a copy (the first writer could have been alive); no
    # partial of its own is left, and the dead one's goes once stale (tests/deploy/test_faults.py).
    assert [n for n in os.listdir(os.path.dirname(remote)) if n.endswith(".partial")] == [os.path.basename(partial)]


def test_damaged_partial_file_is_restarted(session, synthetic_bundle, agent_file, tmp_path):
    host, helper = session
    bundle = load_local_bundle(synthetic_bundle("p", {"models/fp32.onnx": _random(2 * MB, 4)}))
    root = _remote_root(tmp_path)
    files = deploy_files(bundle, *agent_file)
    model = [f for f in files if f.rel.endswith("fp32.onnx")][0]
    remote = os.path.join(root, *model.rel.split("/"))
    os.makedirs(os.path.dirname(remote))
    with open(partial_name(remote, model.sha256), "wb") as f:
        f.write(b"\0" * MB)  # not the start of the model
    stats = sync(host, helper, root, files)
    assert stats.files_resumed == 0 and stats.bytes_sent == sum(f.size for f in files)
    with open(remote, "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == model.sha256


def test_files_shared_with_another_bundle_are_reused_not_sent(session, synthetic_bundle, agent_file, tmp_path):
    host, helper = session
    images = {"eval/img%d.jpg" % i: _random(200_000, 10 + i) for i in range(5)}
    a = load_local_bundle(synthetic_bundle("a", dict({"models/fp32.onnx": _random(MB, 5)}, **images)))
    b = load_local_bundle(synthetic_bundle("b", dict({"models/fp32.onnx": _random(MB, 6)}, **images)))
    root = _remote_root(tmp_path)
    sync(host, helper, root, deploy_files(a, *agent_file))
    stats = sync(host, helper, root, deploy_files(b, *agent_file))
    # The agent is already there, the five images are linked from bundle a: only b's model and manifest travel.
    assert stats.files_reused == 5 and stats.files_sent == 2
    assert stats.bytes_sent == MB + b.files[0].size


def test_a_redeploy_hashes_nothing_unchanged_and_rehash_hashes_all(sshd, ssh_options, synthetic_bundle, agent_file, tmp_path, remote_python):
    from edgekit.host.deploy.sync import Sync

    bundle = load_local_bundle(synthetic_bundle("c", {"models/fp32.onnx": _random(MB, 7), "eval/x.jpg": _random(5000, 8)}))
    root = _remote_root(tmp_path)
    files = deploy_files(bundle, *agent_file)
    (tmp_path / "ssh_config").write_text("")
    hashed = []
    for rehash in (False, False, True):  # first deploy, unchanged redeploy, forced full re-hash; a new connection each
        conn = connect(parse_target(sshd.target, ssh_config=str(tmp_path / "ssh_config")), ssh_options)
        host = SSHHost(conn)
        try:
            with RemoteHelper(host, remote_python) as helper:
                run = Sync(host, helper, root, files, rehash=rehash)
                stats = run.run()
                hashed.append((stats.files_sent, stats.files_present, run.plan.hashed))
        finally:
            host.close()
    # The first sends all (nothing to hash); the redeploy believes the stat cache; --rehash reads every file.
    assert hashed == [(len(files), 0, 0), (0, len(files), 0), (0, len(files), len(files))]


def test_preflight_checks_explain_the_fix():
    with pytest.raises(EdgekitError, match=r"Python 3\.6\.9 .* needs 3\.8") as info:
        check_probe({"python": [3, 6, 9], "dir": "/x"}, "orin", "python3")
    assert "--python" in info.value.fix
    with pytest.raises(EdgekitError, match="cannot create the remote folder"):
        check_probe({"python": [3, 8, 10], "dir": "/ro", "dir_error": "Permission denied"}, "orin", "python3")
    check_probe({"python": [3, 8, 10], "dir": "/x", "dir_error": None}, "orin", "python3")
    with pytest.raises(EdgekitError, match="MB free") as info:
        check_disk({"free_bytes": 100 * MB, "dir": "/x"}, 90 * MB, "orin")
    assert "--remote-dir" in info.value.fix
    check_disk({"free_bytes": 10_000 * MB, "dir": "/x"}, 90 * MB, "orin")


def test_probe_reports_interpreter_and_creates_the_folder(session, tmp_path):
    _host, helper = session
    where = _remote_root(tmp_path) + "/deeper"
    probe = helper.request("probe", dir=where)
    assert probe["dir"] == where and os.path.isdir(where)
    assert tuple(probe["python"]) >= (3, 8) and probe["free_bytes"] > 0


def test_missing_interpreter_is_explained(sshd, ssh_options, tmp_path):
    (tmp_path / "c").write_text("")
    with connect(parse_target(sshd.target, ssh_config=str(tmp_path / "c")), ssh_options) as conn:
        with pytest.raises(EdgekitError, match="has no Python interpreter '/opt/none/python9'") as info:
            RemoteHelper(SSHHost(conn), "/opt/none/python9").request("probe", dir=str(tmp_path))
        assert "--python" in info.value.fix


def test_the_upload_uses_no_private_paramiko_api():
    """The upload is one stream over a public Channel (send with a timeout): paramiko's
    private SFTP calls (_async_request, _read_response) and its sftp internals are gone,
    so a paramiko upgrade cannot silently break or slow it."""
    import edgekit.host.deploy as deploy_pkg

    folder = os.path.dirname(deploy_pkg.__file__)
    offenders = []
    for name in sorted(os.listdir(folder)):
        if name.endswith(".py"):
            with open(os.path.join(folder, name), encoding="utf-8") as f:
                text = f.read()
            for private in ("._async_request", "._read_response", "from paramiko.sftp import", "paramiko.sftp."):
                if private in text:
                    offenders.append("%s: %s" % (name, private))
    assert offenders == []


def test_a_missing_interpreter_is_explained_even_mid_stream(sshd, ssh_options, synthetic_bundle, agent_file, tmp_path):
    # Fresh files travel before the helper answers: when it never started, the stream
    # meets a closed session, and the reason (no such interpreter) is what is said.
    bundle = load_local_bundle(synthetic_bundle("nopy", {"models/fp32.onnx": _random(6 * MB, 7)}))
    (tmp_path / "c").write_text("")
    with connect(parse_target(sshd.target, ssh_config=str(tmp_path / "c")), ssh_options) as conn:
        host = SSHHost(conn)
        with pytest.raises(EdgekitError, match="has no Python interpreter '/opt/none/python9'"):
            sync(host, RemoteHelper(host, "/opt/none/python9"), _remote_root(tmp_path), deploy_files(bundle, *agent_file))
