"""ONNX Runtime sessions on the host, with load failures turned into one-line errors."""
import os

from edgekit.contract.errors import EdgekitError


def open_session(path: str, threads: int = 0, optimize: bool = True):  # -> onnxruntime.InferenceSession
    """A CPU session for ``path``; an EdgekitError names the file when ONNX Runtime cannot load it."""
    import onnxruntime as ort

    if not os.path.isfile(path):
        raise EdgekitError("ONNX file %s does not exist" % path, "check the path")
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: ORT's warnings would break the progress display
    if threads:
        options.intra_op_num_threads = threads
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        return ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own Fail/InvalidGraph/... types
        raise EdgekitError(
            "ONNX Runtime cannot load %s (%s)" % (path, " ".join(str(exc).split())[:300]),
            "check that the file is a complete ONNX model and that its opset is supported",
        )
