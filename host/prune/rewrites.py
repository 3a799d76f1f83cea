"""Verified graph rewrites before pruning: a layer whose output is cut with
``chunk``/``split`` becomes one layer per piece.

Why by hand: Torch-Pruning (1.6) follows a channel split in its dependency
graph (it maps pruned indices onto the pieces), but it cannot change the
model's *code*: YOLOv8's C2f cuts ``self.cv1(x).chunk(2, 1)`` in halves of
whatever size the tensor has at run time, YOLO11's C2PSA cuts
``split((self.c, self.c), 1)`` with a stored size. Once the two halves lose
different channels, the pieces no longer line up (Torch-Pruning issue #147;
its own YOLOv8 example rewrites C2f by hand into a ``C2f_v2`` class with two
convs). Here the rewrite is generic and keeps the user's classes: the layer
(e.g. Ultralytics' ``Conv``: conv + BatchNorm + activation) is replaced by a
:class:`SplitConv` that holds one copy of it per piece, each keeping only its
piece's output channels, and returns the pieces as a :class:`Pieces` tuple
whose ``chunk``/``split`` methods hand them back unchanged. The block's own
``forward`` (C2f, C3k2, C2PSA, ...) runs as written, and after pruning each
piece may keep any number of channels.

Which layers are rewritten is found by running the model once: every
module's output tensor is recorded (forward hooks) and every ``Tensor.chunk``
/ ``Tensor.split`` call on the channel dimension of one of those tensors
(a ``TorchFunctionMode``). Each rewrite is then checked, numerically, against
the unrewritten model on the given inputs (real images where the caller has
them), within :data:`RTOL` / :data:`ATOL`; a rewrite that changes the outputs
is undone and its layer is left for :func:`unsplit_producers`, which keeps
its channels and names it. A split the rewrite does not cover (YOLO11's
attention cuts ``qkv.view(B, heads, ...)`` per head) never refuses the model:
its producer keeps its channels, and the block is named in the report.

Attention blocks (Ultralytics' ``Attention``/``AAttn``: ``qkv.view(B, heads,
...)``, a split per head, matmuls, a ``view`` back to ``(B, C, H, W)`` with
the input's C) are left unpruned, whole, and named (``excluded``): pruning
whole heads would need their code changed to keep ``heads * head_dim``
equal to every reshape. Torch-Pruning's tracer would follow the per-head
reshapes into index mappings that grow with H*W (minutes and GBs at 320x320
on YOLO11n), so each such block is wrapped in :class:`Opaque`, which runs it
as one autograd node (recomputed in backward, as ``torch.utils.checkpoint``
does); the layers feeding it keep their channels.
"""
import copy
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch_pruning as tp
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils.checkpoint import checkpoint
from torch_pruning import ops

from . import graph as G

# Outputs of the rewritten model must match the original's elementwise within
# |a - b| <= ATOL + RTOL * |b| (float32; slicing a conv's output channels only
# changes the kernels' blocking, measured below 1e-6 on YOLOv8n/YOLO11n).
RTOL = 1e-4
ATOL = 1e-5


class Pieces(tuple):
    """The pieces of a rewritten layer's output; ``chunk`` and ``split`` on the channel dimension return them as they are."""

    def _pieces(self, dim: int, what: str) -> Tuple[torch.Tensor, ...]:
        if dim not in (1, -self[0].dim() + 1):
            raise RuntimeError("a rewritten layer's output was cut with %s on dimension %d, not the channel dimension it was rewritten for" % (what, dim))
        return tuple(self)

    def chunk(self, chunks: int, dim: int = 0) -> Tuple[torch.Tensor, ...]:
        if chunks != len(self):
            raise RuntimeError("a rewritten layer's output was cut into %d chunks, not the %d it was rewritten for" % (chunks, len(self)))
        return self._pieces(dim, "chunk")

    def split(self, split_size, dim: int = 0) -> Tuple[torch.Tensor, ...]:
        # The sizes are the unpruned ones (a block's stored ``self.c``); after
        # pruning the pieces are whatever each kept, which is the point.
        if isinstance(split_size, int) or len(split_size) != len(self):
            raise RuntimeError("a rewritten layer's output was split as %r, not into the %d pieces it was rewritten for" % (split_size, len(self)))
        return self._pieces(dim, "split")


class SplitConv(nn.Module):
    """One copy of a layer per piece of its output (see the module doc); returns :class:`Pieces`."""

    def __init__(self, pieces: Sequence[nn.Module]) -> None:
        super().__init__()
        self.pieces = nn.ModuleList(pieces)

    def forward(self, x):
        return Pieces(p(x) for p in self.pieces)


# Blocks that reshape channels into attention heads (by class name: the
# Ultralytics package is optional). They run whole and are never pruned.
ATTENTION_TYPES = ("Attention", "AAttn")


class Opaque(nn.Module):
    """Runs ``block`` as one autograd node, so that a tracer sees its input and output only (see the module doc)."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, x):
        # Only where autograd records a graph (tracing for pruning, training):
        # exporters (TorchScript tracing, torch.export) see the block itself.
        if torch.is_grad_enabled() and x.requires_grad and not _exporting():
            return checkpoint(self.block, x, use_reentrant=True)
        return self.block(x)


def _exporting() -> bool:
    compiling = getattr(getattr(torch, "compiler", None), "is_compiling", None)
    return bool(torch.jit.is_tracing() or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export() or (compiling is not None and compiling()))


def _is_opaque_node(node) -> bool:
    fn = getattr(node, "grad_fn", None)
    return fn is not None and hasattr(fn, "name") and "CheckpointFunction" in fn.name()


@dataclass
class Rewrite:
    name: str  # the module replaced (e.g. "model.2.cv1")
    block: str  # where it is: "model.2 (C2f)"
    sizes: List[int]  # channels of each piece


@dataclass
class RewriteResult:
    rewritten: List[Rewrite] = field(default_factory=list)
    opaque: List[str] = field(default_factory=list)  # attention blocks wrapped whole (never pruned)
    refused: Dict[str, str] = field(default_factory=dict)  # module name -> why it was not rewritten
    max_abs_diff: float = 0.0  # rewritten against original outputs, on the checked inputs
    inputs: int = 0  # images the check ran on

    def notes(self) -> List[str]:
        out = [n for n in [self.note()] if n]
        if self.opaque:
            out.append("%d attention block(s) left whole, unpruned (%s): see 'excluded'" % (len(self.opaque), ", ".join(self.opaque)))
        out.extend("layer '%s' was not rewritten: %s" % kv for kv in self.refused.items())
        return out

    def note(self) -> Optional[str]:
        if not self.rewritten:
            return None
        return (
            "%d layer(s) whose output is cut with chunk/split became one layer per piece (%s); outputs checked equal to the original on %d input(s): max |diff| %.2e (tolerance %g + %g*|ref|)"
            % (len(self.rewritten), ", ".join(r.name for r in self.rewritten), self.inputs, self.max_abs_diff, ATOL, RTOL)
        )


class _SplitRecorder(TorchFunctionMode):
    """Records ``Tensor.chunk``/``Tensor.split`` calls: (input tensor, piece sizes, dim)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: List[Tuple[torch.Tensor, List[int], int]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func in (torch.Tensor.chunk, torch.Tensor.split) and args and isinstance(args[0], torch.Tensor):
            dim = kwargs.get("dim", args[2] if len(args) > 2 else 0)
            t = args[0]
            if isinstance(out, (tuple, list)) and t.dim() >= 2 and dim in (1, 1 - t.dim()):
                self.calls.append((t, [int(o.shape[1]) for o in out], 1))
        return out


def _layers_in(m: nn.Module) -> List[nn.Module]:
    return [x for x in m.modules() if isinstance(x, G.LAYER_TYPES)]


def find_split_layers(model: nn.Module, x: torch.Tensor, skip: Sequence[str] = ()) -> List[Tuple[str, List[int]]]:
    """(module name, piece sizes) for each module whose output is cut on the channel dimension.

    The module chosen is the largest one whose output is the cut tensor and
    that holds exactly one conv/linear layer with that many output channels
    (Ultralytics' ``Conv`` rather than its ``act``); modules under ``skip``
    prefixes (the task heads) are left alone.
    """
    producers: Dict[int, Tuple[str, torch.Tensor]] = {}
    hooks = []

    def hook(name):
        def record(module, inputs, output):
            if isinstance(output, torch.Tensor) and len(_layers_in(module)) == 1:
                layer = _layers_in(module)[0]
                if G.channels(layer)[1] == (output.shape[1] if output.dim() > 1 else -1):
                    producers[id(output)] = (name, output)  # outer modules run their hook last: the largest wins

        return record

    for name, m in model.named_modules():
        if name and not any(name == s or name.startswith(s + ".") for s in skip):
            hooks.append(m.register_forward_hook(hook(name)))
    recorder = _SplitRecorder()
    try:
        with torch.no_grad(), recorder:
            model(x)
    finally:
        for h in hooks:
            h.remove()
    found: Dict[str, List[int]] = {}
    for t, sizes, _ in recorder.calls:
        hit = producers.get(id(t))
        if hit is not None and hit[1] is t and len(sizes) > 1:
            found.setdefault(hit[0], sizes)
    order = [n for n, _ in model.named_modules()]
    return sorted(found.items(), key=lambda kv: order.index(kv[0]))


def _piece(module: nn.Module, start: int, stop: int) -> nn.Module:
    """A copy of ``module`` keeping output channels [start, stop) of its one layer, and of every BatchNorm of that width after it.

    Torch-Pruning's own per-layer functions remove the channels (they know
    every layer type's weight layout)."""
    piece = copy.deepcopy(module)
    layer = _layers_in(piece)[0]
    width = G.channels(layer)[1]
    drop = [i for i in range(width) if not start <= i < stop]
    if isinstance(layer, nn.Linear):
        tp.prune_linear_out_channels(layer, drop)
    else:
        tp.prune_conv_out_channels(layer, drop)
    for m in piece.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.num_features == width:
            tp.prune_batchnorm_out_channels(m, drop)
    return piece


def _outputs(model: nn.Module, inputs: Sequence[torch.Tensor]) -> List[torch.Tensor]:
    with torch.no_grad():
        return [t.detach().float() for x in inputs for t in G.flat_outputs(model(x))]


def _compare(ref: List[torch.Tensor], got: List[torch.Tensor]) -> Tuple[bool, float]:
    if len(ref) != len(got) or any(a.shape != b.shape for a, b in zip(ref, got)):
        return False, float("inf")
    worst, ok = 0.0, True
    for a, b in zip(ref, got):
        diff = (a - b).abs()
        worst = max(worst, float(diff.max()) if diff.numel() else 0.0)
        ok = ok and bool((diff <= ATOL + RTOL * a.abs()).all())
    return ok, worst


def _block_name(model: nn.Module, name: str) -> str:
    parent = name.rsplit(".", 1)[0] if "." in name else ""
    return "%s (%s)" % (parent or "the model", type(model.get_submodule(parent) if parent else model).__name__)


def _replace(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = getattr(parent, child)
    setattr(parent, child, new)
    return old


def rewrite_splits(model: nn.Module, inputs: Sequence[torch.Tensor], skip: Sequence[str] = ()) -> RewriteResult:
    """Rewrite, in place, every layer whose output is cut on the channel dimension (see the module doc).

    ``inputs``: input batches the check runs on (the first one also finds the
    layers). Every kept rewrite is checked equal to the original model's
    outputs; one that is not is undone and listed in ``refused``."""
    result = RewriteResult()
    inputs = [x for x in inputs if x is not None]
    if not inputs:
        return result
    found = find_split_layers(model, inputs[0], skip)
    attention = [
        name for name, m in model.named_modules()
        if name and type(m).__name__ in ATTENTION_TYPES and not any(name == s or name.startswith(s + ".") for s in skip)
    ]
    if not found and not attention:
        return result
    reference = _outputs(model, inputs)
    result.inputs = sum(int(x.shape[0]) for x in inputs)

    def check() -> Tuple[bool, float, str]:
        try:
            return _compare(reference, _outputs(model, inputs)) + ("",)
        except Exception as exc:  # the block's code uses the output in another way than chunk/split
            return False, float("inf"), "%s: %s" % (type(exc).__name__, " ".join(str(exc).split())[:120])

    if attention:  # wrapped and checked first, so that a block this does not fit cannot cost the split rewrites
        for name in attention:
            _replace(model, name, Opaque(model.get_submodule(name)))
        ok, _, why = check()
        if ok:
            result.opaque = attention
        else:
            for name in attention:
                _replace(model, name, model.get_submodule(name).block)
            result.refused.update({name: "running it as one node changes the outputs (%s)" % (why or "numbers differ") for name in attention})
    done: List[Tuple[Rewrite, nn.Module]] = []
    for name, sizes in found:
        module = model.get_submodule(name)
        bounds = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
        try:
            split = SplitConv([_piece(module, bounds[i], bounds[i + 1]) for i in range(len(sizes))])
        except Exception as exc:  # a layer type Torch-Pruning cannot slice
            result.refused[name] = "cannot slice it (%s: %s)" % (type(exc).__name__, " ".join(str(exc).split())[:120])
            continue
        done.append((Rewrite(name, _block_name(model, name), list(sizes)), _replace(model, name, split)))
    if not done:
        return result
    ok, worst, _ = check()
    if not ok:
        # Find the rewrites that break it, one at a time (rare: a block that also uses the whole tensor).
        for rw, old in done:
            _replace(model, rw.name, old)
        kept = []
        for rw, old in done:
            split = SplitConv([_piece(old, a, b) for a, b in zip([0] + list(_cumsum(rw.sizes))[:-1], _cumsum(rw.sizes))])
            _replace(model, rw.name, split)
            ok1, diff1, why = check()
            if ok1:
                kept.append((rw, old))
            else:
                _replace(model, rw.name, old)
                result.refused[rw.name] = "rewriting it changes the outputs (%s)" % (why or "max |diff| %.3g" % diff1)
        done = kept
        worst = check()[1] if done else 0.0
    result.rewritten = [rw for rw, _ in done]
    result.max_abs_diff = worst if done else 0.0
    return result


def _cumsum(sizes: Sequence[int]) -> List[int]:
    out, total = [], 0
    for s in sizes:
        total += s
        out.append(total)
    return out


def unsplit_producers(model: nn.Module, graph: tp.DependencyGraph, fixed: Dict[str, str]) -> List[Dict[str, str]]:
    """Keep the channels of every layer whose output is still cut with chunk/split (one the rewrite did not cover).

    Adds them to ``fixed`` (in place) and returns one report entry each
    (group, block, reason), for ``PruneReport.excluded``. Torch-Pruning maps
    channels through such a split, but the code that cuts the tensor (a
    stored size, a per-head ``view``) does not follow, so pruning them would
    break the model."""
    names = G.module_names(model)
    wrapped = [(name, type(m.block).__name__) for name, m in model.named_modules() if isinstance(m, Opaque)]
    entries = []
    for node in graph.module2node.values():
        if _is_opaque_node(node) and wrapped:
            for producer in G._upstream_layers(node):
                name = names.get(producer.module)
                if name is None or name in fixed:
                    continue
                block, kind = max(wrapped, key=lambda w: len(G.common_prefix([w[0], name])))
                fixed[name] = "feeds attention block %s (%s), kept whole" % (block, kind)
                entries.append(
                    {
                        "group": name,
                        "block": "%s (%s)" % (block, kind),
                        "reason": "its output feeds an attention block, whose per-head reshapes use the unpruned width; the block and the channels feeding it are kept",
                    }
                )
            continue
        if node.type not in (ops.OPTYPE.SPLIT, ops.OPTYPE.UNBIND):
            continue
        for producer in G._upstream_layers(node):
            name = names.get(producer.module)
            if name is None or name in fixed:
                continue
            consumers = [names.get(n.module, "") for n in G._downstream_layers(node)]
            block = G.common_prefix([name] + consumers) or name.rsplit(".", 1)[0]
            try:
                where = "%s (%s)" % (block, type(model.get_submodule(block)).__name__) if block else "the model (%s)" % type(model).__name__
            except AttributeError:
                where = block
            fixed[name] = "output cut with chunk/split in %s (kept whole)" % where
            entries.append(
                {
                    "group": name,
                    "block": where,
                    "reason": "its output is cut with chunk/split in a way the rewrite does not cover (e.g. per attention head after a reshape); its channels are kept",
                }
            )
    return entries


def set_export_mode(model: nn.Module) -> List[str]:
    """Put known task heads with an ``export`` flag (YOLOv5/Ultralytics) in export mode; returns their names (for :func:`restore_mode`).

    In eval mode an Ultralytics ``Detect`` returns ``(predictions, {'boxes', 'scores', 'feats'})``,
    whose ``feats`` are the neck's feature maps: their widths change with
    pruning although the exported output does not. Checks compare what is exported."""
    changed = []
    for name, m in model.named_modules():
        if type(m).__name__ in G.KNOWN_HEADS and isinstance(getattr(m, "export", None), bool) and not m.export:
            m.export = True
            changed.append(name)
    return changed


def restore_mode(model: nn.Module, heads: Sequence[str]) -> None:
    """Undo :func:`set_export_mode` (by name: pruning may have replaced the model with a copy)."""
    for name in heads:
        model.get_submodule(name).export = False


def head_prefixes(model: nn.Module) -> List[str]:
    return [name for name, m in model.named_modules() if name and type(m).__name__ in G.KNOWN_HEADS]


def restore_structure(model: nn.Module, names) -> List[str]:
    """Re-apply the rewrites' structure to an unrewritten ``model``, from the module/parameter ``names`` a pruned file holds.

    A pruned model is saved as plain data (edgekit.host.prune.checkpoint): its
    names say where :class:`SplitConv` (``<layer>.pieces.<i>``) and
    :class:`Opaque` (``<block>.block``) stood. The copies made here are only
    skeletons: loading resizes them and fills in the saved weights.
    Returns the names of the modules replaced."""
    names = list(names)
    have = dict(model.named_modules())
    done: List[str] = []
    # Outer modules first: an attention block may sit inside a rewritten block's children, never the reverse.
    for prefix in sorted({n.split(".block.")[0] for n in names if ".block." in n}, key=lambda p: p.count(".")):
        m = have.get(prefix)
        if m is not None and not isinstance(m, Opaque) and type(m).__name__ in ATTENTION_TYPES:
            _replace(model, prefix, Opaque(m))
            done.append(prefix)
    have = dict(model.named_modules())
    pieces: Dict[str, int] = {}
    for n in names:
        head, sep, tail = n.partition(".pieces.")
        if sep and tail.split(".")[0].isdigit():
            pieces[head] = max(pieces.get(head, 0), int(tail.split(".")[0]) + 1)
    for prefix, count in sorted(pieces.items(), key=lambda kv: kv[0].count(".")):
        m = have.get(prefix)
        if m is not None and not isinstance(m, SplitConv) and len(_layers_in(m)) == 1:
            _replace(model, prefix, SplitConv([copy.deepcopy(m) for _ in range(count)]))
            done.append(prefix)
    return done
