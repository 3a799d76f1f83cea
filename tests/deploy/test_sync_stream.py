"""The board side of the upload stream (device/remote_helper.py ``receive``), run for
real as the helper process the deploy starts (here through LocalHost: the same
program, the same stdin protocol, no SSH in between)."""
import hashlib
import os
import sys

import pytest

from edgekit.contract.errors import EdgekitError
from edgekit.host.deploy.sync import partial_name


def _sha(data):
    return hashlib.sha256(data).hexdigest()


def _stream(helper, root, members, payloads, writer="w1"):
    helper.send("receive", root=root, writer=writer, files=members)
    for data in payloads:
        helper.send_bytes(data)
    return helper.receive("receive")


def test_members_are_hashed_renamed_and_the_bad_ones_dropped_in_step(helper, tmp_path):
    root = str(tmp_path / "root")
    good, other, wrong = b"g" * 70_000, b"o" * 10, b"w" * 5
    members = [
        ["a/good.bin", _sha(good), len(good), 0],
        ["../escape.bin", _sha(other), len(other), 0],  # leaves the root
        ["a/wrong.bin", _sha(b"not this"), len(wrong), 0],  # bytes that do not match
        ["/abs.bin", _sha(other), len(other), 0],
        ["b/last.bin", _sha(other), len(other), 0],  # after the refused ones: still in step
    ]
    answer = _stream(helper, root, members, [good, other, wrong, other, other])
    assert answer["ok"] == ["a/good.bin", "b/last.bin"]
    why = dict(answer["bad"])
    assert why["../escape.bin"].startswith("refused") and why["/abs.bin"].startswith("refused")
    assert why["a/wrong.bin"] == "sha256 mismatch"
    assert open(os.path.join(root, "a", "good.bin"), "rb").read() == good
    assert not os.path.exists(str(tmp_path / "escape.bin")) and not os.path.exists(os.path.join(root, "a", "wrong.bin"))
    leftovers = [n for _d, _s, names in os.walk(str(tmp_path)) for n in names if n.endswith(".partial")]
    assert leftovers == []
    assert helper.request("probe", dir=root)["dir"] == root  # the helper still answers


def test_a_member_through_a_symbolic_link_is_refused(helper, tmp_path):
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    outside.mkdir()
    root.mkdir()
    os.symlink(str(outside), str(root / "eval"))
    data = b"secret"
    answer = _stream(helper, str(root), [["eval/x.bin", _sha(data), len(data), 0]], [data])
    assert answer["ok"] == [] and "symbolic link" in dict(answer["bad"])["eval/x.bin"]
    assert os.listdir(str(outside)) == []


def test_a_resumed_member_keeps_its_prefix_and_the_whole_file_is_checked(helper, tmp_path):
    root = str(tmp_path / "root")
    data = os.urandom(300_000)
    final = os.path.join(root, "m", "model.onnx")
    os.makedirs(os.path.dirname(final))
    with open(partial_name(final, _sha(data), "w1"), "wb") as f:
        f.write(data[:100_000] + b"tail the host does not trust")
    answer = _stream(helper, root, [["m/model.onnx", _sha(data), len(data), 100_000]], [data[100_000:]])
    assert answer == {"ok": ["m/model.onnx"], "bad": []}
    assert open(final, "rb").read() == data


def test_a_bad_table_of_contents_ends_the_helper(helper, tmp_path):
    with pytest.raises(EdgekitError, match="bad member"):
        _stream(helper, str(tmp_path), [["x", "../../etc/passwd", 1, 0]], [])
    with pytest.raises(EdgekitError, match="stopped"):
        helper.request("probe", dir=str(tmp_path))  # out of step: it ended rather than read bytes as requests


def test_a_cut_stream_keeps_what_arrived_for_the_next_deploy(helper, tmp_path):
    root = str(tmp_path / "root")
    data = os.urandom(2_000_000)
    helper.send("receive", root=root, writer="w1", files=[["m/model.onnx", _sha(data), len(data), 0]])
    helper.send_bytes(data[:1_200_000])
    rc, _err = helper.proc.finish()  # the host goes away mid-file
    helper._closed = True
    final = os.path.join(root, "m", "model.onnx")
    partial = partial_name(final, _sha(data), "w1")
    assert rc == 0 and not os.path.exists(final)
    assert open(partial, "rb").read() == data[:1_200_000]


def test_no_room_is_refused_before_the_first_byte(helper, tmp_path):
    root = str(tmp_path / "root")
    data = b"x" * 1000
    answer = _stream(helper, root, [["a.bin", _sha(data), len(data), 0]], [data])  # no need_free: taken
    assert answer["ok"] == ["a.bin"]
    helper.send("receive", root=root, writer="w1", files=[["b.bin", _sha(data), len(data), 0]], need_free=1 << 62)
    helper.send_bytes(data)
    answer = helper.receive("receive")
    assert answer["ok"] == [] and answer["no_room"]["free_bytes"] < 1 << 62 and answer["no_room"]["mount"]
    assert not os.path.exists(os.path.join(root, "b.bin"))
    assert [n for n in os.listdir(root) if n.endswith(".partial")] == []


def test_a_started_command_waits_for_the_files_it_needs(helper, tmp_path):
    # The doctor is queued while the agent may still be on its way: it starts only
    # when the files it reads are there with their sha256, else at `wait`.
    need = tmp_path / "agent.pyz"
    data = b"agent bytes"
    argv = [sys.executable, "-c", "import os, sys; sys.stdout.write(str(os.path.exists(%r)))" % str(need)]
    early = helper.request("start", argv=argv, needs={str(need): _sha(data)})
    need.write_bytes(data)  # arrives after the start was asked
    answer = helper.request("wait", id=early["id"], timeout=60)
    assert answer["rc"] == 0 and answer["stdout"] == "True"  # it ran after the file was in place
    ready = helper.request("start", argv=[sys.executable, "-c", "print(7)"], needs={str(need): _sha(data)})
    assert helper.request("wait", id=ready["id"], timeout=60)["stdout"].strip() == "7"
