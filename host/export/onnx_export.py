"""PyTorch -> ONNX at a fixed input size and opset, with exporter fallback.

PyTorch has two ONNX exporters: the TorchScript-based one (``dynamo=False``),
which YOLOv5 and most deployment tools have used for years, and the
torch.export-based one (``dynamo=True``, the default since PyTorch 2.9, which
needs the onnxscript package). One fails where the other works often enough
that the build tries both and records which one produced the file.
"""
import contextlib
import dataclasses
import io
import os
import warnings
from typing import List, Sequence, Tuple

import onnx
import torch

from edgekit.contract.errors import EdgekitError

from . import EXPORTERS
INPUT_NAME = "images"
BATCH_DIM = "batch"


@dataclasses.dataclass
class ExportResult:
    path: str
    exporter: str
    opset: int
    input_name: str
    input_shape: Tuple[int, ...]
    output_names: List[str]
    output_shapes: List[List[int]]
    failures: List[str]  # "exporter: reason" for each exporter that failed before this one

    def to_dict(self) -> dict:
        return {"exporter": self.exporter, "opset": self.opset, "fallback_from": list(self.failures)}


def set_export_mode(model: torch.nn.Module) -> torch.nn.Module:
    """Eval mode, and YOLOv5-style heads told they are exporting.

    YOLOv5's Detect has a boolean ``export`` attribute that selects the
    decoded single-tensor output; edgekit's demo head decodes in eval mode.
    """
    model.eval()
    for module in model.modules():
        if isinstance(getattr(module, "export", None), bool):
            module.export = True
    return model


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return "%s: %s" % (type(exc).__name__, text[:300])


def _export_once(model: torch.nn.Module, example: torch.Tensor, path: str, opset: int, exporter: str, output_names: Sequence[str], dynamic_batch: bool = False) -> None:
    kwargs = dict(input_names=[INPUT_NAME], output_names=list(output_names), opset_version=opset, do_constant_folding=True)
    if dynamic_batch:
        # Dimension 0 of the input and of every output is the symbolic "batch".
        kwargs["dynamic_axes"] = {name: {0: BATCH_DIM} for name in [INPUT_NAME] + list(output_names)}
    sink = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(sink):
        warnings.simplefilter("ignore")
        if exporter == "torchscript":
            torch.onnx.export(model, (example,), path, dynamo=False, **kwargs)
        elif exporter == "dynamo":
            # external_data=False: one self-contained file (models here are far below 2 GB).
            torch.onnx.export(model, (example,), path, dynamo=True, external_data=False, optimize=True, **kwargs)
        else:
            raise ValueError("unknown exporter %r" % exporter)


def _output_count(model: torch.nn.Module, example: torch.Tensor) -> List[List[int]]:
    with torch.no_grad():
        out = model(example)
    outs = out if isinstance(out, (list, tuple)) else [out]
    shapes = []
    for o in outs:
        if not isinstance(o, torch.Tensor):
            raise EdgekitError(
                "the model's eval-mode output is a %s, not a tensor or a tuple of tensors" % type(o).__name__,
                "export a model whose forward returns tensors (for YOLOv5, the Detect head in export mode)",
            )
        shapes.append(list(o.shape))
    return shapes


def export_onnx(
    model: torch.nn.Module,
    input_size: Tuple[int, int],
    path: str,
    opset: int,
    exporters: Sequence[str] = EXPORTERS,
    dynamic_batch: bool = False,
) -> ExportResult:
    """Export ``model`` for a (1, 3, H, W) input to ``path``; first exporter that works wins.

    ``dynamic_batch``: the batch dimension (0) of the input and outputs is
    symbolic, so one file runs any batch size; an exporter whose file still has
    a fixed batch counts as failed.

    Output names are ``output0``, ``output1``, ... as YOLOv5's export writes them.
    The written file is checked with onnx's checker before it is accepted.
    """
    set_export_mode(model)
    h, w = input_size
    example = torch.zeros(1, 3, h, w)
    try:
        shapes = _output_count(model, example)
    except EdgekitError:
        raise
    except Exception as exc:
        raise EdgekitError(
            "the model fails on a 1x3x%dx%d input (%s)" % (h, w, _one_line(exc)),
            "check that the model takes 3-channel images at the profile's input size (--input-size)",
        )
    output_names = ["output%d" % i for i in range(len(shapes))]
    failures: List[str] = []
    for exporter in exporters:
        if os.path.exists(path):
            os.remove(path)
        try:
            _export_once(model, example, path, opset, exporter, output_names, dynamic_batch)
            onnx.checker.check_model(path)
            if dynamic_batch and onnx_io(path)[1][:1] != [-1]:
                raise ValueError("the exported input's batch dimension is fixed, not dynamic")
        except Exception as exc:  # every exporter failure is reported, then the next is tried
            failures.append("%s exporter: %s" % (exporter, _one_line(exc)))
            continue
        return ExportResult(path, exporter, opset, INPUT_NAME, (1, 3, h, w), output_names, shapes, failures)
    if os.path.exists(path):
        os.remove(path)
    raise EdgekitError(
        "ONNX export failed with every exporter (%s)" % "; ".join(failures),
        "rerun with --debug for details; a different --opset or a model without unsupported Python control flow may export",
    )


def onnx_io(path: str) -> Tuple[str, List[int], List[str], List[List[int]]]:
    """(input name, input shape, output names, output shapes) of an ONNX file (static dims; -1 for symbolic)."""
    model = onnx.load(path, load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]

    def dims(value_info: onnx.ValueInfoProto) -> List[int]:
        return [d.dim_value if d.HasField("dim_value") else -1 for d in value_info.type.tensor_type.shape.dim]

    return inputs[0].name, dims(inputs[0]), [o.name for o in model.graph.output], [dims(o) for o in model.graph.output]
