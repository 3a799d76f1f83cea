"""Pruning groups: channels that must be removed together, with their importance.

A group is Torch-Pruning's unit: the output channels of a root layer plus
every coupled layer (its BatchNorm, the consumers' input channels, the other
members of a residual sum, the slices of a concatenation). Each group is cut
into ``ch_groups`` equal slots when grouped convolutions are involved; pruning
removes the same slot positions in every conv group, so a group's size is
counted in slots and its kept size is a whole number of alignment units.
"""
import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch_pruning as tp
from torch import nn
from torch_pruning.pruner import function

from .graph import LAYER_TYPES, is_depthwise, module_names

_L1 = tp.importance.GroupMagnitudeImportance(p=1, group_reduction="mean", normalizer=None)
_BN = tp.importance.BNScaleImportance(group_reduction="mean", normalizer=None)


@dataclass
class Group:
    """One prunable group (before pruning)."""

    name: str  # the root layer's name: the group's id
    root: nn.Module
    prune_fn: object
    channels: int  # root output channels
    ch_groups: int  # conv groups the channels are split into (1 for plain convs)
    unit: int  # kept slots must be a multiple of this
    importance: torch.Tensor  # per slot, higher = more important
    by: str  # the criterion that produced the importance ("l1" or "bn")
    out_layers: List[Tuple[str, int]] = field(default_factory=list)  # (conv/linear/bn name, channels of it in the group)
    in_layers: List[Tuple[str, int]] = field(default_factory=list)  # (conv/linear name, input channels of it in the group)

    @property
    def slots(self) -> int:
        return self.channels // self.ch_groups

    @property
    def max_aligned(self) -> int:
        """The largest aligned slot count not above the group's size (0: cannot be aligned)."""
        return (self.slots // self.unit) * self.unit

    def aligned_keep(self, target_slots: float) -> int:
        """Round a wanted kept size up to the alignment, within [one unit, max aligned]."""
        if self.max_aligned == 0:
            return self.slots
        k = int(math.ceil(round(target_slots, 6) / self.unit)) * self.unit
        return max(self.unit, min(k, self.max_aligned))

    def keep_levels(self) -> List[int]:
        """Every aligned slot count the group can keep, largest first."""
        return list(range(self.max_aligned, 0, -self.unit)) if self.max_aligned else [self.slots]

    def prune_indices(self, keep_slots: int) -> List[int]:
        """Root-layer channel indices to remove so that ``keep_slots`` slots stay (least important first)."""
        n_prune = self.slots - keep_slots
        if n_prune <= 0:
            return []
        # Stable sort: equal scores fall back to channel order, so runs are deterministic.
        order = torch.sort(self.importance, stable=True).indices[:n_prune].tolist()
        return sorted(p + g * self.slots for g in range(self.ch_groups) for p in order)


def _ch_groups(graph: tp.DependencyGraph, group) -> int:
    """Same rule as Torch-Pruning's pruner: the largest conv-group count among the group's layers."""
    found = [1]
    for dep, _ in group:
        m = dep.target.module
        if not isinstance(m, nn.Module) or is_depthwise(m):
            continue
        pruner = graph.get_pruner_of_module(m)
        if pruner is None:
            continue
        if graph.is_out_channel_pruning_fn(dep.handler):
            found.append(pruner.get_out_channel_groups(m) or 1)
        elif graph.is_in_channel_pruning_fn(dep.handler):
            found.append(pruner.get_in_channel_groups(m) or 1)
    return max(found)


# The importance criteria, one function each (name -> group -> per-channel
# scores, or None where the criterion does not apply); a new criterion is one
# entry here, and its name in edgekit.host.prune.config.CRITERIA.
IMPORTANCE = {
    "l1": lambda group: _L1(group),
    "bn": lambda group: _BN(group),
}


def _importance(group, criterion: str) -> Tuple[Optional[torch.Tensor], str]:
    imp = IMPORTANCE[criterion](group)
    if imp is not None:
        return imp, criterion
    # L1 magnitude, the fallback for groups a criterion does not cover (no BatchNorm).
    return _L1(group), "l1"


def collect_groups(model: nn.Module, graph: tp.DependencyGraph, fixed_names: Sequence[str], criterion: str, alignment: int) -> List[Group]:
    """Every prunable group of the model (groups that touch a fixed layer's outputs are left out)."""
    names = module_names(model)
    fixed_modules = [m for m, n in names.items() if n in set(fixed_names)]
    out_fns = (function.prune_conv_out_channels, function.prune_linear_out_channels, function.prune_batchnorm_out_channels, function.prune_depthwise_conv_out_channels)
    in_fns = (function.prune_conv_in_channels, function.prune_linear_in_channels)
    groups: List[Group] = []
    for group in graph.get_all_groups(ignored_layers=fixed_modules, root_module_types=LAYER_TYPES):
        root_dep = group[0].dep
        root = root_dep.target.module
        n = graph.get_out_channels(root)
        if not n:
            continue
        ch_groups = _ch_groups(graph, group)
        imp, by = _importance(group, criterion)
        if imp is None:
            continue
        if ch_groups > 1:
            imp = imp.view(ch_groups, -1).mean(0)
        unit = alignment // math.gcd(alignment, ch_groups)
        g = Group(name=names[root], root=root, prune_fn=root_dep.handler, channels=n, ch_groups=ch_groups, unit=unit, importance=imp.detach().float().cpu(), by=by)
        for dep, idxs in group:
            m = dep.target.module
            if not isinstance(m, nn.Module) or m not in names:
                continue
            if isinstance(m, nn.modules.conv._ConvNd) and is_depthwise(m):
                g.out_layers.append((names[m], len(idxs)))
                g.in_layers.append((names[m], len(idxs)))
            elif dep.handler in out_fns:
                g.out_layers.append((names[m], len(idxs)))
            elif dep.handler in in_fns and isinstance(m, LAYER_TYPES):
                g.in_layers.append((names[m], len(idxs)))
        g.out_layers = _dedupe(g.out_layers)
        g.in_layers = _dedupe(g.in_layers)
        groups.append(g)
    return groups


def _dedupe(items: List[Tuple[str, int]]) -> List[Tuple[str, int]]:
    seen: Dict[str, int] = {}
    for name, count in items:
        seen[name] = max(count, seen.get(name, 0))
    return list(seen.items())


def apply_plan(model: nn.Module, graph: tp.DependencyGraph, groups: Sequence[Group], keep: Dict[str, int]) -> None:
    """Remove channels so that each group keeps ``keep[name]`` slots.

    Indices were chosen on the unpruned model; Torch-Pruning recomputes the
    concatenation offsets as each group is cut, so the order does not matter.
    Roots are looked up by name in ``model``, so a plan made on one copy of
    the model applies to another (the trials in trial.py).
    """
    for g in groups:
        idxs = g.prune_indices(keep.get(g.name, g.slots))
        if not idxs:
            continue
        pg = graph.get_pruning_group(model.get_submodule(g.name), g.prune_fn, idxs)
        pg.prune()
