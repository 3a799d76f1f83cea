"""Does the ONNX graph compute what the PyTorch model computes?

Both run on the same real, preprocessed images; the comparison reports the
largest absolute error and the cosine similarity of the flattened outputs.
A graph whose error exceeds the profile's ``max_drift`` (relative to the
output's magnitude) stops the build: shipping it would measure a different model.
"""
import dataclasses
from typing import List, Optional, Sequence

import numpy as np

from edgekit.contract.errors import EdgekitError
from .session import open_session


@dataclasses.dataclass
class Parity:
    images: int
    max_abs_error: float
    mean_abs_error: float
    cosine: float
    reference_max: float  # largest |value| of the reference output, for scale
    tolerance: float  # the relative tolerance it was held to (0: informational)
    ok: bool

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        for key in ("max_abs_error", "mean_abs_error", "cosine", "reference_max"):
            d[key] = float("%.6g" % d[key])
        return d


def compare(reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray], tolerance: float = 0.0) -> Parity:
    """Compare lists of outputs (one array per image, all outputs concatenated flat)."""
    ref = np.concatenate([np.asarray(r, np.float64).ravel() for r in reference])
    got = np.concatenate([np.asarray(c, np.float64).ravel() for c in candidate])
    if ref.shape != got.shape:
        raise EdgekitError(
            "the ONNX graph's output has %d values per batch, PyTorch's has %d" % (got.size, ref.size),
            "the export changed the model's outputs; rerun with --debug and report it",
        )
    diff = np.abs(ref - got)
    denom = np.linalg.norm(ref) * np.linalg.norm(got)
    cosine = float(ref @ got / denom) if denom > 0 else (1.0 if not diff.any() else 0.0)
    ref_max = float(np.abs(ref).max()) if ref.size else 0.0
    max_err = float(diff.max()) if diff.size else 0.0
    finite = bool(np.isfinite(got).all())
    ok = finite and (tolerance <= 0 or (max_err <= tolerance * max(1.0, ref_max) and cosine >= 1.0 - tolerance))
    return Parity(len(reference), max_err, float(diff.mean()) if diff.size else 0.0, cosine, ref_max, tolerance, ok)


def run_onnx(path: str, inputs: Sequence[np.ndarray]) -> List[np.ndarray]:
    """All outputs of the graph per input, flattened and concatenated."""
    session = open_session(path)
    name = session.get_inputs()[0].name
    outs = []
    for x in inputs:
        outs.append(np.concatenate([np.asarray(o).ravel() for o in session.run(None, {name: x})]))
    return outs


def run_torch(model, inputs: Sequence[np.ndarray]) -> List[np.ndarray]:
    """All outputs of the model per input, flattened and concatenated (one batched forward pass)."""
    import torch

    batch = torch.from_numpy(np.ascontiguousarray(np.concatenate(list(inputs), axis=0)))
    with torch.no_grad():
        y = model(batch)
    ys = y if isinstance(y, (list, tuple)) else [y]
    arrays = [t.detach().cpu().float().numpy() for t in ys]
    return [np.concatenate([a[i].ravel() for a in arrays]) for i in range(len(inputs))]


def check_parity(
    model, onnx_path: str, inputs: Sequence[np.ndarray], tolerance: float, what: str = "the ONNX graph", reference: Optional[List[np.ndarray]] = None
) -> Parity:
    """PyTorch vs ONNX Runtime on ``inputs``; raises when the error is beyond ``tolerance``.

    ``reference`` (PyTorch's outputs from :func:`run_torch`) saves running the model again.
    """
    model.eval()
    if reference is None:
        reference = run_torch(model, inputs)
    result = compare(reference, run_onnx(onnx_path, inputs), tolerance)
    if not result.ok:
        raise EdgekitError(
            "%s does not match PyTorch: max abs error %.4g (output magnitude %.4g), cosine %.6f, tolerance %g"
            % (what, result.max_abs_error, result.reference_max, result.cosine, tolerance),
            "the export is wrong for this model; try another --opset, or raise max_drift in the profile if the difference is expected",
        )
    return result
