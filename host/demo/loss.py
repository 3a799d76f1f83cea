"""YOLOv5's training loss for the anchor-based Detect head, written for edgekit.

For each scale, a target is assigned to every anchor whose width and height
are both within ``anchor_t`` times of its own, in its own grid cell and in the
two neighbouring cells nearest its centre (three cells per anchor, which
triples the positives and speeds up learning). Box loss is 1 - CIoU of the
decoded prediction, objectness is BCE against that IoU (so confidence learns to
predict localisation quality, which is what mAP@0.5:0.95 rewards), and classes
are BCE against one-hot labels.

Used by the demo's training script and reusable for accuracy recovery after
pruning of any model with the same head (``model.detect``).
"""
import math
from typing import Dict, List, Sequence, Tuple

import torch
from torch import nn


def bbox_ciou(box1: torch.Tensor, box2: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Complete IoU of paired (N, 4) cx, cy, w, h boxes (Zheng et al., 2020)."""
    (x1, y1, w1, h1), (x2, y2, w2, h2) = box1.unbind(-1), box2.unbind(-1)
    b1x1, b1x2, b1y1, b1y2 = x1 - w1 / 2, x1 + w1 / 2, y1 - h1 / 2, y1 + h1 / 2
    b2x1, b2x2, b2y1, b2y2 = x2 - w2 / 2, x2 + w2 / 2, y2 - h2 / 2, y2 + h2 / 2
    inter = (torch.min(b1x2, b2x2) - torch.max(b1x1, b2x1)).clamp(0) * (torch.min(b1y2, b2y2) - torch.max(b1y1, b2y1)).clamp(0)
    union = w1 * h1 + w2 * h2 - inter + eps
    iou = inter / union
    cw = torch.max(b1x2, b2x2) - torch.min(b1x1, b2x1)  # enclosing box
    ch = torch.max(b1y2, b2y2) - torch.min(b1y1, b2y1)
    c2 = cw ** 2 + ch ** 2 + eps
    rho2 = (x2 - x1) ** 2 + (y2 - y1) ** 2  # squared centre distance
    v = (4 / math.pi ** 2) * (torch.atan(w2 / (h2 + eps)) - torch.atan(w1 / (h1 + eps))) ** 2
    with torch.no_grad():
        alpha = v / (v - iou + (1 + eps))
    return iou - (rho2 / c2 + v * alpha)


class YoloLoss(object):
    """Loss of a Detect head's raw train-mode outputs against targets.

    targets: (T, 6) float rows of (image index in batch, class index, cx, cy, w, h)
    in input pixels. Gains follow YOLOv5's defaults scaled to image size and
    class count.
    """

    def __init__(
        self,
        detect: nn.Module,
        image_size: int = 320,
        anchor_t: float = 4.0,
        box_gain: float = 0.05,
        obj_gain: float = 1.0,
        cls_gain: float = 0.5,
        balance: Sequence[float] = (4.0, 1.0, 0.4),
    ) -> None:
        nl = int(detect.nl)
        self.nc = int(detect.nc)
        self.na = int(detect.na)
        self.nl = nl
        self.stride = detect.stride.detach().clone().float()
        # Anchors in grid units of their own scale.
        self.anchors = detect.anchors.detach().clone().float() / self.stride.view(-1, 1, 1)
        self.anchor_t = anchor_t
        self.box_gain = box_gain * 3.0 / nl
        self.obj_gain = obj_gain * (image_size / 640.0) ** 2 * 3.0 / nl
        self.cls_gain = cls_gain * self.nc / 80.0 * 3.0 / nl
        self.balance = list(balance)
        self.bce = nn.BCEWithLogitsLoss()

    def __call__(self, preds: List[torch.Tensor], targets: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, float]]:
        bs = preds[0].shape[0]
        lbox = torch.zeros((), dtype=torch.float32)
        lobj = torch.zeros((), dtype=torch.float32)
        lcls = torch.zeros((), dtype=torch.float32)
        for i, p in enumerate(preds):
            p = p.float()
            b, a, gj, gi, tbox, tcls = self._assign(i, p.shape, targets)
            tobj = torch.zeros(p.shape[:4], dtype=torch.float32)
            if b.numel():
                ps = p[b, a, gj, gi]
                pxy = ps[:, :2].sigmoid() * 2 - 0.5
                pwh = (ps[:, 2:4].sigmoid() * 2) ** 2 * self.anchors[i][a]
                iou = bbox_ciou(torch.cat((pxy, pwh), 1), tbox)
                lbox = lbox + (1.0 - iou).mean()
                # Where several targets share a cell, the best-fitting one writes last and wins.
                order = iou.detach().argsort()
                tobj[b[order], a[order], gj[order], gi[order]] = iou.detach()[order].clamp(0)
                if self.nc > 1:
                    onehot = torch.zeros_like(ps[:, 5:])
                    onehot[torch.arange(onehot.shape[0]), tcls] = 1.0
                    lcls = lcls + self.bce(ps[:, 5:], onehot)
            lobj = lobj + self.bce(p[..., 4], tobj) * self.balance[i]
        lbox, lobj, lcls = lbox * self.box_gain, lobj * self.obj_gain, lcls * self.cls_gain
        total = (lbox + lobj + lcls) * bs
        return total, {"box": float(lbox.detach()), "obj": float(lobj.detach()), "cls": float(lcls.detach())}

    def _assign(self, i: int, shape: torch.Size, targets: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """Which (image, anchor, cell) predicts which target at scale ``i``."""
        _, na, ny, nx, _ = shape
        empty = torch.zeros(0, dtype=torch.long)
        if targets.shape[0] == 0:
            return empty, empty, empty, empty, torch.zeros(0, 4), empty
        t = targets.clone()
        t[:, 2:6] /= self.stride[i]
        anchors = self.anchors[i]  # (na, 2)
        ratio = t[None, :, 4:6] / anchors[:, None]  # (na, T, 2)
        match = torch.max(ratio, 1.0 / ratio).max(2).values < self.anchor_t  # (na, T)
        a_idx, t_idx = match.nonzero(as_tuple=True)
        t = t[t_idx]
        gxy = t[:, 2:4]
        frac = gxy % 1.0
        # The cell itself, plus the horizontal and vertical neighbour nearest the centre.
        left = (frac[:, 0] < 0.5) & (gxy[:, 0] > 1.0)
        up = (frac[:, 1] < 0.5) & (gxy[:, 1] > 1.0)
        right = (frac[:, 0] > 0.5) & (gxy[:, 0] < nx - 1.0)
        down = (frac[:, 1] > 0.5) & (gxy[:, 1] < ny - 1.0)
        offsets = torch.tensor([[0.0, 0.0], [0.5, 0.0], [0.0, 0.5], [-0.5, 0.0], [0.0, -0.5]])
        masks = torch.stack((torch.ones_like(left), left, up, right, down))  # (5, M)
        sel = masks.nonzero(as_tuple=True)
        t_sel = t[sel[1]]
        a_sel = a_idx[sel[1]]
        gxy_sel = t_sel[:, 2:4]
        gij = (gxy_sel - offsets[sel[0]]).long()
        gi = gij[:, 0].clamp(0, nx - 1)
        gj = gij[:, 1].clamp(0, ny - 1)
        tbox = torch.cat((gxy_sel - torch.stack((gi, gj), 1).float(), t_sel[:, 4:6]), 1)
        return t_sel[:, 0].long(), a_sel, gj, gi, tbox, t_sel[:, 1].long()
