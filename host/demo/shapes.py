"""The demo data set's pictures: coloured shapes on noisy, cluttered backgrounds.

One function, :func:`render_image`, turns a seeded random generator into one
JPEG-ready picture and its boxes. Everything random comes from that generator,
so an image is a pure function of (seed, split, index) and can be rendered in
any order or process. Each object is drawn as an anti-aliased mask (polygons
supersampled 4x, then box-filtered), and its box is measured from the rendered
mask itself, so annotations are exact to the pixel.
"""
import math
from typing import Dict, List, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CLASS_NAMES: List[str] = ["circle", "square", "triangle", "star", "cross", "ring", "diamond", "semicircle"]
# Deliberately non-contiguous, as in COCO (whose ids run 1..90 with gaps).
CATEGORY_IDS: List[int] = [2, 3, 5, 7, 11, 13, 17, 19]

_SUPERSAMPLE = 4
# Named colours plus per-object jitter; colour never tells the class.
_PALETTE = np.array(
    [
        (220, 40, 40),
        (40, 170, 60),
        (40, 80, 220),
        (235, 210, 40),
        (40, 200, 210),
        (200, 50, 200),
        (245, 140, 30),
        (120, 60, 170),
        (245, 245, 245),
        (25, 25, 25),
    ],
    dtype=np.float32,
)


def _unit_polygons(cls: int, rng: np.random.Generator) -> List[Tuple[np.ndarray, bool]]:
    """Polygons of class ``cls`` in unit coordinates (about [-1, 1]); bool = filled (False cuts a hole)."""
    name = CLASS_NAMES[cls]
    if name in ("circle", "ring"):
        t = np.linspace(0, 2 * math.pi, 72, endpoint=False)
        outer = np.stack([np.cos(t), np.sin(t)], 1)
        if name == "circle":
            return [(outer, True)]
        return [(outer, True), (outer * rng.uniform(0.45, 0.62), False)]
    if name == "square":
        return [(np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64), True)]
    if name == "triangle":
        return [(np.array([[0, -1], [1, 1], [-1, 1]], dtype=np.float64), True)]
    if name == "star":
        inner = rng.uniform(0.38, 0.5)
        t = -math.pi / 2 + np.arange(10) * math.pi / 5
        r = np.where(np.arange(10) % 2 == 0, 1.0, inner)
        return [(np.stack([r * np.cos(t), r * np.sin(t)], 1), True)]
    if name == "cross":
        a = rng.uniform(0.28, 0.4)
        pts = [(-a, -1), (a, -1), (a, -a), (1, -a), (1, a), (a, a), (a, 1), (-a, 1), (-a, a), (-1, a), (-1, -a), (-a, -a)]
        return [(np.array(pts, dtype=np.float64), True)]
    if name == "diamond":
        return [(np.array([[0, -1], [1, 0], [0, 1], [-1, 0]], dtype=np.float64), True)]
    if name == "semicircle":
        t = np.linspace(0, math.pi, 37)
        half = np.stack([np.cos(t), 0.5 - np.sin(t)], 1)  # a true half disc, flat side down
        return [(half, True)]
    raise ValueError(cls)


def _shape_params(cls: int, rng: np.random.Generator) -> Tuple[float, float, float]:
    """(x scale, y scale, rotation in radians) relative to the object's size."""
    name = CLASS_NAMES[cls]
    aspect = math.exp(rng.uniform(-0.25, 0.25))
    sx, sy = aspect ** 0.5, aspect ** -0.5
    if name == "diamond":
        # Elongated, so it never looks like a square turned by 45 degrees.
        sx, sy = 1.0 / rng.uniform(1.45, 1.8), 1.0
    if name in ("circle", "ring"):
        rot = rng.uniform(0, math.pi)
    elif name == "semicircle":
        rot = rng.uniform(-math.pi, math.pi)
    else:
        rot = math.radians(rng.uniform(-18, 18))
    return sx, sy, rot


def _render_mask(cls: int, size: float, rng: np.random.Generator) -> np.ndarray:
    """Anti-aliased alpha (float32 in [0, 1]) of one object, cropped to its pixels."""
    polys = _unit_polygons(cls, rng)
    sx, sy, rot = _shape_params(cls, rng)
    c, s = math.cos(rot), math.sin(rot)
    rotation = np.array([[c, -s], [s, c]])
    placed = [((p * [sx, sy]) @ rotation.T * (size / 2.0), filled) for p, filled in polys]
    allpts = np.concatenate([p for p, _ in placed])
    lo = allpts.min(0)
    extent = allpts.max(0) - lo
    w, h = int(math.ceil(extent[0])) + 2, int(math.ceil(extent[1])) + 2
    canvas = Image.new("L", (w * _SUPERSAMPLE, h * _SUPERSAMPLE), 0)
    draw = ImageDraw.Draw(canvas)
    for pts, filled in placed:
        xy = (pts - lo + 1.0) * _SUPERSAMPLE
        draw.polygon([tuple(q) for q in xy.tolist()], fill=255 if filled else 0)
    alpha = np.asarray(canvas.resize((w, h), Image.BOX), dtype=np.float32) / 255.0
    ys, xs = np.nonzero(alpha >= 0.5)
    return alpha[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]


def _background(w: int, h: int, rng: np.random.Generator) -> Image.Image:
    """Two-colour gradient along a random direction plus soft blotches.

    Smooth by construction, so it is computed on a grid 8x coarser and resized up.
    """
    gw, gh = w // 8 + 2, h // 8 + 2
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    theta = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:gh, 0:gw].astype(np.float32)
    t = xx * math.cos(theta) + yy * math.sin(theta)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    img = c0[None, None] * (1 - t[..., None]) + c1[None, None] * t[..., None]
    for _ in range(int(rng.integers(0, 5))):
        cx, cy = rng.uniform(0, gw), rng.uniform(0, gh)
        r = rng.uniform(0.1, 0.4) * max(gw, gh)
        fall = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))[..., None] * rng.uniform(0.2, 0.5)
        img = img * (1 - fall) + rng.uniform(0, 255, 3)[None, None] * fall
    small = Image.fromarray(np.clip(img + 0.5, 0, 255).astype(np.uint8))
    return small.resize((w, h), Image.BILINEAR)


def _clutter(img: Image.Image, rng: np.random.Generator, count: int) -> None:
    """Thin lines, arcs and specks: texture that is never one of the classes."""
    draw = ImageDraw.Draw(img)
    w, h = img.size
    for _ in range(count):
        colour = tuple(int(v) for v in rng.uniform(0, 255, 3))
        kind = rng.integers(0, 3)
        x0, y0 = float(rng.uniform(0, w)), float(rng.uniform(0, h))
        if kind == 0:
            length, ang = rng.uniform(10, 0.6 * max(w, h)), rng.uniform(0, 2 * math.pi)
            end = (x0 + length * math.cos(ang), y0 + length * math.sin(ang))
            draw.line([(x0, y0), end], fill=colour, width=int(rng.integers(1, 3)))
        elif kind == 1:
            r = float(rng.uniform(8, 60))
            start = float(rng.uniform(0, 360))
            draw.arc([x0 - r, y0 - r, x0 + r, y0 + r], start, start + float(rng.uniform(30, 160)), fill=colour, width=1)
        else:
            for _ in range(int(rng.integers(3, 12))):
                px, py = x0 + rng.normal(0, 15), y0 + rng.normal(0, 15)
                draw.point([(float(px), float(py))], fill=colour)


def _box_overlap_ok(box: Tuple[int, int, int, int], boxes: List[Tuple[int, int, int, int]]) -> bool:
    """Overlaps are wanted, but no object may hide more than 35% of an earlier one's box."""
    x0, y0, x1, y1 = box
    area = (x1 - x0) * (y1 - y0)
    for bx0, by0, bx1, by1 in boxes:
        iw = min(x1, bx1) - max(x0, bx0)
        ih = min(y1, by1) - max(y0, by0)
        if iw <= 0 or ih <= 0:
            continue
        inter = iw * ih
        other = (bx1 - bx0) * (by1 - by0)
        if inter > 0.35 * other or inter / float(area + other - inter) > 0.4:
            return False
    return True


def _object_size(rng: np.random.Generator, short_side: int) -> float:
    """Small (< 16 px), medium and large objects in fixed proportions."""
    u = rng.uniform()
    if u < 0.25:
        return float(rng.uniform(11, 18))
    large_max = max(0.6 * short_side, 40.0)
    if u < 0.7:
        return float(math.exp(rng.uniform(math.log(18), math.log(min(64.0, large_max)))))
    return float(rng.uniform(min(64.0, large_max - 1), large_max))


def render_image(rng: np.random.Generator) -> Tuple[Image.Image, List[Dict[str, object]], int]:
    """One picture, its objects [{class_index, bbox [x, y, w, h], area}] and its JPEG quality."""
    long_side = int(rng.integers(240, 417))
    short_side = int(long_side * rng.uniform(0.5, 1.0))
    w, h = (long_side, short_side) if rng.uniform() < 0.6 else (short_side, long_side)
    canvas = _background(w, h, rng)
    _clutter(canvas, rng, int(rng.integers(2, 16)))
    img = np.asarray(canvas, dtype=np.float32).copy()

    objects: List[Dict[str, object]] = []
    boxes: List[Tuple[int, int, int, int]] = []
    for _ in range(int(rng.integers(2, 11))):
        cls = int(rng.integers(0, len(CLASS_NAMES)))
        alpha = _render_mask(cls, _object_size(rng, min(w, h)), rng)
        mh, mw = alpha.shape
        if mw >= w - 2 or mh >= h - 2:
            continue
        for _attempt in range(20):
            x0, y0 = int(rng.integers(1, w - mw)), int(rng.integers(1, h - mh))
            box = (x0, y0, x0 + mw, y0 + mh)
            if _box_overlap_ok(box, boxes):
                break
        else:
            continue
        region = img[y0 : y0 + mh, x0 : x0 + mw]
        under = region.reshape(-1, 3).mean(0)
        # Pick a colour that stands out from what it covers.
        for _attempt in range(10):
            colour = np.clip(_PALETTE[int(rng.integers(0, len(_PALETTE)))] + rng.normal(0, 12, 3), 0, 255)
            if np.linalg.norm(colour - under) > 100:
                break
        shade = 1.0 + rng.uniform(-0.12, 0.12) * np.linspace(-1, 1, mh, dtype=np.float32)[:, None, None]
        fill = np.clip(colour[None, None] * shade, 0, 255)
        a = alpha[..., None]
        img[y0 : y0 + mh, x0 : x0 + mw] = region * (1 - a) + fill * a
        boxes.append(box)
        objects.append({"class_index": cls, "bbox": [x0, y0, mw, mh], "area": float(round(float(alpha.sum()), 1))})

    img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(rng.uniform(2, 10))
    out = Image.fromarray(np.clip(img + 0.5, 0, 255).astype(np.uint8))
    if rng.uniform() < 0.2:
        out = out.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 0.8))))
    return out, objects, int(rng.integers(70, 96))
