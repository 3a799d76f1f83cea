"""Operators a target cannot run (the profile's ``unsupported_ops``)."""
from collections import Counter
from typing import Dict, Iterable, List, Sequence

import onnx

from edgekit.contract.errors import EdgekitError


def _walk(graph: onnx.GraphProto) -> Iterable[onnx.NodeProto]:
    for node in graph.node:
        yield node
        for attr in node.attribute:  # If/Loop/Scan bodies
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _walk(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _walk(g)


def op_counts(path_or_model) -> Dict[str, int]:
    """Operator type -> count, including subgraphs; non-default domains as ``domain::Op``."""
    model = onnx.load(path_or_model, load_external_data=False) if isinstance(path_or_model, str) else path_or_model
    counts: Counter = Counter()
    for node in _walk(model.graph):
        counts[node.op_type if node.domain in ("", "ai.onnx") else "%s::%s" % (node.domain, node.op_type)] += 1
    return dict(sorted(counts.items()))


def check_operators(path: str, unsupported: Sequence[str], profile_name: str, what: str) -> Dict[str, int]:
    """Raise when the graph uses an operator the profile lists as unsupported; returns the op counts."""
    counts = op_counts(path)
    banned = set(unsupported)
    bad: List[str] = [op for op in counts if op in banned or op.split("::")[-1] in banned]
    if bad:
        raise EdgekitError(
            "%s uses %s, which profile %s cannot run (its unsupported_ops)" % (what, ", ".join("%s (x%d)" % (op, counts[op]) for op in bad), profile_name),
            "export at another --opset, replace that layer in the model, or pick a profile whose target supports it",
        )
    return counts
