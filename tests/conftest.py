"""Shared fixtures. Each area's own fixtures live in tests/<area>/conftest.py."""
import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def repo_root() -> str:
    return REPO


@pytest.fixture(scope="session")
def in_ci() -> bool:
    return IN_CI


def pytest_report_header(config):  # noqa: D103 - pytest hook
    return "edgekit tests: python %s, CI=%s" % (sys.version.split()[0], IN_CI)


# --- bundles (edgekit build), built once per session --------------------------
# Reduced image counts keep the suite fast; everything else is the product path.
BUNDLE_CALIB_IMAGES = 16
BUNDLE_EVAL_IMAGES = 24


def _build_demo_bundle(tmp_path_factory, profile: str):
    from edgekit.host.bundle import BuildOptions, build_bundle

    out = tmp_path_factory.mktemp("bundles") / ("demo-%s" % profile)
    options = BuildOptions(profile=profile, out=str(out), calib_images=BUNDLE_CALIB_IMAGES, eval_images=BUNDLE_EVAL_IMAGES, parity_images=2)
    return build_bundle(options)


@pytest.fixture(scope="session")
def cpu_build(tmp_path_factory):
    """BuildResult of the demo for the `cpu` profile (fp32 + int8)."""
    return _build_demo_bundle(tmp_path_factory, "cpu")


@pytest.fixture(scope="session")
def cpu_bundle(cpu_build) -> str:
    """Path of a complete demo bundle for the `cpu` profile (fp32 + int8)."""
    return cpu_build.out_dir


@pytest.fixture(scope="session")
def jetson_build(tmp_path_factory):
    """BuildResult of the demo for the `jetson` profile (fp32, fp16, int8 + TensorRT cache)."""
    return _build_demo_bundle(tmp_path_factory, "jetson")


@pytest.fixture(scope="session")
def jetson_bundle(jetson_build) -> str:
    """Path of a complete demo bundle for the `jetson` profile."""
    return jetson_build.out_dir


# Evaluation images of the dynamic-batch bundle: one full batch of 8.
DYNAMIC_EVAL_IMAGES = 8


@pytest.fixture(scope="session")
def dynamic_build(tmp_path_factory):
    """A demo cpu bundle (fp32, int8) exported with a dynamic batch: (bundle path, what the build left in its working directory)."""
    from edgekit.host.bundle import BuildOptions, build_bundle

    out = tmp_path_factory.mktemp("bundles") / "demo-cpu-dynamic"
    cwd = tmp_path_factory.mktemp("cwd")
    options = BuildOptions(profile="cpu", out=str(out), variants=["fp32", "int8"], calib_images=8, eval_images=DYNAMIC_EVAL_IMAGES, parity_images=2, dynamic_batch=True)
    here = os.getcwd()
    os.chdir(str(cwd))
    try:
        path = build_bundle(options).out_dir
    finally:
        os.chdir(here)
    return path, sorted(os.listdir(str(cwd)))


@pytest.fixture(scope="session")
def dynamic_bundle(dynamic_build) -> str:
    return dynamic_build[0]
