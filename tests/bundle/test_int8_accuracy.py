"""mAP-controlled int8: layers return to float while int8 loses more mAP than allowed (bounded)."""
import pytest

from edgekit.host.profiles import load_profile
from edgekit.host.quantize import AccuracyControl, quantize_int8


@pytest.fixture(scope="module")
def trained_demo(tmp_path_factory):
    from edgekit.calibration.images import load_images
    from edgekit.host.bundle.reference import evaluate_onnx
    from edgekit.host.demo import demo_data, load_demo_model, postprocess_spec, preprocess_spec
    from edgekit.host.export import export_onnx, simplify_onnx

    work = tmp_path_factory.mktemp("acc")
    data = demo_data()
    export_onnx(load_demo_model(), (320, 320), str(work / "raw.onnx"), 17)
    fp32 = str(work / "fp32.onnx")
    simplify_onnx(str(work / "raw.onnx"), fp32)
    calib = load_images(data.calib_dir, preprocess_spec(), count=32)
    calls = []

    def evaluate(path):
        calls.append(path)
        return evaluate_onnx(path, data.val_images_dir, data.val_annotations, preprocess_spec(), postprocess_spec())["map"]

    return work, fp32, calib, evaluate, calls


@pytest.mark.slow
def test_tight_map_limit_returns_layers_to_float_within_its_bound(trained_demo):
    work, fp32, calib, evaluate, calls = trained_demo
    out = str(work / "int8.onnx")
    warnings = []
    # The demo's int8 loses about 0.3 points: 0.02 allowed forces the fallback.
    control = AccuracyControl(evaluate, max_drop_points=0.02, max_rounds=3)
    result = quantize_int8(fp32, out, calib, load_profile("cpu"), "minmax", 32, 0.0, "yolov5", str(work), warn=warnings.append, check_images=2, accuracy=control)
    record = result.quantization_dict()["accuracy_control"]
    rounds = record["rounds"]
    assert rounds[0]["float_nodes"] == 0 and rounds[0]["drop_points"] > 0.02, rounds  # all-int8 first
    fallbacks = rounds[1:]
    assert 1 <= len(fallbacks) <= 3  # at least one fallback round, at most max_rounds
    assert [len(r["added"]) for r in fallbacks] == [1, 2, 4][: len(fallbacks)]  # 1, 2, 4 layers a round
    # A round's layers stay float only if that round raised the mAP; the record lists them and why.
    best = rounds[0]["map"]
    expected = []
    for r in fallbacks:
        assert r["kept"] == (r["map"] > best), r
        if r["kept"]:
            best = r["map"]
            expected += r["added"]
    assert record["kept_float"] == expected and record["map"] == best == max(r["map"] for r in rounds)
    assert all(u["reason"].startswith("mAP control round ") for u in record["kept_float"])
    reasons = [u["reason"] for u in result.quantization_dict()["float_nodes"]]
    assert sum(1 for r in reasons if r.startswith("mAP control")) == len(expected)
    if record["met"]:
        assert record["drop_points"] <= 0.02 and record["stopped"] == "met" and not warnings
    else:  # stopped at its bound, and said so
        assert record["stopped"] == "round limit (3)" or record["stopped"].startswith("no layer left"), record
        assert any("more than the 0.02 allowed" in w and "%d kept float" % len(expected) in w for w in warnings), warnings
    # What is written is the best round measured.
    assert round(evaluate(out), 4) == record["map"]
    assert record["fp32_map"] > 0.7
    assert result.runtime["float_nodes"] >= 31 + (1 if expected else 0)


@pytest.mark.slow
def test_loose_map_limit_keeps_everything_int8(trained_demo):
    work, fp32, calib, evaluate, calls = trained_demo
    out = str(work / "int8-loose.onnx")
    control = AccuracyControl(evaluate, max_drop_points=1.0, reference_map=0.753)
    result = quantize_int8(fp32, out, calib, load_profile("cpu"), "minmax", 32, 0.0, "yolov5", str(work), check_images=2, accuracy=control)
    record = result.accuracy
    assert record["met"] and record["stopped"] == "met" and len(record["rounds"]) == 1 and record["kept_float"] == []
    assert record["fp32_map"] == 0.753 and result.runtime["float_nodes"] == 31


@pytest.mark.slow
def test_build_runs_the_map_control_when_its_options_ask(tmp_path):
    """The build's hook: options carrying ``max_map_drop`` run the loop on the bundle's eval set; the manifest records it."""
    from edgekit.host.bundle import BuildOptions, build_bundle

    options = BuildOptions(profile="cpu", variants="int8", eval_images=30, calib_images=16, out=str(tmp_path / "b"))
    options.max_map_drop = 0.01  # not a BuildOptions field yet: the build reads it when present
    result = build_bundle(options)
    (variant,) = result.manifest["variants"]
    record = variant["quantization"]["accuracy_control"]
    assert record["max_drop_points"] == 0.01 and len(record["rounds"]) >= 1
    assert record["met"] == (record["drop_points"] <= 0.01)
    assert record["met"] or any("more than the 0.01 allowed" in w for w in result.warnings)
    # The bundle's own host evaluation of the file written agrees with the loop's best round.
    assert round(variant["host_metrics"]["map"], 4) == record["map"]
    plain = build_bundle(BuildOptions(profile="cpu", variants="int8", eval_images=30, calib_images=16, out=str(tmp_path / "c")))
    assert plain.manifest["variants"][0]["quantization"]["accuracy_control"] is None
