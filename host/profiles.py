"""Target profiles: load, inherit (``extends``), validate, resolve.

A profile is a TOML file describing one kind of board. Built-in profiles live in
the ``edgekit.profiles`` package; ``--profile`` also takes a path to a user's
own file, which may ``extends`` a built-in name or another file (relative to
itself). Every problem is an :class:`EdgekitError` naming the file and the key.

The resolved profile is embedded in each bundle's manifest as plain JSON
(:meth:`Profile.to_dict`), so the device never parses TOML.
"""
import dataclasses
import os
import sys
from typing import Any, Callable, Dict, List, Optional, Tuple

from edgekit.profiles import BUILTIN_DIR

from edgekit.contract.errors import EdgekitError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 hosts
    import tomli as tomllib

RUNTIMES = ("tensorrt", "onnxruntime")
from edgekit.contract.words import PRECISIONS
QUANT_SCHEMES = ("tensorrt", "u8s8", "s8s8")
CALIB_METHODS = ("minmax", "entropy", "percentile")


@dataclasses.dataclass(frozen=True)
class QuantizationSettings:
    """How the int8 variant is made (see edgekit.host.quantize)."""

    scheme: str = "u8s8"
    method: str = "minmax"
    images: int = 128
    per_channel: bool = True
    percentile: float = 99.999
    keep_head_float: bool = True
    # Mixed precision: layers whose quantization hurts most stay float until the
    # output's signal-to-quantization-noise ratio reaches this (dB); 0 disables.
    snr_target_db: float = 20.0
    trt_calibration_cache: bool = False


@dataclasses.dataclass(frozen=True)
class BenchmarkSettings:
    """Agent latency defaults; the agent's command line may override them."""

    warmup: int = 10
    warmup_seconds: float = 0.0
    iterations: int = 100
    min_seconds: float = 0.0
    threads: int = 0


@dataclasses.dataclass(frozen=True)
class TensorRTSettings:
    """Engine build settings used on the board (ignored by ONNX Runtime)."""

    # The exact TensorRT release on the board (8.5.2 = JetPack 5.1): the implicit
    # calibration cache header must match it digit for digit.
    version: str = "8.5.2"
    workspace_mb: int = 2048
    dla_core: int = -1
    sparse_weights: bool = False


@dataclasses.dataclass(frozen=True)
class Profile:
    name: str
    description: str
    runtime: str
    providers: Tuple[str, ...]
    variants: Tuple[str, ...]
    alignment: int
    opset: int
    input_size: Tuple[int, int]
    unsupported_ops: Tuple[str, ...]
    max_drift: float
    quantization: QuantizationSettings
    benchmark: BenchmarkSettings
    tensorrt: TensorRTSettings
    source: str = ""
    extends: Tuple[str, ...] = ()

    def to_dict(self) -> Dict[str, Any]:
        """Plain JSON-able form, as stored in a bundle's manifest."""
        data = dataclasses.asdict(self)
        for key, value in list(data.items()):
            if isinstance(value, tuple):
                data[key] = list(value)
        return data


# --- schema -----------------------------------------------------------------

Check = Callable[[Any], Optional[str]]  # returns a complaint, or None when fine


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _int(lo: int, hi: int) -> Check:
    def check(v: Any) -> Optional[str]:
        if not _is_int(v):
            return "must be an integer"
        if not lo <= v <= hi:
            return "must be between %d and %d" % (lo, hi)
        return None

    return check


def _number(lo: float, hi: float) -> Check:
    def check(v: Any) -> Optional[str]:
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            return "must be a number"
        if not lo <= v <= hi:
            return "must be between %g and %g" % (lo, hi)
        return None

    return check


def _string(v: Any) -> Optional[str]:
    return None if isinstance(v, str) else "must be a string"


def _bool(v: Any) -> Optional[str]:
    return None if isinstance(v, bool) else "must be true or false"


def _choice(options: Tuple[str, ...]) -> Check:
    def check(v: Any) -> Optional[str]:
        if not isinstance(v, str) or v not in options:
            return "must be one of %s (got %r)" % (", ".join(options), v)
        return None

    return check


def _string_list(choices: Optional[Tuple[str, ...]] = None, nonempty: bool = False) -> Check:
    def check(v: Any) -> Optional[str]:
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            return "must be a list of strings"
        if nonempty and not v:
            return "must not be empty"
        if choices:
            bad = [x for x in v if x not in choices]
            if bad:
                return "has unknown value %r; known: %s" % (bad[0], ", ".join(choices))
        if len(set(v)) != len(v):
            return "lists a value twice"
        return None

    return check


def _power_of_two(v: Any) -> Optional[str]:
    if not _is_int(v) or v < 1 or v & (v - 1):
        return "must be a positive power of two (1, 2, 4, 8, 16, ...), got %r" % (v,)
    return None


def _input_size(v: Any) -> Optional[str]:
    if not (isinstance(v, list) and len(v) == 2 and all(_is_int(x) for x in v)):
        return "must be [height, width] in pixels"
    if any(x < 32 or x % 32 for x in v):
        return "must be multiples of 32 of at least 32 (YOLO strides), got %r" % (v,)
    return None


# key -> check, for top-level scalars; sections map to their dataclass.
TOP_LEVEL: Dict[str, Check] = {
    "name": _string,
    "description": _string,
    "extends": _string,
    "runtime": _choice(RUNTIMES),
    "providers": _string_list(nonempty=True),
    "variants": _string_list(PRECISIONS, nonempty=True),
    "alignment": _power_of_two,
    "opset": _int(7, 23),
    "input_size": _input_size,
    "unsupported_ops": _string_list(),
    "max_drift": _number(0.0, 1.0),
}
SECTIONS: Dict[str, Dict[str, Check]] = {
    "quantization": {
        "scheme": _choice(QUANT_SCHEMES),
        "method": _choice(CALIB_METHODS),
        "images": _int(1, 100000),
        "per_channel": _bool,
        "percentile": _number(90.0, 100.0),
        "keep_head_float": _bool,
        "snr_target_db": _number(0.0, 100.0),
        "trt_calibration_cache": _bool,
    },
    "benchmark": {
        "warmup": _int(0, 100000),
        "warmup_seconds": _number(0.0, 3600.0),
        "iterations": _int(1, 10000000),
        "min_seconds": _number(0.0, 3600.0),
        "threads": _int(0, 1024),
    },
    "tensorrt": {
        "version": _string,
        "workspace_mb": _int(16, 1 << 20),
        "dla_core": _int(-1, 7),
        "sparse_weights": _bool,
    },
}
DEFAULTS: Dict[str, Any] = {
    "description": "",
    "providers": ["CPUExecutionProvider"],
    "variants": ["fp32"],
    "alignment": 1,
    "opset": 17,
    "input_size": [640, 640],
    "unsupported_ops": [],
    "max_drift": 0.01,
}


# --- loading ----------------------------------------------------------------


def builtin_names() -> List[str]:
    return sorted(f[: -len(".toml")] for f in os.listdir(BUILTIN_DIR) if f.endswith(".toml"))


def _locate(ref: str, relative_to: Optional[str]) -> str:
    """A profile reference is a built-in name or a path to a .toml file."""
    looks_like_path = ref.endswith(".toml") or os.sep in ref or ref.startswith(".")
    if looks_like_path:
        path = ref
        if relative_to and not os.path.isabs(path):
            path = os.path.join(os.path.dirname(relative_to), path)
        if not os.path.isfile(path):
            raise EdgekitError(
                "profile file %s not found" % path,
                "check the path, or use a built-in profile: %s" % ", ".join(builtin_names()),
            )
        return os.path.abspath(path)
    path = os.path.join(BUILTIN_DIR, ref + ".toml")
    if not os.path.isfile(path):
        where = " (extended by %s)" % relative_to if relative_to else ""
        raise EdgekitError(
            "unknown profile %r%s" % (ref, where),
            "use one of %s, or a path to a .toml file" % ", ".join(builtin_names()),
        )
    return path


def _read_toml(path: str) -> Dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise EdgekitError("%s is not valid TOML: %s" % (path, exc), "fix the syntax at that line")
    except OSError as exc:
        raise EdgekitError("cannot read profile %s: %s" % (path, exc.strerror), "check the file's permissions")


def _check_keys(path: str, data: Dict[str, Any]) -> None:
    """Validate one file's own keys (before merging, so errors name the right file)."""
    for key, value in data.items():
        if key in SECTIONS:
            if not isinstance(value, dict):
                raise EdgekitError("%s: key '%s' must be a table ([%s])" % (path, key, key), "write it as a [%s] section" % key)
            for sub, subvalue in value.items():
                check = SECTIONS[key].get(sub)
                if check is None:
                    raise EdgekitError(
                        "%s: unknown key '%s.%s'" % (path, key, sub),
                        "remove it or use one of: %s" % ", ".join(SECTIONS[key]),
                    )
                complaint = check(subvalue)
                if complaint:
                    raise EdgekitError("%s: key '%s.%s' %s" % (path, key, sub, complaint), "fix that value")
            continue
        check = TOP_LEVEL.get(key)
        if check is None:
            raise EdgekitError(
                "%s: unknown key '%s'" % (path, key),
                "remove it or use one of: %s" % ", ".join(list(TOP_LEVEL) + list(SECTIONS)),
            )
        complaint = check(value)
        if complaint:
            raise EdgekitError("%s: key '%s' %s" % (path, key, complaint), "fix that value")


def _merge(base: Dict[str, Any], child: Dict[str, Any]) -> Dict[str, Any]:
    out = dict(base)
    for key, value in child.items():
        if key in SECTIONS and key in out:
            merged = dict(out[key])
            merged.update(value)
            out[key] = merged
        else:
            out[key] = value
    return out


def _load_chain(ref: str, relative_to: Optional[str], seen: Tuple[str, ...]) -> Tuple[Dict[str, Any], Tuple[str, ...]]:
    path = _locate(ref, relative_to)
    if path in seen:
        chain = " -> ".join(os.path.basename(p) for p in seen + (path,))
        raise EdgekitError("%s: key 'extends' makes a cycle (%s)" % (path, chain), "remove one of the 'extends' lines")
    data = _read_toml(path)
    _check_keys(path, data)
    # A profile's name is its own (or its file's), never inherited from its parent.
    data.setdefault("name", os.path.splitext(os.path.basename(path))[0])
    chain = seen + (path,)
    parent = data.get("extends")
    if parent is None:
        return data, chain
    try:
        base, chain = _load_chain(parent, path, chain)
    except EdgekitError as exc:
        if "unknown profile" in exc.problem or "not found" in exc.problem:
            raise EdgekitError("%s: key 'extends' names %s" % (path, exc.problem), exc.fix)
        raise
    merged = _merge(base, {k: v for k, v in data.items() if k != "extends"})
    return merged, chain


def load_profile(ref: str) -> Profile:
    """Load a built-in profile by name, or a user's profile file by path."""
    data, chain = _load_chain(ref, None, ())
    path = chain[0]
    resolved: Dict[str, Any] = dict(DEFAULTS)
    resolved.update({k: v for k, v in data.items() if k not in SECTIONS})
    if "runtime" not in resolved:
        raise EdgekitError("%s: key 'runtime' is missing" % path, "set runtime = \"onnxruntime\" or \"tensorrt\" (or extends a built-in profile)")
    name = resolved["name"]
    if resolved["runtime"] == "onnxruntime" and "fp16" in resolved["variants"]:
        # ORT's CPU provider runs fp16 graphs by casting back to fp32: not a real variant.
        if resolved["providers"] == ["CPUExecutionProvider"]:
            raise EdgekitError(
                "%s: key 'variants' asks for fp16 but the only provider is CPUExecutionProvider" % path,
                "drop fp16 or add a GPU execution provider",
            )
    sections = {}
    for section, cls in (("quantization", QuantizationSettings), ("benchmark", BenchmarkSettings), ("tensorrt", TensorRTSettings)):
        values = dict(data.get(section, {}))
        for key, value in values.items():
            if isinstance(getattr(cls, key), float):
                values[key] = float(value)  # TOML writes 20 for 20.0
        sections[section] = cls(**values)
    if "int8" in resolved["variants"] and resolved["runtime"] == "tensorrt" and sections["quantization"].scheme != "tensorrt":
        raise EdgekitError(
            "%s: key 'quantization.scheme' is %r but runtime is tensorrt" % (path, sections["quantization"].scheme),
            'set scheme = "tensorrt" (symmetric int8 Q/DQ)',
        )
    return Profile(
        name=name,
        description=resolved["description"],
        runtime=resolved["runtime"],
        providers=tuple(resolved["providers"]),
        variants=tuple(resolved["variants"]),
        alignment=resolved["alignment"],
        opset=resolved["opset"],
        input_size=(resolved["input_size"][0], resolved["input_size"][1]),
        unsupported_ops=tuple(resolved["unsupported_ops"]),
        max_drift=float(resolved["max_drift"]),
        source=path,
        extends=tuple(os.path.splitext(os.path.basename(p))[0] for p in chain[1:]),
        **sections,
    )


def list_profiles() -> List[Profile]:
    return [load_profile(name) for name in builtin_names()]
