"""`edgekit prune` end to end, in-process: outputs, errors as one line, nothing half-written."""
import json
import os

import pytest
import torch

from edgekit.host.model.loading import load_model


def test_prune_writes_model_report_and_chart(run_cli, capsys, zoo_file, tmp_path):
    out = tmp_path / "out"
    code, stdout, stderr = run_cli(
        ["prune", "--model", "%s:depthwise" % zoo_file, "--profile", "hisilicon", "--ratio", "0.5", "--input-size", "32", "--out", str(out)], capsys
    )
    assert code == 0, stderr
    assert "all channels aligned to 8" in stdout and "parameters" in stdout and "dw.0" in stdout
    assert sorted(os.listdir(str(out))) == ["model.pt", "prune_channels.png", "prune_report.json"]
    report = json.load(open(str(out / "prune_report.json")))
    assert report["alignment"] == 8 and report["aligned"] and report["ratio"] == 0.5
    # The written model reloads into the unpruned definition, weights only.
    loaded = load_model("%s:depthwise" % zoo_file, weights=str(out / "model.pt"))
    assert loaded.input_size == (32, 32)
    assert loaded.module.pw2[0].out_channels == 24
    assert not [name for name in os.listdir(str(tmp_path)) if name.startswith(".out.partial")]


def test_prune_json_with_sensitivity_and_recovery(run_cli, capsys, zoo_file, tmp_path, image_dir):
    out = tmp_path / "out"
    args = ["prune", "--model", "%s:tiny_yolo" % zoo_file, "--profile", "hisilicon", "--input-size", "64", "--strategy", "sensitivity", "--target-macs", "0.4"]
    args += ["--calib", image_dir, "--recover-steps", "3", "--json", "--out", str(out)]
    code, stdout, stderr = run_cli(args, capsys)
    assert code == 0, stderr
    data = json.loads(stdout)
    assert data["strategy"] == "sensitivity" and data["target_macs"] == 0.4
    assert data["macs"]["reduction"] >= 0.38
    assert data["recovery"]["steps"] == 3 and data["recovery"]["images"] == 6
    assert json.load(open(str(out / "prune_report.json")))["recovery"]["steps"] == 3


def test_unaligned_result_is_refused_unless_allowed(run_cli, capsys, zoo_file, tmp_path):
    (tmp_path / "extra.py").write_text(open(zoo_file).read() + "\n\ndef unaligned():\n    return Unaligned()\n")
    model = "%s:unaligned" % (tmp_path / "extra.py")
    out = tmp_path / "out"
    code, stdout, stderr = run_cli(["prune", "--model", model, "--profile", "hisilicon", "--input-size", "32", "--out", str(out)], capsys)
    assert code == 2
    lines = stderr.strip().splitlines()
    assert lines[-1].startswith("error: the pruned model failed its checks") and "'c.0' keeps 4 output channels" in lines[-1]
    assert "Traceback" not in stderr
    assert not out.exists()
    code, stdout, stderr = run_cli(["prune", "--model", model, "--profile", "hisilicon", "--input-size", "32", "--out", str(out), "--allow-unaligned"], capsys)
    assert code == 0 and (out / "model.pt").exists()
    assert "NOT all channels aligned to 8" in stdout


@pytest.mark.parametrize(
    "args,text",
    [
        (["--ratio", "1.5"], "pruning ratio 1.5 is out of range"),
        (["--ratio", "0.5", "--target-macs", "0.5"], "alternatives"),
        (["--strategy", "sensitivity"], "needs unlabelled images"),
        (["--recover-steps", "5"], "needs unlabelled images"),
        (["--ignore", "zzz*"], "matches no conv/linear layer"),
        (["--profile", "nosuchprofile"], "unknown profile"),
        (["--input-size", "33"], "--input-size"),
    ],
)
def test_bad_options_give_one_line_errors(run_cli, capsys, zoo_file, tmp_path, args, text):
    out = tmp_path / "out"
    code, stdout, stderr = run_cli(["prune", "--model", "%s:tiny_yolo" % zoo_file, "--input-size", "64", "--out", str(out)] + args, capsys)
    assert code == 2, stderr
    lines = stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and text in lines[-1], stderr
    assert "Traceback" not in stderr
    assert not out.exists()


def test_onnx_model_cannot_be_pruned(run_cli, capsys, zoo, tmp_path):
    path = tmp_path / "m.onnx"
    model = zoo.TinyYolo().eval()
    model.detect.export = True
    torch.onnx.export(model, (torch.zeros(1, 3, 64, 64),), str(path), dynamo=False, opset_version=13)
    code, stdout, stderr = run_cli(["prune", "--model", str(path), "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and "ONNX model, which edgekit cannot prune" in stderr


def test_refusal_comes_before_recovery_spends_its_budget(run_cli, capsys, zoo_file, tmp_path, image_dir):
    import time

    (tmp_path / "extra.py").write_text(open(zoo_file).read() + "\n\ndef unaligned():\n    return Unaligned()\n")
    out = tmp_path / "out"
    args = ["prune", "--model", "%s:unaligned" % (tmp_path / "extra.py"), "--profile", "hisilicon", "--input-size", "32", "--calib", image_dir]
    started = time.time()
    code, stdout, stderr = run_cli(args + ["--recover-seconds", "60", "--out", str(out)], capsys)
    assert code == 2 and time.time() - started < 30.0
    assert stderr.strip().splitlines()[-1].startswith("error: the pruned model failed its checks")
    assert "distilling" not in stderr and "Traceback" not in stderr and not out.exists()
    assert "NOT all channels aligned to 8" in stdout  # the report is still shown with the refusal
