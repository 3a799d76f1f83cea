"""The device side (device/, calibration/) must run on the boards' Python 3.8."""
import glob
import os
import shutil
import subprocess
import sys

import pytest

DEVICE_DIRS = ("device", "calibration")


def test_vermin_finds_nothing_newer_than_38(repo_root):
    vermin = shutil.which("vermin") or os.path.join(os.path.dirname(sys.executable), "vermin")
    assert os.path.exists(vermin), "vermin is part of the dev extra"
    out = subprocess.run(
        [vermin, "-q", "--no-tips", "-t=3.8-", "--violations", "--eval-annotations"] + [os.path.join(repo_root, d) for d in DEVICE_DIRS],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.stdout.strip() == "" and out.returncode == 0, out.stdout + out.stderr


def _python38():
    """A working Python 3.8 (pyenv shims exist but may refuse to run)."""
    for candidate in ("/root/.pyenv/versions/3.8.18/bin/python3", shutil.which("python3.8")):
        if not candidate or not os.path.exists(candidate):
            continue
        probe = subprocess.run([candidate, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True, text=True)
        if probe.returncode == 0 and probe.stdout.strip() == "(3, 8)":
            return candidate
    return None


def test_device_code_compiles_under_a_real_python38(repo_root, tmp_path):
    py38 = _python38()
    if py38 is None:
        pytest.skip("no Python 3.8 interpreter on this machine; vermin above still checks the code")
    files = [f for d in DEVICE_DIRS for f in glob.glob(os.path.join(repo_root, d, "**", "*.py"), recursive=True)]
    assert files
    script = "import sys\nfor f in sys.argv[1:]:\n    compile(open(f, encoding='utf-8').read(), f, 'exec')\n"
    out = subprocess.run([py38, "-c", script] + files, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


def test_device_side_never_imports_torch_or_the_host(repo_root):
    offenders = []
    for d in DEVICE_DIRS:
        for f in glob.glob(os.path.join(repo_root, d, "**", "*.py"), recursive=True):
            with open(f, encoding="utf-8") as fh:
                for n, line in enumerate(fh, 1):
                    s = line.strip()
                    if s.startswith(("import torch", "from torch", "from edgekit.host", "import edgekit.host")):
                        offenders.append("%s:%d: %s" % (os.path.relpath(f, repo_root), n, s))
    assert not offenders, offenders
