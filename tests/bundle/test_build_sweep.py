"""Sweeps (pruning ratio x precision in one bundle) and the fp16 graph for TensorRT 11."""
import os

import onnx
import pytest

from edgekit.contract.manifest import load_bundle
from edgekit.host.bundle import BuildOptions, build_bundle, parse_prune, variant_name
from edgekit.host.profiles import load_profile
from edgekit.contract.errors import EdgekitError


def test_variant_names_and_prune_lists():
    assert [variant_name(r, "int8") for r in parse_prune("0,0.3,0.5")] == ["int8", "p30-int8", "p50-int8"]
    assert parse_prune(None) == [0.0]
    for bad in ("0,0.3,0.3", "x", "1.0", "0.301,0.3"):
        with pytest.raises(EdgekitError):
            parse_prune(bad)


def test_prune_sweep_builds_every_combination(tmp_path):
    ALIGN = load_profile("cpu").alignment
    assert ALIGN == 16  # the cpu profile's, for ONNX Runtime's 16-channel blocks on AVX-512
    out = str(tmp_path / "sweep")
    result = build_bundle(
        BuildOptions(profile="cpu", pretrained=False, prune="0,0.5", variants="fp32", out=out, calib_images=8, eval="none", parity_images=1)
    )
    manifest = load_bundle(out)
    names = [v["name"] for v in manifest["variants"]]
    assert names == ["fp32", "p50-fp32"]  # int8 of a pruned graph is the same code (test_quantize)
    by = {v["name"]: v for v in manifest["variants"]}
    assert by["fp32"]["prune"] is None
    for name in ("p50-fp32",):
        prune = by[name]["prune"]
        assert prune["ratio"] == 0.5 and prune["alignment"] == ALIGN and prune["aligned"]
        assert prune["params"]["after"] < prune["params"]["before"] and prune["macs"]["reduction"] > 0.3
        assert prune["report"] == "reports/p50/prune_report.json" and prune["report"] in manifest["files"]
        assert prune["chart"] in manifest["files"]
    # Pruned channels are multiples of the profile's alignment in the exported graph.
    graph = onnx.load(os.path.join(out, by["p50-fp32"]["file"]))
    convs = [i for i in graph.graph.initializer if len(i.dims) == 4]
    head = {i.name for i in graph.graph.initializer if i.name.startswith("detect.")}
    assert all(i.dims[0] % ALIGN == 0 for i in convs if i.name not in head)
    assert os.path.getsize(os.path.join(out, by["p50-fp32"]["file"])) < os.path.getsize(os.path.join(out, by["fp32"]["file"]))
    assert "prune" in result.stage_seconds


def test_fp16_graph_for_tensorrt_11(tmp_path):
    profile = tmp_path / "trt11.toml"
    profile.write_text('extends = "jetson"\nname = "trt11"\n\n[tensorrt]\nversion = "11.0"\n')
    out = str(tmp_path / "b")
    result = build_bundle(BuildOptions(profile=str(profile), pretrained=False, variants="fp16", out=out, eval="none", calib_images=2, parity_images=1, tar=True))
    manifest = load_bundle(out)
    import tarfile

    assert result.tar_path == out + ".tar"
    with tarfile.open(result.tar_path) as tar:
        names = set(tar.getnames())
    assert {"b/manifest.json", "b/models/fp16.onnx"} <= names
    (v,) = manifest["variants"]
    assert v["name"] == "fp16" and v["file"] == "models/fp16.onnx" and v["graph_precision"] == "fp16"
    graph = onnx.load(os.path.join(out, v["file"]))
    conv_weights = {n.input[1] for n in graph.graph.node if n.op_type == "Conv"}
    types = {i.data_type for i in graph.graph.initializer if i.name in conv_weights}
    assert types == {onnx.TensorProto.FLOAT16}
    # Inputs and outputs stay fp32: the agent feeds and decodes what it always does.
    assert graph.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert graph.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT


def test_no_calibration_cache_for_tensorrt_11(demo_onnx, demo_calib, tmp_path):
    from edgekit.host.profiles import load_profile
    from edgekit.host.quantize import quantize_int8

    profile = tmp_path / "trt11.toml"
    profile.write_text('extends = "jetson"\nname = "trt11"\n\n[tensorrt]\nversion = "11.0"\n')
    warnings = []
    result = quantize_int8(demo_onnx[1], str(tmp_path / "q.onnx"), demo_calib, load_profile(str(profile)), "minmax", 2, 0.0, "yolov5", str(tmp_path), warn=warnings.append, check_images=1)
    assert result.trt_cache is None and "no implicit INT8" in warnings[0]


def test_onnx_input_skips_export_and_parity(demo_onnx, tmp_path):
    from edgekit.host.demo import demo_data

    out = str(tmp_path / "from-onnx")
    result = build_bundle(BuildOptions(profile="rk3588", model=demo_onnx[1], calib=demo_data().calib_dir, eval="none", out=out, calib_images=4, snr_target_db=0))
    manifest = load_bundle(out)
    assert manifest["name"] == "from-onnx" and manifest["model"]["params"] is None
    assert manifest["input"]["shape"] == [1, 3, 320, 320] and manifest["postprocess"]["layout"] == "yolov5"
    fp32, int8 = manifest["variants"]
    assert fp32["export"]["exporter"] is None and fp32["parity"] is None
    assert int8["quantization"]["scheme"] == "s8s8"
    assert result.summary_rows()[1]["cosine"] is None
