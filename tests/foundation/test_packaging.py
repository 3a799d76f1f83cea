"""A built wheel installs into a clean virtual environment with every package and
all package data (profiles, demo weights): missing package data shows up here."""
import glob
import os
import subprocess
import sys
import sysconfig
import venv
import zipfile

import pytest


@pytest.fixture(scope="module")
def wheel(repo_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    # No build isolation: the build backend (setuptools) is already in this venv and
    # CI must not depend on downloading it again.
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), repo_root],
        check=True,
        timeout=300,
        capture_output=True,
    )
    wheels = glob.glob(str(out / "edgekit-*.whl"))
    assert len(wheels) == 1
    return wheels[0]


def _source_packages(repo_root):
    mapping = {"host": "edgekit.host", "device": "edgekit.device", "calibration": "edgekit.calibration", "profiles": "edgekit.profiles"}
    names = set()
    for folder, pkg in mapping.items():
        for init in glob.glob(os.path.join(repo_root, folder, "**", "__init__.py"), recursive=True):
            rel = os.path.relpath(os.path.dirname(init), os.path.join(repo_root, folder))
            names.add(pkg if rel == "." else pkg + "." + rel.replace(os.sep, "."))
    return names


def test_wheel_contains_every_package_and_the_data(wheel, repo_root):
    names = zipfile.ZipFile(wheel).namelist()
    for pkg in _source_packages(repo_root):
        assert pkg.replace(".", "/") + "/__init__.py" in names, pkg
    for toml in glob.glob(os.path.join(repo_root, "profiles", "*.toml")):
        assert "edgekit/profiles/" + os.path.basename(toml) in names
    for weights in glob.glob(os.path.join(repo_root, "host", "demo", "*.pt")):
        assert "edgekit/host/demo/" + os.path.basename(weights) in names
    assert not any(n.startswith(("tests/", "benchmarks/")) for n in names)


def test_wheel_installs_into_a_clean_venv_and_imports_everything(wheel, repo_root, tmp_path):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(str(env_dir))
    py = str(env_dir / "bin" / "python")
    target = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], capture_output=True, text=True, check=True).stdout.strip()
    # Install the wheel alone into the clean venv (no network), then let it see this
    # environment's third-party packages through a path entry. A path entry's own .pth
    # files are not processed, so the editable install of edgekit stays invisible.
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-compile", "--target", target, wheel], check=True, timeout=300, capture_output=True)
    with open(os.path.join(target, "zz_deps.pth"), "w") as f:
        f.write(sysconfig.get_paths()["purelib"] + "\n")
    packages = sorted(_source_packages(repo_root))
    script = (
        "import importlib, json, sys\n"
        "mods = [importlib.import_module(n) for n in sys.argv[1:]]\n"
        "import edgekit.device\n"
        "from edgekit.host.profiles import list_profiles\n"
        "print(json.dumps({'file': edgekit.device.__file__, 'profiles': [p.name for p in list_profiles()]}))\n"
    )
    out = subprocess.run([py, "-c", script] + packages, capture_output=True, text=True, cwd=str(tmp_path), timeout=300)
    assert out.returncode == 0, out.stderr
    import json

    data = json.loads(out.stdout.strip().splitlines()[-1])
    assert data["file"].startswith(target), "imported edgekit from %s, not from the wheel" % data["file"]
    assert {"jetson", "jetson-nano", "hisilicon", "rk3588", "cpu"} <= set(data["profiles"])


def test_wheel_declares_both_console_scripts(wheel):
    zf = zipfile.ZipFile(wheel)
    entry_points = [n for n in zf.namelist() if n.endswith(".dist-info/entry_points.txt")]
    text = zf.read(entry_points[0]).decode()
    assert "edgekit = edgekit.host.cli.main:main" in text
    assert "edgekit-agent = edgekit.device.cli:main" in text
    metadata = zf.read([n for n in zf.namelist() if n.endswith(".dist-info/METADATA")][0]).decode()
    assert "Requires-Python: >=3.8" in metadata
    for extra in ("host", "device", "jetson", "dev"):
        assert "Provides-Extra: %s" % extra in metadata
