"""`edgekit deploy --profile-layers`: the flag travels to the agent and its per-layer times come home."""
import glob
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
