"""How far a model's outputs are from reference outputs, scale-free.

Detector outputs mix box coordinates in pixels with probabilities in [0, 1];
a plain squared error would only see the boxes. Each output column (last
dimension) is therefore divided by its spread in the reference outputs, so
every column counts alike. Used by the sensitivity analysis (damage of a
pruned group) and by distillation (the default loss).
"""
from typing import List, Sequence

import torch

from .graph import flat_outputs


class OutputDistance(object):
    def __init__(self, reference) -> None:
        self.scales: List[torch.Tensor] = []
        for ref in flat_outputs(reference):
            ref = ref.detach().float()
            if ref.dim() == 0:
                self.scales.append(torch.ones(()))
                continue
            cols = ref.reshape(-1, ref.shape[-1]) if ref.dim() > 1 else ref.reshape(-1, 1)
            std = cols.std(0, unbiased=False) if cols.shape[0] > 1 else cols.abs().mean(0)
            floor = max(float(std.mean()) * 1e-3, 1e-6)
            scale = std.clamp_min(floor)
            self.scales.append(scale if ref.dim() > 1 else scale.reshape(()))

    def __call__(self, outputs, reference) -> torch.Tensor:
        """Mean squared column-standardised difference, averaged over the output tensors."""
        outs: Sequence[torch.Tensor] = flat_outputs(outputs)
        refs: Sequence[torch.Tensor] = flat_outputs(reference)
        if len(outs) != len(refs) or len(outs) != len(self.scales):
            raise ValueError("the outputs have %d tensors, the reference %d" % (len(outs), len(refs)))
        total = outs[0].new_zeros(()) if outs else torch.zeros(())
        for out, ref, scale in zip(outs, refs, self.scales):
            diff = (out.float() - ref.float()) / scale
            total = total + diff.pow(2).mean()
        return total / max(1, len(outs))
