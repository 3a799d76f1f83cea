"""The demo data generator: deterministic, valid COCO, and not trivial."""
import filecmp
import json
import os

import numpy as np
import pytest

from edgekit.host.demo import CATEGORY_IDS, CLASS_NAMES, GENERATOR_VERSION, demo_data
from edgekit.host.demo.data import CALIB_IMAGES, VAL_IMAGES, write_split
from edgekit.contract.errors import EdgekitError


def _split_files(folder):
    return sorted(os.listdir(os.path.join(folder, "images")))


def test_same_seed_gives_same_bytes(tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    write_split(a, "val", 6, seed=3, annotate=True)
    write_split(b, "val", 6, seed=3, annotate=True)
    names = _split_files(a)
    assert names == _split_files(b) and len(names) == 6
    match, mismatch, errors = filecmp.cmpfiles(os.path.join(a, "images"), os.path.join(b, "images"), names, shallow=False)
    assert mismatch == [] and errors == [] and len(match) == 6
    assert filecmp.cmp(os.path.join(a, "instances.json"), os.path.join(b, "instances.json"), shallow=False)


def test_other_seed_or_split_gives_other_images(tmp_path):
    a, b, c = str(tmp_path / "a"), str(tmp_path / "b"), str(tmp_path / "c")
    write_split(a, "val", 4, seed=3, annotate=True)
    write_split(b, "val", 4, seed=4, annotate=True)
    write_split(c, "train", 4, seed=3, annotate=True)
    for other in (b, c):
        for name_a, name_o in zip(_split_files(a), _split_files(other)):
            with open(os.path.join(a, "images", name_a), "rb") as fa, open(os.path.join(other, "images", name_o), "rb") as fo:
                assert fa.read() != fo.read()


def test_splits_have_the_promised_sizes(demo_dataset, val_coco):
    calib = [n for n in os.listdir(demo_dataset.calib_dir) if n.endswith(".jpg")]
    assert len(calib) == CALIB_IMAGES >= 128
    assert len(val_coco.getImgIds()) == VAL_IMAGES >= 200
    assert len(os.listdir(demo_dataset.val_images_dir)) == VAL_IMAGES
    # The training split is only generated when asked for.
    assert demo_dataset.train_images_dir is None and demo_dataset.train_annotations is None


def test_annotations_are_valid_coco_with_boxes_inside_images(val_coco):
    anns = val_coco.loadAnns(val_coco.getAnnIds())
    assert len(anns) > 3 * VAL_IMAGES
    for ann in anns:
        img = val_coco.loadImgs(ann["image_id"])[0]
        x, y, w, h = ann["bbox"]
        assert w > 0 and h > 0 and ann["area"] > 0
        assert x >= 0 and y >= 0 and x + w <= img["width"] and y + h <= img["height"]
        assert ann["area"] <= w * h  # pixel area of the shape, never more than its box
        assert ann["iscrowd"] == 0


def test_categories_are_coco_style_and_all_used(val_coco):
    cats = val_coco.loadCats(val_coco.getCatIds())
    ids = sorted(c["id"] for c in cats)
    assert ids == sorted(CATEGORY_IDS) and len(ids) >= 6
    assert ids != list(range(ids[0], ids[0] + len(ids)))  # non-contiguous, as in COCO
    assert [c["name"] for c in sorted(cats, key=lambda c: c["id"])] == CLASS_NAMES
    used = {a["category_id"] for a in val_coco.loadAnns(val_coco.getAnnIds())}
    assert used == set(ids)


def test_data_is_not_trivial(val_coco):
    anns = val_coco.loadAnns(val_coco.getAnnIds())
    longest = np.array([max(a["bbox"][2], a["bbox"][3]) for a in anns])
    assert (longest < 16).mean() > 0.05  # small objects, under 16 px
    assert (longest > 96).mean() > 0.05  # and large ones
    imgs = val_coco.loadImgs(val_coco.getImgIds())
    sizes = {(i["width"], i["height"]) for i in imgs}
    aspects = np.array([i["width"] / float(i["height"]) for i in imgs])
    assert len(sizes) > 100
    assert (aspects < 0.8).any() and (aspects > 1.25).any()  # letterboxing pads both ways
    # Overlapping objects exist.
    overlaps = 0
    for image_id in val_coco.getImgIds():
        boxes = [a["bbox"] for a in val_coco.loadAnns(val_coco.getAnnIds(imgIds=image_id))]
        for i in range(len(boxes)):
            for j in range(i + 1, len(boxes)):
                (x1, y1, w1, h1), (x2, y2, w2, h2) = boxes[i], boxes[j]
                overlaps += min(x1 + w1, x2 + w2) > max(x1, x2) and min(y1 + h1, y2 + h2) > max(y1, y2)
    assert overlaps > 20


def test_cache_is_reused_and_named_by_version_and_seed(demo_cache, demo_dataset):
    before = os.path.getmtime(demo_dataset.val_annotations)
    again = demo_data(demo_cache)
    assert again == demo_dataset
    assert os.path.getmtime(again.val_annotations) == before
    assert os.path.basename(demo_dataset.root) == "demo-data-g%d-s0" % GENERATOR_VERSION
    assert not [n for n in os.listdir(demo_cache) if "partial" in n]  # nothing half-written left


def test_cache_location_follows_edgekit_cache(monkeypatch, demo_cache, demo_dataset):
    monkeypatch.setenv("EDGEKIT_CACHE", demo_cache)
    assert demo_data() == demo_dataset


def test_cache_dir_that_is_a_file_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(EdgekitError) as err:
        demo_data(str(blocker))
    assert "is a file" in str(err.value) and "\n" not in str(err.value)


def test_annotation_file_is_plain_json(demo_dataset):
    with open(demo_dataset.val_annotations) as f:
        data = json.load(f)
    assert set(data) >= {"images", "annotations", "categories"}
    assert data["info"]["version"] == GENERATOR_VERSION
