"""edgekit's own alignment check, independent of how the pruning was done.

Torch-Pruning's ``round_to`` rounds kept counts down, silently skips a group
that would round to zero, and never touches groups it did not prune, so its
word is not taken: after pruning, every conv/linear layer the model uses is
read back and each channel count is checked against the alignment. Exempt are
the output channels of fixed layers (task outputs, known heads, ``--ignore``)
and input channels that are the image itself.
"""
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence, Set, Tuple

from torch import nn

from .graph import channels, layer_kind
from .groups import Group
from .strategies import Plan


@dataclass
class LayerRow:
    name: str
    kind: str  # conv | dwconv | gconv | linear
    in_before: int
    in_after: int
    out_before: int
    out_after: int
    out_target: Optional[int]  # what the strategy asked for, before alignment (None: not pruned by a plan)
    added_by_alignment: Optional[int]  # out_after - out_target (negative only when a layer kept less than planned: then not aligned)
    group: Optional[str]  # the pruning group (its root layer) the output channels belong to
    fixed: Optional[str]  # why the output channels are fixed, if they are
    input_is_image: bool
    aligned: bool

    def to_dict(self) -> dict:
        return asdict(self)


def layer_shapes(model: nn.Module, names: Sequence[str]) -> Dict[str, Tuple[str, int, int]]:
    mods = dict(model.named_modules())
    return {n: (layer_kind(mods[n]),) + channels(mods[n]) for n in names}  # type: ignore[misc]


def check_alignment(
    before: Dict[str, Tuple[str, int, int]],
    model: nn.Module,
    alignment: int,
    fixed: Dict[str, str],
    input_fed: Set[str],
    groups: Sequence[Group],
    plan: Optional[Plan],
) -> Tuple[List[LayerRow], List[str]]:
    """Per-layer rows and one problem sentence per misaligned channel count."""
    mods = dict(model.named_modules())
    member_of: Dict[str, Tuple[Group, int]] = {}
    for g in groups:
        for name, count in g.out_layers:
            member_of.setdefault(name, (g, count))
    rows: List[LayerRow] = []
    problems: List[str] = []
    for name, (kind, in_before, out_before) in before.items():
        m = mods.get(name)
        if m is None:
            problems.append("layer '%s' disappeared during pruning" % name)
            continue
        in_after, out_after = channels(m)
        group, count = member_of.get(name, (None, 0))
        target: Optional[int] = None
        planned: Optional[int] = None
        if group is not None and plan is not None and group.name in plan.target:
            target = int(round(count * plan.target[group.name] / float(group.slots)))
            planned = out_before - int(round(count * (group.slots - plan.keep.get(group.name, group.slots)) / float(group.slots)))
        # What was asked against what was kept: a layer that lost more
        # channels than its group planned is never "aligned", whatever its width.
        kept_ok = planned is None or out_after == planned
        out_ok = (name in fixed or out_after % alignment == 0) and kept_ok
        in_ok = name in input_fed or in_after % alignment == 0
        rows.append(
            LayerRow(
                name=name,
                kind=kind,
                in_before=in_before,
                in_after=in_after,
                out_before=out_before,
                out_after=out_after,
                out_target=target,
                added_by_alignment=(out_after - target) if target is not None else None,
                group=group.name if group is not None else None,
                fixed=fixed.get(name),
                input_is_image=name in input_fed,
                aligned=out_ok and in_ok,
            )
        )
        if not kept_ok:
            problems.append("layer '%s' was to keep %d output channels and kept %d (group '%s')" % (name, planned, out_after, group.name if group else "?"))
        elif not out_ok:
            problems.append("layer '%s' keeps %d output channels, not a multiple of %d: %s" % (name, out_after, alignment, _why_out(name, group, alignment)))
        if not in_ok:
            problems.append(
                "layer '%s' has %d input channels, not a multiple of %d: they come from layers whose output channels are not aligned (see the problems above)"
                % (name, in_after, alignment)
            )
    return rows, problems


def _why_out(name: str, group: Optional[Group], alignment: int) -> str:
    if group is None:
        return "its channels are tied (by a residual sum or a shared input) to a fixed layer, so they could not be pruned; keep that layer's width a multiple of %d in the model definition" % alignment
    if group.max_aligned == 0:
        return "its group '%s' has only %d channels, fewer than one unit of %d, and pruning cannot add channels; widen it in the model definition" % (
            group.name,
            group.channels,
            group.unit * group.ch_groups,
        )
    return "group '%s' could not be cut to an aligned size (grouped convolution with %d groups)" % (group.name, group.ch_groups)
