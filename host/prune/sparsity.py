"""Weight sparsity, reported for what it is.

- ``unstructured``: the smallest-magnitude fraction of each conv/linear
  layer's weights becomes zero (``torch.nn.utils.prune.l1_unstructured``, what
  the seed experiments did). Dense runtimes multiply zeros like any other
  number: the model does not get faster, and the report says so.
- ``2:4``: in every run of 4 consecutive input channels (per output channel
  and kernel position) the 2 smallest weights become zero, the pattern the
  sparse tensor cores of Ampere GPUs (Jetson Orin) execute. The report marks
  it (``tensorrt_sparse_weights``) so the device builds its TensorRT engine
  with sparse weights enabled. Layers whose input channels per group are not
  a multiple of 4 (the first conv, depthwise convs) are left dense and listed.

The masks are returned so training after this (distillation, fine-tuning)
can keep the zeros (:func:`reapply_masks`).
"""
from typing import Dict, List, Sequence, Tuple

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from .graph import LAYER_TYPES

Masks = Dict[str, torch.Tensor]


def _layers(model: nn.Module, names: Sequence[str]) -> List[Tuple[str, nn.Module]]:
    wanted = set(names)
    return [(n, m) for n, m in model.named_modules() if n in wanted and isinstance(m, LAYER_TYPES)]


def apply_unstructured(model: nn.Module, ratio: float, names: Sequence[str]) -> Masks:
    masks: Masks = {}
    for name, m in _layers(model, names):
        torch_prune.l1_unstructured(m, "weight", amount=float(ratio))
        masks[name] = m.weight_mask.detach().bool().clone()
        torch_prune.remove(m, "weight")
    return masks


def two_four_mask(weight: torch.Tensor) -> torch.Tensor:
    """Keep the 2 largest |w| of every 4 consecutive input channels (dim 1), per output channel and kernel position."""
    w = weight.detach()
    moved = w.movedim(1, -1)  # (out, *kernel, in)
    groups = moved.abs().reshape(-1, 4)
    top = groups.topk(2, dim=1).indices
    keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(1, top, True)
    return keep.reshape(moved.shape).movedim(-1, 1).contiguous()


def apply_two_four(model: nn.Module, names: Sequence[str]) -> Tuple[Masks, List[str]]:
    masks: Masks = {}
    skipped: List[str] = []
    for name, m in _layers(model, names):
        if isinstance(m, nn.modules.conv._ConvNd) and m.transposed:
            skipped.append(name)
            continue
        if m.weight.shape[1] % 4:
            skipped.append(name)
            continue
        mask = two_four_mask(m.weight)
        with torch.no_grad():
            m.weight.mul_(mask)
        masks[name] = mask
    return masks, skipped


def reapply_masks(model: nn.Module, masks: Masks) -> None:
    """Zero the masked weights again (call after each optimiser step when training a sparse model)."""
    if not masks:
        return
    mods = dict(model.named_modules())
    with torch.no_grad():
        for name, mask in masks.items():
            m = mods.get(name)
            if m is not None and m.weight.shape == mask.shape:
                m.weight.mul_(mask)


def is_two_four(weight: torch.Tensor) -> bool:
    if weight.shape[1] % 4:
        return False
    groups = (weight.detach().movedim(1, -1).reshape(-1, 4) != 0).sum(1)
    return bool((groups <= 2).all())


def measure(model: nn.Module, kind: str, masks: Masks, names: Sequence[str], ratio: float = 0.0, skipped: Sequence[str] = ()) -> Dict[str, object]:
    """Zero fractions as found in the weights now (not as asked for)."""
    mods = dict(model.named_modules())
    zeros = total = 0
    s_zeros = s_total = 0
    for name, m in _layers(model, names):
        w = m.weight.detach()
        z = int((w == 0).sum())
        zeros += z
        total += w.numel()
        if name in masks:
            s_zeros += z
            s_total += w.numel()
    info: Dict[str, object] = {
        "kind": kind,
        "layers": len(masks),
        "zero_fraction": round(s_zeros / float(s_total), 6) if s_total else 0.0,
        "zero_fraction_all_weights": round(zeros / float(total), 6) if total else 0.0,
        "skipped": list(skipped),
    }
    if kind == "unstructured":
        info["ratio"] = ratio
        info["dense_speedup"] = False
        info["summary"] = (
            "%.1f%% of conv/linear weights are zero (%d layers). Dense runtimes (ONNX Runtime, TensorRT without sparsity) "
            "compute zeros like any other weight, so latency will not improve; only the structured pruning above makes the model faster, "
            "and the file shrinks only when compressed." % (100.0 * info["zero_fraction_all_weights"], len(masks))  # type: ignore[operator]
        )
    else:
        pattern_ok = all(is_two_four(mods[n].weight) for n in masks)
        info["pattern_ok"] = pattern_ok
        info["tensorrt_sparse_weights"] = True
        info["summary"] = (
            "2:4 pattern in %d layers (%.1f%% of their weights zero; %d layers left dense: %s). The bundle asks TensorRT to build "
            "with sparse weights (Ampere/Orin sparse tensor cores); other runtimes will not run faster."
            % (len(masks), 100.0 * info["zero_fraction"], len(skipped), ", ".join(skipped[:3]) + (" ..." if len(skipped) > 3 else ""))  # type: ignore[operator]
        )
    return info
