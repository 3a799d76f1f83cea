"""Sensitivity analysis: how much each group's pruning changes the model's outputs.

For each group and each trial pruning level, the channels that level would
remove are switched off by zeroing the weights that read them (the input
channels of every consuming conv/linear layer), the calibration images are
run, and the output distance to the unpruned model is the group's damage at
that level. Zeroing the readers is exactly what removing the channels does
to the computation, without rebuilding the model for each trial.
"""
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch_pruning as tp
from torch import nn
from torch_pruning.pruner import function

from .graph import is_depthwise
from .losses import distillation_loss
from .groups import Group

Curve = List[Tuple[int, float]]  # (kept slots, damage), kept slots descending


def _zero_readers(pg) -> List[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Zero the weights that read the group's channels; returns what to restore."""
    saved = []
    for dep, idxs in pg:
        m = dep.target.module
        if not idxs or not isinstance(m, nn.Module):
            continue
        w = getattr(m, "weight", None)
        if w is None:
            continue
        index = torch.as_tensor(sorted(set(int(i) for i in idxs)), dtype=torch.long)
        if dep.handler == function.prune_linear_in_channels:
            mask = torch.zeros_like(w, dtype=torch.bool)
            mask[:, index] = True
        elif dep.handler == function.prune_conv_in_channels and not is_depthwise(m):
            mask = torch.zeros_like(w, dtype=torch.bool)
            if m.transposed:
                mask[index] = True
            elif m.groups == 1:
                mask[:, index] = True
            else:  # grouped conv: input channel i is position i % (in/g) of conv group i // (in/g)
                per_in = m.in_channels // m.groups
                per_out = m.out_channels // m.groups
                for i in index.tolist():
                    g, pos = divmod(i, per_in)
                    mask[g * per_out : (g + 1) * per_out, pos] = True
        else:
            continue
        saved.append((w, mask, w.data[mask].clone()))
        w.data[mask] = 0.0
    return saved


def _restore(saved) -> None:
    for w, mask, values in saved:
        w.data[mask] = values


def trial_levels(group: Group, levels: Sequence[float], max_group_ratio: float) -> List[int]:
    """Aligned kept sizes to try for a group: one per level, plus the forced alignment of an unaligned group."""
    floor_keep = group.aligned_keep(group.slots * (1.0 - max_group_ratio))
    keeps = set()
    if group.max_aligned and group.max_aligned < group.slots:
        keeps.add(group.max_aligned)
    for level in levels:
        k = group.aligned_keep(group.slots - int(group.slots * level))
        keeps.add(max(k, floor_keep))
    return sorted((k for k in keeps if k < group.slots), reverse=True)


def measure_damage(
    model: nn.Module,
    graph: tp.DependencyGraph,
    groups: Sequence[Group],
    images: torch.Tensor,
    levels: Sequence[float],
    max_group_ratio: float,
    progress: Optional[Callable[[int, int], None]] = None,
    layout: Optional[str] = None,
) -> Dict[str, Curve]:
    """Damage curve of every group: [(slots kept, damage)], starting at (all slots, 0).

    The damage is the distillation loss between the trial's outputs and the
    unpruned model's (see losses.py; ``layout`` picks it), minus that loss at
    zero change, so that it measures what recovery would have to undo.
    """
    with torch.no_grad():
        reference = model(images)
        distance = distillation_loss(layout, reference)
        baseline = float(distance(reference, reference))
    curves: Dict[str, Curve] = {}
    trials = [(g, trial_levels(g, levels, max_group_ratio)) for g in groups]
    total = sum(len(k) for _, k in trials)
    done = 0
    for g, keeps in trials:
        curve: Curve = [(g.slots, 0.0)]
        for k in keeps:
            pg = graph.get_pruning_group(g.root, g.prune_fn, g.prune_indices(k))
            saved = _zero_readers(pg)
            try:
                with torch.no_grad():
                    damage = max(0.0, float(distance(model(images), reference)) - baseline)
            finally:
                _restore(saved)
            curve.append((k, damage))
            done += 1
            if progress:
                progress(done, total)
        curves[g.name] = curve
    return curves


def interpolate(curve: Curve, keep: int) -> float:
    """Damage at ``keep`` slots, linear between measured points (curve sorted by keep, descending)."""
    for (k_hi, d_hi), (k_lo, d_lo) in zip(curve, curve[1:]):
        if k_lo <= keep <= k_hi:
            if k_hi == k_lo:
                return d_lo
            t = (k_hi - keep) / float(k_hi - k_lo)
            return d_hi + t * (d_lo - d_hi)
    return curve[-1][1] if keep < curve[-1][0] else 0.0
