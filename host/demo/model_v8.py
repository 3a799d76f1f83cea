"""The second demo detector (``--model demo-v8``): a small YOLOv8-style network.

C2f blocks (one 1x1 conv whose output is cut in two with a real
``chunk(2, 1)``, a chain of bottlenecks on the second half, every piece
concatenated and fused), SPPF, a PAN neck without lateral convs, and an
anchor-free decoupled head: per scale one conv branch for the box and one for
the classes. The box branch regresses plain distances to the four box sides
(left, top, right, bottom; softplus, in strides) instead of YOLOv8's DFL
bins; everything else about the layout is YOLOv8's.

Train mode returns the raw per-scale maps (bs, 4 + classes, ny, nx); eval mode
returns Ultralytics' export layout ``yolov8``: (bs, 4 + classes, N), decoded
cx, cy, w, h in input pixels, then class scores after sigmoid (no objectness).
"""
import math
from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .model import SPPF, Bottleneck, Conv


class C2f(nn.Module):
    """YOLOv8's CSP block: cv1, chunk in two, n bottlenecks on the second half, concat all, cv2."""

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = False, e: float = 0.5) -> None:
        super().__init__()
        self.c = int(c2 * e)
        self.cv1 = Conv(c1, 2 * self.c, 1, 1)
        self.cv2 = Conv((2 + n) * self.c, c2, 1)
        self.m = nn.ModuleList(Bottleneck(self.c, self.c, shortcut, e=1.0) for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = list(self.cv1(x).chunk(2, 1))
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


def make_anchors(shapes: Sequence[Tuple[int, int]], strides: Sequence[float], dtype: torch.dtype, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    """Cell centres (N, 2) in input pixels and their strides (N, 1), scale after scale, row-major."""
    points, stride_rows = [], []
    for (ny, nx), s in zip(shapes, strides):
        sy = (torch.arange(ny, device=device, dtype=dtype) + 0.5) * s
        sx = (torch.arange(nx, device=device, dtype=dtype) + 0.5) * s
        yv, xv = torch.meshgrid(sy, sx, indexing="ij")
        points.append(torch.stack((xv, yv), -1).view(-1, 2))
        stride_rows.append(torch.full((ny * nx, 1), float(s), device=device, dtype=dtype))
    return torch.cat(points, 0), torch.cat(stride_rows, 0)


def ltrb_to_xywh(dist: torch.Tensor, points: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Side distances (left, top, right, bottom, in pixels) around ``points`` -> cx, cy, w, h."""
    lt, rb = dist.narrow(dim, 0, 2), dist.narrow(dim, 2, 2)
    return torch.cat((points + (rb - lt) / 2, lt + rb), dim)


class DecoupledHead(nn.Module):
    """Anchor-free head: per scale, two 3x3 convs then a 1x1 for the box (4) and the same for the classes.

    Only the two 1x1 output convs have task-fixed channels (pruning finds them:
    their outputs reach the model output unmixed); the branch convs can be pruned.
    """

    def __init__(self, nc: int, ch: Sequence[int], strides: Sequence[int] = (8, 16, 32), box_width: int = 32, cls_width: int = 32) -> None:
        super().__init__()
        self.nc = nc
        self.no = nc + 4
        self.nl = len(ch)
        self.register_buffer("stride", torch.tensor(strides, dtype=torch.float32))
        self.box = nn.ModuleList(nn.Sequential(Conv(c, box_width, 3), Conv(box_width, box_width, 3), nn.Conv2d(box_width, 4, 1)) for c in ch)
        self.cls = nn.ModuleList(nn.Sequential(Conv(c, cls_width, 3), Conv(cls_width, cls_width, 3), nn.Conv2d(cls_width, nc, 1)) for c in ch)

    def forward(self, xs: List[torch.Tensor]):  # type: ignore[override]
        raw = [torch.cat((self.box[i](xs[i]), self.cls[i](xs[i])), 1) for i in range(self.nl)]
        if self.training:
            return raw
        return self.decode(raw)

    def decode(self, raw: List[torch.Tensor]) -> torch.Tensor:
        """(bs, 4 + nc, N): cx, cy, w, h in input pixels, then sigmoid class scores."""
        bs = raw[0].shape[0]
        shapes = [(int(r.shape[2]), int(r.shape[3])) for r in raw]
        flat = torch.cat([r.view(bs, self.no, -1) for r in raw], 2)
        points, strides = make_anchors(shapes, self.stride.tolist(), flat.dtype, flat.device)
        dist = F.softplus(flat[:, :4]) * strides.t()
        xywh = ltrb_to_xywh(dist, points.t(), dim=1)
        return torch.cat((xywh, flat[:, 4:].sigmoid()), 1)

    def initialize_biases(self, image_size: int = 320) -> None:
        """YOLOv8's priors: box distances of about a cell, ~5 objects per image spread over the classes."""
        for box, cls, s in zip(self.box, self.cls, self.stride.tolist()):
            with torch.no_grad():
                box[-1].bias.fill_(1.0)
                cls[-1].bias.fill_(math.log(5 / self.nc / (image_size / s) ** 2))


class DemoDetectorV8(nn.Module):
    """YOLOv8-style detector; ``width`` are the five stage widths, ``depth`` the C2f repeats."""

    # The edgekit output layout of eval mode (what the agent decodes).
    output_layout = "yolov8"

    def __init__(
        self,
        num_classes: int = 8,
        width: Sequence[int] = (16, 32, 64, 128, 256),
        depth: Sequence[int] = (1, 1, 2, 1),
        head_width: int = 32,
    ) -> None:
        super().__init__()
        w0, w1, w2, w3, w4 = width
        d1, d2, d3, d4 = depth
        self.num_classes = num_classes
        # backbone
        self.stem = Conv(3, w0, 3, 2)  # /2
        self.down1 = Conv(w0, w1, 3, 2)  # /4
        self.c2f_1 = C2f(w1, w1, d1, shortcut=True)
        self.down2 = Conv(w1, w2, 3, 2)  # /8  -> P3
        self.c2f_2 = C2f(w2, w2, d2, shortcut=True)
        self.down3 = Conv(w2, w3, 3, 2)  # /16 -> P4
        self.c2f_3 = C2f(w3, w3, d3, shortcut=True)
        self.down4 = Conv(w3, w4, 3, 2)  # /32 -> P5
        self.c2f_4 = C2f(w4, w4, d4, shortcut=True)
        self.sppf = SPPF(w4, w4, 5)
        # neck (PAN, as in YOLOv8: no lateral convs, residual-free C2f)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.c2f_td4 = C2f(w4 + w3, w3, d4)
        self.c2f_td3 = C2f(w3 + w2, w2, d4)  # P3 out
        self.bu3 = Conv(w2, w2, 3, 2)
        self.c2f_bu4 = C2f(w2 + w3, w3, d4)  # P4 out
        self.bu4 = Conv(w3, w3, 3, 2)
        self.c2f_bu5 = C2f(w3 + w4, w4, d4)  # P5 out
        self.detect = DecoupledHead(num_classes, (w2, w3, w4), box_width=head_width, cls_width=head_width)

    def forward(self, x: torch.Tensor):  # type: ignore[override]
        x = self.c2f_1(self.down1(self.stem(x)))
        p3 = self.c2f_2(self.down2(x))
        p4 = self.c2f_3(self.down3(p3))
        p5 = self.sppf(self.c2f_4(self.down4(p4)))
        t4 = self.c2f_td4(torch.cat((self.up(p5), p4), 1))
        o3 = self.c2f_td3(torch.cat((self.up(t4), p3), 1))
        o4 = self.c2f_bu4(torch.cat((self.bu3(o3), t4), 1))
        o5 = self.c2f_bu5(torch.cat((self.bu4(o4), p5), 1))
        return self.detect([o3, o4, o5])
