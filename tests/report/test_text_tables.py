"""The agent's own tables (doctor, run results) fit 80/120/200-column terminals, numbers whole."""
import pytest

from edgekit.contract.result import finish, new_result, new_run
from edgekit.device.text_table import render_doctor, render_result


def _result():
    result = new_result("run", {"hostname": "orin-nano-devkit-1", "cpu": {"model": "ARMv8", "cores": 6}}, {"name": "demo-jetson", "manifest_sha256": "a" * 64}, {})
    for name, p50 in (("fp32", 41.237), ("p30-int8-long-name", 12.5)):
        run = new_run(name, "fp32", "onnxruntime", "CPUExecutionProvider")
        run.update(
            status="ok",
            latency_ms={"mean": p50 + 1, "p50": p50, "p90": p50 + 2, "p99": p50 + 5.25, "min": p50 - 1, "max": p50 + 9, "std": 0.5},
            throughput_fps=1000.0 / (p50 + 1),
            stages_ms={"preprocess": {"p50": 3.5}, "inference": {"p50": p50}, "postprocess": {"p50": 61.75}},
            accuracy={"metric": "coco_map", "stats": {"map": 0.6123, "map50": 0.9}, "drift": -0.0012, "passed": True},
            memory={"peak_rss_mb": 812.0},
        )
        result["runs"].append(run)
    finish(result)
    return result


@pytest.mark.parametrize("width", [80, 120, 200])
def test_result_table_fits_and_keeps_key_numbers(width):
    text = render_result(_result(), width=width)
    table = [line for line in text.splitlines() if line.startswith(("variant", "fp32", "p30-int8"))]
    assert len(table) == 3 and max(len(line) for line in table) <= width
    # Latency, accuracy and drift at any width; the tail (p99) once there is room.
    for row, number in ((table[1], "41.24"), (table[1], "0.6123"), (table[1], "-0.0012"), (table[2], "12.50")):
        assert number in row.split()
    assert ("46.49" in table[1].split()) == (width >= 120)
    if width == 200:
        assert "not shown" not in text and "812" in table[1].split()
    else:
        assert "not shown at this width" in text and "--json has everything" in text


def _doctor():
    fix = "install TensorRT from JetPack: sudo apt-get install nvidia-tensorrt python3-libnvinfer (then re-run doctor)"
    return {"ok": False, "checks": [
        {"name": "python", "ok": True, "required": True, "found": "3.8.10", "needed_for": "everything"},
        {"name": "tensorrt", "ok": False, "required": True, "found": None, "needed_for": "tensorrt variants", "fix": fix},
    ]}


@pytest.mark.parametrize("width", [80, 120, 200])
def test_doctor_table_fits_with_the_fix_whole(width):
    text = render_doctor(_doctor(), width=width)
    fix = _doctor()["checks"][1]["fix"]
    assert fix in text  # never cut
    table = text.split("\n\n")[0].splitlines()
    assert max(len(line) for line in table) <= width
    assert "MISSING" in table[3] and text.rstrip().endswith("NOT ready: install what is marked MISSING")
