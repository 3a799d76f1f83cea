"""Split each YOLO head convolution into a box and a score part, so both run in int8.

ONNX Runtime's QLinearConv writes one per-tensor scale. A YOLOv5 head conv
writes, per anchor, box logits (x, y, w, h) beside objectness and class
logits; one scale over all of them cost 1.5 mAP points on the demo, so these
convs used to write float and ran as float ``Conv``.

Here each head conv ``Conv -> Reshape [b, na, no, h, w]`` becomes two convs
(every anchor's box rows of the weight and bias, then every anchor's score
rows), each with its own Reshape to ``[b, na, 4, h, w]`` and
``[b, na, no - 4, h, w]``, joined on the ``no`` axis: float-identical. Where
the tail goes on with the usual ``Transpose (0, 1, 3, 4, 2) -> Sigmoid``, the
Transpose and the Sigmoid move into both branches too and the join moves after
them (axis 4). Then:

- the score branch (Reshape, Transpose, Sigmoid) can run in int8: objectness
  and class probabilities in 0-1 fit one uint8/int8 scale
  (``QLinearSigmoid``; its data movement on one-byte values);
- the box branch moves its bytes in int8 too, and only its Sigmoid and the
  grid/anchor arithmetic after it run in float, as before.

An earlier version split per anchor and part (6 convs a head, 18 on YOLOv5):
float-identical as well, but every part paid its own im2col/GEMM call and its
own NHWC-to-NCHW transpose, which made edgekit's int8 slower than ONNX
Runtime's plain quantizer.
"""
import dataclasses
from typing import Dict, List, Optional

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgekit.host.quantize.qdq_graph import GraphIndex

BOX = 4  # x, y, w, h: the rows of each anchor that are box logits
TAIL_PERM = [0, 1, 3, 4, 2]  # YOLOv5's [b, na, no, h, w] -> [b, na, h, w, no]


@dataclasses.dataclass
class HeadSplit:
    """What the split made: conv outputs (quantized) and the tail nodes that may run int8."""

    parts: List[str]  # the new convs' outputs
    int8_tail: List[str]  # names of tail nodes to quantize (box and score Reshape/Transpose, score Sigmoid)
    heads: int


def _reshape_5d(index: GraphIndex, tensor: str) -> Optional[onnx.NodeProto]:
    """The YOLOv5 Reshape [batch, anchors, no, h, w] that is the only reader of ``tensor``."""
    readers = index.consumers.get(tensor, [])
    if len(readers) != 1 or readers[0].op_type != "Reshape" or len(readers[0].input) < 2:
        return None
    shape = [i for i in index.model.graph.initializer if i.name == readers[0].input[1]]
    if not shape:
        return None
    dims = numpy_helper.to_array(shape[0])
    if dims.ndim == 1 and len(dims) == 5 and dims[2] > BOX and (dims > 0).all():
        return readers[0]
    return None


def _only_reader(index: GraphIndex, tensor: str, op_type: str) -> Optional[onnx.NodeProto]:
    readers = index.consumers.get(tensor, [])
    if len(readers) == 1 and readers[0].op_type == op_type and tensor not in index.outputs:
        return readers[0]
    return None


def _perm(node: onnx.NodeProto) -> List[int]:
    return [list(a.ints) for a in node.attribute if a.name == "perm"][0] if node.attribute else []


def _slice_range(index: GraphIndex, inits: Dict[str, onnx.TensorProto], node: onnx.NodeProto) -> Optional[tuple]:
    """(start, end) of a Slice on the last axis of a 5-D tensor with constant, unit-step inputs (else None)."""
    if node.op_type != "Slice" or len(node.input) < 4 or any(t not in inits for t in node.input[1:]):
        return None
    values = [numpy_helper.to_array(inits[t]).ravel() for t in node.input[1:]]
    if any(len(v) != 1 for v in values) or int(values[2][0]) not in (4, -1) or (len(values) > 3 and int(values[3][0]) != 1):
        return None
    start, end = int(values[0][0]), int(values[1][0])
    return (start, end) if start >= 0 and end > start else None


def _rewire_slices(model: onnx.ModelProto, index: GraphIndex, inits: Dict[str, onnx.TensorProto], joined: str, ends: List[str], no: int, remove: List[onnx.NodeProto]) -> bool:
    """Point the Slices that read ``joined`` (box | scores on the last axis) at the branch they take from.

    True when every reader could be rewired, so the join is not needed: the
    float tail then never copies the score tensor into a joined one and out
    again. A Slice of exactly the scores is dropped (its readers take the
    score branch itself).
    """
    readers = index.consumers.get(joined, [])
    ranges = [_slice_range(index, inits, r) for r in readers]
    if not readers or joined in index.outputs or any(r is None or not (r[1] <= BOX or r[0] >= BOX) for r in ranges):
        return False
    for reader, (start, end) in zip(readers, ranges):
        if end <= BOX:
            reader.input[0] = ends[0]
            continue
        if start == BOX and end >= no and reader.output[0] not in index.outputs:
            for other in model.graph.node:
                for i, t in enumerate(other.input):
                    if t == reader.output[0]:
                        other.input[i] = ends[1]
            remove.append(reader)
            continue
        name = reader.name + "_scores"
        model.graph.initializer.extend(
            [numpy_helper.from_array(np.array([start - BOX], np.int64), name + "_start"), numpy_helper.from_array(np.array([min(end, no) - BOX], np.int64), name + "_end")]
        )
        reader.input[0] = ends[1]
        reader.input[1] = name + "_start"
        reader.input[2] = name + "_end"
    return True


def split_head_convs(model: onnx.ModelProto, head_maps: List[str]) -> HeadSplit:
    """Split, in place, the convs that write ``head_maps`` (see the module's docstring)."""
    index = GraphIndex(model)
    inits: Dict[str, onnx.TensorProto] = {i.name: i for i in model.graph.initializer}
    result = HeadSplit([], [], 0)
    remove: List[onnx.NodeProto] = []
    insert: List[tuple] = []  # (node the new ones replace, new nodes)
    for tensor in head_maps:
        conv = index.producer.get(tensor)
        if conv is None or conv.op_type != "Conv" or len(conv.input) < 3 or conv.input[1] not in inits or conv.input[2] not in inits:
            continue
        reshape = _reshape_5d(index, tensor)
        if reshape is None:
            continue
        dims = numpy_helper.to_array(inits[reshape.input[1]]).astype(np.int64)
        na, no = int(dims[1]), int(dims[2])
        weight = numpy_helper.to_array(inits[conv.input[1]])
        bias = numpy_helper.to_array(inits[conv.input[2]])
        if weight.shape[0] != na * no:
            continue
        transpose = _only_reader(index, reshape.output[0], "Transpose")
        if transpose is not None and _perm(transpose) != TAIL_PERM:
            transpose = None
        sigmoid = _only_reader(index, transpose.output[0], "Sigmoid") if transpose is not None else None
        if sigmoid is None:
            transpose = None
        nodes: List[onnx.NodeProto] = []
        ends: List[str] = []
        for part, (start, stop) in enumerate(((0, BOX), (BOX, no))):
            rows = np.concatenate([np.arange(a * no + start, a * no + stop) for a in range(na)])
            name = "%s_%s" % (conv.name, ("box", "scores")[part])
            shape = dims.copy()
            shape[2] = stop - start
            model.graph.initializer.extend(
                [
                    numpy_helper.from_array(np.ascontiguousarray(weight[rows]), name + "_W"),
                    numpy_helper.from_array(np.ascontiguousarray(bias[rows]), name + "_B"),
                    numpy_helper.from_array(shape, name + "_shape"),
                ]
            )
            c = helper.make_node("Conv", [conv.input[0], name + "_W", name + "_B"], [name + "_out"], name=name)
            c.attribute.extend(conv.attribute)
            r = helper.make_node("Reshape", [c.output[0], name + "_shape"], [name + "_reshaped"], name=name + "_reshape")
            nodes += [c, r]
            result.parts.append(c.output[0])
            result.int8_tail.append(r.name)
            end = r.output[0]
            if transpose is not None:
                t = helper.make_node("Transpose", [end], [name + "_transposed"], name=name + "_transpose", perm=TAIL_PERM)
                s = helper.make_node("Sigmoid", [t.output[0]], [name + "_sigmoid"], name=name + "_sigmoid")
                nodes += [t, s]
                result.int8_tail.append(t.name)
                if part == 1:  # probabilities in 0-1: one int8 scale holds them
                    result.int8_tail.append(s.name)
                end = s.output[0]
            ends.append(end)
        joined = sigmoid if transpose is not None else reshape
        remove += [conv, reshape] + ([transpose, sigmoid] if transpose is not None else [])
        if transpose is not None and _rewire_slices(model, index, inits, sigmoid.output[0], ends, no, remove):
            pass  # every reader now reads a branch: no join
        else:
            nodes.append(helper.make_node("Concat", ends, [joined.output[0]], name=conv.name + "_concat", axis=4 if transpose is not None else 2))
        insert.append((conv, nodes))
        result.heads += 1
    # New nodes go where the conv was (their inputs exist there); the old ones go.
    for conv, nodes in insert:
        position = list(model.graph.node).index(conv)
        for k, node in enumerate(nodes):
            model.graph.node.insert(position + k, node)
    for node in remove:
        model.graph.node.remove(node)
    used = {t for n in model.graph.node for t in n.input}
    kept = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    return result
