"""`edgekit build` end to end on the demo: bundles for the cpu and jetson profiles."""
import os

import onnx
import pytest

from edgekit.calibration import trt_cache
from edgekit.contract.manifest import load_bundle, sha256_file, verify_files


def test_cpu_bundle_is_complete_and_hashed(cpu_bundle, cpu_build):
    manifest = load_bundle(cpu_bundle)  # validates the shape and checks every file's sha256
    assert [v["name"] for v in manifest["variants"]] == ["fp32", "int8"]
    on_disk = set()
    for root, _, files in os.walk(cpu_bundle):
        for name in files:
            on_disk.add(os.path.relpath(os.path.join(root, name), cpu_bundle).replace(os.sep, "/"))
    assert on_disk - {"manifest.json"} == set(manifest["files"])  # every file hashed, nothing else there
    for rel, entry in manifest["files"].items():
        assert entry["sha256"] == sha256_file(os.path.join(cpu_bundle, rel))
    assert manifest["profile"]["name"] == "cpu" and manifest["task"] == "detect"
    assert manifest["input"] == {"name": "images", "shape": [1, 3, 320, 320], "dtype": "float32"}
    assert manifest["preprocess"]["size"] == [320, 320] and manifest["postprocess"]["layout"] == "yolov5"
    assert manifest["eval"]["count"] == 24 and "eval/instances.json" in manifest["files"]
    assert len([f for f in manifest["files"] if f.startswith("eval/images/")]) == 24
    assert not [p for p in os.listdir(os.path.dirname(cpu_bundle)) if ".partial-" in p]


def test_cpu_bundle_variants_record_how_they_were_made(cpu_bundle):
    manifest = load_bundle(cpu_bundle, verify=False)
    fp32, int8 = manifest["variants"]
    assert fp32["precision"] == "fp32" and fp32["simplified"]["simplified"] is True
    assert fp32["export"]["exporter"] in ("torchscript", "dynamo")
    assert fp32["parity"]["ok"] and fp32["parity"]["cosine"] > 0.99999 and fp32["parity"]["images"] == 2
    q = int8["quantization"]
    assert q["scheme"] == "u8s8" and q["activations"] == "uint8 asymmetric" and q["weights"] == "int8 symmetric per-channel"
    assert q["head_float"]["nodes"] and q["sqnr_db"]["scores"] > 0
    assert int8["calibration"] == {"method": "minmax", "ranges": "mean over images of each image's min and max", "images": 16, "skipped_images": 0}
    for v in (fp32, int8):
        stats = v["host_metrics"]
        assert stats["images"] == 24 and 0.0 <= stats["map"] <= 1.0 and len([k for k in stats if k.startswith(("map", "mar"))]) == 12
    graph = onnx.load(os.path.join(cpu_bundle, int8["file"]))
    assert sum(n.op_type == "QuantizeLinear" for n in graph.graph.node) > 50


def test_host_metrics_are_reproducible_from_the_bundle(cpu_bundle):
    """The stored reference is what the shared pipeline gives on the bundle's own eval set."""
    from edgekit.calibration.preprocess import PreprocessSpec
    from edgekit.device.postprocess import PostprocessSpec
    from edgekit.host.bundle.reference import evaluate_onnx

    manifest = load_bundle(cpu_bundle, verify=False)
    v = manifest["variants"][1]
    stats = evaluate_onnx(
        os.path.join(cpu_bundle, v["file"]),
        os.path.join(cpu_bundle, manifest["eval"]["images"]),
        os.path.join(cpu_bundle, manifest["eval"]["annotations"]),
        PreprocessSpec.from_dict(manifest["preprocess"]),
        PostprocessSpec.from_dict(manifest["postprocess"]),
    )
    assert stats["map"] == pytest.approx(v["host_metrics"]["map"], abs=1e-9)


def test_jetson_bundle_has_fp16_int8_and_a_tensorrt_cache(jetson_bundle):
    manifest = load_bundle(jetson_bundle)
    names = {v["name"]: v for v in manifest["variants"]}
    assert list(names) == ["fp32", "fp16", "int8"]
    # TensorRT 8.5 builds fp16 from the fp32 graph with its builder flag: one file, two variants.
    assert names["fp16"]["file"] == names["fp32"]["file"] and names["fp16"]["graph_precision"] == "fp32"
    assert names["fp16"]["host_metrics"] is None and names["fp16"]["notes"]
    q = names["int8"]["quantization"]
    assert q["scheme"] == "tensorrt" and q["activations"] == "int8 symmetric" and q["shared_scale_tensors"] > 0
    rel = names["int8"]["calibration"]["trt_cache"]
    assert rel == "models/int8.calib.cache" and rel in manifest["files"]
    assert names["int8"]["calibration"]["trt_cache_graph"] == "models/fp32.onnx"
    cache = trt_cache.read(os.path.join(jetson_bundle, rel))
    assert cache.header() == "TRT-8502-EntropyCalibration2" and "images" in cache.scales
    assert names["int8"]["calibration"]["method"] == "entropy"


def test_tampered_bundle_fails_verification(cpu_bundle, tmp_path):
    import shutil

    copy = str(tmp_path / "copy")
    shutil.copytree(cpu_bundle, copy)
    with open(os.path.join(copy, "models", "int8.onnx"), "r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01")
    problems = verify_files(copy, load_bundle(copy, verify=False))
    assert problems == ["models/int8.onnx does not match its sha256 in the manifest"]


def test_build_summary_rows(cpu_build):
    rows = cpu_build.summary_rows()
    assert [r["variant"] for r in rows] == ["fp32", "int8"]
    assert rows[1]["size_mb"] < rows[0]["size_mb"] / 2  # int8 weights
    assert set(cpu_build.stage_seconds) >= {"load", "export", "simplify", "parity", "int8", "evaluate", "write bundle"}


@pytest.mark.parametrize("which", ["cpu", "jetson"])
def test_int8_loses_at_most_one_map_point_on_the_demo_validation_set(which, request):
    """Host ONNX Runtime, the whole demo validation split, the shipped (trained) weights."""
    from edgekit.calibration.preprocess import PreprocessSpec
    from edgekit.device.postprocess import PostprocessSpec
    from edgekit.host.bundle.reference import evaluate_onnx
    from edgekit.host.demo import demo_data

    bundle = request.getfixturevalue("%s_bundle" % which)
    manifest = load_bundle(bundle, verify=False)
    assert manifest["model"]["source"] == "edgekit demo detector (shipped weights)", "needs the demo's trained weights"
    data = demo_data()
    pre = PreprocessSpec.from_dict(manifest["preprocess"])
    post = PostprocessSpec.from_dict(manifest["postprocess"])
    by = {v["name"]: v for v in manifest["variants"]}
    stats = {name: evaluate_onnx(os.path.join(bundle, by[name]["file"]), data.val_images_dir, data.val_annotations, pre, post) for name in ("fp32", "int8")}
    assert stats["fp32"]["map"] > 0.3, stats["fp32"]  # a trained model, or the comparison means nothing
    assert stats["fp32"]["map"] - stats["int8"]["map"] <= 0.01, (stats["fp32"]["map"], stats["int8"]["map"])
