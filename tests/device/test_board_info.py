"""`info`, `doctor` and the measurement environment. Parsers are fed text
captured from real boards (a Jetson is not here); the probes run for real."""
import io
import json
import os
import pty
import subprocess
import sys

from edgekit.device import environment, sysinfo
from edgekit.device.doctor import diagnose, install_lines
from edgekit.contract.agent_events import Progress
from edgekit.device.text_table import render_doctor, render_info, render_result

ORIN_TEGRA_RELEASE = "# R35 (release), REVISION: 3.1, GCID: 32827747, BOARD: t186ref, EABI: aarch64, DATE: Sun Mar 19 15:19:21 UTC 2023\n"
JP6_TEGRA_RELEASE = "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, DATE: Wed Jan  8 01:49:37 UTC 2025\n"
NVPMODEL = "NVPM WARN: fan mode is not set!\nNV Power Mode: MAXN\n0\n"
ORIN_CPUINFO = "".join(
    "processor\t: %d\nBogoMIPS\t: 62.50\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x1\nCPU part\t: 0xd42\nCPU revision\t: 1\n\n" % i for i in range(6)
)
XAVIER_CPUINFO = "processor\t: 0\nCPU implementer\t: 0x4e\nCPU part\t: 0x004\n\nprocessor\t: 1\nCPU implementer\t: 0x4e\nCPU part\t: 0x004\n\n"
X86_CPUINFO = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Core(TM) i7-8700 CPU @ 3.20GHz\n"


def test_l4t_and_jetpack_from_real_release_files():
    assert sysinfo.parse_nv_tegra_release(ORIN_TEGRA_RELEASE) == "35.3.1"
    assert sysinfo.jetpack_for_l4t("35.3.1") == "5.1.1"
    assert sysinfo.parse_nv_tegra_release(JP6_TEGRA_RELEASE) == "36.4.3"
    assert sysinfo.jetpack_for_l4t("36.4.3") == "6.2"
    assert sysinfo.jetpack_for_l4t("35.9.9") == "5.x"
    assert sysinfo.parse_nv_tegra_release("garbage") is None and sysinfo.parse_nv_tegra_release(None) is None


def test_power_mode_cpu_and_memory_parsers():
    assert sysinfo.parse_nvpmodel(NVPMODEL) == {"name": "MAXN", "id": 0}
    assert sysinfo.parse_nvpmodel("NV Power Mode: 15W\n2\n") == {"name": "15W", "id": 2}
    assert sysinfo.parse_nvpmodel("") is None
    assert sysinfo.parse_cpuinfo(ORIN_CPUINFO) == "6x Cortex-A78AE"
    assert sysinfo.parse_cpuinfo(XAVIER_CPUINFO) == "2x Carmel"
    assert sysinfo.parse_cpuinfo(X86_CPUINFO) == "Intel(R) Core(TM) i7-8700 CPU @ 3.20GHz"
    assert sysinfo.parse_meminfo("MemTotal:       31952640 kB\nMemFree: 1 kB\nMemAvailable:   28000000 kB\n") == {"total": 31203, "available": 27343}


def test_info_describes_this_machine():
    out = subprocess.run([sys.executable, "-m", "edgekit.device", "info"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["hostname"] and info["python"] == "%d.%d.%d" % sys.version_info[:3]
    assert info["cpu"]["cores"] == os.cpu_count() and info["memory_mb"]["total"] > 100
    assert info["runtimes"]["onnxruntime"] and info["runtimes"]["numpy"]
    assert "CPUExecutionProvider" in info["providers"]
    assert isinstance(info["gpu"], list) and "jetpack" in info and "power_mode" in info
    text = render_info(info)
    assert "onnxruntime" in text and info["hostname"] in text


def test_doctor_is_ready_here_and_names_install_lines(scored_bundle):
    report = diagnose(scored_bundle)
    assert report["ok"] is True, report
    names = [c["name"] for c in report["checks"]]
    assert names[:2] == ["bundle files", "python"] and "pycocotools" in names and "onnxruntime" in names
    assert "ready" in render_doctor(report)
    jetson = install_lines({"is_jetson": True, "jetpack": "5.1.1"})
    assert "Jetson Zoo" in jetson["onnxruntime"] and "JetPack 5.1.1" in jetson["onnxruntime"]
    assert "python3-libnvinfer" in jetson["tensorrt"]


def test_doctor_for_a_tensorrt_bundle_requires_tensorrt(scored_bundle, tmp_path, tools):
    def to_jetson(m):
        m["profile"]["runtime"] = "tensorrt"

    bundle = tools.rewrite_bundle(scored_bundle, str(tmp_path / "jetsonish"), edit_manifest=to_jetson)
    report = diagnose(bundle)
    checks = {c["name"]: c for c in report["checks"]}
    assert report["ok"] is False
    assert checks["tensorrt"]["required"] and not checks["tensorrt"]["ok"] and checks["tensorrt"]["fix"]
    assert checks["gpu"]["required"] and not checks["gpu"]["ok"]


def test_throttling_is_detected_from_clocks_counters_and_trip_points():
    start = {"cpu_mhz": 2000.0, "gpu_mhz": 1300.0, "temperature_c": {"cpu": 50.0}, "throttle_count": 4, "governor": ["performance"], "power_mode": {"name": "MAXN", "id": 0}}
    steady = dict(start, cpu_mhz=1950.0, temperature_c={"cpu": 55.0})
    env = environment.compare(start, steady, {"cpu": 95.0})
    assert env["throttled"] is False and env["governor"] == ["performance"] and env["power_mode"]["name"] == "MAXN"
    assert env["temperature_c"]["start"] == 50.0 and env["temperature_c"]["end"] == 55.0
    hot = dict(start, gpu_mhz=900.0, temperature_c={"cpu": 96.0}, throttle_count=9)
    env = environment.compare(start, hot, {"cpu": 95.0})
    assert env["throttled"] is True
    reasons = " | ".join(env["throttle_reasons"])
    assert "GPU clock fell from 1300 to 900 MHz" in reasons and "5 thermal throttle events" in reasons
    assert "cpu reached 96.0 C (throttles at 95.0 C)" in reasons and "temperature rose from 50.0 to 96.0 C" in reasons


def test_peak_memory_is_per_run():
    assert environment.peak_rss_mb() > 10
    if not environment.reset_peak_rss():
        return  # a kernel without clear_refs: the process-wide peak is reported instead
    before = environment.peak_rss_mb()
    blob = bytearray(200 * 1024 * 1024)  # touch 200 MB
    for i in range(0, len(blob), 4096):
        blob[i] = 1
    grown = environment.peak_rss_mb()
    del blob
    environment.reset_peak_rss()
    assert grown - before > 150
    assert environment.peak_rss_mb() < grown - 150


def test_progress_modes():
    stream = io.StringIO()
    p = Progress("json", stream=stream, min_interval=10)
    p.event("start", command="run", bundle="b", variants=["fp32"])
    for i in range(1, 6):
        p.progress("fp32", "bench", i, 5)
    lines = [json.loads(ln) for ln in stream.getvalue().splitlines()]
    assert [ln["event"] for ln in lines] == ["start", "progress", "progress"]  # first, then the final step
    assert lines[-1]["done"] == 5 and lines[-1]["total"] == 5
    text = io.StringIO()
    p = Progress("text", stream=text)
    p.event("run", variant="fp32", status="ok", p50_ms=1.5, map=0.5)
    assert "[fp32] ok: p50 1.50 ms, mAP 0.5000" in text.getvalue()
    silent = io.StringIO()
    Progress("none", stream=silent).event("start")
    assert silent.getvalue() == ""


def test_a_terminal_gets_a_table_not_json(scored_run):
    text = render_result(scored_run.result)
    assert "variant" in text and "fp32" in text and "int8" in text and "mAP" in text and text.rstrip().endswith("ok")
    # the real thing: stdout is a pseudo-terminal
    master, slave = pty.openpty()
    proc = subprocess.run([sys.executable, "-m", "edgekit.device", "info"], stdout=slave, stderr=subprocess.PIPE, timeout=60)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    shown = b"".join(chunks).decode()
    assert proc.returncode == 0
    assert not shown.lstrip().startswith("{") and "hostname" in shown and "onnxruntime" in shown
