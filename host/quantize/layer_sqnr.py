"""How much INT8 hurts: output SQNR, and which layers' quantization is worst.

SQNR (signal to quantization noise ratio, dB) = 20 log10(|x| / |x - q(x)|).

The model's output is judged per part, not as one tensor: a YOLO output holds
box coordinates (hundreds of pixels) beside probabilities (0-1), and over the
whole tensor the coordinates' energy would hide scores collapsing to zero.
Layers are ranked by the error their own quantization adds (the float
activation against its quantize-dequantize with the scale chosen for it, and
the same for weights), which needs one float pass and no trial quantizations.
"""
import math
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import onnx
from onnx import numpy_helper

from edgekit.host.quantize.qdq_graph import GraphIndex

EPS = 1e-12


def sqnr_db(reference: np.ndarray, candidate: np.ndarray) -> float:
    # float32 BLAS dot products: fast on large activations, and precise enough for a ratio in dB.
    ref = np.asarray(reference, np.float32).ravel()
    diff = ref - np.asarray(candidate, np.float32).ravel()
    signal = math.sqrt(max(float(np.dot(ref, ref)), 0.0))
    noise = math.sqrt(max(float(np.dot(diff, diff)), 0.0))
    if noise <= EPS:
        return 200.0  # identical: report a large finite number (JSON has no infinity)
    return 20.0 * math.log10(max(signal, EPS) / noise)


def output_parts(layout: str, shape: Sequence[int]) -> List[Tuple[str, Tuple[int, Optional[int], int]]]:
    """(part name, (start, stop, axis)) slices of one output that are judged separately."""
    if layout == "yolov5" and len(shape) == 3 and shape[-1] >= 6:
        return [("boxes", (0, 4, 2)), ("scores", (4, None, 2))]
    if layout == "yolov8" and len(shape) == 3 and shape[1] >= 5:
        return [("boxes", (0, 4, 1)), ("scores", (4, None, 1))]
    if layout == "boxes" and len(shape) == 3 and shape[-1] >= 6:
        return [("boxes", (0, 4, 2)), ("scores", (4, 5, 2))]
    return [("output", (0, None, -1))]


def _take(arr: np.ndarray, spec: Tuple[int, Optional[int], int]) -> np.ndarray:
    start, stop, axis = spec
    index = [slice(None)] * arr.ndim
    index[axis] = slice(start, stop)
    return arr[tuple(index)]


def output_sqnr(reference: List[List[np.ndarray]], candidate: List[List[np.ndarray]], layout: str) -> Dict[str, float]:
    """Per-part SQNR over all images; ``reference[i][k]`` is output k of image i."""
    result: Dict[str, float] = {}
    for k in range(len(reference[0])):
        for part, spec in output_parts(layout, reference[0][k].shape):
            ref = np.concatenate([_take(r[k], spec).ravel() for r in reference])
            got = np.concatenate([_take(c[k], spec).ravel() for c in candidate])
            name = part if len(reference[0]) == 1 else "output%d.%s" % (k, part)
            result[name] = round(sqnr_db(ref, got), 2)
    return result


def fake_quantize(x: np.ndarray, scale: float, zero_point: int, signed: bool) -> np.ndarray:
    qmin, qmax = (-128, 127) if signed else (0, 255)
    q = np.clip(np.round(x / scale) + zero_point, qmin, qmax)
    return ((q - zero_point) * scale).astype(np.float32)


def weight_sqnr(weight: np.ndarray, per_channel: bool) -> float:
    """SQNR of symmetric int8 weights (per output channel when asked), as the quantizer makes them."""
    w = weight.astype(np.float32)
    if per_channel and w.ndim > 1:
        amax = np.abs(w.reshape(w.shape[0], -1)).max(axis=1)
        scale = np.maximum(amax, EPS) / 127.0
        scale = scale.reshape((-1,) + (1,) * (w.ndim - 1))
    else:
        scale = max(float(np.abs(w).max()), EPS) / 127.0
    q = np.clip(np.round(w / scale), -127, 127) * scale
    return sqnr_db(w, q)


class Unit(object):
    """A group of nodes kept in float together, and why."""

    def __init__(self, nodes: List[str], sqnr: float, reason: str) -> None:
        self.nodes = nodes
        self.sqnr = sqnr
        self.reason = reason


def rank_units(
    float_model: onnx.ModelProto,
    activations: Dict[str, np.ndarray],
    qparams: Dict[str, Dict[str, Optional[float]]],
    signed: bool,
    per_channel: bool,
    excluded: Sequence[str],
    quantized_ops: Sequence[str],
) -> List[Unit]:
    """Exclusion units, worst local SQNR first.

    ``activations`` are float values of quantized tensors (several images
    concatenated), ``qparams`` their scales and zero points in the QDQ model.
    A bad activation blames the nodes that read it (and the node that wrote it,
    whose output quantization it is); a bad weight blames its layer.
    """
    index = GraphIndex(float_model)
    skip = set(excluded)
    units: List[Unit] = []
    for tensor, values in activations.items():
        params = qparams.get(tensor)
        if not params or params.get("scale") is None:
            continue
        q = fake_quantize(values, params["scale"], int(params["zero_point"] or 0), signed)
        db = sqnr_db(values, q)
        nodes = [n.name for n in index.consumers.get(tensor, []) if n.name not in skip and n.op_type in quantized_ops]
        producer = index.producer.get(tensor)
        if producer is not None and producer.name not in skip and producer.op_type in quantized_ops:
            nodes.append(producer.name)
        if nodes:
            units.append(Unit(sorted(set(nodes)), db, "activation %s: %.1f dB" % (tensor, db)))
    inits = {i.name: i for i in float_model.graph.initializer}
    for node in index.nodes:
        if node.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul") or node.name in skip or node.op_type not in quantized_ops:
            continue
        if len(node.input) > 1 and node.input[1] in inits:
            db = weight_sqnr(numpy_helper.to_array(inits[node.input[1]]), per_channel)
            units.append(Unit([node.name], db, "weights of %s: %.1f dB" % (node.name, db)))
    units.sort(key=lambda u: u.sqnr)
    return units

