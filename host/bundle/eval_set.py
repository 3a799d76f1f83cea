"""The evaluation set a bundle carries: COCO annotations plus their images.

``--eval`` takes either a COCO ``instances.json`` (images are looked up next
to it, or in an ``images/`` folder beside it) or a folder holding one
(``instances.json``, ``annotations.json`` or ``annotations/instances*.json``)
with its images. The bundle gets ``eval/instances.json`` and
``eval/images/<file_name>`` for every image it lists, so the device scores
exactly what the host scored.
"""
import dataclasses
import glob
import json
import os
from typing import Any, Dict, List, Optional

from edgekit.contract.manifest import check_relative_path

from edgekit.contract.errors import EdgekitError

ANNOTATION_NAMES = ("instances.json", "annotations.json", "val.json")


@dataclasses.dataclass
class EvalSet:
    annotations: str  # path of the COCO json (possibly a subset written to a temp file)
    images_dir: str
    coco: Dict[str, Any]  # the parsed json (images limited when a limit was asked)

    @property
    def count(self) -> int:
        return len(self.coco["images"])

    def image_path(self, image: Dict[str, Any]) -> str:
        return os.path.join(self.images_dir, *image["file_name"].replace("\\", "/").split("/"))


def _find_annotations(folder: str) -> Optional[str]:
    for name in ANNOTATION_NAMES:
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            return path
    found = sorted(glob.glob(os.path.join(folder, "annotations", "instances*.json")))
    return found[0] if found else None


def _images_dir_for(annotations: str, coco: Dict[str, Any]) -> str:
    """The folder the json's file_names are relative to: beside it, or images/ beside it."""
    base = os.path.dirname(os.path.abspath(annotations))
    candidates = [os.path.join(base, "images"), base, os.path.join(os.path.dirname(base), "images")]
    first = coco["images"][0]["file_name"] if coco["images"] else ""
    for folder in candidates:
        if first and os.path.isfile(os.path.join(folder, first)):
            return folder
    raise EdgekitError(
        "cannot find the images of %s (looked for %s in %s)" % (annotations, first, ", ".join(candidates)),
        "put the images in an images/ folder beside the annotations",
    )


def load_eval_set(ref: str, limit: Optional[int] = None) -> EvalSet:
    """Resolve ``--eval`` (folder or COCO json) into annotations + image folder; check every image exists."""
    if not os.path.exists(ref):
        raise EdgekitError("evaluation set %s does not exist" % ref, "pass a folder with images and instances.json, or a COCO json")
    if os.path.isdir(ref):
        annotations = _find_annotations(ref)
        if annotations is None:
            raise EdgekitError(
                "evaluation folder %s has no annotations (%s or annotations/instances*.json)" % (ref, ", ".join(ANNOTATION_NAMES)),
                "add COCO annotations to the folder, or pass --eval none",
            )
    else:
        annotations = ref
    try:
        with open(annotations, "r", encoding="utf-8") as f:
            coco = json.load(f)
    except (OSError, ValueError) as exc:
        raise EdgekitError("cannot read COCO annotations %s (%s)" % (annotations, " ".join(str(exc).split())[:200]), "pass a valid COCO instances.json")
    if not isinstance(coco, dict) or not all(isinstance(coco.get(k), list) for k in ("images", "annotations", "categories")):
        raise EdgekitError("%s is not COCO detection annotations (needs images, annotations, categories)" % annotations, "pass a COCO instances.json")
    if not coco["images"]:
        raise EdgekitError("%s lists no images" % annotations, "pass annotations with at least one image")
    for image in coco["images"]:
        if not isinstance(image, dict) or "id" not in image or "file_name" not in image:
            raise EdgekitError("%s has an image entry without id or file_name" % annotations, "fix the annotations")
        check_relative_path(image["file_name"], "eval image file_name")
    if limit is not None and limit < len(coco["images"]):
        # The first images by id: the same subset every time.
        keep = sorted(coco["images"], key=lambda im: im["id"])[:limit]
        ids = {im["id"] for im in keep}
        coco = dict(coco, images=keep, annotations=[a for a in coco["annotations"] if a.get("image_id") in ids])
    images_dir = _images_dir_for(annotations, coco)
    missing = [im["file_name"] for im in coco["images"] if not os.path.isfile(os.path.join(images_dir, im["file_name"]))]
    if missing:
        raise EdgekitError(
            "%d of the %d images listed in %s are missing from %s (first: %s)" % (len(missing), len(coco["images"]), annotations, images_dir, missing[0]),
            "copy the missing images or fix the annotations",
        )
    return EvalSet(os.path.abspath(annotations), os.path.abspath(images_dir), coco)


def category_check(eval_set: EvalSet, category_ids: List[int]) -> None:
    """The model's category ids must exist in the annotations, or mAP would silently be zero."""
    known = {c["id"] for c in eval_set.coco["categories"]}
    unknown = [c for c in category_ids if c not in known]
    if unknown and len(unknown) == len(category_ids):
        raise EdgekitError(
            "none of the model's category ids (%s...) appear in %s" % (", ".join(str(c) for c in category_ids[:5]), eval_set.annotations),
            "evaluate on annotations of the classes the model was trained on, or pass --eval none",
        )


def write_eval_set(eval_set: EvalSet, writer: Any) -> Dict[str, Any]:
    """Copy annotations and images into the bundle (``eval/``); returns the manifest's ``eval`` block."""
    writer.add_json("eval/instances.json", eval_set.coco)
    for image in eval_set.coco["images"]:
        rel = check_relative_path(image["file_name"], "eval image file_name")
        writer.add_file("eval/images/" + rel, eval_set.image_path(image))
    return {"images": "eval/images", "annotations": "eval/instances.json", "count": eval_set.count}
