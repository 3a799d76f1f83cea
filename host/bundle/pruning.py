"""Pruning inside a build: one pruned model per ``--prune`` ratio, with its report.

The work is edgekit.host.prune's (Torch-Pruning, channels aligned to the
profile's alignment, optional distillation back towards the unpruned model);
this module only feeds it the build's calibration images and files its report
into the bundle (reports/<p30>/prune_report.json and prune_channels.png).
"""
import os
import tempfile
from typing import Any, Callable, Dict, Optional, Tuple

import torch

from edgekit.calibration.images import ImageBatch

from edgekit.contract.errors import EdgekitError
from ..prune import PruneConfig
from ..prune.run import prune_and_recover


def prune_for_bundle(
    source: Any, ratio: float, alignment: int, calib: ImageBatch, options: Any, writer: Any, name: str, on_step: Optional[Callable[[int, int], None]] = None
) -> Tuple[Any, Dict[str, Any]]:
    """(pruned model in eval mode, manifest ``prune`` block); report files go into the bundle.

    ``on_step(done, total)`` follows the recovery (steps, or seconds of its budget)."""
    if source.module is None:
        raise EdgekitError("--prune needs a PyTorch model, %s is ONNX" % source.source, "pass the .pt checkpoint, or --prune 0")
    if calib is None or not len(calib):
        raise EdgekitError("pruning needs calibration images", "pass --calib DIR")
    extra = dict(options.prune_options or {})
    config = PruneConfig(ratio=ratio, alignment=alignment, **extra)
    images = [torch.from_numpy(calib.tensor(i)) for i in range(len(calib))]
    steps = options.recover_steps or None
    seconds = options.recover_seconds or None

    def refuse_unusable(result: Any) -> None:
        # Checked before recovery, so a refused ratio does not spend the recovery budget first.
        if not result.report.ok:
            raise EdgekitError(
                "pruning at %g left a model that is not usable (%s)" % (ratio, "; ".join(result.report.problems) or "outputs changed"),
                "try a smaller --prune ratio or another strategy",
            )

    result = prune_and_recover(
        source.module, config, source.input_size, images, layout=source.postprocess.layout, recover_steps=steps, recover_time_s=seconds, on_recover_step=on_step, check=refuse_unusable,
        device=getattr(options, "device", "auto"),
    )
    report = result.report
    folder = "reports/%s" % name
    with tempfile.TemporaryDirectory(prefix="edgekit-prune-") as tmp:
        paths = report.write(tmp)
        json_rel = writer.add_file("%s/%s" % (folder, os.path.basename(paths["json"])), paths["json"])
        png_rel = writer.add_file("%s/%s" % (folder, os.path.basename(paths["png"])), paths["png"])
    block = {
        "ratio": ratio,
        "criterion": report.criterion,
        "strategy": report.strategy,
        "alignment": report.alignment,
        "aligned": report.aligned,
        "params": {"before": report.params_before, "after": report.params_after},
        "macs": {"before": report.macs_before, "after": report.macs_after, "reduction": round(report.macs_reduction, 4)},
        "recovery": report.recovery,
        "report": json_rel,
        "chart": png_rel,
    }
    model = result.model.float().eval()
    return model, block
