"""Finding, sampling and decoding calibration and evaluation images.

Shared by host and device (Python 3.8, numpy and pillow only): the host picks
calibration images and evaluates with the same decoding the agent uses on the
board. Unreadable files are skipped and counted, never fatal one by one; a
folder that yields no image at all is an :class:`EdgekitError`.
"""
import os
import random
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np

from edgekit.contract.errors import EdgekitError

from .preprocess import PreprocessSpec, Transform, load_rgb, resize_image, to_tensor

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def discover_images(folder: str, recursive: bool = True) -> List[str]:
    """Image files under ``folder`` (by extension, case-insensitive), sorted for reproducibility."""
    if not os.path.exists(folder):
        raise EdgekitError("image folder %s does not exist" % folder, "pass a folder of .jpg/.png/.bmp/.webp images")
    if not os.path.isdir(folder):
        raise EdgekitError("%s is not a folder" % folder, "pass a folder of .jpg/.png/.bmp/.webp images")
    found = []
    if recursive:
        for root, dirs, files in os.walk(folder):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in files:
                if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith("."):
                    found.append(os.path.join(root, name))
    else:
        for name in os.listdir(folder):
            path = os.path.join(folder, name)
            if name.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(path):
                found.append(path)
    # Sort on the path relative to the folder so the order does not depend on
    # where the folder lives or on the file system's listing order.
    found.sort(key=lambda p: os.path.relpath(p, folder).replace(os.sep, "/"))
    if not found:
        raise EdgekitError(
            "no images (%s) found in %s" % (", ".join(e.lstrip(".") for e in IMAGE_EXTENSIONS), folder),
            "point it at a folder that holds images",
        )
    return found


def sample_paths(paths: Sequence[str], count: Optional[int], seed: int = 0) -> List[str]:
    """A deterministic sample of ``count`` paths (all of them when count is None or larger).

    The same list and seed always give the same sample, kept in the list's order
    so that runs are comparable image by image.
    """
    paths = list(paths)
    if count is None or count >= len(paths):
        return paths
    if count < 1:
        raise ValueError("sample count must be at least 1, got %r" % count)
    picked = sorted(random.Random(seed).sample(range(len(paths)), count))
    return [paths[i] for i in picked]


class ImageBatch(object):
    """Decoded images, kept resized as uint8 (a quarter of the float size),
    turned into network inputs on demand; plus the files that could not be read."""

    def __init__(self, spec: PreprocessSpec) -> None:
        self.spec = spec
        self.paths: List[str] = []
        self.pixels: List[np.ndarray] = []  # HWC uint8 RGB at the network size
        self.transforms: List[Transform] = []
        self.skipped: List[Tuple[str, str]] = []  # (path, reason)

    def __len__(self) -> int:
        return len(self.pixels)

    def tensor(self, i: int) -> np.ndarray:
        """The i-th image as the model's input (batch of one)."""
        return to_tensor(self.pixels[i], self.spec)

    def tensors(self) -> Iterator[np.ndarray]:
        for i in range(len(self.pixels)):
            yield self.tensor(i)


def decode(path: str, spec: PreprocessSpec) -> Tuple[Optional[np.ndarray], Optional[Transform], str]:
    """(resized HWC uint8, transform, "") for a readable file, (None, None, reason) otherwise."""
    try:
        pixels, transform = resize_image(load_rgb(path), spec)
    except (OSError, ValueError, SyntaxError) as exc:  # PIL raises all three on bad files
        return None, None, " ".join(str(exc).split()) or type(exc).__name__
    return pixels, transform, ""


def load_images(folder: str, spec: PreprocessSpec, count: Optional[int] = None, seed: int = 0, what: str = "calibration") -> ImageBatch:
    """Discover, sample and decode ``count`` images from ``folder`` (all when None).

    Unreadable files are skipped, counted, and replaced by further files in a
    deterministic order, so the batch holds ``count`` images whenever the folder
    has that many readable ones. Raises when none can be read.
    """
    all_paths = discover_images(folder)
    order = all_paths
    if count is not None and count < len(all_paths):
        first = sample_paths(all_paths, count, seed)
        chosen = set(first)
        order = first + sample_paths([p for p in all_paths if p not in chosen], len(all_paths), seed)
    want = len(order) if count is None else count
    batch = ImageBatch(spec)
    for path in order:
        pixels, transform, reason = decode(path, spec)
        if pixels is None:
            batch.skipped.append((path, reason))
            continue
        batch.paths.append(path)
        batch.pixels.append(pixels)
        batch.transforms.append(transform)  # type: ignore[arg-type]
        if len(batch) >= want:
            break
    if not len(batch):
        first_bad = batch.skipped[0]
        raise EdgekitError(
            "none of the %d image files in %s could be read (%s: %s)" % (len(batch.skipped), folder, os.path.basename(first_bad[0]), first_bad[1]),
            "pass a %s folder with readable images" % what,
        )
    return batch
