"""The demo detector: a small YOLOv5-style network written in the project.

Conv-BN-SiLU, C3 blocks with residual bottlenecks, concatenations, SPPF, a PAN
neck and a three-scale anchor-based Detect head: the same couplings (residual
adds, concats) that make pruning a real YOLOv5 hard, in a model that trains on
a CPU in minutes.

Train mode returns the raw per-scale maps (bs, anchors, ny, nx, 5 + classes);
eval mode returns YOLOv5's export layout (bs, N, 5 + classes): decoded cx, cy,
w, h in input pixels, then objectness and class scores after sigmoid.
"""
from typing import List, Optional, Sequence, Tuple

import torch
from torch import nn

# (w, h) anchor pairs in input pixels per scale (P3/8, P4/16, P5/32), fitted to
# the demo data's boxes at 320x320 (k-means on log w, h of the letterboxed boxes;
# every box is within 4x of some anchor, YOLOv5's matching rule).
DEFAULT_ANCHORS: Tuple[Tuple[float, ...], ...] = (
    (8, 10, 12, 13, 16, 16),
    (21, 22, 27, 30, 39, 41),
    (53, 58, 82, 86, 122, 129),
)


def autopad(k: int, p: Optional[int] = None) -> int:
    return k // 2 if p is None else p


class Conv(nn.Module):
    """Conv2d -> BatchNorm2d -> SiLU."""

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1, p: Optional[int] = None, g: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, autopad(k, p), groups=g, bias=False)
        self.bn = nn.BatchNorm2d(c2, eps=1e-3, momentum=0.03)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    def __init__(self, c1: int, c2: int, shortcut: bool = True, e: float = 1.0) -> None:
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c_, c2, 3, 1)
        self.add = shortcut and c1 == c2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C3(nn.Module):
    """CSP bottleneck with three convs: two branches, concatenated, then fused."""

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = True, e: float = 0.5) -> None:
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c1, c_, 1, 1)
        self.cv3 = Conv(2 * c_, c2, 1)
        self.m = nn.Sequential(*(Bottleneck(c_, c_, shortcut, e=1.0) for _ in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


class SPPF(nn.Module):
    def __init__(self, c1: int, c2: int, k: int = 5) -> None:
        super().__init__()
        c_ = c1 // 2
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c_ * 4, c2, 1, 1)
        self.m = nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cv1(x)
        y1 = self.m(x)
        y2 = self.m(y1)
        return self.cv2(torch.cat((x, y1, y2, self.m(y2)), 1))


class Detect(nn.Module):
    """Anchor-based head; output convs are fixed by the task (never pruned)."""

    def __init__(self, nc: int, anchors: Sequence[Sequence[float]], ch: Sequence[int], strides: Sequence[int] = (8, 16, 32)) -> None:
        super().__init__()
        self.nc = nc
        self.no = nc + 5
        self.nl = len(anchors)
        self.na = len(anchors[0]) // 2
        self.register_buffer("stride", torch.tensor(strides, dtype=torch.float32))
        self.register_buffer("anchors", torch.tensor(anchors, dtype=torch.float32).view(self.nl, self.na, 2))
        self.m = nn.ModuleList(nn.Conv2d(c, self.no * self.na, 1) for c in ch)

    def forward(self, xs: List[torch.Tensor]):  # type: ignore[override]
        raw = []
        for i in range(self.nl):
            x = self.m[i](xs[i])
            bs, _, ny, nx = x.shape
            raw.append(x.view(bs, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous())
        if self.training:
            return raw
        return torch.cat([self.decode(r, i) for i, r in enumerate(raw)], 1)

    def decode(self, raw: torch.Tensor, i: int) -> torch.Tensor:
        bs, na, ny, nx, no = raw.shape
        yv, xv = torch.meshgrid(
            torch.arange(ny, device=raw.device, dtype=raw.dtype), torch.arange(nx, device=raw.device, dtype=raw.dtype), indexing="ij"
        )
        grid = torch.stack((xv, yv), 2).view(1, 1, ny, nx, 2) - 0.5
        anchor_grid = self.anchors[i].view(1, na, 1, 1, 2)
        y = raw.sigmoid()
        xy = (y[..., 0:2] * 2 + grid) * self.stride[i]
        wh = (y[..., 2:4] * 2) ** 2 * anchor_grid
        return torch.cat((xy, wh, y[..., 4:]), -1).view(bs, na * ny * nx, no)

    def initialize_biases(self, image_size: int = 320) -> None:
        """YOLOv5's prior: objectness for ~8 objects per 640 image, uniform classes."""
        import math

        for conv, s in zip(self.m, self.stride.tolist()):
            b = conv.bias.view(self.na, -1)
            with torch.no_grad():
                b[:, 4] += math.log(8 / (image_size / s) ** 2)
                b[:, 5:] += math.log(0.6 / (self.nc - 0.99))


class DemoDetector(nn.Module):
    """YOLOv5-style detector; ``width`` are the five stage widths, ``depth`` C3 repeats."""

    def __init__(
        self,
        num_classes: int = 8,
        width: Sequence[int] = (16, 32, 64, 128, 256),
        depth: Sequence[int] = (1, 2, 3, 1),
        anchors: Sequence[Sequence[float]] = DEFAULT_ANCHORS,
    ) -> None:
        super().__init__()
        w0, w1, w2, w3, w4 = width
        d1, d2, d3, d4 = depth
        self.num_classes = num_classes
        # backbone
        self.stem = Conv(3, w0, 6, 2, 2)  # /2
        self.down1 = Conv(w0, w1, 3, 2)  # /4
        self.c3_1 = C3(w1, w1, d1)
        self.down2 = Conv(w1, w2, 3, 2)  # /8  -> P3
        self.c3_2 = C3(w2, w2, d2)
        self.down3 = Conv(w2, w3, 3, 2)  # /16 -> P4
        self.c3_3 = C3(w3, w3, d3)
        self.down4 = Conv(w3, w4, 3, 2)  # /32 -> P5
        self.c3_4 = C3(w4, w4, d4)
        self.sppf = SPPF(w4, w4, 5)
        # neck (PAN): top-down then bottom-up, residual-free C3 as in YOLOv5
        self.lat5 = Conv(w4, w3, 1, 1)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.c3_td4 = C3(w3 * 2, w3, d4, shortcut=False)
        self.lat4 = Conv(w3, w2, 1, 1)
        self.c3_td3 = C3(w2 * 2, w2, d4, shortcut=False)  # P3 out
        self.bu3 = Conv(w2, w2, 3, 2)
        self.c3_bu4 = C3(w2 * 2, w3, d4, shortcut=False)  # P4 out
        self.bu4 = Conv(w3, w3, 3, 2)
        self.c3_bu5 = C3(w3 * 2, w4, d4, shortcut=False)  # P5 out
        self.detect = Detect(num_classes, anchors, (w2, w3, w4))

    def forward(self, x: torch.Tensor):  # type: ignore[override]
        x = self.c3_1(self.down1(self.stem(x)))
        p3 = self.c3_2(self.down2(x))
        p4 = self.c3_3(self.down3(p3))
        p5 = self.sppf(self.c3_4(self.down4(p4)))
        l5 = self.lat5(p5)
        t4 = self.c3_td4(torch.cat((self.up(l5), p4), 1))
        l4 = self.lat4(t4)
        o3 = self.c3_td3(torch.cat((self.up(l4), p3), 1))
        o4 = self.c3_bu4(torch.cat((self.bu3(o3), l4), 1))
        o5 = self.c3_bu5(torch.cat((self.bu4(o4), l5), 1))
        return self.detect([o3, o4, o5])
