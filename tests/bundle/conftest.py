"""Fixtures of the build tests: image folders, a small exported demo graph."""
import os

import numpy as np
import pytest
from PIL import Image


def write_image(path: str, size=(64, 48), seed: int = 0, fmt: str = None) -> str:
    """A random RGB picture at ``path`` (format from the extension unless given)."""
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(arr).save(path, format=fmt)
    return path


@pytest.fixture
def image_folder(tmp_path):
    """Six images in four formats across a nested folder, one corrupt .jpg and a text file."""
    root = tmp_path / "images"
    write_image(str(root / "a.jpg"), seed=1)
    write_image(str(root / "b.PNG"), seed=2, fmt="PNG")
    write_image(str(root / "sub" / "c.bmp"), seed=3)
    write_image(str(root / "sub" / "deeper" / "d.webp"), seed=4)
    write_image(str(root / "sub" / "e.jpeg"), seed=5)
    write_image(str(root / "f.png"), seed=6)
    (root / "broken.jpg").write_bytes(b"not a jpeg at all")
    (root / "notes.txt").write_text("ignored")
    return str(root)


@pytest.fixture(scope="session")
def demo_onnx(tmp_path_factory):
    """(untrained demo model, path of its simplified fp32 ONNX at 320x320)."""
    from edgekit.host.demo import build_demo_model
    from edgekit.host.export import export_onnx, simplify_onnx

    folder = tmp_path_factory.mktemp("demo-onnx")
    model = build_demo_model().eval()
    raw = str(folder / "raw.onnx")
    export_onnx(model, (320, 320), raw, 17)
    path = str(folder / "fp32.onnx")
    simplify_onnx(raw, path)
    return model, path


@pytest.fixture(scope="session")
def demo_calib(tmp_path_factory):
    """16 demo calibration images, decoded at 320x320."""
    from edgekit.calibration.images import load_images
    from edgekit.host.demo import demo_data, preprocess_spec

    return load_images(demo_data().calib_dir, preprocess_spec(), count=16)


@pytest.fixture
def make_image():
    """The write_image helper, as a fixture (conftest modules are not importable under importlib mode)."""
    return write_image
