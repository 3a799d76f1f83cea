"""edgekit.calibration.images / readers: discovery, sampling, decoding."""
import os

import numpy as np
import pytest

from edgekit.calibration.images import discover_images, load_images, sample_paths
from edgekit.calibration.preprocess import PreprocessSpec, load_rgb
from edgekit.calibration.readers import ImageBatchReader, folder_reader
from edgekit.contract.errors import EdgekitError


def test_discovery_is_recursive_sorted_and_by_extension(image_folder):
    found = [os.path.relpath(p, image_folder).replace(os.sep, "/") for p in discover_images(image_folder)]
    assert found == ["a.jpg", "b.PNG", "broken.jpg", "f.png", "sub/c.bmp", "sub/deeper/d.webp", "sub/e.jpeg"]
    flat = [os.path.basename(p) for p in discover_images(image_folder, recursive=False)]
    assert sorted(flat) == ["a.jpg", "b.PNG", "broken.jpg", "f.png"]


def test_empty_and_missing_folders_are_one_line_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(EdgekitError, match="no images"):
        discover_images(str(tmp_path / "empty"))
    with pytest.raises(EdgekitError, match="does not exist"):
        discover_images(str(tmp_path / "nope"))


def test_unreadable_files_are_skipped_and_counted(image_folder):
    spec = PreprocessSpec(size=(32, 32))
    batch = load_images(image_folder, spec)
    assert len(batch) == 6
    assert [os.path.basename(p) for p, _ in batch.skipped] == ["broken.jpg"]
    # A sample of 6 still holds 6 images: the broken one is replaced by another.
    assert len(load_images(image_folder, spec, count=6, seed=3)) == 6


def test_folder_of_only_broken_files_is_an_error(tmp_path):
    for i in range(3):
        (tmp_path / ("x%d.jpg" % i)).write_bytes(b"junk")
    with pytest.raises(EdgekitError, match="none of the 3 image files"):
        load_images(str(tmp_path), PreprocessSpec(size=(32, 32)))


def test_sampling_is_deterministic_and_seeded():
    paths = ["img%03d.jpg" % i for i in range(100)]
    a = sample_paths(paths, 10, seed=0)
    assert a == sample_paths(paths, 10, seed=0)
    assert a != sample_paths(paths, 10, seed=1)
    assert len(set(a)) == 10 and a == sorted(a)  # kept in the folder's order
    assert sample_paths(paths, 500) == paths


def test_tensors_follow_the_spec(image_folder):
    path = os.path.join(image_folder, "a.jpg")
    rgb = np.asarray(load_rgb(path), dtype=np.float32)  # 48 x 64
    stretch = PreprocessSpec(size=(48, 64), resize="stretch", color="BGR", layout="NHWC", mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    batch = load_images(image_folder, stretch, count=None)
    x = batch.tensor(batch.paths.index(path))
    assert x.shape == (1, 48, 64, 3) and x.dtype == np.float32
    # Same size: stretch is the identity on pixels; BGR reverses channels; (x/255 - .5)/.25.
    expected = (rgb[:, :, ::-1] / 255.0 - 0.5) / 0.25
    np.testing.assert_allclose(x[0], expected, atol=1e-5)

    letterbox = PreprocessSpec(size=(64, 64), resize="letterbox", pad_value=114)
    batch = load_images(image_folder, letterbox)
    i = batch.paths.index(path)
    y = batch.tensor(i)
    assert y.shape == (1, 3, 64, 64)
    # A 64x48 image letterboxed into 64x64: 8 rows of padding above and below.
    np.testing.assert_allclose(y[0, :, :8, :], 114 / 255.0, atol=1e-6)
    np.testing.assert_allclose(y[0, :, 8:56, :], rgb.transpose(2, 0, 1) / 255.0, atol=1e-6)
    assert batch.transforms[i].pad_h == 8.0


def test_reader_feeds_ranges_and_is_an_ort_calibration_reader(image_folder):
    from onnxruntime.quantization import CalibrationDataReader

    reader = folder_reader(image_folder, PreprocessSpec(size=(32, 32)), "images", count=4)
    assert isinstance(reader, CalibrationDataReader)  # ORT accepts it without a subclass
    assert len(reader) == 4
    items = list(reader)
    assert len(items) == 4 and all(set(d) == {"images"} and d["images"].shape == (1, 3, 32, 32) for d in items)
    reader.set_range(1, 3)
    assert len(list(reader)) == 2
    chunk = ImageBatchReader(reader.batch, "x", indices=[3])
    assert np.array_equal(chunk.get_next()["x"], items[3]["images"]) and chunk.get_next() is None


def test_calibration_package_needs_neither_onnxruntime_nor_torch():
    """The agent carries edgekit.calibration to boards that may only have TensorRT."""
    import subprocess
    import sys

    code = (
        "import sys, edgekit.calibration.images, edgekit.calibration.readers, edgekit.calibration.trt_cache;"
        "bad = [m for m in ('onnxruntime', 'torch', 'onnx', 'edgekit.host') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
