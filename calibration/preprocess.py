"""Image preprocessing, identical on host and device.

The manifest's ``preprocess`` block is a :class:`PreprocessSpec`; the host uses
it to calibrate and evaluate, the agent to feed the board, so both see the same
tensors. Python 3.8, numpy and pillow only.
"""
from typing import Tuple

import numpy as np
from PIL import Image

from edgekit.contract.specs import PreprocessSpec

__all__ = ["PreprocessSpec", "preprocess_file"]


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

