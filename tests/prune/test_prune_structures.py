"""Small synthetic models: depthwise and grouped convs, unequal concats, residual chains, Linear heads, unaligned widths, chunk."""
import pytest
import torch
from torch import nn

from edgekit.contract.errors import EdgekitError
from edgekit.host.prune import PruneConfig, prune_model
from edgekit.host.prune import graph as G
from edgekit.host.prune.groups import apply_plan, collect_groups
from edgekit.host.prune.sensitivity import _restore, _zero_readers

ALIGNED_MODELS = ("Depthwise", "Grouped", "Concat", "Residual", "LinearHead")


def layer_counts(model):
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            out[name] = (m.in_channels, m.out_channels, m.groups)
        elif isinstance(m, nn.Linear):
            out[name] = (m.in_features, m.out_features, 1)
    return out


@pytest.mark.parametrize("name,alignment", [(n, a) for a in (8, 16) for n in ALIGNED_MODELS if (n, a) != ("Concat", 16)])
def test_aligned_runs_and_keeps_output_shape(zoo, name, alignment):
    torch.manual_seed(0)
    model = getattr(zoo, name)().eval()
    x = torch.randn(2, 3, 32, 32)
    result = prune_model(model, x[:1], PruneConfig(ratio=0.5, alignment=alignment))
    report = result.report
    assert report.ok, report.problems
    assert report.params_after < report.params_before
    assert result.model(x).shape == model(x).shape
    fixed = {r.name for r in report.layers if r.fixed}
    for layer, (cin, cout, groups) in layer_counts(result.model).items():
        if layer not in fixed:
            assert cout % alignment == 0, (layer, cout)
        if layer not in ("stem.0", "a1.0", "b1.0", "features.0.0"):  # these read the image
            assert cin % alignment == 0, (layer, cin)


def test_depthwise_convs_stay_depthwise(zoo):
    result = prune_model(zoo.Depthwise().eval(), torch.randn(1, 3, 32, 32), PruneConfig(ratio=0.5, alignment=8))
    counts = layer_counts(result.model)
    for name in ("dw.0", "dw2.0"):
        cin, cout, groups = counts[name]
        assert cin == cout == groups and cout % 8 == 0 and cout < {"dw.0": 72, "dw2.0": 24}[name]
    # The residual ties stem, project and dw2 to one width.
    assert counts["stem.0"][1] == counts["project.0"][1] == counts["dw2.0"][1]
    assert counts["fc"][1] == 10


def test_grouped_convs_keep_their_groups_and_equal_group_widths(zoo):
    result = prune_model(zoo.Grouped().eval(), torch.randn(1, 3, 32, 32), PruneConfig(ratio=0.5, alignment=8))
    counts = layer_counts(result.model)
    cin, cout, groups = counts["g1.0"]
    assert groups == 4 and cin % 4 == 0 and cout % 4 == 0 and cout % 8 == 0
    cin2, cout2, groups2 = counts["g2.0"]
    assert groups2 == 2 and cin2 == cout and cout2 % 8 == 0


def test_unequal_concat_branches_are_each_aligned(zoo):
    result = prune_model(zoo.Concat().eval(), torch.randn(1, 3, 32, 32), PruneConfig(ratio=0.5, alignment=8))
    counts = layer_counts(result.model)
    a, b = counts["a2.0"][1], counts["b2.0"][1]
    assert (a, b) == (16, 24)  # 24 -> 12 wanted -> 16; 40 -> 20 wanted -> 24
    assert counts["fuse.0"][0] == a + b
    rows = {r.name: r for r in result.report.layers}
    assert (rows["a2.0"].out_target, rows["a2.0"].added_by_alignment) == (12, 4)


def test_branch_narrower_than_the_alignment_is_reported(zoo):
    # Concat's branch b starts with 8 channels: at alignment 16 pruning cannot fix that.
    report = prune_model(zoo.Concat().eval(), torch.randn(1, 3, 32, 32), PruneConfig(ratio=0.5, alignment=16)).report
    assert not report.aligned and report.runs and report.outputs_unchanged
    assert report.problems[0].startswith("layer 'b1.0' keeps 8 output channels, not a multiple of 16")
    assert any("'b2.0' has 8 input channels" in p for p in report.problems)


def test_residual_chain_is_one_group(zoo):
    result = prune_model(zoo.Residual().eval(), torch.randn(1, 3, 32, 32), PruneConfig(ratio=0.5, alignment=8))
    counts = layer_counts(result.model)
    tied = ["stem.0"] + ["blocks.%d.1" % i for i in range(4)]
    assert {counts[n][1] for n in tied} == {16}
    groups = {r.group for r in result.report.layers if r.name in tied}
    assert len(groups) == 1


def test_linear_head_fixed_and_flatten_mapped(zoo):
    result = prune_model(zoo.LinearHead().eval(), torch.randn(1, 3, 32, 32), PruneConfig(ratio=0.5, alignment=8))
    counts = layer_counts(result.model)
    assert counts["fc2"][1] == 10
    assert counts["features.1.0"][1] == 16 and counts["fc1"][0] == 16 * 8 * 8
    assert counts["fc1"][1] == 32
    assert {r.name: r.fixed for r in result.report.layers}["fc2"] == "output layer"


def test_ratio_zero_on_an_aligned_model_changes_nothing(zoo):
    torch.manual_seed(0)
    model = zoo.Concat().eval()
    x = torch.randn(2, 3, 32, 32)
    result = prune_model(model, x[:1], PruneConfig(ratio=0.0, alignment=8))
    assert layer_counts(result.model) == layer_counts(model)
    assert torch.allclose(result.model(x), model(x))


def test_unaligned_layers_are_cut_down_and_impossible_ones_reported(zoo):
    result = prune_model(zoo.Unaligned().eval(), torch.randn(1, 3, 32, 32), PruneConfig(ratio=0.0, alignment=8))
    counts = layer_counts(result.model)
    # 12 and 20 were never asked to shrink (ratio 0) but are brought down to 8 and 16.
    assert counts["a.0"][1] == 8 and counts["b.0"][1] == 16
    report = result.report
    assert not report.aligned and report.runs and report.outputs_unchanged
    assert any("'c.0' keeps 4 output channels" in p and "fewer than one unit of 8" in p for p in report.problems)
    assert any("'d.0' has 4 input channels" in p for p in report.problems)
    assert {r.name: r.aligned for r in report.layers} == {"a.0": True, "b.0": True, "c.0": False, "d.0": False, "out": True}


def test_chunk_is_rewritten_into_one_conv_per_piece_and_ignore_still_keeps_it(zoo):
    # It used to be refused; now the layer whose output is chunked becomes one
    # layer per piece (edgekit.host.prune.rewrites), checked equal first.
    model = zoo.SplitNet().eval()
    x = torch.randn(1, 3, 32, 32)
    result = prune_model(model, x, PruneConfig(ratio=0.5))
    report = result.report
    assert report.ok and report.excluded == []
    assert type(result.model.block).__name__ == "C2f"  # the user's block class and its forward, unchanged
    rows = {r.name: r for r in report.layers}
    assert (rows["block.cv1.pieces.0.0"].out_before, rows["block.cv1.pieces.0.0"].out_after) == (16, 8)
    assert (rows["block.cv1.pieces.1.0"].out_before, rows["block.cv1.pieces.1.0"].out_after) == (16, 8)
    assert any("1 layer(s) whose output is cut with chunk/split became one layer per piece (block.cv1)" in n for n in report.notes)
    result = prune_model(model, x, PruneConfig(ratio=0.5, ignore=["block.cv1"]))
    rows = {r.name: r for r in result.report.layers}
    assert result.report.ok and rows["block.cv1.pieces.0.0"].fixed.startswith("ignored by --ignore") and rows["block.cv1.pieces.0.0"].out_after == 16


def test_ignore_patterns(zoo):
    model = zoo.Concat().eval()
    x = torch.randn(1, 3, 32, 32)
    result = prune_model(model, x, PruneConfig(ratio=0.5, ignore=["b*"]))
    counts = layer_counts(result.model)
    assert counts["b1.0"][1] == 8 and counts["b2.0"][1] == 40 and counts["a2.0"][1] == 16
    with pytest.raises(EdgekitError, match="matches no conv/linear layer"):
        prune_model(model, x, PruneConfig(ratio=0.5, ignore=["nosuchlayer"]))


def test_known_head_type_is_fixed(zoo):
    model = zoo.TinyYolo().eval()
    model.detect.export = True
    result = prune_model(model, torch.randn(1, 3, 64, 64), PruneConfig(ratio=0.5))
    rows = {r.name: r for r in result.report.layers}
    assert rows["detect.m.0"].fixed and rows["detect.m.1"].fixed
    assert rows["detect.m.0"].out_after == 16 and rows["b1.0"].out_after == 8


def test_frozen_and_half_precision_models_still_prune(zoo):
    """Torch-Pruning traces through autograd: frozen or fp16 weights would silently prune nothing."""
    model = zoo.Concat().eval().half()
    for p in model.parameters():
        p.requires_grad_(False)
    result = prune_model(model, torch.randn(1, 3, 32, 32), PruneConfig(ratio=0.5))
    assert result.report.ok and result.report.params_after < result.report.params_before / 2
    assert all(p.dtype == torch.float32 for p in result.model.parameters())
    assert not any(p.requires_grad for p in result.model.parameters())  # frozen stays frozen
    assert next(model.parameters()).dtype == torch.float16  # the caller's model is untouched


@pytest.mark.parametrize("name", ["Depthwise", "Grouped", "Concat", "LinearHead"])
def test_sensitivity_masking_equals_real_removal(zoo, name):
    """Zeroing the weights that read a group's channels computes exactly what removing them does."""
    torch.manual_seed(0)
    model = getattr(zoo, name)().eval()
    x = torch.randn(3, 3, 32, 32)
    work, _ = G.prepare(model)
    dg = G.build_graph(work, x[:1])
    fixed = G.find_fixed_layers(work, dg)
    groups = collect_groups(work, dg, list(fixed), "l1", 8)
    assert groups
    for g in groups:
        keep = max(g.unit, g.max_aligned - g.unit) if g.max_aligned > g.unit else g.unit
        if keep >= g.slots:
            continue
        saved = _zero_readers(dg.get_pruning_group(g.root, g.prune_fn, g.prune_indices(keep)))
        with torch.no_grad():
            masked = work(x)
        _restore(saved)
        real, _ = G.prepare(model)
        real_dg = G.build_graph(real, x[:1])
        real_groups = collect_groups(real, real_dg, list(fixed), "l1", 8)
        apply_plan(real, real_dg, [rg for rg in real_groups if rg.name == g.name], {g.name: keep})
        with torch.no_grad():
            removed = real(x)
        assert torch.allclose(masked, removed, atol=1e-5), (name, g.name)


def test_bn_threshold_prunes_the_small_scales(zoo):
    torch.manual_seed(0)
    model = zoo.Residual().eval()
    with torch.no_grad():
        bn = model.blocks[0][0][1]  # inside a block: its own group of 32
        bn.weight[:20] = 1e-4
    result = prune_model(model, torch.randn(1, 3, 32, 32), PruneConfig(criterion="bn", bn_threshold=0.01, alignment=8))
    counts = layer_counts(result.model)
    # 12 channels stay above the threshold -> rounded up to 16; the other groups keep all 32.
    assert counts["blocks.0.0.0"][1] == 16
    assert counts["blocks.1.0.0"][1] == 32 and counts["stem.0"][1] == 32
    assert result.report.strategy == "bn-threshold" and result.report.ok


def test_bn_criterion_ranks_by_scale(zoo):
    torch.manual_seed(0)
    model = zoo.Concat().eval()
    with torch.no_grad():
        model.b2[1].weight.copy_(torch.linspace(1.0, 0.01, 40))  # the last channels matter least
    result = prune_model(model, torch.randn(1, 3, 32, 32), PruneConfig(criterion="bn", ratio=0.5))
    kept = result.model.b2[1].weight.detach()
    assert kept.shape[0] == 24
    assert torch.allclose(kept, torch.linspace(1.0, 0.01, 40)[:24])


def test_sensitivity_prunes_unimportant_branch_harder(zoo):
    torch.manual_seed(0)
    model = zoo.Concat().eval()
    with torch.no_grad():
        model.a2[1].weight.mul_(0.01)  # branch a barely reaches the output
        model.a2[1].bias.mul_(0.01)
    torch.manual_seed(1)
    images = [torch.rand(1, 3, 32, 32) for _ in range(4)]
    # 0.4 of the conv MACs (BatchNorm is not counted): reached only with branch a cut to one unit.
    cfg = PruneConfig(strategy="sensitivity", target_macs=0.4, alignment=8, sensitivity_images=4)
    result = prune_model(model, images[0], cfg, calib_images=images)
    counts = layer_counts(result.model)
    assert result.report.ok and result.report.macs_reduction >= 0.38
    assert counts["a2.0"][1] == 8  # as far as it can go
    assert counts["b2.0"][1] / 40.0 > counts["a2.0"][1] / 24.0


def test_config_errors():
    for kwargs, text in (
        (dict(ratio=1.2), "out of range"),
        (dict(ratio=0.5, target_macs=0.5), "alternatives"),
        (dict(bn_threshold=0.01), "needs the BatchNorm-scale criterion"),
        (dict(criterion="taylor"), "unknown pruning criterion"),
        (dict(strategy="random"), "unknown pruning strategy"),
        (dict(sparsity="1:2"), "unknown sparsity"),
        (dict(alignment=0), "alignment"),
        (dict(target_macs=1.0), "out of range"),
    ):
        with pytest.raises(EdgekitError, match=text):
            PruneConfig(**kwargs).validate()
