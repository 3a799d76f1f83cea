"""The hints edgekit prints are commands that work: each test runs the suggested command."""
import json
import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")


def edgekit(*args):
    cmd = [sys.executable, "-m", "edgekit.host.cli.main"] + list(args)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def _first(out):
    return out[0] if isinstance(out, (tuple, list)) else out


@pytest.fixture(scope="module")
def pruned_demo(tmp_path_factory):
    from edgekit.host.demo import INPUT_SIZE, load_demo_model
    from edgekit.host.prune import PruneConfig, prune_model, save_pruned

    model = load_demo_model()
    size = INPUT_SIZE
    result = prune_model(model, torch.zeros(1, 3, size[0], size[1]), PruneConfig(ratio=0.3))
    path = str(tmp_path_factory.mktemp("pruned") / "model.pt")
    save_pruned(result.model, path, {"input_size": list(size)})
    return path, result.model, size


def test_demo_model_loads_what_prune_writes(pruned_demo):
    from edgekit.host.demo import load_demo_model

    path, pruned, size = pruned_demo
    again = load_demo_model(weights=path)
    x = torch.rand(1, 3, size[0], size[1])
    with torch.no_grad():
        assert torch.allclose(_first(again(x)), _first(pruned(x)), atol=1e-5)
    params = sum(p.numel() for p in again.parameters())
    assert params == sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in load_demo_model().parameters())


def test_demo_eval_runs_on_a_pruned_model(pruned_demo):
    # The prune hint: "reload with: --model demo --weights pruned/model.pt"; `demo eval` is where users try it.
    path, _pruned, _size = pruned_demo
    out = edgekit("demo", "eval", "--weights", path, "--limit", "4", "--json")
    assert out.returncode == 0, out.stderr
    stats = json.loads(out.stdout)
    assert 0.0 <= stats["map"] <= 1.0 and "map50" in stats


def test_default_bundle_is_named(tmp_path):
    for name, when in (("demo-old", 1_000_000), ("demo-new", 2_000_000)):
        folder = tmp_path / "bundles" / name
        folder.mkdir(parents=True)
        (folder / "manifest.json").write_text("{}")
        os.utime(str(folder / "manifest.json"), (when, when))
    cmd = [sys.executable, "-m", "edgekit.host.cli.main", "deploy", "local", "--sync-only"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=str(tmp_path))
    lines = out.stderr.splitlines()
    assert lines[0] == "using %s (newest under bundles/; pass --bundle to choose)" % os.path.join("bundles", "demo-new")
    # The empty manifest is then refused in one line, not a traceback.
    assert out.returncode != 0 and "Traceback" not in out.stderr


def test_build_help_says_when_calib_is_needed():
    out = edgekit("build", "--help")
    assert out.returncode == 0
    text = " ".join(out.stdout.split())
    assert "for --model demo only; any other model needs --calib" in text


def test_pruning_chart_legend_colours_are_the_bar_colours(pruned_demo, tmp_path):
    import matplotlib.image
    import numpy as np

    from edgekit.host.demo import INPUT_SIZE, load_demo_model
    from edgekit.host.prune import PruneConfig, prune_model

    result = prune_model(load_demo_model(), torch.zeros(1, 3, INPUT_SIZE[0], INPUT_SIZE[1]), PruneConfig(ratio=0.3))
    assert any(r.fixed for r in result.report.layers)  # the demo's detection head is fixed
    path = str(tmp_path / "prune.png")
    result.report.plot(path)
    rgb = (matplotlib.image.imread(path)[..., :3] * 255).round()
    # matplotlib's default blue (#1f77b4) is used by no bar: it showed up only as the "fixed" swatch.
    default_blue = np.all(np.abs(rgb - np.array([0x1F, 0x77, 0xB4])) <= 8, axis=-1)
    grey = np.all(np.abs(rgb - np.array([0x9A, 0x9A, 0x9A])) <= 2, axis=-1)
    assert int(default_blue.sum()) == 0 and int(grey.sum()) > 0


def _doctor_answer(onnxruntime_ok):
    checks = [
        {"name": "python", "ok": True, "required": True, "found": "3.10"},
        {"name": "tensorrt", "ok": False, "required": True, "found": None, "fix": "pip3 install tensorrt"},
        {"name": "onnxruntime", "ok": onnxruntime_ok, "required": False, "found": "1.17" if onnxruntime_ok else None, "fix": "pip3 install onnxruntime"},
    ]
    return {"rc": 1, "stdout": json.dumps({"ok": False, "checks": checks}), "stderr": ""}


def test_doctor_without_tensorrt_suggests_the_onnxruntime_backend():
    from edgekit.contract.errors import EdgekitError
    from edgekit.host.deploy.preflight import check_doctor

    with pytest.raises(EdgekitError) as err:
        check_doctor(_doctor_answer(True), "local")
    assert err.value.problem == "local cannot run this bundle yet: it lacks tensorrt"
    assert "pip3 install tensorrt" in err.value.fix and "deploy again with --backend onnxruntime" in err.value.fix
    # Not where ONNX Runtime is missing too: the hint would not work.
    with pytest.raises(EdgekitError) as err:
        check_doctor(_doctor_answer(False), "local")
    assert "--backend onnxruntime" not in err.value.fix
