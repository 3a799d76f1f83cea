"""The whole pruning step for a loaded model: calibration images, prune,
optional recovery, and writing the result (shared by ``edgekit prune`` and
``edgekit build``)."""
import os
import shutil
import tempfile
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from edgekit.calibration.images import load_images
from edgekit.calibration.preprocess import PreprocessSpec

from edgekit.contract.errors import EdgekitError
from edgekit.host.progress import Callback
from . import sparsity as S
from .checkpoint import save_pruned
from .config import PruneConfig
from .core import PruneResult, prune_model, stack_images
from .graph import LAYER_TYPES
from .param_errors import ParameterError, reworded
from .recovery import check_budget, recover, resolve_device

MODEL_FILE = "model.pt"
# recover()'s argument names as prune_and_recover() calls them (param_errors.ParameterError slots).
_RECOVER_NAMES = {"steps": "recover_steps", "time_budget_s": "recover_time_s", "lr": "recover_lr", "batch_size": "recover_batch", "images": "calib"}


def calibration_tensors(folder: str, spec: PreprocessSpec, count: Optional[int] = None, seed: int = 0) -> List[torch.Tensor]:
    """Images from ``folder`` preprocessed as the device will (letterbox etc.), as (1, C, H, W) tensors."""
    batch = load_images(folder, spec, count=count, seed=seed, what="calibration")
    return [torch.from_numpy(batch.tensor(i)) for i in range(len(batch))]


def example_input(input_size: Tuple[int, int], calib=None) -> torch.Tensor:
    """One input batch for tracing: the first calibration image (list of tensors or ImageBatch), else zeros of the input size."""
    size = [int(input_size[0]), int(input_size[1])]
    first = stack_images(calib, 1) if calib is not None and len(calib) else None
    if first is not None:
        if list(first.shape[-2:]) != size:
            raise EdgekitError("calibration images are %s, the input size is %s" % (list(first.shape[-2:]), size), "preprocess them to the input size")
        return first
    return torch.zeros(1, 3, size[0], size[1])


def recover_result(
    result: PruneResult,
    teacher: torch.nn.Module,
    calib,
    layout: Optional[str] = None,
    steps: Optional[int] = None,
    time_budget_s: Optional[float] = None,
    lr: float = 1e-3,
    batch_size: int = 8,
    progress: Optional[Callback] = None,
    on_step: Optional[Callable[[int, int], None]] = None,
    device: Optional[str] = "auto",
) -> Dict[str, Any]:
    """Distil ``result.model`` from ``teacher`` (in place), record it in the report, re-measure sparsity.

    ``calib``: a list of (1, C, H, W) tensors or an ImageBatch (decoded images, converted per batch)."""
    if calib is None or not len(calib):
        raise ParameterError("recovery needs unlabelled images", "give {calib}: images like the ones the model will see")
    stats = recover(result.model, teacher, calib, steps=steps, time_budget_s=time_budget_s, progress=progress, layout=layout, lr=lr, batch_size=batch_size, masks=result.masks, on_step=on_step, device=device)
    result.report.recovery = stats
    if result.report.sparsity:
        info = result.report.sparsity
        names = [n for n, m in result.model.named_modules() if isinstance(m, LAYER_TYPES)]
        result.report.sparsity = S.measure(
            result.model, str(info["kind"]), result.masks, names, ratio=float(info.get("ratio", 0.0) or 0.0), skipped=list(info.get("skipped", []))  # type: ignore[arg-type]
        )
    return stats


def prune_and_recover(
    module: torch.nn.Module,
    config: PruneConfig,
    input_size: Tuple[int, int],
    calib=None,
    layout: Optional[str] = None,
    recover_steps: Optional[int] = None,
    recover_time_s: Optional[float] = None,
    recover_lr: float = 1e-3,
    recover_batch: int = 8,
    progress: Optional[Callback] = None,
    on_progress: Optional[Callable[[str, int, int], None]] = None,
    on_recover_step: Optional[Callable[[int, int], None]] = None,
    check: Optional[Callable[[PruneResult], None]] = None,
    device: Optional[str] = "auto",
) -> PruneResult:
    """Prune ``module`` (untouched) and, when a step count or time budget is given, distil it back.

    ``calib``: a list of (1, C, H, W) tensors or an ImageBatch, at ``input_size``.
    ``progress(event)`` receives recovery's step events (edgekit.host.progress).
    ``check(result)`` runs on the pruned model *before* recovery and raises
    EdgekitError to refuse it, so a refused model never spends the recovery
    budget; whatever ``check`` accepts, a model that does not run (or whose
    outputs changed) is not distilled: recovery would fail inside.
    ``device`` (auto, cpu, cuda) is where recovery trains; it is checked
    before pruning starts. Errors about these arguments are
    :class:`~edgekit.host.prune.param_errors.ParameterError` worded with the
    Python names (``recover_steps``); a front end rewords them."""
    recovering = recover_steps is not None or recover_time_s is not None
    if recovering:
        with reworded(_RECOVER_NAMES):
            check_budget(recover_steps, recover_time_s)
            resolve_device(device)
    with reworded({"calib_images": "calib"}):
        result = prune_model(module, example_input(input_size, calib), config, calib_images=calib, progress=on_progress, layout=layout)
    if check is not None:
        check(result)
    if recovering:
        report = result.report
        if not (report.runs and report.outputs_unchanged):
            raise EdgekitError(
                "the pruned model cannot be recovered: %s" % (report.problems[0] if report.problems else "its outputs changed"),
                "prune less, or keep the failing layers' channels, then recover",
            )
        with reworded(_RECOVER_NAMES):
            recover_result(result, module, calib, layout, recover_steps, recover_time_s, recover_lr, recover_batch, progress, on_recover_step, device)
    return result


def write_pruned(result: PruneResult, out_dir: str, info: Optional[Dict[str, Any]] = None) -> Dict[str, str]:
    """Write model.pt (weights-only loadable), prune_report.json and prune_channels.png into ``out_dir``.

    Everything goes to a temporary folder beside it first and is renamed into
    place at the end, so a failure leaves no half-written output.
    """
    out_dir = os.path.abspath(out_dir)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ParameterError("output %s exists and is not a folder" % out_dir, "choose another {out_dir}")
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not os.path.isfile(os.path.join(out_dir, MODEL_FILE)):
        raise ParameterError("output %s is a non-empty folder that edgekit prune did not write" % out_dir, "choose another {out_dir}")
    parent = os.path.dirname(out_dir)
    try:
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=".%s.partial-" % os.path.basename(out_dir), dir=parent)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the output is an ordinary folder
    except OSError as exc:
        raise ParameterError("cannot write to %s (%s)" % (parent, exc.strerror), "choose a writable {out_dir}")
    try:
        meta = dict(info or {})
        meta["prune"] = {k: v for k, v in result.report.to_dict().items() if k != "layers"}
        with reworded({"path": "out_dir"}):
            save_pruned(result.model, os.path.join(tmp, MODEL_FILE), meta)
        result.report.write(tmp)
        old = None
        if os.path.isdir(out_dir):
            old = out_dir + ".old-%d" % os.getpid()
            os.rename(out_dir, old)
        os.rename(tmp, out_dir)
        if old:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {
        "model": os.path.join(out_dir, MODEL_FILE),
        "json": os.path.join(out_dir, "prune_report.json"),
        "png": os.path.join(out_dir, "prune_channels.png"),
    }
