"""The agent's command line is written once: what the host builds, the agent parses."""
import pytest

from edgekit.contract.agent_command import AgentCall
from edgekit.device.cli import build_parser


def test_run_argv_parses_back_to_the_same_request():
    call = AgentCall(variants=["fp32", "p30-int8"], backend="onnxruntime", warmup=3, iterations=50, max_drift=0.02, max_images=10)
    argv = call.run_argv("python3", "agent.pyz", "/b", "/tmp/out.json", engine_cache="/e")
    assert argv[:2] == ["python3", "agent.pyz"]
    args = build_parser().parse_args(argv[2:])
    assert args.command == "run" and args.bundle == "/b" and args.out == "/tmp/out.json"
    assert args.engine_cache == "/e" and args.progress == "json"
    assert args.variant == ["fp32", "p30-int8"] and args.backend == "onnxruntime"
    assert (args.warmup, args.iterations, args.max_drift, args.max_images) == (3, 50, 0.02, 10)


def test_defaults_leave_the_agent_defaults():
    args = build_parser().parse_args(AgentCall().run_argv("py", "a", "/b", "/o")[2:])
    assert args.variant is None and args.backend == "auto" and args.warmup is None and args.max_drift is None


def test_doctor_argv_asks_about_the_run_backend():
    argv = AgentCall(backend="tensorrt").doctor_argv("py", "a", "/b")
    args = build_parser().parse_args(argv[2:])
    assert args.command == "doctor" and args.backend == "tensorrt" and args.json


def test_unknown_backend_is_refused_before_anything_runs():
    with pytest.raises(ValueError, match="backend"):
        AgentCall(backend="cuda")
