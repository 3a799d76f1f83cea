"""Builds ``edgekit-agent.pyz``: the agent as one file a board runs with its own python3.

The zipapp holds the installed ``edgekit.contract``, ``edgekit.device`` and
``edgekit.calibration`` packages (sources only) under an ``edgekit/`` package and a ``__main__.py``
that calls :func:`edgekit.device.cli.main`. It needs no pip install on the
board, only numpy, pillow, pycocotools and onnxruntime/tensorrt there.

The bytes are deterministic (sorted entries, fixed timestamps and
permissions), so the same sources always give the same sha256, which deploy
uses to skip uploading an agent the board already has.
"""
import os
import tempfile
import zipfile
from typing import List, Tuple

import edgekit.calibration
import edgekit.contract
import edgekit.device

from edgekit.contract.errors import EdgekitError

SHEBANG = b"#!/usr/bin/env python3\n"
PACKAGES = (
    ("edgekit/contract", edgekit.contract),
    ("edgekit/device", edgekit.device),
    ("edgekit/calibration", edgekit.calibration),
)
# 1980-01-01, the earliest time a zip entry can hold: no build-time leaks into the bytes.
FIXED_TIME = (1980, 1, 1, 0, 0, 0)
MAIN = b'''"""edgekit-agent: python3 edgekit-agent.pyz COMMAND ... (see --help)."""
import sys

if sys.version_info < (3, 8):
    sys.stderr.write("error: edgekit-agent needs Python 3.8 or newer, this is %d.%d; run it with python3.8+\\n" % sys.version_info[:2])
    sys.exit(2)

from edgekit.device.cli import main

main()
'''
# The zipapp's own edgekit/__init__.py: a regular package, so that inside the
# zip it shadows any edgekit installed on the board.
INIT = b'"""edgekit (agent zipapp): only edgekit.contract, edgekit.device and edgekit.calibration."""\n'


def package_files() -> List[Tuple[str, str]]:
    """(archive name, source path) of every .py file of the agent packages, sorted."""
    entries = []
    for arc_root, module in PACKAGES:
        root = os.path.dirname(os.path.abspath(module.__file__))
        for folder, dirs, files in os.walk(root):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__" and not d.startswith("."))
            for name in sorted(files):
                if not name.endswith(".py"):
                    continue
                src = os.path.join(folder, name)
                rel = os.path.relpath(src, root).replace(os.sep, "/")
                entries.append(("%s/%s" % (arc_root, rel), src))
    return sorted(entries)


def _add(zf: zipfile.ZipFile, name: str, data: bytes) -> None:
    info = zipfile.ZipInfo(name, date_time=FIXED_TIME)
    # Stored, not deflated: deflate's bytes depend on the zlib build (zlib-ng
    # differs), and the sha256 must not.
    info.compress_type = zipfile.ZIP_STORED
    info.external_attr = 0o644 << 16
    info.create_system = 3  # unix, whatever the host
    zf.writestr(info, data)


def build_agent_pyz(out_path: str) -> str:
    """Write the agent zipapp to ``out_path`` (atomically) and return that path.

    Its sha256 is ``edgekit.contract.manifest.sha256_file(path)``, identical for
    identical sources.
    """
    out_path = os.path.abspath(out_path)
    directory = os.path.dirname(out_path)
    try:
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".%s." % os.path.basename(out_path), suffix=".partial", dir=directory)
    except OSError as exc:
        raise EdgekitError("cannot write %s (%s)" % (out_path, exc.strerror), "choose a writable output folder")
    try:
        with os.fdopen(fd, "wb") as raw:
            raw.write(SHEBANG)
            with zipfile.ZipFile(raw, "w") as zf:
                _add(zf, "__main__.py", MAIN)
                _add(zf, "edgekit/__init__.py", INIT)
                for name, src in package_files():
                    with open(src, "rb") as f:
                        _add(zf, name, f.read())
        os.chmod(tmp, 0o755)
        os.replace(tmp, out_path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return out_path
