"""Detection postprocess in numpy: decode the output layouts, then NMS.

Layouts (the manifest's ``postprocess.layout``):

- ``yolov5``: (1, N, 5 + C) rows of cx, cy, w, h (input pixels), objectness,
  class scores; score = objectness * class score (YOLOv5's export mode).
- ``yolov8``: (1, 4 + C, N): cx, cy, w, h then class scores, no objectness.
- ``boxes``: (1, N, 6) rows of x1, y1, x2, y2, score, class index, already
  suppressed (models exported with NMS inside).

Used by the agent on the board and by the host for its reference metrics, so
both count the same boxes.

NMS is exact greedy NMS (the same boxes, in the same order, as the classic
one-box-at-a-time loop and as torchvision's batched_nms with its coordinate
offset trick), vectorised in blocks: candidates sorted by score are taken 128
at a time; a block is first checked against every box already kept (one IoU
matrix), then resolved within itself (one more IoU matrix and a short walk
over its rows). It stops as soon as ``max_detections`` boxes are kept, which at
mAP settings (score 0.001, 300 detections) is usually within the first few
blocks. The one-box-at-a-time loop took 40-90 ms for a few thousand
candidates; this takes a few ms (benchmarks/agent_bench.py). Only the best
``NMS_PRESORT`` candidates are sorted up front (sorting all 25200 of a YOLOv5s
output cost more than the NMS); the rest is sorted only if NMS gets that far,
so the order, and the result, stay exactly those of a full stable sort
(benchmarks/postprocess_bench.py, tests/device/test_postprocess_fast.py).
"""
from typing import Optional, Tuple

import numpy as np

from edgekit.contract.specs import PostprocessSpec

NMS_BLOCK = 128
# Candidates sorted before NMS starts (at least 4 x max_detections); the rest only if NMS gets there.
NMS_PRESORT = 2048


def xywh_to_xyxy(xywh: np.ndarray) -> np.ndarray:
    out = np.empty_like(xywh)
    half_w = xywh[:, 2] * 0.5
    half_h = xywh[:, 3] * 0.5
    out[:, 0] = xywh[:, 0] - half_w
    out[:, 1] = xywh[:, 1] - half_h
    out[:, 2] = xywh[:, 0] + half_w
    out[:, 3] = xywh[:, 1] + half_h
    return out


def _limit(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, spec: PostprocessSpec) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    if scores.shape[0] > spec.max_candidates:
        top = np.argpartition(-scores, spec.max_candidates)[: spec.max_candidates]
        boxes, scores, classes = boxes[top], scores[top], classes[top]
    return boxes.astype(np.float32, copy=False), scores.astype(np.float32, copy=False), classes.astype(np.int64, copy=False)


def _candidates(xywh: np.ndarray, cls_scores: np.ndarray, spec: PostprocessSpec) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boxes above the threshold: best class per box, or every class above it (multi_label).

    ``cls_scores`` is (N, C). Boxes are converted to xyxy only for survivors.
    """
    if spec.multi_label:
        rows, cols = np.nonzero(cls_scores > spec.score_threshold)
        return _limit(xywh_to_xyxy(xywh[rows]), cls_scores[rows, cols], cols, spec)
    classes = cls_scores.argmax(axis=1)
    scores = cls_scores[np.arange(cls_scores.shape[0]), classes]
    return _select(xywh, scores, classes, spec)


def _select(xywh: np.ndarray, scores: np.ndarray, classes: np.ndarray, spec: PostprocessSpec) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    keep = scores > spec.score_threshold
    if keep.all():  # e.g. every box of an untrained model: no copies
        return _limit(xywh_to_xyxy(xywh), scores, classes, spec)
    return _limit(xywh_to_xyxy(xywh[keep]), scores[keep], classes[keep], spec)


# Rows per step of the YOLOv5 score product: small enough to stay in cache between the
# multiply and the argmax, instead of a (25200, 80) temporary written and read back.
V5_CHUNK = 2048


def _yolov5_best(rows: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(best class, its objectness x class score) per row: argmax and gather of the product, in chunks."""
    n = rows.shape[0]
    classes = np.empty(n, dtype=np.intp)
    scores = np.empty(n, dtype=np.float32)
    buf = np.empty((min(n, V5_CHUNK), rows.shape[1] - 5), dtype=np.float32)
    index = np.arange(buf.shape[0])
    for start in range(0, n, V5_CHUNK):
        stop = min(start + V5_CHUNK, n)
        b = buf[: stop - start]
        np.multiply(rows[start:stop, 5:], rows[start:stop, 4:5], out=b)
        c = b.argmax(axis=1)
        classes[start:stop] = c
        scores[start:stop] = b[index[: stop - start], c]
    return classes, scores


def _candidates_channels_first(raw: np.ndarray, spec: PostprocessSpec) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """yolov8's (4 + C, N) without transposing the whole tensor: reductions run along contiguous rows."""
    cls = raw[4:]
    if spec.multi_label:
        cols, rows = np.nonzero(cls > spec.score_threshold)
        return _limit(xywh_to_xyxy(raw[:4, rows].T), cls[cols, rows], cols, spec)
    # max along axis 0 is a fast vectorised pass over contiguous rows (argmax along it is not):
    # the best class is looked up only for the boxes that pass. Same values as argmax + gather.
    best = cls.max(axis=0)
    keep = np.flatnonzero(best > spec.score_threshold)
    if keep.size == best.size:
        return _limit(xywh_to_xyxy(raw[:4].T), best, cls.argmax(axis=0), spec)
    return _limit(xywh_to_xyxy(raw[:4, keep].T), best[keep], cls[:, keep].argmax(axis=0), spec)


def _iou(ax1: np.ndarray, ay1: np.ndarray, ax2: np.ndarray, ay2: np.ndarray, aarea: np.ndarray, bx1: np.ndarray, by1: np.ndarray, bx2: np.ndarray, by2: np.ndarray, barea: np.ndarray) -> np.ndarray:
    """IoU matrix (len(a), len(b)); the same arithmetic, in the same order, as the greedy loop."""
    w = np.minimum(ax2[:, None], bx2[None, :]) - np.maximum(ax1[:, None], bx1[None, :])
    np.maximum(w, 0, out=w)
    h = np.minimum(ay2[:, None], by2[None, :]) - np.maximum(ay1[:, None], by1[None, :])
    np.maximum(h, 0, out=h)
    inter = w * h
    return inter / (aarea[:, None] + barea[None, :] - inter + 1e-9)


def _score_order(scores: np.ndarray, first: int) -> Tuple[np.ndarray, Optional[float]]:
    """Candidates by descending score, ties in index order (a stable sort), and where it stops.

    Sorting 25200 candidates costs more than NMS itself when NMS stops after a
    few hundred, so only those above the ``first``-th best score are sorted;
    returns (order, pivot), every candidate left out scoring <= pivot (None:
    the order is complete). Sorting the rest later and appending it gives the
    full stable order exactly, since everything in front scores higher.
    """
    n = scores.shape[0]
    if n <= first:
        return np.argsort(-scores, kind="stable"), None
    pivot = -np.partition(-scores, first - 1)[first - 1]
    top = np.flatnonzero(scores > pivot)
    return top[np.argsort(-scores[top], kind="stable")], pivot


def _rest_order(scores: np.ndarray, pivot: float) -> np.ndarray:
    rest = np.flatnonzero(~(scores > pivot))
    return rest[np.argsort(-scores[rest], kind="stable")]


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, max_keep: int) -> np.ndarray:
    """Greedy non-maximum suppression; returns kept indices, best first (stable for ties)."""
    n = boxes.shape[0]
    if n == 0 or max_keep <= 0:
        return np.zeros((0,), dtype=np.int64)
    order, pivot = _score_order(scores, max(NMS_PRESORT, 4 * max_keep))

    def columns(idx: np.ndarray) -> Tuple[np.ndarray, ...]:
        c = tuple(boxes[idx, i] for i in range(4))  # fancy indexing: contiguous columns
        return c + (np.maximum(c[2] - c[0], 0) * np.maximum(c[3] - c[1], 0),)

    x1, y1, x2, y2, area = columns(order)
    kept = np.empty(min(max_keep, n), dtype=np.int64)  # positions in score order
    nk = 0
    start = 0
    while start < n:
        if start >= order.size:
            # NMS got past the sorted front: sort the rest, append (the order stays exact).
            rest = _rest_order(scores, pivot)
            x1, y1, x2, y2, area = (np.concatenate((a, b)) for a, b in zip((x1, y1, x2, y2, area), columns(rest)))
            order, pivot = np.concatenate((order, rest)), None
        cand = np.arange(start, min(start + NMS_BLOCK, order.size))
        start = cand[-1] + 1
        if nk:
            k = kept[:nk]
            iou = _iou(x1[cand], y1[cand], x2[cand], y2[cand], area[cand], x1[k], y1[k], x2[k], y2[k], area[k])
            cand = cand[~(iou > iou_threshold).any(axis=1)]
        if cand.size > 1:
            cx1, cy1, cx2, cy2, ca = x1[cand], y1[cand], x2[cand], y2[cand], area[cand]
            over = np.triu(_iou(cx1, cy1, cx2, cy2, ca, cx1, cy1, cx2, cy2, ca) > iou_threshold, 1)
            keep = np.ones(cand.size, dtype=bool)
            # Walk only the rows that suppress something, in score order: a box
            # suppresses later ones only if it is itself still kept.
            for i in np.flatnonzero(over.any(axis=1)):
                if keep[i]:
                    keep &= ~over[i]
            cand = cand[keep]
        take = min(cand.size, max_keep - nk)
        kept[nk : nk + take] = cand[:take]
        nk += take
        if nk >= max_keep:
            break
    return order[kept[:nk]]


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
    if out.ndim != 2:
        raise ValueError("layout %r expects a 3-D output, got %s" % (spec.layout, np.shape(output)))
    if spec.layout == "yolov8":
        if out.shape[0] < 5:
            raise ValueError("layout 'yolov8' expects (1, 4 + classes, N), got %s" % (np.shape(output),))
        boxes, scores, classes = _candidates_channels_first(out, spec)
    else:
        if out.shape[1] < 6:
            raise ValueError("layout 'yolov5' expects (1, N, 5 + classes), got %s" % (np.shape(output),))
        # Cheap objectness filter first: most of the 25200 rows die here (or none: then no copy).
        alive = out[:, 4] > spec.score_threshold
        rows = out if alive.all() else out[alive]
        if spec.multi_label:
            boxes, scores, classes = _candidates(rows[:, :4], rows[:, 5:] * rows[:, 4:5], spec)
        else:
            best, best_score = _yolov5_best(rows)
            boxes, scores, classes = _select(rows[:, :4], best_score, best, spec)
    keep = batched_nms(boxes, scores, classes, spec.iou_threshold, spec.max_detections)
    return boxes[keep], scores[keep], classes[keep]
