"""Training loss of the anchor-free demo head (``DecoupledHead``), after YOLOv8's.

Assignment is YOLOv8's task-aligned one (Feng et al., TOOD 2021), kept small:
a cell can take a target only if its centre lies inside the target's box; among
those, each target takes the ``topk`` cells with the highest alignment
``score ** alpha * iou ** beta`` (score: the predicted probability of the
target's class, iou: of the predicted box); a cell claimed by several targets
keeps the one it overlaps most. Class targets are soft: the alignment,
normalised per target so that its best cell gets that cell's IoU. Box loss is
1 - CIoU weighted by those soft targets; classes are BCE over every cell.

targets: (T, 6) float rows of (image index in batch, class index, cx, cy, w, h)
in input pixels, as :class:`edgekit.host.demo.train.LetterboxedSet` makes them.
"""
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .loss import bbox_ciou
from .model_v8 import ltrb_to_xywh, make_anchors

_EPS = 1e-9


def _xywh_to_xyxy(b: torch.Tensor) -> torch.Tensor:
    return torch.cat((b[..., :2] - b[..., 2:] / 2, b[..., :2] + b[..., 2:] / 2), -1)


def _pairwise_iou(gt: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """IoU of (B, M, 4) against (B, N, 4) xyxy boxes -> (B, M, N)."""
    g, p = gt[:, :, None], pred[:, None]
    wh = (torch.min(g[..., 2:], p[..., 2:]) - torch.max(g[..., :2], p[..., :2])).clamp(0)
    inter = wh[..., 0] * wh[..., 1]
    area_g = (g[..., 2] - g[..., 0]) * (g[..., 3] - g[..., 1])
    area_p = (p[..., 2] - p[..., 0]).clamp(0) * (p[..., 3] - p[..., 1]).clamp(0)
    return inter / (area_g + area_p - inter + 1e-7)


class AnchorFreeLoss(object):
    """Loss of a DecoupledHead's raw train-mode outputs against targets; returns (total * bs, parts)."""

    def __init__(self, detect: nn.Module, topk: int = 10, alpha: float = 0.5, beta: float = 6.0, box_gain: float = 7.5, cls_gain: float = 0.5) -> None:
        self.nc = int(detect.nc)
        self.strides = [float(s) for s in detect.stride.tolist()]
        self.topk, self.alpha, self.beta = topk, alpha, beta
        self.box_gain, self.cls_gain = box_gain, cls_gain

    def __call__(self, preds: List[torch.Tensor], targets: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, float]]:
        bs = preds[0].shape[0]
        shapes = [(int(p.shape[2]), int(p.shape[3])) for p in preds]
        flat = torch.cat([p.float().flatten(2) for p in preds], 2).transpose(1, 2)  # (B, N, 4 + nc)
        points, strides = make_anchors(shapes, self.strides, flat.dtype, flat.device)
        pred_xywh = ltrb_to_xywh(F.softplus(flat[..., :4]) * strides, points)
        pred_logits = flat[..., 4:]
        gt_cls, gt_xyxy, gt_valid = self._pad_targets(targets, bs)
        with torch.no_grad():
            fg, tgt_idx, tgt_scores = self._assign(pred_logits.sigmoid(), _xywh_to_xyxy(pred_xywh), points, gt_cls, gt_xyxy, gt_valid)
        score_sum = tgt_scores.sum().clamp_min(1.0)
        lcls = F.binary_cross_entropy_with_logits(pred_logits, tgt_scores, reduction="sum") / score_sum
        lbox = flat.new_zeros(())
        if bool(fg.any()):
            tgt_xyxy = torch.gather(gt_xyxy, 1, tgt_idx[..., None].expand(-1, -1, 4))
            t = tgt_xyxy[fg]
            t_xywh = torch.cat(((t[:, :2] + t[:, 2:]) / 2, t[:, 2:] - t[:, :2]), 1)
            weight = tgt_scores.sum(-1)[fg]
            lbox = ((1.0 - bbox_ciou(pred_xywh[fg], t_xywh)) * weight).sum() / score_sum
        lbox, lcls = lbox * self.box_gain, lcls * self.cls_gain
        return (lbox + lcls) * bs, {"box": float(lbox.detach()), "obj": 0.0, "cls": float(lcls.detach())}

    def _pad_targets(self, targets: torch.Tensor, bs: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, M) classes, (B, M, 4) xyxy boxes and (B, M) validity, M = most targets in one image."""
        img = targets[:, 0].long()
        counts = torch.bincount(img, minlength=bs) if targets.shape[0] else torch.zeros(bs, dtype=torch.long)
        m = max(int(counts.max()) if counts.numel() else 0, 1)
        cls = torch.zeros((bs, m), dtype=torch.long)
        boxes = torch.zeros((bs, m, 4))
        valid = torch.zeros((bs, m), dtype=torch.bool)
        if targets.shape[0]:
            order = torch.argsort(img, stable=True)
            img, t = img[order], targets[order]
            starts = torch.cumsum(counts, 0) - counts
            slot = torch.arange(t.shape[0]) - starts[img]
            cls[img, slot] = t[:, 1].long()
            boxes[img, slot] = _xywh_to_xyxy(t[:, 2:6])
            valid[img, slot] = True
        return cls, boxes, valid

    def _assign(self, scores, pred_xyxy, points, gt_cls, gt_xyxy, gt_valid) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Task-aligned assignment -> foreground mask (B, N), target index (B, N), soft class targets (B, N, nc)."""
        bs, n, _ = scores.shape
        m = gt_cls.shape[1]
        lt = points[None, None] - gt_xyxy[:, :, None, :2]
        rb = gt_xyxy[:, :, None, 2:] - points[None, None]
        inside = (torch.cat((lt, rb), -1).min(-1).values > 1e-9) & gt_valid[..., None]  # (B, M, N)
        iou = _pairwise_iou(gt_xyxy, pred_xyxy).clamp(0) * inside
        cls_score = torch.gather(scores.transpose(1, 2), 1, gt_cls[..., None].expand(-1, -1, n))  # (B, M, N)
        align = cls_score.pow(self.alpha) * iou.pow(self.beta) * inside
        k = min(self.topk, n)
        top = align.topk(k, dim=-1).indices
        chosen = torch.zeros_like(inside).scatter_(-1, top, True) & inside
        # A cell claimed by several targets keeps the one it overlaps most.
        multi = chosen.sum(1, keepdim=True) > 1
        best = F.one_hot((iou * chosen).argmax(1), m).transpose(1, 2).bool()
        chosen = torch.where(multi, best & chosen, chosen)
        fg = chosen.any(1)
        tgt_idx = chosen.float().argmax(1)  # (B, N)
        align = align * chosen
        iou = iou * chosen
        norm = align * (iou.amax(-1, keepdim=True) / (align.amax(-1, keepdim=True) + _EPS))
        norm = norm.amax(1)  # (B, N)
        tgt_cls = torch.gather(gt_cls, 1, tgt_idx)
        tgt_scores = F.one_hot(tgt_cls, self.nc).float() * (norm * fg)[..., None]
        return fg, tgt_idx, tgt_scores
