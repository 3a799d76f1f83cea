"""What board is this: the agent's ``info`` command and every result's ``device``.

Read from the places a board keeps the facts: the device tree (board model),
/etc/nv_tegra_release (L4T), /proc (CPU, memory), /sys (governor, clocks),
``nvpmodel -q`` (Jetson power mode), the CUDA driver (GPU), and the Python
runtimes that import. Stdlib only, and every probe tolerates its source
missing: ``info`` must work on a board that lacks numpy or onnxruntime.
"""
import os
import platform
import re
import shutil
import socket
import subprocess
from typing import Any, Dict, List, Optional, Tuple

from . import __version__

# L4T release -> JetPack release (NVIDIA's JetPack archive). Unlisted releases
# fall back to the major line ("5.x").
L4T_TO_JETPACK = {
    "32.5.0": "4.5",
    "32.5.1": "4.5.1",
    "32.5.2": "4.5.1",
    "32.6.1": "4.6",
    "32.7.1": "4.6.1",
    "32.7.2": "4.6.2",
    "32.7.3": "4.6.3",
    "32.7.4": "4.6.4",
    "32.7.5": "4.6.5",
    "32.7.6": "4.6.6",
    "35.1.0": "5.0.2",
    "35.2.1": "5.1",
    "35.3.1": "5.1.1",
    "35.4.1": "5.1.2",
    "35.5.0": "5.1.3",
    "35.6.0": "5.1.4",
    "35.6.1": "5.1.5",
    "36.2.0": "6.0 DP",
    "36.3.0": "6.0",
    "36.4.0": "6.1",
    "36.4.3": "6.2",
    "36.4.4": "6.2.1",
}
L4T_MAJOR_TO_JETPACK = {"32": "4.x", "34": "5.0 DP", "35": "5.x", "36": "6.x", "38": "7.x"}

# ARM "CPU part" codes (implementer 0x41 Arm, 0x4e NVIDIA) for boards whose
# /proc/cpuinfo has no model name.
ARM_PARTS = {
    (0x41, 0xD03): "Cortex-A53",
    (0x41, 0xD04): "Cortex-A35",
    (0x41, 0xD05): "Cortex-A55",
    (0x41, 0xD07): "Cortex-A57",
    (0x41, 0xD08): "Cortex-A72",
    (0x41, 0xD09): "Cortex-A73",
    (0x41, 0xD0A): "Cortex-A75",
    (0x41, 0xD0B): "Cortex-A76",
    (0x41, 0xD0C): "Neoverse-N1",
    (0x41, 0xD0D): "Cortex-A77",
    (0x41, 0xD41): "Cortex-A78",
    (0x41, 0xD42): "Cortex-A78AE",
    (0x41, 0xD4F): "Neoverse-V2",
    (0x4E, 0x004): "Carmel",
}


def read_text(path: str) -> Optional[str]:
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace")
    except (OSError, IOError):
        return None


def run_command(argv: List[str], timeout: float = 5.0) -> Optional[str]:
    """A small command's stdout, or None when it is absent, fails or hangs."""
    if not shutil.which(argv[0]):
        return None
    try:
        proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return None
    if proc.returncode != 0:
        return None
    return proc.stdout.decode("utf-8", "replace")


# --- parsers (pure, tested with text from real boards) -----------------------


def parse_nv_tegra_release(text: Optional[str]) -> Optional[str]:
    """'# R35 (release), REVISION: 3.1, ...' -> '35.3.1'."""
    if not text:
        return None
    m = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", text)
    if not m:
        return None
    revision = m.group(2).strip(".")
    parts = revision.split(".")
    while len(parts) < 2:
        parts.append("0")
    return "%s.%s" % (m.group(1), ".".join(parts[:2]))


def jetpack_for_l4t(l4t: Optional[str]) -> Optional[str]:
    if not l4t:
        return None
    if l4t in L4T_TO_JETPACK:
        return L4T_TO_JETPACK[l4t]
    return L4T_MAJOR_TO_JETPACK.get(l4t.split(".")[0])


def parse_nvpmodel(text: Optional[str]) -> Optional[Dict[str, Any]]:
    """``nvpmodel -q`` prints 'NV Power Mode: MAXN' then the mode id on its own line."""
    if not text:
        return None
    m = re.search(r"NV Power Mode:\s*(\S+)", text)
    if not m:
        return None
    mode_id = None
    after = text[m.end():]
    for line in after.splitlines():
        line = line.strip()
        if line.isdigit():
            mode_id = int(line)
            break
    return {"name": m.group(1), "id": mode_id}


def parse_cpuinfo(text: Optional[str]) -> Optional[str]:
    """CPU model name from /proc/cpuinfo (x86 'model name', ARM part codes)."""
    if not text:
        return None
    for key in ("model name", "Model Name", "Processor", "cpu model"):
        m = re.search(r"^%s\s*:\s*(.+)$" % re.escape(key), text, re.MULTILINE)
        if m and m.group(1).strip():
            return m.group(1).strip()
    implementers = re.findall(r"^CPU implementer\s*:\s*(0x[0-9a-fA-F]+)", text, re.MULTILINE)
    parts = re.findall(r"^CPU part\s*:\s*(0x[0-9a-fA-F]+)", text, re.MULTILINE)
    if parts:
        if len(implementers) != len(parts):
            implementers = ["0x41"] * len(parts)
        counts = {}  # type: Dict[str, int]
        for impl, part in zip(implementers, parts):
            name = ARM_PARTS.get((int(impl, 16), int(part, 16)), "ARM part %s" % part)
            counts[name] = counts.get(name, 0) + 1
        return " + ".join("%dx %s" % (n, name) for name, n in counts.items())
    m = re.search(r"^Hardware\s*:\s*(.+)$", text, re.MULTILINE)
    return m.group(1).strip() if m else None


def parse_meminfo(text: Optional[str]) -> Dict[str, Optional[int]]:
    out = {"total": None, "available": None}  # type: Dict[str, Optional[int]]
    if not text:
        return out
    for key, name in (("MemTotal", "total"), ("MemAvailable", "available")):
        m = re.search(r"^%s:\s*(\d+)\s*kB" % key, text, re.MULTILINE)
        if m:
            out[name] = int(m.group(1)) // 1024
    return out


# --- probes -------------------------------------------------------------------


def board_model() -> Optional[str]:
    for path in ("/proc/device-tree/model", "/sys/firmware/devicetree/base/model"):
        text = read_text(path)
        if text:
            return text.replace("\x00", "").strip() or None
    vendor = (read_text("/sys/class/dmi/id/sys_vendor") or "").strip()
    product = (read_text("/sys/class/dmi/id/product_name") or "").strip()
    joined = " ".join(p for p in (vendor, product) if p and "To Be Filled" not in p)
    return joined or None


def l4t_release() -> Optional[str]:
    return parse_nv_tegra_release(read_text("/etc/nv_tegra_release"))


def jetpack_release(l4t: Optional[str]) -> Optional[str]:
    # The nvidia-jetpack meta package names the release exactly, when installed.
    out = run_command(["dpkg-query", "-W", "-f=${Version}", "nvidia-jetpack"])
    if out and out.strip():
        return out.strip().split("-")[0].split("+")[0]
    return jetpack_for_l4t(l4t)


def power_mode() -> Optional[Dict[str, Any]]:
    return parse_nvpmodel(run_command(["nvpmodel", "-q"]))


def cpu_governors() -> List[str]:
    found = []
    base = "/sys/devices/system/cpu"
    try:
        names = sorted(n for n in os.listdir(base) if re.match(r"cpu\d+$", n))
    except OSError:
        return found
    for name in names:
        gov = read_text(os.path.join(base, name, "cpufreq", "scaling_governor"))
        if gov and gov.strip() not in found:
            found.append(gov.strip())
    return found


def os_release() -> Optional[str]:
    text = read_text("/etc/os-release")
    if not text:
        return None
    m = re.search(r'^PRETTY_NAME="?([^"\n]+)"?', text, re.MULTILINE)
    return m.group(1) if m else None


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def probe_module(name: str) -> Tuple[Optional[str], Optional[str]]:
    """(version, problem) after importing a module; never raises."""
    try:
        module = __import__(name)
    except Exception as exc:  # ImportError, or OSError from a missing shared library
        return None, " ".join(("%s: %s" % (type(exc).__name__, exc)).split())
    version = getattr(module, "__version__", None)
    if name == "onnxruntime" and hasattr(module, "get_version_string"):
        version = module.get_version_string()
    return (str(version) if version is not None else "unknown"), None


def runtimes() -> Tuple[Dict[str, Any], Dict[str, str], List[str]]:
    """Versions of the Python packages the agent uses, import problems, ORT providers."""
    versions = {}  # type: Dict[str, Any]
    problems = {}  # type: Dict[str, str]
    providers = []  # type: List[str]
    for name, module in (("numpy", "numpy"), ("pillow", "PIL"), ("pycocotools", "pycocotools"), ("onnxruntime", "onnxruntime"), ("tensorrt", "tensorrt")):
        version, problem = probe_module(module)
        versions[name] = version
        if problem:
            problems[name] = problem
    if versions.get("pycocotools") == "unknown":
        versions["pycocotools"] = _dist_version("pycocotools") or "unknown"
    if versions.get("onnxruntime"):
        try:
            import onnxruntime

            providers = list(onnxruntime.get_available_providers())
        except Exception as exc:
            problems["onnxruntime"] = str(exc)
    return versions, problems, providers


def _dist_version(name: str) -> Optional[str]:
    try:
        from importlib import metadata  # Python 3.8+

        return metadata.version(name)
    except Exception:
        return None


def collect(probe_runtimes: bool = True) -> Dict[str, Any]:
    """Everything ``info`` reports, as one JSON-able dict."""
    from .cuda import gpu_devices, version_string

    l4t = l4t_release()
    mem = parse_meminfo(read_text("/proc/meminfo"))
    devices, driver, gpu_problem = gpu_devices()
    info = {
        "hostname": socket.gethostname(),
        "board": board_model(),
        "l4t": l4t,
        "jetpack": jetpack_release(l4t) if l4t else None,
        "is_jetson": bool(l4t),
        "os": {"name": os_release(), "kernel": platform.release(), "arch": platform.machine()},
        "python": platform.python_version(),
        "agent": __version__,
        "cpu": {"model": parse_cpuinfo(read_text("/proc/cpuinfo")) or platform.processor() or None, "cores": os.cpu_count(), "available": available_cpus()},
        "memory_mb": mem,
        "gpu": devices,
        "cuda": {"driver": version_string(driver), "problem": gpu_problem},
        "governor": cpu_governors(),
        "power_mode": power_mode(),
        "runtimes": {},
        "providers": [],
        "problems": {},
    }  # type: Dict[str, Any]
    if probe_runtimes:
        versions, problems, providers = runtimes()
        info["runtimes"] = versions
        info["problems"] = problems
        info["providers"] = providers
    return info
