"""Content-addressed, resumable, verified upload of the agent and a bundle.

Remote layout under the resolved ``--remote-dir`` (default ``~/.edgekit``)::

    agent/<sha256 of the pyz>/edgekit-agent.pyz
    bundles/<sha256 of manifest.json>/manifest.json, models/..., eval/...
    engines/     TensorRT engine cache (the agent's)
    results/     result files the agent writes, fetched by the host

One path, :class:`Sync`, for the deploy pipeline and the tests alike: the
board-side helper (device/remote_helper.py) is asked, in one pipelined exchange,
for the interpreter and free space (``probe``) and for what it already has
(``plan``: hash-checked; content another bundle there holds is hard-linked from
it; partial uploads are reported). Files that certainly are new (their
content-addressed folder does not exist yet, asked over SFTP, which starts no
shell) go first, while the helper is still starting; the board checks the room
for them before writing. Free space is checked before the first byte. Every
missing file travels in ONE stream over the helper's own SSH channel
(``receive``: a table of contents, then the files' bytes back to back; no
per-file round trip, so 250 small images cost what one large file of their size
does). On the board each file goes to ``.NAME.SHA16.WRITER.partial`` (one name
per deploy, so two deploys of one bundle never touch each other's file), is
hashed as it arrives and takes its final name only when its sha256 matches; a
cut stream leaves the partial file, and the next plan resumes from its end when
its bytes match the local file's prefix. The stream has one idle limit: the
board taking no byte for ``idle_timeout`` seconds stops it.
"""
import dataclasses
import hashlib
import json
import os
import posixpath
import time
import uuid
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from edgekit.contract.manifest import MANIFEST_NAME, read_manifest, sha256_file

from edgekit.contract.errors import EdgekitError
from .helper import RemoteHelper
from .preflight import DISK_MARGIN_BYTES, check_disk, check_probe
from .shell import Host, SSHHost, check_cancel

CHUNK = 1 << 20
STREAM_BATCH = 256 * 1024  # bytes handed to the channel at once: small files travel together
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
    hashed: int = 0  # files the board read and hashed for this plan (the others: its stat cache)

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


def _plan_request(root: str, files: Sequence[LocalFile], writer: str, stale_s: float, rehash: bool = False) -> Dict[str, Any]:
    return {"root": root, "files": {f.rel: [f.sha256, f.size] for f in files}, "pool": posixpath.join(root, "bundles"), "writer": writer,
            "stale_s": stale_s, "rehash": rehash}


def _read_plan(answer: Dict[str, Any], root: str, files: Sequence[LocalFile], writer: str) -> SyncPlan:
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
        hashed=int(answer.get("hashed") or 0),
    )


class SyncProgress(object):
    """What a sync tells its caller (the deploy pipeline turns it into DeployReporter events)."""

    def planned(self, nbytes: int, files: int) -> None:
        """The upload starts: ``files`` files, ``nbytes`` bytes (the fresh ones when the
        board's plan is not known yet, else all that is missing)."""

    def more(self, nbytes: int, files: int) -> None:
        """The board's plan added ``files`` files, ``nbytes`` bytes to the fresh ones."""

    def sent(self, nbytes: int) -> None:
        """``nbytes`` more were handed to the connection (may raise to stop the upload)."""

    def verifying(self) -> None:
        """Everything is sent; the board is finishing its per-file sha256 checks."""


class _BytesCallback(SyncProgress):
    def __init__(self, on_bytes: Optional[ByteCallback]) -> None:
        self.on_bytes = on_bytes

    def sent(self, nbytes: int) -> None:
        if self.on_bytes is not None:
            self.on_bytes(nbytes)


# Called between the early files and the rest; returns what reads its answers (or None).
Between = Callable[[], Optional[Callable[[], None]]]


class Sync(object):
    """Plan, upload and verify ``files`` under ``remote_dir`` on the helper's board.

    ``remote_dir`` may start with ``~`` (expanded on the board); after :meth:`run`,
    ``root`` is the absolute folder and ``probe`` the board's answer about it.
    ``early``: rels sent first (the agent and manifest: what the doctor needs);
    ``run(between)`` calls ``between`` once they are queued, so it can queue its own
    helper requests (the doctor) to run while the rest travels. ``rehash``: the board
    hashes every file it has again instead of believing its stat cache.
    """

    def __init__(self, host: Host, helper: RemoteHelper, remote_dir: str, files: Sequence[LocalFile], early: Sequence[str] = (),
                 progress: Optional[SyncProgress] = None, writer: Optional[str] = None, rehash: bool = False) -> None:
        if remote_dir.startswith("~") and remote_dir != "~" and not remote_dir.startswith("~/"):
            raise EdgekitError("--remote-dir %r: ~user paths are not supported" % remote_dir, "write the absolute path")
        self.host, self.helper, self.remote_dir = host, helper, remote_dir
        self.files = list(files)
        self.early = set(early)
        self.progress = progress or SyncProgress()
        self.writer = writer or new_writer()
        self.rehash = rehash
        self.root = ""
        self.probe: Dict[str, Any] = {}
        self.plan: Optional[SyncPlan] = None

    def run(self, between: Optional[Between] = None) -> SyncStats:
        start = time.monotonic()
        fresh, others = self._queue_requests()
        fresh_plan = SyncPlan(root=self.root, files=fresh, have=[], reused=[], missing=fresh, resume_at={}, writer=self.writer)
        self._first_byte: Optional[float] = None
        answers: List[Callable[[], None]] = []  # readers of the answers still due, in order
        started: List[bool] = []  # whether ``between`` has been called
        try:
            if fresh:
                self.progress.planned(fresh_plan.bytes_to_send, len(fresh))
                # The board checks the room for them itself, before writing the first byte.
                self._segments(fresh_plan, fresh, between, started, answers, need_free=fresh_plan.bytes_to_send + DISK_MARGIN_BYTES)
            plan = self.plan = self._read_plan(others, fresh_plan.bytes_to_send)
            if not fresh:
                self.progress.planned(plan.bytes_to_send, len(plan.missing))
            elif plan.missing:
                self.progress.more(plan.bytes_to_send, len(plan.missing))
            to_send = fresh_plan.bytes_to_send + plan.bytes_to_send
            self._segments(plan, plan.missing, between, started, answers)
            if between is not None and not started:
                collect = between()
                if collect is not None:
                    answers.append(collect)
            self.progress.verifying()
            for read in answers:
                read()
        except BaseException:
            # Out of step with the stream (or stopped by the user): the board keeps
            # what arrived as partial files; the helper is not asked anything more.
            self.helper.abort()
            raise
        sent = fresh_plan.sent + plan.sent
        return SyncStats(
            files_total=len(self.files),
            files_present=len(plan.have),
            files_reused=len(plan.reused),
            files_sent=len(sent),
            files_resumed=sum(1 for rel in plan.sent if rel in plan.resumed),
            bytes_total=sum(f.size for f in self.files),
            bytes_sent=to_send,
            seconds=time.monotonic() - start,
            upload_seconds=time.monotonic() - self._first_byte if self._first_byte is not None else 0.0,
        )

    def _queue_requests(self) -> Tuple[List[LocalFile], List[LocalFile]]:
        """Find the remote folder and the fresh files over SFTP (no shell), and queue
        the probe and the plan of the others: (fresh, others)."""
        sftp = self.host.conn.sftp() if isinstance(self.host, SSHHost) else None
        self.root = resolve_remote_root(sftp, self.remote_dir) if sftp is not None else self.remote_dir  # until the probe confirms it
        fresh = fresh_files(sftp, self.root, self.files) if sftp is not None else []
        fresh_rels = {f.rel for f in fresh}
        others = [f for f in self.files if f.rel not in fresh_rels]
        # Queued at once: the helper's start on the board (a login shell) is paid once,
        # and the fresh files travel while it starts.
        self.helper.send("probe", dir=self.root)
        self.helper.send("plan", **_plan_request(self.root, others, self.writer, self.helper.idle_timeout or 600.0, self.rehash))
        return fresh, others

    def _read_plan(self, others: Sequence[LocalFile], fresh_bytes: int) -> SyncPlan:
        """The probe's and the plan's answers, checked: interpreter, folder, room for everything."""
        self.probe = self.helper.receive("probe")
        check_probe(self.probe, self.host.name, self.helper.python, need_dir=True)
        self.root = str(self.probe["dir"])
        plan = _read_plan(self.helper.receive("plan"), self.root, others, self.writer)
        # Not one byte goes to a disk that cannot hold them.
        check_disk(self.probe, fresh_bytes + plan.bytes_to_send, self.host.name)
        return plan

    def _segments(self, plan: SyncPlan, files: Sequence[LocalFile], between: Optional[Between], started: List[bool],
                  answers: List[Callable[[], None]], need_free: int = 0) -> None:
        """Stream ``files``: the early ones first, then ``between`` (once per sync), then the rest."""
        first = [f for f in files if f.rel in self.early]
        rest = [f for f in files if f.rel not in self.early]
        if first:
            self._stream(plan, first, need_free)
            answers.append(lambda files=first, need=need_free: self._received(plan, files, need))
            # The rest checks again for what it still needs: when the first was refused, so is it.
            need_free = max(0, need_free - sum(f.size - plan.resume_at.get(f.rel, 0) for f in first)) if need_free else 0
        if first and between is not None and not started:
            started.append(True)
            collect = between()
            if collect is not None:
                answers.append(collect)
        if rest:
            self._stream(plan, rest, need_free)
            answers.append(lambda files=rest, need=need_free: self._received(plan, files, need))

    def _stream(self, plan: SyncPlan, files: Sequence[LocalFile], need_free: int = 0) -> None:
        """One ``receive`` request and the bytes of ``files`` after it, batched."""
        members = [[f.rel, f.sha256, f.size, plan.resume_at.get(f.rel, 0)] for f in files]
        self.helper.send("receive", root=plan.root, writer=plan.writer, files=members, need_free=need_free)
        batch = bytearray()
        for f, (_rel, _sha, size, offset) in zip(files, members):
            with open(f.path, "rb") as src:
                src.seek(offset)
                left = size - offset
                while left > 0:
                    block = src.read(min(CHUNK, left))
                    if not block:
                        raise EdgekitError("%s shrank while it was being deployed" % f.path, "rerun the deploy once the bundle is complete")
                    left -= len(block)
                    if not batch and len(block) >= STREAM_BATCH:
                        self._send(block)
                        continue
                    batch += block
                    if len(batch) >= STREAM_BATCH:
                        self._send(bytes(batch))
                        batch.clear()
        if batch:
            self._send(bytes(batch))

    def _send(self, data: bytes) -> None:
        check_cancel(self.host.cancel, self.host.name)  # Ctrl-C stops between batches; the partial files stay for resuming
        if self._first_byte is None:
            self._first_byte = time.monotonic()
        self.helper.send_bytes(data)
        self.progress.sent(len(data))

    def _received(self, plan: SyncPlan, files: Sequence[LocalFile], need_free: int = 0) -> None:
        answer = self.helper.receive("receive")
        if answer.get("no_room"):
            check_disk(answer["no_room"], need_free - DISK_MARGIN_BYTES, self.host.name)
        ok = set(answer.get("ok") or [])
        for f in files:
            if f.rel in ok:
                plan.resume_at.pop(f.rel, None)
                plan.sent.append(f.rel)
        bad = answer.get("bad") or []
        if bad:
            raise EdgekitError(
                "%s did not take %d file(s) it received (first: %s: %s)" % (self.host.name, len(bad), bad[0][0], bad[0][1]),
                "rerun the deploy; if it repeats, check the board's disk and --remote-dir",
            )


def sync(host: Host, helper: RemoteHelper, remote_dir: str, files: Sequence[LocalFile], on_bytes: Optional[ByteCallback] = None) -> SyncStats:
    """:class:`Sync` without early files or a side task (what the deploy runs, minus the doctor)."""
    return Sync(host, helper, remote_dir, files, progress=_BytesCallback(on_bytes)).run()


def resolve_remote_root(sftp: Any, remote_dir: str) -> str:
    """Absolute path of ``--remote-dir`` on the target, ``~`` expanded, found over SFTP (no shell)."""
    home = sftp.normalize(".")
    if remote_dir == "~":
        return home
    if remote_dir.startswith("~/"):
        return posixpath.normpath(posixpath.join(home, remote_dir[2:]))
    return posixpath.normpath(posixpath.join(home, remote_dir))


def _pool_hashes(sftp: Any, root: str, skip: Sequence[str]) -> set:
    """sha256 of every file listed by the other bundles' manifests on the target."""
    pool = posixpath.join(root, "bundles")
    hashes: set = set()
    try:
        names = sftp.listdir(pool)
    except IOError:
        return hashes
    for name in names:
        if name in skip:
            continue
        try:
            with sftp.open(posixpath.join(pool, name, MANIFEST_NAME), "rb") as f:
                files = json.loads(f.read().decode("utf-8")).get("files") or {}
            hashes.update(e.get("sha256") for e in files.values() if isinstance(e, dict))
        except (IOError, ValueError, AttributeError):
            continue
    return hashes


def fresh_files(sftp: Any, root: str, files: Sequence[LocalFile]) -> List[LocalFile]:
    """Files the target certainly lacks and cannot take from another bundle: safe to
    send at once, before the helper (whose start costs a login shell) has planned.

    Each file lives in a content-addressed folder (``agent/<sha>``, ``bundles/<sha>``):
    when that folder does not exist, its files are fresh, except content some other
    bundle there already holds (the plan links those). Asked over SFTP: no shell.
    """
    folders: Dict[str, List[LocalFile]] = {}
    for f in files:
        folders.setdefault("/".join(f.rel.split("/")[:2]), []).append(f)
    fresh: List[LocalFile] = []
    pool: Optional[set] = None
    for folder, members in folders.items():
        if _exists(sftp, posixpath.join(root, folder)):
            continue
        if folder.startswith("bundles/"):
            if pool is None:
                pool = _pool_hashes(sftp, root, [k.split("/", 1)[1] for k in folders if k.startswith("bundles/")])
            members = [f for f in members if f.sha256 not in pool]
        fresh += members
    return fresh


def _exists(sftp: Any, path: str) -> bool:
    try:
        sftp.stat(path)
        return True
    except IOError:
        return False


def make_dirs(sftp: Any, root: str, rels: Sequence[str]) -> None:
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
