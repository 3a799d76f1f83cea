"""Image preprocessing, identical on host and device.

The manifest's ``preprocess`` block is a :class:`PreprocessSpec`; the host uses
it to calibrate and evaluate, the agent to feed the board, so both see the same
tensors. Python 3.8, numpy and pillow only.
"""
from typing import Any, Dict, Sequence, Tuple

import numpy as np
from PIL import Image

RESIZE_MODES = ("letterbox", "stretch")
COLOR_ORDERS = ("RGB", "BGR")
LAYOUTS = ("NCHW", "NHWC")


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
        if layout not in LAYOUTS:
            raise ValueError("preprocess.layout must be one of %s, got %r" % (LAYOUTS, layout))
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


class Transform(object):
    """Where the original image landed in the network input (to map boxes back)."""

    def __init__(self, ratio_w: float, ratio_h: float, pad_w: float, pad_h: float, orig_w: int, orig_h: int) -> None:
        self.ratio_w = ratio_w
        self.ratio_h = ratio_h
        self.pad_w = pad_w
        self.pad_h = pad_h
        self.orig_w = orig_w
        self.orig_h = orig_h

    def boxes_to_original(self, xyxy: np.ndarray) -> np.ndarray:
        """Map (N, 4) xyxy boxes in network pixels back to the original image, clipped."""
        out = np.empty_like(xyxy, dtype=np.float32)
        out[:, [0, 2]] = (xyxy[:, [0, 2]] - self.pad_w) / self.ratio_w
        out[:, [1, 3]] = (xyxy[:, [1, 3]] - self.pad_h) / self.ratio_h
        np.clip(out[:, [0, 2]], 0, self.orig_w, out=out[:, [0, 2]])
        np.clip(out[:, [1, 3]], 0, self.orig_h, out=out[:, [1, 3]])
        return out


def load_rgb(path: str) -> Image.Image:
    """Decode an image file to RGB (raises OSError/ValueError on unreadable files)."""
    with Image.open(path) as img:
        img.load()
        return img.convert("RGB") if img.mode != "RGB" else img.copy()


def resize_image(img: Image.Image, spec: PreprocessSpec) -> Tuple[np.ndarray, Transform]:
    """Resize (letterbox or stretch) to the spec's size; returns HWC uint8 RGB and the transform."""
    h, w = spec.size
    ow, oh = img.size
    if spec.resize == "stretch":
        arr = np.asarray(img.resize((w, h), Image.BILINEAR), dtype=np.uint8)
        return arr, Transform(w / float(ow), h / float(oh), 0.0, 0.0, ow, oh)
    r = min(h / float(oh), w / float(ow))
    nw, nh = int(round(ow * r)), int(round(oh * r))
    resized = img if (nw, nh) == (ow, oh) else img.resize((nw, nh), Image.BILINEAR)
    canvas = np.full((h, w, 3), spec.pad_value, dtype=np.uint8)
    # Centre the image; integer offsets, as YOLOv5's letterbox rounds them.
    left = int(round((w - nw) / 2.0 - 0.1))
    top = int(round((h - nh) / 2.0 - 0.1))
    canvas[top : top + nh, left : left + nw] = np.asarray(resized, dtype=np.uint8)
    return canvas, Transform(nw / float(ow), nh / float(oh), float(left), float(top), ow, oh)


def to_tensor(hwc_rgb: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """HWC uint8 RGB -> a batch of one in the spec's layout, colour order and scaling."""
    arr = hwc_rgb
    if spec.color == "BGR":
        arr = arr[:, :, ::-1]
    x = arr.astype(np.float32) * np.float32(spec.scale)
    if spec.mean != (0.0, 0.0, 0.0) or spec.std != (1.0, 1.0, 1.0):
        x = (x - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    if spec.layout == "NCHW":
        x = x.transpose(2, 0, 1)
    return np.ascontiguousarray(x[None], dtype=np.dtype(spec.dtype))


def preprocess_image(img: Image.Image, spec: PreprocessSpec) -> Tuple[np.ndarray, Transform]:
    arr, transform = resize_image(img, spec)
    return to_tensor(arr, spec), transform


def preprocess_file(path: str, spec: PreprocessSpec) -> Tuple[np.ndarray, Transform]:
    return preprocess_image(load_rgb(path), spec)

