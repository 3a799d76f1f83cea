"""Optional: NVIDIA TensorRT Model Optimizer's ONNX PTQ for the TensorRT scheme.

Off by default. ``edgekit build --int8-tool modelopt``, ``EDGEKIT_INT8_TOOL=modelopt`` (or ``quantize_int8(tool=
"modelopt")``) makes the jetson-style int8 (scheme ``tensorrt``) with
``modelopt.onnx.quantization.quantize`` instead of ONNX Runtime's quantizer;
the result goes through the same TensorRT Q/DQ rules check, SQNR and
runtime-graph count. nvidia-modelopt is not a dependency of edgekit: its
``[onnx]`` extra pins ``onnxruntime-gpu~=1.24`` and ``onnx~=1.21`` and pulls
``cupy-cuda12x`` (x86 Linux), which would replace this project's CPU ONNX
Runtime; see docs/build.md for how it was installed and measured here.
"""
import contextlib
import io
import logging
import re
from typing import Any, Sequence

import numpy as np

from edgekit.contract.errors import EdgekitError

TOOLS = ("onnxruntime", "modelopt")
# edgekit's method -> modelopt's (it has max and entropy for int8).
METHODS = {"minmax": "max", "entropy": "entropy"}


def _module() -> Any:
    try:
        import modelopt.onnx.quantization as moq  # type: ignore
    except Exception as exc:  # ImportError, or its own "install optional [onnx] dependencies"
        raise EdgekitError(
            "int8 tool modelopt is not usable here (%s)" % str(exc).splitlines()[0],
            "install nvidia-modelopt as docs/build.md describes, or use the default int8 tool (onnxruntime)",
        )
    return moq


def check_usable(tool: str) -> None:
    """For modelopt: that it imports here (a build checks this before any work)."""
    if tool == "modelopt":
        _module()


def check_tool(tool: str, scheme: str) -> None:
    if tool not in TOOLS:
        raise EdgekitError("unknown int8 tool %r" % tool, "use one of: %s" % ", ".join(TOOLS))
    if tool == "modelopt" and scheme != "tensorrt":
        raise EdgekitError(
            "int8 tool modelopt writes TensorRT graphs, but this profile's scheme is %s" % scheme,
            "use it with a TensorRT profile (jetson), or use the default int8 tool (onnxruntime)",
        )


def quantize_with_modelopt(pre_path: str, out_path: str, inputs: Sequence[np.ndarray], method: str, exclude: Sequence[str]) -> None:
    """modelopt's int8 PTQ of ``pre_path`` on ``inputs`` (NCHW float batches), ``exclude`` nodes kept float, CPU calibration."""
    moq = _module()
    if method not in METHODS:
        raise EdgekitError("modelopt has no %s calibration" % method, "calibrate with minmax or entropy for the modelopt tool")
    logger = logging.getLogger()
    level = logger.level
    try:
        logger.setLevel(logging.ERROR)
        with contextlib.redirect_stdout(io.StringIO()):
            moq.quantize(
                onnx_path=pre_path,
                quantize_mode="int8",
                calibration_data=np.concatenate([np.asarray(x, np.float32) for x in inputs]),
                calibration_method=METHODS[method],
                calibration_eps=["cpu"],
                nodes_to_exclude=["^%s$" % re.escape(n) for n in exclude],
                high_precision_dtype="fp32",
                output_path=out_path,
                log_level="ERROR",
            )
    except EdgekitError:
        raise
    except Exception as exc:
        raise EdgekitError("modelopt could not quantize the graph: %s" % str(exc).splitlines()[0], "use the default int8 tool (onnxruntime)")
    finally:
        logger.setLevel(level)
