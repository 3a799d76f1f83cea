"""Content-addressed, resumable, verified sync against a real sshd."""
import hashlib
import os

import pytest

from edgekit.host.deploy.helper import RemoteHelper
from edgekit.host.deploy.preflight import check_disk, check_probe
from edgekit.host.deploy.shell import SSHHost
from edgekit.host.deploy.ssh import connect
from edgekit.host.deploy.sync import bundle_rel, deploy_files, load_local_bundle, partial_name, plan_sync, sync, upload
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


def test_interrupted_upload_resumes_from_the_partial_file(session, synthetic_bundle, agent_file, tmp_path):
    host, helper = session
    size = 8 * MB
    bundle = load_local_bundle(synthetic_bundle("big", {"models/fp32.onnx": _random(size, 3)}))
    root = _remote_root(tmp_path)
    files = deploy_files(bundle, *agent_file)
    plan = plan_sync(helper, root, files)
    sent = []

    class Cut(Exception):
        pass

    def cut_midway(n):
        sent.append(n)
        if sum(sent) >= size // 2 + MB:  # the agent and manifest are tiny; cut inside the model
            raise Cut()

    with pytest.raises(Cut):
        upload(host, plan, on_bytes=cut_midway)
    model = [f for f in files if f.rel.endswith("fp32.onnx")][0]
    remote = os.path.join(root, *model.rel.split("/"))
    partial = partial_name(remote, model.sha256, plan.writer)  # this writer's own name
    assert not os.path.exists(remote) and os.path.exists(partial)
    have = os.path.getsize(partial)
    assert 0 < have < size
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
