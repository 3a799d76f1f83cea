"""COCO mAP through pycocotools, for the agent and the host alike.

pycocotools prints its tables to stdout, which on the agent carries the JSON
result, so every call is wrapped to keep stdout clean.
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


def evaluate(coco_gt: Any, collector: DetectionCollector, image_ids: Optional[Sequence[int]] = None) -> Dict[str, float]:
    """Run COCOeval (bbox) over the collected images; returns the 12 named stats."""
    from pycocotools.cocoeval import COCOeval

    ids = list(image_ids) if image_ids is not None else list(collector.image_ids)
    if not collector.results:
        # COCO.loadRes rejects an empty list; no detections means zero everywhere.
        return {name: 0.0 for name in STAT_NAMES}
    with contextlib.redirect_stdout(io.StringIO()):
        dt = coco_gt.loadRes(collector.results)
        ev = COCOeval(coco_gt, dt, "bbox")
        ev.params.imgIds = ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {name: float(v) for name, v in zip(STAT_NAMES, ev.stats)}
