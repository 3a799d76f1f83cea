"""`edgekit report` from hand-written results shaped per edgekit.contract.result."""
import csv
import json
import os
import subprocess
import sys

import pytest

from edgekit.contract.result import finish, new_result, new_run
from edgekit.contract.errors import EdgekitError
from edgekit.host.report.load import load_results
from edgekit.host.report.make import make_report
from edgekit.host.report.plots import pareto_front
from edgekit.host.report.table import build_rows


def _run(variant, precision, p50, p99, pre, infer, post, map_, map50, drift):
    run = new_run(variant, precision, "onnxruntime", "CPUExecutionProvider")
    run.update(
        status="ok",
        latency_ms={"mean": p50 * 1.02, "std": 0.1, "min": p50 * 0.9, "p50": p50, "p90": p99 * 0.9, "p95": p99 * 0.95, "p99": p99, "max": p99 * 1.1},
        throughput_fps=1000.0 / (p50 * 1.02),
        stages_ms={"preprocess": {"mean": pre, "p50": pre, "p99": pre}, "inference": {"mean": infer, "p50": infer, "p99": infer},
                   "postprocess": {"mean": post, "p50": post, "p99": post}},
        iterations=100,
        warmup=10,
        accuracy={"metric": "coco_map", "stats": {"map": map_, "map50": map50}, "images": 200, "drift": drift, "passed": True},
    )
    return run


def _write(folder, target, bundle, runs, when, variants=None, failed=None):
    result = new_result("run", {"hostname": target}, {"name": bundle, "manifest_sha256": "0" * 64}, {})
    result["runs"] = runs
    if failed:
        bad = new_run(failed, "int8", "tensorrt")
        bad.update(status="failed", error="TensorRT is not installed; pip3 install tensorrt")
        result["runs"].append(bad)
    finish(result)
    result["deploy"] = {"target": target, "bundle": bundle, "host_time": when, "variants": variants or {}}
    path = os.path.join(folder, target, bundle, "%s.json" % when)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f)
    return path


@pytest.fixture
def results(tmp_path):
    root = str(tmp_path / "results")
    facts = {"fp32": {"size_bytes": 7_000_000, "params": 1_775_000, "macs": 1.2e9}, "int8": {"size_bytes": 2_000_000, "params": 1_775_000, "macs": 1.2e9}}
    pruned = {"fp32": {"size_bytes": 3_500_000, "params": 880_000, "macs": 0.6e9}}
    # An older run that must be ignored in favour of the newest.
    _write(root, "orin", "demo-cpu", [_run("fp32", "fp32", 99.0, 120.0, 1, 2, 3, 0.1, 0.2, 0.0)], "20260101T000000Z", facts)
    _write(root, "orin", "demo-cpu", [_run("fp32", "fp32", 40.0, 50.0, 5.0, 40.0, 80.0, 0.62, 0.90, 0.0005),
                                      _run("int8", "int8", 25.0, 30.0, 5.0, 25.0, 80.0, 0.60, 0.89, -0.001)],
           "20260102T000000Z", facts, failed="trt-int8")
    _write(root, "orin", "demo-pruned", [_run("fp32", "fp32", 20.0, 26.0, 5.0, 20.0, 80.0, 0.61, 0.895, 0.0)], "20260102T000001Z", pruned)
    _write(root, "pi 'five'", "demo-cpu", [_run("fp32", "fp32", 200.0, 260.0, 15.0, 200.0, 300.0, 0.62, 0.90, 0.0)], "20260103T000000Z", facts)
    return root


def test_rows_numbers_and_baseline(results):
    loaded = load_results([results])
    assert len(loaded) == 3  # the newest per (target, bundle)
    rows = build_rows(loaded)
    by = {(r.target, r.bundle, r.variant): r for r in rows}
    fp32 = by[("orin", "demo-cpu", "fp32")]
    assert (fp32.p50_ms, fp32.p99_ms, fp32.pre_ms, fp32.infer_ms, fp32.post_ms) == (40.0, 50.0, 5.0, 40.0, 80.0)
    assert fp32.map == 0.62 and fp32.map50 == 0.90 and fp32.drift == 0.0005
    assert fp32.size_mb == 7.0 and fp32.params_m == 1.775 and fp32.gmacs == pytest.approx(1.2)
    assert fp32.speedup == 1.0
    assert by[("orin", "demo-cpu", "int8")].speedup == pytest.approx(1.6)
    pruned = by[("orin", "demo-pruned", "fp32")]
    assert pruned.speedup == pytest.approx(2.0) and pruned.dmap == pytest.approx(-0.01)
    assert by[("orin", "demo-cpu", "trt-int8")].status == "failed"
    # Each target has its own baseline.
    assert by[("pi 'five'", "demo-cpu", "fp32")].speedup == 1.0
    rows = build_rows(loaded, baseline="demo-pruned/fp32")
    assert {(r.target, r.variant): r.speedup for r in rows if r.bundle == "demo-cpu" and r.target == "orin"}[("orin", "fp32")] == pytest.approx(0.5)
    with pytest.raises(EdgekitError, match="baseline 'nope'"):
        build_rows(loaded, baseline="nope")
    assert len(load_results([results], latest_only=False)) == 4


def test_report_files(results, tmp_path):
    out = str(tmp_path / "reports")
    rep = make_report([results], out_dir=out)
    names = sorted(os.path.basename(p) for p in rep.files)
    assert names == ["latency_vs_map.png", "report.csv", "report.md", "stages.png"]
    md = open(os.path.join(out, "report.md")).read()
    assert "| orin | demo-pruned | fp32 |" in md and "2.00x" in md and "TensorRT is not installed" in md
    with open(os.path.join(out, "report.csv")) as f:
        table = list(csv.DictReader(f))
    assert len(table) == 5
    row = [r for r in table if r["bundle"] == "demo-pruned"][0]
    assert float(row["p50_ms"]) == 20.0 and float(row["map"]) == 0.61 and float(row["gmacs"]) == pytest.approx(0.6)
    import matplotlib.image

    for name in ("latency_vs_map.png", "stages.png"):
        image = matplotlib.image.imread(os.path.join(out, name))
        assert image.shape[0] > 200 and image.shape[1] > 300


def test_pareto_front():
    points = [(10, 0.5), (20, 0.6), (15, 0.4), (30, 0.55), (5, 0.3)]
    assert pareto_front(points) == [(5, 0.3), (10, 0.5), (20, 0.6)]


def test_bad_inputs_are_one_line_errors(tmp_path):
    with pytest.raises(EdgekitError, match="does not exist"):
        load_results([str(tmp_path / "nothing")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(EdgekitError, match="no result files"):
        load_results([str(tmp_path / "empty")])
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "something-else"}')
    with pytest.raises(EdgekitError, match="is not an edgekit result"):
        load_results([str(bad)])


def test_report_command(results, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", "from edgekit.host.cli.main import main; main()", "report", results, "--out", str(tmp_path / "r"), "--no-plots"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "demo-pruned" in proc.stdout and "x base" in proc.stdout and "2.00x" in proc.stdout
    assert os.path.exists(tmp_path / "r" / "report.md") and not os.path.exists(tmp_path / "r" / "stages.png")
    proc = subprocess.run(
        [sys.executable, "-c", "from edgekit.host.cli.main import main; main()", "report", str(tmp_path / "missing")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1


def test_variant_facts_from_the_manifest():
    from edgekit.host.deploy.results import variant_facts

    manifest = {
        "model": {"params": 100},
        "files": {"a.onnx": {"size": 5}, "b.onnx": {"size": 3}},
        "variants": [
            {"name": "fp32", "file": "a.onnx", "precision": "fp32", "prune": None},
            {"name": "p50-fp32", "file": "b.onnx", "precision": "fp32",
             "prune": {"ratio": 0.5, "params": {"before": 100, "after": 40}, "macs": {"before": 1000, "after": 450, "reduction": 0.55}}},
        ],
    }
    facts = variant_facts(manifest)
    # The unpruned variant's MACs come from the pruned one's "before".
    assert facts["fp32"] == {"precision": "fp32", "file": "a.onnx", "size_bytes": 5, "params": 100, "macs": 1000, "prune_ratio": 0.0, "host_metrics": None}
    assert (facts["p50-fp32"]["params"], facts["p50-fp32"]["macs"], facts["p50-fp32"]["prune_ratio"]) == (40, 450, 0.5)


def test_results_store_layout(tmp_path):
    from edgekit.host.deploy.results import save_result

    result = finish(new_result("run", {"hostname": "b"}, {"name": "x"}, {}))
    result["runs"] = [_run("fp32", "fp32", 1, 2, 0.1, 1, 0.2, 0.5, 0.7, 0.0)]
    path, record = save_result(str(tmp_path), "lab 'A'/1", "demo it's", result, {"target": "lab 'A'/1", "bundle": "demo it's", "host_time": "20260101T000000.000Z"})
    assert path == os.path.join(str(tmp_path), "lab 'A'_1", "demo it's", "20260101T000000.000Z.json")
    again, _ = save_result(str(tmp_path), "lab 'A'/1", "demo it's", result, {"host_time": "20260101T000000.000Z"})
    assert again.endswith("20260101T000000.000Z-2.json")
    assert json.load(open(path))["deploy"]["target"] == "lab 'A'/1" and record["runs"][0]["variant"] == "fp32"
    assert [n for n in os.listdir(os.path.dirname(path)) if n.endswith(".partial")] == []
    with pytest.raises(EdgekitError, match="malformed result"):
        save_result(str(tmp_path), "t", "b", {"format": "nope"}, {})


def test_variant_by_target_pivot(results, tmp_path):
    from edgekit.host.report.table import pivot

    rows = build_rows(load_results([results]))
    header, body = pivot(rows, "p50_ms", "%.2f")
    assert header == ["variant", "orin", "pi 'five'"]
    assert body[0] == ["demo-cpu/fp32", "40.00", "200.00"]
    assert ["demo-cpu/trt-int8", "failed", ""] in body
    make_report([results], out_dir=str(tmp_path / "r"), plots=False)
    text = open(os.path.join(str(tmp_path / "r"), "report.md")).read()
    assert "## p50 latency (ms), variant x target" in text and "| demo-pruned/fp32 | 20.00 |  |" in text


def _render(rows, width, **kw):
    import io

    from rich.console import Console

    from edgekit.host.report.table import rich_table

    console = Console(file=io.StringIO(), width=width, force_terminal=False)
    console.print(rich_table(rows, width=width, **kw))
    return console.file.getvalue()


@pytest.mark.parametrize("width", [80, 120, 200])
def test_terminal_table_fits_and_no_cell_is_cut(results, width):
    from edgekit.host.report.table import cell, fit_columns

    rows = build_rows(load_results([results]))
    text = _render(rows, width)
    lines = text.splitlines()
    assert "…" not in text and max(len(line) for line in lines) <= width
    shown, hidden = fit_columns(rows, width=width)
    # The key numbers survive any width: who, what, latency, accuracy.
    assert {"target", "bundle", "variant", "status", "p50_ms", "map"} <= {a for a, _h, _f in shown}
    # Each row's line holds every shown cell whole, in order.
    for r, line in zip(rows, lines[1:]):
        rest = line
        for attr, _h, fmt in shown:
            value = cell(r, attr, fmt)
            assert value in rest, (attr, value, line)
            rest = rest[rest.index(value) + len(value):]
    if width == 80:
        assert hidden  # something had to give
    if width == 200:
        assert hidden == []


def test_columns_option_and_unknown_column(results):
    rows = build_rows(load_results([results]))
    text = _render(rows, 80, names=["variant", "p50_ms", "mAP@.5"])
    assert text.splitlines()[0].split() == ["variant", "p50", "ms", "mAP@.5"]
    with pytest.raises(EdgekitError, match="unknown column 'nope'.*p50_ms"):
        _render(rows, 80, names=["nope"])


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-c", "from edgekit.host.cli.main import main; main()", "report"] + list(args),
        capture_output=True, text=True, timeout=120,
    )


def test_report_json_csv_md_to_stdout(results, tmp_path):
    proc = _cli(results, "--out", str(tmp_path / "r"), "--no-plots", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)  # stdout is the JSON alone
    assert data["format"] == "edgekit-report" and data["version"] == 1 and len(data["sources"]) == 3
    by = {(r["target"], r["bundle"], r["variant"]): r for r in data["rows"]}
    assert len(by) == 5 and by[("orin", "demo-pruned", "fp32")]["p50_ms"] == 20.0
    assert by[("orin", "demo-pruned", "fp32")]["speedup"] == pytest.approx(2.0)
    assert by[("orin", "demo-cpu", "trt-int8")]["status"] == "failed" and by[("orin", "demo-cpu", "trt-int8")]["p50_ms"] is None
    assert "read 3 result file(s)" in proc.stderr
    proc = _cli(results, "--out", str(tmp_path / "r"), "--no-plots", "--format", "csv")
    table = list(csv.DictReader(proc.stdout.splitlines()))
    assert proc.returncode == 0 and len(table) == 5 and float(table[0]["p50_ms"]) == 40.0
    proc = _cli(results, "--out", str(tmp_path / "r"), "--no-plots", "--format", "md")
    assert proc.returncode == 0 and proc.stdout.startswith("# edgekit report") and "| orin | demo-pruned | fp32 |" in proc.stdout


def test_piped_table_is_full_and_bad_columns_is_one_line(results, tmp_path):
    proc = _cli(results, "--out", str(tmp_path / "r"), "--no-plots")
    assert proc.returncode == 0 and "GMACs" in proc.stdout and "params M" in proc.stdout and "…" not in proc.stdout
    assert "not shown" not in proc.stdout
    proc = _cli(results, "--out", str(tmp_path / "r"), "--no-plots", "--columns", "variant,bogus")
    assert proc.returncode == 2 and proc.stderr.startswith("error: unknown column 'bogus'") and proc.stderr.count("\n") == 1


def test_bad_baseline_lists_only_successful_runs(results):
    with pytest.raises(EdgekitError) as err:
        build_rows(load_results([results]), baseline="nope")
    assert "trt-int8" not in str(err.value.fix) and "demo-pruned/fp32" in str(err.value.fix)


def test_deploy_summary_fits_80_columns(results):
    rows = build_rows(load_results([results]))
    text = _render(rows, 80, summary=True)
    header = text.splitlines()[0]
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= 80
    assert "p50 ms" in header and "mAP@.5:.95" in header and "x base" not in header  # summary leaves comparisons out


def test_frontier_plot_names_the_front_and_keeps_labels_apart(tmp_path):
    from edgekit.host.report.plots import frontier_figure

    root = str(tmp_path / "res")
    # Two bundles whose points nearly coincide: their labels used to print on top of each other.
    _write(root, "orin", "a", [_run("fp32", "fp32", 40.0, 50.0, 5, 40, 8, 0.620, 0.9, 0.0), _run("int8", "int8", 25.0, 30.0, 5, 25, 8, 0.600, 0.9, 0.0)], "20260101T000000Z")
    _write(root, "orin", "b", [_run("fp32", "fp32", 40.4, 52.0, 5, 40, 8, 0.6201, 0.9, 0.0), _run("int8", "int8", 25.2, 31.0, 5, 25, 8, 0.6002, 0.9, 0.0)], "20260101T000001Z")
    _write(root, "pi", "a", [_run("fp32", "fp32", 41.0, 70.0, 5, 40, 8, 0.6199, 0.9, 0.0)], "20260101T000002Z")
    fig = frontier_figure(build_rows(load_results([root])))
    ax = fig.axes[0]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "Pareto front (orin)" in legend and "bundle a" in legend and "bundle b" in legend and "target pi" in legend
    # Distinct colour per bundle.
    colours = {tuple(c.get_facecolor()[0]) for c in ax.collections}
    assert len(colours) == 2
    from matplotlib.text import Text

    renderer = fig.canvas.get_renderer()
    for t in ax.texts:
        t.update_positions(renderer)
    # The labels' text boxes (an annotation's own extent also spans its leader line).
    boxes = [Text.get_window_extent(t, renderer) for t in ax.texts]
    assert len(boxes) == 5
    overlaps = [(i, j) for i in range(len(boxes)) for j in range(i + 1, len(boxes)) if boxes[i].overlaps(boxes[j])]
    assert overlaps == []
    import matplotlib.pyplot as plt

    plt.close(fig)
