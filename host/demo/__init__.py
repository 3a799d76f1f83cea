"""edgekit's built-in demos: two small detectors, their data and their weights.

``demo`` is YOLOv5-style (anchor-based, output layout ``yolov5``); ``demo-v8``
is YOLOv8-style (C2f blocks with a real ``chunk``, anchor-free decoupled head,
output layout ``yolov8``). Both train on the same data; functions take the
name (default ``demo``).

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
    from torch import nn

__all__ = [
    "INPUT_SIZE",
    "DEMO_MODELS",
    "is_demo",
    "WEIGHTS_PATH_V8",
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
WEIGHTS_PATH_V8 = os.path.join(os.path.dirname(os.path.abspath(__file__)), "demo_detector_v8.pt")
# The built-in models ``--model`` accepts by name: name -> (output layout, shipped weights).
DEMO_MODELS: Dict[str, Tuple[str, str]] = {"demo": ("yolov5", WEIGHTS_PATH), "demo-v8": ("yolov8", WEIGHTS_PATH_V8)}


def is_demo(ref: object) -> bool:
    """Whether ``ref`` (a ``--model`` value) names a built-in demo model."""
    return isinstance(ref, str) and ref in DEMO_MODELS


def _check_name(name: str) -> None:
    if not is_demo(name):
        raise EdgekitError("unknown demo model %r" % (name,), "use one of: %s" % ", ".join(DEMO_MODELS))


def build_demo_model(name: str = "demo") -> "nn.Module":
    """The demo architecture ``name`` with fresh (untrained) weights, in train mode."""
    _check_name(name)
    if name == "demo-v8":
        from .model_v8 import DemoDetectorV8

        return DemoDetectorV8(num_classes=len(CLASS_NAMES))
    from .model import DemoDetector

    return DemoDetector(num_classes=len(CLASS_NAMES))


def load_demo_model(pretrained: bool = True, weights: Optional[str] = None, name: str = "demo") -> "nn.Module":
    """The demo detector ``name`` in eval mode, float32; ``pretrained`` loads the shipped weights.

    ``weights`` overrides the shipped file: a checkpoint from ``edgekit demo train``, or a
    pruned model from ``edgekit prune --model demo``.
    """
    import torch

    model = build_demo_model(name)
    if pretrained:
        path = weights or DEMO_MODELS[name][1]
        if not os.path.isfile(path):
            fix = "check the path, or leave it out to use the shipped weights" if weights else "reinstall edgekit, or train them with `edgekit demo train%s`" % ("" if name == "demo" else " --model " + name)
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


def postprocess_spec(name: str = "demo") -> PostprocessSpec:
    """The demo's export layout (yolov5, or yolov8 for demo-v8) with its class names and COCO category ids (mAP settings)."""
    _check_name(name)
    return PostprocessSpec(layout=DEMO_MODELS[name][0], score_threshold=0.001, iou_threshold=0.6, max_detections=300, class_names=CLASS_NAMES, category_ids=CATEGORY_IDS)


def evaluate_torch(model: "nn.Module", data: DemoData, limit: Optional[int] = None) -> Dict[str, float]:
    """Plain PyTorch evaluation on the validation split -> the 12 COCO stats by name.

    The output layout is the model's own (``output_layout``: yolov8 for demo-v8, else yolov5).
    """
    from .evaluate import evaluate_coco_torch

    name = "demo-v8" if getattr(model, "output_layout", "yolov5") == "yolov8" else "demo"
    return evaluate_coco_torch(model, data.val_images_dir, data.val_annotations, preprocess_spec(), postprocess_spec(name), limit=limit)

