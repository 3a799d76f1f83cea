"""Accuracy on the board: the bundle's evaluation set through the same
preprocess, postprocess and COCO evaluation code the host used for its
reference numbers, so any difference is the board's doing.

Detection: decode + NMS (edgekit.device.postprocess), boxes mapped back through
the letterbox, class index -> COCO category id, then pycocotools' COCOeval (all
12 stats). Classification: top-1 and top-5 from the logits.

Every image's preprocess, inference and postprocess are timed separately: the
per-stage split of the result comes from this pass.
"""
import json
import math
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from edgekit.contract.errors import EdgekitError

# Which stat the drift gate compares, per metric.
GATED_STAT = {"coco_map": "map", "top1": "top1"}


class DetectionTask(object):
    metric = "coco_map"

    def __init__(self, bundle: Any, max_images: Optional[int] = None, annotations: bool = True) -> None:
        from edgekit.calibration.preprocess import PreprocessSpec

        from .postprocess import PostprocessSpec

        manifest = bundle.manifest
        self.pre = PreprocessSpec.from_dict(manifest["preprocess"])
        self.post = PostprocessSpec.from_dict(manifest["postprocess"])
        self.coco = None  # type: Any
        # Per-class AP and PR curves of the last finish() (edgekit.device.coco_eval.pr_curves).
        self.curves = None  # type: Optional[Dict[str, Any]]
        ev = bundle.eval_spec()
        if not annotations:
            # Timing only (bench): the image files are enough, pycocotools is not needed.
            self.images = listed_images(bundle, max_images)
            self.total = len(self.images)
            return
        if not ev or not ev.get("annotations"):
            raise EdgekitError("bundle %s has no detection evaluation set (eval.annotations)" % bundle.name, "rebuild it with an evaluation set, or use 'bench'")
        from .coco_eval import load_coco

        try:
            self.coco = load_coco(bundle.path_of(ev["annotations"]))
        except ImportError as exc:
            raise EdgekitError("pycocotools is not usable by this python3 (%s)" % exc, "pip3 install pycocotools")
        except (ValueError, KeyError, OSError) as exc:
            raise EdgekitError("%s is not a COCO annotation file (%s)" % (ev["annotations"], exc), "rebuild the bundle")
        images_dir = ev["images"].rstrip("/")
        ids = sorted(self.coco.getImgIds())
        self.total = len(ids)
        if max_images:
            ids = ids[: int(max_images)]
        self.images = [(i, images_dir + "/" + self.coco.imgs[i]["file_name"]) for i in ids]  # type: List[Tuple[Any, str]]

    def postprocess(self, outputs: List[Any], transform: Any) -> Any:
        from .postprocess import postprocess

        boxes, scores, classes = postprocess(outputs[0], self.post)
        return transform.boxes_to_original(boxes), scores, classes

    def new_collector(self) -> Any:
        from .coco_eval import DetectionCollector

        return DetectionCollector(self.post.category_ids)

    def add(self, collector: Any, image_id: Any, result: Any) -> None:
        boxes, scores, classes = result
        if len(classes) and int(classes.max()) >= len(self.post.category_ids):
            raise EdgekitError(
                "the model predicted class %d but the manifest lists %d classes" % (int(classes.max()), len(self.post.category_ids)),
                "rebuild the bundle with the model's class names",
            )
        collector.add(image_id, boxes, scores, classes)

    def finish(self, collector: Any) -> Dict[str, float]:
        from .coco_eval import evaluate

        curves = {}  # type: Dict[str, Any]
        stats = evaluate(self.coco, collector, [i for i, _ in self.images], curves=curves)
        self.curves = curves
        return stats


class ClassificationTask(object):
    metric = "top1"
    curves = None  # type: Optional[Dict[str, Any]]

    def __init__(self, bundle: Any, max_images: Optional[int] = None, annotations: bool = True) -> None:
        from edgekit.calibration.preprocess import PreprocessSpec

        manifest = bundle.manifest
        self.pre = PreprocessSpec.from_dict(manifest["preprocess"])
        self.top_k = 5
        ev = bundle.eval_spec()
        if not annotations:
            self.images = listed_images(bundle, max_images)
            self.total = len(self.images)
            return
        if not ev or not ev.get("labels"):
            raise EdgekitError("bundle %s has no classification evaluation set (eval.labels)" % bundle.name, "rebuild it with an evaluation set, or use 'bench'")
        try:
            with open(bundle.path_of(ev["labels"]), "r", encoding="utf-8") as f:
                labels = json.load(f)
        except (OSError, ValueError) as exc:
            raise EdgekitError("cannot read %s (%s)" % (ev["labels"], exc), "rebuild the bundle")
        # {"file.jpg": 3, ...} or [{"file": "file.jpg", "label": 3}, ...]; files relative to eval.images
        if isinstance(labels, dict):
            pairs = sorted(labels.items())
        elif isinstance(labels, list):
            pairs = [(item["file"], item["label"]) for item in labels]
        else:
            raise EdgekitError("%s must map image files to class indices" % ev["labels"], "rebuild the bundle")
        images_dir = ev["images"].rstrip("/")
        self.total = len(pairs)
        if max_images:
            pairs = pairs[: int(max_images)]
        self.images = [(int(label), images_dir + "/" + name) for name, label in pairs]

    def postprocess(self, outputs: List[Any], transform: Any) -> Any:
        import numpy as np

        logits = np.asarray(outputs[0]).reshape(-1)
        k = min(self.top_k, logits.shape[0])
        top = np.argpartition(-logits, k - 1)[:k]
        return top[np.argsort(-logits[top], kind="stable")]

    def new_collector(self) -> Dict[str, int]:
        return {"top1": 0, "top5": 0, "n": 0}

    def add(self, collector: Dict[str, int], label: Any, result: Any) -> None:
        collector["n"] += 1
        collector["top1"] += int(len(result) > 0 and int(result[0]) == label)
        collector["top5"] += int(label in [int(c) for c in result[:5]])

    def finish(self, collector: Dict[str, int]) -> Dict[str, float]:
        n = max(collector["n"], 1)
        return {"top1": collector["top1"] / float(n), "top5": collector["top5"] / float(n)}


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def listed_images(bundle: Any, limit: Optional[int] = None) -> List[Tuple[Any, str]]:
    """The evaluation images the manifest lists, without reading any annotation."""
    ev = bundle.eval_spec()
    if not ev:
        return []
    prefix = ev["images"].rstrip("/") + "/"
    rels = sorted(r for r in bundle.manifest["files"] if r.startswith(prefix) and r.lower().endswith(IMAGE_EXTENSIONS))
    if limit:
        rels = rels[: int(limit)]
    return [(None, r) for r in rels]


def make_task(bundle: Any, max_images: Optional[int] = None, annotations: bool = True) -> Any:
    task = bundle.manifest.get("task")
    if task == "detect":
        return DetectionTask(bundle, max_images, annotations)
    if task == "classify":
        return ClassificationTask(bundle, max_images, annotations)
    raise EdgekitError("unknown task %r" % task, "rebuild the bundle")


def image_pass(
    runner: Any,
    bundle: Any,
    task: Any,
    images: List[Tuple[Any, str]],
    collect: bool = True,
    on_progress: Optional[Callable[[int, int], None]] = None,
) -> Tuple[Dict[str, List[float]], Any]:
    """Preprocess, infer and postprocess each image, timing each stage; returns (stage ms lists, collector)."""
    from edgekit.calibration.preprocess import preprocess_file

    clock = time.perf_counter
    stages = {"preprocess": [], "inference": [], "postprocess": []}  # type: Dict[str, List[float]]
    collector = task.new_collector() if collect else None
    total = len(images)
    for n, (key, rel) in enumerate(images, 1):
        path = bundle.path_of(rel)
        t0 = clock()
        try:
            x, transform = preprocess_file(path, task.pre)
        except (OSError, ValueError, SyntaxError) as exc:  # PIL raises SyntaxError for some broken files
            raise EdgekitError("cannot decode %s (%s)" % (rel, exc), "copy the bundle again or rebuild it")
        t1 = clock()
        outputs = runner.infer(x)  # synchronous: returns host arrays
        t2 = clock()
        result = task.postprocess(outputs, transform)
        t3 = clock()
        stages["preprocess"].append((t1 - t0) * 1000.0)
        stages["inference"].append((t2 - t1) * 1000.0)
        stages["postprocess"].append((t3 - t2) * 1000.0)
        if collector is not None:
            task.add(collector, key, result)
        if on_progress is not None:
            on_progress(n, total)
    return stages, collector


def host_reference(variant: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    ref = variant.get("host_metrics")
    if not isinstance(ref, dict):
        return None
    if isinstance(ref.get("stats"), dict):
        merged = dict(ref["stats"])
        if "images" in ref:
            merged.setdefault("images", ref["images"])
        return merged
    return ref


def judge(
    metric: str, stats: Dict[str, float], images: int, total: int, variant: Dict[str, Any], max_drift: float, curves: Optional[Dict[str, Any]] = None
) -> Dict[str, Any]:
    """The run's ``accuracy``: stats, the host's reference, drift, the gate's verdict and (detection) the curves."""
    key = GATED_STAT[metric]
    ref = host_reference(variant)
    accuracy = {
        "metric": metric,
        "stats": {k: round(float(v), 6) for k, v in stats.items()},
        "images": images,
        "host_reference": ref,
        "drift": None,
        "max_drift": max_drift,
        "passed": None,
        "note": None,
    }  # type: Dict[str, Any]
    if curves:
        accuracy["curves"] = curves
    if ref is None or ref.get(key) is None:
        accuracy["note"] = "the manifest has no host reference for this variant; no drift gate"
        return accuracy
    ref_images = ref.get("images")
    if images < total or (isinstance(ref_images, int) and ref_images != images):
        accuracy["note"] = "evaluated %d of %d images; not compared with the host reference" % (images, ref_images or total)
        return accuracy
    drift = float(stats[key]) - float(ref[key])
    accuracy["drift"] = round(drift, 6)
    # A small epsilon so that a drift equal to the limit (after rounding) passes.
    accuracy["passed"] = bool(math.fabs(drift) <= max_drift + 1e-9)
    if not accuracy["passed"]:
        accuracy["note"] = "%s drifted %+.4f from the host's %.4f (limit %.4f)" % (key, drift, float(ref[key]), max_drift)
    return accuracy
