"""The faster decode + NMS (partial presort, no copies when every box passes) keeps exactly the
previous output: checked against the previous code path, written out here, on random outputs of
the yolov5s (25200 x 85) and yolov8n (84 x 8400) shapes at 640."""
import numpy as np
import pytest

from edgekit.device import postprocess as pp
from edgekit.device.postprocess import PostprocessSpec, nms, postprocess


def greedy_reference(boxes, scores, iou_threshold, max_keep):
    """The textbook loop, one box at a time, over the full stable score order."""
    order = np.argsort(-scores, kind="stable")
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = np.maximum(x2 - x1, 0) * np.maximum(y2 - y1, 0)
    keep = []
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


def previous_postprocess(output, spec):
    """The decode before the speed-up (every filter copies), then per-class greedy NMS."""
    out = np.asarray(output)[0].astype(np.float32)

    def xyxy(xywh):
        return np.stack([xywh[:, 0] - xywh[:, 2] * 0.5, xywh[:, 1] - xywh[:, 3] * 0.5, xywh[:, 0] + xywh[:, 2] * 0.5, xywh[:, 1] + xywh[:, 3] * 0.5], 1)

    if spec.layout == "yolov8":
        xywh, cls = out[:4].T, out[4:].T
    else:
        rows = out[out[:, 4] > spec.score_threshold]
        xywh, cls = rows[:, :4], rows[:, 5:] * rows[:, 4:5]
    if spec.multi_label:
        r, c = np.nonzero(cls > spec.score_threshold)
        boxes, scores, classes = xyxy(xywh[r]), cls[r, c], c
    else:
        classes = cls.argmax(axis=1)
        scores = cls[np.arange(cls.shape[0]), classes]
        keep = scores > spec.score_threshold
        boxes, scores, classes = xyxy(xywh[keep]), scores[keep], classes[keep]
    if scores.shape[0] > spec.max_candidates:
        top = np.argpartition(-scores, spec.max_candidates)[: spec.max_candidates]
        boxes, scores, classes = boxes[top], scores[top], classes[top]
    if boxes.shape[0] == 0:
        return boxes, scores, classes
    offset = classes.astype(np.float32)[:, None] * (float(boxes.max()) + 1.0)
    keep = greedy_reference(boxes.astype(np.float32) + offset, scores.astype(np.float32), spec.iou_threshold, spec.max_detections)
    return boxes[keep], scores[keep], classes[keep]


def v5_output(rng, n=25200, classes=80, obj=(0.0, 1.0), cls=(0.0, 1.0), size=640.0, round_to=None):
    out = np.empty((1, n, 5 + classes), np.float32)
    out[0, :, :2] = rng.uniform(0, size, (n, 2))
    out[0, :, 2:4] = rng.uniform(4, size / 3, (n, 2))
    out[0, :, 4] = rng.uniform(*obj, n)
    out[0, :, 5:] = rng.uniform(*cls, (n, classes))
    if round_to is not None:
        out[0, :, 4:] = np.round(out[0, :, 4:], round_to)  # many ties: the order must stay stable
    return out


def v8_output(rng, n=8400, classes=80, cls=(0.0, 1.0), size=640.0):
    out = np.empty((1, 4 + classes, n), np.float32)
    out[0, :2] = rng.uniform(0, size, (2, n))
    out[0, 2:4] = rng.uniform(4, size / 3, (2, n))
    out[0, 4:] = rng.uniform(*cls, (classes, n))
    return out


def _same(a, b):
    assert len(a[0]) == len(b[0])
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("presort", [1, 5, 64, 2048])
def test_presorted_nms_equals_the_greedy_loop(presort, monkeypatch):
    monkeypatch.setattr(pp, "NMS_PRESORT", presort)
    rng = np.random.default_rng(presort)
    for trial in range(40):
        n = int(rng.integers(0, 900))
        xy = rng.uniform(0, 150, (n, 2)).astype(np.float32)
        boxes = np.concatenate([xy, xy + rng.uniform(5, 40, (n, 2)).astype(np.float32)], 1)
        scores = rng.random(n).astype(np.float32)
        if trial % 3 == 0:
            scores = np.round(scores, 1)
        max_keep = int(rng.integers(1, 400))
        thr = float(rng.uniform(0.1, 0.9))
        np.testing.assert_array_equal(nms(boxes, scores, thr, max_keep), greedy_reference(boxes, scores, thr, max_keep))


@pytest.mark.parametrize("case", ["all-above", "some-above", "ties", "multi-label", "many-kept"])
def test_yolov5s_shape_same_output_as_before(case):
    rng = np.random.default_rng(len(case))
    spec = PostprocessSpec("yolov5")
    if case == "all-above":  # an untrained model: every one of the 25200 boxes is a candidate
        out = v5_output(rng, obj=(0.3, 0.7), cls=(0.3, 0.7))
    elif case == "some-above":
        out = v5_output(rng, obj=(0.0, 0.004), cls=(0.0, 1.0))
    elif case == "ties":
        out = v5_output(rng, obj=(0.2, 0.9), round_to=2)
    elif case == "multi-label":
        out = v5_output(rng, n=6000, obj=(0.0, 0.05))
        spec = PostprocessSpec("yolov5", multi_label=True)
    else:  # NMS must go past the presorted front (3000 kept > 2048 presorted)
        out = v5_output(rng, n=8000, classes=8, obj=(0.5, 1.0), size=6400.0)
        spec = PostprocessSpec("yolov5", max_detections=3000)
    _same(postprocess(out, spec), previous_postprocess(out, spec))


@pytest.mark.parametrize("many", [True, False])
def test_yolov8n_shape_same_output_as_before(many):
    rng = np.random.default_rng(8)
    out = v8_output(rng, cls=(0.3, 0.7) if many else (0.0, 0.0010001))  # few: about 1 % of the boxes pass 0.001
    spec = PostprocessSpec("yolov8")
    got = postprocess(out, spec)
    _same(got, previous_postprocess(out, spec))
    assert (len(got[0]) == 300) if many else (0 < len(got[0]) < 300)


def test_no_box_above_the_threshold_and_a_partial_last_chunk(monkeypatch):
    rng = np.random.default_rng(3)
    spec = PostprocessSpec("yolov5")
    empty = v5_output(rng, n=500, obj=(0.0, 0.0009))
    assert all(len(a) == 0 for a in postprocess(empty, spec))
    monkeypatch.setattr(pp, "V5_CHUNK", 7)  # 500 rows: 71 full chunks and one of 3
    out = v5_output(rng, n=500, obj=(0.0, 1.0))
    _same(postprocess(out, spec), previous_postprocess(out, spec))
