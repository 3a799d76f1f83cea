"""`edgekit prune` reports mAP before pruning, after it and after recovery when evaluation data is at hand."""
import json
import subprocess
import sys

import pytest

pytest.importorskip("torch")


def edgekit(*args, cwd=None):
    cmd = [sys.executable, "-m", "edgekit.host.cli.main"] + list(args)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=cwd)


@pytest.mark.slow
def test_prune_reports_map_at_each_stage_and_the_numbers_are_reproducible(tmp_path):
    out = str(tmp_path / "pruned")
    proc = edgekit("prune", "--ratio", "0.3", "--recover-steps", "6", "--calib-images", "16", "--eval-images", "20", "--out", out, "--json")
    assert proc.returncode == 0, proc.stderr
    acc = json.loads(proc.stdout)["accuracy"]
    assert acc["metric"] == "coco_map" and acc["images"] == 20 and acc["eval"] == "the demo's validation split"
    original, pruned, recovered = acc["original"]["map"], acc["pruned"]["map"], acc["recovered"]["map"]
    assert 0.5 < original <= 1.0 and 0.0 <= pruned < original and 0.0 <= recovered <= 1.0
    # The file keeps the same block.
    assert json.load(open(out + "/prune_report.json"))["accuracy"] == acc
    # The hint's command measures the written (recovered) model: the same number.
    again = edgekit("demo", "eval", "--weights", out + "/model.pt", "--limit", "20", "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["map"] == pytest.approx(recovered, abs=1e-6)
    # And the untouched demo, the "original".
    base = edgekit("demo", "eval", "--limit", "20", "--json")
    assert json.loads(base.stdout)["map"] == pytest.approx(original, abs=1e-6)


@pytest.mark.slow
def test_prune_without_recovery_warns_that_the_model_is_unusable(tmp_path):
    proc = edgekit("prune", "--ratio", "0.3", "--eval-images", "20", "--no-layers", "--out", str(tmp_path / "p"), cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    line = [l for l in proc.stdout.splitlines() if l.startswith("mAP@0.5:0.95 on 20 images:")]
    assert len(line) == 1 and "original 0." in line[0] and "pruned 0." in line[0] and "recovered" not in line[0]
    text = " ".join(proc.stderr.split())
    assert "warning: the pruned model" in text and "--recover-seconds 300" in text


def test_eval_none_and_bad_eval_images(tmp_path):
    proc = edgekit("prune", "--ratio", "0.3", "--eval", "none", "--no-layers", "--out", str(tmp_path / "p"), "--json")
    assert proc.returncode == 0, proc.stderr
    assert "accuracy" not in json.loads(proc.stdout)
    proc = edgekit("prune", "--ratio", "0.3", "--eval-images", "0", "--out", str(tmp_path / "q"))
    assert proc.returncode == 2 and proc.stderr.startswith("error: --eval-images must be at least 1") and "Traceback" not in proc.stderr
