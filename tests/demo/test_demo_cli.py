"""`edgekit demo ...` through the real entry point."""
import json
import os
import subprocess
import sys


def edgekit(*args, env=None):
    cmd = [sys.executable, "-m", "edgekit.host.cli.main"] + list(args)
    return subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, **(env or {})), timeout=300)


def test_demo_data_prints_existing_paths(demo_cache, demo_dataset):
    out = edgekit("demo", "data", "--out", demo_cache, "--json")
    assert out.returncode == 0, out.stderr
    paths = json.loads(out.stdout)
    assert paths["root"] == demo_dataset.root
    for key in ("calib_dir", "val_images_dir", "val_annotations"):
        assert os.path.exists(paths[key]), key
    assert paths["train_annotations"] is None


def test_demo_data_into_a_file_is_a_one_line_error(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    out = edgekit("demo", "data", "--out", str(blocker))
    assert out.returncode == 2
    assert out.stderr.startswith("error: ") and out.stderr.count("\n") == 1
    assert "Traceback" not in out.stderr


def test_demo_eval_with_missing_weights_is_a_one_line_error(tmp_path):
    out = edgekit("demo", "eval", "--weights", str(tmp_path / "none.pt"), "--data-dir", str(tmp_path))
    assert out.returncode == 2
    assert "missing" in out.stderr and out.stderr.count("\n") == 1
