"""Runs ON THE TARGET, started once per deploy as ``python3 -c <this file>``.

It reads one JSON request per line on stdin and answers each with one JSON line
on stdout, until stdin closes: one process (and one SSH session, which on some
boards costs a slow login-shell start) serves the whole deploy.

Standalone on purpose: stdlib only, no edgekit imports, and syntax that old
interpreters still parse (Python 3.4+, no f-strings or annotations), so that a
board with Python 3.6 gets as far as telling the host its version.

Operations (request ``{"op": ...}``):

``probe``  {dir}: interpreter version, home, ``dir`` resolved and created, free bytes there and its mount point.
``plan``   {root, files: {rel: [sha256, size]}, pool}: which files ``root`` already has
           (hash checked), which are partly uploaded (size and sha256 of the request's
           ``writer``'s ``.NAME.SHA16.WRITER.partial``, copied from another writer's
           when that one is longer), which are missing. A missing file whose content
           exists in another bundle under ``pool`` is hard-linked (or copied) from it
           instead of being sent again. Parent folders of missing files are created.
``receive`` {root, writer, files: [[rel, sha256, size, offset], ...]}, followed on stdin
           by the files' bytes from ``offset`` on, one after the other: the upload.
           Each file goes to the writer's partial file (its first ``offset`` bytes are
           kept: a resumed upload), is hashed as it arrives and takes its final name
           only when size and sha256 match; a file that fails is removed. Members that
           leave ``root`` (absolute, ``..``) or pass through a symbolic link are
           refused (their bytes are read and dropped). Answer: {ok: [rels], bad: [[rel,
           why]]}. A stream cut short keeps what arrived in the partial file (the next
           plan resumes from it) and ends the helper.
``clean``  {root}: remove leftover ``*.partial`` files under root.
``run``    {argv, timeout}: run a short command (the agent's doctor); rc, stdout, stderr.
``start``  {argv}: start a command in the background (output to temporary files): {id}.
``wait``   {id, timeout}: wait for a started command: rc, stdout, stderr.

``root`` (and ``dir``) may start with ``~``: it is expanded here, on the board.
"""
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

CHUNK = 1 << 20


def sha256_of(path, limit=None):
    digest = hashlib.sha256()
    left = limit
    with open(path, "rb") as f:
        while True:
            want = CHUNK if left is None else min(CHUNK, left)
            if want <= 0:
                break
            block = f.read(want)
            if not block:
                break
            digest.update(block)
            if left is not None:
                left -= len(block)
    return digest.hexdigest()


def partial_name(path, sha, writer=None):
    """Where one writer uploads ``path``: a name of its own, so that two deploys of the
    same bundle never write, truncate or rename each other's file."""
    folder, base = os.path.split(path)
    if writer:
        return os.path.join(folder, ".%s.%s.%s.partial" % (base, sha[:16], writer))
    return os.path.join(folder, ".%s.%s.partial" % (base, sha[:16]))


def _partials_of(path, sha):
    """Every writer's partial upload of ``path`` (and the old shared name): [(name, size, mtime)]."""
    folder, base = os.path.split(path)
    prefix = ".%s.%s." % (base, sha[:16])
    found = []
    try:
        names = os.listdir(folder)
    except OSError:
        return found
    for name in names:
        if name.startswith(prefix) and name.endswith(".partial") and not name.endswith(".link.partial"):
            full = os.path.join(folder, name)
            try:
                st = os.stat(full)
            except OSError:
                continue  # another writer just renamed or removed it
            found.append((full, st.st_size, st.st_mtime))
    return found


def _remove_stale(partials, stale_s, keep=None):
    """Remove partials nobody has written for ``stale_s`` seconds (a live writer writes
    far more often, or gives up on its idle limit): the leftovers of dead deploys."""
    now = time.time()
    for name, _size, mtime in partials:
        if name != keep and now - mtime > stale_s:
            try:
                os.remove(name)
            except OSError:
                pass


def _resume_from(path, sha, size, own, stale_s):
    """The writer's own partial file to resume into: the longest usable partial of any
    writer, copied (never renamed: its writer may still be at work) when not its own."""
    partials = _partials_of(path, sha)
    usable = sorted((p for p in partials if 0 < p[1] <= size), key=lambda p: p[1], reverse=True)
    _remove_stale(partials, stale_s, keep=usable[0][0] if usable else None)
    if not usable:
        return None
    best = usable[0][0]
    if best != own:
        try:
            shutil.copyfile(best, own)
        except (OSError, IOError):
            return None
        _remove_stale([p for p in usable[:1]], stale_s)
    got = os.path.getsize(own)
    return [got, sha256_of(own)] if 0 < got <= size else None


def safe_join(root, rel):
    parts = rel.split("/")
    if rel.startswith("/") or ".." in parts or "" in parts:
        raise ValueError("unsafe path %r" % rel)
    return os.path.join(root, *parts)


def board_path(path):
    """``path`` as the board means it: ``~`` expanded, relative to the home folder."""
    return os.path.abspath(os.path.expanduser(path))


def _room(path):
    """Free bytes at ``path`` and the mount point of its filesystem (for the host's message)."""
    st = os.statvfs(path)
    mount = os.path.realpath(path)
    while not os.path.ismount(mount):
        mount = os.path.dirname(mount)
    return {"free_bytes": st.f_bavail * st.f_frsize, "mount": mount, "dir": path}


def probe(req):
    path = board_path(req["dir"])
    made = None
    try:
        if not os.path.isdir(path):
            os.makedirs(path)
    except OSError as exc:
        made = "%s" % exc
    room = _room(path) if os.path.isdir(path) else {"free_bytes": None, "mount": None}
    free, mount = room["free_bytes"], room["mount"]
    return {
        "python": list(sys.version_info[:3]),
        "executable": sys.executable,
        "home": os.path.expanduser("~"),
        "dir": path,
        "dir_error": made,
        "free_bytes": free,
        "mount": mount,
        "platform": sys.platform,
        "machine": os.uname()[4] if hasattr(os, "uname") else "",
    }


def _pool_index(pool):
    """sha256 -> path of a file with that content in a bundle folder under ``pool``."""
    index = {}
    if not pool or not os.path.isdir(pool):
        return index
    for name in sorted(os.listdir(pool)):
        folder = os.path.join(pool, name)
        manifest = os.path.join(folder, "manifest.json")
        try:
            with open(manifest, "r") as f:
                files = json.load(f).get("files") or {}
        except (OSError, IOError, ValueError, AttributeError):
            continue
        for rel, entry in files.items():
            try:
                index.setdefault(entry["sha256"], (safe_join(folder, rel), entry["size"]))
            except (KeyError, TypeError, ValueError):
                continue
    return index


def _place(src, dst, writer):
    # A temporary name of this writer's own: a concurrent deploy placing the same file
    # must not remove or rename ours (the rename then replaces equal content).
    tmp = "%s.%s.link.partial" % (dst, writer or os.getpid())
    if os.path.exists(tmp):
        os.remove(tmp)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.rename(tmp, dst)


def plan(req):
    root = board_path(req["root"])
    writer = req.get("writer")
    stale_s = float(req.get("stale_s") or 600)
    have, missing, partial, reused = [], [], {}, []
    index = None
    for rel, (sha, size) in sorted(req["files"].items()):
        path = safe_join(root, rel)
        if os.path.isfile(path) and os.path.getsize(path) == size and sha256_of(path) == sha:
            have.append(rel)
            _remove_stale(_partials_of(path, sha), stale_s)
            continue
        folder = os.path.dirname(path)
        try:
            os.makedirs(folder)
        except OSError:
            if not os.path.isdir(folder):  # a concurrent deploy may have made it first
                raise
        if index is None:
            index = _pool_index(board_path(req["pool"]) if req.get("pool") else None)
        source = index.get(sha)
        if source and os.path.isfile(source[0]) and os.path.getsize(source[0]) == size and sha256_of(source[0]) == sha:
            _place(source[0], path, writer)
            reused.append(rel)
            continue
        got = _resume_from(path, sha, size, partial_name(path, sha, writer), stale_s)
        if got is not None:
            partial[rel] = got
        missing.append(rel)
    return {"have": have, "missing": missing, "partial": partial, "reused": reused}


class StreamEnded(Exception):
    """The host's stream stopped before its declared length: the host is gone."""


def _read_exact(stdin, n, sink):
    """Pass the next ``n`` bytes of ``stdin`` to ``sink`` as they come; StreamEnded if it closes first."""
    left = n
    while left > 0:
        block = stdin.read(min(CHUNK, left))
        if not block:
            raise StreamEnded()
        sink(block)
        left -= len(block)


def _refuse_links(root, path):
    """A symbolic link between ``root`` and ``path`` (or at ``path``) would send the
    bytes elsewhere: refused. ``root`` itself may be a link (the user's choice)."""
    rel = os.path.relpath(path, root)
    here = root
    for part in rel.split(os.sep):
        here = os.path.join(here, part)
        if os.path.islink(here):
            raise ValueError("%s is a symbolic link" % rel)


def _receive_one(stdin, root, writer, rel, sha, size, offset):
    """One member of the stream: None when it took its final name, else why not.
    Its bytes are always read whole, so the stream stays in step."""
    try:
        path = safe_join(root, rel)
        _refuse_links(root, path)
        folder = os.path.dirname(path)
        if not os.path.isdir(folder):
            os.makedirs(folder)
        _refuse_links(root, path)
        tmp = partial_name(path, sha, writer)
        flags = os.O_WRONLY | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | (0 if offset else os.O_TRUNC)
        fd = os.open(tmp, flags, 0o644)
    except (OSError, ValueError) as exc:
        _read_exact(stdin, size - offset, lambda block: None)
        return "refused: %s" % exc
    digest = hashlib.sha256()
    failed = []

    def write(block):
        digest.update(block)
        if failed:
            return
        view = memoryview(block)
        try:
            while view:
                view = view[os.write(fd, view):]
        except OSError as exc:  # a full disk: the rest is read and dropped
            failed.append(exc)

    try:
        if offset:
            os.ftruncate(fd, offset)  # a partial longer than the host trusts must not keep its tail
            with open(tmp, "rb") as f:
                _read_exact(f, offset, digest.update)
            os.lseek(fd, offset, os.SEEK_SET)
    except (OSError, IOError, StreamEnded) as exc:
        failed.append(exc)
    try:
        _read_exact(stdin, size - offset, write)
    finally:
        os.close(fd)  # on StreamEnded what arrived stays in the partial file, for the next deploy to resume
    if failed or digest.hexdigest() != sha:
        try:
            os.remove(tmp)
        except OSError:
            pass
        return "cannot write: %s" % failed[0] if failed else "sha256 mismatch"
    # A concurrent deploy may rename first: the same content, so replacing it is harmless.
    try:
        os.rename(tmp, path)
    except OSError as exc:
        return "cannot rename: %s" % exc
    return None


def _members(req):
    """The stream's table of contents, checked whole before the first byte is read
    (a bad entry leaves the stream's length unknown, so the helper stops)."""
    members = []
    for item in req["files"]:
        rel, sha, size, offset = item
        hexdigits = "0123456789abcdef"
        if not (isinstance(rel, str) and isinstance(sha, str) and len(sha) == 64 and all(c in hexdigits for c in sha)):
            raise ValueError("bad member %r" % (item,))
        if not (type(size) is int and type(offset) is int and 0 <= offset <= size):
            raise ValueError("bad size/offset in %r" % (item,))
        members.append((rel, sha, size, offset))
    return members


def receive(req, stdin):
    root = board_path(req["root"])
    writer = req.get("writer")
    if writer is not None and not (isinstance(writer, str) and writer.isalnum()):
        raise ValueError("bad writer %r" % (writer,))
    members = _members(req)
    need = req.get("need_free") or 0
    if need:
        # Checked here, before the first byte is written: the host may have sent this
        # stream before it heard the probe's answer (while this helper was starting).
        if not os.path.isdir(root):
            os.makedirs(root)
        room = _room(root)
        if room["free_bytes"] < need:
            for _rel, _sha, size, offset in members:
                _read_exact(stdin, size - offset, lambda block: None)
            return {"ok": [], "bad": [], "no_room": room}
    ok, bad = [], []
    for rel, sha, size, offset in members:
        why = _receive_one(stdin, root, writer, rel, sha, size, offset)
        if why is None:
            ok.append(rel)
        else:
            bad.append([rel, why])
    return {"ok": ok, "bad": bad}


_started = {}


def _launch(argv):
    out = tempfile.TemporaryFile()
    err = tempfile.TemporaryFile()
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
    except OSError as exc:
        proc = None
        err.write(("%s: %s" % (argv[0], exc)).encode("utf-8"))
    return proc, out, err


def _ready(needs):
    for path, sha in (needs or {}).items():
        if not (os.path.isfile(path) and sha256_of(path) == sha):
            return False
    return True


def start(req):
    """``needs`` {path: sha256}: files the command reads. When one is not (yet) in place
    with that content, the command starts at ``wait`` instead, after what came between."""
    key = str(len(_started) + 1)
    _started[key] = _launch(req["argv"]) if _ready(req.get("needs")) else req["argv"]
    return {"id": key}


def wait(req):
    entry = _started.pop(req["id"])
    proc, out, err = _launch(entry) if isinstance(entry, list) else entry
    rc, note = 127, ""
    if proc is not None:
        try:
            rc = proc.wait(timeout=req.get("timeout"))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            rc, note = 124, "timed out after %ss" % req.get("timeout")
    text = []
    for f in (out, err):
        f.seek(0)
        text.append(f.read().decode("utf-8", "replace"))
        f.close()
    return {"rc": rc, "stdout": text[0], "stderr": note or text[1]}


def _stop_started():
    """The host is gone: what it started here goes too."""
    for entry in _started.values():
        if isinstance(entry, tuple) and entry[0] is not None and entry[0].poll() is None:
            entry[0].kill()


def clean(req):
    removed = 0
    for folder, _dirs, files in os.walk(req["root"]):
        for name in files:
            if name.endswith(".partial"):
                os.remove(os.path.join(folder, name))
                removed += 1
    return {"removed": removed}


def run(req):
    try:
        proc = subprocess.Popen(req["argv"], stdin=subprocess.DEVNULL if hasattr(subprocess, "DEVNULL") else None,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except OSError as exc:
        return {"rc": 127, "stdout": "", "stderr": "%s: %s" % (req["argv"][0], exc)}
    try:
        out, err = proc.communicate(timeout=req.get("timeout"))
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        return {"rc": 124, "stdout": out.decode("utf-8", "replace"), "stderr": "timed out after %ss" % req.get("timeout")}
    return {"rc": proc.returncode, "stdout": out.decode("utf-8", "replace"), "stderr": err.decode("utf-8", "replace")}


def main():
    ops = {"probe": probe, "plan": plan, "clean": clean, "run": run, "start": start, "wait": wait}
    stdin = getattr(sys.stdin, "buffer", sys.stdin)
    try:
        while True:
            line = stdin.readline()
            if not line:
                break
            streaming = False
            try:
                req = json.loads(line.decode("utf-8"))
                streaming = req.get("op") == "receive"
                out = receive(req, stdin) if streaming else ops[req["op"]](req)
                streaming = False
            except StreamEnded:
                break
            except Exception as exc:  # reported to the host as one line
                out = {"error": "%s: %s" % (type(exc).__name__, exc)}
            sys.stdout.write(json.dumps(out) + "\n")
            sys.stdout.flush()
            if streaming:
                break  # a stream that failed half-way: where the next request starts is unknown
    finally:
        _stop_started()


if __name__ == "__main__":
    main()
