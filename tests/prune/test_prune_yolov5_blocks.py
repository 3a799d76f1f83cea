"""Small models reproducing the YOLOv5 repository's structures that broke pruning (issue 11).

Each class mirrors one structure of ultralytics/yolov5 ``models/common.py`` /
``models/yolo.py`` (written from its behaviour, not copied): a ``Model._apply``
that pushes 5-D grid tensors through every conversion, GhostConv (a tensor
concatenated with a depthwise conv of itself) inside a residual, a
TransformerBlock that reshapes with its stored channel count, and Conv's
shared class-level activation module (SiLU or LeakyReLU).
"""
import time
import warnings

import pytest
import torch
from torch import nn

from edgekit.host.prune import PruneConfig, prune_model, recover
from edgekit.host.prune.metrics import count_macs_params


class Conv(nn.Module):
    act_module: nn.Module = nn.SiLU()  # one module shared by every Conv, as YOLOv5's Conv.default_act

    def __init__(self, c1, c2, k=1, s=1, g=1, act=True):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, k // 2, groups=g, bias=False)
        self.bn = nn.BatchNorm2d(c2)
        self.act = type(self).act_module if act else nn.Identity()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class GhostConv(nn.Module):
    def __init__(self, c1, c2, act=True):
        super().__init__()
        c_ = c2 // 2
        self.cv1 = Conv(c1, c_, 1, act=act)
        self.cv2 = Conv(c_, c_, 5, 1, g=c_, act=act)

    def forward(self, x):
        y = self.cv1(x)
        return torch.cat([y, self.cv2(y)], 1)  # channel i and i + c_ come from the same cv1 channel


class GhostBottleneck(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Sequential(GhostConv(c, c // 2), GhostConv(c // 2, c, act=False))

    def forward(self, x):
        return self.conv(x) + x


class TransformerLayer(nn.Module):
    def __init__(self, c, heads):
        super().__init__()
        self.q, self.k, self.v = nn.Linear(c, c, bias=False), nn.Linear(c, c, bias=False), nn.Linear(c, c, bias=False)
        self.ma = nn.MultiheadAttention(embed_dim=c, num_heads=heads)
        self.fc1, self.fc2 = nn.Linear(c, c, bias=False), nn.Linear(c, c, bias=False)

    def forward(self, x):
        x = self.ma(self.q(x), self.k(x), self.v(x))[0] + x
        return self.fc2(self.fc1(x)) + x


class TransformerBlock(nn.Module):
    def __init__(self, c, heads=4):
        super().__init__()
        self.linear = nn.Linear(c, c)
        self.tr = TransformerLayer(c, heads)
        self.c2 = c  # stored channel count: the reshape below breaks when the input is pruned

    def forward(self, x):
        b, _, w, h = x.shape
        p = x.flatten(2).permute(2, 0, 1)
        return self.tr(p + self.linear(p)).permute(1, 2, 0).reshape(b, self.c2, w, h)


class C3TR(nn.Module):
    def __init__(self, c1, c2):
        super().__init__()
        c_ = c2 // 2
        self.cv1, self.cv2, self.cv3 = Conv(c1, c_), Conv(c1, c_), Conv(2 * c_, c2)
        self.m = TransformerBlock(c_)

    def forward(self, x):
        return self.cv3(torch.cat([self.m(self.cv1(x)), self.cv2(x)], 1))


class Detect(nn.Module):
    """YOLOv5's head: anchor grids (1, na, ny, nx, 2) built on the first eval forward and kept as plain attributes."""

    def __init__(self, nc, ch):
        super().__init__()
        self.nc, self.no, self.na = nc, nc + 5, 2
        self.m = nn.ModuleList(nn.Conv2d(c, self.no * self.na, 1) for c in ch)
        self.stride = torch.tensor([4.0, 8.0])
        self.grid = [torch.empty(0) for _ in ch]
        self.anchor_grid = [torch.empty(0) for _ in ch]

    def forward(self, xs):
        z, raw = [], []
        for i, x in enumerate(xs):
            y = self.m[i](x)
            bs, _, ny, nx = y.shape
            y = y.view(bs, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous()
            raw.append(y)
            if self.grid[i].shape[2:4] != y.shape[2:4]:
                gy, gx = torch.meshgrid(torch.arange(ny, dtype=y.dtype), torch.arange(nx, dtype=y.dtype), indexing="ij")
                self.grid[i] = torch.stack((gx, gy), 2).expand(1, self.na, ny, nx, 2).contiguous()
                self.anchor_grid[i] = torch.full((1, self.na, ny, nx, 2), 8.0 * (i + 1))
            s = y.sigmoid()
            xy = (s[..., :2] * 2 + self.grid[i] - 0.5) * self.stride[i]
            wh = (s[..., 2:4] * 2) ** 2 * self.anchor_grid[i]
            z.append(torch.cat((xy, wh, s[..., 4:]), -1).view(bs, -1, self.no))
        return (torch.cat(z, 1), raw)


class Yolo(nn.Module):
    """Backbone (optionally with a Ghost residual or a C3TR block) and a Detect head; ``_apply`` as YOLOv5's Model."""

    def __init__(self, block="plain"):
        super().__init__()
        self.b1 = Conv(3, 32, 3, 2)
        self.b2 = Conv(32, 64, 3, 2)
        if block == "ghost":
            self.mid = GhostBottleneck(64)
        elif block == "transformer":
            self.mid = C3TR(64, 64)
        else:
            self.mid = Conv(64, 64, 3)
        self.detect = Detect(3, (32, 64))

    def forward(self, x):
        p1 = self.b1(x)
        return self.detect([p1, self.mid(self.b2(p1))])

    def _apply(self, fn, *args, **kwargs):
        self = super()._apply(fn, *args, **kwargs)
        d = self.detect
        d.stride = fn(d.stride)
        d.grid = list(map(fn, d.grid))
        d.anchor_grid = list(map(fn, d.anchor_grid))
        return self


def _model(block="plain", act=None):
    if act is not None:
        Conv.act_module = act
    try:
        torch.manual_seed(0)
        model = Yolo(block).eval()
    finally:
        Conv.act_module = nn.SiLU()
    with torch.no_grad():
        model(torch.zeros(1, 3, 64, 64))  # fills the 5-D grids, as edgekit's probe forward does
    return model


def _conv_widths(model):
    return {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def test_recovery_runs_on_a_model_whose_apply_converts_5d_grids():
    model = _model()
    assert model.detect.grid[0].dim() == 5
    result = prune_model(model, torch.rand(1, 3, 64, 64), PruneConfig(ratio=0.5, alignment=8))
    assert result.report.ok, result.report.problems
    torch.manual_seed(3)
    stats = recover(result.model, model, [torch.rand(1, 3, 64, 64) for _ in range(4)], steps=2, progress=False, layout="yolov5", batch_size=2)
    assert stats["steps"] == 2
    # The student is back in the ordinary layout, its grids untouched.
    assert all(p.is_contiguous() for p in result.model.parameters())
    assert result.model.detect.grid[0].shape == (1, 2, 32, 32, 2)
    assert result.model(torch.rand(1, 3, 64, 64))[0].shape == model(torch.rand(1, 3, 64, 64))[0].shape


@pytest.mark.parametrize("ratio", [0.25, 0.5])
def test_ghost_residual_prunes_to_a_model_that_runs_and_keeps_what_it_reports(ratio):
    model = _model("ghost")
    result = prune_model(model, torch.rand(1, 3, 64, 64), PruneConfig(ratio=ratio, alignment=8))
    report = result.report
    assert report.ok, report.problems
    x = torch.rand(1, 3, 64, 64)
    assert result.model(x)[0].shape == model(x)[0].shape
    widths = _conv_widths(result.model)
    rows = {r.name: r for r in report.layers}
    for name, row in rows.items():
        # What the report says is what the model has, and alignment never removes channels.
        assert row.out_after == widths[name], name
        if row.added_by_alignment is not None:
            assert row.added_by_alignment >= 0, (name, row)
        assert row.fixed or widths[name] % 8 == 0, (name, widths[name])
    assert report.params_after < report.params_before


def test_ghost_tied_channels_are_left_unpruned_and_named():
    report = prune_model(_model("ghost"), torch.rand(1, 3, 64, 64), PruneConfig(ratio=0.5, alignment=8)).report
    excluded = {e["group"]: e for e in report.excluded}
    assert excluded, "the residual through the GhostConv pair must be found"
    assert all(e["reason"] for e in excluded.values())
    assert any("mid" in e["group"] or "b2" in e["group"] for e in excluded.values())
    assert report.to_dict()["excluded"] == report.excluded


def test_block_reshaping_with_a_stored_channel_count_is_left_unpruned_not_refused():
    model = _model("transformer")
    result = prune_model(model, torch.rand(1, 3, 64, 64), PruneConfig(ratio=0.5, alignment=8))
    report = result.report
    assert report.ok, report.problems
    # The group that feeds the stored-width reshape (rooted at whichever of its layers comes first) is named.
    assert len(report.excluded) == 1, report.excluded
    (entry,) = report.excluded
    assert entry["group"].startswith("mid.") and entry["block"].startswith("mid")
    assert "failed to run" in entry["reason"] and "[1, 32, 16, 16]" in entry["reason"]
    widths = _conv_widths(result.model)
    assert widths["mid.cv1.conv"] == 32  # left whole
    assert widths["b1.conv"] < 32  # the rest of the model is still pruned
    x = torch.rand(1, 3, 64, 64)
    assert result.model(x)[0].shape == model(x)[0].shape


def _expected_conv_macs(model, size=64):
    """Multiply-accumulates of every conv, by hand: out elements x (in channels / groups) x kernel area."""
    total, x = 0, torch.zeros(1, 3, size, size)
    outs = {}
    hooks = [m.register_forward_hook(lambda mod, i, o, n=n: outs.__setitem__(n, o)) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    for n, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            total += outs[n].numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
    return total


def test_macs_count_convs_only_and_do_not_depend_on_the_activation():
    silu, leaky = _model(act=nn.SiLU()), _model(act=nn.LeakyReLU(0.1))
    x = torch.zeros(1, 3, 64, 64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        macs_silu, params = count_macs_params(silu, x)
        macs_leaky, _ = count_macs_params(leaky, x)
    assert macs_silu == macs_leaky == _expected_conv_macs(silu)
    assert params == sum(p.numel() for p in silu.parameters())
    assert not [w for w in caught if "flops" in str(w.message)]
    report = prune_model(leaky, x, PruneConfig(ratio=0.5, alignment=8)).report
    assert report.macs_before == macs_leaky and report.to_dict()["macs"]["counts"].startswith("multiply-accumulates of conv, linear")


def test_macs_count_linear_and_attention_matmuls():
    x = torch.zeros(10, 2, 16)  # (L, N, E): sequence-first, as YOLOv5's TransformerLayer
    macs, _ = count_macs_params(TransformerLayer(16, 4), x)
    tokens, e = 10 * 2, 16
    linears = 5 * tokens * e * e  # q, k, v, fc1, fc2
    attention = 3 * tokens * e * e + tokens * e * e + 2 * 2 * 10 * 10 * e  # in/out projections, q@k^T and attn@v
    assert macs == linears + attention


def test_a_refused_pruning_spends_no_recovery_time(zoo, small_images):
    from edgekit.contract.errors import EdgekitError
    from edgekit.host.prune.run import prune_and_recover

    def refuse(result):
        if not result.report.ok:
            raise EdgekitError("refused: %s" % result.report.problems[0], "fix it")

    started = time.time()
    with pytest.raises(EdgekitError, match="refused: layer 'c.0' keeps 4"):
        prune_and_recover(zoo.Unaligned().eval(), PruneConfig(ratio=0.5, alignment=8), (32, 32), small_images, recover_time_s=30.0, check=refuse)
    assert time.time() - started < 20.0
