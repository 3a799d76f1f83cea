"""ONNX export, simplification, parity and operator checks (the host side of a bundle's models).

Names are loaded on first use (PEP 562) so that importing this package, e.g.
to check a command line, does not import torch.
"""
import importlib
from typing import Any

EXPORTERS = ("torchscript", "dynamo")  # tried in this order by export_onnx

_WHERE = {
    "ExportResult": "onnx_export",
    "export_onnx": "onnx_export",
    "onnx_io": "onnx_export",
    "set_export_mode": "onnx_export",
    "check_operators": "ops",
    "op_counts": "ops",
    "Parity": "parity",
    "check_parity": "parity",
    "compare": "parity",
    "run_onnx": "parity",
    "run_torch": "parity",
    "open_session": "session",
    "SimplifyResult": "simplify",
    "simplify_onnx": "simplify",
}

__all__ = ["EXPORTERS"] + sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module("%s.%s" % (__name__, _WHERE[name])), name)
    raise AttributeError("module %r has no attribute %r" % (__name__, name))
