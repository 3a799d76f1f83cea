"""Energy per inference from the board's power monitors, sampled during the timed loop.

Where the power comes from, first found wins:

1. ``ina3221-hwmon`` (Jetson Linux 34+, JetPack 5 and 6: Orin; also Xavier on
   JetPack 5): ``/sys/bus/i2c/drivers/ina3221/<bus>-<addr>/hwmon/hwmon<N>/``
   with ``in<K>_label`` (the rail's name), ``in<K>_input`` (bus voltage, mV)
   and ``curr<K>_input`` (current, mA), K = 1..3; power = mV x mA / 1000.
   Channels labelled ``NC`` (not connected, e.g. AGX Orin's 1-0041 channels 1
   and 3), disabled ones (``in<K>_enable`` = 0) and the "sum of shunt voltages"
   channel are left out.
2. ``ina3221-iio`` (Jetson Linux 32, JetPack 4: Nano, TX2, Xavier):
   ``/sys/bus/i2c/drivers/ina3221x/<bus>-<addr>/iio:device<N>/`` with
   ``rail_name_<K>`` and ``in_power<K>_input`` (mW; else ``in_voltage<K>_input``
   x ``in_current<K>_input``).
3. ``tegrastats`` (any JetPack): its lines at ``--interval`` ms, rails as
   ``NAME <now>mW/<avg>mW`` (JetPack 5/6) or ``NAME <now>/<avg>`` (JetPack 4);
   the instantaneous value is used.

Nothing found: the run's ``energy`` says so with a reason (``source`` null); it
is never reported as zero.

What is measured (the run's ``energy``)::

    source          "ina3221-hwmon" | "ina3221-iio" | "tegrastats" | null
    reason          null, or why there is no energy figure
    interval_ms     the sampling interval asked; measured_interval_ms: the mean achieved
    samples, seconds, inferences   of the timed loop
    idle_seconds    length of the idle baseline, measured before the warm-up
    rails           [{name, watts, idle_watts, mj_per_inference, mj_per_inference_above_idle}]
    total, gpu, cpu {rails [names], rule, watts, idle_watts, mj_per_inference,
                     mj_per_inference_above_idle}; gpu/cpu: null without such a rail
    note            null, or why the figure is weak (fewer than MIN_SAMPLES samples)

``watts``: time-weighted mean over the timed loop (trapezoids between
samples); ``mj_per_inference``: watts x loop seconds / inferences x 1000;
``..._above_idle``: the same with the idle baseline's watts subtracted, a
separate figure (it can be slightly negative from noise). ``total``: the
module's input rail where there is one (``VDD_IN``, ``POM_5V_IN``), else the
sum of the rails except those NVIDIA documents as part of another
(``VDDQ_VDD2_1V8AO`` is inside ``VIN_SYS_5V0`` on AGX Orin). ``gpu`` / ``cpu``:
the rails whose name has GPU / CPU; a shared rail (``VDD_CPU_GPU_CV``) is in
both and the block says ``shared``.

Python 3.8, stdlib only. ``EDGEKIT_POWER_ROOT`` points the sysfs search at
another root (a fake tree in tests); ``EDGEKIT_TEGRASTATS`` at another tegrastats.
"""
import glob
import math
import os
import re
import shutil
import subprocess
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

SYSFS_INTERVAL_S = 0.05
TEGRASTATS_INTERVAL_S = 0.1
IDLE_SECONDS = 1.0
# Fewer samples than this in the timed loop: the figure is reported with a warning.
MIN_SAMPLES = 10
INPUT_RAILS = ("VDD_IN", "POM_5V_IN", "5V_IN", "VIN")
# Rails NVIDIA documents as a part of another rail on the same monitor.
INCLUDED_IN = {"VDDQ_VDD2_1V8AO": "VIN_SYS_5V0"}
ENV_ROOT = "EDGEKIT_POWER_ROOT"
ENV_TEGRASTATS = "EDGEKIT_TEGRASTATS"
HWMON_GLOB = "sys/bus/i2c/drivers/ina3221/*/hwmon/hwmon*"
IIO_GLOB = "sys/bus/i2c/drivers/ina3221x/*/iio:device*"


def _read(path: str) -> Optional[str]:
    try:
        with open(path, "r") as f:
            return f.read().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _read_number(path: str) -> float:
    """A sysfs number (``32760 ma`` style suffixes allowed); OSError/ValueError when unreadable."""
    with open(path, "r") as f:
        text = f.read().strip()
    return float(text.split()[0])


class Rail(object):
    """One power rail: a name and a way to read its milliwatts now."""

    def __init__(self, name: str, read_mw: Callable[[], float], where: str) -> None:
        self.name = name
        self.read_mw = read_mw
        self.where = where

    def __repr__(self) -> str:
        return "Rail(%r, %r)" % (self.name, self.where)


def _hwmon_rails(root: str) -> List[Rail]:
    rails = []
    for folder in sorted(glob.glob(os.path.join(root, HWMON_GLOB))):
        for k in (1, 2, 3):
            label = _read(os.path.join(folder, "in%d_label" % k))
            volt, curr = os.path.join(folder, "in%d_input" % k), os.path.join(folder, "curr%d_input" % k)
            if not label or label.upper().startswith("NC") or "sum of" in label.lower():
                continue
            if _read(os.path.join(folder, "in%d_enable" % k)) == "0" or not (os.path.isfile(volt) and os.path.isfile(curr)):
                continue
            rails.append(Rail(label, (lambda v=volt, c=curr: _read_number(v) * _read_number(c) / 1000.0), folder))
    return rails


def _iio_rails(root: str) -> List[Rail]:
    rails = []
    for folder in sorted(glob.glob(os.path.join(root, IIO_GLOB))):
        for name_file in sorted(glob.glob(os.path.join(folder, "rail_name_*"))):
            k = name_file.rsplit("_", 1)[-1]
            label = _read(name_file)
            if not label or not k.isdigit() or label.upper().startswith("NC"):
                continue
            power = os.path.join(folder, "in_power%s_input" % k)
            volt, curr = os.path.join(folder, "in_voltage%s_input" % k), os.path.join(folder, "in_current%s_input" % k)
            if os.path.isfile(power):
                rails.append(Rail(label, (lambda p=power: _read_number(p)), folder))
            elif os.path.isfile(volt) and os.path.isfile(curr):
                rails.append(Rail(label, (lambda v=volt, c=curr: _read_number(v) * _read_number(c) / 1000.0), folder))
    return rails


def find_sysfs_rails(root: Optional[str] = None) -> Tuple[Optional[str], List[Rail]]:
    """(source, rails) from the INA3221 sysfs trees under ``root`` (default ``/`` or $EDGEKIT_POWER_ROOT)."""
    root = root if root is not None else os.environ.get(ENV_ROOT, "/")
    for source, find in (("ina3221-hwmon", _hwmon_rails), ("ina3221-iio", _iio_rails)):
        rails = []
        for rail in find(root):
            try:
                rail.read_mw()
            except (OSError, ValueError):
                continue  # a channel the kernel lists but cannot read: left out
            rails.append(rail)
        if rails:
            return source, _unique(rails)
    return None, []


_I2C_DEVICE = re.compile(r"^\d+-[0-9a-fA-F]{4}$")


def _unique(rails: List[Rail]) -> List[Rail]:
    """Two monitors may reuse a label: the second becomes NAME@<bus-address> (e.g. VDD_IN@1-0041)."""
    seen = set()  # type: set
    for rail in rails:
        if rail.name in seen:
            device = [p for p in rail.where.replace("\\", "/").split("/") if _I2C_DEVICE.match(p)]
            rail.name = "%s@%s" % (rail.name, device[-1] if device else len(seen))
        seen.add(rail.name)
    return rails


# tegrastats: "VDD_GPU_SOC 2766mW/2766mW" (JetPack 5/6) or "POM_5V_GPU 0/0", "GPU 0/0" (JetPack 4).
_TEGRA_RAIL = re.compile(r"(?:(?<=\s)|^)([A-Z][A-Z0-9_]*)\s+(\d+)(mW)?/(\d+)(mW)?(?=\s|$)")
_TEGRA_NOT_RAILS = ("RAM", "SWAP", "IRAM", "LFB", "EMC", "MTS", "NVENC", "NVDEC", "NVJPG", "APE", "VIC")


def parse_tegrastats_line(line: str) -> Dict[str, float]:
    """{rail: instantaneous mW} from one tegrastats line (empty when it has none)."""
    rails = {}  # type: Dict[str, float]
    for m in _TEGRA_RAIL.finditer(line):
        name, now = m.group(1), m.group(2)
        if name.upper() in _TEGRA_NOT_RAILS:
            continue
        rails[name] = float(now)
    return rails


def tegrastats_path() -> Optional[str]:
    override = os.environ.get(ENV_TEGRASTATS)
    if override:
        return override if os.access(override, os.X_OK) else None
    return shutil.which("tegrastats") or (("/usr/bin/tegrastats") if os.access("/usr/bin/tegrastats", os.X_OK) else None)


# --- sampling --------------------------------------------------------------------


class Samples(object):
    def __init__(self) -> None:
        self.times = []  # type: List[float]
        self.values = []  # type: List[Dict[str, float]]
        self.started = None  # type: Optional[float]
        self.stopped = None  # type: Optional[float]
        self.errors = 0

    def add(self, t: float, values: Dict[str, float]) -> None:
        self.times.append(t)
        self.values.append(values)

    @property
    def seconds(self) -> float:
        if self.started is None or self.stopped is None:
            return 0.0
        return max(self.stopped - self.started, 0.0)


def mean_watts(times: Sequence[float], values: Sequence[Dict[str, float]], rail: str) -> Optional[float]:
    """Time-weighted mean of one rail in watts (trapezoids between samples; one sample: its value)."""
    points = [(t, v[rail]) for t, v in zip(times, values) if rail in v]
    if not points:
        return None
    if len(points) == 1 or points[-1][0] <= points[0][0]:
        return math.fsum(p for _t, p in points) / len(points) / 1000.0
    area = math.fsum((t1 - t0) * (p0 + p1) / 2.0 for (t0, p0), (t1, p1) in zip(points, points[1:]))
    return area / (points[-1][0] - points[0][0]) / 1000.0


class _SysfsSampler(object):
    def __init__(self, rails: List[Rail], interval: float) -> None:
        self.rails = rails
        self.interval = interval
        self._stop = threading.Event()
        self._thread = None  # type: Optional[threading.Thread]
        self.samples = Samples()

    def _loop(self) -> None:
        clock = time.monotonic
        next_t = clock()
        while True:
            values = {}
            for rail in self.rails:
                try:
                    values[rail.name] = rail.read_mw()
                except (OSError, ValueError):
                    self.samples.errors += 1
            self.samples.add(clock(), values)
            next_t += self.interval
            delay = next_t - clock()
            if delay < 0:  # reading took longer than the interval: go on from now
                next_t, delay = clock(), 0.0
            if self._stop.wait(delay):
                return

    def start(self) -> None:
        self.samples = Samples()
        self._stop.clear()
        self.samples.started = time.monotonic()
        self._thread = threading.Thread(target=self._loop, name="edgekit-power", daemon=True)
        self._thread.start()

    def stop(self) -> Samples:
        self.samples.stopped = time.monotonic()
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
        # One last reading at the end, so the loop's tail is covered.
        values = {}
        for rail in self.rails:
            try:
                values[rail.name] = rail.read_mw()
            except (OSError, ValueError):
                self.samples.errors += 1
        self.samples.add(time.monotonic(), values)
        return self.samples


class _TegrastatsSampler(object):
    def __init__(self, path: str, interval: float) -> None:
        self.path = path
        self.interval = interval
        self.samples = Samples()
        self._proc = None  # type: Optional[subprocess.Popen]
        self._thread = None  # type: Optional[threading.Thread]

    def _read(self, proc: "subprocess.Popen") -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            values = parse_tegrastats_line(line)
            if values:
                self.samples.add(time.monotonic(), values)

    def start(self) -> None:
        self.samples = Samples()
        self.samples.started = time.monotonic()
        self._proc = subprocess.Popen(
            [self.path, "--interval", str(max(int(round(self.interval * 1000)), 1))],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, universal_newlines=True,
        )
        self._thread = threading.Thread(target=self._read, args=(self._proc,), name="edgekit-tegrastats", daemon=True)
        self._thread.start()

    def stop(self) -> Samples:
        self.samples.stopped = time.monotonic()
        proc = self._proc
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(3.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(3.0)
        if self._thread is not None:
            self._thread.join(3.0)
        # Only lines printed while the loop ran count (tegrastats prints its first after one interval).
        return self.samples


def probe_tegrastats(path: str, interval: float = TEGRASTATS_INTERVAL_S, wait: float = 3.0) -> List[str]:
    """The rail names tegrastats prints here (one line read), [] when it prints none in ``wait`` seconds."""
    sampler = _TegrastatsSampler(path, interval)
    try:
        sampler.start()
    except OSError:
        return []
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline and not sampler.samples.values:
        time.sleep(0.02)
    samples = sampler.stop()
    return sorted(samples.values[0]) if samples.values else []


# --- the meter the runner uses ---------------------------------------------------


def _rule_total(names: Sequence[str]) -> Tuple[List[str], str]:
    for name in names:
        if name.upper() in INPUT_RAILS:
            return [name], "%s (the module's input rail)" % name
    parts = [n for n in names if INCLUDED_IN.get(n.upper()) not in names]
    left = [n for n in names if n not in parts]
    rule = "sum of %s (no input rail)" % ", ".join(parts)
    if left:
        rule += "; %s left out, part of %s" % (", ".join(left), ", ".join(INCLUDED_IN[n.upper()] for n in left))
    return parts, rule


def _group(names: Sequence[str], word: str) -> Optional[Tuple[List[str], str]]:
    picked = [n for n in names if word in n.upper()]
    if not picked:
        return None
    shared = [n for n in picked if ("GPU" in n.upper()) and ("CPU" in n.upper())]
    rule = "sum of %s" % ", ".join(picked) if len(picked) > 1 else picked[0]
    if shared:
        rule += " (shared with %s: %s)" % ("the GPU" if word == "CPU" else "the CPU", ", ".join(shared))
    return picked, rule


class EnergyMeter(object):
    """Idle baseline, then samples during the timed loop; :meth:`result` is the run's ``energy``.

    ``source`` None: no power monitor here; every method is a no-op and
    :meth:`result` gives the reason.
    """

    def __init__(self, source: Optional[str], sampler: Any = None, reason: Optional[str] = None, interval: float = SYSFS_INTERVAL_S, off: bool = False) -> None:
        self.off = off
        self.source = source
        self.sampler = sampler
        self.reason = reason
        self.interval = interval
        self.idle = None  # type: Optional[Samples]
        self.loop = None  # type: Optional[Samples]
        self.idle_seconds = 0.0

    @property
    def available(self) -> bool:
        return self.source is not None

    def measure_idle(self, seconds: float = IDLE_SECONDS) -> None:
        if not self.available or seconds <= 0:
            return
        self.sampler.start()
        time.sleep(seconds)
        self.idle = self.sampler.stop()
        self.idle_seconds = self.idle.seconds

    def start(self) -> None:
        if self.available:
            self.sampler.start()

    def stop(self) -> None:
        if self.available:
            self.loop = self.sampler.stop()

    def result(self, inferences: int) -> Optional[Dict[str, Any]]:
        """The run's ``energy``: None when switched off (``--energy off``), a reason when there is no monitor."""
        if self.off:
            return None
        if not self.available:
            return {"source": None, "reason": self.reason or "no power monitor found"}
        loop = self.loop
        if loop is None or not loop.values:
            return {"source": None, "reason": "%s gave no reading during the timed loop" % self.source}
        return summarize_energy(self.source, loop, self.idle, inferences, self.interval, self.idle_seconds)


def _block(names: List[str], rule: str, watts: Dict[str, Optional[float]], idle: Dict[str, Optional[float]], per: float) -> Dict[str, Any]:
    w = [watts.get(n) for n in names]
    total = math.fsum(x for x in w if x is not None) if all(x is not None for x in w) else None
    i = [idle.get(n) for n in names]
    idle_total = math.fsum(x for x in i if x is not None) if i and all(x is not None for x in i) else None
    return {
        "rails": list(names),
        "rule": rule,
        "watts": _r(total),
        "idle_watts": _r(idle_total),
        "mj_per_inference": _r(total * per * 1000.0 if total is not None else None),
        "mj_per_inference_above_idle": _r((total - idle_total) * per * 1000.0 if total is not None and idle_total is not None else None),
    }


def _r(value: Optional[float], digits: int = 4) -> Optional[float]:
    return round(value, digits) if value is not None else None


def summarize_energy(source: str, loop: Samples, idle: Optional[Samples], inferences: int, interval: float, idle_seconds: float = 0.0) -> Dict[str, Any]:
    """The run's ``energy`` from the loop's samples and the idle baseline's (module docstring)."""
    names = list(dict.fromkeys(n for v in loop.values for n in v))
    watts = {n: mean_watts(loop.times, loop.values, n) for n in names}
    idle_watts = {n: (mean_watts(idle.times, idle.values, n) if idle is not None else None) for n in names}
    seconds = loop.seconds or ((loop.times[-1] - loop.times[0]) if len(loop.times) > 1 else 0.0)
    per = seconds / inferences if inferences > 0 else 0.0
    rails = []
    for n in names:
        rails.append({
            "name": n,
            "watts": _r(watts[n]),
            "idle_watts": _r(idle_watts[n]),
            "mj_per_inference": _r(watts[n] * per * 1000.0 if watts[n] is not None else None),
            "mj_per_inference_above_idle": _r((watts[n] - idle_watts[n]) * per * 1000.0 if watts[n] is not None and idle_watts[n] is not None else None),
        })
    total_names, total_rule = _rule_total(names)
    gaps = [b - a for a, b in zip(loop.times, loop.times[1:])]
    out = {
        "source": source,
        "reason": None,
        "interval_ms": round(interval * 1000.0, 3),
        "measured_interval_ms": _r(math.fsum(gaps) / len(gaps) * 1000.0 if gaps else None, 3),
        "samples": len(loop.times),
        "read_errors": loop.errors,
        "seconds": _r(seconds),
        "inferences": inferences,
        "idle_seconds": _r(idle_seconds),
        "rails": rails,
        "total": _block(total_names, total_rule, watts, idle_watts, per),
        "gpu": None,
        "cpu": None,
        "note": None,
    }
    if len(loop.times) < MIN_SAMPLES:
        out["note"] = "only %d power samples in the timed loop (%.2f s): run longer (--min-seconds) for a steadier figure" % (len(loop.times), seconds)
    for key, word in (("gpu", "GPU"), ("cpu", "CPU")):
        group = _group(names, word)
        if group is not None:
            out[key] = _block(group[0], group[1], watts, idle_watts, per)
            out[key]["shared"] = any("GPU" in n.upper() and "CPU" in n.upper() for n in group[0])
    return out


def open_meter(root: Optional[str] = None) -> EnergyMeter:
    """The board's power monitor: sysfs first, tegrastats as fallback; one without a source says why."""
    source, rails = find_sysfs_rails(root)
    if source is not None:
        return EnergyMeter(source, _SysfsSampler(rails, SYSFS_INTERVAL_S), interval=SYSFS_INTERVAL_S)
    path = tegrastats_path()
    if path is not None:
        if probe_tegrastats(path):
            return EnergyMeter("tegrastats", _TegrastatsSampler(path, TEGRASTATS_INTERVAL_S), interval=TEGRASTATS_INTERVAL_S)
        return EnergyMeter(None, reason="no INA3221 power monitor in sysfs, and %s prints no power rails" % path)
    return EnergyMeter(None, reason="no power monitor: no INA3221 under /sys/bus/i2c/drivers/ina3221*/ and no tegrastats (not a Jetson?)")


_METERS = {}  # type: Dict[Tuple[str, str], EnergyMeter]


def meter_for(settings: Dict[str, Any]) -> EnergyMeter:
    """The meter of this agent run (found once, reused by every variant); ``settings["energy"]`` "off": a no-op one."""
    if settings.get("energy", "auto") == "off":
        return EnergyMeter(None, off=True)
    key = (os.environ.get(ENV_ROOT, "/"), os.environ.get(ENV_TEGRASTATS, ""))
    if key not in _METERS:
        _METERS[key] = open_meter()
    return _METERS[key]
