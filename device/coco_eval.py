"""COCO mAP through pycocotools, for the agent and the host alike.

pycocotools prints its tables to stdout, which on the agent carries the JSON
result, so every call is wrapped to keep stdout clean.

Besides the 12 stats, ``evaluate`` can fill a compact ``curves`` block from
COCOeval's own accumulated array (``eval['precision']``, shape
[IoU thresholds, 101 recall points, classes, areas, max detections]): per-class AP
and the precision-recall curve, area "all" and 100 detections, as the stats use.
"""
import contextlib
import io
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

# The 12 numbers of COCOeval.stats, in order.
STAT_NAMES = (
    "map",
    "map50",
    "map75",
    "map_small",
    "map_medium",
    "map_large",
    "mar_1",
    "mar_10",
    "mar_100",
    "mar_small",
    "mar_medium",
    "mar_large",
)


def load_coco(annotation_file: str) -> Any:
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(annotation_file)


class DetectionCollector(object):
    """Collects detections in COCO's result format (xywh in original pixels)."""

    def __init__(self, category_ids: Sequence[int]) -> None:
        self.category_ids = np.asarray(list(category_ids), dtype=np.int64)
        self.results: List[Dict[str, Any]] = []
        self.image_ids: List[int] = []

    def add(self, image_id: int, xyxy: np.ndarray, scores: np.ndarray, classes: np.ndarray) -> None:
        self.image_ids.append(int(image_id))
        if len(scores) == 0:
            return
        cats = self.category_ids[np.asarray(classes, dtype=np.int64)]
        x1, y1 = xyxy[:, 0], xyxy[:, 1]
        w, h = xyxy[:, 2] - x1, xyxy[:, 3] - y1
        for i in range(len(scores)):
            self.results.append(
                {
                    "image_id": int(image_id),
                    "category_id": int(cats[i]),
                    # COCO's own results are rounded to 3 decimals as well.
                    "bbox": [round(float(x1[i]), 3), round(float(y1[i]), 3), round(float(w[i]), 3), round(float(h[i]), 3)],
                    # Scores stay exact: rounding makes ties, and COCOeval breaks ties by
                    # insertion order, so a model with close scores would get an mAP that
                    # depends on the order the images were evaluated in.
                    "score": float(scores[i]),
                }
            )


def evaluate(
    coco_gt: Any, collector: DetectionCollector, image_ids: Optional[Sequence[int]] = None, curves: Optional[Dict[str, Any]] = None
) -> Dict[str, float]:
    """Run COCOeval (bbox) over the collected images; returns the 12 named stats.

    ``curves``: a dict to fill with per-class AP and PR curves (see ``pr_curves``).
    """
    from pycocotools.cocoeval import COCOeval

    ids = list(image_ids) if image_ids is not None else list(collector.image_ids)
    if not collector.results:
        # COCO.loadRes rejects an empty list; no detections means zero everywhere.
        if curves is not None:
            curves.update(empty_curves(coco_gt, ids))
        return {name: 0.0 for name in STAT_NAMES}
    with contextlib.redirect_stdout(io.StringIO()):
        dt = coco_gt.loadRes(collector.results)
        ev = COCOeval(coco_gt, dt, "bbox")
        ev.params.imgIds = ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    if curves is not None:
        curves.update(pr_curves(ev, coco_gt, ids))
    return {name: float(v) for name, v in zip(STAT_NAMES, ev.stats)}


# Decimals kept in the curves block: 4 is finer than any mAP difference that means
# something on a few hundred images, and keeps a run's curves to a few kB.
CURVE_DECIMALS = 4


def _r(value: float) -> float:
    return round(float(value), CURVE_DECIMALS)


def _mean_valid(a: np.ndarray) -> Optional[float]:
    """Mean of the entries COCOeval filled (it writes -1 where a class has no ground truth)."""
    valid = a[a > -1]
    return float(valid.mean()) if valid.size else None


def _gt_counts(coco_gt: Any, ids: Sequence[int], cat_ids: Sequence[int]) -> Dict[int, int]:
    counts = {int(c): 0 for c in cat_ids}
    wanted = set(int(i) for i in ids)
    for ann in coco_gt.dataset.get("annotations", []):
        cat = int(ann.get("category_id", -1))
        if cat in counts and int(ann.get("image_id", -1)) in wanted and not ann.get("iscrowd", 0):
            counts[cat] += 1
    return counts


def _class_names(coco_gt: Any, cat_ids: Sequence[int]) -> List[str]:
    return [str(coco_gt.cats.get(c, {}).get("name", c)) for c in cat_ids]


def pr_curves(ev: Any, coco_gt: Any, ids: Sequence[int]) -> Dict[str, Any]:
    """The ``curves`` block from an accumulated COCOeval (bbox).

    ``precision``: 101 values per curve at recall 0, 0.01, ..., 1 (COCO's own
    interpolated precision), averaged over the classes that have ground truth;
    ``map`` averages the IoU thresholds 0.50:0.95 as well (its mean over recall is
    the run's mAP), ``map50`` is IoU 0.50. ``per_class``: each category's AP at
    0.50:0.95 and 0.50 (null without ground truth in the evaluated images) and its
    number of ground-truth boxes.
    """
    p = ev.params
    prec = np.asarray(ev.eval["precision"])  # [T, R, K, A, M]
    area = list(p.areaRngLbl).index("all")
    dets = len(p.maxDets) - 1  # 100 detections, as the AP stats use
    block = prec[:, :, :, area, dets]  # [T, R, K]
    t50 = int(np.argmin(np.abs(np.asarray(p.iouThrs) - 0.5)))
    cat_ids = [int(c) for c in p.catIds]
    names = _class_names(coco_gt, cat_ids)
    counts = _gt_counts(coco_gt, ids, cat_ids)

    def curve(a: np.ndarray) -> List[Optional[float]]:
        # a: [..., R, K] -> mean over everything but recall
        out = []
        for r in range(a.shape[-2]):
            m = _mean_valid(a[..., r, :])
            out.append(None if m is None else _r(m))
        return out

    per_class = []
    for k, cat in enumerate(cat_ids):
        ap = _mean_valid(block[:, :, k])
        ap50 = _mean_valid(block[t50, :, k])
        per_class.append({
            "id": cat,
            "name": names[k],
            "ap": None if ap is None else _r(ap),
            "ap50": None if ap50 is None else _r(ap50),
            "gt": counts.get(cat, 0),
        })
    return {
        "source": "pycocotools COCOeval.eval['precision'] (area all, maxDets %d)" % int(p.maxDets[dets]),
        "recall": [_r(x) for x in p.recThrs],
        "precision": {"map": curve(block), "map50": curve(block[t50])},
        "per_class": per_class,
    }


def empty_curves(coco_gt: Any, ids: Sequence[int]) -> Dict[str, Any]:
    """The ``curves`` block when the model detected nothing: precision 0 wherever there is ground truth."""
    cat_ids = sorted(int(c) for c in coco_gt.getCatIds())
    counts = _gt_counts(coco_gt, ids, cat_ids)
    has_gt = any(counts.values())
    recall = [_r(x) for x in np.linspace(0.0, 1.0, 101)]
    zero = [0.0 if has_gt else None for _ in recall]
    return {
        "source": "no detections (pycocotools not run)",
        "recall": recall,
        "precision": {"map": zero, "map50": list(zero)},
        "per_class": [
            {"id": c, "name": n, "ap": 0.0 if counts[c] else None, "ap50": 0.0 if counts[c] else None, "gt": counts[c]}
            for c, n in zip(cat_ids, _class_names(coco_gt, cat_ids))
        ],
    }
