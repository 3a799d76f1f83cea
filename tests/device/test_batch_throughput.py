"""Dynamic batch (edgekit build --dynamic-batch) and bench --batch (run["throughput"]).

Real ONNX Runtime on the real demo bundle (fp32 and int8: ONNX Runtime's static
quantization of the dynamic-batch graph), built once (tests/device/conftest.py).
"""
import argparse
import json
import os
import shutil

import numpy as np
import pytest

BATCH = 8
# Batch 8 and batch 1 run different convolution kernels in ONNX Runtime: raw
# outputs agree to float rounding (measured here: fp32 identical, int8 raw outputs
# within 1.3e-4), so boxes may move by far less than a pixel.
BOX_TOL_PX = 1e-2
SCORE_TOL = 1e-4


def test_the_build_leaves_nothing_in_the_working_directory(dynamic_build):
    # ONNX Runtime's symbolic shape inference fails on a dynamic batch and dumps
    # sym_shape_infer_temp.onnx + <uuid>.data into the current directory.
    assert dynamic_build[1] == []


def _manifest(bundle: str) -> dict:
    with open(os.path.join(bundle, "manifest.json")) as f:
        return json.load(f)


def test_the_manifest_records_a_dynamic_batch_and_the_graph_has_one(dynamic_bundle):
    from edgekit.contract.manifest import Manifest
    from edgekit.host.export.onnx_export import onnx_io

    manifest = _manifest(dynamic_bundle)
    assert manifest["input"]["batch"] == "dynamic"
    assert manifest["input"]["shape"][0] == 1  # shapes stay those of batch 1
    assert Manifest.from_dict(manifest).input.batch == "dynamic"
    assert [v["name"] for v in manifest["variants"]] == ["fp32", "int8"]
    for variant in manifest["variants"]:  # onnxsim and the int8 quantizer kept it symbolic
        _name, shape, _outs, out_shapes = onnx_io(os.path.join(dynamic_bundle, variant["file"]))
        assert shape[0] == -1 and shape[1:] == manifest["input"]["shape"][1:]
        assert all(s[0] == -1 for s in out_shapes)


def test_an_old_manifest_without_batch_is_still_valid():
    from edgekit.contract.manifest import TensorInfo
    from edgekit.contract.errors import EdgekitError

    info = TensorInfo.from_dict({"name": "images", "shape": [1, 3, 320, 320], "dtype": "float32"})
    assert info.batch is None and "batch" not in info.to_dict()
    with pytest.raises(EdgekitError):
        TensorInfo.from_dict({"name": "images", "shape": [1, 3, 320, 320], "batch": "sometimes"})


@pytest.mark.parametrize("variant", ["fp32", "int8"])
def test_batch_8_gives_the_same_detections_per_image_as_batch_1(dynamic_bundle, variant):
    import onnxruntime as ort

    from edgekit.calibration.preprocess import PreprocessSpec, preprocess_file
    from edgekit.device.postprocess import PostprocessSpec, postprocess

    manifest = _manifest(dynamic_bundle)
    pre = PreprocessSpec.from_dict(manifest["preprocess"])
    post = PostprocessSpec.from_dict(manifest["postprocess"])
    prefix = manifest["eval"]["images"].rstrip("/") + "/"
    images = sorted(rel for rel in manifest["files"] if rel.startswith(prefix))[:BATCH]
    assert len(images) == BATCH
    x = np.concatenate([preprocess_file(os.path.join(dynamic_bundle, rel), pre)[0] for rel in images], axis=0)
    (record,) = [v for v in manifest["variants"] if v["name"] == variant]
    session = ort.InferenceSession(os.path.join(dynamic_bundle, record["file"]), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    batched = session.run(None, {name: x})[0]
    assert batched.shape[0] == BATCH
    total = 0
    for i in range(BATCH):
        single = session.run(None, {name: x[i : i + 1]})[0]
        b_boxes, b_scores, b_classes = postprocess(batched[i : i + 1], post)
        s_boxes, s_scores, s_classes = postprocess(single, post)
        assert len(b_boxes) == len(s_boxes), "image %d: %d vs %d detections" % (i, len(b_boxes), len(s_boxes))
        np.testing.assert_array_equal(b_classes, s_classes)
        np.testing.assert_allclose(b_boxes, s_boxes, atol=BOX_TOL_PX)
        np.testing.assert_allclose(b_scores, s_scores, atol=SCORE_TOL)
        total += len(s_boxes)
    assert total > BATCH  # the trained demo finds objects: the comparison is not of empty lists


def test_bench_batch_1_and_8_reports_images_per_second(dynamic_bundle):
    from edgekit.device.runner import Options, run_bundle

    result = run_bundle(dynamic_bundle, Options(command="bench", variants=["fp32"], batch=[1, BATCH], warmup=2, iterations=10, threads=1, stage_images=2, energy="off"))
    assert result["ok"], result["errors"]
    (run,) = result["runs"]
    by_batch = {t["batch"]: t for t in run["throughput"]}
    assert [t["batch"] for t in run["throughput"]] == [1, BATCH]
    for size, entry in by_batch.items():
        assert entry["status"] == "ok" and entry["reason"] is None and entry["iterations"] == 10
        assert entry["images_per_s"] == pytest.approx(size * 1000.0 / entry["latency_ms"]["mean"], rel=1e-3)
        assert entry["latency_ms"]["p50"] > 0
    assert result["settings"]["batch"] == [1, BATCH]


def test_a_fixed_batch_bundle_skips_sizes_above_1_with_a_reason(dynamic_bundle, tmp_path):
    from edgekit.device.runner import Options, run_bundle

    static = str(tmp_path / "static")
    shutil.copytree(dynamic_bundle, static)
    manifest = _manifest(static)
    del manifest["input"]["batch"]  # as a bundle built without --dynamic-batch records it
    with open(os.path.join(static, "manifest.json"), "w") as f:
        json.dump(manifest, f)
    result = run_bundle(static, Options(command="bench", variants=["fp32"], batch=[1, 4], warmup=1, iterations=5, threads=1, stage_images=1, energy="off"))
    assert result["ok"], result["errors"]
    one, four = result["runs"][0]["throughput"]
    assert one["status"] == "ok" and one["images_per_s"] > 0
    assert four["status"] == "skipped" and four["images_per_s"] is None
    assert "--dynamic-batch" in four["reason"] and "\n" not in four["reason"]


def test_batch_option_is_parsed_once_and_passed_through_by_the_host():
    from edgekit.contract.agent_command import AgentCall, batch_sizes
    from edgekit.device.cli import build_parser

    argv = AgentCall(batch=[1, 4, 8]).run_argv("python3", "agent.pyz", "b", "out.json")
    assert argv[argv.index("--batch") + 1] == "1,4,8"
    args = build_parser().parse_args(argv[2:])
    assert args.batch == [1, 4, 8]
    assert batch_sizes("8, 1,8") == [8, 1]
    for bad in ("0", "x", "1,2000"):
        with pytest.raises(argparse.ArgumentTypeError):
            batch_sizes(bad)
    assert "--batch" not in AgentCall().run_argv("python3", "agent.pyz", "b", "out.json")


class _Tensor(object):
    def __init__(self, name, shape):
        self.name, self.shape = name, shape


class _Profile(object):
    def __init__(self):
        self.shapes = {}

    def set_shape(self, name, lo, opt, hi):
        self.shapes[name] = (lo, opt, hi)


class _Builder(object):
    def create_optimization_profile(self):
        return _Profile()


class _Config(object):
    def __init__(self):
        self.profiles = []

    def add_optimization_profile(self, profile):
        self.profiles.append(profile)


class _Network(object):
    def __init__(self, *inputs):
        self.inputs = inputs
        self.num_inputs = len(inputs)

    def get_input(self, i):
        return self.inputs[i]


def test_tensorrt_gets_one_profile_min_1_opt_max_the_largest_batch():
    from edgekit.contract.errors import EdgekitError
    from edgekit.device.backends.trt_engine import EngineRequest, add_batch_profile

    config = _Config()
    shapes = add_batch_profile(_Builder(), _Network(_Tensor("images", (-1, 3, 320, 320))), config, 8)
    assert shapes == {"images": ((1, 3, 320, 320), (8, 3, 320, 320), (8, 3, 320, 320))}
    assert len(config.profiles) == 1 and config.profiles[0].shapes == shapes
    static = _Config()
    assert add_batch_profile(_Builder(), _Network(_Tensor("images", (1, 3, 320, 320))), static, 8) == {}
    assert static.profiles == []
    with pytest.raises(EdgekitError):
        add_batch_profile(_Builder(), _Network(_Tensor("images", (-1, 3, -1, -1))), _Config(), 8)
    # Batch 1 keeps the engine cache key of engines built before profiles; a larger max changes it.
    assert "max_batch" not in EngineRequest("m", "m", "s", "fp32", {}).build_fields()
    assert EngineRequest("m", "m", "s", "fp32", {}, max_batch=8).build_fields()["max_batch"] == 8


def test_deploy_local_with_batch_brings_home_images_per_second(dynamic_bundle, tmp_path):
    import glob
    import subprocess
    import sys

    work = tmp_path / "work"
    work.mkdir()
    env = dict(os.environ, HOME=str(tmp_path / "home"), EDGEKIT_HOME=str(tmp_path / "home" / ".edgekit"))
    proc = subprocess.run(
        [sys.executable, "-c", "from edgekit.host.cli.main import main; main()", "deploy", "local", "--bundle", dynamic_bundle,
         "--variant", "fp32", "--iterations", "5", "--warmup", "1", "--max-images", "2", "--batch", "1,8"],
        cwd=str(work), env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    (path,) = glob.glob(os.path.join(str(work), "results", "local", "*", "*.json"))
    with open(path) as f:
        result = json.load(f)
    assert result["settings"]["batch"] == [1, BATCH]
    (run,) = result["runs"]
    assert [(t["batch"], t["status"]) for t in run["throughput"]] == [(1, "ok"), (BATCH, "ok")]
    assert run["throughput"][1]["images_per_s"] > 0
