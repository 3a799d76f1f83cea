"""`edgekit prune`'s accuracy: mAP before pruning, after it, and after recovery.

Measured on a COCO evaluation set when one is at hand (``--eval``, or the
demo's validation split for --model demo), with the same preprocess,
postprocess and pycocotools code as ``edgekit build``'s host mAP. Cheap by
default: the first ``--eval-images`` images (100).
"""
from typing import Any, Callable, Dict, List, Optional, Tuple

from edgekit.contract.errors import EdgekitError

DEFAULT_EVAL_IMAGES = 100


class PruneAccuracy(object):
    """Evaluates models on one set and keeps each stage's numbers ({stage: {map, map50}})."""

    def __init__(self, evaluate: Callable[[Any], Dict[str, float]], images: int, source: str) -> None:
        self._evaluate = evaluate
        self.images = images
        self.source = source  # where the images come from, for the report
        self.stages: Dict[str, Dict[str, float]] = {}

    def measure(self, stage: str, model: Any) -> Dict[str, float]:
        stats = self._evaluate(model)
        self.stages[stage] = {"map": round(float(stats["map"]), 6), "map50": round(float(stats["map50"]), 6)}
        return self.stages[stage]

    def to_dict(self) -> Dict[str, Any]:
        """The report's ``accuracy`` block: metric, images, set, and {original, pruned, recovered} (null when not measured)."""
        out: Dict[str, Any] = {"metric": "coco_map", "images": self.images, "eval": self.source}
        for stage in ("original", "pruned", "recovered"):
            out[stage] = self.stages.get(stage)
        return out

    def line(self) -> str:
        """One line for the terminal: each stage's mAP and the points lost against the original."""
        base = (self.stages.get("original") or {}).get("map")
        bits = []
        for stage in ("original", "pruned", "recovered"):
            stats = self.stages.get(stage)
            if stats is None:
                continue
            text = "%s %.3f" % (stage, stats["map"])
            if stage != "original" and base is not None:
                text += " (%+.1f points)" % ((stats["map"] - base) * 100.0)
            bits.append(text)
        return "mAP@0.5:0.95 on %d images: %s" % (self.images, ", ".join(bits))

    def warnings(self, recovering: bool) -> List[str]:
        """What the numbers say the user should do (the same thresholds as edgekit build's flags)."""
        from edgekit.host.report.map_loss import MAX_LOSS_POINTS, NEAR_ZERO_MAP

        base = (self.stages.get("original") or {}).get("map")
        final = self.stages.get("recovered" if recovering else "pruned")
        if base is None or final is None:
            return []
        lost = (base - final["map"]) * 100.0
        if not recovering and final["map"] < NEAR_ZERO_MAP:
            return ["the pruned model detects almost nothing (mAP %.3f) without recovery; prune again with --recover-seconds 300 (or --recover-steps)" % final["map"]]
        if lost > MAX_LOSS_POINTS:
            fix = "give recovery longer (--recover-seconds / --recover-steps), or prune less" if recovering else "recover it: --recover-seconds 300 (or --recover-steps)"
            return ["the pruned model loses %.1f mAP points (%.3f -> %.3f); %s" % (lost, base, final["map"], fix)]
        return []


def prune_accuracy(eval_ref: Optional[str], limit: int, loaded: Any, size: Tuple[int, int]) -> Optional[PruneAccuracy]:
    """The evaluator for this model, or None: --eval none, a classifier, or no set known (not --model demo, no --eval)."""
    if eval_ref == "none" or loaded.task != "detect":
        return None
    if limit < 1:
        raise EdgekitError("--eval-images must be at least 1", "pass a positive number, or --eval none to skip the accuracy")
    from edgekit.calibration.preprocess import PreprocessSpec
    from edgekit.contract.specs import PostprocessSpec

    demo = loaded.source in ("demo", "demo-v8")
    if eval_ref is None and not demo:
        return None
    if eval_ref is None:
        from edgekit.host import demo as demo_pkg

        data = demo_pkg.demo_data()
        annotations, images_dir, source = data.val_annotations, data.val_images_dir, "the demo's validation split"
    else:
        from edgekit.host.bundle.eval_set import load_eval_set

        found = load_eval_set(eval_ref)
        annotations, images_dir, source = found.annotations, found.images_dir, eval_ref
    if demo:
        from edgekit.host import demo as demo_pkg

        post = demo_pkg.postprocess_spec(loaded.source)
    else:
        post = PostprocessSpec(layout=loaded.output_layout, class_names=loaded.class_names, category_ids=loaded.category_ids)
    pre = PreprocessSpec(size=size)  # letterbox, pad 114, RGB, /255: what prune calibrates with
    count = _count_images(annotations, limit)

    def evaluate(model: Any) -> Dict[str, float]:
        from edgekit.host.demo.evaluate import evaluate_coco_torch

        return evaluate_coco_torch(_on_cpu(model), images_dir, annotations, pre, post, limit=limit)

    return PruneAccuracy(evaluate, count, source)


def _count_images(annotations: str, limit: int) -> int:
    import json

    try:
        with open(annotations, "r", encoding="utf-8") as f:
            total = len(json.load(f).get("images") or [])
    except (OSError, ValueError) as exc:
        raise EdgekitError("cannot read COCO annotations %s (%s)" % (annotations, exc), "pass a valid COCO instances.json with --eval")
    return min(total, limit)


def _on_cpu(model: Any) -> Any:
    """The evaluation feeds CPU tensors: a model left on a GPU is evaluated through a CPU copy."""
    import copy

    params = list(model.parameters())
    if params and params[0].device.type != "cpu":
        return copy.deepcopy(model).cpu()
    return model


def add_to_report(path: str, block: Dict[str, Any]) -> None:
    """Put the ``accuracy`` block into the written prune_report.json (replaced atomically)."""
    import json
    import os

    try:
        with open(path, "r", encoding="utf-8") as f:
            data = json.load(f)
        data["accuracy"] = block
        tmp = path + ".partial"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2)
        os.replace(tmp, path)
    except (OSError, ValueError) as exc:
        raise EdgekitError("cannot add the accuracy to %s (%s)" % (path, exc), "check the --out folder is writable")
