"""Finding the groups that cannot be pruned correctly, by trying them.

Torch-Pruning follows the channel dependencies it can see in the autograd
graph. Two kinds of block defeat it, and both are common in YOLOv5:

- channels tied in a way the graph does not express as one group: GhostConv
  concatenates ``y`` with a depthwise conv of ``y`` (channel i and i + c/2 are
  one unit); inside a residual, pruning the residual's channels removes the
  wrong ones, so a layer keeps fewer channels than planned or none at all;
- blocks that reshape with a stored channel count (YOLOv5's TransformerBlock
  reshapes to ``self.c2``): the model no longer runs once the input is pruned.

Instead of recognising every such block by name, the plan is tried: the whole
plan first (one pruned copy, one forward pass) and, only when that fails,
halves of it in turn until each group that breaks the model, or does not keep
the widths it was planned to keep, is found. Those groups are left unpruned
and named with the reason; the rest of the model is still pruned.
"""
import copy
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from edgekit.contract.errors import EdgekitError
from . import graph as G
from .groups import Group, apply_plan


def planned_widths(before: Dict[str, Tuple[str, int, int]], groups: Sequence[Group], keep: Dict[str, int]) -> Dict[str, int]:
    """Output channels every layer should have after pruning ``groups`` to ``keep`` (other groups untouched)."""
    widths = {name: out for name, (_, _, out) in before.items()}
    for g in groups:
        k = keep.get(g.name, g.slots)
        if k >= g.slots:
            continue
        for name, count in g.out_layers:
            if name in widths:
                widths[name] -= int(round(count * (g.slots - k) / float(g.slots)))
    return widths


def check_pruned(model: nn.Module, x: torch.Tensor, outputs_before: List[List[int]], widths: Dict[str, int]) -> Optional[str]:
    """Why the pruned ``model`` is wrong (it fails to run, its outputs change, a layer's width is not the planned one), or None."""
    try:
        outputs = G.output_shapes(G.run_model(model, x, "the model with this group pruned"))
    except EdgekitError as exc:
        return exc.problem
    if outputs != outputs_before:
        return "pruning it changes the output shapes from %s to %s" % (outputs_before, outputs)
    mods = dict(model.named_modules())
    for name, want in widths.items():
        m = mods.get(name)
        got = G.channels(m)[1] if m is not None else 0
        if got != want:
            return (
                "layer '%s' was to keep %d output channels and kept %d: its channels are tied in a way the dependency graph does not follow"
                " (for example a tensor concatenated with a function of itself, as in GhostConv)" % (name, want, got)
            )
    return None


class Trial(object):
    """Prunes subsets of a plan on copies of the unpruned model and checks each."""

    def __init__(self, pristine: nn.Module, x: torch.Tensor, outputs_before: List[List[int]], before: Dict[str, Tuple[str, int, int]], keep: Dict[str, int]) -> None:
        self.pristine = pristine
        self.x = x
        self.outputs_before = outputs_before
        self.before = before
        self.keep = keep
        self.tries = 0

    def failure(self, subset: Sequence[Group]) -> Optional[str]:
        self.tries += 1
        model = copy.deepcopy(self.pristine)
        try:
            graph = G.build_graph(model, self.x)
            apply_plan(model, graph, subset, self.keep)
        except EdgekitError as exc:
            return exc.problem
        except Exception as exc:  # Torch-Pruning itself gave up on this group
            return "Torch-Pruning failed on it (%s: %s)" % (type(exc).__name__, " ".join(str(exc).split())[:200])
        return check_pruned(model, self.x, self.outputs_before, planned_widths(self.before, subset, self.keep))

    def find_bad(self, subset: Sequence[Group], known: Optional[str] = None) -> Dict[str, str]:
        """Group name -> reason, for the groups in ``subset`` that cannot be pruned as planned (bisection)."""
        reason = known if known is not None else self.failure(subset)
        if reason is None:
            return {}
        if len(subset) == 1:
            return {subset[0].name: reason}
        half = len(subset) // 2
        bad = self.find_bad(subset[:half])
        bad.update(self.find_bad(subset[half:]))
        if not bad:
            # Each half is fine alone, the two together are not: keep the whole subset.
            names = ", ".join(g.name for g in subset)
            return {g.name: "pruned together with %s: %s" % (names, reason) for g in subset}
        rest = [g for g in subset if g.name not in bad]
        if rest:
            again = self.failure(rest)
            if again is not None:
                bad.update(self.find_bad(rest, again))
        return bad


def unprunable_groups(
    pristine: nn.Module,
    x: torch.Tensor,
    outputs_before: List[List[int]],
    before: Dict[str, Tuple[str, int, int]],
    groups: Sequence[Group],
    keep: Dict[str, int],
    whole_plan_failure: str,
) -> Tuple[Dict[str, str], int]:
    """(group name -> reason, trials run) for the groups of the plan that cannot be pruned as planned."""
    pruned = [g for g in groups if keep.get(g.name, g.slots) < g.slots]
    trial = Trial(pristine, x, outputs_before, before, keep)
    bad = trial.find_bad(pruned, whole_plan_failure) if pruned else {}
    return bad, trial.tries
