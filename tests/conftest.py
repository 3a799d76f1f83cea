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
