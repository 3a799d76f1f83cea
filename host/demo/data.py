"""The demo data set on disk: generated on first use into a cache, never downloaded.

Layout under the cache folder (``$EDGEKIT_CACHE`` or ``~/.cache/edgekit``)::

    demo-data-g<generator version>-s<seed>/
      calib/*.jpg                          calibration images (no labels)
      val/images/*.jpg, val/instances.json annotated validation split (COCO)
      train/images/*.jpg, train/instances.json   only once training asks for it

Each split is written into a hidden temporary folder and renamed into place
when complete, so an interrupted run never leaves a half-written split that a
later run would trust. The folder name carries the generator version and seed:
a changed generator never reuses stale data.
"""
import json
import os
import shutil
import tempfile
from typing import Any, Callable, Dict, List, NamedTuple, Optional

import numpy as np

from edgekit.contract.errors import EdgekitError
from .shapes import CATEGORY_IDS, CLASS_NAMES, render_image

# Bump whenever shapes.py or the split sizes change what gets written.
GENERATOR_VERSION = 1
DEFAULT_SEED = 0
CALIB_IMAGES = 128
VAL_IMAGES = 250
TRAIN_IMAGES = 6000
# Split ids keep the three splits' random streams apart for one seed.
_SPLIT_IDS = {"calib": 1, "val": 2, "train": 3}


class DemoData(NamedTuple):
    """Paths of a generated demo data set (train paths are None until generated)."""

    root: str
    calib_dir: str
    val_images_dir: str
    val_annotations: str
    train_images_dir: Optional[str]
    train_annotations: Optional[str]


def default_cache_dir() -> str:
    return os.environ.get("EDGEKIT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "edgekit")


def image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The random stream of one image: a pure function of (seed, split, index)."""
    return np.random.default_rng([int(seed), _SPLIT_IDS[split], int(index)])


def coco_categories() -> List[Dict[str, Any]]:
    return [{"id": cid, "name": name, "supercategory": "shape"} for cid, name in zip(CATEGORY_IDS, CLASS_NAMES)]


def write_split(out_dir: str, split: str, count: int, seed: int, annotate: bool, progress: Optional[Callable[[int, int], None]] = None) -> None:
    """Render ``count`` images of ``split`` into ``out_dir`` (images/ + instances.json when annotated)."""
    images_dir = os.path.join(out_dir, "images") if annotate else out_dir
    os.makedirs(images_dir, exist_ok=True)
    images: List[Dict[str, Any]] = []
    annotations: List[Dict[str, Any]] = []
    for index in range(count):
        img, objects, quality = render_image(image_rng(seed, split, index))
        name = "%s_%06d.jpg" % (split, index)
        img.save(os.path.join(images_dir, name), format="JPEG", quality=quality)
        image_id = index + 1
        images.append({"id": image_id, "file_name": name, "width": img.size[0], "height": img.size[1]})
        for obj in objects:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": CATEGORY_IDS[int(obj["class_index"])],  # type: ignore[call-overload]
                    "bbox": [float(v) for v in obj["bbox"]],  # type: ignore[attr-defined]
                    "area": obj["area"],
                    "iscrowd": 0,
                }
            )
        if progress is not None:
            progress(index + 1, count)
    if annotate:
        coco = {
            "info": {"description": "edgekit demo shapes, split %s" % split, "version": GENERATOR_VERSION, "seed": seed},
            "images": images,
            "annotations": annotations,
            "categories": coco_categories(),
        }
        with open(os.path.join(out_dir, "instances.json"), "w") as f:
            json.dump(coco, f)


def _atomic_split(final_dir: str, build: Callable[[str], None]) -> None:
    """Build into a temporary sibling, then rename; a concurrent winner is kept."""
    if os.path.isdir(final_dir):
        return
    parent = os.path.dirname(final_dir)
    try:
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=".%s.partial-" % os.path.basename(final_dir), dir=parent)
    except OSError as exc:
        raise EdgekitError("cannot write the demo data to %s (%s)" % (parent, exc.strerror), "set EDGEKIT_CACHE or --out to a writable folder")
    try:
        build(tmp)
        try:
            os.rename(tmp, final_dir)
        except OSError:
            if not os.path.isdir(final_dir):  # not a lost race: a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def demo_data(cache_dir: Optional[str] = None, train: bool = False, seed: int = DEFAULT_SEED) -> DemoData:
    """The demo data set, generated on first use (calib + val take a few seconds).

    ``train=True`` also generates the training split (about a minute, once).
    """
    base = os.path.abspath(os.path.expanduser(cache_dir or default_cache_dir()))
    if os.path.exists(base) and not os.path.isdir(base):
        raise EdgekitError("demo data folder %s is a file" % base, "pass a folder (or set EDGEKIT_CACHE to one)")
    root = os.path.join(base, "demo-data-g%d-s%d" % (GENERATOR_VERSION, seed))

    def build_eval(tmp: str) -> None:
        write_split(os.path.join(tmp, "calib"), "calib", CALIB_IMAGES, seed, annotate=False)
        write_split(os.path.join(tmp, "val"), "val", VAL_IMAGES, seed, annotate=True)

    _atomic_split(root, build_eval)
    train_dir = os.path.join(root, "train")
    if train:
        _atomic_split(train_dir, lambda tmp: write_split(tmp, "train", TRAIN_IMAGES, seed, annotate=True))
    has_train = os.path.isfile(os.path.join(train_dir, "instances.json"))
    return DemoData(
        root=root,
        calib_dir=os.path.join(root, "calib"),
        val_images_dir=os.path.join(root, "val", "images"),
        val_annotations=os.path.join(root, "val", "instances.json"),
        train_images_dir=os.path.join(train_dir, "images") if has_train else None,
        train_annotations=os.path.join(train_dir, "instances.json") if has_train else None,
    )
