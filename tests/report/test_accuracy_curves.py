"""Per-class AP and precision-recall curves from pycocotools' own arrays (result key accuracy.curves)."""
import json

import numpy as np
import pytest

from edgekit.device.coco_eval import STAT_NAMES, DetectionCollector, evaluate


def _coco(tmp_path):
    from edgekit.device.coco_eval import load_coco

    images = [{"id": i, "file_name": "%d.jpg" % i, "width": 200, "height": 200} for i in range(1, 7)]
    anns, n = [], 0
    rng = np.random.RandomState(0)
    for img in images:
        for cat in (1, 2):
            for _ in range(2):
                n += 1
                x, y = rng.randint(0, 120, size=2)
                w, h = rng.randint(30, 70, size=2)
                anns.append({"id": n, "image_id": img["id"], "category_id": cat, "bbox": [float(x), float(y), float(w), float(h)],
                             "area": float(w * h), "iscrowd": 0})
    cats = [{"id": 1, "name": "circle"}, {"id": 2, "name": "square"}, {"id": 3, "name": "never-seen"}]
    path = tmp_path / "gt.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return load_coco(str(path)), anns


def _detections(anns, jitter, seed=1):
    """Class 0 (circle) found well, class 1 (square) badly: per-class APs must differ."""
    rng = np.random.RandomState(seed)
    collector = DetectionCollector([1, 2, 3])
    by_image = {}
    for a in anns:
        by_image.setdefault(a["image_id"], []).append(a)
    for image_id, items in sorted(by_image.items()):
        boxes, scores, classes = [], [], []
        for a in items:
            x, y, w, h = a["bbox"]
            shift = jitter * (1 if a["category_id"] == 1 else 6) * rng.rand(2) * w
            boxes.append([x + shift[0], y + shift[1], x + w + shift[0], y + h + shift[1]])
            scores.append(rng.rand())
            classes.append(a["category_id"] - 1)
        collector.add(image_id, np.array(boxes, dtype=np.float32), np.array(scores, dtype=np.float32), np.array(classes))
    return collector


def test_curves_agree_with_cocoeval_stats(tmp_path):
    coco, anns = _coco(tmp_path)
    curves = {}
    stats = evaluate(coco, _detections(anns, 0.05), curves=curves)
    assert set(stats) == set(STAT_NAMES)
    per = {c["name"]: c for c in curves["per_class"]}
    assert list(per) == ["circle", "square", "never-seen"]
    assert per["never-seen"]["ap"] is None and per["never-seen"]["gt"] == 0
    assert per["circle"]["gt"] == 12 and per["square"]["gt"] == 12
    assert per["circle"]["ap"] > per["square"]["ap"] + 0.1  # the badly placed class scores lower
    # COCO's mAP is the mean over classes with ground truth, and the mean of the averaged PR curve.
    aps = [c["ap"] for c in curves["per_class"] if c["ap"] is not None]
    assert np.mean(aps) == pytest.approx(stats["map"], abs=2e-4)
    assert np.mean([c["ap50"] for c in curves["per_class"] if c["ap50"] is not None]) == pytest.approx(stats["map50"], abs=2e-4)
    assert len(curves["recall"]) == 101 and curves["recall"][0] == 0.0 and curves["recall"][-1] == 1.0
    for key, stat in (("map", "map"), ("map50", "map50")):
        curve = curves["precision"][key]
        assert len(curve) == 101 and all(0.0 <= p <= 1.0 for p in curve)
        assert np.mean(curve) == pytest.approx(stats[stat], abs=2e-4)
        # COCO interpolates precision to be non-increasing in recall.
        assert all(a >= b - 1e-9 for a, b in zip(curve, curve[1:]))
    assert len(json.dumps(curves)) < 4000  # a few kB per run, not the raw [10, 101, K, 4, 3] array


def test_no_detections_gives_zero_curves(tmp_path):
    coco, _anns = _coco(tmp_path)
    curves = {}
    stats = evaluate(coco, DetectionCollector([1, 2, 3]), image_ids=[1, 2], curves=curves)
    assert stats["map"] == 0.0
    assert curves["precision"]["map"] == [0.0] * 101
    per = {c["name"]: c for c in curves["per_class"]}
    assert per["circle"]["ap"] == 0.0 and per["circle"]["gt"] == 4 and per["never-seen"]["ap"] is None


@pytest.mark.slow
def test_the_agent_stores_curves_per_variant(cpu_bundle):
    """The real agent (onnxruntime, pycocotools) on the demo bundle: curves under accuracy.curves."""
    from edgekit.device.runner import Options, run_bundle

    result = run_bundle(cpu_bundle, Options(command="eval", variants=["fp32"]))
    acc = result["runs"][0]["accuracy"]
    curves = acc["curves"]
    assert np.mean(curves["precision"]["map"]) == pytest.approx(acc["stats"]["map"], abs=2e-4)
    named = [c for c in curves["per_class"] if c["ap"] is not None]
    assert named and all(isinstance(c["name"], str) and c["gt"] > 0 for c in named)
    assert np.mean([c["ap"] for c in named]) == pytest.approx(acc["stats"]["map"], abs=2e-4)
    assert len(json.dumps(curves)) < 6000
