"""The model as Torch-Pruning sees it: preparation, the dependency graph, and
which layers must keep their channels.

Torch-Pruning traces the graph through autograd, so a model whose weights are
frozen (``requires_grad=False``) or half precision (every YOLOv5 checkpoint)
yields an empty graph and prunes nothing, silently. :func:`prepare` makes a
float32, trainable deep copy first and remembers what was frozen.
"""
import copy
import fnmatch
from typing import Dict, List, Sequence, Set, Tuple

import torch
import torch_pruning as tp
from torch import nn
from torch_pruning import ops

from edgekit.contract.errors import EdgekitError
from .param_errors import ParameterError

# Layers whose channel counts pruning may change and alignment is checked on.
LAYER_TYPES = (nn.modules.conv._ConvNd, nn.Linear)
# Head modules whose layers produce task-defined outputs (YOLOv5/YOLOv8/
# Ultralytics family, YOLOv7); all their convs and linears keep their channels.
KNOWN_HEADS = ("Detect", "Segment", "Pose", "OBB", "Classify", "IDetect", "IAuxDetect", "IKeypoint", "v10Detect", "WorldDetect", "YOLOEDetect", "RTDETRDecoder")
# Node types that change the channel dimension: the output of a layer is "used
# up" when it reaches one of these.
_CHANNEL_MIXERS = (ops.OPTYPE.CONV, ops.OPTYPE.LINEAR, ops.OPTYPE.LSTM, ops.OPTYPE.MHA, ops.OPTYPE.EMBED)


def is_depthwise(m: nn.Module) -> bool:
    return isinstance(m, nn.modules.conv._ConvNd) and m.groups == m.out_channels and m.out_channels > 1 and m.in_channels == m.groups


def channels(m: nn.Module) -> Tuple[int, int]:
    """(in, out) channels of a conv or linear layer."""
    if isinstance(m, nn.Linear):
        return m.in_features, m.out_features
    return m.in_channels, m.out_channels


def layer_kind(m: nn.Module) -> str:
    if isinstance(m, nn.Linear):
        return "linear"
    if is_depthwise(m):
        return "dwconv"
    if getattr(m, "groups", 1) > 1:
        return "gconv"
    return "conv"


def prepare(model: nn.Module) -> Tuple[nn.Module, List[str]]:
    """A float32, eval-mode, trainable deep copy; returns it and the names of parameters that were frozen."""
    if isinstance(model, torch.jit.ScriptModule):
        raise EdgekitError("a TorchScript module cannot be pruned", "pass the eager (Python) model definition instead")
    work = copy.deepcopy(model)
    frozen = [name for name, p in work.named_parameters() if not p.requires_grad]
    work.float().eval()
    for p in work.parameters():
        p.requires_grad_(True)
    return work, frozen


def restore_frozen(model: nn.Module, frozen: Sequence[str]) -> None:
    params = dict(model.named_parameters())
    for name in frozen:
        if name in params:
            params[name].requires_grad_(False)


def build_graph(model: nn.Module, example_input: torch.Tensor) -> tp.DependencyGraph:
    """Trace the model's dependency graph (autograd is forced on, whatever the caller's mode)."""
    try:
        with torch.enable_grad():
            return tp.DependencyGraph().build_dependency(model, example_inputs=example_input, verbose=False)
    except EdgekitError:
        raise
    except Exception as exc:  # the model's own forward or the tracer failed
        raise EdgekitError(
            "tracing the model's dependency graph failed (%s: %s)" % (type(exc).__name__, " ".join(str(exc).split())[:200]),
            "check that the model runs on a %s input" % "x".join(str(d) for d in example_input.shape),
        )


def module_names(model: nn.Module) -> Dict[nn.Module, str]:
    return {m: name for name, m in model.named_modules()}


def traced_layers(model: nn.Module, graph: tp.DependencyGraph) -> List[Tuple[str, nn.Module]]:
    """Conv/linear layers that the forward pass uses, in definition order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, LAYER_TYPES) and m in graph.module2node]


def _open_channel_path(node, step) -> bool:
    """True when, following ``step`` (a node's outputs or inputs), the node's channels
    reach the graph's edge (or a model output) without passing a channel-mixing layer."""
    stack = list(step(node))
    if not stack:
        return True
    seen = set()
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        if n.type == ops.OPTYPE.OUTPUT:
            return True
        if n.type in _CHANNEL_MIXERS:
            continue
        further = step(n)
        if not further:  # a channel-preserving op at the edge of the graph
            return True
        stack.extend(further)
    return False


def _reaches_output(node) -> bool:
    """True when the node's output channels reach a model output unmixed."""
    return _open_channel_path(node, lambda n: n.outputs)


def _fed_by_input(node) -> bool:
    """True when some of the node's input channels come straight from the model's input."""
    return _open_channel_path(node, lambda n: n.inputs)


def _matches(name: str, pattern: str) -> bool:
    # A pattern naming a container covers everything inside it.
    return fnmatch.fnmatchcase(name, pattern) or name.startswith(pattern + ".") or fnmatch.fnmatchcase(name, pattern + ".*")


def find_fixed_layers(model: nn.Module, graph: tp.DependencyGraph, ignore: Sequence[str] = ()) -> Dict[str, str]:
    """Layers whose output channels must not change, with the reason for each.

    Found automatically: layers whose output reaches a model output without
    another conv/linear in between (detection output convs, classifier
    outputs) and every layer inside a known head type (YOLOv5's ``Detect`` and
    its relatives). ``ignore`` adds layers by name or glob (fnmatch) pattern;
    a pattern that matches no layer is an error (it is most likely a typo).
    """
    layers = traced_layers(model, graph)
    fixed: Dict[str, str] = {}
    for name, m in layers:
        if _reaches_output(graph.module2node[m]):
            fixed[name] = "output layer"
    for head_name, head in model.named_modules():
        if type(head).__name__ in KNOWN_HEADS:
            for name, m in head.named_modules():
                full = "%s.%s" % (head_name, name) if name else head_name
                if isinstance(m, LAYER_TYPES) and full not in fixed:
                    fixed[full] = "inside %s head '%s'" % (type(head).__name__, head_name)
    names = [name for name, _ in layers]
    for pattern in ignore:
        hits = [n for n in names if _matches(n, pattern)]
        if not hits:
            examples = ", ".join(names[:3])
            raise ParameterError("{ignore} %r matches no conv/linear layer" % pattern, "layer names look like %s" % examples)
        for n in hits:
            fixed.setdefault(n, "ignored by --ignore %r" % pattern)
    return fixed


def input_fed_layers(model: nn.Module, graph: tp.DependencyGraph) -> Set[str]:
    """Layers whose input channels are (partly) the model's input image: never aligned."""
    return {name for name, m in traced_layers(model, graph) if _fed_by_input(graph.module2node[m])}


def _upstream_layers(node) -> List:
    found, stack, seen = [], list(node.inputs), set()
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        if n.type in _CHANNEL_MIXERS or n.type == ops.OPTYPE.DEPTHWISE_CONV:
            if isinstance(n.module, LAYER_TYPES):
                found.append(n)
                if n.type != ops.OPTYPE.DEPTHWISE_CONV:
                    continue
        stack.extend(n.inputs)
    return found


def _downstream_layers(node) -> List:
    found, stack, seen = [], list(node.outputs), set()
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        if n.type in _CHANNEL_MIXERS:
            found.append(n)
            continue
        stack.extend(n.outputs)
    return found


def common_prefix(names: Sequence[str]) -> str:
    parts = [n.split(".") for n in names if n]
    if not parts:
        return ""
    prefix = []
    for column in zip(*parts):
        if len(set(column)) != 1:
            break
        prefix.append(column[0])
    return ".".join(prefix)


def check_splits(model: nn.Module, graph: tp.DependencyGraph, fixed: Dict[str, str]) -> None:
    """Refuse graphs where a tensor is cut with chunk/split after a prunable layer.

    ``chunk`` computes its pieces from the tensor's size at run time, so after
    pruning the pieces no longer line up with the channels Torch-Pruning
    removed (YOLOv8's C2f is the common case). The layer feeding the split must
    keep its channels (``--ignore``) or the block must be rewritten with one
    conv per piece.
    """
    names = module_names(model)
    for node in graph.module2node.values():
        if node.type not in (ops.OPTYPE.SPLIT, ops.OPTYPE.UNBIND):
            continue
        producers = [n for n in _upstream_layers(node) if names.get(n.module) not in fixed]
        if not producers:
            continue
        producer = names.get(producers[0].module, "?")
        consumers = [names.get(n.module, "") for n in _downstream_layers(node)]
        block = common_prefix([producer] + consumers) or producer.rsplit(".", 1)[0]
        block_type = ""
        for name, m in model.named_modules():
            if name == block:
                block_type = " (%s)" % type(m).__name__
                break
        raise ParameterError(
            "block '%s'%s cuts the output of layer '%s' with chunk/split, which Torch-Pruning cannot map channels through" % (block, block_type, producer),
            "rewrite the block with one conv per piece (as YOLOv8's C2f_v2 does), or keep that layer's channels with {ignore} '%s'" % producer,
        )


def output_shapes(outputs) -> List[List[int]]:
    """Shapes of every tensor in a model's (possibly nested) outputs."""
    return [list(t.shape) for t in flat_outputs(outputs)]


def flat_outputs(outputs) -> List[torch.Tensor]:
    """Every tensor in a model's (possibly nested) outputs, dict entries by sorted key."""
    found: List[torch.Tensor] = []

    def walk(o) -> None:
        if isinstance(o, torch.Tensor):
            found.append(o)
        elif isinstance(o, dict):
            for k in sorted(o):
                walk(o[k])
        elif isinstance(o, (list, tuple)):
            for v in o:
                walk(v)

    walk(outputs)
    return found


def run_model(model: nn.Module, x: torch.Tensor, what: str = "the model") -> object:
    try:
        with torch.no_grad():
            return model(x)
    except Exception as exc:
        raise EdgekitError(
            "%s failed to run on a %s input (%s: %s)" % (what, "x".join(str(d) for d in x.shape), type(exc).__name__, " ".join(str(exc).split())[:200]),
            "check the model and its input size",
        )
