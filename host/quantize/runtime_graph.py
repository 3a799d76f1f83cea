"""What ONNX Runtime actually runs in float after it fuses a QDQ graph.

A QDQ file says little about the kernels that run: ONNX Runtime folds each
DequantizeLinear -> op -> QuantizeLinear group into one integer kernel
(QLinearConv, QLinearMul, ...) and leaves everything else as float ops. The
build reports the float nodes of the *optimized* graph, the one ONNX Runtime
writes to ``SessionOptions.optimized_model_filepath``, so the numbers match
what its profiler shows.
"""
import os
import tempfile
from typing import Any, Dict, List, Set

import onnx

# Conversions between float and integer: neither float compute nor int8 compute.
CONVERSIONS = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear")
# Ops that move or select data without arithmetic: they run in whatever type
# their first input has (uint8/int8 when it comes from an integer kernel).
TYPE_PRESERVING = (
    "Reshape", "Transpose", "Concat", "Split", "Slice", "Squeeze", "Unsqueeze", "Flatten",
    "MaxPool", "NhwcMaxPool", "Resize", "Identity", "Gather", "Pad", "Tile", "Expand", "DepthToSpace", "SpaceToDepth",
)
_INTEGER_TYPES = {onnx.TensorProto.UINT8, onnx.TensorProto.INT8}


def optimized_model(path: str, level: Any = None) -> onnx.ModelProto:
    """The graph ONNX Runtime's CPU provider runs for ``path`` (default: all optimizations)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = level if level is not None else ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    with tempfile.TemporaryDirectory(prefix="edgekit-opt-") as tmp:
        options.optimized_model_filepath = os.path.join(tmp, "optimized.onnx")
        ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])
        return onnx.load(options.optimized_model_filepath)


def _integer_tensors(model: onnx.ModelProto) -> Set[str]:
    """Tensors holding int8/uint8 data, by propagating types through the (topologically ordered) graph."""
    graph = model.graph
    integer = {i.name for i in graph.initializer if i.data_type in _INTEGER_TYPES}
    integer |= {i.name for i in graph.input if i.type.tensor_type.elem_type in _INTEGER_TYPES}
    for node in graph.node:
        if node.op_type == "QuantizeLinear" or node.op_type.startswith("QLinear") or node.op_type in ("QGemm", "QAttention"):
            integer.add(node.output[0])
        elif node.op_type in TYPE_PRESERVING and node.input and node.input[0] in integer:
            integer.update(node.output)
    return integer


def float_nodes(model: onnx.ModelProto) -> List[onnx.NodeProto]:
    """Nodes of an optimized graph that compute in float (conversions and integer kernels excluded)."""
    integer = _integer_tensors(model)
    found = []
    for node in model.graph.node:
        if node.op_type in CONVERSIONS or node.op_type.startswith("QLinear") or node.op_type in ("QGemm", "QAttention"):
            continue
        if node.op_type in TYPE_PRESERVING and node.input and node.input[0] in integer:
            continue
        if node.op_type in ("Shape", "Constant", "Size"):  # shape arithmetic, not tensor compute
            continue
        found.append(node)
    return found


def runtime_summary(path: str) -> Dict[str, Any]:
    """{"float_nodes": N, "by_op": {op: count}, "integer_nodes": M, "conversions": K} of the graph ORT runs."""
    model = optimized_model(path)
    floats = float_nodes(model)
    by_op: Dict[str, int] = {}
    for node in floats:
        by_op[node.op_type] = by_op.get(node.op_type, 0) + 1
    conversions = sum(1 for n in model.graph.node if n.op_type in CONVERSIONS)
    return {
        "float_nodes": len(floats),
        "by_op": dict(sorted(by_op.items())),
        "integer_nodes": len(model.graph.node) - len(floats) - conversions,
        "conversions": conversions,
        "names": [n.name for n in floats],
        "counted_on": "ONNX Runtime's optimized CPU graph (all optimizations)",
    }
