"""Accuracy recovery after pruning.

:func:`recover` is label-free knowledge distillation: the unpruned model
(teacher) labels unlabelled images (the calibration images by default) with
its own outputs and the pruned model (student) learns to match them, on the
CPU, for a number of steps or a time budget. Before it, the student's
BatchNorm statistics are re-estimated on the same images: pruning changes
what each BatchNorm sees, and fixing its statistics is nearly free.

:func:`finetune` is the entry point for a labelled training loop of your own:
it runs your ``step(model, batch) -> loss`` with an optimiser, keeps sparsity
masks, and reports like :func:`recover`.
"""
import math
import time
from typing import Callable, Dict, Iterable, Optional, Sequence

import torch
from torch import nn

from edgekit.contract.errors import EdgekitError
from edgekit.host.progress import Callback, step_event
from .core import stack_images
from .param_errors import ParameterError
from .graph import flat_outputs
from .losses import distillation_loss
from .sparsity import Masks, reapply_masks

BN_MODES = ("train", "frozen")
# auto: bfloat16 autocast where the hardware runs it natively (CPU oneDNN, CUDA), else float16 on CUDA, else fp32.
PRECISIONS = ("auto", "bf16", "fp16", "fp32")


def _bn_layers(model: nn.Module):
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


class ImageSource(object):
    """Unlabelled images as the model sees them, batch by batch.

    Takes a list of (1, C, H, W) / (N, C, H, W) tensors, one tensor, or an
    ``edgekit.calibration.images.ImageBatch`` (kept as uint8 and converted per
    batch, so thousands of images fit in memory).
    """

    def __init__(self, images) -> None:
        self._batch = None
        self._data: Optional[torch.Tensor] = None
        if hasattr(images, "tensor") and hasattr(images, "pixels"):
            self._batch = images
            self._len = len(images)
        else:
            self._data = stack_images(images)
            self._len = 0 if self._data is None else len(self._data)

    def __len__(self) -> int:
        return self._len

    def take(self, index: Sequence[int]) -> torch.Tensor:
        if self._data is not None:
            return self._data[torch.as_tensor(list(index), dtype=torch.long)]
        return torch.cat([torch.from_numpy(self._batch.tensor(int(i))) for i in index], 0).float()  # type: ignore[union-attr]

    def batches(self, size: int, limit: Optional[int] = None) -> Iterable[torch.Tensor]:
        n = self._len if limit is None else min(limit, self._len)
        for start in range(0, n, size):
            yield self.take(range(start, min(n, start + size)))


@torch.no_grad()
def recalibrate_bn(model: nn.Module, images, batch_size: int = 16, limit: Optional[int] = 512) -> int:
    """Re-estimate every BatchNorm's running mean/variance on ``images`` (cumulative average over up to ``limit``); returns the layer count."""
    layers = _bn_layers(model)
    if not layers:
        return 0
    source = images if isinstance(images, ImageSource) else ImageSource(images)
    was_training = model.training
    saved = [(m, m.momentum) for m in layers]
    model.eval()
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average over all batches
        m.train()
    try:
        device = _device_of(model)
        for batch in source.batches(batch_size, limit):
            model(batch.to(device))
    finally:
        for m, momentum in saved:
            m.momentum = momentum
            m.eval()
        model.train(was_training)
    return len(layers)


def _device_of(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    return torch.device("cpu")


def _set_train_mode(model: nn.Module, bn: str) -> None:
    # The rest of the model stays in eval mode so that heads keep their
    # inference output layout (YOLO heads decode boxes only in eval mode).
    model.eval()
    if bn == "train":
        for m in _bn_layers(model):
            m.train()


def _emitter(progress: Optional[Callback], stage: str, steps: Optional[int], time_budget_s: Optional[float]) -> Callable[[int, float, float], None]:
    """``emit(step, elapsed, loss)``: one progress event per step (library code does not draw; host/cli does).

    Counts steps when a step count bounds the run, else seconds of the time budget."""

    def emit(step: int, elapsed: float, loss: float) -> None:
        if not progress:
            return
        if steps:
            done, total, unit = float(step), float(steps), "steps"
        else:
            done, total, unit = min(elapsed, time_budget_s or 0.0), float(time_budget_s or 0.0), "s"
        event = step_event(stage, done, total, unit, elapsed, info="loss %.4f" % loss)
        event["loss"] = loss
        progress(event)

    return emit


def check_budget(steps: Optional[int], time_budget_s: Optional[float]) -> None:
    """A step count and/or a time budget, each positive; else a ParameterError naming ``steps``/``time_budget_s``."""
    # Fix texts name the arguments through slots (param_errors.py): a front end words them its own way.
    if steps is None and time_budget_s is None:
        raise ParameterError("recovery needs a number of steps or a time budget", "give {steps} or {time_budget_s}")
    if steps is not None and steps < 1:
        raise ParameterError("recovery steps must be at least 1, got %r" % steps, "set {steps} to 1 or more")
    if time_budget_s is not None and not time_budget_s > 0:
        raise ParameterError("recovery time budget must be positive, got %r" % time_budget_s, "set {time_budget_s} to a positive number of seconds")


DEVICES = ("auto", "cpu", "cuda")


def resolve_device(device: Optional[str] = "auto") -> torch.device:
    """``auto``: CUDA when torch sees a GPU, else the CPU; ``cuda`` without a GPU is an error (no silent CPU run)."""
    name = "auto" if device is None else str(device).strip().lower()
    if name not in DEVICES and not name.startswith("cuda:"):
        raise ParameterError("unknown device %r" % (device,), "set {device} to one of: %s" % ", ".join(DEVICES))
    if name == "cpu":
        return torch.device("cpu")
    available = torch.cuda.is_available()
    if name == "auto":
        return torch.device("cuda" if available else "cpu")
    if not available:
        why = "this torch %s is built without CUDA" % torch.__version__ if torch.version.cuda is None else "torch %s (CUDA %s) sees no GPU" % (torch.__version__, torch.version.cuda)
        raise ParameterError("CUDA was asked for, but %s" % why, "set {device} to cpu (or auto, which falls back to the CPU)")
    index = torch.device(name).index
    if index is not None and index >= torch.cuda.device_count():
        raise ParameterError("%s was asked for, but torch sees %d GPU(s)" % (name, torch.cuda.device_count()), "set {device} to cuda, cuda:0 .. cuda:%d, or cpu" % (torch.cuda.device_count() - 1))
    return torch.device(name)


def _train_loop(
    model: nn.Module,
    compute_loss: Callable[[int], torch.Tensor],
    steps: Optional[int],
    time_budget_s: Optional[float],
    lr: float,
    masks: Optional[Masks],
    progress: Optional[Callback],
    stage: str,
    bn: str,
    optimizer: Optional[torch.optim.Optimizer] = None,
    on_step: Optional[Callable[[int, int], None]] = None,
    scaler: Optional[object] = None,
) -> Dict[str, object]:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise EdgekitError("the model has no trainable parameters", "unfreeze the parameters to recover")
    opt = optimizer or torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    base_lrs = [group["lr"] for group in opt.param_groups]
    emit = _emitter(progress, stage, steps, time_budget_s)
    losses = []
    started = time.time()
    step = 0
    stopped_by = "steps"
    try:
        while True:
            elapsed = time.time() - started
            done = max(step / float(steps) if steps else 0.0, elapsed / time_budget_s if time_budget_s else 0.0)
            if done >= 1.0:
                stopped_by = "steps" if steps and step >= steps else "time"
                break
            # Cosine decay over whichever budget runs out first.
            scale = 0.5 * (1.0 + math.cos(math.pi * min(1.0, done)))
            for group, base in zip(opt.param_groups, base_lrs):
                group["lr"] = base * max(scale, 0.02)
            _set_train_mode(model, bn)
            loss = compute_loss(step)
            if not torch.isfinite(loss):
                raise ParameterError("the recovery loss became %s at step %d" % (float(loss), step), "lower the learning rate ({lr})")
            opt.zero_grad(set_to_none=True)
            if scaler is not None:  # float16 autocast on CUDA: scaled gradients
                scaler.scale(loss).backward()  # type: ignore[attr-defined]
                scaler.step(opt)  # type: ignore[attr-defined]
                scaler.update()  # type: ignore[attr-defined]
            else:
                loss.backward()
                opt.step()
            reapply_masks(model, masks or {})
            losses.append(float(loss.detach()))
            step += 1
            emit(step, time.time() - started, losses[-1])
            if on_step is not None:
                # Steps when a step count bounds the run, else whole seconds of the time budget.
                on_step(*((step, steps) if steps else (int(min(time.time() - started, time_budget_s or 0.0)), int(math.ceil(time_budget_s or 1.0)))))
    finally:
        model.eval()
    tail = losses[-10:] or [float("nan")]
    head = losses[:10] or [float("nan")]
    return {
        "steps": step,
        "seconds": round(time.time() - started, 3),
        "stopped_by": stopped_by,
        "loss_first": sum(head) / len(head),
        "loss_last": sum(tail) / len(tail),
        "lr": lr,
    }


def bf16_supported() -> bool:
    """Whether this CPU runs bfloat16 matmuls/convolutions natively (oneDNN)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:  # older builds without the op
        return False


def _zoom(x: torch.Tensor, gen: torch.Generator, max_zoom: float) -> torch.Tensor:
    """Crop a random window (1/zoom of each side) and resize it back: scale jitter without padding."""
    import torch.nn.functional as F

    h, w = x.shape[-2:]
    zoom = 1.0 + float(torch.rand((), generator=gen)) * (max_zoom - 1.0)
    ch, cw = max(1, int(round(h / zoom))), max(1, int(round(w / zoom)))
    top = int(torch.randint(0, h - ch + 1, (), generator=gen))
    left = int(torch.randint(0, w - cw + 1, (), generator=gen))
    return F.interpolate(x[..., top : top + ch, left : left + cw], size=(h, w), mode="bilinear", align_corners=False)


def recover(
    student: nn.Module,
    teacher: nn.Module,
    images,
    steps: Optional[int] = None,
    time_budget_s: Optional[float] = None,
    progress: Optional[Callback] = None,
    layout: Optional[str] = None,
    lr: float = 1e-3,
    batch_size: int = 8,
    masks: Optional[Masks] = None,
    bn: str = "train",
    recalibrate: bool = True,
    augment: bool = True,
    max_zoom: float = 1.25,
    precision: str = "auto",
    seed: int = 0,
    on_step: Optional[Callable[[int, int], None]] = None,
    device: Optional[str] = "auto",
) -> Dict[str, object]:
    """Label-free distillation from ``teacher`` (unpruned) into ``student`` (pruned, trained in place).

    ``images``: unlabelled inputs as the model sees them (a list of tensors or
    an ImageBatch). Stops after ``steps`` optimiser steps or ``time_budget_s``
    seconds, whichever comes first. ``layout`` picks the loss (losses.py);
    ``bn`` is "train" (BatchNorm uses batch statistics while training, running
    statistics re-estimated at the end) or "frozen". ``precision`` "auto" uses
    bfloat16 autocast where the CPU supports it (about 1.8x faster steps
    measured here), on CUDA bfloat16 where the GPU has it, else float16 with
    gradient scaling; "bf16"/"fp16" force one, "fp32" never. ``device``
    "auto" trains on CUDA when torch sees a GPU, else on the CPU; "cpu" and
    "cuda" (or "cuda:N") pick one, and "cuda" without a GPU is an error. The
    student ends on the device it came on. ``augment``: horizontal flips and zoom-in
    crops up to ``max_zoom`` (the teacher labels whatever it is shown). The
    teacher is not modified. ``progress(event)`` receives one step event
    (edgekit.host.progress, stage "recover", plus the step's ``loss``) per
    step; ``on_step(done, total)`` is called after every step too (steps, or
    seconds of the time budget). Returns what happened (steps, seconds, losses, ...).
    """
    _check_recover_args(steps, time_budget_s, bn, precision, batch_size)
    target = resolve_device(device)
    source = ImageSource(images)
    if not len(source):
        raise ParameterError("recovery needs unlabelled images", "give {images}: images like the ones the model will see")
    amp = _autocast_dtype(precision, target)
    started = time.time()
    home = _device_of(student)
    student.to(target)
    masks_here = {k: v.to(target) for k, v in (masks or {}).items()}
    try:
        calibrated = recalibrate_bn(student, source) if recalibrate else 0
        teacher = _frozen_teacher(teacher).to(target)
        _channels_last(student)
        with torch.no_grad():
            reference = teacher(source.take(range(min(len(source), 16))).to(target))
        used_layout = layout if fits_layout(layout, reference) else None
        bs = min(batch_size, len(source))
        compute_loss = _distillation_step(student, teacher, source, distillation_loss(used_layout, reference), bs, augment, max_zoom, amp, seed, target)
        scaler = torch.amp.GradScaler("cuda") if amp == torch.float16 and target.type == "cuda" else None
        try:
            stats = _train_loop(student, compute_loss, steps, time_budget_s, lr, masks_here, progress or None, "recover", bn, on_step=on_step, scaler=scaler)
        finally:
            _channels_last(student, torch.contiguous_format)
        if bn == "train" and recalibrate:
            # Training normalised with batch statistics; the running statistics
            # (momentum-averaged, lagging behind the changing weights) are
            # re-estimated for the final weights so eval mode sees the same model.
            recalibrate_bn(student, source)
    finally:
        student.to(home)
    stats.update(
        {
            "method": "distillation",
            "images": int(len(source)),
            "batch_size": bs,
            "bn": bn,
            "bn_recalibrated_layers": calibrated,
            "layout": used_layout or "generic",
            "precision": {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(amp, "fp32"),  # type: ignore[call-overload]
            "device": str(target),
            "augment": ("flip+zoom%.2f" % max_zoom) if augment else "none",
            "seconds_total": round(time.time() - started, 3),
        }
    )
    if layout and used_layout is None:
        stats["layout_note"] = "the %s loss does not fit outputs of shape %s; used the generic one" % (layout, _shape_text(reference))
    return stats


# Output columns each layout's loss reads: (B, N, 5 + C) for yolov5 (box, objectness), (B, 4 + C, N) for yolov8.
_LAYOUT_MIN = {"yolov5": (-1, 5), "yolov8": (-2, 5)}


def fits_layout(layout: Optional[str], reference) -> bool:
    """Whether the ``layout`` loss can read these outputs (a model may be taken for a detector by its output shape alone)."""
    if layout not in _LAYOUT_MIN:
        return True
    first = flat_outputs(reference)
    if not first or first[0].dim() != 3:
        return False
    axis, least = _LAYOUT_MIN[layout]  # type: ignore[index]
    return int(first[0].shape[axis]) >= least


def _shape_text(outputs) -> str:
    first = flat_outputs(outputs)
    return "[%s]" % ", ".join(["N"] + [str(d) for d in first[0].shape[1:]]) if first else "(no tensor)"


def _autocast_dtype(precision: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype of the training steps, None for fp32."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        if precision == "fp16":
            return torch.float16
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if precision == "fp16":
        raise ParameterError("float16 training needs CUDA", "set {precision} to auto, bf16 or fp32 on the CPU")
    return torch.bfloat16 if bf16_supported() else None


def _check_recover_args(steps: Optional[int], time_budget_s: Optional[float], bn: str, precision: str, batch_size: int) -> None:
    check_budget(steps, time_budget_s)
    if bn not in BN_MODES:
        raise ParameterError("unknown BatchNorm mode %r" % bn, "set {bn} to one of: %s" % ", ".join(BN_MODES))
    if precision not in PRECISIONS:
        raise ParameterError("unknown precision %r" % precision, "set {precision} to one of: %s" % ", ".join(PRECISIONS))
    if batch_size < 1:
        raise ParameterError("batch size must be at least 1, got %r" % batch_size, "set {batch_size} to 1 or more")


def _frozen_teacher(teacher: nn.Module) -> nn.Module:
    """A private, frozen, channels-last copy of the teacher: the caller's model stays as it is."""
    import copy

    teacher = copy.deepcopy(teacher).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    _channels_last(teacher)
    return teacher


def _distillation_step(
    student, teacher, source: ImageSource, loss_fn, bs: int, augment: bool, max_zoom: float, amp: Optional[torch.dtype], seed: int, device: Optional[torch.device] = None
) -> Callable[[int], torch.Tensor]:
    """``compute_loss(step)``: a random (augmented) batch, the teacher's outputs as targets, the student's loss."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    device = device or torch.device("cpu")

    def compute_loss(step: int) -> torch.Tensor:
        idx = torch.randint(len(source), (bs,), generator=gen).tolist()
        x = source.take(idx)
        if augment:
            flip = torch.rand(bs, generator=gen) < 0.5
            if bool(flip.any()):
                x[flip] = x[flip].flip(-1)
            if max_zoom > 1.0:
                x = _zoom(x, gen, max_zoom)
        x = x.to(device).contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=amp or torch.bfloat16, enabled=amp is not None):
            with torch.no_grad():
                target = teacher(x)
            out = student(x)
        # The loss itself in float32.
        return loss_fn(_to_float(out), _to_float(target))

    return compute_loss


def _channels_last(model: nn.Module, memory_format: torch.memory_format = torch.channels_last) -> None:
    """Put the model's 4-D parameters and buffers in ``memory_format``, in place.

    Not ``model.to(memory_format=...)``: that goes through the model's own
    ``_apply``, and YOLOv5's ``Model._apply`` pushes ``Detect.grid`` and
    ``anchor_grid`` (5-D) through it too, which channels-last rejects
    ("required rank 4 tensor"). Only conv-shaped tensors gain from the layout.
    """
    for tensor in list(model.parameters()) + list(model.buffers()):
        if tensor.dim() == 4:
            tensor.data = tensor.data.contiguous(memory_format=memory_format)


def _to_float(outputs):
    if isinstance(outputs, torch.Tensor):
        return outputs.float()
    if isinstance(outputs, (list, tuple)):
        return type(outputs)(_to_float(o) for o in outputs)
    if isinstance(outputs, dict):
        return {k: _to_float(v) for k, v in outputs.items()}
    return outputs


def finetune(
    model: nn.Module,
    step_fn: Callable[[nn.Module, object], torch.Tensor],
    batches: Iterable,
    steps: Optional[int] = None,
    time_budget_s: Optional[float] = None,
    lr: float = 1e-3,
    optimizer: Optional[torch.optim.Optimizer] = None,
    masks: Optional[Masks] = None,
    progress: Optional[Callback] = None,
    bn: str = "train",
) -> Dict[str, object]:
    """Your own labelled fine-tuning: ``step_fn(model, batch)`` returns the loss of one batch.

    ``batches`` is cycled until the step or time budget is spent. Sparsity
    masks (``PruneResult.masks``) are re-applied after each step so zeros stay
    zero. The model is left in eval mode.
    """
    check_budget(steps, time_budget_s)
    source = iter(batches)
    first = [True]

    def compute_loss(step: int) -> torch.Tensor:
        nonlocal source
        try:
            batch = next(source)
        except StopIteration:
            if first[0]:
                raise ParameterError("the fine-tuning data yielded no batch", "give {batches} as a non-empty iterable")
            source = iter(batches)
            batch = next(source)
        first[0] = False
        return step_fn(model, batch)

    stats = _train_loop(model, compute_loss, steps, time_budget_s, lr, masks, progress or None, "finetune", bn, optimizer=optimizer)
    stats["method"] = "finetune"
    return stats
