"""Structured channel pruning with channel alignment, and accuracy recovery.

Public API (used by ``edgekit prune`` and ``edgekit build``)::

    from edgekit.host.prune import PruneConfig, prune_model, recover

    result = prune_model(model, example_input, PruneConfig(ratio=0.5, alignment=8), calib_images)
    result.model            # pruned copy, eval mode, float32
    result.report.to_dict() # JSON for the bundle; result.report.write(folder) -> JSON + PNG
    # edgekit.host.cli.prune_report.render_prune_report(result.report) draws it
    recover(result.model, model, calib_images, steps=300, layout="yolov5")

Modules: graph (dependency graph, fixed layers), groups (importance, applying
a plan), strategies (uniform/global/sensitivity/BN threshold), sensitivity
(damage measurement), macs (MACs model), alignment (the check), sparsity
(unstructured, 2:4), slimming (BN L1 penalty for training), recovery
(distillation, fine-tuning), report, checkpoint (saving pruned models).
"""
from .checkpoint import PRUNED_FORMAT, load_pruned_state, save_pruned
from .config import CRITERIA, SPARSITY_KINDS, STRATEGIES, PruneConfig
from .core import PruneResult, prune_model, stack_images
from .recovery import finetune, recalibrate_bn, recover
from edgekit.host.prune.summary import REPORT_JSON, REPORT_PNG, PruneReport
from .slimming import DEFAULT_COEFFICIENT, add_bn_l1_grad, bn_l1_penalty, bn_scale_summary
from .sparsity import reapply_masks

__all__ = [
    "CRITERIA",
    "DEFAULT_COEFFICIENT",
    "PRUNED_FORMAT",
    "PruneConfig",
    "PruneReport",
    "PruneResult",
    "REPORT_JSON",
    "REPORT_PNG",
    "SPARSITY_KINDS",
    "STRATEGIES",
    "add_bn_l1_grad",
    "bn_l1_penalty",
    "bn_scale_summary",
    "finetune",
    "load_pruned_state",
    "prune_model",
    "reapply_masks",
    "recalibrate_bn",
    "recover",
    "save_pruned",
    "stack_images",
]
