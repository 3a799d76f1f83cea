"""Model size numbers for the report: parameters, MACs, bytes on disk.

MACs are multiply-accumulates of convolutions, linear layers and matrix
products only (``MACS_COUNT``), the way papers and Torch-Pruning's own tables
quote them: activations, normalisation, pooling, additions and biases are not
counted, so two models with the same convs have the same MACs whatever their
activation. They are counted by watching the torch functions one forward pass
calls (a TorchFunctionMode), so functional calls inside a module (attention's
projections and products) count as well as conv/linear modules.
"""
import io
from typing import Callable, Dict, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

MACS_COUNT = "multiply-accumulates of conv, linear and matmul operations (activations, normalisation, pooling, additions and biases not counted)"


def _out_numel(out) -> int:
    return out.numel() if isinstance(out, torch.Tensor) else 0


def _conv(args, kwargs, out) -> int:
    weight = args[1] if len(args) > 1 else kwargs["weight"]
    return _out_numel(out) * weight[0].numel()  # each output: (in channels / groups) x kernel area


def _conv_transpose(args, kwargs, out) -> int:
    weight = args[1] if len(args) > 1 else kwargs["weight"]
    return args[0].numel() * weight[0].numel()  # each input element meets (out channels / groups) x kernel area


def _linear(args, kwargs, out) -> int:
    weight = args[1] if len(args) > 1 else kwargs["weight"]
    return _out_numel(out) * weight.shape[-1]


def _matmul(a_index: int) -> Callable:
    def count(args, kwargs, out) -> int:
        a = args[a_index]
        return _out_numel(out) * (a.shape[-1] if a.dim() > 1 else a.numel())

    return count


def _sdpa(args, kwargs, out) -> int:
    q, k = args[0], args[1] if len(args) > 1 else kwargs["key"]
    v = args[2] if len(args) > 2 else kwargs["value"]
    scores = q.numel() // q.shape[-1] * k.shape[-2]  # one score per (query, key) pair
    return scores * q.shape[-1] + scores * v.shape[-1]


def _attention(args, kwargs) -> int:
    """F.multi_head_attention_forward: q/k/v projections, the two attention products, the output projection.

    It is always called sequence-first: query (L, N, E) or (L, E), key and value (S, N, kdim) or (S, kdim).
    """
    query, key, value = args[0], args[1], args[2]
    e = query.shape[-1]
    queries = query.numel() // e  # L x N
    keys, values = key.numel() // key.shape[-1], value.numel() // value.shape[-1]
    projections = queries * e * e + keys * key.shape[-1] * e + values * value.shape[-1] * e + queries * e * e
    return projections + 2 * queries * key.shape[0] * e  # scores (q . k) and the weighted sum of values


_COUNTERS: Dict[object, Callable] = {
    F.conv1d: _conv,
    F.conv2d: _conv,
    F.conv3d: _conv,
    F.conv_transpose1d: _conv_transpose,
    F.conv_transpose2d: _conv_transpose,
    F.conv_transpose3d: _conv_transpose,
    F.linear: _linear,
    torch.matmul: _matmul(0),
    torch.Tensor.matmul: _matmul(0),
    torch.Tensor.__matmul__: _matmul(0),
    torch.Tensor.__rmatmul__: _matmul(1),
    torch.mm: _matmul(0),
    torch.Tensor.mm: _matmul(0),
    torch.bmm: _matmul(0),
    torch.Tensor.bmm: _matmul(0),
    torch.addmm: _matmul(1),
    torch.baddbmm: _matmul(1),
    F.scaled_dot_product_attention: _sdpa,
}


class _MacCounter(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.macs = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        counter = _COUNTERS.get(func)
        if counter is not None:
            out = func(*args, **kwargs)  # the mode is off inside: a conv's own internals are not counted twice
            self.macs += int(counter(args, kwargs, out))
            return out
        # Everything else runs with the mode off inside, so a composite
        # function's own products are counted here, from its arguments.
        out = func(*args, **kwargs)
        if func is F.multi_head_attention_forward:
            self.macs += _attention(args, kwargs)
        return out


def count_macs(model: nn.Module, example_input: torch.Tensor) -> int:
    """MACs (``MACS_COUNT``) of one forward pass on ``example_input``."""
    counter = _MacCounter()
    with torch.no_grad(), counter:
        model(example_input)
    return counter.macs


def count_macs_params(model: nn.Module, example_input: torch.Tensor) -> Tuple[int, int]:
    """(MACs, parameters) for one forward pass on ``example_input``."""
    return count_macs(model, example_input), sum(p.numel() for p in model.parameters())


def state_dict_bytes(model: nn.Module) -> int:
    """Size of the model's float32 state_dict as torch.save writes it."""
    buffer = io.BytesIO()
    torch.save({k: v.detach().float() if v.is_floating_point() else v for k, v in model.state_dict().items()}, buffer)
    return buffer.tell()
