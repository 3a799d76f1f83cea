"""The manifest is written and read through the contract's records."""
import copy
import json
import os

import pytest

from edgekit.contract.errors import EdgekitError
from edgekit.contract.manifest import FORMAT, Manifest, TensorInfo, VariantRecord


def _manifest(bundle_dir):
    with open(os.path.join(bundle_dir, "manifest.json"), encoding="utf-8") as f:
        return json.load(f)


def test_a_built_manifest_round_trips_through_the_record(cpu_bundle):
    data = _manifest(cpu_bundle)
    record = Manifest.from_dict(data)
    assert record.to_dict() == data
    assert [v.name for v in record.variants] == [v["name"] for v in data["variants"]]
    assert record.input.shape == data["input"]["shape"]
    assert record.variant("int8").precision == "int8"


def test_a_manifest_from_the_previous_release_still_reads(cpu_bundle):
    # The previous format had no model/outputs/build blocks; the format string is unchanged.
    old = copy.deepcopy(_manifest(cpu_bundle))
    for key in ("model", "outputs", "build"):
        old.pop(key, None)
    record = Manifest.from_dict(old)
    assert record.to_dict()["format"] == FORMAT
    assert record.outputs == [] and record.model is None


def test_unknown_top_level_keys_are_kept(cpu_bundle):
    data = dict(_manifest(cpu_bundle), future={"x": 1})
    assert Manifest.from_dict(data).to_dict()["future"] == {"x": 1}


def test_the_record_validates_before_it_builds(cpu_bundle):
    data = _manifest(cpu_bundle)
    data["variants"][0]["precision"] = "int4"
    with pytest.raises(EdgekitError, match="precision"):
        Manifest.from_dict(data)


def test_variant_details_travel_with_the_variant():
    v = VariantRecord.from_dict({"name": "p30-int8", "precision": "int8", "file": "models/p30-int8.onnx", "prune": {"ratio": 0.3}})
    assert v.details == {"prune": {"ratio": 0.3}}
    assert v.to_dict()["prune"] == {"ratio": 0.3}
    assert TensorInfo("images", [1, 3, 64, 64], "float32").to_dict() == {"name": "images", "shape": [1, 3, 64, 64], "dtype": "float32"}


def test_result_record_validates_and_round_trips():
    from edgekit.contract.result import ResultRecord, finish, new_result, new_run

    result = new_result("run", {"hostname": "b"}, {"name": "demo"}, {})
    run = new_run("fp32", "fp32", "onnxruntime")
    run.update(status="ok", latency_ms={k: 1.0 for k in ("mean", "std", "min", "p50", "p90", "p95", "p99", "max")})
    result["runs"].append(run)
    finish(result)
    record = ResultRecord.from_dict(result)
    assert record.ok and record.runs[0].ok and record.runs[0].latency_ms["p50"] == 1.0
    assert record.to_dict() == result
    run["status"] = "great"
    with pytest.raises(EdgekitError, match="status"):
        ResultRecord.from_dict(result)


def test_result_record_names_the_first_problem_in_the_callers_words():
    from edgekit.contract.result import ResultRecord, finish, new_result, new_run

    result = new_result("run", {"hostname": "b"}, {"name": "demo"}, {})
    ok, failed = new_run("fp32", "fp32", "onnxruntime"), new_run("int8", "int8", "onnxruntime")
    ok.update(status="ok", latency_ms={k: 1.0 for k in ("mean", "std", "min", "p50", "p90", "p95", "p99", "max")})
    ok["accuracy"] = {"passed": False, "note": "mAP fell 12 points"}
    failed.update(status="failed", error="engine build failed")
    result["runs"] += [ok, failed]
    finish(result)
    record = ResultRecord.from_dict(result)
    assert record.first_problem() == "fp32: mAP fell 12 points"
    result["errors"].append("bundle hash mismatch")
    assert ResultRecord.from_dict(result).first_problem() == "bundle hash mismatch"
    result["runs"] = "nope"
    with pytest.raises(EdgekitError) as info:
        ResultRecord.from_dict(result, "r.json", "r.json is not an edgekit result: %s", "pass files written by edgekit deploy")
    assert str(info.value.problem).startswith("r.json is not an edgekit result: ") and info.value.fix == "pass files written by edgekit deploy"
