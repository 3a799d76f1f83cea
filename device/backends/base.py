"""What every backend offers the agent, and the errors they raise.

A runner loads one variant's model and then:

- ``infer(x)``: one synchronous inference on a host array -> host outputs
  (used per image, so it includes any host<->device copies);
- ``prepare(x)`` then ``timed_step()``: inference alone on a fixed input
  already in place, returning its milliseconds; the latency loop calls this.
  Runners that work asynchronously synchronise before reading any clock.
"""
from typing import Any, Dict, List, Optional, Sequence

from edgekit.contract.errors import EdgekitError


class CannotRun(EdgekitError):
    """This board cannot run the variant (a missing capability, not a fault).

    The run is reported as ``skipped`` with the reason; other variants go on.
    """


OOM_MARKERS = ("out of memory", "bad_alloc", "failed to allocate", "cudaerrormemoryallocation", "cannot allocate memory", "memoryerror")


def looks_like_oom(text: str) -> bool:
    low = text.lower()
    return any(marker in low for marker in OOM_MARKERS)


def one_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(("%s" % exc).split())
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text or type(exc).__name__


def out_of_memory(what: str, detail: str) -> EdgekitError:
    return EdgekitError(
        "out of memory while %s (%s)" % (what, detail),
        "close other programs, free memory, or use a smaller variant or input size",
    )


def check_input_shape(model_shape: Sequence[Any], manifest_shape: Sequence[int], name: str, model_file: str) -> None:
    """The model's input must accept the manifest's shape (symbolic dims accept anything)."""
    model_dims = list(model_shape)
    want = [int(d) for d in manifest_shape]
    mismatch = len(model_dims) != len(want) or any(isinstance(m, int) and m > 0 and m != w for m, w in zip(model_dims, want))
    if mismatch:
        raise EdgekitError(
            "%s: input '%s' has shape %s but the bundle's manifest says %s" % (model_file, name, _dims(model_dims), _dims(want)),
            "rebuild the bundle so the model and manifest agree",
        )


def _dims(dims: Sequence[Any]) -> str:
    return "[%s]" % ", ".join(str(d) if isinstance(d, int) and d > 0 else "?" for d in dims)


class Runner(object):
    backend = "none"

    def __init__(self) -> None:
        self.provider = None  # type: Optional[str]
        self.input_name = ""
        self.input_shape = []  # type: List[int]
        self.input_dtype = "float32"
        self.output_names = []  # type: List[str]
        self.engine = None  # type: Optional[Dict[str, Any]]
        self.warnings = []  # type: List[str]

    def infer(self, x: Any) -> List[Any]:
        raise NotImplementedError

    def prepare(self, x: Any) -> None:
        raise NotImplementedError

    def timed_step(self) -> float:
        raise NotImplementedError

    def profile_layers(self, x: Any, warmup: int, runs: int) -> Dict[str, Any]:
        """Per-layer time (edgekit.device.layer_profile); backends without a profiler say so."""
        raise CannotRun("the %s backend has no per-layer profiler in edgekit yet" % self.backend, "rerun with --backend onnxruntime for per-layer times")

    def gpu_memory_mb(self) -> Optional[float]:
        return None

    def close(self) -> None:
        pass

    def __enter__(self) -> "Runner":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
