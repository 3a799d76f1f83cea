"""Train the demo detector on CPU: ``python -m edgekit.host.demo.train`` (or ``edgekit demo train``).

Reproducible: the data is generated from a seed, and the weight init, batch
order and augmentation use fixed seeds. The training images are letterboxed
once, with the same code the device uses, and kept in memory as uint8, so each
step costs only the network. Mixed precision (bfloat16 autocast) and
channels-last halve the step time on CPUs with bf16 instructions; the loss and
the optimizer stay in float32.

The loop (:func:`train_detector`) takes any model with a YOLOv5 ``detect`` head
and any COCO folder, so accuracy recovery after pruning can call it too.
"""
import argparse
import copy
import math
import os
import sys
import tempfile
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from edgekit.calibration.preprocess import PreprocessSpec, load_rgb, resize_image
from edgekit.device.coco_eval import load_coco

from edgekit.contract.errors import EdgekitError

# Passes over the training split for the shipped weights (see docs/demo.md for the time it takes).
DEFAULT_EPOCHS = 6.0
# The same for demo-v8 (``--model demo-v8``): what its shipped weights were trained with.
DEFAULT_EPOCHS_V8 = 3.5


class LetterboxedSet(object):
    """A COCO folder letterboxed to the network input: uint8 images and pixel targets."""

    def __init__(self, images_dir: str, annotations: str, spec: PreprocessSpec, category_ids: Sequence[int], limit: Optional[int] = None) -> None:
        coco = load_coco(annotations)
        ids = sorted(coco.getImgIds())[:limit]
        index_of = {int(c): i for i, c in enumerate(category_ids)}
        h, w = spec.size
        self.images = torch.empty((len(ids), 3, h, w), dtype=torch.uint8)
        self.targets: List[torch.Tensor] = []
        for n, image_id in enumerate(ids):
            info = coco.loadImgs(image_id)[0]
            arr, tf = resize_image(load_rgb(os.path.join(images_dir, info["file_name"])), spec)
            self.images[n] = torch.from_numpy(arr).permute(2, 0, 1)
            rows = []
            for ann in coco.loadAnns(coco.getAnnIds(imgIds=image_id, iscrowd=False)):
                if int(ann["category_id"]) not in index_of:
                    raise EdgekitError("annotation category %s is not one of the model's classes" % ann["category_id"], "train with matching category ids")
                x, y, bw, bh = ann["bbox"]
                cx = (x + bw / 2.0) * tf.ratio_w + tf.pad_w
                cy = (y + bh / 2.0) * tf.ratio_h + tf.pad_h
                rows.append([index_of[int(ann["category_id"])], cx, cy, bw * tf.ratio_w, bh * tf.ratio_h])
            self.targets.append(torch.tensor(rows, dtype=torch.float32).view(-1, 5))
        self.width = w

    def __len__(self) -> int:
        return self.images.shape[0]

    def batch(self, indices: Sequence[int], flips: Sequence[bool]) -> Tuple[torch.Tensor, torch.Tensor]:
        """Float images in [0, 1] and (T, 6) targets; ``flips`` mirrors images left-right."""
        imgs = self.images[list(indices)].float().div_(255.0)
        rows = []
        for k, (i, flip) in enumerate(zip(indices, flips)):
            t = self.targets[i].clone()
            if flip:
                imgs[k] = imgs[k].flip(-1)
                t[:, 1] = self.width - t[:, 1]
            rows.append(torch.cat((torch.full((t.shape[0], 1), float(k)), t), 1))
        return imgs, torch.cat(rows, 0)


class ModelEMA(object):
    """Exponential moving average of weights; the average is what gets evaluated and shipped."""

    def __init__(self, model: nn.Module, decay: float = 0.999, tau: float = 400.0) -> None:
        self.ema = copy.deepcopy(model).eval()
        for p in self.ema.parameters():
            p.requires_grad_(False)
        self.decay, self.tau, self.updates = decay, tau, 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = self.decay * (1 - math.exp(-self.updates / self.tau))  # ramp up: early weights are noise
        msd = model.state_dict()
        for k, v in self.ema.state_dict().items():
            if v.dtype.is_floating_point:
                v.mul_(d).add_(msd[k].detach(), alpha=1 - d)
            else:
                v.copy_(msd[k])


def _param_groups(model: nn.Module, weight_decay: float) -> List[Dict[str, object]]:
    """Weight decay on conv weights only, never on BatchNorm or biases."""
    decay, no_decay = [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            (decay if name == "weight" and not isinstance(module, nn.BatchNorm2d) else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def train_detector(
    model: nn.Module,
    train_set: LetterboxedSet,
    epochs: float,
    batch_size: int = 16,
    lr: float = 2e-3,
    weight_decay: float = 5e-4,
    warmup_iters: int = 200,
    seed: int = 0,
    bf16: bool = True,
    log: Optional[Callable[[str], None]] = None,
    on_epoch: Optional[Callable[[int, nn.Module], None]] = None,
    loss_fn: Optional[Callable[..., Tuple[torch.Tensor, Dict[str, float]]]] = None,
) -> nn.Module:
    """Train ``model`` (YOLOv5 ``detect`` head) in place; returns the EMA copy, in eval mode.

    ``loss_fn(preds, targets) -> (loss, parts)`` replaces YOLOv5's loss (the
    anchor-free demo-v8 passes its own, :mod:`edgekit.host.demo.loss_v8`).

    ``epochs`` may be fractional; the learning rate warms up linearly, then
    follows a cosine to 1% of ``lr``.
    """
    from .loss import YoloLoss

    torch.manual_seed(seed)
    # Denormal floats can make CPU kernels many times slower as values get tiny; flushing them is harmless here.
    torch.set_flush_denormal(True)
    gen = torch.Generator().manual_seed(seed)
    n = len(train_set)
    steps_per_epoch = max(n // batch_size, 1)
    total = max(int(round(epochs * steps_per_epoch)), 1)
    image_size = max(train_set.images.shape[2:])
    model.train()
    model.to(memory_format=torch.channels_last)
    if loss_fn is None:
        loss_fn = YoloLoss(model.detect, image_size=image_size)  # type: ignore[arg-type]
    opt = torch.optim.AdamW(_param_groups(model, weight_decay), lr=lr, betas=(0.937, 0.999))
    ema = ModelEMA(model)
    use_bf16 = bf16 and _bf16_fast()
    step, t0, running = 0, time.time(), np.zeros(3)
    epoch = 0
    while step < total:
        order = torch.randperm(n, generator=gen).tolist()
        flips = (torch.rand(n, generator=gen) < 0.5).tolist()
        for b in range(steps_per_epoch):
            if step >= total:
                break
            idx = order[b * batch_size : (b + 1) * batch_size]
            imgs, targets = train_set.batch(idx, [flips[i] for i in idx])
            imgs = imgs.contiguous(memory_format=torch.channels_last)
            warm = min(1.0, (step + 1) / float(warmup_iters))
            cosine = 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * step / total))
            for group in opt.param_groups:
                group["lr"] = lr * warm * cosine
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
                preds = model(imgs)
            loss, parts = loss_fn(preds, targets)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            opt.step()
            ema.update(model)
            step += 1
            running = 0.9 * running + 0.1 * np.array([parts["box"], parts["obj"], parts["cls"]]) if step > 1 else np.array([parts["box"], parts["obj"], parts["cls"]])
            if log is not None and (step % 50 == 0 or step == total):
                rate = step * batch_size / (time.time() - t0)
                log("step %d/%d  epoch %.2f  loss box %.4f obj %.4f cls %.4f  lr %.2e  %.1f img/s  %.0fs"
                    % (step, total, step / float(steps_per_epoch), running[0], running[1], running[2], opt.param_groups[0]["lr"], rate, time.time() - t0))
        epoch += 1
        if on_epoch is not None:
            on_epoch(epoch, ema.ema)
    model.to(memory_format=torch.contiguous_format)
    out = ema.ema.to(memory_format=torch.contiguous_format)
    return out.float().eval()


def _bf16_fast() -> bool:
    """bfloat16 autocast only pays off with native bf16 (AVX512-BF16/AMX); else it is emulated and slow."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
        return "avx512_bf16" in flags or "amx_bf16" in flags
    except OSError:
        return False


def save_weights(model: nn.Module, path: str) -> None:
    """State dict in float16 (half the size; loaded back as float32), written atomically."""
    state = {k: (v.half() if v.is_floating_point() else v) for k, v in model.state_dict().items()}
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".%s.partial-" % os.path.basename(path), dir=directory)
    os.close(fd)
    try:
        torch.save(state, tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would hide shipped weights from other users
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def train_demo(
    out: str,
    epochs: float = DEFAULT_EPOCHS,
    cache_dir: Optional[str] = None,
    batch_size: int = 16,
    lr: float = 2e-3,
    seed: int = 0,
    threads: int = 1,
    limit: Optional[int] = None,
    bf16: bool = True,
    log: Callable[[str], None] = print,
    model_name: str = "demo",
) -> Dict[str, float]:
    """Generate the data if needed, train ``model_name`` from scratch, save fp16 weights to ``out``; returns val mAP stats."""
    from . import CATEGORY_IDS, build_demo_model, demo_data, evaluate_torch, load_demo_model, preprocess_spec

    torch.set_num_threads(threads)
    t0 = time.time()
    data = demo_data(cache_dir, train=True)
    log("data ready in %.0fs: %s" % (time.time() - t0, data.root))
    t1 = time.time()
    train_set = LetterboxedSet(data.train_images_dir or "", data.train_annotations or "", preprocess_spec(), CATEGORY_IDS, limit=limit)
    log("letterboxed %d training images in %.0fs" % (len(train_set), time.time() - t1))
    torch.manual_seed(seed)
    model = build_demo_model(model_name)
    model.detect.initialize_biases(max(preprocess_spec().size))
    loss_fn = None
    if model_name == "demo-v8":
        from .loss_v8 import AnchorFreeLoss

        loss_fn = AnchorFreeLoss(model.detect)

    def report(epoch: int, ema_model: nn.Module) -> None:
        stats = evaluate_torch(ema_model, data, limit=100)
        log("epoch %d: val[:100] mAP@0.5:0.95 %.3f  mAP@0.5 %.3f" % (epoch, stats["map"], stats["map50"]))

    t2 = time.time()
    trained = train_detector(model, train_set, epochs, batch_size=batch_size, lr=lr, seed=seed, bf16=bf16, log=log, on_epoch=report, loss_fn=loss_fn)
    log("trained in %.0fs" % (time.time() - t2))
    save_weights(trained, out)
    # Score what was shipped: the fp16 file loaded back, exactly as users get it.
    stats = evaluate_torch(load_demo_model(weights=out, name=model_name), data)
    log("saved %s (%.1f MB); val (%d images) mAP@0.5:0.95 = %.3f, mAP@0.5 = %.3f; total %.0fs"
        % (out, os.path.getsize(out) / 1e6, _count_images(data.val_annotations), stats["map"], stats["map50"], time.time() - t0))
    return stats


def _count_images(annotations: str) -> int:
    return len(load_coco(annotations).getImgIds())


def main(argv: Optional[List[str]] = None) -> int:
    from . import DEMO_MODELS

    parser = argparse.ArgumentParser(prog="python -m edgekit.host.demo.train", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="demo", choices=sorted(DEMO_MODELS), help="which demo detector to train")
    parser.add_argument("--out", default=None, help="where to write the weights (default: that model's shipped file)")
    parser.add_argument("--epochs", type=float, default=None, help="default: %s (demo), %s (demo-v8)" % (DEFAULT_EPOCHS, DEFAULT_EPOCHS_V8))
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="1 is fastest on a shared CPU (see docs/demo.md)")
    parser.add_argument("--limit", type=int, default=None, help="train on the first N images only")
    parser.add_argument("--no-bf16", action="store_true", help="train in float32 throughout")
    parser.add_argument("--cache-dir", default=None)
    args = parser.parse_args(argv)

    def log(msg: str) -> None:
        print(msg, flush=True)

    try:
        out = args.out or DEMO_MODELS[args.model][1]
        epochs = args.epochs if args.epochs is not None else (DEFAULT_EPOCHS_V8 if args.model == "demo-v8" else DEFAULT_EPOCHS)
        train_demo(out, epochs, args.cache_dir, args.batch_size, args.lr, args.seed, args.threads, args.limit, not args.no_bf16, log, args.model)
    except EdgekitError as exc:
        print("error: %s" % exc.one_line(), file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
