"""The preprocess and postprocess specs: the manifest's ``preprocess`` and
``postprocess`` blocks as typed records.

The host writes them into the bundle, the agent reads them back, and both run
the same code on them (edgekit.calibration.preprocess, edgekit.device.postprocess).
Python 3.8, stdlib only.
"""
from typing import Any, Dict, Optional, Sequence

from .words import COLOR_ORDERS, DETECT_LAYOUTS, RESIZE_MODES, TENSOR_LAYOUTS


class PreprocessSpec(object):
    """How an image becomes the model's input tensor.

    size is (height, width) of the network input. ``letterbox`` keeps the aspect
    ratio and pads with ``pad_value`` around a centred image (YOLOv5's val.py
    behaviour); ``stretch`` resizes to the size directly. Pixels are scaled by
    ``scale`` and then normalised: (x * scale - mean) / std, per channel.
    """

    def __init__(
        self,
        size: Sequence[int],
        resize: str = "letterbox",
        pad_value: int = 114,
        color: str = "RGB",
        scale: float = 1.0 / 255.0,
        mean: Sequence[float] = (0.0, 0.0, 0.0),
        std: Sequence[float] = (1.0, 1.0, 1.0),
        layout: str = "NCHW",
        dtype: str = "float32",
    ) -> None:
        if resize not in RESIZE_MODES:
            raise ValueError("preprocess.resize must be one of %s, got %r" % (RESIZE_MODES, resize))
        if color not in COLOR_ORDERS:
            raise ValueError("preprocess.color must be one of %s, got %r" % (COLOR_ORDERS, color))
        if layout not in TENSOR_LAYOUTS:
            raise ValueError("preprocess.layout must be one of %s, got %r" % (TENSOR_LAYOUTS, layout))
        if len(size) != 2 or min(size) <= 0:
            raise ValueError("preprocess.size must be [height, width], got %r" % (list(size),))
        self.size = (int(size[0]), int(size[1]))
        self.resize = resize
        self.pad_value = int(pad_value)
        self.color = color
        self.scale = float(scale)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.layout = layout
        self.dtype = dtype

    def to_dict(self) -> Dict[str, Any]:
        return {
            "resize": self.resize,
            "size": list(self.size),
            "pad_value": self.pad_value,
            "color": self.color,
            "scale": self.scale,
            "mean": list(self.mean),
            "std": list(self.std),
            "layout": self.layout,
            "dtype": self.dtype,
        }

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "PreprocessSpec":
        known = ("resize", "size", "pad_value", "color", "scale", "mean", "std", "layout", "dtype")
        unknown = [k for k in data if k not in known]
        if unknown:
            raise ValueError("preprocess has unknown key %r" % unknown[0])
        return cls(**data)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PreprocessSpec) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return "PreprocessSpec(%r)" % (self.to_dict(),)


class PostprocessSpec(object):
    def __init__(
        self,
        layout: str = "yolov5",
        score_threshold: float = 0.001,
        iou_threshold: float = 0.6,
        max_detections: int = 300,
        class_names: Sequence[str] = (),
        category_ids: Optional[Sequence[int]] = None,
        multi_label: bool = False,
        max_candidates: int = 30000,
    ) -> None:
        if layout not in DETECT_LAYOUTS:
            raise ValueError("postprocess.layout must be one of %s, got %r" % (DETECT_LAYOUTS, layout))
        self.layout = layout
        self.score_threshold = float(score_threshold)
        self.iou_threshold = float(iou_threshold)
        self.max_detections = int(max_detections)
        self.class_names = list(class_names)
        self.category_ids = list(category_ids) if category_ids is not None else list(range(len(self.class_names)))
        if self.class_names and len(self.category_ids) != len(self.class_names):
            raise ValueError("postprocess.category_ids must have one id per class name")
        self.multi_label = bool(multi_label)
        self.max_candidates = int(max_candidates)

    def to_dict(self) -> Dict[str, Any]:
        return {
            "layout": self.layout,
            "score_threshold": self.score_threshold,
            "iou_threshold": self.iou_threshold,
            "max_detections": self.max_detections,
            "class_names": list(self.class_names),
            "category_ids": list(self.category_ids),
            "multi_label": self.multi_label,
            "max_candidates": self.max_candidates,
        }

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "PostprocessSpec":
        return cls(**data)
