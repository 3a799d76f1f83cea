"""Decoding and NMS: the blocked NMS must keep exactly what the greedy loop keeps."""
import numpy as np
import pytest

from edgekit.device import postprocess as pp
from edgekit.device.postprocess import PostprocessSpec, batched_nms, nms, postprocess


def greedy_reference(boxes, scores, iou_threshold, max_keep):
    """The textbook loop, one box at a time (the implementation nms replaced)."""
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


def random_boxes(rng, n, spread=100.0, size=(5, 40)):
    xy = rng.uniform(0, spread, (n, 2)).astype(np.float32)
    wh = rng.uniform(size[0], size[1], (n, 2)).astype(np.float32)
    return np.concatenate([xy, xy + wh], 1)


@pytest.mark.parametrize("block", [1, 7, 128])
def test_blocked_nms_equals_the_greedy_loop(block, monkeypatch):
    monkeypatch.setattr(pp, "NMS_BLOCK", block)
    rng = np.random.default_rng(block)
    for trial in range(60):
        n = int(rng.integers(0, 700))
        boxes = random_boxes(rng, n)
        scores = rng.random(n).astype(np.float32)
        if trial % 3 == 0:
            scores = np.round(scores, 1)  # many ties: order must stay stable
        max_keep = int(rng.integers(1, 400))
        thr = float(rng.uniform(0.1, 0.9))
        np.testing.assert_array_equal(nms(boxes, scores, thr, max_keep), greedy_reference(boxes, scores, thr, max_keep))


def test_nms_on_dense_chains_of_overlapping_boxes():
    # Boxes sliding by 4 px: each overlaps its neighbours, so suppression chains run long.
    x = np.arange(0, 800, 4, dtype=np.float32)
    boxes = np.stack([x, np.zeros_like(x), x + 20, np.full_like(x, 20)], 1)
    scores = np.linspace(1, 0.5, len(x)).astype(np.float32)
    for thr in (0.3, 0.5, 0.7, 0.9):
        np.testing.assert_array_equal(nms(boxes, scores, thr, 300), greedy_reference(boxes, scores, thr, 300))


def test_batched_nms_never_suppresses_across_classes():
    box = np.array([[10, 10, 50, 50]], np.float32)
    boxes = np.repeat(box, 3, 0)
    scores = np.array([0.9, 0.8, 0.7], np.float32)
    assert list(batched_nms(boxes, scores, np.array([0, 1, 0]), 0.5, 10)) == [0, 1]
    assert list(batched_nms(boxes, scores, np.array([0, 1, 2]), 0.5, 10)) == [0, 1, 2]
    assert batched_nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64), 0.5, 10).shape == (0,)


def test_batched_nms_equals_per_class_greedy_then_best_first():
    rng = np.random.default_rng(3)
    boxes = random_boxes(rng, 500)
    scores = rng.random(500).astype(np.float32)
    classes = rng.integers(0, 5, 500)
    got = batched_nms(boxes, scores, classes, 0.5, 1000)
    expected = np.concatenate([np.flatnonzero(classes == c)[greedy_reference(boxes[classes == c], scores[classes == c], 0.5, 1000)] for c in range(5)])
    expected = expected[np.argsort(-scores[expected], kind="stable")]
    assert sorted(got.tolist()) == sorted(expected.tolist())
    assert np.all(np.diff(scores[got]) <= 0)


def _yolov5_output(rng, n=2000, classes=6):
    xywh = np.concatenate([rng.uniform(20, 300, (n, 2)), rng.uniform(8, 80, (n, 2))], 1)
    obj = rng.uniform(0, 1, (n, 1)) ** 3
    cls = rng.uniform(0, 1, (n, classes))
    return np.concatenate([xywh, obj, cls], 1).astype(np.float32)[None]


def test_yolov8_layout_decodes_like_yolov5_with_objectness_folded_in():
    rng = np.random.default_rng(0)
    v5 = _yolov5_output(rng)
    v8 = np.concatenate([v5[0, :, :4], v5[0, :, 5:] * v5[0, :, 4:5]], 1).T[None]  # (1, 4 + C, N)
    spec5 = PostprocessSpec("yolov5", score_threshold=0.05, class_names=list("abcdef"))
    spec8 = PostprocessSpec("yolov8", score_threshold=0.05, class_names=list("abcdef"))
    b5, s5, c5 = postprocess(v5, spec5)
    b8, s8, c8 = postprocess(v8, spec8)
    assert len(s5) > 20
    np.testing.assert_array_equal(c5, c8)
    np.testing.assert_allclose(s5, s8, rtol=1e-6)
    np.testing.assert_allclose(b5, b8, rtol=1e-6)


def test_decode_keeps_the_best_class_and_respects_limits():
    out = np.zeros((1, 3, 8), np.float32)
    out[0, 0] = [50, 50, 20, 20, 0.9, 0.1, 0.8, 0.3]  # class 1, score 0.72
    out[0, 1] = [52, 50, 20, 20, 0.8, 0.1, 0.9, 0.3]  # overlaps row 0, class 1, score 0.72 -> suppressed (tie, later)
    out[0, 2] = [150, 150, 10, 10, 0.0005, 1, 1, 1]  # objectness under threshold
    spec = PostprocessSpec("yolov5", score_threshold=0.001, iou_threshold=0.5, class_names=["a", "b", "c"])
    boxes, scores, classes = postprocess(out, spec)
    assert classes.tolist() == [1] and boxes.tolist() == [[40, 40, 60, 60]]
    assert scores[0] == pytest.approx(0.72)
    multi = PostprocessSpec("yolov5", score_threshold=0.2, iou_threshold=0.5, class_names=["a", "b", "c"], multi_label=True)
    _, scores, classes = postprocess(out, multi)
    assert sorted(classes.tolist()) == [1, 2]  # row 0: b (0.72) and c (0.27); row 1 overlaps it in both classes


def test_boxes_layout_is_taken_as_is_above_the_threshold():
    out = np.array([[[1, 2, 3, 4, 0.9, 2], [5, 6, 7, 8, 0.0001, 1], [9, 9, 19, 19, 0.5, 0]]], np.float32)
    boxes, scores, classes = postprocess(out, PostprocessSpec("boxes", score_threshold=0.01))
    assert boxes.tolist() == [[1, 2, 3, 4], [9, 9, 19, 19]] and classes.tolist() == [2, 0]


@pytest.mark.parametrize(
    "layout,shape,message",
    [("yolov5", (1, 100, 5), "yolov5"), ("yolov8", (1, 3, 100), "yolov8"), ("boxes", (1, 10, 4), "boxes"), ("yolov5", (2, 10, 85), "batch of one")],
)
def test_wrong_output_shapes_are_named(layout, shape, message):
    with pytest.raises(ValueError, match=message):
        postprocess(np.zeros(shape, np.float32), PostprocessSpec(layout))


# The faster decode + NMS: The faster decode + NMS (partial presort, no copies when every box passes) keeps exactly the previous output: checked against the previous code path, written out here, on random outputs of the yolov5s (25200 x 85) and yolov8n (84 x 8400) shapes at 640.


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
