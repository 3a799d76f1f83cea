"""Q/DQ placement fix-ups after ONNX Runtime's quantizer, for TensorRT.

TensorRT fuses a residual Add into the convolution that produces one of its
inputs (conv + bias + activation + add in one kernel). That works when only
the *other* input, the skip connection, arrives quantized. ONNX Runtime's
quantizer does not know this rule, so after quantizing without Add the skip
inputs get their own Q/DQ pair here, with the scale calibrated for that tensor.
"""
from typing import Any, Dict, List, Tuple

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .calibrate import tensor_range
from edgekit.host.quantize.qdq_graph import GraphIndex


def _is_dequantized(index: GraphIndex, tensor: str) -> bool:
    node = index.producer.get(tensor)
    return node is not None and node.op_type == "DequantizeLinear"


def quantize_residual_skips(model: onnx.ModelProto, adds: List[Tuple[str, str, str]], ranges: Any, symmetric: bool = True) -> List[Dict[str, Any]]:
    """Insert Q/DQ on the skip input of each residual Add (symmetric int8, zero point 0).

    ``adds`` comes from graph.residual_adds on the float model; names are the
    same in the quantized one. Returns what was done, for the manifest.
    """
    index = GraphIndex(model)
    by_name = {n.name: n for n in model.graph.node}
    done: List[Dict[str, Any]] = []
    new_nodes: List[Tuple[int, List[onnx.NodeProto]]] = []
    for add_name, conv_input, skip_input in adds:
        node = by_name.get(add_name)
        if node is None:
            continue
        # The quantizer may already have rewritten the skip input to a DQ output.
        current = [t for t in node.input if t not in (conv_input,)]
        if not current:
            continue
        skip_now = current[0]
        if _is_dequantized(index, skip_now):
            done.append({"add": add_name, "skip": skip_input, "action": "already quantized"})
            continue
        r = tensor_range(ranges, skip_input)
        if r is None:
            continue
        amax = max(abs(r[0]), abs(r[1]), 1e-8)
        scale_name = "%s_skip_scale" % add_name
        zp_name = "%s_skip_zero_point" % add_name
        model.graph.initializer.append(numpy_helper.from_array(np.array(amax / 127.0, dtype=np.float32), scale_name))
        model.graph.initializer.append(numpy_helper.from_array(np.array(0, dtype=np.int8), zp_name))
        q_out = "%s_skip_quantized" % add_name
        dq_out = "%s_skip_dequantized" % add_name
        q = helper.make_node("QuantizeLinear", [skip_now, scale_name, zp_name], [q_out], name="%s_skip_QuantizeLinear" % add_name)
        dq = helper.make_node("DequantizeLinear", [q_out, scale_name, zp_name], [dq_out], name="%s_skip_DequantizeLinear" % add_name)
        for i, t in enumerate(node.input):
            if t == skip_now:
                node.input[i] = dq_out
        position = [i for i, n in enumerate(model.graph.node) if n.name == add_name][0]
        new_nodes.append((position, [q, dq]))
        done.append({"add": add_name, "skip": skip_input, "action": "quantized skip input", "scale": amax / 127.0})
    # Insert before each Add, from the back so positions stay valid (topological order kept).
    for position, nodes in sorted(new_nodes, key=lambda p: -p[0]):
        for n in reversed(nodes):
            model.graph.node.insert(position, n)
    return done


def qdq_tensors(model: onnx.ModelProto) -> Dict[str, Dict[str, Any]]:
    """Activation tensors quantized in a QDQ model -> {scale, zero_point} (weights excluded)."""
    inits = {i.name: i for i in model.graph.initializer}
    out: Dict[str, Dict[str, Any]] = {}
    for node in model.graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] in inits:
            continue
        scale = numpy_helper.to_array(inits[node.input[1]]) if node.input[1] in inits else None
        zp = numpy_helper.to_array(inits[node.input[2]]) if len(node.input) > 2 and node.input[2] in inits else None
        out[node.input[0]] = {
            "scale": float(np.ravel(scale)[0]) if scale is not None and scale.size == 1 else None,
            "zero_point": int(np.ravel(zp)[0]) if zp is not None and zp.size == 1 else None,
        }
    return out


def unquantize_tensors(model: onnx.ModelProto, tensors: List[str]) -> List[str]:
    """Remove the Q/DQ pair on each of ``tensors``: readers get the float tensor again.

    Used for the raw maps entering the detection head's decode tail: the
    convolution that produces one still takes int8 inputs and weights but
    writes float, so box regression keeps its precision.
    """
    wanted = set(tensors)
    graph = model.graph
    quant_nodes = [n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] in wanted]
    if not quant_nodes:
        return []
    drop = set()
    rename: Dict[str, str] = {}
    for q in quant_nodes:
        drop.add(q.name)
        for dq in graph.node:
            if dq.op_type == "DequantizeLinear" and dq.input[0] == q.output[0]:
                drop.add(dq.name)
                rename[dq.output[0]] = q.input[0]
    for node in graph.node:
        for i, t in enumerate(node.input):
            if t in rename:
                node.input[i] = rename[t]
    for out in graph.output:
        if out.name in rename:  # not expected for head maps; keep the graph valid anyway
            return []
    kept = [n for n in graph.node if n.name not in drop]
    del graph.node[:]
    graph.node.extend(kept)
    # Their scales and zero points are now unused; ONNX Runtime warns about those.
    used = {t for n in graph.node for t in n.input} | {o.name for o in graph.output}
    inits = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    return sorted({q.input[0] for q in quant_nodes})
