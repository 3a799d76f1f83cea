"""`edgekit deploy --profile-layers`: the flag travels to the agent and its per-layer times come home."""
import glob
import sys
import json
import os

import pytest

from edgekit.contract.agent_command import AgentCall
from edgekit.device.cli import build_parser


def test_agent_call_passes_profile_layers_and_leaves_it_off_by_default():
    on = build_parser().parse_args(AgentCall(profile_layers=True).run_argv("py", "a", "/b", "/o")[2:])
    assert on.profile_layers is True
    off = AgentCall().run_argv("py", "a", "/b", "/o")
    assert "--profile-layers" not in off and build_parser().parse_args(off[2:]).profile_layers is False
    assert AgentCall(profile_layers=True) != AgentCall()


@pytest.mark.slow
def test_deploy_local_with_profile_layers_stores_layers(cpu_bundle, edgekit_cli):
    proc = edgekit_cli("deploy", "local", "--bundle", cpu_bundle, "--iterations", "5", "--warmup", "1", "--variant", "fp32", "--profile-layers", "--max-images", "4")
    assert proc.returncode == 0, proc.stderr
    files = sorted(glob.glob(os.path.join(str(edgekit_cli.cwd), "results", "local", "demo-cpu", "*.json")))
    assert len(files) == 1
    with open(files[0]) as f:
        result = json.load(f)
    assert result["settings"]["profile_layers"] is True
    run = result["runs"][0]
    assert run["status"] == "ok"
    layers = run["layers"]
    assert layers["source"] == "onnxruntime-profiler" and layers["nodes"] and layers["by_op_type"]
    assert 0 < layers["nodes_ms"] <= layers["run_ms"]


@pytest.mark.slow
def test_deploy_over_ssh_brings_home_layers_throughput_and_absent_energy_into_the_report(sshd, dynamic_bundle, agent_pyz, edgekit_cli, tmp_path):
    # Issue 16's "done when", on the loopback board: per-layer times, images/s at the batch sizes
    # asked and energy (absent here: this machine has no power monitors) for every variant, in edgekit report.
    proc = edgekit_cli(
        "deploy", sshd.target, "--bundle", dynamic_bundle, "--agent", agent_pyz[0], "-i", sshd.client_key,
        "--known-hosts", sshd.known_hosts, "--remote-dir", str(tmp_path / "remote"), "--python", sys.executable,
        "--iterations", "5", "--warmup", "1", "--max-images", "4", "--profile-layers", "--batch", "1,4",
    )
    assert proc.returncode == 0, proc.stderr
    files = glob.glob(os.path.join(str(edgekit_cli.cwd), "results", "*", "*", "*.json"))
    assert len(files) == 1, files
    with open(files[0]) as f:
        result = json.load(f)
    assert sorted(r["variant"] for r in result["runs"]) == ["fp32", "int8"]
    for run in result["runs"]:
        assert run["status"] == "ok", run["error"]
        assert run["layers"]["nodes"] and run["layers"]["by_op_type"] and 0 < run["layers"]["nodes_ms"] <= run["layers"]["run_ms"]
        assert [(t["batch"], t["status"]) for t in run["throughput"]] == [(1, "ok"), (4, "ok")]
        assert run["throughput"][1]["images_per_s"] > 0
        # absent, not zero: no figure, and the reason says why
        assert run["energy"]["source"] is None and run["energy"].get("total") is None and run["energy"]["reason"]
    out = str(tmp_path / "report")
    rep = edgekit_cli("report", "results", "--out", out)
    assert rep.returncode == 0, rep.stderr
    assert os.path.exists(os.path.join(out, "layers.md")) and os.path.exists(os.path.join(out, "layers_op_types.png"))
    with open(os.path.join(out, "report.md")) as f:
        md = f.read()
    assert "img/s" in md and "(here batch 4;" in md and "mJ/inf" not in md
    with open(os.path.join(out, "layers.md")) as f:
        layers_md = f.read()
    assert "fp32" in layers_md and "int8" in layers_md
