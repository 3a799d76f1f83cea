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


def test_result_table_shows_images_per_second_and_energy_only_when_measured():
    plain = render_result(_result(), width=200)
    assert "img/s" not in plain and "mJ/inf" not in plain  # a bench without --batch on a board without power monitors
    result = _result()
    fp32 = result["runs"][0]
    fp32["throughput"] = [
        {"batch": 1, "status": "ok", "images_per_s": 24.2},
        {"batch": 8, "status": "ok", "images_per_s": 61.75},
        {"batch": 16, "status": "skipped", "images_per_s": None},
    ]
    fp32["energy"] = {"total": {"mj_per_inference": 212.34}}
    text = render_result(result, width=200)
    header, _sep, row, other = [line for line in text.splitlines() if line.startswith(("variant", "---", "fp32", "p30-int8"))][:4]
    assert "img/s" in header.split() and "mJ/inf" in header.split()
    # the largest batch that ran (16 was skipped), with its size; the other run has neither
    assert "61.8 (b8)" in row and "212.3" in row.split()
    assert other.split()[-2:] == ["-", "-"]
    assert "img/s: images per second at the largest --batch timed" in text and "mJ/inf: energy per inference" in text
    narrow = render_result(result, width=80)
    header80 = [line for line in narrow.splitlines() if line.startswith("variant")][0].split()
    for column in ("img/s", "mJ/inf"):  # a note only for a column on screen
        assert (column + ":" in narrow) == (column in header80), narrow


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


# --- host tables: the deploy summary and edgekit report -----------------------------


def _host_rows():
    from edgekit.host.report.load import LoadedResult
    from edgekit.host.report.table import build_rows

    data = _result()
    skipped = new_run("fp16", "fp16", "onnxruntime", "CPUExecutionProvider")
    skipped.update(status="skipped", error="fp16 needs a GPU execution provider; run this bundle where TensorRT or onnxruntime-gpu is installed")
    data["runs"].append(skipped)
    # A pruned row far below the baseline (its d mAP is flagged red).
    low = dict(data["runs"][1], variant="p50-fp32", accuracy={"metric": "coco_map", "stats": {"map": 0.0312, "map50": 0.2}, "drift": 0.0, "passed": True})
    data["runs"].append(low)
    finish(data)
    data["deploy"] = {"target": "orin-nano-devkit-1", "bundle": "demo-jetson", "host_time": "20260101T000000Z",
                      "variants": {"fp32": {"size_bytes": 7_150_000, "params": 1_774_741, "macs": 525_000_000}}}
    return build_rows([LoadedResult("r.json", "orin-nano-devkit-1", "demo-jetson", data)])


def _stored_result():
    """_result() as the host stores it (every latency key, the deploy record)."""
    result = _result()
    for run in result["runs"]:
        run["latency_ms"]["p95"] = run["latency_ms"]["p99"]
    result["deploy"] = {"target": "orin", "bundle": "demo", "host_time": "20260101T000000Z", "variants": {}}
    return result


def _print(table, width, color=False):
    import io

    from rich.console import Console

    console = Console(file=io.StringIO(), width=width, force_terminal=color, color_system="standard" if color else None)
    console.print(table)
    return console.file.getvalue()


@pytest.mark.parametrize("summary", [True, False], ids=["deploy-summary", "report"])
@pytest.mark.parametrize("width", [80, 120, 200])
def test_host_tables_keep_every_key_number_whole(width, summary):
    from edgekit.host.report.table import cell, fit_columns, rich_table

    rows = _host_rows()
    text = _print(rich_table(rows, summary=summary, width=width), width)
    lines = text.splitlines()
    assert "…" not in text and max(len(line) for line in lines) <= width
    shown, _hidden = fit_columns(rows, width=width, summary=summary)
    attrs = [a for a, _h, _f in shown]
    assert {"target", "bundle", "variant", "status", "p50_ms", "map"} <= set(attrs)
    by_variant = {line.split()[2]: line.split() for line in lines[1:] if line.strip()}
    assert set(by_variant) == {"fp32", "p30-int8-long-name", "fp16", "p50-fp32"}
    for r in rows:
        cells = by_variant[r.variant]
        for attr, _h, fmt in shown:
            if attr not in ("target", "bundle", "variant"):
                assert cell(r, attr, fmt) in cells, (attr, cell(r, attr, fmt), cells)
    assert "skipped" in by_variant["fp16"] and "ok" in by_variant["fp32"]
    if width == 200 and not summary:
        assert {"p99_ms", "fps", "drift", "speedup", "dmap"} <= set(attrs)


def test_a_large_map_loss_is_red_and_a_skip_is_not():
    from edgekit.host.report.table import rich_table

    text = _print(rich_table(_host_rows(), width=200), 200, color=True)
    line = [l for l in text.splitlines() if "p50-fp32" in l][0]
    assert "\x1b[1;31m-0.5811" in line  # d mAP bold red (0.0312 - 0.6123)
    fp16 = [l for l in text.splitlines() if "fp16" in l][0]
    assert "\x1b[31m" not in fp16 and "\x1b[2m" in fp16  # dim, not red


def test_report_json_round_trips(tmp_path):
    import dataclasses
    import json
    import os
    import subprocess
    import sys

    from edgekit.host.report.load import load_results
    from edgekit.host.report.table import Row, build_rows

    root = tmp_path / "results" / "orin" / "demo"
    root.mkdir(parents=True)
    result = _stored_result()
    (root / "r.json").write_text(json.dumps(result))
    cmd = [sys.executable, "-m", "edgekit.host.cli.main", "report", str(tmp_path / "results"), "--out", str(tmp_path / "rep"), "--no-plots", "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    again = [Row(**r) for r in report["rows"]]
    assert again == build_rows(load_results([str(tmp_path / "results")]))
    assert [c["field"] for c in report["columns"]] == [f.name for f in dataclasses.fields(Row) if f.name in {c["field"] for c in report["columns"]}]
    assert os.path.isfile(str(tmp_path / "rep" / "report.csv"))


def test_the_not_shown_hint_works(tmp_path):
    """"not shown at N columns: ... pick with --columns": the named columns, passed back, print whole."""
    import json
    import re
    import subprocess
    import sys

    root = tmp_path / "results" / "orin" / "demo"
    root.mkdir(parents=True)
    result = _stored_result()
    (root / "r.json").write_text(json.dumps(result))
    script = (
        "import sys, rich.console as c; c.Console.is_terminal = property(lambda self: True); "
        "from edgekit.host.cli.main import main; sys.argv = ['edgekit'] + sys.argv[1:]; main()"
    )
    env = dict(__import__("os").environ, COLUMNS="80")
    base = [sys.executable, "-c", script, "report", str(tmp_path / "results"), "--out", str(tmp_path / "rep"), "--no-plots"]
    proc = subprocess.run(base, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    hint = re.search(r"not shown at 80 columns: (.*?) \(widen the terminal, pick with --columns", proc.stdout.replace("\n", " "))
    assert hint, proc.stdout
    hidden = [h.strip() for h in hint.group(1).split(",")]
    assert "p99_ms" in hidden and "infer_ms" in hidden
    proc = subprocess.run(base + ["--columns", ",".join(["variant"] + hidden)], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    out = re.sub(r"\x1b\[[0-9;]*m", "", proc.stdout)
    header = out.splitlines()[0]
    assert "not shown" not in out, out
    assert header.split()[0] == "variant" and "…" not in out
    assert "46.49" in out.split()  # fp32's p99, hidden before, now whole


def test_energy_per_inference_is_a_column_only_when_measured():
    from edgekit.host.report.load import LoadedResult
    from edgekit.host.report.table import build_rows, used_columns

    data = _stored_result()
    finish(data)
    rows = build_rows([LoadedResult("r.json", "orin", "demo", data)])
    assert "mj_per_inf" not in [c[0] for c in used_columns(rows)]  # no power monitor: no column, not zeros
    data["runs"][0]["energy"] = {"source": "sysfs", "total": {"rails": ["VDD_IN"], "watts": 9.5, "mj_per_inference": 41.27}}
    rows = build_rows([LoadedResult("r.json", "orin", "demo", data)])
    assert rows[0].mj_per_inf == 41.27 and rows[1].mj_per_inf is None
    assert "mj_per_inf" in [c[0] for c in used_columns(rows)]
