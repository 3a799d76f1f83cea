"""Sparsity (unstructured, 2:4), the slimming helper, recovery by distillation, the report files."""
import json
import os

import pytest
import torch

from edgekit.contract.errors import EdgekitError
from edgekit.host.prune import (
    PruneConfig,
    add_bn_l1_grad,
    bn_l1_penalty,
    finetune,
    prune_model,
    recalibrate_bn,
    recover,
)
from edgekit.host.prune.sparsity import is_two_four, two_four_mask
from edgekit.host.cli.prune_report import render_prune_report


def test_unstructured_sparsity_is_reported_as_no_speedup(zoo):
    model = zoo.Residual().eval()
    result = prune_model(model, torch.randn(1, 3, 32, 32), PruneConfig(ratio=0.25, sparsity="unstructured", sparsity_ratio=0.4))
    info = result.report.sparsity
    assert info["kind"] == "unstructured" and info["dense_speedup"] is False
    zeros = sum(int((m.weight == 0).sum()) for m in result.model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))
    total = sum(m.weight.numel() for m in result.model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))
    assert abs(info["zero_fraction_all_weights"] - zeros / total) < 1e-6
    assert 0.38 <= info["zero_fraction_all_weights"] <= 0.42
    assert "will not improve" in info["summary"]
    assert result.report.ok  # channels still aligned


def test_two_four_pattern_and_tensorrt_marker(zoo):
    model = zoo.Depthwise().eval()
    result = prune_model(model, torch.randn(1, 3, 32, 32), PruneConfig(ratio=0.0, sparsity="2:4"))
    info = result.report.sparsity
    assert info["kind"] == "2:4" and info["tensorrt_sparse_weights"] is True and info["pattern_ok"] is True
    # The first conv (3 input channels) and the depthwise convs (1 per group) cannot hold the pattern.
    assert set(info["skipped"]) == {"stem.0", "dw.0", "dw2.0"}
    for name in result.masks:
        weight = dict(result.model.named_modules())[name].weight
        assert is_two_four(weight)
    assert abs(info["zero_fraction"] - 0.5) < 1e-6
    assert result.report.to_dict()["sparsity"]["tensorrt_sparse_weights"] is True


def test_two_four_mask_keeps_the_two_largest():
    w = torch.tensor([[1.0, -4.0, 3.0, 0.5, 0.1, 0.2, -0.3, 0.05]])
    mask = two_four_mask(w)
    assert mask.tolist() == [[False, True, True, False, False, True, True, False]]


def test_slimming_penalty_and_gradient(zoo):
    model = zoo.Concat()
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for bn in bns:
            bn.weight.fill_(-0.5)
    expected = 6e-4 * sum(bn.weight.numel() * 0.5 for bn in bns)
    assert float(bn_l1_penalty(model, 6e-4)) == pytest.approx(expected)
    assert float(bn_l1_penalty(model, 6e-4, skip=["fuse*"])) == pytest.approx(expected - 6e-4 * 32 * 0.5)
    loss = model(torch.randn(2, 3, 32, 32)).sum()
    loss.backward()
    before = bns[0].weight.grad.clone()
    assert add_bn_l1_grad(model, 1e-2) == len(bns)
    assert torch.allclose(bns[0].weight.grad, before - 1e-2)  # sign(-0.5) = -1


def test_slimming_then_threshold_prunes_the_shrunk_channels(zoo):
    """The documented flow: train with the penalty, then --criterion bn --bn-threshold."""

    def train(coefficient):
        torch.manual_seed(0)
        model = zoo.Residual()
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        x = torch.randn(8, 3, 32, 32)
        target = torch.randn(8, 256, 6)
        for _ in range(30):
            loss = torch.nn.functional.mse_loss(model(x), target) + bn_l1_penalty(model, coefficient)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return model.eval(), x

    def mean_scale(model):
        return float(torch.cat([m.weight.detach().abs() for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]).mean())

    plain, _ = train(0.0)
    slim, x = train(0.02)
    assert mean_scale(slim) < mean_scale(plain) - 0.01
    threshold = float(torch.cat([m.weight.detach().abs() for m in slim.modules() if isinstance(m, torch.nn.BatchNorm2d)]).median())
    result = prune_model(slim, x[:1], PruneConfig(criterion="bn", bn_threshold=threshold))
    assert result.report.ok and result.report.params_after < result.report.params_before


def test_recover_reduces_the_distance_to_the_teacher(demo_model):
    from edgekit.host.prune.losses import yolov5_loss

    torch.manual_seed(0)
    images = [torch.rand(1, 3, 64, 64) for _ in range(6)]
    result = prune_model(demo_model, images[0], PruneConfig(ratio=0.5))
    batch = torch.cat(images)
    with torch.no_grad():
        ref = demo_model(batch)
        floor = float(yolov5_loss(ref, ref))  # soft cross-entropy's minimum: the teacher's own entropy
        before = float(yolov5_loss(result.model(batch), ref)) - floor
    seen = []
    stats = recover(result.model, demo_model, images, steps=40, progress=False, layout="yolov5", batch_size=4, lr=2e-3, augment=False, on_step=lambda d, t: seen.append((d, t)))
    assert seen == [(i, 40) for i in range(1, 41)]  # what edgekit build's live line shows
    with torch.no_grad():
        after = float(yolov5_loss(result.model(batch), ref)) - floor
    assert stats["steps"] == 40 and stats["stopped_by"] == "steps" and stats["method"] == "distillation"
    # Measured in eval mode, after the final BatchNorm re-estimation.
    assert 0 <= after < before * 0.8, (before, after)
    assert not result.model.training
    # The teacher is not trained.
    assert demo_model.stem.conv.weight.grad is None


def test_recover_time_budget_and_kept_sparsity(zoo):
    torch.manual_seed(0)
    model = zoo.Concat().eval()
    images = [torch.rand(1, 3, 32, 32) for _ in range(4)]
    result = prune_model(model, images[0], PruneConfig(ratio=0.5, sparsity="unstructured", sparsity_ratio=0.5))
    zeros_before = {n: int((~m).sum()) for n, m in result.masks.items()}
    seen = []
    stats = recover(result.model, model, images, time_budget_s=0.5, progress=False, masks=result.masks, on_step=lambda d, t: seen.append((d, t)))
    assert seen and all(d == 0 and t == 1 for d, t in seen)  # whole seconds of a 0.5 s budget, rounded up
    assert stats["stopped_by"] == "time" and stats["steps"] >= 1 and stats["seconds"] < 5
    mods = dict(result.model.named_modules())
    for name, count in zeros_before.items():
        assert int((mods[name].weight == 0).sum()) >= count


def test_recover_needs_a_budget(zoo):
    model = zoo.Concat().eval()
    with pytest.raises(EdgekitError, match="number of steps or a time budget"):
        recover(model, model, [torch.rand(1, 3, 32, 32)])


def test_recalibrate_bn_matches_batch_statistics(zoo):
    model = zoo.Concat().eval()
    x = torch.randn(16, 3, 32, 32) * 3 + 1
    assert recalibrate_bn(model, x, batch_size=16) == 5
    first = model.a1[0](x)
    bn = model.a1[1]
    assert torch.allclose(bn.running_mean, first.mean((0, 2, 3)), atol=1e-4)
    assert not model.training


def test_finetune_entry_point(zoo):
    torch.manual_seed(0)
    model = zoo.LinearHead()
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    batches = [(x[:8], y[:8]), (x[8:], y[8:])]

    def step(m, batch):
        return torch.nn.functional.cross_entropy(m(batch[0]), batch[1])

    stats = finetune(model, step, batches, steps=20, lr=1e-2, progress=False)
    assert stats["steps"] == 20 and stats["loss_last"] < stats["loss_first"]


def test_report_files_and_rendering(zoo, tmp_path):
    from rich.console import Console

    result = prune_model(zoo.Concat().eval(), torch.randn(1, 3, 32, 32), PruneConfig(ratio=0.5))
    paths = result.report.write(str(tmp_path / "rep"))
    data = json.load(open(paths["json"]))
    assert data["format"] == "edgekit-prune-report/1"
    assert data["aligned"] is True and data["outputs"]["unchanged"] is True
    assert data["params"]["after"] < data["params"]["before"] and data["macs"]["after"] < data["macs"]["before"]
    assert data["file_size"]["after"] < data["file_size"]["before"]
    assert {r["name"] for r in data["layers"]} == {"a1.0", "a2.0", "b1.0", "b2.0", "fuse.0", "out"}
    with open(paths["png"], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.getsize(paths["png"]) > 5000
    console = Console(record=True, width=140)
    render_prune_report(result.report, console)
    text = console.export_text()
    assert "all channels aligned to 8" in text and "fuse.0" in text and "parameters" in text
