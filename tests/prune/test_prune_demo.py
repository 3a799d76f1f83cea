"""The demo detector pruned at several ratios and alignments: aligned, runs, same outputs, MACs monotonic, deterministic."""
import pytest
import torch

from edgekit.host.prune import PruneConfig, prune_model

RATIOS = (0.3, 0.5, 0.7)
ALIGNMENTS = (8, 16)


@pytest.fixture(scope="module")
def pruned(demo_model, demo_input):
    return {(r, a): prune_model(demo_model, demo_input, PruneConfig(ratio=r, alignment=a)) for a in ALIGNMENTS for r in RATIOS}


@pytest.mark.parametrize("alignment", ALIGNMENTS)
@pytest.mark.parametrize("ratio", RATIOS)
def test_every_channel_aligned_and_outputs_unchanged(pruned, demo_model, demo_input, ratio, alignment):
    result = pruned[(ratio, alignment)]
    report = result.report
    assert report.ok, report.problems
    assert report.problems == []
    # Our own reading of the pruned model, not the report's word for it.
    fixed = {n for n, _ in result.model.detect.m.named_children()}
    for name, m in result.model.named_modules():
        if not isinstance(m, torch.nn.Conv2d):
            continue
        if name != "stem.conv":
            assert m.in_channels % alignment == 0, (name, m.in_channels)
        if not name.startswith("detect.m."):
            assert m.out_channels % alignment == 0, (name, m.out_channels)
    assert len(fixed) == 3
    out = result.model(demo_input)
    assert out.shape == demo_model(demo_input).shape
    assert torch.isfinite(out).all()
    # The caller's model is untouched.
    assert demo_model.stem.conv.out_channels == 16 and demo_model.c3_bu5.cv3.conv.out_channels == 256


@pytest.mark.parametrize("alignment", ALIGNMENTS)
def test_macs_fall_monotonically_with_ratio(pruned, alignment):
    macs = [pruned[(r, alignment)].report.macs_after for r in RATIOS]
    before = pruned[(RATIOS[0], alignment)].report.macs_before
    assert before > macs[0] > macs[1] > macs[2] > 0
    params = [pruned[(r, alignment)].report.params_after for r in RATIOS]
    assert params[0] > params[1] > params[2]


def test_kept_counts_round_up_to_the_alignment(pruned):
    report = pruned[(0.3, 16)].report
    rows = {r.name: r for r in report.layers}
    # 16 channels at ratio 0.3: 12 wanted, rounded up to 16 (4 added by alignment).
    stem = rows["stem.conv"]
    assert (stem.out_before, stem.out_target, stem.out_after, stem.added_by_alignment) == (16, 12, 16, 4)
    # 256 at 0.3: 180 wanted -> 192.
    assert (rows["down4.conv"].out_target, rows["down4.conv"].out_after) == (180, 192)
    # Detect's output convs are found as fixed and keep their 39 channels.
    for i in range(3):
        row = rows["detect.m.%d" % i]
        assert row.fixed and row.out_after == 39 and row.out_target is None


def test_deterministic(pruned, demo_model, demo_input):
    again = prune_model(demo_model, demo_input, PruneConfig(ratio=0.5, alignment=8))
    first = pruned[(0.5, 8)].model.state_dict()
    second = again.model.state_dict()
    assert list(first) == list(second)
    for key in first:
        assert torch.equal(first[key], second[key]), key
    assert again.report.to_dict()["layers"] == pruned[(0.5, 8)].report.to_dict()["layers"]


@pytest.mark.parametrize("strategy", ["uniform", "global"])
def test_target_macs_is_met(demo_model, demo_input, strategy):
    result = prune_model(demo_model, demo_input, PruneConfig(strategy=strategy, target_macs=0.5, alignment=8))
    report = result.report
    assert report.ok, report.problems
    # The MACs model counts convs and BatchNorms; the real counter also sees
    # pooling and upsampling, so allow a little slack below the target.
    assert 0.48 <= report.macs_reduction <= 0.56, report.macs_reduction
    assert report.ratio is not None and 0 < report.ratio < 0.7


def test_global_ranking_prunes_layers_unequally(demo_model, demo_input):
    result = prune_model(demo_model, demo_input, PruneConfig(strategy="global", ratio=0.5, alignment=8))
    assert result.report.ok
    fractions = {round(r.out_after / r.out_before, 2) for r in result.report.layers if not r.fixed}
    assert len(fractions) > 3  # not one uniform fraction


def test_sensitivity_needs_images(demo_model, demo_input):
    from edgekit.contract.errors import EdgekitError

    with pytest.raises(EdgekitError, match="calibration images"):
        prune_model(demo_model, demo_input, PruneConfig(strategy="sensitivity", target_macs=0.5))
