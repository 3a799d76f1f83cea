"""Content-addressed, resumable, verified upload of the agent and a bundle.

Remote layout under the resolved ``--remote-dir`` (default ``~/.edgekit``)::

    agent/<sha256 of the pyz>/edgekit-agent.pyz
    bundles/<sha256 of manifest.json>/manifest.json, models/..., eval/...
    engines/     TensorRT engine cache (the agent's)
    results/     result files the agent writes, fetched by the host

Only files the target lacks, or holds with another sha256, are sent. A file whose
content already sits in another bundle on the target is hard-linked from there.
Each upload goes to ``.NAME.SHA16.WRITER.partial`` (one name per deploy, so two
deploys of one bundle never touch each other's file), is size-checked and renamed
when complete; an interrupted upload resumes from the partial file's end when its
bytes match the local file's prefix. After the upload the target hashes what it received.
"""
import collections
import dataclasses
import hashlib
import io
import json
import os
import posixpath
import socket
import time
import uuid
from typing import Callable, Deque, Dict, List, Optional, Sequence

import paramiko
from paramiko.sftp import CMD_WRITE, int64

from edgekit.contract.manifest import MANIFEST_NAME, read_manifest, sha256_file

from edgekit.contract.errors import EdgekitError
from .helper import RemoteHelper
from .shell import SSHHost, check_cancel

CHUNK = 1 << 20
WRITE_SIZE = 128 * 1024
MAX_INFLIGHT = 64
AGENT_NAME = "edgekit-agent.pyz"
ByteCallback = Callable[[int], None]


def new_writer() -> str:
    """A name for one uploader (one deploy): its partial files are its own."""
    return uuid.uuid4().hex[:12]


@dataclasses.dataclass(frozen=True)
class LocalFile:
    rel: str  # path under the remote root, POSIX
    path: str  # local file
    sha256: str
    size: int


@dataclasses.dataclass(frozen=True)
class LocalBundle:
    path: str
    name: str
    manifest: dict
    manifest_sha256: str
    files: List[LocalFile]  # rel is relative to the bundle folder

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)


@dataclasses.dataclass
class SyncPlan:
    root: str
    files: List[LocalFile]
    have: List[str]
    reused: List[str]
    missing: List[LocalFile]
    resume_at: Dict[str, int]  # rel -> bytes already on the target (emptied as files complete)
    resumed: List[str] = dataclasses.field(default_factory=list)  # rels that started as partial uploads
    sent: List[str] = dataclasses.field(default_factory=list)  # rels uploaded so far
    writer: str = dataclasses.field(default_factory=new_writer)  # names this plan's partial files

    @property
    def bytes_to_send(self) -> int:
        return sum(f.size - self.resume_at.get(f.rel, 0) for f in self.missing)


@dataclasses.dataclass
class SyncStats:
    files_total: int = 0
    files_present: int = 0
    files_reused: int = 0
    files_sent: int = 0
    files_resumed: int = 0
    bytes_total: int = 0
    bytes_sent: int = 0
    seconds: float = 0.0  # the whole sync: plan, upload, verify (and the doctor, which runs alongside)
    upload_seconds: float = 0.0  # time spent sending bytes: the honest divisor for throughput

    @property
    def throughput(self) -> float:
        """Bytes per second while uploading (0 when nothing was sent)."""
        return self.bytes_sent / self.upload_seconds if self.upload_seconds > 0 and self.bytes_sent else 0.0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def load_local_bundle(bundle_dir: str) -> LocalBundle:
    """The bundle's manifest and every file it lists (manifest.json included), hash-checked by size."""
    manifest = read_manifest(bundle_dir)
    files = []
    for rel, entry in sorted(manifest["files"].items()):
        path = os.path.join(bundle_dir, *rel.split("/"))
        _refuse_links(bundle_dir, rel)
        if not os.path.isfile(path):
            raise EdgekitError("bundle %s lacks %s" % (bundle_dir, rel), "rebuild the bundle with edgekit build")
        if os.path.getsize(path) != entry["size"]:
            raise EdgekitError("bundle file %s has %d bytes, the manifest says %d" % (rel, os.path.getsize(path), entry["size"]), "rebuild the bundle")
        files.append(LocalFile(rel, path, entry["sha256"], entry["size"]))
    _refuse_links(bundle_dir, MANIFEST_NAME)
    mpath = os.path.join(bundle_dir, MANIFEST_NAME)
    msha = sha256_file(mpath)
    files.insert(0, LocalFile(MANIFEST_NAME, mpath, msha, os.path.getsize(mpath)))
    return LocalBundle(os.path.abspath(bundle_dir), str(manifest["name"]), manifest, msha, files)


def _refuse_links(bundle_dir: str, rel: str) -> None:
    """A bundle holds plain files only: a symbolic link (the file or a folder on its
    way) would upload whatever it points at, a host file included, so it is refused
    (the agent refuses the same folder)."""
    path = bundle_dir
    for part in rel.split("/"):
        path = os.path.join(path, part)
        if os.path.islink(path):
            raise EdgekitError(
                "bundle %s: %s is a symbolic link (to %s); a bundle holds plain files only" % (bundle_dir, rel, os.readlink(path)),
                "refusing to deploy it; rebuild the bundle with edgekit build",
            )


def agent_rel(agent_sha: str) -> str:
    return "agent/%s/%s" % (agent_sha, AGENT_NAME)


def bundle_rel(manifest_sha: str) -> str:
    return "bundles/%s" % manifest_sha


def deploy_files(bundle: LocalBundle, agent_path: str, agent_sha: str) -> List[LocalFile]:
    """Everything one deploy needs on the target, as paths under the remote root."""
    agent = LocalFile(agent_rel(agent_sha), agent_path, agent_sha, os.path.getsize(agent_path))
    prefix = bundle_rel(bundle.manifest_sha256)
    return [agent] + [dataclasses.replace(f, rel="%s/%s" % (prefix, f.rel)) for f in bundle.files]


def partial_name(remote_path: str, sha: str, writer: Optional[str] = None) -> str:
    """Where ``writer`` uploads ``remote_path`` (device/remote_helper.py uses the same names)."""
    folder, base = posixpath.split(remote_path)
    if writer:
        return posixpath.join(folder, ".%s.%s.%s.partial" % (base, sha[:16], writer))
    return posixpath.join(folder, ".%s.%s.partial" % (base, sha[:16]))


def _prefix_sha256(path: str, length: int) -> str:
    digest = hashlib.sha256()
    left = length
    with open(path, "rb") as f:
        while left > 0:
            block = f.read(min(CHUNK, left))
            if not block:
                break
            digest.update(block)
            left -= len(block)
    return digest.hexdigest()


def plan_sync(helper: RemoteHelper, root: str, files: Sequence[LocalFile], writer: Optional[str] = None) -> SyncPlan:
    """Ask the target what it already has (hashing it there).

    Partial uploads are reported as this ``writer``'s own file (the helper copies a
    longer one another writer left); partials nobody wrote for the idle limit are
    a dead deploy's and are removed.
    """
    writer = writer or new_writer()
    stale = helper.idle_timeout or 600.0
    answer = helper.request("plan", root=root, files={f.rel: [f.sha256, f.size] for f in files}, pool=posixpath.join(root, "bundles"),
                            writer=writer, stale_s=stale)
    by_rel = {f.rel: f for f in files}
    resume_at = {}
    for rel, (size, sha) in (answer.get("partial") or {}).items():
        local = by_rel[rel]
        # Resume only when the bytes there are exactly the start of our file.
        if size <= local.size and _prefix_sha256(local.path, size) == sha:
            resume_at[rel] = size
    return SyncPlan(
        writer=writer,
        root=root,
        files=list(files),
        have=list(answer["have"]),
        reused=list(answer.get("reused") or []),
        missing=[by_rel[r] for r in answer["missing"]],
        resume_at=resume_at,
        resumed=sorted(resume_at),
    )


def _sftp_error(exc: BaseException, what: str, host: SSHHost) -> EdgekitError:
    if isinstance(exc, EdgekitError):
        return exc
    if isinstance(exc, socket.timeout):
        return EdgekitError("%s went silent while %s" % (host.name, what), "check the board's network and rerun: the upload resumes where it stopped")
    if isinstance(exc, IOError) and getattr(exc, "errno", None) is not None:
        return EdgekitError("%s failed on %s (%s)" % (what, host.name, os.strerror(exc.errno)), "check free space and permissions under --remote-dir")
    return EdgekitError("%s failed on %s (%s)" % (what, host.name, exc or type(exc).__name__), "rerun: the upload resumes where it stopped")


def _pipelined_write(sftp: paramiko.SFTPClient, handle: bytes, src: "io.BufferedReader", offset: int, on_bytes: Optional[ByteCallback]) -> None:
    """Stream ``src`` into an open remote file with many writes in flight.

    paramiko's own pipelining waits for every outstanding acknowledgement once
    100 are queued, which empties the pipe each time; here at most MAX_INFLIGHT
    requests are outstanding and each acknowledgement is collected in order
    (an error status raises IOError), so the link stays full. Requests of 128 KiB
    stay well inside OpenSSH's 256 KiB SFTP message limit.
    """
    pending: Deque[int] = collections.deque()
    while True:
        block = src.read(CHUNK)
        if not block:
            break
        view = memoryview(block)
        for start in range(0, len(block), WRITE_SIZE):
            piece = bytes(view[start : start + WRITE_SIZE])
            pending.append(sftp._async_request(type(None), CMD_WRITE, handle, int64(offset), piece))
            offset += len(piece)
            while len(pending) > MAX_INFLIGHT or (pending and sftp.sock.recv_ready()):
                sftp._read_response(pending.popleft())
        if on_bytes is not None:
            on_bytes(len(block))
    while pending:
        sftp._read_response(pending.popleft())


def _size_of(sftp: paramiko.SFTPClient, path: str) -> Optional[int]:
    try:
        return sftp.stat(path).st_size
    except IOError:
        return None


def _commit(sftp: paramiko.SFTPClient, tmp: str, remote: str, f: LocalFile, host: SSHHost) -> None:
    """Give this writer's complete partial file its final name.

    The content is checked first (its size; the helper hashes every sent file
    before the agent runs), so a short file never takes the name. A concurrent
    deploy's rename may land first: the same content, so replacing it is harmless,
    and when our partial was cleaned away a final file already in place is success.
    """
    got = _size_of(sftp, tmp)
    if got is None and _size_of(sftp, remote) == f.size:
        return
    if got != f.size:
        raise EdgekitError("uploading %s to %s left %s bytes, expected %d" % (f.rel, host.name, got, f.size), "rerun: the upload resumes where it stopped")
    try:
        sftp.posix_rename(tmp, remote)
    except IOError:
        if _size_of(sftp, remote) != f.size:
            raise


def upload(
    host: SSHHost,
    plan: SyncPlan,
    only: Optional[Sequence[str]] = None,
    on_bytes: Optional[ByteCallback] = None,
    sftp: Optional[paramiko.SFTPClient] = None,
) -> List[str]:
    """Send the plan's missing files (those in ``only`` when given); returns the rels sent.

    ``on_bytes`` may raise to stop the upload (the partial file stays for resuming).
    ``sftp``: a client of this thread's own; paramiko's SFTP client must not be
    shared by threads that write at the same time.
    """
    sftp = sftp or host.conn.sftp()
    sent = []

    def progress(n: int) -> None:
        check_cancel(host.cancel, host.name)  # Ctrl-C stops between blocks; the partial file stays for resuming
        if on_bytes is not None:
            on_bytes(n)

    for f in plan.missing:
        if f.rel in plan.sent or (only is not None and f.rel not in only):
            continue
        remote = posixpath.join(plan.root, f.rel)
        tmp = partial_name(remote, f.sha256, plan.writer)
        offset = plan.resume_at.get(f.rel, 0)
        what = "uploading %s" % f.rel
        try:
            with open(f.path, "rb") as src:
                with sftp.open(tmp, "r+" if offset else "w") as dst:
                    if offset:
                        src.seek(offset)
                        dst.truncate(offset)  # a partial longer than we trust must not keep its tail
                    _pipelined_write(sftp, dst.handle, src, offset, progress)
            _commit(sftp, tmp, remote, f, host)
        except (IOError, OSError, EOFError, paramiko.SSHException) as exc:
            raise _sftp_error(exc, what, host) from None
        plan.resume_at.pop(f.rel, None)
        plan.sent.append(f.rel)
        sent.append(f.rel)
    return sent


def resolve_remote_root(sftp: paramiko.SFTPClient, remote_dir: str) -> str:
    """Absolute path of ``--remote-dir`` on the target, ``~`` expanded, found over SFTP (no shell)."""
    home = sftp.normalize(".")
    if remote_dir == "~":
        return home
    if remote_dir.startswith("~/"):
        return posixpath.normpath(posixpath.join(home, remote_dir[2:]))
    if remote_dir.startswith("~"):
        raise EdgekitError("--remote-dir %r: ~user paths are not supported" % remote_dir, "write the absolute path")
    return posixpath.normpath(posixpath.join(home, remote_dir))


def _exists(sftp: paramiko.SFTPClient, path: str) -> bool:
    try:
        sftp.stat(path)
        return True
    except IOError:
        return False


def _pool_hashes(sftp: paramiko.SFTPClient, root: str, skip: str) -> set:
    """sha256 of every file listed by the other bundles' manifests on the target."""
    pool = posixpath.join(root, "bundles")
    hashes: set = set()
    try:
        names = sftp.listdir(pool)
    except IOError:
        return hashes
    for name in names:
        if name == skip:
            continue
        try:
            with sftp.open(posixpath.join(pool, name, MANIFEST_NAME), "rb") as f:
                files = json.loads(f.read().decode("utf-8")).get("files") or {}
            hashes.update(e.get("sha256") for e in files.values() if isinstance(e, dict))
        except (IOError, ValueError, AttributeError):
            continue
    return hashes


def fresh_files(sftp: paramiko.SFTPClient, root: str, files: Sequence[LocalFile], manifest_sha: str, agent_sha: str) -> List[LocalFile]:
    """Files the target certainly lacks and cannot take from another bundle: safe to
    send at once, before the helper (whose start costs a login shell) has planned.

    That is every file of a bundle whose folder does not exist yet, except content
    some other bundle there already holds (the plan links those), and the agent
    when its folder does not exist.
    """
    fresh: List[LocalFile] = []
    agent = agent_rel(agent_sha)
    if not _exists(sftp, posixpath.dirname(posixpath.join(root, agent))):
        fresh += [f for f in files if f.rel == agent]
    if not _exists(sftp, posixpath.join(root, bundle_rel(manifest_sha))):
        pool = _pool_hashes(sftp, root, manifest_sha)
        prefix = bundle_rel(manifest_sha) + "/"
        fresh += [f for f in files if f.rel.startswith(prefix) and f.sha256 not in pool]
    return fresh


def make_dirs(sftp: paramiko.SFTPClient, root: str, rels: Sequence[str]) -> None:
    """Create the parent folders of ``rels`` under ``root`` over SFTP (mkdir -p)."""
    made = set()
    for rel in rels:
        folder = posixpath.dirname(posixpath.join(root, rel))
        chain = []
        while folder not in made and folder not in ("/", "") and not _exists(sftp, folder):
            chain.append(folder)
            folder = posixpath.dirname(folder)
        for path in reversed(chain):
            try:
                sftp.mkdir(path)
            except IOError:
                if not _exists(sftp, path):
                    raise
            made.add(path)
        made.add(posixpath.dirname(posixpath.join(root, rel)))


def verify_uploaded(helper: RemoteHelper, plan: SyncPlan, rels: Sequence[str]) -> None:
    """Have the target hash what it received; a mismatch is an error (the bad file is not kept)."""
    if not rels:
        return
    files = [f for f in plan.files if f.rel in set(rels)]
    check = plan_sync(helper, plan.root, files)
    bad = [f.rel for f in check.missing]
    if bad:
        raise EdgekitError(
            "%s received %d file(s) that do not match their sha256 (first: %s)" % (helper.host.name, len(bad), bad[0]),
            "rerun the deploy; if it repeats, check the board's disk",
        )


def sync(
    host: SSHHost,
    helper: RemoteHelper,
    root: str,
    files: Sequence[LocalFile],
    on_bytes: Optional[ByteCallback] = None,
    plan: Optional[SyncPlan] = None,
) -> SyncStats:
    """Plan, upload and verify in one call (the deploy pipeline uses the pieces)."""
    start = time.monotonic()
    plan = plan or plan_sync(helper, root, files)
    resumed = len(plan.resume_at)
    to_send = plan.bytes_to_send
    t_upload = time.monotonic()
    sent = upload(host, plan, on_bytes=on_bytes)
    upload_seconds = time.monotonic() - t_upload
    verify_uploaded(helper, plan, sent)
    return SyncStats(
        files_total=len(plan.files),
        files_present=len(plan.have),
        files_reused=len(plan.reused),
        files_sent=len(sent),
        files_resumed=resumed,
        bytes_total=sum(f.size for f in plan.files),
        bytes_sent=to_send,
        seconds=time.monotonic() - start,
        upload_seconds=upload_seconds,
    )
