"""The `edgekit` command: version, profiles, and the one-line error contract."""
import json
import os
import subprocess
import sys

import pytest

from edgekit.device import __version__


def edgekit(*args, env=None):
    cmd = [sys.executable, "-m", "edgekit.host.cli.main"] + list(args)
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=120)


def test_version():
    out = edgekit("--version")
    assert out.returncode == 0
    assert __version__ in out.stdout


def test_profiles_list_names_every_builtin():
    out = edgekit("profiles", "list")
    assert out.returncode == 0, out.stderr
    for name in ("jetson", "jetson-nano", "hisilicon", "rk3588", "cpu"):
        assert name in out.stdout


def test_profiles_show_json_is_the_resolved_profile():
    out = edgekit("profiles", "show", "jetson-nano", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["name"] == "jetson-nano"
    assert data["runtime"] == "tensorrt"  # inherited from jetson
    assert data["variants"] == ["fp32", "fp16"]
    assert data["tensorrt"]["version"] == "8.2.1"
    assert data["quantization"]["scheme"] == "tensorrt"


def test_profiles_show_text():
    out = edgekit("profiles", "show", "cpu")
    assert out.returncode == 0
    assert "onnxruntime" in out.stdout and "[quantization]" in out.stdout


@pytest.mark.parametrize(
    "body",
    [
        'extends = "cpu"\nalignment = 3\n',
        'extends = "cpu"\nfoo = 1\n',
        'extends = "nowhere"\n',
        'runtime = "tpu"\n',
        'extends = "cpu"\nvariants = ["fp64"]\n',
    ],
)
def test_bad_profile_exits_2_with_one_line_and_no_traceback(tmp_path, body):
    path = tmp_path / "board.toml"
    path.write_text(body)
    out = edgekit("profiles", "show", str(path))
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    assert "board.toml" in lines[0]
    assert "Traceback" not in out.stderr and out.stdout == ""


def test_debug_shows_the_traceback(tmp_path):
    path = tmp_path / "board.toml"
    path.write_text('extends = "cpu"\nalignment = 3\n')
    out = edgekit("--debug", "profiles", "show", str(path))
    assert out.returncode == 2
    assert "Traceback" in out.stderr and "error: " in out.stderr


def test_unknown_command_is_a_usage_error():
    out = edgekit("frobnicate")
    assert out.returncode == 2
    assert "No such command" in out.stderr


def test_ctrl_c_while_the_commands_load_is_one_line_and_exit_130(monkeypatch, capsys):
    # A Ctrl-C in the first ~0.3 s (the command modules' imports) printed a KeyboardInterrupt traceback.
    from edgekit.host.cli import main as main_module

    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(main_module, "_register", interrupted)
    with pytest.raises(SystemExit) as exit_info:
        main_module.main(["deploy", "--help"])
    assert exit_info.value.code == 130
    assert capsys.readouterr().err == "error: interrupted\n"
