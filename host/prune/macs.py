"""A fast MACs model of a pruning plan, for strategies that aim at a MACs target.

Counting MACs by running the model after every candidate change would cost a
forward pass each time; instead one forward pass records, per conv/linear/
BatchNorm layer, the spatial size of its output, and the groups tell which
fraction of each layer's input and output channels a plan keeps. The counts
follow the report's counter (metrics.MACS_COUNT: conv and linear
multiply-accumulates, no BatchNorm, no bias) for these layers; the final
report always uses that counter on the pruned model.
"""
from typing import Dict, List, Sequence, Tuple

import torch
from torch import nn

from .graph import LAYER_TYPES, is_depthwise
from .groups import Group


class _Layer(object):
    __slots__ = ("name", "kind", "out_ch", "in_ch", "groups", "per_pair", "out_from", "in_from")

    def __init__(self, name: str, kind: str, out_ch: int, in_ch: int, groups: int, per_pair: float) -> None:
        self.name = name
        self.kind = kind  # "conv", "dw", "linear"
        self.out_ch = out_ch
        self.in_ch = in_ch
        self.groups = groups
        self.per_pair = per_pair  # MACs per (output channel x input channel per group)
        self.out_from: List[Tuple[int, int]] = []  # (group index, channels of this layer's output in it)
        self.in_from: List[Tuple[int, int]] = []


class MacsModel(object):
    def __init__(self, model: nn.Module, example_input: torch.Tensor, groups: Sequence[Group]) -> None:
        self.groups = list(groups)
        spatial: Dict[str, float] = {}
        hooks = []

        def hook(name):
            def record(module, inputs, output):
                out = output[0] if isinstance(output, (tuple, list)) else output
                if isinstance(module, nn.Linear):
                    spatial[name] = out.numel() / max(1, out.shape[-1])
                else:
                    spatial[name] = out[0, 0].numel() * out.shape[0] if out.dim() > 1 else 1.0

            return record

        for name, m in model.named_modules():
            if isinstance(m, LAYER_TYPES):
                hooks.append(m.register_forward_hook(hook(name)))
        try:
            with torch.no_grad():
                model(example_input)
        finally:
            for h in hooks:
                h.remove()
        self.layers: Dict[str, _Layer] = {}
        for name, m in model.named_modules():
            if name not in spatial:
                continue
            if isinstance(m, nn.Linear):
                self.layers[name] = _Layer(name, "linear", m.out_features, m.in_features, 1, spatial[name])
            else:
                k = 1
                for s in m.kernel_size:
                    k *= s
                kind = "dw" if is_depthwise(m) else "conv"
                self.layers[name] = _Layer(name, kind, m.out_channels, m.in_channels, m.groups, float(k * spatial[name]))
        self.by_group: List[List[str]] = [[] for _ in self.groups]
        for gi, g in enumerate(self.groups):
            for name, count in g.out_layers:
                if name in self.layers:
                    self.layers[name].out_from.append((gi, count))
                    self.by_group[gi].append(name)
            for name, count in g.in_layers:
                if name in self.layers and self.layers[name].kind != "dw":
                    self.layers[name].in_from.append((gi, count))
                    if name not in self.by_group[gi]:
                        self.by_group[gi].append(name)
        self.full = self.total(self.full_keep())

    def full_keep(self) -> List[int]:
        return [g.slots for g in self.groups]

    def _kept(self, total: int, parts: List[Tuple[int, int]], keep: Sequence[int]) -> float:
        removed = 0.0
        for gi, count in parts:
            g = self.groups[gi]
            removed += count * (1.0 - keep[gi] / float(g.slots))
        return max(0.0, total - removed)

    def layer_macs(self, name: str, keep: Sequence[int]) -> float:
        layer = self.layers[name]
        out = self._kept(layer.out_ch, layer.out_from, keep)
        if layer.kind == "dw":  # one input channel per output channel, whatever the width
            return out * layer.per_pair
        inp = self._kept(layer.in_ch, layer.in_from, keep)
        return out * (inp / layer.groups) * layer.per_pair

    def total(self, keep: Sequence[int]) -> float:
        return sum(self.layer_macs(name, keep) for name in self.layers)

    def reduction(self, keep: Sequence[int]) -> float:
        return 1.0 - self.total(keep) / self.full if self.full else 0.0

    def saving_if(self, keep: List[int], gi: int, new_k: int) -> float:
        """MACs saved by changing group ``gi`` to ``new_k`` slots (only its layers are recomputed)."""
        names = self.by_group[gi]
        before = sum(self.layer_macs(n, keep) for n in names)
        old = keep[gi]
        keep[gi] = new_k
        after = sum(self.layer_macs(n, keep) for n in names)
        keep[gi] = old
        return before - after
