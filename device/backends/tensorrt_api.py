"""Which TensorRT Python API a version speaks, and what a variant's build needs.

Pure logic, no ``import tensorrt``, so it is tested on machines without a GPU.

TensorRT's Python API changed twice in ways the agent meets:

- 8.x: I/O through *bindings* (``num_bindings``, ``get_binding_name``,
  ``binding_is_input``, ``execute_async_v2``); networks need the
  EXPLICIT_BATCH creation flag; INT8 by Q/DQ nodes (explicit) or by a
  calibrator (implicit); FP16/INT8 builder flags. 8.4 added
  ``set_memory_pool_limit`` (before it, ``max_workspace_size``).
- 10.x: bindings removed; named I/O tensors (``num_io_tensors``,
  ``get_tensor_name``, ``get_tensor_mode``, ``set_tensor_address``,
  ``execute_async_v3``); explicit batch is the only mode (flag ignored);
  implicit INT8 deprecated but working.
- 11.x: networks are always strongly typed: BuilderFlag.FP16/INT8 and the
  INT8 calibrator are removed; precision comes from the ONNX types, so an
  fp16 variant needs an fp16 ONNX and INT8 needs Q/DQ nodes.
"""
from typing import Any, Dict, NamedTuple, Optional, Tuple

from edgekit.contract.errors import EdgekitError
from .base import CannotRun

MIN_VERSION = (8, 0)
INT8_MODES = ("auto", "explicit", "implicit")


class TrtApi(NamedTuple):
    version: str
    major: int
    minor: int
    io: str  # "bindings" | "tensors"
    execute: str  # "execute_async_v2" | "execute_async_v3"
    network_flag: Optional[str]  # NetworkDefinitionCreationFlag member to set, if any
    precision_flags: bool  # BuilderFlag.FP16 / INT8 exist
    implicit_int8: bool  # IInt8Calibrator + config.int8_calibrator exist
    workspace: str  # "set_memory_pool_limit" | "max_workspace_size"


def parse_version(version: str) -> Tuple[int, int, int]:
    parts = []
    for piece in str(version).strip().split(".")[:3]:
        digits = ""
        for ch in piece:
            if not ch.isdigit():
                break
            digits += ch
        if not digits:
            break
        parts.append(int(digits))
    if not parts:
        raise EdgekitError("cannot read the TensorRT version %r" % (version,), "reinstall TensorRT's Python bindings")
    while len(parts) < 3:
        parts.append(0)
    return parts[0], parts[1], parts[2]


def select_api(version: str) -> TrtApi:
    major, minor, _patch = parse_version(version)
    if (major, minor) < MIN_VERSION:
        raise CannotRun("TensorRT %s is too old; the agent supports 8.0 and newer" % version, "upgrade JetPack/TensorRT, or use ONNX Runtime (--backend onnxruntime)")
    if major < 10:
        return TrtApi(
            version=version,
            major=major,
            minor=minor,
            io="bindings",
            execute="execute_async_v2",
            network_flag="EXPLICIT_BATCH",
            precision_flags=True,
            implicit_int8=True,
            workspace="set_memory_pool_limit" if (major, minor) >= (8, 4) else "max_workspace_size",
        )
    if major == 10:
        return TrtApi(version, major, minor, "tensors", "execute_async_v3", None, True, True, "set_memory_pool_limit")
    return TrtApi(version, major, minor, "tensors", "execute_async_v3", "STRONGLY_TYPED", False, False, "set_memory_pool_limit")


class BuildPlan(NamedTuple):
    """Everything that shapes the engine; also the precision part of its cache key."""

    flags: Tuple[str, ...]  # BuilderFlag member names, sorted
    int8_mode: Optional[str]  # None | "explicit" | "implicit"
    dla_core: int  # -1 for the GPU
    workspace_mb: int
    network_flag: Optional[str]
    warnings: Tuple[str, ...]

    def key_fields(self) -> Dict[str, Any]:
        return {"flags": list(self.flags), "int8_mode": self.int8_mode, "dla_core": self.dla_core, "workspace_mb": self.workspace_mb, "network_flag": self.network_flag}


def plan_build(
    api: TrtApi,
    precision: str,
    has_qdq: bool,
    has_fp16_tensors: bool,
    calibration_cache: Optional[bool],
    dla_core: int = -1,
    num_dla_cores: int = 0,
    sparse: bool = False,
    workspace_mb: int = 2048,
    model_file: str = "model",
    int8_request: str = "auto",
) -> BuildPlan:
    """Decide builder flags for one variant; CannotRun when this TensorRT cannot make it.

    ``calibration_cache`` is None when the bundle has none, else whether the cache
    was accepted (a rejected cache never reaches here: the caller fails loudly).
    ``int8_request``: "auto" (Q/DQ when the graph has them, else the cache),
    "explicit" (Q/DQ only) or "implicit" (the cache, on a graph without Q/DQ).
    """
    if int8_request not in INT8_MODES:
        raise EdgekitError("unknown INT8 mode %r" % int8_request, "use one of %s" % ", ".join(INT8_MODES))
    flags = []  # type: List[str]
    warnings = []  # type: List[str]
    int8_mode = None  # type: Optional[str]
    if precision == "fp16":
        if api.precision_flags:
            flags.append("FP16")
        elif not has_fp16_tensors:
            raise CannotRun(
                "TensorRT %s builds strongly typed networks and %s has no fp16 tensors, so it would run in fp32" % (api.version, model_file),
                "rebuild the bundle with an fp16 ONNX (e.g. ModelOpt AutoCast) for this variant",
            )
    elif precision == "int8":
        if int8_request == "explicit" and not has_qdq:
            raise CannotRun("%s has no Q/DQ nodes, so explicit INT8 is not possible" % model_file, "use --trt-int8 auto or implicit")
        if int8_request == "implicit" and has_qdq:
            raise CannotRun(
                "%s has Q/DQ nodes; implicit INT8 calibrates the fp32 graph" % model_file,
                "rebuild the bundle with trt_calibration_cache = true (it records the fp32 graph as calibration.trt_cache_graph)",
            )
        if has_qdq:
            int8_mode = "explicit"
            if api.precision_flags:
                # INT8 lets TensorRT use the Q/DQ scales; FP16 lets the layers left
                # unquantized (head, concat paths) run in half instead of fp32.
                flags.extend(["INT8", "FP16"])
        elif calibration_cache is not None:
            if not api.implicit_int8:
                raise CannotRun(
                    "TensorRT %s removed implicit INT8 calibration, and %s has no Q/DQ nodes" % (api.version, model_file),
                    "use a Q/DQ int8 variant (quantization scheme 'tensorrt')",
                )
            int8_mode = "implicit"
            flags.extend(["INT8", "FP16"])
            if api.major >= 10:
                warnings.append("implicit INT8 calibration is deprecated in TensorRT %s; prefer the Q/DQ variant" % api.version)
        else:
            raise CannotRun(
                "%s has neither Q/DQ nodes nor a TensorRT calibration cache, so TensorRT cannot make it INT8" % model_file,
                "rebuild the bundle with quantization scheme 'tensorrt' or trt_calibration_cache = true",
            )
    if sparse:
        flags.append("SPARSE_WEIGHTS")
    used_dla = -1
    if dla_core is not None and dla_core >= 0:
        if dla_core >= num_dla_cores:
            warnings.append("DLA core %d was requested but this board has %d DLA cores; building for the GPU" % (dla_core, num_dla_cores))
        elif precision == "fp32":
            warnings.append("DLA runs only fp16/int8; the fp32 variant is built for the GPU")
        else:
            used_dla = int(dla_core)
            flags.append("GPU_FALLBACK")
    return BuildPlan(
        flags=tuple(sorted(set(flags))),
        int8_mode=int8_mode,
        dla_core=used_dla,
        workspace_mb=int(workspace_mb),
        network_flag=api.network_flag,
        warnings=tuple(warnings),
    )


def load_calibration_cache(path: str, rel: str, trt_version: str) -> bytes:
    """The cache's bytes if this TensorRT will use it; a loud error if it would not.

    TensorRT compares the cache header with its own version and, on a mismatch,
    silently ignores the cache and calibrates with whatever batches it gets: with
    none, an uncalibrated engine. The agent checks first and refuses instead.
    """
    from edgekit.calibration import trt_cache

    try:
        with open(path, "rb") as f:
            data = f.read()
        cache = trt_cache.loads(data.decode("ascii"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise EdgekitError("%s is not a TensorRT calibration cache (%s)" % (rel, exc), "rebuild the bundle")
    ok, reason = trt_cache.accepts(cache.version, trt_version)
    if not ok:
        raise EdgekitError(
            "TensorRT would ignore %s and build an uncalibrated INT8 engine: %s" % (rel, reason),
            "rebuild the bundle with tensorrt.version = \"%s\" in the profile, or use the Q/DQ int8 variant" % trt_version,
        )
    return data
