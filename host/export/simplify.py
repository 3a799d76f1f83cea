"""onnxsim with a fallback: a failed or bloated simplification keeps the original graph.

onnxsim folds constants and removes redundant nodes, which both TensorRT and
ONNX Runtime like. It sometimes fails on unusual graphs, and constant folding
can blow a model up (a folded Expand or Tile turns a few bytes into a large
initializer). Either way the unsimplified graph is still correct, so the build
keeps it, warns once, and records why in the manifest.
"""
import contextlib
import dataclasses
import io
import os
import shutil
import warnings

import onnx

# Constant folding legitimately adds a little (YOLO grids become initializers);
# more than this is the blow-up the fallback guards against.
MAX_GROWTH = 1.10


@dataclasses.dataclass
class SimplifyResult:
    simplified: bool
    reason: str  # why the original was kept ("" when simplified)
    nodes_before: int
    nodes_after: int
    bytes_before: int
    bytes_after: int

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def simplify_onnx(src: str, dst: str) -> SimplifyResult:
    """Write the simplified graph of ``src`` to ``dst``, or a copy of ``src`` if that is not better."""
    import onnxsim

    original = onnx.load(src)
    nodes_before = len(original.graph.node)
    bytes_before = os.path.getsize(src)

    def keep(reason: str, nodes_after: int = 0, bytes_after: int = 0) -> SimplifyResult:
        if os.path.abspath(src) != os.path.abspath(dst):
            shutil.copyfile(src, dst)
        return SimplifyResult(False, reason, nodes_before, nodes_after or nodes_before, bytes_before, bytes_after or bytes_before)

    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            simplified, ok = onnxsim.simplify(original, check_n=0)
    except Exception as exc:  # onnxsim raises many types; any failure means "keep the original"
        return keep("onnxsim failed: %s" % " ".join(str(exc).split())[:200])
    if not ok:
        return keep("onnxsim's own check rejected the simplified graph")
    data = simplified.SerializeToString()
    nodes_after = len(simplified.graph.node)
    if nodes_after > nodes_before:
        return keep("onnxsim grew the graph from %d to %d nodes" % (nodes_before, nodes_after), nodes_after, len(data))
    if len(data) > bytes_before * MAX_GROWTH:
        return keep("onnxsim grew the file from %d to %d bytes" % (bytes_before, len(data)), nodes_after, len(data))
    tmp = dst + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, dst)
    return SimplifyResult(True, "", nodes_before, nodes_after, bytes_before, len(data))
