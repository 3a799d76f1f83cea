"""Saving a pruned model so that it loads without unpickling code.

A pruned model no longer matches its definition's layer sizes, and pickling
the whole module would force every later user to trust the file. Instead the
file holds plain data (readable with ``torch.load(weights_only=True)``): the
state_dict, the new size attributes of every resized layer, and the model's
metadata. Loading re-creates the original definition (``--model``), resizes
those layers, then loads the weights (``edgekit ... --model X --weights pruned.pt``).
"""
import os
from typing import Any, Dict, Optional

import torch
from torch import nn

from edgekit.contract.errors import EdgekitError
from .param_errors import ParameterError

PRUNED_FORMAT = "edgekit-pruned/1"
# Size attributes, per layer type, that pruning changes.
_SIZE_ATTRS = {
    nn.modules.conv._ConvNd: ("in_channels", "out_channels", "groups"),
    nn.Linear: ("in_features", "out_features"),
    nn.modules.batchnorm._BatchNorm: ("num_features",),
    nn.GroupNorm: ("num_groups", "num_channels"),
    nn.LayerNorm: ("normalized_shape",),
    nn.PReLU: ("num_parameters",),
}


def _attrs(m: nn.Module) -> Optional[Dict[str, Any]]:
    for cls, names in _SIZE_ATTRS.items():
        if isinstance(m, cls):
            out = {}
            for n in names:
                v = getattr(m, n)
                out[n] = list(v) if isinstance(v, tuple) else v
            return out
    return None


def save_pruned(model: nn.Module, path: str, info: Optional[Dict[str, Any]] = None) -> str:
    """Write ``model`` (pruned) to ``path`` as plain data; ``info`` is JSON-like metadata kept beside it."""
    shapes = {}
    for name, m in model.named_modules():
        attrs = _attrs(m)
        if attrs is not None and name:
            shapes[name] = attrs
    data = {
        "format": PRUNED_FORMAT,
        "state_dict": {k: (v.detach().float() if v.is_floating_point() else v.detach()).cpu() for k, v in model.state_dict().items()},
        "shapes": shapes,
        "info": dict(info or {}),
    }
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        tmp = path + ".partial"
        torch.save(data, tmp)
        os.replace(tmp, path)
    except OSError as exc:
        raise ParameterError("cannot write %s (%s)" % (path, exc.strerror), "choose a writable {path}")
    return path


def is_pruned_checkpoint(data: Any) -> bool:
    return isinstance(data, dict) and data.get("format") == PRUNED_FORMAT


def load_pruned_state(model: nn.Module, data: Dict[str, Any], where: str = "the pruned checkpoint") -> nn.Module:
    """Resize ``model``'s layers to the saved sizes, then load the saved weights (in place; returns it)."""
    state = data["state_dict"]
    from .rewrites import restore_structure  # blocks rewritten before pruning (chunk/split layers, attention)

    restore_structure(model, list(data.get("shapes", {})) + list(state))
    for name, attrs in data.get("shapes", {}).items():
        try:
            m = model.get_submodule(name)
        except AttributeError:
            raise EdgekitError("%s does not fit this model: it has no layer '%s'" % (where, name), "load it into the model definition it was pruned from")
        for key, value in attrs.items():
            setattr(m, key, tuple(value) if isinstance(value, list) else value)
        for pname, p in list(m.named_parameters(recurse=False)):
            saved = state.get("%s.%s" % (name, pname))
            if saved is not None and tuple(saved.shape) != tuple(p.shape):
                setattr(m, pname, nn.Parameter(torch.empty(saved.shape, dtype=p.dtype), requires_grad=p.requires_grad))
        for bname, b in list(m.named_buffers(recurse=False)):
            saved = state.get("%s.%s" % (name, bname))
            if b is not None and saved is not None and tuple(saved.shape) != tuple(b.shape):
                setattr(m, bname, torch.empty(saved.shape, dtype=b.dtype))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = " ".join(str(exc).split())[:240]
        raise EdgekitError("%s does not fit this model (%s)" % (where, first), "load it into the model definition it was pruned from")
    return model
