"""Energy per inference: the power-rail readers on fake sysfs trees laid out as on Jetson boards,
tegrastats lines as boards print them, and the agent on this machine (no monitors: absent, not zero)."""
import json
import os
import stat
import sys
import time

import pytest

from edgekit.device import energy
from edgekit.device.energy import EnergyMeter, Samples, find_sysfs_rails, mean_watts, open_meter, parse_tegrastats_line, summarize_energy


def _write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text + "\n")


def _hwmon(root, device, hwmon, channels, with_sum=False):
    """An ina3221 hwmon folder: channels [(label, mV, mA)] as in{K}_label / in{K}_input / curr{K}_input."""
    folder = os.path.join(str(root), "sys/bus/i2c/drivers/ina3221", device, "hwmon", hwmon)
    _write(os.path.join(folder, "name"), "ina3221")
    for k, (label, mv, ma) in enumerate(channels, 1):
        _write(os.path.join(folder, "in%d_label" % k), label)
        _write(os.path.join(folder, "in%d_input" % k), str(mv))
        _write(os.path.join(folder, "curr%d_input" % k), str(ma))
        _write(os.path.join(folder, "in%d_enable" % k), "1")
        _write(os.path.join(folder, "curr%d_crit" % k), "32760")
        _write(os.path.join(folder, "in%d_input" % (k + 3)), "1240")  # shunt voltage (uV): not a rail
    if with_sum:
        _write(os.path.join(folder, "in7_label"), "sum of shunt voltages")
        _write(os.path.join(folder, "in7_input"), "3720")
        _write(os.path.join(folder, "curr4_input"), "2400")
    return folder


def orin_agx_jp5(root):
    """AGX Orin, JetPack 5 (L4T 35): two monitors; 1-0041 has NC channels 1 and 3."""
    _hwmon(root, "1-0040", "hwmon3", [("VDD_GPU_SOC", 5000, 1000), ("VDD_CPU_CV", 5000, 200), ("VIN_SYS_5V0", 5000, 700)])
    _hwmon(root, "1-0041", "hwmon4", [("NC", 0, 0), ("VDDQ_VDD2_1V8AO", 5000, 60), ("NC", 0, 0)])


def orin_nano_jp6(root):
    """Orin Nano / NX, JetPack 6 (L4T 36): one monitor with VDD_IN and the sum-of-shunts channel."""
    _hwmon(root, "1-0040", "hwmon1", [("VDD_IN", 5000, 1000), ("VDD_CPU_GPU_CV", 5000, 120), ("VDD_SOC", 5000, 280)], with_sum=True)


def xavier_jp4(root):
    """AGX Xavier, JetPack 4 (L4T 32): the ina3221x iio driver, rail_name_K and in_power K_input (mW)."""
    for device, iio, rails in (("1-0040", "iio:device0", [("GPU", 2000), ("CPU", 1000), ("SOC", 1500)]),
                               ("1-0041", "iio:device1", [("CV", 0), ("VDDRQ", 300), ("SYS5V", 1200)])):
        folder = os.path.join(str(root), "sys/bus/i2c/drivers/ina3221x", device, iio)
        for k, (name, mw) in enumerate(rails):
            _write(os.path.join(folder, "rail_name_%d" % k), name)
            _write(os.path.join(folder, "in_power%d_input" % k), str(mw))
            _write(os.path.join(folder, "in_current%d_input" % k), str(mw // 5))
            _write(os.path.join(folder, "in_voltage%d_input" % k), "5000")
            _write(os.path.join(folder, "crit_current_limit_%d" % k), "32760 ma")


def _read_all(rails):
    return {r.name: r.read_mw() for r in rails}


def test_orin_jp5_hwmon_rails_skip_nc_and_compute_mv_times_ma(tmp_path):
    orin_agx_jp5(tmp_path)
    source, rails = find_sysfs_rails(str(tmp_path))
    assert source == "ina3221-hwmon"
    assert _read_all(rails) == {"VDD_GPU_SOC": 5000.0, "VDD_CPU_CV": 1000.0, "VIN_SYS_5V0": 3500.0, "VDDQ_VDD2_1V8AO": 300.0}


def test_orin_jp6_hwmon_rails_leave_out_the_sum_channel(tmp_path):
    orin_nano_jp6(tmp_path)
    source, rails = find_sysfs_rails(str(tmp_path))
    assert source == "ina3221-hwmon" and _read_all(rails) == {"VDD_IN": 5000.0, "VDD_CPU_GPU_CV": 600.0, "VDD_SOC": 1400.0}


def test_xavier_iio_rails_read_milliwatts(tmp_path):
    xavier_jp4(tmp_path)
    source, rails = find_sysfs_rails(str(tmp_path))
    assert source == "ina3221-iio"
    assert _read_all(rails) == {"GPU": 2000.0, "CPU": 1000.0, "SOC": 1500.0, "CV": 0.0, "VDDRQ": 300.0, "SYS5V": 1200.0}


def test_disabled_channel_and_duplicate_labels(tmp_path):
    a = _hwmon(tmp_path, "1-0040", "hwmon1", [("VDD_IN", 5000, 100), ("VDD_SOC", 5000, 100)])
    _hwmon(tmp_path, "1-0041", "hwmon2", [("VDD_IN", 5000, 200)])
    _write(os.path.join(a, "in2_enable"), "0")
    _source, rails = find_sysfs_rails(str(tmp_path))
    assert _read_all(rails) == {"VDD_IN": 500.0, "VDD_IN@1-0041": 1000.0}


def test_no_monitor_here_is_absent_with_a_reason(tmp_path, monkeypatch):
    monkeypatch.setenv(energy.ENV_TEGRASTATS, str(tmp_path / "no-tegrastats"))
    meter = open_meter(str(tmp_path))
    assert not meter.available
    meter.measure_idle(0.2)
    meter.start()
    meter.stop()
    out = meter.result(100)
    assert out["source"] is None and "no power monitor" in out["reason"]
    assert "watts" not in out and "total" not in out  # absent, not zero
    assert EnergyMeter(None, off=True).result(100) is None


# Lines recorded from tegrastats (JetPack 5 on AGX Orin, JetPack 6 on Orin Nano, JetPack 4 on AGX Xavier and Nano).
TEGRA_ORIN_JP5 = ("12-02-2026 10:15:01 RAM 5127/30536MB (lfb 6303x4MB) SWAP 0/15268MB (cached 0MB) CPU [3%@729,1%@729,0%@729,2%@729,off,off,off,off] "
                  "EMC_FREQ 0%@2133 GR3D_FREQ 0%@[305,305] VIC_FREQ 729 APE 174 CV0@-256C CPU@47.187C SOC2@44.562C SOC0@45.5C CV1@-256C GPU@43.25C "
                  "tj@47.187C SOC1@44.656C CV2@-256C VDD_GPU_SOC 2766mW/2766mW VDD_CPU_CV 460mW/460mW VIN_SYS_5V0 3545mW/3545mW VDDQ_VDD2_1V8AO 301mW/301mW")
TEGRA_ORIN_NANO_JP6 = ("12-02-2026 10:16:00 RAM 2013/7620MB (lfb 2x4MB) SWAP 0/3810MB (cached 0MB) CPU [0%@1510,0%@1510,0%@1510,0%@1510,0%@729,0%@729] "
                       "GR3D_FREQ 0% cpu@48.5C soc2@47.25C soc0@47.5C gpu@47.75C tj@48.5C soc1@47.968C VDD_IN 4995mW/4995mW VDD_CPU_GPU_CV 601mW/601mW VDD_SOC 1402mW/1402mW")
TEGRA_XAVIER_JP4 = ("RAM 2070/15692MB (lfb 3318x4MB) SWAP 0/7846MB (cached 0MB) CPU [1%@1190,0%@1190,0%@1190,0%@1190,off,off,off,off] EMC_FREQ 0% GR3D_FREQ 0% "
                    "AO@29C GPU@29.5C Tdiode@32.25C PMIC@100C AUX@29C CPU@30.5C thermal@29.9C Tboard@30C GPU 0/0 CPU 154/154 SOC 1084/1084 CV 0/0 VDDRQ 154/154 SYS5V 1380/1380")
TEGRA_NANO_JP4 = ("RAM 1555/3964MB (lfb 118x4MB) SWAP 0/1982MB (cached 0MB) IRAM 0/252kB(lfb 252kB) CPU [7%@1479,3%@1479,2%@1479,1%@1479] EMC_FREQ 3%@1600 "
                  "GR3D_FREQ 0%@921 APE 25 PLL@27C CPU@29.5C PMIC@100C GPU@27.5C AO@35C thermal@28.5C POM_5V_IN 2126/2126 POM_5V_GPU 0/0 POM_5V_CPU 446/446")


@pytest.mark.parametrize("line, expected", [
    (TEGRA_ORIN_JP5, {"VDD_GPU_SOC": 2766.0, "VDD_CPU_CV": 460.0, "VIN_SYS_5V0": 3545.0, "VDDQ_VDD2_1V8AO": 301.0}),
    (TEGRA_ORIN_NANO_JP6, {"VDD_IN": 4995.0, "VDD_CPU_GPU_CV": 601.0, "VDD_SOC": 1402.0}),
    (TEGRA_XAVIER_JP4, {"GPU": 0.0, "CPU": 154.0, "SOC": 1084.0, "CV": 0.0, "VDDRQ": 154.0, "SYS5V": 1380.0}),
    (TEGRA_NANO_JP4, {"POM_5V_IN": 2126.0, "POM_5V_GPU": 0.0, "POM_5V_CPU": 446.0}),
    ("RAM 2070/15692MB SWAP 0/7846MB IRAM 0/252kB", {}),
])
def test_tegrastats_lines(line, expected):
    assert parse_tegrastats_line(line) == expected


def test_mean_watts_is_time_weighted():
    # 1 W for 1 s then 3 W for 3 s (linear ramps between samples)
    times, values = [0.0, 1.0, 4.0], [{"A": 1000.0}, {"A": 1000.0}, {"A": 3000.0}]
    assert mean_watts(times, values, "A") == pytest.approx((1.0 * 1 + 2.0 * 3) / 4)
    assert mean_watts([5.0], [{"A": 1500.0}], "A") == pytest.approx(1.5)
    assert mean_watts(times, values, "B") is None


def _samples(rails_mw, seconds, n=11):
    s = Samples()
    s.started, s.stopped = 100.0, 100.0 + seconds
    for i in range(n):
        s.add(100.0 + seconds * i / (n - 1), dict(rails_mw))
    return s


def test_summary_orin_agx_total_is_the_sum_without_the_included_rail():
    loop = _samples({"VDD_GPU_SOC": 6000.0, "VDD_CPU_CV": 1500.0, "VIN_SYS_5V0": 3500.0, "VDDQ_VDD2_1V8AO": 300.0}, 2.0)
    idle = _samples({"VDD_GPU_SOC": 2000.0, "VDD_CPU_CV": 500.0, "VIN_SYS_5V0": 3000.0, "VDDQ_VDD2_1V8AO": 300.0}, 1.0)
    out = summarize_energy("ina3221-hwmon", loop, idle, inferences=400, interval=0.05, idle_seconds=1.0)
    # 400 inferences in 2 s: 5 ms each; total 11 W -> 55 mJ; above idle (11 - 5.5 W) -> 27.5 mJ
    total = out["total"]
    assert total["rails"] == ["VDD_GPU_SOC", "VDD_CPU_CV", "VIN_SYS_5V0"] and "VDDQ_VDD2_1V8AO left out, part of VIN_SYS_5V0" in total["rule"]
    assert total["watts"] == pytest.approx(11.0) and total["idle_watts"] == pytest.approx(5.5)
    assert total["mj_per_inference"] == pytest.approx(55.0) and total["mj_per_inference_above_idle"] == pytest.approx(27.5)
    assert out["gpu"]["rails"] == ["VDD_GPU_SOC"] and out["gpu"]["mj_per_inference"] == pytest.approx(30.0)
    assert out["gpu"]["mj_per_inference_above_idle"] == pytest.approx(20.0) and out["gpu"]["shared"] is False
    assert out["cpu"]["rails"] == ["VDD_CPU_CV"] and out["cpu"]["mj_per_inference"] == pytest.approx(7.5)
    rails = {r["name"]: r for r in out["rails"]}
    assert rails["VIN_SYS_5V0"]["watts"] == pytest.approx(3.5) and rails["VIN_SYS_5V0"]["mj_per_inference_above_idle"] == pytest.approx(2.5)
    assert out["samples"] == 11 and out["measured_interval_ms"] == pytest.approx(200.0) and out["note"] is None


def test_summary_with_an_input_rail_and_a_shared_cpu_gpu_rail():
    loop = _samples({"VDD_IN": 7000.0, "VDD_CPU_GPU_CV": 2500.0, "VDD_SOC": 1500.0}, 1.0, n=5)
    out = summarize_energy("ina3221-hwmon", loop, None, inferences=100, interval=0.05)
    assert out["total"]["rails"] == ["VDD_IN"] and out["total"]["mj_per_inference"] == pytest.approx(70.0)
    assert out["total"]["idle_watts"] is None and out["total"]["mj_per_inference_above_idle"] is None
    assert out["gpu"]["rails"] == out["cpu"]["rails"] == ["VDD_CPU_GPU_CV"] and out["gpu"]["shared"] is True
    assert "shared with the CPU" in out["gpu"]["rule"]
    assert "only 5 power samples" in out["note"]


def test_sysfs_meter_samples_a_changing_rail_during_the_loop(tmp_path):
    orin_nano_jp6(tmp_path)
    meter = open_meter(str(tmp_path))
    assert meter.source == "ina3221-hwmon"
    vdd_in = os.path.join(str(tmp_path), "sys/bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon1/curr1_input")
    meter.measure_idle(0.3)  # 5 V x 1000 mA = 5 W at idle
    _write(vdd_in, "2000")  # 10 W while "inferring"
    meter.start()
    time.sleep(0.6)
    meter.stop()
    out = meter.result(inferences=60)
    assert out["source"] == "ina3221-hwmon" and out["samples"] >= 5
    assert out["total"]["idle_watts"] == pytest.approx(5.0) and out["total"]["watts"] == pytest.approx(10.0)
    per = out["seconds"] / 60
    assert out["total"]["mj_per_inference"] == pytest.approx(10.0 * per * 1000, rel=1e-3)
    assert out["total"]["mj_per_inference_above_idle"] == pytest.approx(5.0 * per * 1000, rel=1e-3)
    assert 40 <= out["measured_interval_ms"] <= 200  # asked 50 ms; a loaded machine may stretch it


def _fake_tegrastats(tmp_path, line):
    """An executable that prints a recorded tegrastats line every --interval ms, like the real one."""
    path = tmp_path / "tegrastats"
    path.write_text(
        "#!%s\nimport sys, time\nms = int(sys.argv[sys.argv.index('--interval') + 1])\n"
        "while True:\n    time.sleep(ms / 1000.0)\n    print(%r, flush=True)\n" % (sys.executable, line)
    )
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


def test_tegrastats_fallback_when_sysfs_has_no_monitor(tmp_path, monkeypatch):
    monkeypatch.setenv(energy.ENV_TEGRASTATS, _fake_tegrastats(tmp_path, TEGRA_ORIN_JP5))
    meter = open_meter(str(tmp_path / "empty-root"))
    assert meter.source == "tegrastats"
    meter.start()
    time.sleep(0.8)
    meter.stop()
    out = meter.result(inferences=10)
    assert out["samples"] >= 2
    assert out["total"]["watts"] == pytest.approx(2.766 + 0.460 + 3.545)
    assert {r["name"] for r in out["rails"]} == {"VDD_GPU_SOC", "VDD_CPU_CV", "VIN_SYS_5V0", "VDDQ_VDD2_1V8AO"}


def test_bench_on_this_machine_reports_energy_absent(cpu_bundle, tools):
    agent = tools.run(tools.quick("bench", cpu_bundle, "--variant", "fp32"))
    assert agent.rc == 0, agent.stderr
    out = agent.result["runs"][0]["energy"]
    if os.path.isdir("/sys/bus/i2c/drivers/ina3221") or os.path.isdir("/sys/bus/i2c/drivers/ina3221x"):
        pytest.skip("this machine has an INA3221 power monitor")
    assert out["source"] is None and out["reason"] and "total" not in out
    off = tools.run(tools.quick("bench", cpu_bundle, "--variant", "fp32", "--energy", "off"))
    assert off.rc == 0 and off.result["runs"][0]["energy"] is None and off.result["settings"]["energy"] == "off"


def test_bench_with_a_fake_orin_tree_reports_energy(cpu_bundle, tools, tmp_path):
    orin_agx_jp5(tmp_path)
    agent = tools.run(tools.quick("bench", cpu_bundle, "--variant", "fp32", "--min-seconds", "1"), env={energy.ENV_ROOT: str(tmp_path)})
    assert agent.rc == 0, agent.stderr
    out = agent.result["runs"][0]["energy"]
    assert out["source"] == "ina3221-hwmon" and out["samples"] >= 10 and out["idle_seconds"] >= 0.9
    assert out["total"]["watts"] == pytest.approx(9.5) and out["inferences"] == agent.result["runs"][0]["iterations"]
    assert out["total"]["mj_per_inference"] == pytest.approx(9.5 * out["seconds"] / out["inferences"] * 1000, rel=1e-3)
    json.dumps(out)
