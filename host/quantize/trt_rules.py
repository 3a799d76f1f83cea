"""TensorRT's documented rules for explicit-quantization (Q/DQ) ONNX graphs.

No TensorRT runs on the build machine, so every int8 graph built for a
TensorRT profile is checked against the rules TensorRT documents; each rule
names its source. A violation is a string naming the node and the rule.

Sources:
- [TRT-QDQ] TensorRT Developer Guide, "Working with Quantized Types" /
  "Explicit Quantization": "TensorRT only supports symmetric quantization"
  (zero point 0), INT8 Q/DQ scales are float, per-tensor or per-channel on the
  weights' output-channel axis (axis 0 for Conv weights).
- [ONNX-TRT-850] onnx/onnx-tensorrt issue #850 (and onnxruntime #14229): an
  int32 bias behind DequantizeLinear fails to parse ("only activation types
  allowed as input to this layer"): biases stay float, TensorRT quantizes them.
- [TRT-QDQ-PLACEMENT] TensorRT Developer Guide, "Q/DQ Layer-Placement
  Recommendations" and "Q/DQ Interaction with Graph Optimizations": TensorRT
  fuses QuantizeLinear -> DequantizeLinear pairs into the layers around them; a
  QuantizeLinear whose output reaches anything but a DequantizeLinear, or a
  DequantizeLinear fed by neither a QuantizeLinear nor a constant, has no pair
  to fuse and TensorRT rejects or falls back on it.
"""
from typing import Dict, List

import onnx
from onnx import numpy_helper

_ALLOWED_QUANT_TYPES = (onnx.TensorProto.INT8,)


def tensorrt_violations(model: onnx.ModelProto) -> List[str]:
    """Every breach of the rules above in ``model`` (empty when TensorRT can take it)."""
    graph = model.graph
    inits: Dict[str, onnx.TensorProto] = {i.name: i for i in graph.initializer}
    producer = {t: n for n in graph.node for t in n.output}
    consumers: Dict[str, List[onnx.NodeProto]] = {}
    for n in graph.node:
        for t in n.input:
            consumers.setdefault(t, []).append(n)
    problems: List[str] = []
    for node in graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        problems += _zero_point_problems(node, inits)
        if node.op_type == "DequantizeLinear":
            problems += _dequantize_problems(node, inits, producer)
        else:
            readers = consumers.get(node.output[0], [])
            odd = [r.name for r in readers if r.op_type != "DequantizeLinear"]
            if odd or not readers:
                problems.append("%s: QuantizeLinear output read by %s, not by a DequantizeLinear [TRT-QDQ-PLACEMENT]" % (node.name, odd or "nothing"))
    return problems


def _zero_point_problems(node: onnx.NodeProto, inits: Dict[str, onnx.TensorProto]) -> List[str]:
    if len(node.input) < 3 or not node.input[2]:
        return []  # no zero point: 0 and uint8 by default for Q, int8 needed: flagged by type below
    zp = inits.get(node.input[2])
    if zp is None:
        return ["%s: zero point %s is not a constant [TRT-QDQ]" % (node.name, node.input[2])]
    if zp.data_type not in _ALLOWED_QUANT_TYPES:
        return ["%s: zero point type %s, TensorRT takes int8 [TRT-QDQ]" % (node.name, onnx.TensorProto.DataType.Name(zp.data_type))]
    if numpy_helper.to_array(zp).any():
        return ["%s: zero point not 0 (asymmetric), TensorRT is symmetric only [TRT-QDQ]" % node.name]
    return []


def _dequantize_problems(node: onnx.NodeProto, inits: Dict[str, onnx.TensorProto], producer: Dict[str, onnx.NodeProto]) -> List[str]:
    source = node.input[0]
    if source in inits:
        if inits[source].data_type == onnx.TensorProto.INT32:
            return ["%s: int32 input %s (a quantized bias) [ONNX-TRT-850]" % (node.name, source)]
        return []  # a pre-quantized int8 weight: allowed
    upstream = producer.get(source)
    if upstream is None or upstream.op_type != "QuantizeLinear":
        return ["%s: input %s does not come from a QuantizeLinear [TRT-QDQ-PLACEMENT]" % (node.name, source)]
    return []
