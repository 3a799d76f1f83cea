"""``doctor``: what this board lacks to run a bundle, with the line that installs it.

Works on a board with nothing but Python: it imports only the standard library
and probes everything else.
"""
import sys
from typing import Any, Dict, Optional

from edgekit.contract.errors import EdgekitError


def _pip(package: str) -> str:
    return "pip3 install %s" % package


def install_lines(info: Dict[str, Any]) -> Dict[str, str]:
    jetson = bool(info.get("is_jetson"))
    jetpack = info.get("jetpack") or "your JetPack"
    py38 = sys.version_info < (3, 9)
    lines = {
        "numpy": _pip("'numpy<1.25'" if py38 else "numpy"),
        "pillow": _pip("pillow"),
        "pycocotools": _pip("pycocotools"),
        "onnxruntime": _pip("onnxruntime"),
        "tensorrt": "pip3 install tensorrt (needs an NVIDIA driver)",
        "cudart": "install the CUDA runtime matching your driver, or add its lib folder to LD_LIBRARY_PATH",
        "gpu": "install the NVIDIA driver (nvidia-smi must list the GPU)",
    }
    if jetson:
        lines["onnxruntime"] = "pip3 install the onnxruntime-gpu wheel for JetPack %s from the Jetson Zoo (https://elinux.org/Jetson_Zoo#ONNX_Runtime)" % jetpack
        lines["tensorrt"] = "sudo apt install python3-libnvinfer (part of JetPack: sudo apt install nvidia-jetpack); in a venv use --system-site-packages"
        lines["cudart"] = "sudo apt install nvidia-jetpack (CUDA comes with JetPack)"
        lines["gpu"] = "the Jetson GPU should always be present: check 'sudo tegrastats' and the L4T install"
        lines["pycocotools"] = "sudo apt install python3-dev && pip3 install pycocotools"
    return lines


def _check(name: str, ok: bool, required: bool, found: Any, needed_for: str, fix: str) -> Dict[str, Any]:
    return {"name": name, "ok": bool(ok), "required": bool(required), "found": found, "needed_for": needed_for, "fix": None if ok else fix}


def diagnose(bundle_path: Optional[str] = None, backend: str = "auto", info: Optional[Dict[str, Any]] = None, verify: bool = True) -> Dict[str, Any]:
    from .sysinfo import collect

    info = info if info is not None else collect()
    runtimes = info.get("runtimes") or {}
    problems = info.get("problems") or {}
    fixes = install_lines(info)
    checks = []  # type: List[Dict[str, Any]]
    bundle_desc = None  # type: Optional[Dict[str, Any]]
    profile = {}  # type: Dict[str, Any]
    task = None
    has_eval = False
    if bundle_path:
        from .bundle import Bundle

        try:
            with Bundle.open(bundle_path) as bundle:
                bundle_desc = bundle.describe()
                profile = bundle.manifest.get("profile") or {}
                task = bundle.manifest.get("task")
                has_eval = bool(bundle.eval_spec())
                if verify:
                    bad = bundle.verify_all()
                    checks.append(
                        _check(
                            "bundle files",
                            not bad,
                            True,
                            "%d files" % len(bundle.manifest["files"]) if not bad else "; ".join(bad[:3]) + (" (and %d more)" % (len(bad) - 3) if len(bad) > 3 else ""),
                            "every command",
                            "copy the bundle again or rebuild it",
                        )
                    )
        except EdgekitError as exc:
            checks.append(_check("bundle", False, True, exc.one_line(), "every command", exc.fix or "rebuild the bundle"))

    py_ok = sys.version_info >= (3, 8)
    checks.append(_check("python", py_ok, True, info.get("python"), "the agent", "install Python 3.8 or newer"))

    def found(name: str) -> Any:
        return runtimes.get(name) or problems.get(name) or "not installed"

    checks.append(_check("numpy", bool(runtimes.get("numpy")), True, found("numpy"), "bench, eval, run", fixes["numpy"]))
    checks.append(_check("pillow", bool(runtimes.get("pillow")), True, found("pillow"), "bench, eval, run (image decoding)", fixes["pillow"]))
    coco_needed = task == "detect" and has_eval
    checks.append(_check("pycocotools", bool(runtimes.get("pycocotools")), coco_needed, found("pycocotools"), "eval, run (COCO mAP)", fixes["pycocotools"]))

    wants_trt = backend == "tensorrt" or (backend == "auto" and profile.get("runtime") == "tensorrt")
    wants_ort = backend == "onnxruntime" or (backend == "auto" and profile.get("runtime") != "tensorrt")
    have_trt = bool(runtimes.get("tensorrt"))
    have_ort = bool(runtimes.get("onnxruntime"))
    ort_required = wants_ort or (not bundle_path and not have_trt)
    checks.append(_check("onnxruntime", have_ort, ort_required, found("onnxruntime"), "the ONNX Runtime backend", fixes["onnxruntime"]))
    if have_ort and profile.get("providers"):
        missing = [p for p in profile["providers"] if p not in (info.get("providers") or [])]
        checks.append(
            _check(
                "execution providers",
                not missing,
                False,
                ", ".join(info.get("providers") or []),
                "the profile's providers %s" % ", ".join(profile["providers"]),
                "install an onnxruntime build with %s" % ", ".join(missing),
            )
        )
    if wants_trt or have_trt or info.get("gpu"):
        checks.append(_check("tensorrt", have_trt, wants_trt, found("tensorrt"), "the TensorRT backend", fixes["tensorrt"]))
        checks.append(_check("gpu", bool(info.get("gpu")), wants_trt, ", ".join(g["name"] for g in info.get("gpu") or []) or (info.get("cuda") or {}).get("problem"), "the TensorRT backend", fixes["gpu"]))
        cudart_found = None
        cudart_ok = False
        try:
            from .cuda import CudaRuntime, version_string

            cudart_found = version_string(CudaRuntime().runtime_version())
            cudart_ok = True
        except EdgekitError as exc:
            cudart_found = exc.problem
        checks.append(_check("cuda runtime", cudart_ok, wants_trt, cudart_found, "the TensorRT backend (memory, streams)", fixes["cudart"]))
    ok = all(c["ok"] for c in checks if c["required"])
    return {"ok": ok, "bundle": bundle_desc, "backend": backend, "checks": checks, "device": {k: info.get(k) for k in ("hostname", "board", "l4t", "jetpack", "python")}}
