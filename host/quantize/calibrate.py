"""Activation ranges from real images, with bounded memory.

ONNX Runtime's histogram calibrators (entropy, percentile) keep every
intermediate tensor of every image in memory before building histograms,
which for large inputs exhausts memory. Here images are fed in chunks sized
to a memory budget; ONNX Runtime's collectors merge histograms (and min/max)
across calls, so the result is the same as one pass over all images.
"""
import contextlib
import io
import os
import tempfile
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import onnx

from edgekit.calibration.images import ImageBatch
from edgekit.calibration.readers import ImageBatchReader

from edgekit.contract.errors import EdgekitError

METHODS = ("minmax", "entropy", "percentile")
# Intermediate tensors kept at once while calibrating (bytes); override with
# EDGEKIT_CALIB_MEMORY_MB.
DEFAULT_BUDGET_MB = 1024


def _method(name: str) -> Any:
    from onnxruntime.quantization import CalibrationMethod

    return {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy, "percentile": CalibrationMethod.Percentile}[name]


def tensor_bytes_per_image(model_path: str, op_types: Sequence[str]) -> int:
    """Bytes of the tensors a histogram calibrator keeps for one image (from inferred shapes)."""
    model = onnx.shape_inference.infer_shapes(onnx.load(model_path))
    infos = {vi.name: vi for vi in list(model.graph.value_info) + list(model.graph.output) + list(model.graph.input)}
    inits = {i.name for i in model.graph.initializer}
    seen = set()
    total = 0
    for node in model.graph.node:
        if op_types and node.op_type not in op_types:
            continue
        for t in list(node.input) + list(node.output):
            if not t or t in seen or t in inits or t not in infos:
                continue
            seen.add(t)
            dims = [d.dim_value if d.HasField("dim_value") else 1 for d in infos[t].type.tensor_type.shape.dim]
            total += int(np.prod(dims)) * 4 if dims else 4
    return total


def chunk_size(model_path: str, op_types: Sequence[str], method: str, images: int, budget_mb: Optional[int] = None) -> int:
    """How many images to feed per collect call so kept tensors stay under the budget."""
    if method == "minmax":
        # min/max are reduced inside the graph: nothing large is kept, and one
        # pass keeps the per-image average exact.
        return images
    budget = (budget_mb or int(os.environ.get("EDGEKIT_CALIB_MEMORY_MB", DEFAULT_BUDGET_MB))) * (1 << 20)
    per_image = max(1, tensor_bytes_per_image(model_path, op_types))
    # ORT stacks a chunk into one array per tensor and np.histogram makes a
    # working copy: about 3x the raw bytes at the peak.
    return int(max(1, min(images, budget // (3 * per_image))))


def calibrate(
    model_path: str,
    batch: ImageBatch,
    input_name: str,
    method: str,
    op_types: Sequence[str],
    images: Optional[int] = None,
    percentile: float = 99.999,
    symmetric: bool = False,
    budget_mb: Optional[int] = None,
) -> Any:
    """Run ``images`` calibration images through the model; returns ONNX Runtime's TensorsData."""
    from onnxruntime.quantization.calibrate import create_calibrator

    if method not in METHODS:
        raise EdgekitError("calibration method %r is unknown" % method, "use one of %s" % ", ".join(METHODS))
    count = min(images or len(batch), len(batch))
    step = chunk_size(model_path, op_types, method, count, budget_mb)
    extra: Dict[str, Any] = {"symmetric": symmetric}
    if method == "percentile":
        extra["percentile"] = percentile
    if method == "minmax":
        # Each tensor's range is the mean over images of that image's min and max
        # (ONNX Runtime's moving-average option, over one pass): one outlier image
        # no longer sets the scale. On the demo, global min/max over 128 images
        # lost 1.1 mAP points in int8, this 0.5 (docs/build.md).
        extra["moving_average"] = True
    with tempfile.TemporaryDirectory(prefix="edgekit-calib-") as tmp, contextlib.redirect_stdout(io.StringIO()):
        calibrator = create_calibrator(
            model_path,
            list(op_types),
            augmented_model_path=os.path.join(tmp, "augmented.onnx"),
            calibrate_method=_method(method),
            extra_options=extra,
        )
        for start in range(0, count, step):
            reader = ImageBatchReader(batch, input_name, range(start, min(count, start + step)))
            calibrator.collect_data(reader)
        ranges = calibrator.compute_data()
        del calibrator
    return ranges


def tensor_range(ranges: Any, name: str) -> Optional[tuple]:
    if name not in ranges:
        return None
    lo, hi = ranges[name].range_value
    return float(np.min(lo)), float(np.max(hi))


def unify_ranges(ranges: Any, groups: List[List[str]]) -> int:
    """Give every tensor of a group the group's combined range; returns tensors changed."""
    from onnxruntime.quantization.calibrate import TensorData

    changed = 0
    for group in groups:
        present = [t for t in group if t in ranges]
        if len(present) < 2:
            continue
        lo = min(tensor_range(ranges, t)[0] for t in present)
        hi = max(tensor_range(ranges, t)[1] for t in present)
        for t in present:
            old = tensor_range(ranges, t)
            if old != (lo, hi):
                ranges[t] = TensorData(lowest=np.array(lo, dtype=np.float32), highest=np.array(hi, dtype=np.float32))
                changed += 1
    return changed
