"""Graph questions the quantizer asks about a float ONNX model.

- which nodes form the detection head's decode tail (kept in float);
- which tensors must share one scale (Concat inputs and output, for TensorRT);
- which input of a residual Add comes from the convolution branch.
"""
from typing import Dict, Iterable, List, Optional, Sequence, Set, Tuple

import onnx

# Ops that carry learned weights: the decode tail starts after the last of these.
WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
# Pointwise activations TensorRT fuses into the preceding convolution.
FUSABLE_ACTIVATIONS = ("Relu", "Sigmoid", "Mul", "LeakyRelu", "Clip", "HardSigmoid", "HardSwish", "Tanh", "Elu", "Selu", "Softplus", "PRelu")


class GraphIndex(object):
    """Producers and consumers of every tensor of a graph (top level only)."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.nodes = list(model.graph.node)
        self.order = {node.name: i for i, node in enumerate(self.nodes)}
        self.producer: Dict[str, onnx.NodeProto] = {}
        self.consumers: Dict[str, List[onnx.NodeProto]] = {}
        for node in self.nodes:
            for out in node.output:
                self.producer[out] = node
            for inp in node.input:
                if inp:
                    self.consumers.setdefault(inp, []).append(node)
        self.initializers = {i.name for i in model.graph.initializer}
        self.outputs = [o.name for o in model.graph.output]

    def is_constant(self, tensor: str) -> bool:
        if tensor in self.initializers:
            return True
        node = self.producer.get(tensor)
        return node is not None and node.op_type == "Constant"


def name_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give every node a unique name (exclusion lists and reports refer to nodes by name)."""
    seen: Set[str] = set()
    for i, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = "%s_%d" % (node.op_type, i)
        seen.add(node.name)
    return model


def decode_tail(model: onnx.ModelProto) -> List[str]:
    """Names of the nodes between the last weighted layers and the graph outputs.

    For a YOLO export that is the Reshape/Transpose/Sigmoid/Mul/Add/Pow/Concat
    that turn the last convolutions' maps into boxes and scores: a walk back
    from every output that stops at Conv/Gemm/MatMul. Works for any output
    layout because it follows the graph, not op names.
    """
    index = GraphIndex(model)
    tail: Set[str] = set()
    stack = list(index.outputs)
    seen: Set[str] = set()
    while stack:
        tensor = stack.pop()
        if tensor in seen:
            continue
        seen.add(tensor)
        node = index.producer.get(tensor)
        if node is None or node.op_type in WEIGHTED_OPS:
            continue
        tail.add(node.name)
        stack.extend(t for t in node.input if t)
    return [n.name for n in index.nodes if n.name in tail]


def tail_inputs(model: onnx.ModelProto, tail: Sequence[str]) -> List[str]:
    """Tensors produced outside the tail that the tail reads (the head's raw maps)."""
    index = GraphIndex(model)
    names = set(tail)
    found: List[str] = []
    for node in index.nodes:
        if node.name not in names:
            continue
        for t in node.input:
            if not t or index.is_constant(t) or t in found:
                continue
            producer = index.producer.get(t)
            if producer is None or producer.name not in names:
                found.append(t)
    return found


class _UnionFind(object):
    def __init__(self) -> None:
        self.parent: Dict[str, str] = {}

    def find(self, x: str) -> str:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[ra] = rb


def shared_scale_groups(model: onnx.ModelProto, exclude: Iterable[str] = (), same_scale_ops: Sequence[str] = ("Concat", "MaxPool")) -> List[List[str]]:
    """Groups of activation tensors that must share one quantization scale.

    TensorRT runs a Concat in int8 without requantizing only when its inputs
    and output have one scale, and moves Q/DQ through MaxPool assuming the
    same; groups chain (a tensor feeding two Concats joins both groups).
    """
    index = GraphIndex(model)
    skip = set(exclude)
    uf = _UnionFind()
    members: Set[str] = set()
    for node in index.nodes:
        if node.op_type not in same_scale_ops or node.name in skip:
            continue
        tensors = [t for t in node.input if t and not index.is_constant(t)][: (None if node.op_type == "Concat" else 1)]
        tensors += [node.output[0]]
        for t in tensors:
            members.add(t)
            uf.union(tensors[0], t)
    groups: Dict[str, List[str]] = {}
    for t in sorted(members):
        groups.setdefault(uf.find(t), []).append(t)
    return [g for g in groups.values() if len(g) > 1]


def _branch_depth_to_weighted(index: GraphIndex, tensor: str, limit: int = 4) -> Optional[int]:
    """How many fusable pointwise ops separate ``tensor`` from a weighted layer (None if none within limit)."""
    depth = 0
    current = tensor
    while depth <= limit:
        node = index.producer.get(current)
        if node is None:
            return None
        if node.op_type in WEIGHTED_OPS:
            return depth
        if node.op_type not in FUSABLE_ACTIVATIONS:
            return None
        # Follow the non-constant input; for x * sigmoid(x) both lead back to the same conv.
        inputs = [t for t in node.input if t and not index.is_constant(t)]
        if not inputs:
            return None
        current = inputs[0]
        depth += 1
    return None


def residual_adds(model: onnx.ModelProto, exclude: Iterable[str] = ()) -> List[Tuple[str, str, str]]:
    """(add node, conv-branch input, skip input) for every residual Add.

    The conv branch is the input a weighted layer (plus fusable activations)
    produces and that nothing else reads; TensorRT fuses the Add into that
    convolution, so only the other (skip) input should be quantized.
    """
    index = GraphIndex(model)
    skip = set(exclude)
    found = []
    for node in index.nodes:
        if node.op_type != "Add" or node.name in skip or len(node.input) != 2:
            continue
        a, b = node.input
        if index.is_constant(a) or index.is_constant(b):
            continue
        candidates = []
        for t, other in ((a, b), (b, a)):
            depth = _branch_depth_to_weighted(index, t)
            if depth is not None and len(index.consumers.get(t, [])) == 1:
                producer = index.producer[t]
                candidates.append((index.order[producer.name], t, other))
        if not candidates:
            continue
        # Both inputs may come from convolutions: the branch computed last is the
        # one feeding the Add; the earlier one is the identity path.
        candidates.sort()
        _, conv_input, skip_input = candidates[-1]
        found.append((node.name, conv_input, skip_input))
    return found
