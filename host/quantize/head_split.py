"""Split each YOLO head convolution into box and score parts, so both run in int8.

ONNX Runtime's QLinearConv writes one per-tensor scale. A YOLOv5 head conv
writes, per anchor, box logits (xy, wh) beside objectness and class logits;
one scale over all of them cost 1.5 mAP points on the demo, so these convs
used to write float and ran as float ``Conv``, the most expensive float ops
left in the graph. Here each head conv becomes one conv per (anchor, part)
with the matching rows of its weight and bias, concatenated back in the
original channel order: float-identical, but every part gets its own output
scale and runs as QLinearConv; only the Concat (cheap) stays float.
"""
from typing import Dict, List, Optional, Tuple

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgekit.host.quantize.qdq_graph import GraphIndex

# (start, stop) channels of one anchor's outputs; None = to the end. Box
# (x, y, w, h) and scores (objectness, classes): two parts measured best on the
# demo (mAP 0.748 against 0.745 with xy/wh apart, 0.735 unsplit).
PARTS: Tuple[Tuple[int, Optional[int]], ...] = ((0, 4), (4, None))


def _outputs_per_anchor(index: GraphIndex, tensor: str) -> Optional[int]:
    """``no`` from the YOLOv5 Reshape [batch, anchors, no, h, w] that reads ``tensor`` (None if not that layout)."""
    for reader in index.consumers.get(tensor, []):
        if reader.op_type != "Reshape" or len(reader.input) < 2:
            continue
        shape = [i for i in index.model.graph.initializer if i.name == reader.input[1]]
        if shape:
            dims = numpy_helper.to_array(shape[0])
            if dims.ndim == 1 and len(dims) == 5 and dims[2] > 4:
                return int(dims[2])
    return None


def split_head_convs(model: onnx.ModelProto, head_maps: List[str]) -> List[str]:
    """Split, in place, the convs that write ``head_maps``; returns the parts' output tensors (to be quantized)."""
    index = GraphIndex(model)
    inits: Dict[str, onnx.TensorProto] = {i.name: i for i in model.graph.initializer}
    replaced: List[Tuple[onnx.NodeProto, List[onnx.NodeProto]]] = []
    for tensor in head_maps:
        conv = index.producer.get(tensor)
        if conv is None or conv.op_type != "Conv" or len(conv.input) < 3 or conv.input[1] not in inits or conv.input[2] not in inits:
            continue
        no = _outputs_per_anchor(index, tensor)
        weight = numpy_helper.to_array(inits[conv.input[1]])
        bias = numpy_helper.to_array(inits[conv.input[2]])
        if no is None or weight.shape[0] % no:
            continue
        nodes = []
        for anchor in range(weight.shape[0] // no):
            for k, (start, stop) in enumerate(PARTS):
                rows = slice(anchor * no + start, anchor * no + (no if stop is None else stop))
                name = "%s_anchor%d_part%d" % (conv.name, anchor, k)
                model.graph.initializer.extend(
                    [numpy_helper.from_array(np.ascontiguousarray(weight[rows]), name + "_W"), numpy_helper.from_array(np.ascontiguousarray(bias[rows]), name + "_B")]
                )
                part = helper.make_node("Conv", [conv.input[0], name + "_W", name + "_B"], [name + "_out"], name=name)
                part.attribute.extend(conv.attribute)
                nodes.append(part)
        nodes.append(helper.make_node("Concat", [n.output[0] for n in nodes], [tensor], name=conv.name + "_concat", axis=1))
        replaced.append((conv, nodes))
    for conv, nodes in replaced:
        position = list(model.graph.node).index(conv)
        model.graph.node.remove(conv)
        for k, node in enumerate(nodes):
            model.graph.node.insert(position + k, node)
    used = {t for n in model.graph.node for t in n.input}
    kept = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    return [n.output[0] for _, nodes in replaced for n in nodes if n.op_type == "Conv"]
