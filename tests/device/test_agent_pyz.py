"""The agent as one zipapp: deterministic bytes, runs with a python3 that has no edgekit."""
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from edgekit.contract.manifest import sha256_file
from edgekit.contract.result import validate_result
from edgekit.host.agent_pyz import build_agent_pyz


def test_the_zipapp_is_byte_for_byte_reproducible(agent_pyz, tmp_path):
    again = build_agent_pyz(str(tmp_path / "again" / "edgekit-agent.pyz"))
    assert sha256_file(again) == sha256_file(agent_pyz)
    with open(agent_pyz, "rb") as f:
        assert f.readline() == b"#!/usr/bin/env python3\n"
    assert os.access(agent_pyz, os.X_OK)
    names = zipfile.ZipFile(agent_pyz).namelist()
    assert names[0] == "__main__.py"
    assert "edgekit/device/cli.py" in names and "edgekit/device/backends/tensorrt_runner.py" in names
    assert "edgekit/calibration/preprocess.py" in names and "edgekit/calibration/trt_cache.py" in names
    assert not [n for n in names if "host" in n.split("/") or n.endswith(".pyc") or "__pycache__" in n]
    assert not [p for p in os.listdir(os.path.dirname(again)) if p.endswith(".partial")]


def test_the_zipapp_runs_from_a_folder_without_edgekit(agent_pyz, board_site, scored_bundle, scored_run, tmp_path, tools):
    python, env = tools.board_python(board_site)
    probe = subprocess.run(python + ["-c", "import edgekit"], env=dict(os.environ, **env), cwd=str(tmp_path), capture_output=True, text=True)
    assert probe.returncode != 0 and "No module named 'edgekit'" in probe.stderr
    run = tools.run(tools.quick("run", scored_bundle), python=python + [agent_pyz], env=env, cwd=str(tmp_path))
    assert run.rc == 0, run.stderr
    assert validate_result(run.result) == []
    # the same numbers as the installed agent
    for mine, installed in zip(run.result["runs"], scored_run.result["runs"]):
        assert mine["accuracy"]["stats"] == installed["accuracy"]["stats"]


def test_the_zipapp_command_line_matches_the_console_script(agent_pyz, board_site, tools):
    python, env = tools.board_python(board_site)
    pyz = subprocess.run(python + [agent_pyz, "--help"], env=dict(os.environ, **env), capture_output=True, text=True)
    script = os.path.join(os.path.dirname(sys.executable), "edgekit-agent")  # the console script setup.cfg declares
    installed = subprocess.run([script, "--help"], capture_output=True, text=True)
    assert pyz.returncode == installed.returncode == 0
    assert pyz.stdout == installed.stdout


def _python38():
    for candidate in ("/root/.pyenv/versions/3.8.18/bin/python3", shutil.which("python3.8")):
        if candidate and os.path.exists(candidate):
            probe = subprocess.run([candidate, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True, text=True)
            if probe.returncode == 0 and probe.stdout.strip() == "(3, 8)":
                return candidate
    return None


def test_a_bare_python38_board_gets_info_verify_and_install_lines(agent_pyz, scored_bundle, tools):
    """A board with Python 3.8 and nothing installed: info and verify work, doctor and run say what to install."""
    py38 = _python38()
    if py38 is None:
        pytest.skip("no Python 3.8 interpreter here; vermin (tests/foundation) still checks the code")
    bare = [py38, "-s", "-E"]  # no user site, no PYTHONPATH: this interpreter's own packages only
    if subprocess.run(bare + ["-c", "import numpy"], capture_output=True).returncode == 0:
        pytest.skip("this Python 3.8 has numpy installed; the test needs a bare one")
    info = tools.run(["info"], python=bare + [agent_pyz])
    assert info.rc == 0, info.stderr
    assert info.result["python"].startswith("3.8.") and info.result["runtimes"]["numpy"] is None
    assert "numpy" in info.result["problems"]
    verify = tools.run(["verify", scored_bundle], python=bare + [agent_pyz])
    assert verify.rc == 0 and verify.result["ok"] is True
    doctor = tools.run(["doctor", scored_bundle], python=bare + [agent_pyz])
    assert doctor.rc == 1
    fixes = {c["name"]: c["fix"] for c in doctor.result["checks"] if not c["ok"]}
    assert fixes["numpy"] == "pip3 install 'numpy<1.25'"  # the last numpy for Python 3.8
    assert set(fixes) >= {"numpy", "pillow", "pycocotools", "onnxruntime"}
    run = tools.run(["run", scored_bundle, "--progress", "none"], python=bare + [agent_pyz])
    assert run.rc == 2
    assert run.stderr.strip() == "error: numpy is not usable by this python3 (No module named 'numpy'); pip3 install 'numpy<1.25'"
    assert run.result["errors"] and run.result["ok"] is False
