"""The agent's view of a bundle: open it (a folder, or a .tar unpacked safely),
map each file to what uses it, and hash-check files before they are used.

The manifest's shape and the hashing live in :mod:`edgekit.contract.manifest`;
this module only groups files (a variant's model and calibration cache, the
evaluation set) so that a bad file fails what depends on it and nothing else.
Stdlib only.
"""
import os
import shutil
import tarfile
import tempfile
from typing import Any, Dict, List, Optional, Tuple

from edgekit.contract.errors import EdgekitError
from edgekit.contract.manifest import MANIFEST_NAME, Manifest, check_relative_path, find_variant, manifest_sha256, read_manifest, resolve, verify_files


def _safe_extract(tar_path: str, dest: str) -> str:
    """Unpack a bundle .tar refusing links, devices and paths that leave ``dest``; returns the bundle folder."""
    try:
        tar = tarfile.open(tar_path, "r:*")
    except (tarfile.TarError, OSError) as exc:
        raise EdgekitError("%s is not a readable tar file (%s)" % (tar_path, exc), "copy the bundle again, or pass its folder")
    with tar:
        tops = set()
        for member in tar.getmembers():
            raw = member.name
            while raw.startswith("./"):
                raw = raw[2:]
            if raw in ("", "."):
                continue
            name = check_relative_path(raw.rstrip("/"), "tar member")
            if member.issym() or member.islnk() or not (member.isfile() or member.isdir()):
                raise EdgekitError("%s contains %s, which is not a plain file or folder" % (tar_path, member.name), "rebuild the bundle with edgekit build")
            tops.add(name.split("/")[0])
            target = os.path.join(dest, *name.split("/"))
            if member.isdir():
                os.makedirs(target, exist_ok=True)
                continue
            os.makedirs(os.path.dirname(target), exist_ok=True)
            src = tar.extractfile(member)
            if src is None:
                continue
            with src, open(target, "wb") as out:
                shutil.copyfileobj(src, out)
    if os.path.isfile(os.path.join(dest, MANIFEST_NAME)):
        return dest
    if len(tops) == 1:
        root = os.path.join(dest, tops.pop())
        if os.path.isfile(os.path.join(root, MANIFEST_NAME)):
            return root
    raise EdgekitError("%s has no %s" % (tar_path, MANIFEST_NAME), "pass a bundle written by edgekit build")


class Bundle(object):
    def __init__(self, root: str, manifest: Dict[str, Any], source: str, tmp: Optional[str] = None) -> None:
        self.root = root
        self.manifest = manifest
        self.record = Manifest.from_dict(manifest)  # the typed view of the same manifest
        self.source = source
        self._tmp = tmp
        self.sha256 = manifest_sha256(root)
        self._problems = {}  # type: Dict[str, Optional[str]]

    @classmethod
    def open(cls, path: str) -> "Bundle":
        if os.path.isfile(path) and (path.endswith(".tar") or tarfile.is_tarfile(path)):
            tmp = tempfile.mkdtemp(prefix="edgekit-bundle-")
            try:
                root = _safe_extract(path, tmp)
                return cls(root, read_manifest(root), path, tmp)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        if not os.path.isdir(path):
            raise EdgekitError("bundle %s is not a folder or .tar file" % path, "pass the folder written by edgekit build")
        return cls(path, read_manifest(path), path)

    def close(self) -> None:
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self) -> "Bundle":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # --- names -------------------------------------------------------------------

    @property
    def name(self) -> str:
        return str(self.manifest.get("name"))

    def describe(self) -> Dict[str, Any]:
        return {"name": self.name, "manifest_sha256": self.sha256, "path": os.path.abspath(self.source), "task": self.manifest.get("task")}

    def path_of(self, rel: str) -> str:
        return resolve(self.root, rel, "file")

    def file_sha256(self, rel: str) -> str:
        return str(self.manifest["files"][rel]["sha256"])

    def variants(self, names: Optional[List[str]] = None) -> List[Dict[str, Any]]:
        if not names:
            return list(self.manifest["variants"])
        return [find_variant(self.manifest, n) for n in names]

    def calibration_cache_rel(self, variant: Dict[str, Any]) -> Optional[str]:
        calib = variant.get("calibration")
        if isinstance(calib, dict):
            for key in ("cache", "trt_cache", "tensorrt_cache"):
                if isinstance(calib.get(key), str):
                    return check_relative_path(calib[key], "variants.calibration.%s" % key)
        default = "models/%s.calib.cache" % variant["name"]
        return default if default in self.manifest["files"] else None

    def calibration_graph_rel(self, variant: Dict[str, Any]) -> Optional[str]:
        """The fp32 graph a TensorRT calibration cache pairs with (implicit INT8), if the manifest names one."""
        calib = variant.get("calibration")
        if isinstance(calib, dict) and isinstance(calib.get("trt_cache_graph"), str):
            rel = check_relative_path(calib["trt_cache_graph"], "variants.calibration.trt_cache_graph")
            if rel not in self.manifest["files"]:
                raise EdgekitError("variant %s names calibration graph %s, which the manifest does not list" % (variant["name"], rel), "rebuild the bundle")
            return rel
        return None

    def calibration_cache(self, variant: Dict[str, Any]) -> Optional[Tuple[str, str, str]]:
        """(absolute path, manifest path, sha256) of the variant's TensorRT calibration cache."""
        rel = self.calibration_cache_rel(variant)
        if rel is None or rel not in self.manifest["files"]:
            return None
        return self.path_of(rel), rel, self.file_sha256(rel)

    def variant_files(self, variant: Dict[str, Any]) -> List[str]:
        files = [variant["file"]]
        cache = self.calibration_cache_rel(variant)
        if cache:
            if cache not in self.manifest["files"]:
                raise EdgekitError("variant %s names calibration cache %s, which the manifest does not list" % (variant["name"], cache), "rebuild the bundle")
            files.append(cache)
        graph = self.calibration_graph_rel(variant)
        if graph and graph not in files:
            files.append(graph)
        return files

    def eval_spec(self) -> Optional[Dict[str, Any]]:
        ev = self.manifest.get("eval")
        return ev if isinstance(ev, dict) and ev.get("images") else None

    def eval_files(self) -> List[str]:
        ev = self.eval_spec()
        if not ev:
            return []
        prefix = check_relative_path(ev["images"], "eval.images").rstrip("/") + "/"
        files = sorted(rel for rel in self.manifest["files"] if rel.startswith(prefix))
        for key in ("annotations", "labels"):
            if ev.get(key):
                rel = check_relative_path(ev[key], "eval.%s" % key)
                if rel not in self.manifest["files"]:
                    raise EdgekitError("the manifest's eval.%s %s is not listed in 'files'" % (key, rel), "rebuild the bundle")
                files.append(rel)
        return files

    # --- verification ---------------------------------------------------------------

    def verify(self, rels: List[str]) -> List[str]:
        """Hash-check these files (each at most once per agent run); returns problems."""
        todo = [r for r in dict.fromkeys(rels) if r not in self._problems]
        if todo:
            for rel in todo:
                self._problems[rel] = None if rel in self.manifest["files"] else "%s is not listed in the manifest" % rel
            # One pass over the manifest; each problem line starts with its file's path.
            by_length = sorted((r for r in todo if r in self.manifest["files"]), key=len, reverse=True)
            for problem in verify_files(self.root, self.manifest, only=set(by_length)):  # type: ignore[arg-type]
                for rel in by_length:
                    if problem.startswith(rel + " "):
                        self._problems[rel] = problem
                        break
        return [p for p in (self._problems[r] for r in rels) if p]

    def missing_files(self) -> List[str]:
        """Declared files that are not there at all (a cheap check, no hashing): the run
        says so even for files no variant uses, as verify does."""
        missing = []
        for rel in sorted(self.manifest["files"]):
            try:
                path = self.path_of(rel)
            except EdgekitError:
                continue  # refused by what uses it, with the reason
            if not os.path.isfile(path):
                missing.append(rel)
        return missing

    def verify_all(self) -> List[str]:
        return self.verify(sorted(self.manifest["files"]))

    def require_verified(self, rels: List[str], what: str) -> None:
        problems = self.verify(rels)
        if problems:
            more = " (and %d more)" % (len(problems) - 1) if len(problems) > 1 else ""
            raise EdgekitError("refusing %s: %s%s" % (what, problems[0], more), "copy the bundle again or rebuild it")

    def check_consistency(self) -> None:
        """The manifest's input shape must be what its preprocess block produces."""
        shape = self.manifest["input"].get("shape")
        pre = self.manifest.get("preprocess") or {}
        if not isinstance(shape, list) or len(shape) != 4 or not all(isinstance(d, int) for d in shape):
            raise EdgekitError("the manifest's input.shape %r is not [1, C, H, W] or [1, H, W, C]" % (shape,), "rebuild the bundle")
        size = pre.get("size")
        if size and pre.get("layout", "NCHW") == "NCHW":
            hw = shape[2:4]
        else:
            hw = shape[1:3]
        if size and list(size) != list(hw):
            raise EdgekitError(
                "the manifest's input.shape %s does not match its preprocess size %s" % (shape, list(size)),
                "rebuild the bundle",
            )
        if shape[0] != 1:
            raise EdgekitError("the manifest's input batch is %d; the agent measures batch 1" % shape[0], "export the model with batch size 1")
