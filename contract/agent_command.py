"""The agent's command line, written once: the agent parses it with these
options (edgekit.device.cli), the host builds it with :class:`AgentCall`
(edgekit.host.deploy), and a test parses what the host builds.

Usage on the board::

    python3 edgekit-agent.pyz info|doctor|verify|bench|eval|run [BUNDLE] [options]

``doctor BUNDLE --json`` prints {ok, checks: [{name, ok, required, found,
needed_for, fix}]}; ``run BUNDLE --out FILE --progress json`` writes the result
(edgekit.contract.result) to FILE and progress events
(edgekit.contract.agent_events) on stderr. Python 3.8, stdlib only.
"""
import argparse
from typing import Any, List, Optional, Sequence

from .words import BACKEND_CHOICES

COMMANDS = ("info", "doctor", "verify", "bench", "eval", "run")
MEASURE_COMMANDS = ("bench", "eval", "run")
PROGRESS_MODES = ("auto", "json", "text", "none")
TRT_INT8_MODES = ("auto", "explicit", "implicit")
ENERGY_MODES = ("auto", "off")
# Exit codes of every agent command.
EXIT_OK, EXIT_FAILED, EXIT_INPUT, EXIT_TIMEOUT, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


MAX_BATCH = 1024


def batch_sizes(text: str) -> List[int]:
    """``"1,4,8"`` -> [1, 4, 8]: the batch sizes ``--batch`` times, each once, in order."""
    sizes = []  # type: List[int]
    for item in text.split(","):
        try:
            value = int(item.strip())
        except ValueError:
            raise argparse.ArgumentTypeError("%r is not a whole number (e.g. --batch 1,4,8)" % item)
        if not 1 <= value <= MAX_BATCH:
            raise argparse.ArgumentTypeError("batch %d is out of range 1..%d" % (value, MAX_BATCH))
        if value not in sizes:
            sizes.append(value)
    return sizes


def add_measure_options(p: argparse.ArgumentParser, command: str) -> None:
    """The options of ``bench``, ``eval`` and ``run`` (the commands that measure)."""
    p.add_argument("--variant", action="append", metavar="NAME", help="only this variant (repeatable); default all")
    p.add_argument("--backend", choices=BACKEND_CHOICES, default="auto", help="default: the profile's runtime when it works here")
    p.add_argument("--providers", metavar="LIST", help="ONNX Runtime execution providers, comma-separated (default: the profile's)")
    p.add_argument("--threads", type=_count, metavar="N", help="ONNX Runtime intra-op threads (0: its default)")
    p.add_argument("--engine-cache", metavar="DIR", help="TensorRT engine cache (default ~/.edgekit/engines or $EDGEKIT_HOME/engines)")
    p.add_argument(
        "--trt-int8",
        choices=TRT_INT8_MODES,
        default="auto",
        help="TensorRT INT8 from the Q/DQ graph (explicit) or the fp32 graph + calibration cache (implicit); auto: Q/DQ when present",
    )
    p.add_argument("--timeout", type=_seconds, default=1800.0, metavar="S", help="give up on a variant after S seconds (0: never; default 1800)")
    p.add_argument("--progress", choices=PROGRESS_MODES, default="auto", help="stderr progress (auto: text on a terminal, else JSON lines)")
    if command in ("bench", "run"):
        p.add_argument("--warmup", type=_count, metavar="N", help="warm-up iterations (default: the profile's)")
        p.add_argument("--warmup-seconds", type=_seconds, metavar="S", help="warm up for at least S seconds")
        p.add_argument("--iterations", type=_count, metavar="N", help="timed iterations, at least (default: the profile's)")
        p.add_argument("--min-seconds", type=_seconds, metavar="S", help="time for at least S seconds")
        p.add_argument("--stage-images", type=_count, default=20, metavar="N", help="images for the pre/infer/post split in bench (default 20)")
        p.add_argument("--profile-layers", action="store_true", help="after the timed loop, time each layer with the runtime's profiler (ONNX Runtime; TensorRT's IProfiler)")
        p.add_argument("--batch", type=batch_sizes, metavar="LIST",
                       help="also time batches of these sizes, e.g. 1,4,8: latency per batch and images/s (sizes > 1 need a bundle built with --dynamic-batch)")
        p.add_argument("--energy", choices=ENERGY_MODES, default="auto", help="sample the power rails during the timed loop where the board has monitors (INA3221 sysfs, tegrastats); off: never")
    if command in ("eval", "run"):
        p.add_argument("--max-drift", type=_seconds, metavar="F", help="fail a variant whose mAP (or top-1) differs from the host's by more (default: the profile's, 0.01)")
        p.add_argument("--max-images", type=_count, metavar="N", help="evaluate only the first N images (no drift gate then)")


class AgentCall(object):
    """What the host asks of the agent, turned into its argv.

    Only options the agent defines above can be set; None means the agent's
    default (the bundle's profile).
    """

    def __init__(
        self,
        variants: Sequence[str] = (),
        backend: Optional[str] = None,
        warmup: Optional[int] = None,
        iterations: Optional[int] = None,
        max_drift: Optional[float] = None,
        max_images: Optional[int] = None,
        profile_layers: bool = False,
        batch: Optional[Sequence[int]] = None,
    ) -> None:
        if backend is not None and backend not in BACKEND_CHOICES:
            raise ValueError("backend must be one of %s, got %r" % (BACKEND_CHOICES, backend))
        self.variants = list(variants)
        self.backend = backend
        self.warmup = warmup
        self.iterations = iterations
        self.max_drift = max_drift
        self.max_images = max_images
        self.profile_layers = bool(profile_layers)
        self.batch = [int(b) for b in batch] if batch else None

    def _options(self) -> List[str]:
        args: List[str] = []
        for v in self.variants:
            args += ["--variant", v]
        pairs = (("--warmup", self.warmup), ("--iterations", self.iterations), ("--max-drift", self.max_drift),
                 ("--max-images", self.max_images), ("--backend", self.backend))
        for flag, value in pairs:
            if value is not None:
                args += [flag, str(value)]
        if self.profile_layers:
            args.append("--profile-layers")
        if self.batch:
            args += ["--batch", ",".join(str(b) for b in self.batch)]
        return args

    def doctor_argv(self, python: str, agent: str, bundle: str) -> List[str]:
        """The doctor asks about the backend the run will use."""
        argv = [python, agent, "doctor", bundle, "--json"]
        if self.backend is not None:
            argv += ["--backend", self.backend]
        return argv

    def run_argv(self, python: str, agent: str, bundle: str, out_file: str, engine_cache: Optional[str] = None) -> List[str]:
        argv = [python, agent, "run", bundle, "--out", out_file, "--progress", "json"]
        if engine_cache:
            argv += ["--engine-cache", engine_cache]
        return argv + self._options()

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, AgentCall) and vars(self) == vars(other)

    def __repr__(self) -> str:
        return "AgentCall(%s)" % ", ".join("%s=%r" % kv for kv in sorted(vars(self).items()))
