"""The conditions a measurement ran under: clocks, temperatures, governor,
power mode, throttling, and peak memory.

Latency numbers mean little without them: a Jetson in a 15 W mode or a CPU
that hit its thermal limit half-way through gives different numbers from the
same model. A snapshot is taken when timing starts (after warm-up, so clocks
have ramped up) and another when it ends; :func:`compare` turns the two into
the run's ``environment`` and says whether the board throttled. Stdlib only.
"""
import os
import re
from typing import Any, Dict, List, Optional, Tuple

from .sysinfo import cpu_governors, power_mode, read_text

CPU_BASE = "/sys/devices/system/cpu"
THERMAL_BASE = "/sys/class/thermal"
DEVFREQ_BASE = "/sys/class/devfreq"
# devfreq nodes of Jetson GPUs: Nano (gm20b/57000000.gpu), TX2 (gp10b),
# Xavier (gv11b), Orin (ga10b), Thor (gb10b).
GPU_DEVFREQ = re.compile(r"(gpu|gm20b|gp10b|gv11b|ga10b|gb10b)")
# A clock that fell by more than this between start and end means throttling.
CLOCK_DROP = 0.10


def _int_file(path: str) -> Optional[int]:
    text = read_text(path)
    if text is None:
        return None
    try:
        return int(text.strip())
    except ValueError:
        return None


def _cpu_dirs() -> List[str]:
    try:
        names = sorted((n for n in os.listdir(CPU_BASE) if re.match(r"cpu\d+$", n)), key=lambda n: int(n[3:]))
    except OSError:
        return []
    return [os.path.join(CPU_BASE, n) for n in names]


def cpu_clocks_mhz() -> List[float]:
    out = []
    for d in _cpu_dirs():
        khz = _int_file(os.path.join(d, "cpufreq", "scaling_cur_freq"))
        if khz:
            out.append(khz / 1000.0)
    return out


def gpu_clock_mhz() -> Optional[float]:
    try:
        names = sorted(os.listdir(DEVFREQ_BASE))
    except OSError:
        return None
    for name in names:
        if GPU_DEVFREQ.search(name):
            hz = _int_file(os.path.join(DEVFREQ_BASE, name, "cur_freq"))
            if hz:
                return hz / 1e6
    return None


def _thermal_zones() -> List[Tuple[str, str]]:
    """(zone folder, zone type) of every thermal zone; none where sysfs has no thermal class."""
    try:
        zones = sorted(n for n in os.listdir(THERMAL_BASE) if n.startswith("thermal_zone"))
    except OSError:
        return []
    return [(zone, (read_text(os.path.join(THERMAL_BASE, zone, "type")) or zone).strip()) for zone in zones]


def temperatures_c() -> Dict[str, float]:
    temps = {}  # type: Dict[str, float]
    for zone, kind in _thermal_zones():
        milli = _int_file(os.path.join(THERMAL_BASE, zone, "temp"))
        # Disabled Jetson zones read -256000 or similar; keep plausible values only.
        if milli is not None and -40000 < milli < 150000:
            name = kind if kind not in temps else "%s.%s" % (kind, zone)
            temps[name] = milli / 1000.0
    return temps


def passive_trips_c() -> Dict[str, float]:
    """Lowest passive/hot trip point per thermal zone: where the kernel starts to throttle."""
    trips = {}  # type: Dict[str, float]
    for zone, kind in _thermal_zones():
        lowest = None
        for i in range(16):
            trip_type = read_text(os.path.join(THERMAL_BASE, zone, "trip_point_%d_type" % i))
            if trip_type is None:
                break
            if trip_type.strip() in ("passive", "hot"):
                milli = _int_file(os.path.join(THERMAL_BASE, zone, "trip_point_%d_temp" % i))
                if milli and milli > 0 and (lowest is None or milli < lowest):
                    lowest = milli
        if lowest is not None:
            trips[kind] = lowest / 1000.0
    return trips


def throttle_count() -> Optional[int]:
    """x86 kernels count thermal throttle events per core; the sum only grows."""
    total = None
    for d in _cpu_dirs():
        for name in ("core_throttle_count", "package_throttle_count"):
            n = _int_file(os.path.join(d, "thermal_throttle", name))
            if n is not None:
                total = (total or 0) + n
    return total


def snapshot(with_power_mode: bool = False) -> Dict[str, Any]:
    cpu = cpu_clocks_mhz()
    snap = {
        "cpu_mhz": round(max(cpu), 1) if cpu else None,
        "cpu_mhz_mean": round(sum(cpu) / len(cpu), 1) if cpu else None,
        "gpu_mhz": gpu_clock_mhz(),
        "temperature_c": temperatures_c(),
        "throttle_count": throttle_count(),
    }  # type: Dict[str, Any]
    if with_power_mode:
        snap["governor"] = cpu_governors()
        snap["power_mode"] = power_mode()
    return snap


def compare(start: Dict[str, Any], end: Dict[str, Any], trips: Optional[Dict[str, float]] = None) -> Dict[str, Any]:
    """The run's ``environment``: start/end clocks and temperatures, and whether it throttled."""
    reasons = []
    for key, label in (("cpu_mhz", "CPU clock"), ("gpu_mhz", "GPU clock")):
        a, b = start.get(key), end.get(key)
        if a and b and b < a * (1.0 - CLOCK_DROP):
            reasons.append("%s fell from %.0f to %.0f MHz" % (label, a, b))
    a, b = start.get("throttle_count"), end.get("throttle_count")
    if a is not None and b is not None and b > a:
        reasons.append("the kernel counted %d thermal throttle events" % (b - a))
    t_start = start.get("temperature_c") or {}
    t_end = end.get("temperature_c") or {}
    for zone, limit in sorted((trips or {}).items()):
        if t_end.get(zone) is not None and t_end[zone] >= limit:
            reasons.append("%s reached %.1f C (throttles at %.1f C)" % (zone, t_end[zone], limit))
    hottest_start = max(t_start.values()) if t_start else None
    hottest_end = max(t_end.values()) if t_end else None
    if reasons and hottest_start is not None and hottest_end is not None:
        reasons.append("temperature rose from %.1f to %.1f C" % (hottest_start, hottest_end))
    return {
        "governor": start.get("governor"),
        "power_mode": start.get("power_mode"),
        "clocks": {
            "start": {"cpu_mhz": start.get("cpu_mhz"), "gpu_mhz": start.get("gpu_mhz")},
            "end": {"cpu_mhz": end.get("cpu_mhz"), "gpu_mhz": end.get("gpu_mhz")},
        },
        "temperature_c": {"start": hottest_start, "end": hottest_end, "zones_end": t_end or None},
        "throttled": bool(reasons),
        "throttle_reasons": reasons,
    }


# --- memory -------------------------------------------------------------------


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) so each run reports its own peak."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except (OSError, IOError):
        return False


def peak_rss_mb() -> Optional[float]:
    text = read_text("/proc/self/status")
    if text:
        m = re.search(r"^VmHWM:\s*(\d+)\s*kB", text, re.MULTILINE)
        if m:
            return round(int(m.group(1)) / 1024.0, 1)
    try:
        import resource

        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)
    except (ImportError, OSError):
        return None
