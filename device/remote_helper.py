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
``clean``  {root}: remove leftover ``*.partial`` files under root.
``run``    {argv, timeout}: run a short command (the agent's doctor); rc, stdout, stderr.
"""
import hashlib
import json
import os
import shutil
import subprocess
import sys
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


def probe(req):
    path = os.path.abspath(os.path.expanduser(req["dir"]))
    made = None
    try:
        if not os.path.isdir(path):
            os.makedirs(path)
    except OSError as exc:
        made = "%s" % exc
    free = None
    mount = None
    if os.path.isdir(path):
        st = os.statvfs(path)
        free = st.f_bavail * st.f_frsize
        mount = os.path.realpath(path)
        while not os.path.ismount(mount):  # the filesystem the files land on, for the host's message
            mount = os.path.dirname(mount)
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
    root = req["root"]
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
            index = _pool_index(req.get("pool"))
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
    ops = {"probe": probe, "plan": plan, "clean": clean, "run": run}
    stdin = getattr(sys.stdin, "buffer", sys.stdin)
    while True:
        line = stdin.readline()
        if not line:
            break
        try:
            req = json.loads(line.decode("utf-8"))
            out = ops[req["op"]](req)
        except Exception as exc:  # reported to the host as one line
            out = {"error": "%s: %s" % (type(exc).__name__, exc)}
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
