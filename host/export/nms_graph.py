"""In-graph decode + NMS: a tail appended to a YOLO graph so the runtime does the postprocess.

``edgekit build --nms graph`` appends it to every variant's graph after export,
simplify, parity and int8 (so the tail's nodes are never quantized: they are
added to the finished fp32 and int8 files). The model then outputs one tensor
``detections`` (1, K, 6): x1, y1, x2, y2, score, class (float), best first,
which the agent reads with the existing ``boxes`` layout (no numpy NMS).

Two variants:

- ``onnx``: ONNX ``NonMaxSuppression`` (opset >= 11), run by ONNX Runtime. K is
  data-dependent (<= max_detections).
- ``tensorrt``: TensorRT's ``EfficientNMS_TRT`` plugin node (parsed by TensorRT's
  ONNX parser as a plugin; ONNX Runtime cannot run it). K = max_detections,
  padded rows have score 0 (the ``boxes`` layout drops rows <= score_threshold).

The decode matches edgekit.device.postprocess: boxes cx,cy,w,h -> x1,y1,x2,y2;
score = objectness x class score (``yolov5``) or class score (``yolov8``); one
label per box (its best class, ``multi_label`` False); score > score_threshold;
class-aware NMS by the coordinate offset trick (each class's boxes shifted by
class x (max coordinate + 1), so classes never overlap) and one NonMaxSuppression
class, so max_detections bounds the total as the numpy path does.

Hand-written with onnx.helper: onnx has no helper or composite for a YOLO
decode + NMS, and exporting it from torch would need torchvision (not a
dependency) and gives a per-class NMS with a different box limit.
"""
from typing import List, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgekit.contract.errors import EdgekitError
from edgekit.contract.specs import PostprocessSpec

NMS_MODES = ("numpy", "graph")
DETECTIONS = "detections"
PREFIX = "nms_tail/"


class _Builder(object):
    def __init__(self, opset: int) -> None:
        self.opset = opset
        self.nodes: List[onnx.NodeProto] = []
        self.inits: List[onnx.TensorProto] = []
        self.count = 0

    def name(self, hint: str) -> str:
        self.count += 1
        return "%s%s_%d" % (PREFIX, hint, self.count)

    def const(self, value: np.ndarray, hint: str = "c") -> str:
        n = self.name(hint)
        self.inits.append(numpy_helper.from_array(np.asarray(value), n))
        return n

    def op(self, op_type: str, inputs: Sequence[str], hint: str = "", outputs: int = 1, output_names: Sequence[str] = (), **attrs: object) -> List[str]:
        outs = list(output_names) or [self.name(hint or op_type.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=self.name(op_type), **attrs))
        return outs

    def one(self, op_type: str, inputs: Sequence[str], hint: str = "", **attrs: object) -> str:
        return self.op(op_type, inputs, hint, **attrs)[0]

    def slice(self, x: str, start: int, end: int, axis: int) -> str:
        return self.one("Slice", [x, self.const(np.array([start], np.int64)), self.const(np.array([end], np.int64)), self.const(np.array([axis], np.int64))])

    def unsqueeze(self, x: str, axis: int) -> str:
        if self.opset >= 13:
            return self.one("Unsqueeze", [x, self.const(np.array([axis], np.int64))])
        return self.one("Unsqueeze", [x], axes=[axis])

    def squeeze(self, x: str, axis: int) -> str:
        if self.opset >= 13:
            return self.one("Squeeze", [x, self.const(np.array([axis], np.int64))])
        return self.one("Squeeze", [x], axes=[axis])

    def reduce_max(self, x: str, axes: Sequence[int], keepdims: int) -> str:
        if self.opset >= 18:
            return self.one("ReduceMax", [x, self.const(np.array(list(axes), np.int64))], keepdims=keepdims)
        return self.one("ReduceMax", [x], axes=list(axes), keepdims=keepdims)


def _decode(b: _Builder, raw: str, layout: str) -> List[str]:
    """(boxes (1, N, 4) xyxy, class scores (1, N, C))."""
    if layout == "yolov8":
        rows = b.one("Transpose", [raw], perm=[0, 2, 1])  # (1, N, 4 + C)
        cls = b.slice(rows, 4, 1 << 30, 2)
    elif layout == "yolov5":
        rows = raw
        cls = b.one("Mul", [b.slice(rows, 5, 1 << 30, 2), b.slice(rows, 4, 5, 2)])
    else:
        raise EdgekitError("--nms graph needs a yolov5 or yolov8 output, the model's layout is %r" % layout, "build with --nms numpy")
    xy = b.slice(rows, 0, 2, 2)
    half = b.one("Mul", [b.slice(rows, 2, 4, 2), b.const(np.array(0.5, np.float32))])
    boxes = b.one("Concat", [b.one("Sub", [xy, half]), b.one("Add", [xy, half])], axis=2)
    return [boxes, cls]


def _onnx_tail(b: _Builder, boxes: str, cls: str, spec: PostprocessSpec) -> None:
    score = b.reduce_max(cls, [2], 0)  # (1, N)
    label = b.one("Cast", [b.one("ArgMax", [cls], axis=2, keepdims=0)], to=TensorProto.FLOAT)  # (1, N)
    span = b.one("Add", [b.reduce_max(boxes, [0, 1, 2], 0), b.const(np.array(1.0, np.float32))])
    shifted = b.one("Add", [boxes, b.unsqueeze(b.one("Mul", [label, span]), 2)])
    selected = b.one(
        "NonMaxSuppression",
        [
            shifted,
            b.unsqueeze(score, 1),  # (1, 1, N): one class, the offsets keep classes apart
            b.const(np.array([spec.max_detections], np.int64)),
            b.const(np.array([spec.iou_threshold], np.float32)),
            b.const(np.array([spec.score_threshold], np.float32)),
        ],
        center_point_box=0,
    )
    idx = b.one("Gather", [selected, b.const(np.array(2, np.int64))], axis=1)  # (K,)
    parts = [
        b.one("Gather", [b.squeeze(boxes, 0), idx], axis=0),
        b.unsqueeze(b.one("Gather", [b.squeeze(score, 0), idx], axis=0), 1),
        b.unsqueeze(b.one("Gather", [b.squeeze(label, 0), idx], axis=0), 1),
    ]
    b.op("Unsqueeze", [b.one("Concat", parts, axis=1), b.const(np.array([0], np.int64))] if b.opset >= 13 else [b.one("Concat", parts, axis=1)],
         output_names=[DETECTIONS], **({} if b.opset >= 13 else {"axes": [0]}))


def _tensorrt_tail(b: _Builder, boxes: str, cls: str, spec: PostprocessSpec) -> None:
    # EfficientNMS_TRT (TensorRT plugin docs, plugin/efficientNMSPlugin): inputs boxes (B, N, 4)
    # and scores (B, N, C); outputs num_detections (B, 1) int32, detection_boxes (B, max, 4),
    # detection_scores (B, max), detection_classes (B, max) int32, best first, padded with 0.
    # Its NMS is per class over every class; scores are masked to each box's best class so it
    # keeps one label per box, as the numpy path does. It pre-selects at most 4096 boxes by score
    # (numSelectedBoxes) before NMS, so at score 0.001 a crowded output can differ from numpy's.
    best = b.reduce_max(cls, [2], 1)
    masked = b.one("Mul", [cls, b.one("Cast", [b.one("Equal", [cls, best])], to=TensorProto.FLOAT)])
    outs = b.op(
        "EfficientNMS_TRT",
        [boxes, masked],
        outputs=4,
        plugin_version="1",
        background_class=-1,
        box_coding=0,  # boxes are x1, y1, x2, y2 (the decode above)
        iou_threshold=float(spec.iou_threshold),
        max_output_boxes=int(spec.max_detections),
        score_activation=0,
        score_threshold=float(spec.score_threshold),
    )  # class_agnostic left out: per-class NMS is the plugin's default, and TensorRT 8.5 predates the attribute
    _num, det_boxes, det_scores, det_classes = outs
    b.op("Concat", [det_boxes, b.unsqueeze(det_scores, 2), b.unsqueeze(b.one("Cast", [det_classes], to=TensorProto.FLOAT), 2)], axis=2, output_names=[DETECTIONS])


def nms_spec(spec: PostprocessSpec) -> PostprocessSpec:
    """The postprocess spec of a graph with the tail: layout ``boxes``, the same thresholds."""
    data = spec.to_dict()
    data["layout"] = "boxes"
    return PostprocessSpec.from_dict(data)


def append_nms(model: onnx.ModelProto, spec: PostprocessSpec, runtime: str = "onnxruntime") -> onnx.ModelProto:
    """A copy of ``model`` whose single output is ``detections`` (1, K, 6), decoded and suppressed in the graph."""
    if spec.multi_label:
        raise EdgekitError("--nms graph keeps one label per box, the model's postprocess has multi_label", "build with --nms numpy")
    if len(model.graph.output) != 1:
        raise EdgekitError("--nms graph needs a model with one output, this one has %d" % len(model.graph.output), "build with --nms numpy")
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if opset < 11:
        raise EdgekitError("--nms graph needs opset >= 11, the graph has %d" % opset, "build with --opset 11 or higher, or --nms numpy")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    b = _Builder(opset)
    boxes, cls = _decode(b, out.graph.output[0].name, spec.layout)
    if runtime == "tensorrt":
        _tensorrt_tail(b, boxes, cls, spec)
        shape = [1, spec.max_detections, 6]
    else:
        _onnx_tail(b, boxes, cls, spec)
        shape = [1, "detections", 6]
    out.graph.node.extend(b.nodes)
    out.graph.initializer.extend(b.inits)
    del out.graph.output[:]
    out.graph.output.append(helper.make_tensor_value_info(DETECTIONS, TensorProto.FLOAT, shape))
    return out


def append_nms_file(path: str, spec: PostprocessSpec, runtime: str = "onnxruntime") -> None:
    """Rewrite the ONNX file at ``path`` with the tail appended (checked by onnx.checker for ONNX Runtime)."""
    model = append_nms(onnx.load(path), spec, runtime)
    if runtime != "tensorrt":
        onnx.checker.check_model(model)
    onnx.save(model, path)
