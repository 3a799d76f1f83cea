"""edgekit's built-in demo: a small YOLOv5-style detector, its data and its weights.

Everything a pipeline step needs to work on something real without a download::

    from edgekit.host.demo import load_demo_model, demo_data, preprocess_spec, postprocess_spec
    model = load_demo_model()          # eval mode, float32, shipped weights
    data = demo_data()                 # generated on first use into the cache
    metrics = evaluate_torch(model, data)   # 12 COCO stats by name

torch is imported only by the functions that need it, so ``edgekit demo data``
stays quick.
"""
import os
from typing import TYPE_CHECKING, Dict, Optional, Tuple

from edgekit.calibration.preprocess import PreprocessSpec
from edgekit.device.postprocess import PostprocessSpec

from edgekit.contract.errors import EdgekitError
from .data import DEFAULT_SEED, GENERATOR_VERSION, DemoData, default_cache_dir, demo_data
from .shapes import CATEGORY_IDS, CLASS_NAMES

if TYPE_CHECKING:  # pragma: no cover
    from .model import DemoDetector

__all__ = [
    "INPUT_SIZE",
    "CLASS_NAMES",
    "CATEGORY_IDS",
    "WEIGHTS_PATH",
    "DemoData",
    "demo_data",
    "default_cache_dir",
    "load_demo_model",
    "build_demo_model",
    "preprocess_spec",
    "postprocess_spec",
    "evaluate_torch",
    "GENERATOR_VERSION",
    "DEFAULT_SEED",
]

# (height, width) of the network input the shipped weights were trained at.
INPUT_SIZE: Tuple[int, int] = (320, 320)
WEIGHTS_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "demo_detector.pt")


def build_demo_model() -> "DemoDetector":
    """The demo architecture with fresh (untrained) weights, in train mode."""
    from .model import DemoDetector

    return DemoDetector(num_classes=len(CLASS_NAMES))


def load_demo_model(pretrained: bool = True, weights: Optional[str] = None) -> "DemoDetector":
    """The demo detector in eval mode, float32; ``pretrained`` loads the shipped weights.

    ``weights`` overrides the shipped file: a checkpoint from ``edgekit demo train``, or a
    pruned model from ``edgekit prune --model demo``.
    """
    import torch

    model = build_demo_model()
    if pretrained:
        path = weights or WEIGHTS_PATH
        if not os.path.isfile(path):
            fix = "check the path, or leave it out to use the shipped weights" if weights else "reinstall edgekit, or train them with `edgekit demo train`"
            raise EdgekitError("demo weights %s are missing" % path, fix)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # corrupt file, or not a state dict
            raise EdgekitError("cannot read demo weights %s (%s)" % (path, " ".join(str(exc).split())[:200]), "reinstall edgekit or retrain them")
        from edgekit.host.prune.checkpoint import is_pruned_checkpoint, load_pruned_state

        if is_pruned_checkpoint(state):
            # What `edgekit prune` writes: resize the layers, then load (its hint names this file).
            return load_pruned_state(model, state, "pruned demo model %s" % path).float().eval()
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise EdgekitError("demo weights %s are not a state dict" % path, "reinstall edgekit or retrain them")
        # Shipped as fp16 to stay small; the model always runs in float32.
        state = {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise EdgekitError(
                "demo weights %s do not fit the demo model (%s)" % (path, " ".join(str(exc).split())[:200]),
                "retrain them with `edgekit demo train`",
            )
    return model.float().eval()


def preprocess_spec() -> PreprocessSpec:
    """Letterbox to INPUT_SIZE (pad 114), RGB, /255, NCHW float32: what the demo was trained on."""
    return PreprocessSpec(size=INPUT_SIZE, resize="letterbox", pad_value=114, color="RGB", scale=1.0 / 255.0, layout="NCHW")


def postprocess_spec() -> PostprocessSpec:
    """YOLOv5 export layout with the demo's class names and COCO category ids (mAP settings)."""
    return PostprocessSpec(layout="yolov5", score_threshold=0.001, iou_threshold=0.6, max_detections=300, class_names=CLASS_NAMES, category_ids=CATEGORY_IDS)


def evaluate_torch(model: "DemoDetector", data: DemoData, limit: Optional[int] = None) -> Dict[str, float]:
    """Plain PyTorch evaluation on the validation split -> the 12 COCO stats by name."""
    from .evaluate import evaluate_coco_torch

    return evaluate_coco_torch(model, data.val_images_dir, data.val_annotations, preprocess_spec(), postprocess_spec(), limit=limit)

