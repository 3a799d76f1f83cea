"""`edgekit-agent run` on a demo bundle built by `edgekit build --profile cpu`, with ONNX Runtime."""
import json

from edgekit.device.coco_eval import STAT_NAMES
from edgekit.contract.result import LATENCY_KEYS, validate_result


def test_run_returns_a_valid_result_for_every_variant(scored_run, scored_bundle, tools):
    result = scored_run.result
    assert scored_run.rc == 0, scored_run.stderr
    assert validate_result(result) == []
    assert result["ok"] is True and result["errors"] == []
    assert result["command"] == "run"
    manifest = tools.load_manifest(scored_bundle)
    assert [r["variant"] for r in result["runs"]] == [v["name"] for v in manifest["variants"]]
    assert result["bundle"]["name"] == manifest["name"]
    assert len(result["bundle"]["manifest_sha256"]) == 64
    for run in result["runs"]:
        assert run["status"] == "ok" and run["error"] is None
        assert run["backend"] == "onnxruntime" and run["provider"] == "CPUExecutionProvider"
        lat = run["latency_ms"]
        assert list(lat) == list(LATENCY_KEYS)
        assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p95"] <= lat["p99"] <= lat["max"]
        assert lat["min"] <= lat["mean"] <= lat["max"] and lat["std"] >= 0
        assert run["iterations"] == 10 and run["warmup"] == 2
        assert abs(run["throughput_fps"] - 1000.0 / lat["mean"]) < 0.01
        for stage in ("preprocess", "inference", "postprocess"):
            assert run["stages_ms"][stage]["p50"] > 0
        assert run["end_to_end_ms"]["mean"] > run["stages_ms"]["inference"]["mean"]
        assert run["memory"]["peak_rss_mb"] > 20 and run["memory"]["gpu_mb"] is None
        assert run["environment"]["throttled"] in (True, False)
        assert list(run["accuracy"]["stats"]) == list(STAT_NAMES)
        assert run["accuracy"]["images"] == manifest["eval"]["count"]
    # the device block is the agent's `info`
    assert result["device"]["runtimes"]["onnxruntime"]
    assert "CPUExecutionProvider" in result["device"]["providers"]


def test_device_map_equals_the_host_reference(scored_run, scored_bundle, tools):
    manifest = tools.load_manifest(scored_bundle)
    by_name = {v["name"]: v for v in manifest["variants"]}
    fp32 = scored_run.run_of("fp32")
    assert fp32["accuracy"]["stats"]["map"] >= tools.MIN_USEFUL_MAP, "the comparison needs a model that finds something"
    for run in scored_run.result["runs"]:
        host = by_name[run["variant"]]["host_metrics"]
        acc = run["accuracy"]
        for name in STAT_NAMES:
            assert abs(acc["stats"][name] - host[name]) <= 0.002, (run["variant"], name, acc["stats"][name], host[name])
        assert acc["drift"] is not None and abs(acc["drift"]) <= 0.002
        assert acc["passed"] is True and acc["max_drift"] == manifest["profile"]["max_drift"]


def test_progress_is_json_lines_on_stderr(scored_run, tools):
    events = scored_run.events()
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "done"
    assert all("t" in e for e in events)
    bench = [e for e in events if e["event"] == "progress" and e["phase"] == "bench" and e["variant"] == "fp32"]
    assert bench and bench[-1]["done"] == bench[-1]["total"] == 10
    evals = [e for e in events if e["event"] == "progress" and e["phase"] == "eval" and e["variant"] == "int8"]
    assert evals[-1]["done"] == evals[-1]["total"]
    runs = [e for e in events if e["event"] == "run"]
    assert [(e["variant"], e["status"]) for e in runs] == [(r["variant"], "ok") for r in scored_run.result["runs"]]
    # nothing but JSON lines: ONNX Runtime's own logging must not leak into stderr
    assert all(line.startswith("{") for line in scored_run.stderr.splitlines()), scored_run.stderr[:500]


def test_stdout_is_the_json_result_when_not_a_terminal(scored_bundle, tools):
    run = tools.run(tools.quick("bench", scored_bundle, "--variant", "int8", "--progress", "none"))
    assert run.rc == 0, run.stderr
    assert run.stderr == ""
    result = json.loads(run.stdout)
    assert [r["variant"] for r in result["runs"]] == ["int8"]
    only = result["runs"][0]
    assert only["accuracy"] is None  # bench measures no accuracy
    assert only["stages_ms"]["postprocess"]["p50"] > 0  # ... but times the stages on real images
    assert result["settings"]["bench_input"].startswith("eval/images/")


def test_eval_alone_times_inference_per_image(scored_bundle, tools):
    run = tools.run(["eval", scored_bundle, "--variant", "fp32", "--progress", "none"])
    assert run.rc == 0, run.stderr
    fp32 = run.run_of("fp32")
    assert fp32["iterations"] == tools.load_manifest(scored_bundle)["eval"]["count"]
    assert fp32["accuracy"]["passed"] is True
    assert validate_result(run.result) == []


def test_subset_evaluation_is_not_gated(scored_bundle, tools):
    run = tools.run(["eval", scored_bundle, "--variant", "fp32", "--max-images", "3", "--progress", "none"])
    assert run.rc == 0, run.stderr
    acc = run.run_of("fp32")["accuracy"]
    assert acc["images"] == 3 and acc["drift"] is None and acc["passed"] is None
    assert "3 of" in acc["note"]


def test_unknown_variant_is_a_one_line_error(scored_bundle, tools):
    run = tools.run(["run", scored_bundle, "--variant", "fp64", "--progress", "none"])
    assert run.rc == 2
    assert run.stderr.startswith("error: bundle") and "fp64" in run.stderr and "use one of fp32, int8" in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1 and "Traceback" not in run.stderr
    assert run.result["errors"] and run.result["runs"] == [] and run.result["ok"] is False


def test_run_on_a_bundle_built_without_an_evaluation_set_measures_latency_and_succeeds(cpu_bundle, tools, tmp_path):
    """`edgekit build --eval none` then `run`: nothing to score is a warning with the fix, not a failed result."""

    def no_eval(manifest):
        manifest["eval"] = None

    bundle = tools.rewrite_bundle(cpu_bundle, str(tmp_path / "no-eval"), edit_manifest=no_eval)
    run = tools.run(tools.quick("run", bundle, "--variant", "fp32"))
    assert run.rc == 0, run.stderr
    assert run.result["ok"] is True and run.result["errors"] == []
    (fp32,) = run.result["runs"]
    assert fp32["status"] == "ok" and fp32["latency_ms"]["p50"] > 0 and fp32["accuracy"] is None
    assert any("accuracy not measured" in w and "--eval" in w for w in run.result["warnings"]), run.result["warnings"]
