"""Detection postprocess in numpy: decode the output layouts, then NMS.

Layouts (the manifest's ``postprocess.layout``):

- ``yolov5``: (1, N, 5 + C) rows of cx, cy, w, h (input pixels), objectness,
  class scores; score = objectness * class score (YOLOv5's export mode).
- ``yolov8``: (1, 4 + C, N): cx, cy, w, h then class scores, no objectness.
- ``boxes``: (1, N, 6) rows of x1, y1, x2, y2, score, class index, already
  suppressed (models exported with NMS inside).

Used by the agent on the board and by the host for its reference metrics, so
both count the same boxes.
"""
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

LAYOUTS = ("yolov5", "yolov8", "boxes")


class PostprocessSpec(object):
    def __init__(
        self,
        layout: str = "yolov5",
        score_threshold: float = 0.001,
        iou_threshold: float = 0.6,
        max_detections: int = 300,
        class_names: Sequence[str] = (),
        category_ids: Optional[Sequence[int]] = None,
        multi_label: bool = False,
        max_candidates: int = 30000,
    ) -> None:
        if layout not in LAYOUTS:
            raise ValueError("postprocess.layout must be one of %s, got %r" % (LAYOUTS, layout))
        self.layout = layout
        self.score_threshold = float(score_threshold)
        self.iou_threshold = float(iou_threshold)
        self.max_detections = int(max_detections)
        self.class_names = list(class_names)
        self.category_ids = list(category_ids) if category_ids is not None else list(range(len(self.class_names)))
        if self.class_names and len(self.category_ids) != len(self.class_names):
            raise ValueError("postprocess.category_ids must have one id per class name")
        self.multi_label = bool(multi_label)
        self.max_candidates = int(max_candidates)

    def to_dict(self) -> Dict[str, Any]:
        return {
            "layout": self.layout,
            "score_threshold": self.score_threshold,
            "iou_threshold": self.iou_threshold,
            "max_detections": self.max_detections,
            "class_names": list(self.class_names),
            "category_ids": list(self.category_ids),
            "multi_label": self.multi_label,
            "max_candidates": self.max_candidates,
        }

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "PostprocessSpec":
        return cls(**data)


def xywh_to_xyxy(xywh: np.ndarray) -> np.ndarray:
    out = np.empty_like(xywh)
    half_w = xywh[:, 2] * 0.5
    half_h = xywh[:, 3] * 0.5
    out[:, 0] = xywh[:, 0] - half_w
    out[:, 1] = xywh[:, 1] - half_h
    out[:, 2] = xywh[:, 0] + half_w
    out[:, 3] = xywh[:, 1] + half_h
    return out


def _candidates(xywh: np.ndarray, cls_scores: np.ndarray, spec: PostprocessSpec) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boxes above the threshold: best class per box, or every class above it (multi_label)."""
    if spec.multi_label:
        rows, cols = np.nonzero(cls_scores > spec.score_threshold)
        scores = cls_scores[rows, cols]
        boxes = xywh_to_xyxy(xywh[rows])
        classes = cols
    else:
        classes = cls_scores.argmax(axis=1)
        scores = cls_scores[np.arange(cls_scores.shape[0]), classes]
        keep = scores > spec.score_threshold
        boxes, scores, classes = xywh_to_xyxy(xywh[keep]), scores[keep], classes[keep]
    if scores.shape[0] > spec.max_candidates:
        top = np.argpartition(-scores, spec.max_candidates)[: spec.max_candidates]
        boxes, scores, classes = boxes[top], scores[top], classes[top]
    return boxes.astype(np.float32), scores.astype(np.float32), classes.astype(np.int64)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, max_keep: int) -> np.ndarray:
    """Greedy non-maximum suppression; returns kept indices, best first."""
    order = np.argsort(-scores, kind="stable")
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = np.maximum(x2 - x1, 0) * np.maximum(y2 - y1, 0)
    keep: List[int] = []
    while order.size and len(keep) < max_keep:
        i = order[0]
        keep.append(int(i))
        rest = order[1:]
        w = np.maximum(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0)
        h = np.maximum(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0)
        inter = w * h
        iou = inter / (areas[i] + areas[rest] - inter + 1e-9)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def batched_nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou_threshold: float, max_keep: int) -> np.ndarray:
    """Per-class NMS in one pass: offset each class's boxes so classes never overlap."""
    if boxes.shape[0] == 0:
        return np.zeros((0,), dtype=np.int64)
    offset = classes.astype(np.float32)[:, None] * (float(boxes.max()) + 1.0)
    return nms(boxes + offset, scores, iou_threshold, max_keep)


def postprocess(output: np.ndarray, spec: PostprocessSpec) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image's raw output -> (xyxy boxes in network pixels, scores, class indices)."""
    out = np.asarray(output)
    if out.ndim == 3:
        if out.shape[0] != 1:
            raise ValueError("postprocess expects a batch of one, got shape %s" % (out.shape,))
        out = out[0]
    out = out.astype(np.float32, copy=False)
    if spec.layout == "boxes":
        if out.ndim != 2 or out.shape[1] < 6:
            raise ValueError("layout 'boxes' expects (1, N, 6), got %s" % (np.shape(output),))
        keep = out[:, 4] > spec.score_threshold
        out = out[keep][: spec.max_detections]
        return out[:, :4].copy(), out[:, 4].copy(), out[:, 5].astype(np.int64)
    if spec.layout == "yolov8":
        out = out.T  # (4 + C, N) -> (N, 4 + C)
        xywh, cls_scores = out[:, :4], out[:, 4:]
    else:
        if out.shape[1] < 6:
            raise ValueError("layout 'yolov5' expects (1, N, 5 + classes), got %s" % (np.shape(output),))
        # Cheap objectness filter first: most of the 25200 rows die here.
        obj = out[:, 4]
        rows = out[obj > spec.score_threshold]
        xywh, cls_scores = rows[:, :4], rows[:, 5:] * rows[:, 4:5]
    boxes, scores, classes = _candidates(xywh, cls_scores, spec)
    keep = batched_nms(boxes, scores, classes, spec.iou_threshold, spec.max_detections)
    return boxes[keep], scores[keep], classes[keep]
