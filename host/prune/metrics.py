"""Model size numbers for the report: parameters, MACs, bytes on disk."""
import io
from typing import Tuple

import torch
import torch_pruning as tp
from torch import nn


def count_macs_params(model: nn.Module, example_input: torch.Tensor) -> Tuple[int, int]:
    """(MACs, parameters) for one forward pass on ``example_input`` (Torch-Pruning's counter)."""
    macs, params = tp.utils.count_ops_and_params(model, example_input)
    return int(macs), int(params)


def state_dict_bytes(model: nn.Module) -> int:
    """Size of the model's float32 state_dict as torch.save writes it."""
    buffer = io.BytesIO()
    torch.save({k: v.detach().float() if v.is_floating_point() else v for k, v in model.state_dict().items()}, buffer)
    return buffer.tell()
