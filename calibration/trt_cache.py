"""TensorRT's calibration cache format (implicit INT8, TensorRT 8.x).

The file is text: a header ``TRT-<version>-<algorithm>`` where version is
TensorRT's integer NV_TENSORRT_VERSION (8.5.2 -> 8502; TensorRT 10 uses
major*10000 + minor*100 + patch, 10.3.0 -> 100300), then one line per tensor,
``<tensor name>: <scale>``, the scale as the 8 hex digits of its big-endian
IEEE float32. TensorRT silently ignores a cache whose header names another
version, so the agent compares headers itself (see :func:`accepts`).

ONNX Runtime's ``calibration.cache`` (a flatbuffer/JSON of ranges) is not this
format. Written by the host, read by the agent; Python 3.8, stdlib only.
"""
import struct
from typing import Dict, Optional, Tuple

ALGORITHMS = ("EntropyCalibration2", "EntropyCalibration", "MinMaxCalibration", "LegacyCalibration")


class TrtCache(object):
    def __init__(self, version: int, algorithm: str, scales: Dict[str, float]) -> None:
        self.version = int(version)
        self.algorithm = algorithm
        self.scales = dict(scales)

    def header(self) -> str:
        return "TRT-%d-%s" % (self.version, self.algorithm)


def version_code(version: str) -> int:
    """'8.5.2' -> 8502, '8.6' -> 8600, '10.3.0' -> 100300 (TensorRT's own integers)."""
    parts = [int(p) for p in str(version).split(".")[:3]]
    while len(parts) < 3:
        parts.append(0)
    major, minor, patch = parts
    if major >= 10:
        return major * 10000 + minor * 100 + patch
    return major * 1000 + minor * 100 + patch


def scale_to_hex(scale: float) -> str:
    return struct.pack(">f", float(scale)).hex()


def hex_to_scale(text: str) -> float:
    return struct.unpack(">f", bytes.fromhex(text.strip()))[0]


def dumps(cache: TrtCache) -> str:
    lines = [cache.header()]
    for name, scale in cache.scales.items():
        lines.append("%s: %s" % (name, scale_to_hex(scale)))
    return "\n".join(lines) + "\n"


def loads(text: str) -> TrtCache:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise ValueError("empty TensorRT calibration cache")
    header = lines[0].strip()
    parts = header.split("-", 2)
    if len(parts) != 3 or parts[0] != "TRT" or not parts[1].isdigit():
        raise ValueError("not a TensorRT calibration cache (header %r)" % header)
    scales = {}
    for ln in lines[1:]:
        name, sep, value = ln.rpartition(":")
        if not sep:
            raise ValueError("bad calibration cache line %r" % ln)
        scales[name.strip()] = hex_to_scale(value)
    return TrtCache(int(parts[1]), parts[2], scales)


def write(path: str, cache: TrtCache) -> None:
    with open(path, "w", encoding="ascii") as f:
        f.write(dumps(cache))


def read(path: str) -> TrtCache:
    with open(path, "r", encoding="ascii") as f:
        return loads(f.read())


def accepts(cache_version: int, runtime_version: str) -> Tuple[bool, Optional[str]]:
    """Would this TensorRT take the cache? TensorRT requires the exact version in the header."""
    have = version_code(runtime_version)
    if have == cache_version:
        return True, None
    return False, "calibration cache was written for TensorRT %d, this board has %s (%d)" % (cache_version, runtime_version, have)
