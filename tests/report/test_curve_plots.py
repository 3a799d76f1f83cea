"""per_class_ap.png and pr_curves.png from stored results (accuracy.curves), at 1, 2 and 3 targets."""
import json
import os

import pytest

from edgekit.contract.result import finish, new_result, new_run
from edgekit.device.coco_eval import evaluate

from .test_accuracy_curves import _coco, _detections


def _result(root, target, bundle, curves_by_variant):
    result = new_result("run", {"hostname": target}, {"name": bundle, "manifest_sha256": "0" * 64}, {})
    for i, (variant, (stats, curves)) in enumerate(curves_by_variant.items()):
        run = new_run(variant, "fp32", "onnxruntime")
        run.update(status="ok", latency_ms={k: 10.0 + 5 * i for k in ("mean", "std", "min", "p50", "p90", "p95", "p99", "max")},
                   accuracy={"metric": "coco_map", "stats": stats, "images": 6, "drift": None, "passed": None, "curves": curves})
        result["runs"].append(run)
    finish(result)
    result["deploy"] = {"target": target, "bundle": bundle, "host_time": "20260101T00000%dZ" % len(target), "variants": {}}
    path = os.path.join(root, target, bundle, "r.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f)


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    coco, anns = _coco(tmp_path_factory.mktemp("gt"))
    out = {}
    for name, jitter in (("fp32", 0.02), ("int8", 0.06), ("p30-fp32", 0.15)):
        curves = {}
        stats = evaluate(coco, _detections(anns, jitter), curves=curves)
        out[name] = (stats, curves)
    return out


@pytest.mark.parametrize("targets", [1, 2, 3])
def test_curve_plots_at_one_two_three_targets(measured, tmp_path, targets):
    import matplotlib.pyplot as plt

    from edgekit.host.report.curves import collect_curves
    from edgekit.host.report.load import load_results
    from edgekit.host.report.make import make_report
    from edgekit.host.report.plots import per_class_figure, pr_figure

    root = str(tmp_path / "results")
    names = ["orin", "pi5", "x86"][:targets]
    for t in names:
        _result(root, t, "demo", measured)
        _result(root, t, "demo-b", {"fp32": measured["fp32"]})
    rep = make_report([root], out_dir=str(tmp_path / "rep"))
    written = {os.path.basename(p) for p in rep.files}
    assert {"per_class_ap.png", "pr_curves.png"} <= written
    curves = collect_curves(load_results([root]))
    # Each bundle/variant once, from the first target; the others named with their spread.
    assert [c.label for c in curves] == ["demo/fp32", "demo/int8", "demo/p30-fp32", "demo-b/fp32"]
    assert all(c.targets == names for c in curves)
    fig = per_class_figure(curves)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [c.label for c in curves]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["mean (mAP)", "circle", "square"]  # no-ground-truth class left out
    title = ax.get_title()
    assert ("within 0.0000 AP per class" in title) == (targets > 1) and title.startswith("Per-class AP (measured on orin")
    heights = sorted(round(p.get_height(), 4) for p in ax.patches)
    stats = measured["fp32"][0]
    assert round(stats["map"], 4) in heights  # the mean bar is the run's mAP
    plt.close(fig)
    fig = pr_figure(curves)
    left, right = fig.axes
    labels = [t.get_text() for t in left.get_legend().get_texts()]
    assert labels[0] == "demo/fp32 (AP %.3f)" % stats["map"]
    assert [t.get_text() for t in right.get_legend().get_texts()][0] == "demo/fp32 (AP %.3f)" % stats["map50"]
    assert len(left.lines) == 4 and len(left.lines[0].get_xdata()) == 101
    plt.close(fig)


def test_no_curves_no_curve_plots(tmp_path):
    from edgekit.host.report.make import make_report

    root = str(tmp_path / "results")
    result = new_result("bench", {"hostname": "orin"}, {"name": "demo", "manifest_sha256": "0" * 64}, {})
    run = new_run("fp32", "fp32", "onnxruntime")
    run.update(status="ok", latency_ms={k: 10.0 for k in ("mean", "std", "min", "p50", "p90", "p95", "p99", "max")})
    result["runs"].append(run)
    finish(result)
    os.makedirs(os.path.join(root, "orin", "demo"))
    with open(os.path.join(root, "orin", "demo", "r.json"), "w") as f:
        json.dump(result, f)
    rep = make_report([root], out_dir=str(tmp_path / "rep"))
    assert not any(p.endswith(("per_class_ap.png", "pr_curves.png")) for p in rep.files)


def test_many_classes_switch_to_horizontal_bars(tmp_path):
    import matplotlib.pyplot as plt

    from edgekit.host.report.curves import VariantCurves
    from edgekit.host.report.plots import per_class_figure

    per_class = [{"id": i, "name": "class%02d" % i, "ap": (i % 10) / 10.0, "ap50": 0.5, "gt": 3} for i in range(80)]
    vc = VariantCurves("coco", "fp32", "orin", 0.45, 0.6, [i / 100.0 for i in range(101)], {"map": [0.5] * 101, "map50": [0.6] * 101}, per_class, ["orin"])
    fig = per_class_figure([vc])
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert len(labels) == 81 and labels[0] == "mean (mAP)" and labels[1].startswith("class0") and "class09" in labels[:12]
    plt.close(fig)
