"""Every test file in tests/ is collected: pytest's default norecursedirs
(`build`, `dist`, ...) once dropped tests/build without a word."""
import pathlib
import subprocess
import sys

TESTS = pathlib.Path(__file__).resolve().parents[1]
ROOT = TESTS.parent


def test_every_test_file_is_collected():
    on_disk = {p.relative_to(ROOT).as_posix() for p in TESTS.rglob("test_*.py")}
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
        cwd=str(ROOT), capture_output=True, text=True, timeout=300,
    ).stdout
    collected = {line.split("::", 1)[0] for line in out.splitlines() if "::" in line}
    assert len(on_disk) > 20
    assert sorted(on_disk - collected) == []
