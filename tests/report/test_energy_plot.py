"""energy_vs_map.png (runs with energy) and the img/s column (runs with bench --batch), from stored results."""
import json
import os

from edgekit.contract.result import finish, new_result, new_run

LATENCY = ("mean", "std", "min", "p50", "p90", "p95", "p99", "max")


def _write(root, target, bundle, runs):
    """runs: {variant: (mAP, mJ per inference or None, throughput list or None)}."""
    result = new_result("run", {"hostname": target}, {"name": bundle, "manifest_sha256": "0" * 64}, {})
    for i, (variant, (map_, mj, throughput)) in enumerate(runs.items()):
        run = new_run(variant, "fp32", "onnxruntime")
        run.update(status="ok", latency_ms={k: 10.0 + 5 * i for k in LATENCY}, throughput=throughput,
                   accuracy={"metric": "coco_map", "stats": {"map": map_, "map50": map_ + 0.2}, "images": 6, "drift": None, "passed": None})
        if mj is not None:
            run["energy"] = {"source": "ina3221-hwmon", "reason": None, "total": {"watts": 9.0, "mj_per_inference": mj}}
        result["runs"].append(run)
    finish(result)
    result["deploy"] = {"target": target, "bundle": bundle, "host_time": "20260101T000000Z", "variants": {}}
    path = os.path.join(root, target, bundle, "r.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f)


def _batches(*pairs):
    return [{"batch": b, "status": "ok" if ips else "skipped", "reason": None if ips else "fixed batch", "iterations": 10,
             "latency_ms": {k: b * 1000.0 / ips for k in LATENCY} if ips else None, "images_per_s": ips} for b, ips in pairs]


def test_energy_plot_and_images_per_second_column(tmp_path):
    import matplotlib.pyplot as plt

    from edgekit.host.report.make import make_report
    from edgekit.host.report.plots import energy_figure

    root = str(tmp_path / "results")
    _write(root, "orin", "demo", {"fp32": (0.75, 42.5, _batches((1, 90.0), (8, 210.5))),
                                  "int8": (0.74, 21.0, _batches((1, 120.0), (8, None))),
                                  "p30-int8": (0.72, 15.2, None)})
    rep = make_report([root], out_dir=str(tmp_path / "rep"))
    assert "energy_vs_map.png" in {os.path.basename(p) for p in rep.files}
    by_variant = {r.variant: r for r in rep.rows}
    # The largest batch that ran: 8 for fp32; int8's batch 8 was skipped, so its batch 1.
    assert (by_variant["fp32"].img_s_batch, by_variant["fp32"].img_s) == (8, 210.5)
    assert (by_variant["int8"].img_s_batch, by_variant["int8"].img_s) == (1, 120.0)
    assert by_variant["p30-int8"].img_s is None
    with open(os.path.join(str(tmp_path / "rep"), "report.md")) as f:
        md = f.read()
    assert "img/s" in md and "210.5" in md
    # both figures are defined under the table, with the batch sizes behind img/s
    assert "img/s: images per second at each variant's largest batch timed (here batch 1, 8;" in md
    assert "mJ/inf: energy per inference on the board's total power rail" in md
    fig = energy_figure(rep.rows)
    ax = fig.axes[0]
    assert ax.get_xlabel().startswith("energy per inference (mJ")
    assert ax.get_ylabel().startswith("mAP@0.5:0.95")
    points = sorted(tuple(p) for c in ax.collections for p in c.get_offsets())
    assert points == [(15.2, 0.72), (21.0, 0.74), (42.5, 0.75)]
    assert {t.get_text() for t in ax.texts} >= {"fp32", "int8", "p30-int8"}
    plt.close(fig)


def test_no_energy_no_energy_plot(tmp_path):
    from edgekit.host.report.make import make_report

    root = str(tmp_path / "results")
    _write(root, "x86", "demo", {"fp32": (0.75, None, None)})
    rep = make_report([root], out_dir=str(tmp_path / "rep"))
    written = {os.path.basename(p) for p in rep.files}
    assert "latency_vs_map.png" in written and "energy_vs_map.png" not in written
    assert not os.path.exists(os.path.join(str(tmp_path / "rep"), "energy_vs_map.png"))
    assert all(r.img_s is None for r in rep.rows)
    with open(os.path.join(str(tmp_path / "rep"), "report.md")) as f:
        md = f.read()
    assert "img/s:" not in md and "mJ/inf:" not in md  # no note for a column that is not there


def test_the_terminal_notes_only_the_columns_it_shows(tmp_path):
    from edgekit.host.report.make import make_report
    from edgekit.host.report.table import column_notes

    root = str(tmp_path / "results")
    _write(root, "orin", "demo", {"fp32": (0.75, 42.5, _batches((1, 90.0), (4, 150.0)))})
    rows = make_report([root], out_dir=str(tmp_path / "rep"), plots=False).rows
    assert [n.split(":")[0] for n in column_notes(rows)] == ["img/s", "mJ/inf"]
    assert "(here batch 4;" in column_notes(rows)[0]
    assert [n.split(":")[0] for n in column_notes(rows, ["target", "variant", "img_s"])] == ["img/s"]
    assert column_notes(rows, ["target", "variant", "p50_ms"]) == []
