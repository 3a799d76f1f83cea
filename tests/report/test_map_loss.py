"""Build variants that lost more than 10 mAP points against the unpruned fp32 are flagged, with the cause."""
import pytest

from edgekit.host.report.map_loss import loss_flags


def _v(name, precision, map_, ratio=0.0, recovery="none"):
    prune = None
    if ratio:
        prune = {"ratio": ratio, "recovery": None if recovery == "none" else recovery}
    return {"name": name, "precision": precision, "prune": prune, "host_metrics": None if map_ is None else {"map": map_, "map50": 0.9}}


def test_no_flag_within_ten_points():
    assert loss_flags([_v("fp32", "fp32", 0.753), _v("int8", "int8", 0.747), _v("p30-fp32", "fp32", 0.66, 0.3, {"steps": 900, "seconds": 300.0})]) == {}


def test_pruned_without_recovery_near_zero_gets_the_blunt_warning():
    flags = loss_flags([_v("fp32", "fp32", 0.753), _v("p30-fp32", "fp32", 0.0312, 0.3), _v("p30-int8", "int8", 0.004, 0.3)])
    assert "p30-fp32" in flags and "loses 72.2 mAP points" in flags["p30-fp32"] and "without recovery" in flags["p30-fp32"]
    assert flags["p30-int8"].startswith("p30-int8 has host mAP 0.004") and "detects almost nothing" in flags["p30-int8"]
    assert "--recover-seconds 300" in flags["p30-int8"]


def test_short_recovery_is_named_with_its_steps_and_seconds():
    flags = loss_flags([_v("fp32", "fp32", 0.753), _v("p50-fp32", "fp32", 0.60, 0.5, {"steps": 41, "seconds": 20.3})])
    assert flags == {"p50-fp32": "p50-fp32 loses 15.3 mAP points against the unpruned fp32 (0.753 -> 0.600); likely cause: recovery too short "
                                 "(41 steps, 20 s); give it longer with --recover-seconds or --recover-steps, or prune less"}


def test_quantization_is_blamed_when_the_pruned_fp32_kept_its_accuracy():
    flags = loss_flags([_v("fp32", "fp32", 0.75), _v("int8", "int8", 0.60), _v("p30-fp32", "fp32", 0.73, 0.3, {"steps": 900, "seconds": 300.0}),
                        _v("p30-int8", "int8", 0.58, 0.3, {"steps": 900, "seconds": 300.0})])
    assert "likely cause: int8 quantization" in flags["int8"]
    assert "likely cause: int8 quantization (the pruned fp32 p30-fp32 loses only 2.0 points)" in flags["p30-int8"]
    assert "p30-fp32" not in flags


def test_no_reference_no_flags():
    # fp16 without host metrics, no unpruned fp32 measured: nothing to compare with.
    assert loss_flags([_v("fp16", "fp16", None), _v("p30-fp32", "fp32", 0.0, 0.3)]) == {}


@pytest.mark.slow
def test_a_real_build_pruned_without_recovery_warns_in_the_manifest(tmp_path):
    from edgekit.host.bundle import BuildOptions, build_bundle

    out = str(tmp_path / "b")
    result = build_bundle(BuildOptions(profile="cpu", prune="0,0.3", variants="fp32", out=out, calib_images=8, eval_images=24, parity_images=1))
    by = {v["name"]: v for v in result.manifest["variants"]}
    ref, pruned = by["fp32"]["host_metrics"]["map"], by["p30-fp32"]["host_metrics"]["map"]
    assert by["p30-fp32"]["prune"]["recovery"] is None
    assert ref - pruned > 0.10  # measured: the demo pruned 30 % without recovery keeps almost nothing
    warnings = [w for w in result.manifest["build"]["warnings"] if w.startswith("p30-fp32 ")]
    assert len(warnings) == 1 and "without recovery" in warnings[0] and "--recover-seconds" in warnings[0]
    rows = {r["variant"]: r for r in result.summary_rows()}
    assert rows["p30-fp32"]["flag"] == warnings[0] and rows["fp32"]["flag"] is None


def test_every_flag_the_accuracy_hints_name_exists():
    """The fixes the flags and the prune warnings suggest name options the commands really take."""
    import re
    import subprocess
    import sys

    from edgekit.host.report.map_loss import loss_flags

    variants = [_v("fp32", "fp32", 0.75), _v("int8", "int8", 0.60), _v("p30-fp32", "fp32", 0.0, 0.3),
                _v("p50-fp32", "fp32", 0.5, 0.5, {"steps": 4, "seconds": 2.0}), _v("p50-int8", "int8", 0.3, 0.5, {"steps": 4, "seconds": 2.0})]
    build_text = " ".join(loss_flags(variants).values())
    from edgekit.host.cli.prune_accuracy import PruneAccuracy

    acc = PruneAccuracy(lambda m: {"map": 0.0, "map50": 0.0}, 20, "x")
    acc.stages = {"original": {"map": 0.75, "map50": 0.9}, "pruned": {"map": 0.004, "map50": 0.01}}
    prune_text = " ".join(acc.warnings(recovering=False))
    acc.stages["recovered"] = {"map": 0.5, "map50": 0.8}
    prune_text += " " + " ".join(acc.warnings(recovering=True))
    for command, text in (("build", build_text), ("prune", prune_text)):
        named = set(re.findall(r"--[a-z][a-z0-9-]+", text))
        assert named, text
        help_text = subprocess.run([sys.executable, "-m", "edgekit.host.cli.main", command, "--help"], capture_output=True, text=True, timeout=120).stdout
        assert named <= set(re.findall(r"--[a-z][a-z0-9-]+", help_text)), (command, named)
