"""Bad input to `edgekit build`: one line on stderr, exit 2, no traceback, nothing half-written."""
import os
import subprocess
import sys

import onnx
import pytest
from onnx import TensorProto, helper


def edgekit(*args):
    cmd = [sys.executable, "-m", "edgekit.host.cli.main", "build"] + list(args)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def assert_one_line_error(out, pattern, out_dir):
    assert out.returncode == 2, out.stdout + out.stderr
    errors = [ln for ln in out.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and pattern in errors[0], out.stderr
    assert "Traceback" not in out.stderr
    assert not os.path.exists(out_dir), "a partial bundle was left behind"
    parent = os.path.dirname(out_dir)
    if os.path.isdir(parent):
        assert not [p for p in os.listdir(parent) if ".partial-" in p]


@pytest.fixture
def out_dir(tmp_path):
    return str(tmp_path / "bundles" / "b")


def test_missing_model_file(out_dir, tmp_path):
    out = edgekit("--model", str(tmp_path / "nope.pt"), "--out", out_dir)
    assert_one_line_error(out, "does not exist", out_dir)


def test_corrupt_model_file(out_dir, tmp_path):
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"this is not a checkpoint")
    out = edgekit("--model", str(bad), "--trust-checkpoint", "--out", out_dir, "--eval", "none")
    assert_one_line_error(out, "broken.pt", out_dir)


def test_onnx_file_onnx_runtime_cannot_load(out_dir, tmp_path, make_image):
    # Valid ONNX protobuf, but an operator no runtime has.
    node = helper.make_node("Frobnicate", ["images"], ["output0"], domain="com.example")
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 64, 64])], [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 252, 13])]
    )
    path = str(tmp_path / "alien.onnx")
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)]), path)
    calib = tmp_path / "calib"
    make_image(str(calib / "a.jpg"))
    out = edgekit("--model", path, "--calib", str(calib), "--eval", "none", "--variants", "fp32", "--out", out_dir)
    assert_one_line_error(out, "ONNX Runtime cannot load", out_dir)


def test_empty_calibration_folder(out_dir, tmp_path):
    (tmp_path / "empty").mkdir()
    out = edgekit("--calib", str(tmp_path / "empty"), "--out", out_dir)
    assert_one_line_error(out, "no images", out_dir)


def test_unreadable_calibration_images(out_dir, tmp_path):
    folder = tmp_path / "junk"
    folder.mkdir()
    for i in range(3):
        (folder / ("img%d.jpg" % i)).write_bytes(b"\xff\xd8 truncated")
    out = edgekit("--calib", str(folder), "--eval", "none", "--out", out_dir)
    assert_one_line_error(out, "none of the 3 image files", out_dir)


def test_eval_folder_without_annotations(out_dir, tmp_path, make_image):
    folder = tmp_path / "val"
    make_image(str(folder / "a.jpg"))
    out = edgekit("--eval", str(folder), "--out", out_dir)
    assert_one_line_error(out, "has no annotations", out_dir)


def test_unknown_variant_for_the_profile(out_dir):
    out = edgekit("--profile", "jetson-nano", "--variants", "int8", "--out", out_dir)
    assert_one_line_error(out, "variant 'int8' is not available for profile jetson-nano", out_dir)


def test_unwritable_output_folder(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    out_dir = str(blocker / "bundle")
    out = edgekit("--out", out_dir)
    assert out.returncode == 2 and "cannot write" in out.stderr and "Traceback" not in out.stderr
    assert blocker.read_text() == "a file where a folder should be"


def test_bad_prune_list(out_dir):
    out = edgekit("--prune", "0,1.5", "--out", out_dir)
    assert_one_line_error(out, "--prune value '1.5' is out of range", out_dir)


def test_modelopt_int8_on_a_cpu_profile_is_refused_before_any_work(out_dir):
    out = edgekit("--profile", "cpu", "--int8-tool", "modelopt", "--out", out_dir)
    assert_one_line_error(out, "int8 tool modelopt writes TensorRT graphs, but this profile's scheme is", out_dir)


def test_map_controlled_int8_without_an_eval_set_is_refused(out_dir):
    out = edgekit("--eval", "none", "--max-map-drop", "1", "--out", out_dir)
    assert_one_line_error(out, "an mAP-controlled int8 needs an evaluation set", out_dir)
