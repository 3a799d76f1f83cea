"""Bad bundles and hostile boards: every failure is a clear error in the JSON
result and a non-zero exit, never a traceback or a hang."""
import json
import os
import resource

import pytest

from edgekit.contract.result import validate_result
from edgekit.host.bundle.writer import pack_tar


def _single_line_error(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


def _edit_manifest_in_place(bundle: str, edit) -> None:
    path = os.path.join(bundle, "manifest.json")
    with open(path, encoding="utf-8") as f:
        manifest = json.load(f)
    edit(manifest)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(manifest, f)


def test_a_tampered_model_is_refused_and_the_other_variant_still_runs(scored_bundle, tmp_path, tools):
    bundle = tools.copy_bundle(scored_bundle, str(tmp_path / "tampered"))
    model = os.path.join(bundle, "models", "int8.onnx")
    with open(model, "r+b") as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 0xFF]))
    run = tools.run(tools.quick("run", bundle))
    assert run.rc == 1, run.stderr
    assert validate_result(run.result) == []
    int8 = run.run_of("int8")
    assert int8["status"] == "failed"
    assert "models/int8.onnx does not match its sha256" in int8["error"] and "copy the bundle again" in int8["error"]
    assert int8["latency_ms"] is None and int8["provider"] is None  # never loaded
    assert run.run_of("fp32")["status"] == "ok"
    assert run.result["ok"] is False

    verify = tools.run(["verify", bundle])
    assert verify.rc == 2
    assert verify.result["ok"] is False and verify.result["problems"] == ["models/int8.onnx does not match its sha256 in the manifest"]
    assert "models/int8.onnx does not match" in _single_line_error(verify.stderr)


def test_verify_passes_an_intact_bundle(scored_bundle, tools):
    verify = tools.run(["verify", scored_bundle])
    assert verify.rc == 0, verify.stderr
    assert verify.result["ok"] is True and verify.result["problems"] == []
    assert verify.result["files"] == len(tools.load_manifest(scored_bundle)["files"])


def test_a_manifest_path_that_leaves_the_bundle_is_rejected(scored_bundle, tmp_path, tools):
    bundle = tools.copy_bundle(scored_bundle, str(tmp_path / "escape"))

    def escape(m):
        entry = m["files"].pop("models/fp32.onnx")
        m["files"]["../fp32.onnx"] = entry
        m["variants"][0]["file"] = "../fp32.onnx"

    _edit_manifest_in_place(bundle, escape)
    for command in ("run", "verify"):
        run = tools.run([command, bundle, "--progress", "none"] if command == "run" else [command, bundle])
        assert run.rc == 2
        assert "'../fp32.onnx' leaves the bundle" in _single_line_error(run.stderr)
    assert run.result is None or run.result["ok"] is False


def test_a_symlink_out_of_the_bundle_is_rejected(scored_bundle, tmp_path, tools):
    bundle = tools.copy_bundle(scored_bundle, str(tmp_path / "symlink"))
    model = os.path.join(bundle, "models", "fp32.onnx")
    outside = str(tmp_path / "outside.onnx")
    os.replace(model, outside)
    os.symlink(outside, model)
    run = tools.run(tools.quick("bench", bundle, "--variant", "fp32"))
    assert run.rc == 1
    assert "points outside the bundle" in run.run_of("fp32")["error"]


def test_a_corrupt_model_with_matching_hashes_is_a_clear_error(scored_bundle, tmp_path, tools):
    bundle = tools.rewrite_bundle(scored_bundle, str(tmp_path / "corrupt"), replace_files={"models/fp32.onnx": b"\x08\x07garbage, not a protobuf" * 50})
    run = tools.run(tools.quick("run", bundle))
    assert run.rc == 1
    fp32 = run.run_of("fp32")
    assert fp32["status"] == "failed"
    assert fp32["error"].startswith("models/fp32.onnx is not a valid ONNX model") and "rebuild" in fp32["error"]
    assert run.run_of("int8")["status"] == "ok"


def test_a_model_whose_input_shape_disagrees_with_the_manifest(scored_bundle, tmp_path, tools):
    def shrink(m):
        m["input"]["shape"] = [1, 3, 256, 256]
        m["preprocess"]["size"] = [256, 256]

    bundle = tools.rewrite_bundle(scored_bundle, str(tmp_path / "shape"), edit_manifest=shrink)
    run = tools.run(tools.quick("bench", bundle, "--variant", "fp32"))
    assert run.rc == 1
    error = run.run_of("fp32")["error"]
    assert "input 'images' has shape [1, 3, 320, 320] but the bundle's manifest says [1, 3, 256, 256]" in error


def test_a_manifest_at_odds_with_itself_stops_before_any_run(scored_bundle, tmp_path, tools):
    bundle = tools.rewrite_bundle(scored_bundle, str(tmp_path / "odd"), edit_manifest=lambda m: m["input"].update(shape=[1, 3, 256, 256]))
    run = tools.run(tools.quick("run", bundle))
    assert run.rc == 2
    assert "does not match its preprocess size" in _single_line_error(run.stderr)
    assert run.result["runs"] == [] and run.result["errors"]


def test_a_board_without_onnxruntime_reports_it_with_the_install_line(scored_bundle, agent_pyz, tmp_path, tools):
    # The zipapp on a python3 that has numpy, pillow and pycocotools, but no onnxruntime (and no edgekit).
    site = tools.deps_dir(str(tmp_path / "site"), ["numpy", "PIL", "pycocotools"])
    python, env = tools.board_python(site)
    run = tools.run(tools.quick("run", scored_bundle), python=python + [agent_pyz], env=env)
    assert run.rc == 1, run.stderr
    for r in run.result["runs"]:
        assert r["status"] == "failed"
        assert r["error"].startswith("ONNX Runtime cannot be imported (No module named 'onnxruntime')")
        assert "pip3 install onnxruntime" in r["error"]
    doctor = tools.run(["doctor", scored_bundle], python=python + [agent_pyz], env=env)
    assert doctor.rc == 1
    checks = {c["name"]: c for c in doctor.result["checks"]}
    assert checks["onnxruntime"]["ok"] is False and checks["onnxruntime"]["fix"] == "pip3 install onnxruntime"
    assert checks["numpy"]["ok"] is True and checks["bundle files"]["ok"] is True


def _huge_model(path: str) -> None:
    """A valid model whose first node asks for a 16 GB tensor."""
    import onnx
    from onnx import TensorProto, helper

    shape = helper.make_tensor("shape", TensorProto.INT64, [4], [1300000, 3, 32, 32])
    nodes = [helper.make_node("Expand", ["images", "shape"], ["big"]), helper.make_node("ReduceMean", ["big"], ["output0"], keepdims=1)]
    graph = helper.make_graph(
        nodes,
        "huge",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, None)],
        initializer=[shape],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)


def test_out_of_memory_is_reported_not_crashed(scored_bundle, tmp_path, tools):
    huge = str(tmp_path / "huge.onnx")
    _huge_model(huge)
    with open(huge, "rb") as f:
        data = f.read()

    def only_huge(m):
        m["variants"] = [{"name": "huge", "precision": "fp32", "file": "models/huge.onnx"}]
        m["input"]["shape"] = [1, 3, 32, 32]
        m["preprocess"]["size"] = [32, 32]
        m["eval"] = None

    bundle = tools.rewrite_bundle(scored_bundle, str(tmp_path / "oom"), edit_manifest=only_huge, replace_files={"models/huge.onnx": data})

    def limit_memory():  # in the child: 4 GB of address space, so the 16 GB tensor cannot exist
        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))

    run = tools.run(tools.quick("bench", bundle), preexec_fn=limit_memory, timeout=120)
    assert run.rc == 1, run.stderr
    huge_run = run.run_of("huge")
    assert huge_run["status"] == "failed"
    assert huge_run["error"].startswith("out of memory while running models/huge.onnx")
    assert "Failed to allocate memory" in huge_run["error"]
    assert "synthetic" in run.result["settings"]["bench_input"]
    assert all(line.startswith("{") for line in run.stderr.splitlines()), run.stderr[:400]


def test_a_tampered_evaluation_image_is_refused(scored_bundle, tmp_path, tools):
    bundle = tools.copy_bundle(scored_bundle, str(tmp_path / "evaltamper"))
    manifest = tools.load_manifest(bundle)
    image = sorted(r for r in manifest["files"] if r.startswith("eval/images/"))[3]
    with open(os.path.join(bundle, image), "ab") as f:
        f.write(b"x")
    run = tools.run(tools.quick("run", bundle, "--variant", "fp32"))
    assert run.rc == 1
    assert run.result["errors"] == ["accuracy not measured: refusing the evaluation set: %s has %d bytes, the manifest says %d; copy the bundle again or rebuild it"
                                    % (image, manifest["files"][image]["size"] + 1, manifest["files"][image]["size"])]
    fp32 = run.run_of("fp32")
    assert fp32["status"] == "ok" and fp32["accuracy"] is None and fp32["latency_ms"]["p50"] > 0
    assert run.result["ok"] is False


def test_the_accuracy_gate_fails_a_drifted_variant(scored_bundle, tmp_path, tools):
    def shift(m):
        fp32 = [v for v in m["variants"] if v["name"] == "fp32"][0]
        fp32["host_metrics"]["map"] += 0.05

    bundle = tools.rewrite_bundle(scored_bundle, str(tmp_path / "drift"), edit_manifest=shift)
    run = tools.run(["eval", bundle, "--variant", "fp32", "--progress", "none"])
    assert run.rc == 1
    acc = run.run_of("fp32")["accuracy"]
    assert acc["passed"] is False and abs(acc["drift"] + 0.05) < 0.002
    assert run.result["ok"] is False
    assert any("failed the accuracy gate" in w for w in run.result["warnings"])
    looser = tools.run(["eval", bundle, "--variant", "fp32", "--progress", "none", "--max-drift", "0.06"])
    assert looser.rc == 0 and looser.run_of("fp32")["accuracy"]["passed"] is True


def test_a_bundle_tar_runs_like_its_folder(scored_bundle, tmp_path, tools):
    tar = pack_tar(scored_bundle, str(tmp_path / "bundle.tar"))
    run = tools.run(["eval", tar, "--variant", "fp32", "--max-images", "4", "--progress", "none"])
    assert run.rc == 0, run.stderr
    assert run.result["bundle"]["path"] == tar
    assert run.run_of("fp32")["accuracy"]["images"] == 4


def test_a_fp16_variant_is_skipped_on_a_cpu_only_board_with_the_reason(scored_bundle, tmp_path, tools):
    def add_fp16(m):
        m["variants"].append({"name": "fp16", "precision": "fp16", "file": "models/fp32.onnx", "graph_precision": "fp32"})

    bundle = tools.rewrite_bundle(scored_bundle, str(tmp_path / "fp16"), edit_manifest=add_fp16)
    run = tools.run(tools.quick("bench", bundle))
    # Skipped by design is not a failure: exit 0, result ok, the reason said once (the run's error).
    assert run.rc == 0, run.stderr
    fp16 = run.run_of("fp16")
    assert fp16["status"] == "skipped" and fp16["error"].startswith("fp16 needs a GPU execution provider")
    assert [r["status"] for r in run.result["runs"]] == ["ok", "ok", "skipped"]
    assert run.result["ok"] is True and run.result["errors"] == []
    assert not any("fp16 needs a GPU" in w for w in run.result["warnings"])
    assert run.stderr.count("fp16 needs a GPU") == 1  # the run event only
    # Only the skipped variant asked for: nothing was measured, and that is a failure that says so.
    alone = tools.run(tools.quick("bench", bundle, "--variant", "fp16"))
    assert alone.rc == 1 and alone.result["ok"] is False
    assert alone.result["errors"] == ["no variant ran here: every one was skipped (each run's error says why)"]


def test_asking_for_tensorrt_where_there_is_none_says_so(scored_bundle, tools):
    run = tools.run(tools.quick("bench", scored_bundle, "--variant", "fp32", "--backend", "tensorrt"))
    assert run.rc == 1
    fp32 = run.run_of("fp32")
    assert fp32["status"] == "failed" and fp32["backend"] == "tensorrt"
    assert fp32["error"].startswith("TensorRT cannot be imported") and "pip3 install tensorrt" in fp32["error"]


def test_a_hung_variant_is_cut_off_by_the_timeout(scored_bundle, tools):
    run = tools.run(["bench", scored_bundle, "--variant", "fp32", "--iterations", "1000000", "--timeout", "3", "--progress", "none"], timeout=120)
    assert run.rc == 3
    assert "timed out after 3 s" in _single_line_error(run.stderr)
    fp32 = run.run_of("fp32")
    assert fp32["status"] == "failed" and "timed out" in fp32["error"]
    assert run.result["ok"] is False and run.result["finished"]


@pytest.mark.parametrize("args", [["run"], ["bench", "/nonexistent/bundle"], ["verify", "/nonexistent/bundle"]])
def test_bad_command_lines_are_one_line_errors(args, tools):
    run = tools.run(args)
    assert run.rc == 2
    assert "Traceback" not in run.stderr


def test_a_missing_execution_provider_is_said_once_not_per_variant(scored_bundle, tools):
    run = tools.run(tools.quick("bench", scored_bundle, "--providers", "CUDAExecutionProvider,CPUExecutionProvider"))
    assert run.rc == 0, run.stderr
    assert len(run.result["runs"]) >= 2 and all(r["status"] == "ok" for r in run.result["runs"])
    lacks = [w for w in run.result["warnings"] if "lacks CUDAExecutionProvider" in w]
    assert len(lacks) == 1, run.result["warnings"]
