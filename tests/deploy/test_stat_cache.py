"""The board-side stat cache (device/remote_helper.py ``StatCache``): an unchanged file
is not hashed again, any change a write, replace or touch makes is, and a racy entry
is not believed. Run through the real helper process (LocalHost: same program, same
stdin protocol, no SSH), and the rules on the class itself."""
import hashlib
import json
import os
import sys
import time

import pytest

from edgekit.device import remote_helper as rh
from edgekit.host.deploy.helper import RemoteHelper
from edgekit.host.deploy.shell import LocalHost


def _sha(data):
    return hashlib.sha256(data).hexdigest()


def _receive(helper, root, files):
    helper.send("receive", root=root, writer="w1", files=[[rel, _sha(data), len(data), 0] for rel, data in files.items()])
    for data in files.values():
        helper.send_bytes(data)
    return helper.receive("receive")


def _plan(helper, root, files, rehash=False):
    return helper.request("plan", root=root, files={rel: [_sha(d), len(d)] for rel, d in files.items()}, pool=None, writer="w2",
                          stale_s=600, rehash=rehash)


def _files():
    return {"models/a.onnx": os.urandom(300_000), "eval/x.jpg": os.urandom(40_000), "eval/y.jpg": os.urandom(40_000)}


def test_received_files_are_known_without_hashing_until_rehash(helper, tmp_path):
    root = str(tmp_path / "root")
    files = _files()
    assert sorted(_receive(helper, root, files)["ok"]) == sorted(files)
    again = _plan(helper, root, files)
    assert sorted(again["have"]) == sorted(files) and again["missing"] == [] and again["hashed"] == 0
    forced = _plan(helper, root, files, rehash=True)
    assert sorted(forced["have"]) == sorted(files) and forced["hashed"] == len(files)


def test_a_fresh_helper_reads_the_cache_from_the_board(tmp_path):
    root = str(tmp_path / "root")
    files = _files()
    with RemoteHelper(LocalHost(), sys.executable, idle_timeout=30) as first:
        _receive(first, root, files)
    assert os.path.isfile(os.path.join(root, rh.STAT_CACHE_NAME))
    with RemoteHelper(LocalHost(), sys.executable, idle_timeout=30) as second:  # the next deploy
        again = _plan(second, root, files)
    assert sorted(again["have"]) == sorted(files) and again["hashed"] == 0


def test_a_changed_file_of_the_same_size_is_hashed_and_found_missing(helper, tmp_path):
    root = str(tmp_path / "root")
    files = _files()
    _receive(helper, root, files)
    victim = os.path.join(root, "models", "a.onnx")
    with open(victim, "r+b") as f:
        f.write(b"tampered")  # same size, other bytes
    again = _plan(helper, root, files)
    assert again["missing"] == ["models/a.onnx"] and again["hashed"] == 1
    assert sorted(again["have"]) == ["eval/x.jpg", "eval/y.jpg"]


def test_a_replaced_file_with_the_old_size_and_mtime_is_still_caught(helper, tmp_path):
    # Same size, other content, mtime set back to the old one: the inode and ctime differ.
    root = str(tmp_path / "root")
    files = _files()
    _receive(helper, root, files)
    victim = os.path.join(root, "eval", "x.jpg")
    st = os.stat(victim)
    other = victim + ".new"
    with open(other, "wb") as f:
        f.write(os.urandom(st.st_size))
    os.utime(other, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.rename(other, victim)
    assert os.stat(victim).st_mtime_ns == st.st_mtime_ns and os.path.getsize(victim) == st.st_size
    again = _plan(helper, root, files)
    assert again["missing"] == ["eval/x.jpg"] and again["hashed"] == 1


def test_a_touched_file_is_hashed_again_and_then_believed(helper, tmp_path):
    root = str(tmp_path / "root")
    files = _files()
    _receive(helper, root, files)
    os.utime(os.path.join(root, "eval", "y.jpg"))  # content unchanged, stat changed
    time.sleep(0.2)  # older than the racy margin when it is hashed (not a timing assertion)
    first = _plan(helper, root, files)
    assert first["hashed"] == 1 and sorted(first["have"]) == sorted(files)
    second = _plan(helper, root, files)
    assert second["hashed"] == 0 and sorted(second["have"]) == sorted(files)


def test_a_damaged_cache_only_costs_hashing(helper, tmp_path):
    root = str(tmp_path / "root")
    files = _files()
    _receive(helper, root, files)
    with RemoteHelper(LocalHost(), sys.executable, idle_timeout=30) as fresh:
        with open(os.path.join(root, rh.STAT_CACHE_NAME), "w") as f:
            f.write("{not json")
        again = _plan(fresh, root, files)
    assert sorted(again["have"]) == sorted(files) and again["hashed"] == len(files)


def _cache_with_clock(tmp_path, monkeypatch, offset_ns):
    """A cache whose clock reads ``offset_ns`` after the file's newest timestamp."""
    root = str(tmp_path / "r")
    os.makedirs(root)
    path = os.path.join(root, "f.bin")
    with open(path, "wb") as f:
        f.write(b"content")
    st = os.stat(path)
    monkeypatch.setattr(rh, "_now_ns", lambda: max(st.st_mtime_ns, st.st_ctime_ns) + offset_ns)
    return rh.StatCache(root), path


def test_an_entry_hashed_in_the_files_own_tick_is_not_believed(tmp_path, monkeypatch):
    cache, path = _cache_with_clock(tmp_path, monkeypatch, rh.RACY_NS // 10)
    assert cache.sha256(path) == _sha(b"content") and cache.hashed == 1
    assert cache.sha256(path) == _sha(b"content") and cache.hashed == 2  # racy: hashed again


def test_an_entry_hashed_well_after_the_files_last_change_is_believed(tmp_path, monkeypatch):
    cache, path = _cache_with_clock(tmp_path, monkeypatch, 2 * rh.RACY_NS)
    cache.sha256(path)
    assert cache.sha256(path) == _sha(b"content") and cache.hashed == 1
    cache.save()
    saved = json.load(open(os.path.join(os.path.dirname(path), rh.STAT_CACHE_NAME)))
    assert list(saved["entries"]) == ["f.bin"] and saved["entries"]["f.bin"][-1] == _sha(b"content")


def test_whole_second_timestamps_need_two_seconds(tmp_path):
    cache = rh.StatCache(str(tmp_path))
    key = [7, 1_700_000_000 * 10**9, 1_700_000_000 * 10**9, 1, 1]  # a filesystem with 1 s stamps
    cache.entries["a"] = key + [key[1] + 10**9, "s" * 64]  # hashed 1 s later: the same second may hold a write
    assert cache._believed("a", key) is None
    cache.entries["a"] = key + [key[1] + 3 * 10**9, "s" * 64]
    assert cache._believed("a", key) == "s" * 64
    fine = [7, 1_700_000_000_123_456_789, 1_700_000_000_123_456_789, 1, 1]
    cache.entries["b"] = fine + [fine[1] + 2 * rh.RACY_NS, "t" * 64]
    assert cache._believed("b", fine) == "t" * 64
    assert cache._believed("b", fine[:2] + [fine[2] + 1] + fine[3:]) is None  # ctime moved: not believed


def test_a_file_outside_the_root_is_never_cached(tmp_path):
    cache = rh.StatCache(str(tmp_path / "root"))
    outside = tmp_path / "elsewhere.bin"
    outside.write_bytes(b"x")
    assert cache.sha256(str(outside)) == _sha(b"x") and cache.entries == {}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="F_SETPIPE_SZ is Linux's")
def test_the_helper_widens_its_input_pipe(helper, tmp_path):
    import fcntl

    helper.request("probe", dir=str(tmp_path))  # it has started and read a request
    size = fcntl.fcntl(helper.proc.proc.stdin.fileno(), getattr(fcntl, "F_GETPIPE_SZ", 1032))
    with open("/proc/sys/fs/pipe-max-size") as f:
        allowed = int(f.read())
    assert size == min(1 << 20, allowed) or (allowed < 1 << 20 and size == 65536)
