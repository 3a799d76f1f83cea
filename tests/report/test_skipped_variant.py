"""A variant the target cannot run by design (fp16 on ONNX Runtime CPU) is skipped, not failed."""
import glob
import json
import os
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_deploy_local_skips_fp16_on_cpu_once_and_exits_0(jetson_bundle, tmp_path):
    results = str(tmp_path / "results")
    cmd = [sys.executable, "-m", "edgekit.host.cli.main", "deploy", "local", "--bundle", jetson_bundle,
           "--backend", "onnxruntime", "--iterations", "5", "--warmup", "1", "--max-images", "4", "--results", results]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    reason = "fp16 needs a GPU execution provider"
    # Said once (the live run line), never as an error or a warning too.
    assert (proc.stdout + proc.stderr).count(reason) == 1, proc.stderr
    assert "error:" not in proc.stderr and "warning: fp16" not in proc.stderr
    rows = {line.split()[2]: line.split() for line in proc.stdout.splitlines() if line.startswith("local ")}
    assert rows["fp16"][4] == "skipped" and rows["fp32"][4] == "ok" and rows["int8"][4] == "ok"
    (path,) = glob.glob(os.path.join(results, "local", "*", "*.json"))
    result = json.load(open(path))
    assert result["ok"] is True and result["errors"] == []
    statuses = {r["variant"]: r["status"] for r in result["runs"]}
    assert statuses == {"fp32": "ok", "fp16": "skipped", "int8": "ok"}
    # The report names it skipped (not failed) with its reason, once.
    out = subprocess.run([sys.executable, "-m", "edgekit.host.cli.main", "report", results, "--out", str(tmp_path / "rep"), "--no-plots", "--format", "md"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count(reason) == 1 and "Skipped runs" in out.stdout and "Failed" not in out.stdout


def test_old_results_with_a_skipped_run_still_read(tmp_path):
    """Results written before 'skipped' stopped failing a result (ok false) load and report the same."""
    from edgekit.contract.result import ResultRecord, finish, new_result, new_run
    from edgekit.host.report.load import load_results
    from edgekit.host.report.table import build_rows

    result = new_result("run", {"hostname": "orin"}, {"name": "demo", "manifest_sha256": "0" * 64}, {})
    ok = new_run("fp32", "fp32", "onnxruntime")
    ok.update(status="ok", latency_ms={k: 10.0 for k in ("mean", "std", "min", "p50", "p90", "p95", "p99", "max")})
    skipped = new_run("fp16", "fp16", "onnxruntime")
    skipped.update(status="skipped", error="fp16 needs a GPU execution provider; use a GPU board")
    result["runs"] = [ok, skipped]
    finish(result)
    assert result["ok"] is True
    result["ok"] = False  # what edgekit 0.1.0 wrote
    path = tmp_path / "results" / "orin" / "demo" / "20260101T000000Z.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(result))
    assert ResultRecord.from_dict(result).runs[1].status == "skipped"
    rows = build_rows(load_results([str(tmp_path / "results")]))
    assert [(r.variant, r.status) for r in rows] == [("fp32", "ok"), ("fp16", "skipped")]
