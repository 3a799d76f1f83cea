"""Strategies: how many slots each group keeps.

- ``uniform``: every group loses the same fraction.
- ``global``: one ranking of all channels (L1 scores normalised per group by
  their mean, BatchNorm scales as they are), the least important fraction goes.
- ``sensitivity``: greedy, one alignment unit at a time, always cutting where
  the measured damage per MAC saved is smallest, until the MACs target is met.
- BatchNorm threshold (network slimming): channels whose scale is below it go.

Every kept size is rounded *up* to the alignment (the model stays at least as
wide as asked), never below one unit and never above the largest aligned size
(an unaligned group is cut down to the alignment even at ratio 0).
"""
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import torch

from .groups import Group
from .macs import MacsModel
from .sensitivity import Curve, interpolate


@dataclass
class Plan:
    keep: Dict[str, int]  # group name -> kept slots (aligned)
    target: Dict[str, float]  # group name -> slots the strategy wanted before alignment
    notes: List[str] = field(default_factory=list)
    ratio: Optional[float] = None  # the per-group (uniform) or overall (global) ratio used


def _floor_keep(g: Group, max_group_ratio: float) -> int:
    return g.aligned_keep(g.slots * (1.0 - max_group_ratio))


def uniform(groups: Sequence[Group], ratio: float) -> Plan:
    target = {g.name: float(g.slots - int(g.slots * ratio)) for g in groups}
    return Plan(keep={g.name: g.aligned_keep(target[g.name]) for g in groups}, target=target, ratio=ratio)


def _global_scores(g: Group) -> torch.Tensor:
    imp = g.importance.float()
    if g.by == "bn":
        return imp.abs()  # network slimming: BN scales are comparable across layers as they are
    mean = float(imp.mean())
    return imp / mean if mean > 0 else imp


def global_ranking(groups: Sequence[Group], ratio: float, max_group_ratio: float) -> Plan:
    scores = [_global_scores(g) for g in groups]
    owners = torch.cat([torch.full((len(s),), i, dtype=torch.long) for i, s in enumerate(scores)]) if scores else torch.zeros(0, dtype=torch.long)
    flat = torch.cat(scores) if scores else torch.zeros(0)
    n_prune = int(len(flat) * ratio)
    order = torch.sort(flat, stable=True).indices[:n_prune]
    pruned = torch.bincount(owners[order], minlength=len(groups)).tolist() if n_prune else [0] * len(groups)
    target: Dict[str, float] = {}
    keep: Dict[str, int] = {}
    for g, n in zip(groups, pruned):
        n = min(n, int(g.slots * max_group_ratio))
        target[g.name] = float(g.slots - n)
        keep[g.name] = max(g.aligned_keep(target[g.name]), _floor_keep(g, max_group_ratio))
    return Plan(keep=keep, target=target, ratio=ratio)


def bn_threshold(groups: Sequence[Group], threshold: float) -> Plan:
    target: Dict[str, float] = {}
    keep: Dict[str, int] = {}
    no_bn = []
    for g in groups:
        if g.by != "bn":
            no_bn.append(g.name)
            target[g.name] = float(g.slots)
        else:
            target[g.name] = float(int((g.importance.abs() >= threshold).sum()))
        keep[g.name] = g.aligned_keep(target[g.name])
    plan = Plan(keep=keep, target=target)
    if no_bn:
        plan.notes.append("%d group(s) without BatchNorm kept their channels under --bn-threshold (e.g. %s)" % (len(no_bn), no_bn[0]))
    return plan


def search_ratio(make: Callable[[float], Plan], macs: MacsModel, groups: Sequence[Group], target_macs: float, hi: float = 0.95) -> Plan:
    """The smallest ratio whose plan removes at least ``target_macs`` of the MACs (bisection; the reduction grows with the ratio)."""

    def reduction(plan: Plan) -> float:
        return macs.reduction([plan.keep[g.name] for g in groups])

    best = make(hi)
    if reduction(best) < target_macs:
        best.notes.append("target MACs reduction %.3f is not reachable with this strategy; the plan removes %.3f" % (target_macs, reduction(best)))
        return best
    lo = 0.0
    for _ in range(30):
        mid = (lo + hi) / 2.0
        plan = make(mid)
        if reduction(plan) >= target_macs:
            hi, best = mid, plan
        else:
            lo = mid
    return best


def sensitivity(groups: Sequence[Group], macs: MacsModel, curves: Dict[str, Curve], target_macs: float, max_group_ratio: float) -> Plan:
    """Greedy: cut one alignment unit at a time where measured damage per MAC saved is least."""
    keep = [g.max_aligned or g.slots for g in groups]
    floor = []
    for g in groups:
        measured = [k for k, _ in curves.get(g.name, [])]
        floor.append(max(min(measured) if measured else g.slots, _floor_keep(g, max_group_ratio)))
    notes: List[str] = []
    while macs.reduction(keep) < target_macs:
        best = None
        for gi, g in enumerate(groups):
            new_k = keep[gi] - g.unit
            if g.max_aligned == 0 or new_k < floor[gi]:
                continue
            saving = macs.saving_if(keep, gi, new_k)
            if saving <= 0:
                continue
            curve = curves[g.name]
            cost = max(0.0, interpolate(curve, new_k) - interpolate(curve, keep[gi]))
            key = (cost / saving, -saving, g.name)
            if best is None or key < best[0]:
                best = (key, gi, new_k)
        if best is None:
            notes.append(
                "target MACs reduction %.3f is not reachable within the measured levels; the plan removes %.3f" % (target_macs, macs.reduction(keep))
            )
            break
        keep[best[1]] = best[2]
    plan = Plan(keep={g.name: k for g, k in zip(groups, keep)}, target={g.name: float(k) for g, k in zip(groups, keep)}, notes=notes)
    return plan
