"""Writes bundles atomically: everything goes to a hidden temporary folder beside
the destination, the manifest (with every file's sha256) is written last, and
the folder is renamed into place only when complete. A failed build leaves no
folder that could be mistaken for a bundle.

The manifest's shape is defined in edgekit.contract.manifest.
"""
import json
import os
import shutil
import tarfile
import tempfile
from typing import Any, Dict, Optional

from edgekit.contract.manifest import FORMAT, MANIFEST_NAME, Manifest, check_relative_path, sha256_file

from edgekit.contract.errors import EdgekitError


class BundleWriter(object):
    """Use as a context manager; call :meth:`commit` with the manifest to finish."""

    def __init__(self, out_dir: str, overwrite: bool = True) -> None:
        self.out_dir = os.path.abspath(out_dir)
        parent = os.path.dirname(self.out_dir)
        if os.path.exists(self.out_dir) and not os.path.isdir(self.out_dir):
            raise EdgekitError("output %s exists and is not a folder" % self.out_dir, "choose another --out")
        if os.path.isdir(self.out_dir) and not overwrite:
            raise EdgekitError("output %s already exists" % self.out_dir, "remove it or pass another --out")
        if os.path.isdir(self.out_dir) and os.listdir(self.out_dir) and not os.path.isfile(os.path.join(self.out_dir, MANIFEST_NAME)):
            # Never replace a folder of the user's that is not a bundle.
            raise EdgekitError("output %s is a non-empty folder that is not a bundle" % self.out_dir, "choose another --out")
        try:
            os.makedirs(parent, exist_ok=True)
            self.tmp_dir = tempfile.mkdtemp(prefix=".%s.partial-" % os.path.basename(self.out_dir), dir=parent)
        except OSError as exc:
            raise EdgekitError("cannot write to %s (%s)" % (parent, exc.strerror), "choose a writable --out folder")
        self.committed = False

    def __enter__(self) -> "BundleWriter":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if not self.committed:
            self.abort()

    def path(self, rel: str) -> str:
        """Absolute path for a bundle-relative file, parents created."""
        norm = check_relative_path(rel)
        full = os.path.join(self.tmp_dir, *norm.split("/"))
        os.makedirs(os.path.dirname(full), exist_ok=True)
        return full

    def add_file(self, rel: str, src: str, move: bool = False) -> str:
        dst = self.path(rel)
        (shutil.move if move else shutil.copyfile)(src, dst)
        return rel

    def add_bytes(self, rel: str, data: bytes) -> str:
        with open(self.path(rel), "wb") as f:
            f.write(data)
        return rel

    def add_json(self, rel: str, obj: Any) -> str:
        return self.add_bytes(rel, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode("utf-8"))

    def file_table(self) -> Dict[str, Dict[str, Any]]:
        table = {}
        for root, _dirs, files in os.walk(self.tmp_dir):
            for name in files:
                full = os.path.join(root, name)
                rel = os.path.relpath(full, self.tmp_dir).replace(os.sep, "/")
                if rel == MANIFEST_NAME:
                    continue
                table[rel] = {"sha256": sha256_file(full), "size": os.path.getsize(full)}
        return dict(sorted(table.items()))

    def commit(self, manifest: Dict[str, Any]) -> str:
        """Hash every file, write manifest.json, and move the bundle into place."""
        manifest = dict(manifest)
        manifest.setdefault("format", FORMAT)
        manifest["files"] = self.file_table()
        Manifest.from_dict(manifest, "the manifest being written")  # the record validates and must round-trip
        with open(os.path.join(self.tmp_dir, MANIFEST_NAME), "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        old: Optional[str] = None
        if os.path.isdir(self.out_dir):
            old = self.out_dir + ".old-%d" % os.getpid()
            os.rename(self.out_dir, old)
        os.rename(self.tmp_dir, self.out_dir)
        self.committed = True
        if old:
            shutil.rmtree(old, ignore_errors=True)
        return self.out_dir

    def abort(self) -> None:
        shutil.rmtree(self.tmp_dir, ignore_errors=True)


def pack_tar(bundle_dir: str, tar_path: str) -> str:
    """Pack a bundle folder as one .tar (written to a temporary name, then renamed)."""
    tmp = tar_path + ".partial"
    name = os.path.basename(os.path.abspath(bundle_dir))
    with tarfile.open(tmp, "w") as tar:
        tar.add(bundle_dir, arcname=name)
    os.replace(tmp, tar_path)
    return tar_path
