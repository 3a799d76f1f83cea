"""TensorRT engine cache under ``~/.edgekit/engines/`` (or $EDGEKIT_HOME/engines).

An engine is only valid for the exact model, builder settings, TensorRT and
CUDA versions, L4T release, GPU and DLA core it was built for, so the cache key
is the sha256 of all of them; change any and the agent builds afresh. Engines
are written to a temporary name in the same folder, then renamed, so a crash
or a full disk never leaves a half-written engine under a valid name. Stdlib only.
"""
import hashlib
import json
import os
import tempfile
from typing import Any, Dict, Optional

from edgekit.contract.errors import EdgekitError

# Bump when the agent changes how it builds engines: old entries stop matching.
ENGINE_FORMAT = 1
KEY_FIELDS = (
    "model_sha256",
    "precision",
    "build",
    "tensorrt",
    "cuda",
    "l4t",
    "gpu",
    "compute_capability",
    "dla_core",
)


def edgekit_home() -> str:
    return os.environ.get("EDGEKIT_HOME") or os.path.join(os.path.expanduser("~"), ".edgekit")


def engines_dir(override: Optional[str] = None) -> str:
    return override or os.path.join(edgekit_home(), "engines")


def key_fields(
    model_sha256: str,
    precision: str,
    build: Dict[str, Any],
    tensorrt: str,
    cuda: Optional[str],
    l4t: Optional[str],
    gpu: Optional[str],
    compute_capability: Optional[str],
    dla_core: int,
    calibration_sha256: Optional[str] = None,
) -> Dict[str, Any]:
    fields = {
        "format": ENGINE_FORMAT,
        "model_sha256": model_sha256,
        "precision": precision,
        "build": build,
        "tensorrt": tensorrt,
        "cuda": cuda,
        "l4t": l4t,
        "gpu": gpu,
        "compute_capability": compute_capability,
        "dla_core": int(dla_core),
    }
    if calibration_sha256:
        fields["calibration_sha256"] = calibration_sha256
    return fields


def cache_key(fields: Dict[str, Any]) -> str:
    """sha256 of the fields as canonical JSON (sorted keys): order never matters."""
    blob = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def engine_path(directory: str, key: str) -> str:
    return os.path.join(directory, "%s.engine" % key)


def read_engine(path: str) -> Optional[bytes]:
    try:
        with open(path, "rb") as f:
            return f.read()
    except (OSError, IOError):
        return None


def write_atomic(path: str, data: bytes, fields: Optional[Dict[str, Any]] = None) -> None:
    """Write ``data`` to ``path`` via a temporary file and a rename; a JSON sidecar records the key fields."""
    directory = os.path.dirname(path) or "."
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as exc:
        raise EdgekitError("cannot create the engine cache %s (%s)" % (directory, exc.strerror), "set EDGEKIT_HOME or --engine-cache to a writable folder")
    for target, payload in ((path, data), (path + ".json", None if fields is None else (json.dumps(fields, indent=2, sort_keys=True) + "\n").encode("utf-8"))):
        if payload is None:
            continue
        fd, tmp = tempfile.mkstemp(prefix=".%s." % os.path.basename(target), suffix=".partial", dir=directory)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(payload)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException as exc:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            if isinstance(exc, OSError):
                raise EdgekitError("cannot write the engine cache %s (%s)" % (target, exc.strerror), "free disk space or set --engine-cache to another folder")
            raise


def remove(path: str) -> None:
    for target in (path, path + ".json"):
        try:
            os.unlink(target)
        except OSError:
            pass
