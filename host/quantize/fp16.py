"""The fp16 variant.

TensorRT up to 10 builds fp16 engines from the fp32 graph with its FP16
builder flag, so there the fp16 variant shares the fp32 file. TensorRT 11
dropped that flag (it builds what the graph's types say), and ONNX Runtime's
GPU providers run what the graph says too: those targets get an fp16 graph,
made with onnxconverter-common, with fp32 inputs and outputs so the
preprocessing and postprocessing stay the same.
"""
import contextlib
import io
import warnings

import onnx

from edgekit.contract.errors import EdgekitError
from ..profiles import Profile


def needs_fp16_graph(profile: Profile) -> bool:
    """True when the target runs fp16 only from an fp16 graph."""
    if profile.runtime == "onnxruntime":
        return True
    try:
        major = int(str(profile.tensorrt.version).split(".")[0])
    except ValueError:
        return False
    return major >= 11


def to_fp16(src: str, dst: str) -> None:
    try:
        from onnxconverter_common import float16
    except ImportError:
        raise EdgekitError("an fp16 graph needs the onnxconverter-common package", "pip install onnxconverter-common, or drop fp16 from --variants")
    model = onnx.load(src)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        # keep_io_types: inputs/outputs stay fp32 (casts inside), so the agent feeds what it always feeds.
        converted = float16.convert_float_to_float16(model, keep_io_types=True)
    onnx.save(converted, dst)
