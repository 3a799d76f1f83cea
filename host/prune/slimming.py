"""Network slimming, the training half: an L1 penalty on BatchNorm scales.

Train (or fine-tune) with the penalty so that unimportant channels' scales
shrink towards zero, then prune with ``--criterion bn`` (by ``--ratio`` or
``--bn-threshold``). Inside your own training loop, either add the penalty
to the loss::

    from edgekit.host.prune import bn_l1_penalty
    loss = criterion(model(images), targets) + bn_l1_penalty(model, 6e-4)
    loss.backward(); optimizer.step()

or, as the original network-slimming code does, add its subgradient after
``backward()``::

    loss.backward()
    add_bn_l1_grad(model, 6e-4)
    optimizer.step()

6e-4 is the coefficient reported to work for YOLOv5s; larger values prune
harder but cost more accuracy.
"""
from typing import Iterable, List, Optional, Sequence

import fnmatch

import torch
from torch import nn

DEFAULT_COEFFICIENT = 6e-4


def _bn_layers(model: nn.Module, skip: Sequence[str]) -> List[nn.modules.batchnorm._BatchNorm]:
    found = []
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
            if any(fnmatch.fnmatchcase(name, p) or name.startswith(p + ".") for p in skip):
                continue
            found.append(m)
    return found


def bn_l1_penalty(model: nn.Module, coefficient: float = DEFAULT_COEFFICIENT, skip: Sequence[str] = ()) -> torch.Tensor:
    """``coefficient * sum(|gamma|)`` over the model's BatchNorm scales (skip: name patterns to leave out)."""
    layers = _bn_layers(model, skip)
    if not layers:
        return torch.zeros(())
    return coefficient * sum(m.weight.abs().sum() for m in layers)


def add_bn_l1_grad(model: nn.Module, coefficient: float = DEFAULT_COEFFICIENT, skip: Sequence[str] = ()) -> int:
    """Add ``coefficient * sign(gamma)`` to every BatchNorm scale's gradient; returns how many layers."""
    layers = _bn_layers(model, skip)
    for m in layers:
        if m.weight.grad is not None:
            m.weight.grad.add_(coefficient * torch.sign(m.weight.detach()))
    return len(layers)


def bn_scale_summary(model: nn.Module, thresholds: Optional[Iterable[float]] = None) -> dict:
    """How many BatchNorm channels sit below each threshold (to choose ``--bn-threshold``)."""
    scales = [m.weight.detach().abs().flatten() for m in _bn_layers(model, ())]
    if not scales:
        return {"channels": 0}
    allv = torch.cat(scales)
    thresholds = list(thresholds) if thresholds is not None else [1e-3, 1e-2, 5e-2, 1e-1]
    return {
        "channels": int(allv.numel()),
        "median": float(allv.median()),
        "below": {str(t): int((allv < t).sum()) for t in thresholds},
    }
