"""Which backend runs a bundle, and creating its runner for one variant.

``auto``: TensorRT when the bundle's profile asks for it, TensorRT imports and
the CUDA driver reports a GPU; ONNX Runtime otherwise (with the profile's
execution providers, which on a Jetson include TensorRT's and CUDA's).
"""
from typing import Any, Callable, Dict, List, Optional, Tuple

from edgekit.contract.errors import EdgekitError
from .base import CannotRun, Runner

from edgekit.contract.words import BACKEND_CHOICES


def tensorrt_available(info: Dict[str, Any]) -> Tuple[bool, str]:
    """(usable, reason when not) from the agent's ``info``."""
    runtimes = info.get("runtimes") or {}
    if not runtimes.get("tensorrt"):
        problem = (info.get("problems") or {}).get("tensorrt", "not installed")
        return False, "TensorRT cannot be imported (%s)" % problem
    if not info.get("gpu"):
        return False, "TensorRT is installed but no CUDA GPU is visible (%s)" % ((info.get("cuda") or {}).get("problem") or "no device")
    return True, ""


def choose_backend(requested: str, profile: Dict[str, Any], info: Dict[str, Any]) -> Tuple[str, List[str]]:
    """(backend name, warnings). An explicit request is honoured even if it will fail: the run says why."""
    if requested not in BACKEND_CHOICES:
        raise EdgekitError("unknown backend %r" % requested, "use one of %s" % ", ".join(BACKEND_CHOICES))
    if requested != "auto":
        return requested, []
    if profile.get("runtime") == "tensorrt":
        ok, reason = tensorrt_available(info)
        if ok:
            return "tensorrt", []
        providers = ", ".join(profile.get("providers") or ["CPUExecutionProvider"])
        return "onnxruntime", ["the bundle's profile asks for TensorRT, but %s; measuring with ONNX Runtime (%s) instead" % (reason, providers)]
    return "onnxruntime", []


def implicit_int8_only(variant: Dict[str, Any], manifest: Dict[str, Any]) -> bool:
    """An int8 variant whose model is the fp32 file (INT8 comes from a calibration cache alone)."""
    if variant.get("precision") != "int8":
        return False
    files = manifest.get("files") or {}
    mine = (files.get(variant["file"]) or {}).get("sha256")
    for other in manifest["variants"]:
        if other is not variant and other.get("precision") == "fp32":
            if (files.get(other["file"]) or {}).get("sha256") == mine:
                return True
    quant = variant.get("quantization")
    return isinstance(quant, dict) and quant.get("mode") == "implicit"


def create_runner(
    backend: str,
    bundle: Any,
    variant: Dict[str, Any],
    info: Dict[str, Any],
    providers: Optional[List[str]] = None,
    threads: Optional[int] = None,
    engines_dir: Optional[str] = None,
    log: Optional[Callable[[str, str], None]] = None,
    on_phase: Optional[Callable[[str], None]] = None,
    trt_int8: str = "auto",
    max_batch: int = 1,
) -> Runner:
    """The runner for ``variant`` on ``backend``; ``max_batch`` sizes TensorRT's optimisation profile (dynamic-batch bundles)."""
    manifest = bundle.manifest
    profile = manifest.get("profile") or {}
    model_file = variant["file"]
    model_path = bundle.path_of(model_file)
    input_spec = manifest["input"]
    if backend == "onnxruntime":
        if implicit_int8_only(variant, manifest):
            raise CannotRun(
                "variant %s is INT8 only through a TensorRT calibration cache; ONNX Runtime would run it as fp32" % variant["name"],
                "run it with TensorRT, or use a Q/DQ int8 variant",
            )
        from .onnxruntime_runner import OrtRunner

        bench = profile.get("benchmark") or {}
        return OrtRunner(
            model_path,
            model_file,
            variant["precision"],
            input_spec["name"],
            input_spec["shape"],
            providers=providers or profile.get("providers") or ["CPUExecutionProvider"],
            threads=int(threads if threads is not None else bench.get("threads", 0) or 0),
            engine_cache_dir=engines_dir,
            graph_precision=variant.get("graph_precision"),
        )
    if backend == "tensorrt":
        from .tensorrt_runner import TrtRunner

        trt_settings = dict(profile.get("tensorrt") or {})
        sparse = bool(variant.get("sparsity")) or bool(trt_settings.get("sparse_weights"))
        calibration = bundle.calibration_cache(variant)
        graph = bundle.calibration_graph_rel(variant)
        if variant["precision"] == "int8" and trt_int8 == "implicit" and graph:
            # Implicit INT8: TensorRT calibrates the fp32 graph from the cache's scales.
            model_file, model_path = graph, bundle.path_of(graph)
        return TrtRunner(
            model_path,
            model_file,
            bundle.file_sha256(model_file),
            variant["precision"],
            input_spec["name"],
            input_spec["shape"],
            info,
            trt_settings,
            sparse=sparse,
            calibration=calibration,
            engines_dir=engines_dir,
            log=log,
            on_phase=on_phase,
            int8_request=trt_int8,
            max_batch=max_batch if manifest["input"].get("batch") == "dynamic" else 1,
        )
    raise EdgekitError("unknown backend %r" % backend, "use one of %s" % ", ".join(BACKEND_CHOICES))
