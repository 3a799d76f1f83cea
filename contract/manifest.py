"""The bundle contract: ``manifest.json`` (format ``edgekit-bundle/1``).

This module is the one place the manifest's shape is written down. The host
writes bundles with edgekit.host.bundle (which imports the names below); the
agent reads them with :func:`load_bundle`. Python 3.8, stdlib only.

Layout::

    bundle/
      manifest.json
      models/<variant>.onnx           one per variant
      models/<variant>.calib.cache    TensorRT calibration table, when written
      reports/...                      pruning reports (JSON, PNG)
      eval/images/..., eval/instances.json   optional evaluation set

manifest.json::

    format          "edgekit-bundle/1"
    name            bundle name (str)
    created         ISO 8601 UTC time
    edgekit_version version of the host that wrote it
    profile         the resolved profile (edgekit.host.profiles.Profile.to_dict)
    task            "detect" | "classify"
    model           {source, params, macs, ...}: where the model came from
    input           {name, shape [1, 3, H, W], dtype, batch?}; batch is "dynamic" when
                    the graphs were exported with a symbolic batch dimension
                    (edgekit build --dynamic-batch: any batch size runs; shape
                    and outputs are still written for batch 1); absent (older
                    manifests, the default build) means the batch is fixed at 1
    outputs         [{name, shape}]
    preprocess      edgekit.calibration.preprocess.PreprocessSpec.to_dict()
    postprocess     edgekit.device.postprocess.PostprocessSpec.to_dict() (detect),
                    {layout: "logits", class_names, top_k} (classify)
    eval            null, or {images: dir, annotations: file (detect) | labels: file (classify), count}
    variants        [{name, precision, file, prune, calibration, quantization,
                      sparsity, simplified, parity, host_metrics, notes}]
                    as edgekit build writes them (docs/build.md has every field):
                      name         "fp32", "int8", "p30-int8" (30 % pruned), ...
                      graph_precision  fp16 only: "fp32" when the file is the fp32
                                   graph (TensorRT < 11 builds fp16 with its builder
                                   flag; the host has no fp16 metrics), "fp16" for an
                                   fp16 graph (fp32 inputs and outputs)
                      calibration  null, or {method, images, skipped_images,
                                   trt_cache: "models/<v>.calib.cache" (TensorRT
                                   implicit INT8), trt_cache_graph: the fp32 graph it
                                   pairs with}
                      simplified   {simplified, reason, nodes_before, nodes_after, ...}
                      parity       null, or {images, max_abs_error, cosine, ok, ...}
                      host_metrics null, or the 12 COCO stats by name + images, runtime
    files           {relative path: {sha256, size}} for every file but manifest.json

Paths in the manifest are relative POSIX paths that stay inside the bundle.
"""
import hashlib
import json
import os
from typing import Any, Dict, List, Optional

from .errors import EdgekitError
from .words import PRECISIONS, TASKS

FORMAT = "edgekit-bundle/1"
MANIFEST_NAME = "manifest.json"

REQUIRED_KEYS = ("format", "name", "created", "edgekit_version", "profile", "task", "input", "preprocess", "postprocess", "variants", "files")
VARIANT_KEYS = ("name", "precision", "file")

_CHUNK = 1 << 20


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def check_relative_path(rel: str, what: str = "path") -> str:
    """Reject manifest paths that are absolute or climb out of the bundle."""
    if not isinstance(rel, str) or not rel:
        raise EdgekitError("manifest %s %r is not a file name" % (what, rel), "rebuild the bundle with edgekit build")
    norm = rel.replace("\\", "/")
    parts = norm.split("/")
    if norm.startswith("/") or ".." in parts or (len(parts[0]) == 2 and parts[0][1] == ":"):
        raise EdgekitError(
            "manifest %s %r leaves the bundle" % (what, rel),
            "refusing to use it; rebuild the bundle with edgekit build",
        )
    return norm


def resolve(bundle_dir: str, rel: str, what: str = "path") -> str:
    """Absolute path of a manifest path, guaranteed inside bundle_dir (symlinks included)."""
    norm = check_relative_path(rel, what)
    root = os.path.realpath(bundle_dir)
    path = os.path.realpath(os.path.join(root, *norm.split("/")))
    if path != root and not path.startswith(root + os.sep):
        raise EdgekitError("manifest %s %r points outside the bundle" % (what, rel), "refusing to use it; rebuild the bundle")
    return path


_HEX = frozenset("0123456789abcdef")


def is_sha256(value: Any) -> bool:
    """64 lowercase hex characters: the only form a manifest (and a remote file name) may carry."""
    return isinstance(value, str) and len(value) == 64 and set(value) <= _HEX


def check_file_entry(rel: Any, entry: Any, where: str = MANIFEST_NAME) -> None:
    """One ``files`` entry, strictly typed: both ends (host deploy, agent) rely on it
    before a size is compared or a sha256 becomes part of a remote path."""
    check_relative_path(rel, "file")
    if not isinstance(entry, dict) or "sha256" not in entry or "size" not in entry:
        raise EdgekitError("%s: files[%r] needs sha256 and size" % (where, rel), "rebuild the bundle")
    size = entry["size"]
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise EdgekitError("%s: files[%r].size is %r, not a whole number of bytes >= 0" % (where, rel, size), "rebuild the bundle with edgekit build")
    if not is_sha256(entry["sha256"]):
        raise EdgekitError("%s: files[%r].sha256 is %r, not 64 lowercase hex characters" % (where, rel, entry["sha256"]), "rebuild the bundle with edgekit build")


def validate_manifest(data: Any, where: str = MANIFEST_NAME) -> Dict[str, Any]:
    """Check the manifest's shape; raises EdgekitError naming the bad key."""
    if not isinstance(data, dict):
        raise EdgekitError("%s is not a JSON object" % where, "rebuild the bundle with edgekit build")
    fmt = data.get("format")
    if fmt != FORMAT:
        raise EdgekitError(
            "%s has format %r, this agent reads %r" % (where, fmt, FORMAT),
            "deploy an agent that matches the host's edgekit version",
        )
    for key in REQUIRED_KEYS:
        if key not in data:
            raise EdgekitError("%s lacks key '%s'" % (where, key), "rebuild the bundle with edgekit build")
    if data["task"] not in TASKS:
        raise EdgekitError("%s: key 'task' is %r, expected one of %s" % (where, data["task"], ", ".join(TASKS)), "rebuild the bundle")
    if not isinstance(data["files"], dict):
        raise EdgekitError("%s: key 'files' must be an object" % where, "rebuild the bundle")
    if not isinstance(data["variants"], list) or not data["variants"]:
        raise EdgekitError("%s: key 'variants' is empty" % where, "rebuild the bundle with at least one variant")
    names = set()
    for i, variant in enumerate(data["variants"]):
        for key in VARIANT_KEYS:
            if not isinstance(variant, dict) or key not in variant:
                raise EdgekitError("%s: variants[%d] lacks key '%s'" % (where, i, key), "rebuild the bundle")
        if variant["precision"] not in PRECISIONS:
            raise EdgekitError("%s: variants[%d].precision is %r" % (where, i, variant["precision"]), "rebuild the bundle")
        if variant["name"] in names:
            raise EdgekitError("%s: variant name %r appears twice" % (where, variant["name"]), "rebuild the bundle")
        names.add(variant["name"])
        check_relative_path(variant["file"], "variants[%d].file" % i)
        if variant["file"] not in data["files"]:
            raise EdgekitError("%s: variants[%d].file %r is not listed in 'files'" % (where, i, variant["file"]), "rebuild the bundle")
    for rel, entry in data["files"].items():
        check_file_entry(rel, entry, where)
    ev = data.get("eval")
    if ev is not None and not isinstance(ev, dict):
        raise EdgekitError("%s: key 'eval' must be an object or null" % where, "rebuild the bundle")
    if ev:
        for key in ("images", "annotations", "labels"):
            if ev.get(key):
                check_relative_path(ev[key], "eval.%s" % key)
    return data


def read_manifest(bundle_dir: str) -> Dict[str, Any]:
    path = os.path.join(bundle_dir, MANIFEST_NAME)
    if not os.path.isfile(path):
        raise EdgekitError("%s has no %s" % (bundle_dir, MANIFEST_NAME), "pass a bundle directory written by edgekit build")
    try:
        with open(path, "r", encoding="utf-8") as f:
            data = json.load(f)
    except ValueError as exc:
        raise EdgekitError("%s is not valid JSON (%s)" % (path, exc), "the bundle is damaged; copy it again")
    return validate_manifest(data, path)


def manifest_sha256(bundle_dir: str) -> str:
    return sha256_file(os.path.join(bundle_dir, MANIFEST_NAME))


def verify_files(bundle_dir: str, manifest: Dict[str, Any], only: Optional[List[str]] = None) -> List[str]:
    """Hash-check the bundle's files; returns one problem string per bad file."""
    problems = []
    for rel, entry in sorted(manifest["files"].items()):
        if only is not None and rel not in only:
            continue
        path = resolve(bundle_dir, rel, "file")
        if not os.path.isfile(path):
            problems.append("%s is missing" % rel)
            continue
        size = os.path.getsize(path)
        if size != entry["size"]:
            problems.append("%s has %d bytes, the manifest says %d" % (rel, size, entry["size"]))
            continue
        if sha256_file(path) != entry["sha256"]:
            problems.append("%s does not match its sha256 in the manifest" % rel)
    return problems


def load_bundle(bundle_dir: str, verify: bool = True) -> Dict[str, Any]:
    """Read and validate a bundle's manifest, and (by default) check every file's hash."""
    if not os.path.isdir(bundle_dir):
        raise EdgekitError("bundle %s is not a directory" % bundle_dir, "pass the folder written by edgekit build (unpack a .tar first)")
    manifest = read_manifest(bundle_dir)
    if verify:
        problems = verify_files(bundle_dir, manifest)
        if problems:
            more = " (and %d more)" % (len(problems) - 1) if len(problems) > 1 else ""
            raise EdgekitError("bundle %s failed verification: %s%s" % (bundle_dir, problems[0], more), "copy the bundle again or rebuild it")
    return manifest


def find_variant(manifest: Dict[str, Any], name: str) -> Dict[str, Any]:
    for variant in manifest["variants"]:
        if variant["name"] == name:
            return variant
    raise EdgekitError(
        "bundle %s has no variant %r" % (manifest.get("name"), name),
        "use one of %s" % ", ".join(v["name"] for v in manifest["variants"]),
    )


# --- typed records ---------------------------------------------------------------
# The manifest as records: the host builds a Manifest and writes to_dict(); the
# agent reads with Manifest.from_dict(), which validates first. Free-form blocks
# that only one side interprets (profile, model, build, a variant's prune /
# calibration / quantization details) stay dicts inside the records.


BATCH_DYNAMIC = "dynamic"


class TensorInfo(object):
    def __init__(self, name: str, shape: List[Any], dtype: Optional[str] = None, batch: Optional[str] = None) -> None:
        if batch not in (None, BATCH_DYNAMIC):
            raise EdgekitError("manifest input batch %r is not understood" % (batch,), "rebuild the bundle (batch is \"dynamic\" or absent)")
        self.name = str(name)
        self.shape = list(shape)
        self.dtype = dtype
        self.batch = batch

    def to_dict(self) -> Dict[str, Any]:
        out = {"name": self.name, "shape": list(self.shape)}  # type: Dict[str, Any]
        if self.dtype is not None:
            out["dtype"] = self.dtype
        if self.batch is not None:
            out["batch"] = self.batch
        return out

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "TensorInfo":
        return cls(data["name"], data["shape"], data.get("dtype"), data.get("batch"))


class VariantRecord(object):
    """One variant: name, precision, file, and the build's details about it
    (prune, calibration, quantization, sparsity, simplified, parity,
    host_metrics, notes, graph_precision, ...: docs/build.md)."""

    def __init__(self, name: str, precision: str, file: str, details: Optional[Dict[str, Any]] = None) -> None:
        self.name = name
        self.precision = precision
        self.file = file
        self.details = dict(details or {})

    def to_dict(self) -> Dict[str, Any]:
        out = {"name": self.name, "precision": self.precision, "file": self.file}  # type: Dict[str, Any]
        out.update(self.details)
        return out

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "VariantRecord":
        details = {k: v for k, v in data.items() if k not in VARIANT_KEYS}
        return cls(data["name"], data["precision"], data["file"], details)


class Manifest(object):
    """manifest.json as a record (the keys are described in this module's docstring)."""

    def __init__(
        self,
        name: str,
        created: str,
        edgekit_version: str,
        profile: Dict[str, Any],
        task: str,
        input: TensorInfo,
        preprocess: Dict[str, Any],
        postprocess: Dict[str, Any],
        variants: List[VariantRecord],
        files: Optional[Dict[str, Dict[str, Any]]] = None,
        outputs: Optional[List[TensorInfo]] = None,
        model: Optional[Dict[str, Any]] = None,
        eval: Optional[Dict[str, Any]] = None,
        build: Optional[Dict[str, Any]] = None,
        extra: Optional[Dict[str, Any]] = None,
    ) -> None:
        self.name = name
        self.created = created
        self.edgekit_version = edgekit_version
        self.profile = profile
        self.task = task
        self.input = input
        self.preprocess = preprocess
        self.postprocess = postprocess
        self.variants = list(variants)
        self.files = dict(files or {})
        self.outputs = list(outputs or [])
        self.model = model
        self.eval = eval
        self.build = build
        self.extra = dict(extra or {})  # keys a newer host added: kept, never dropped

    _KNOWN = ("format", "name", "created", "edgekit_version", "profile", "task", "input", "preprocess", "postprocess",
              "variants", "files", "outputs", "model", "eval", "build")

    def to_dict(self) -> Dict[str, Any]:
        out = {
            "format": FORMAT,
            "name": self.name,
            "created": self.created,
            "edgekit_version": self.edgekit_version,
            "profile": self.profile,
            "task": self.task,
            "model": self.model,
            "input": self.input.to_dict(),
            "outputs": [o.to_dict() for o in self.outputs],
            "preprocess": self.preprocess,
            "postprocess": self.postprocess,
            "eval": self.eval,
            "variants": [v.to_dict() for v in self.variants],
            "build": self.build,
            "files": self.files,
        }  # type: Dict[str, Any]
        out.update(self.extra)
        return out

    @classmethod
    def from_dict(cls, data: Any, where: str = MANIFEST_NAME) -> "Manifest":
        validate_manifest(data, where)
        return cls(
            name=data["name"],
            created=data["created"],
            edgekit_version=data["edgekit_version"],
            profile=data["profile"],
            task=data["task"],
            input=TensorInfo.from_dict(data["input"]),
            preprocess=data["preprocess"],
            postprocess=data["postprocess"],
            variants=[VariantRecord.from_dict(v) for v in data["variants"]],
            files=data["files"],
            outputs=[TensorInfo.from_dict(o) for o in data.get("outputs") or []],
            model=data.get("model"),
            eval=data.get("eval"),
            build=data.get("build"),
            extra={k: v for k, v in data.items() if k not in cls._KNOWN},
        )

    def variant(self, name: str) -> VariantRecord:
        return VariantRecord.from_dict(find_variant(self.to_dict(), name))
