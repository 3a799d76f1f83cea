"""prune_model: one structured-pruning run, from the user's model to a checked, reported result."""
import copy
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from edgekit.contract.errors import EdgekitError
from .param_errors import ParameterError
from . import graph as G
from . import rewrites as R
from . import sparsity as S
from . import strategies
from .alignment import check_alignment, layer_shapes
from .config import PruneConfig
from .groups import apply_plan, collect_groups
from .macs import MacsModel
from .metrics import count_macs_params, state_dict_bytes
from edgekit.host.prune.summary import PruneReport
from .sensitivity import measure_damage
from .trial import check_pruned, planned_widths, unprunable_groups

Progress = Optional[Callable[[str, int, int], None]]


@dataclass
class PruneResult:
    model: nn.Module  # pruned, eval mode, float32 (the caller's model is untouched)
    report: PruneReport
    masks: Dict[str, torch.Tensor] = field(default_factory=dict)  # sparsity masks, for training that must keep the zeros


def stack_images(images, limit: Optional[int] = None) -> Optional[torch.Tensor]:
    """A list of (1, C, H, W) or (N, C, H, W) tensors, one tensor, or an
    ``edgekit.calibration.images.ImageBatch`` -> one (N, C, H, W) float tensor (the first ``limit``)."""
    if images is None:
        return None
    if hasattr(images, "tensor") and hasattr(images, "pixels"):  # ImageBatch: decoded uint8, converted here
        n = len(images) if limit is None else min(limit, len(images))
        if not n:
            return None
        return torch.cat([torch.from_numpy(images.tensor(i)) for i in range(n)], 0).float()
    if isinstance(images, torch.Tensor):
        batch = images if images.dim() == 4 else images.unsqueeze(0)
    else:
        items = [t if t.dim() == 4 else t.unsqueeze(0) for t in images]
        if not items:
            return None
        batch = torch.cat(items, 0)
    batch = batch.float()
    return batch[:limit] if limit else batch


def _apply_checked(work, dg, example_input, outputs_before, before, groups, plan) -> Tuple[nn.Module, List[Dict[str, str]]]:
    """Apply the plan; when the result is wrong, find the groups that break it, leave them whole and apply the rest.

    Returns the pruned model (``work`` itself, or a fresh copy when groups had
    to be left out) and one entry per excluded group: group, block, reason.
    """
    pristine = copy.deepcopy(work)
    apply_plan(work, dg, groups, plan.keep)
    failure = check_pruned(work, example_input, outputs_before, planned_widths(before, groups, plan.keep))
    if failure is None:
        return work, []
    bad, _ = unprunable_groups(pristine, example_input, outputs_before, before, groups, plan.keep, failure)
    by_name = {g.name: g for g in groups}
    excluded = []
    for name, reason in bad.items():
        g = by_name[name]
        plan.keep[name] = g.slots
        plan.target[name] = float(g.slots)
        excluded.append({"group": name, "block": _block_of(pristine, g), "reason": reason})
    work = pristine
    apply_plan(work, G.build_graph(work, example_input), groups, plan.keep)
    return work, excluded


def _block_of(model: nn.Module, group) -> str:
    """Where the group lives, as 'name (Type)': the innermost module holding all the layers it touches."""
    names = [n for n, _ in group.out_layers + group.in_layers] or [group.name]
    block = G.common_prefix(names)
    while block:
        try:
            return "%s (%s)" % (block, type(model.get_submodule(block)).__name__)
        except AttributeError:
            block = block.rsplit(".", 1)[0] if "." in block else ""
    return "the model (%s)" % type(model).__name__


def prune_model(
    model: nn.Module,
    example_input: torch.Tensor,
    config: PruneConfig,
    calib_images: Optional[Sequence[torch.Tensor]] = None,
    progress: Progress = None,
    layout: Optional[str] = None,
) -> PruneResult:
    """Structured, dependency-aware channel pruning with every channel count aligned.

    Works on a deep copy (the caller's model is not modified). ``example_input``
    is one input batch (1, C, H, W) at the size the model will be deployed at;
    ``calib_images`` (same size) feed the sensitivity analysis. Problems the
    user can fix raise EdgekitError; alignment failures that remain are listed
    in ``report.problems`` with ``report.aligned`` False. ``layout`` (the
    model's output layout, e.g. "yolov5") picks how the sensitivity analysis
    measures damage; ``progress(stage, done, total)`` reports long stages.
    """
    config.validate()
    started = time.time()
    example_input = example_input.float()
    work, frozen = G.prepare(model)
    # Checks compare what will be exported (heads in export mode), and blocks
    # that cut a layer's output with chunk/split are rewritten first, checked
    # equal on real inputs (edgekit.host.prune.rewrites).
    heads = R.set_export_mode(work)
    check_images = stack_images(calib_images, 4)
    rewritten = R.rewrite_splits(work, [example_input] + ([check_images] if check_images is not None and list(check_images.shape[1:]) == list(example_input.shape[1:]) else []), R.head_prefixes(work))
    outputs_before = G.output_shapes(G.run_model(work, example_input))
    macs_before, params_before = count_macs_params(work, example_input)
    size_before = state_dict_bytes(work)

    dg = G.build_graph(work, example_input)
    layer_names = [name for name, _ in G.traced_layers(work, dg)]
    if not layer_names:
        raise EdgekitError("the model has no conv or linear layer that its forward pass uses", "pass a CNN or MLP model")
    fixed = G.find_fixed_layers(work, dg, config.ignore)
    split_kept = R.unsplit_producers(work, dg, fixed)
    input_fed = G.input_fed_layers(work, dg)
    before = layer_shapes(work, layer_names)

    groups = collect_groups(work, dg, list(fixed), config.criterion, config.alignment)
    notes = rewritten.notes()
    if config.criterion == "bn":
        no_bn = [g.name for g in groups if g.by != "bn"]
        if no_bn:
            notes.append("%d group(s) have no BatchNorm and were ranked by L1 magnitude (e.g. %s)" % (len(no_bn), no_bn[0]))
    macs = MacsModel(work, example_input, groups)

    if config.bn_threshold is not None:
        plan = strategies.bn_threshold(groups, config.bn_threshold)
    elif config.strategy == "sensitivity":
        images = stack_images(calib_images, config.sensitivity_images)
        if images is None:
            raise ParameterError("the sensitivity strategy needs calibration images", "give {calib_images}: images like the ones the model will see")
        if list(images.shape[1:]) != list(example_input.shape[1:]):
            raise EdgekitError(
                "calibration images are %s but the model input is %s" % ("x".join(map(str, images.shape[1:])), "x".join(map(str, example_input.shape[1:]))),
                "preprocess the calibration images to the model's input size",
            )
        target = config.target_macs
        if target is None:
            uniform_plan = strategies.uniform(groups, config.effective_ratio)
            target = macs.reduction([uniform_plan.keep[g.name] for g in groups])
            notes.append("sensitivity aims at the %.1f%% fewer MACs that uniform ratio %g gives" % (100 * target, config.effective_ratio))
        curves = measure_damage(
            work,
            dg,
            groups,
            images,
            config.sensitivity_levels,
            config.max_group_ratio,
            progress=(lambda d, t: progress("sensitivity", d, t)) if progress else None,
            layout=layout,
        )
        plan = strategies.sensitivity(groups, macs, curves, target, config.max_group_ratio)
    elif config.strategy == "global":
        if config.target_macs is not None:
            plan = strategies.search_ratio(lambda r: strategies.global_ranking(groups, r, config.max_group_ratio), macs, groups, config.target_macs)
        else:
            plan = strategies.global_ranking(groups, config.effective_ratio, config.max_group_ratio)
    else:
        if config.target_macs is not None:
            plan = strategies.search_ratio(lambda r: strategies.uniform(groups, r), macs, groups, config.target_macs)
        else:
            plan = strategies.uniform(groups, config.effective_ratio)
    notes.extend(plan.notes)
    if config.target_macs is not None and plan.ratio is not None:
        notes.append("ratio %.4f meets the MACs target" % plan.ratio)

    work, excluded = _apply_checked(work, dg, example_input, outputs_before, before, groups, plan)
    del dg
    excluded = split_kept + excluded
    if excluded:
        notes.append(
            "%d group(s) could not be pruned correctly and were left unpruned (see 'excluded'): %s" % (len(excluded), ", ".join(e["group"] for e in excluded))
        )

    runs = True
    problems = []
    outputs_after: list = []
    try:
        outputs_after = G.output_shapes(G.run_model(work, example_input, "the pruned model"))
    except EdgekitError as exc:
        runs = False
        problems.append(exc.problem)
    if runs and outputs_after != outputs_before:
        problems.append("output shapes changed from %s to %s" % (outputs_before, outputs_after))
    rows, align_problems = check_alignment(before, work, config.alignment, fixed, input_fed, groups, plan)
    problems.extend(align_problems)
    macs_after, params_after = count_macs_params(work, example_input) if runs else (macs_before, sum(p.numel() for p in work.parameters()))

    masks: Dict[str, torch.Tensor] = {}
    sparsity_info = None
    if config.sparsity == "unstructured":
        masks = S.apply_unstructured(work, config.sparsity_ratio, layer_names)
        sparsity_info = S.measure(work, "unstructured", masks, layer_names, ratio=config.sparsity_ratio)
    elif config.sparsity == "2:4":
        masks, skipped = S.apply_two_four(work, layer_names)
        sparsity_info = S.measure(work, "2:4", masks, layer_names, skipped=skipped)

    G.restore_frozen(work, frozen)
    R.restore_mode(work, heads)
    work.eval()
    report = PruneReport(
        criterion=config.criterion,
        strategy="bn-threshold" if config.bn_threshold is not None else config.strategy,
        ratio=plan.ratio if plan.ratio is not None else (config.effective_ratio if config.strategy == "sensitivity" and config.target_macs is None and config.bn_threshold is None else None),
        target_macs=config.target_macs,
        bn_threshold=config.bn_threshold,
        alignment=config.alignment,
        input_shape=list(example_input.shape),
        params_before=params_before,
        params_after=params_after,
        macs_before=macs_before,
        macs_after=macs_after,
        size_before=size_before,
        size_after=state_dict_bytes(work),
        layers=rows,
        aligned=not align_problems,
        runs=runs,
        outputs_before=outputs_before,
        outputs_after=outputs_after,
        problems=problems,
        notes=notes,
        ignore=list(config.ignore),
        groups=len(groups),
        sparsity=sparsity_info,
        excluded=excluded,
        seconds=time.time() - started,
    )
    return PruneResult(model=work, report=report, masks=masks)
