"""What ``edgekit build`` was asked to do, checked before any work starts."""
import dataclasses
import os
from typing import List, Optional, Sequence, Tuple, Union

from edgekit.contract.errors import EdgekitError
from ..export import EXPORTERS
from ..profiles import CALIB_METHODS, Profile, load_profile


@dataclasses.dataclass
class BuildOptions:
    profile: Union[str, Profile] = "cpu"
    model: str = "demo"
    weights: Optional[str] = None
    pretrained: bool = True  # demo only: False builds the untrained demo network (tests, benchmarks)
    trust_checkpoint: bool = False  # allow unpickling a full-model checkpoint (runs code it names)
    code_path: Optional[str] = None  # where a checkpoint's model classes live (e.g. a yolov5 clone)
    calib: Optional[str] = None  # folder of calibration images; default: the model's own (demo)
    eval: Optional[str] = None  # folder or COCO json; "none" to skip; default: the model's own (demo)
    prune: Sequence[float] = (0.0,)
    variants: Optional[Sequence[str]] = None  # default: the profile's
    out: Optional[str] = None  # default: bundles/<model>-<profile>
    tar: bool = False
    input_size: Optional[Tuple[int, int]] = None
    opset: Optional[int] = None  # default: the profile's
    calib_images: Optional[int] = None  # default: the profile's quantization.images
    calib_method: Optional[str] = None  # default: the profile's quantization.method
    snr_target_db: Optional[float] = None  # default: the profile's quantization.snr_target_db
    eval_images: Optional[int] = None  # evaluate on the first N images only
    parity_images: int = 4
    seed: int = 0
    exporters: Sequence[str] = EXPORTERS
    prune_options: Optional[dict] = None  # extra PruneConfig fields (criterion, strategy, ...)
    recover_steps: int = 0  # accuracy-recovery steps after pruning (0: none)
    recover_seconds: Optional[float] = None
    device: str = "auto"  # where recovery trains: auto (CUDA when torch sees a GPU), cpu, cuda
    max_map_drop: Optional[float] = None  # int8: keep layers float until mAP is within this many points of fp32
    int8_tool: Optional[str] = None  # "onnxruntime" (default) or "modelopt" (TensorRT profiles)
    nms: str = "numpy"  # "graph": decode + NMS appended to every graph (host/export/nms_graph.py)
    dynamic_batch: bool = False  # export with a symbolic batch dimension (manifest input.batch: "dynamic")


@dataclasses.dataclass
class Plan:
    """The resolved options: what will be built, in what order."""

    profile: Profile
    variants: List[str]  # precisions
    prune: List[float]
    out_dir: str
    calib_images: int
    calib_method: str
    snr_target_db: float
    opset: int

    def variant_name(self, ratio: float, precision: str) -> str:
        return variant_name(ratio, precision)


def variant_name(ratio: float, precision: str) -> str:
    """``fp32``, ``int8`` unpruned; ``p30-int8`` at 30 % pruning."""
    if ratio <= 0:
        return precision
    return "p%d-%s" % (int(round(ratio * 100)), precision)


def parse_prune(text: Union[str, Sequence[float], None]) -> List[float]:
    """``"0,0.3,0.5"`` -> [0.0, 0.3, 0.5]: fractions of channels to remove, one variant set each."""
    if text is None or text == "":
        return [0.0]
    items = text.split(",") if isinstance(text, str) else list(text)
    ratios: List[float] = []
    for item in items:
        try:
            value = float(item)
        except (TypeError, ValueError):
            raise EdgekitError("--prune value %r is not a number" % (item,), "pass fractions of channels to remove, e.g. --prune 0,0.3,0.5")
        if not 0.0 <= value < 1.0:
            raise EdgekitError("--prune value %r is out of range" % (item,), "pass fractions 0 <= r < 1, e.g. --prune 0,0.3,0.5")
        if value in ratios:
            raise EdgekitError("--prune lists %g twice" % value, "list each pruning ratio once")
        ratios.append(value)
    names = [variant_name(r, "x") for r in ratios]
    if len(set(names)) != len(names):
        raise EdgekitError("--prune ratios %s round to the same percentage" % ",".join("%g" % r for r in ratios), "use ratios at least 0.01 apart")
    return ratios


def parse_variants(text: Union[str, Sequence[str], None], profile: Profile) -> List[str]:
    if text is None or text == "":
        return list(profile.variants)
    items = [v.strip() for v in text.split(",")] if isinstance(text, str) else list(text)
    out: List[str] = []
    for v in items:
        if v not in profile.variants:
            raise EdgekitError(
                "variant %r is not available for profile %s" % (v, profile.name),
                "use some of %s (the profile's variants)" % ",".join(profile.variants),
            )
        if v not in out:
            out.append(v)
    if not out:
        raise EdgekitError("--variants is empty", "pass e.g. --variants %s" % ",".join(profile.variants))
    return out


def resolve(options: BuildOptions, model_name: str) -> Plan:
    profile = options.profile if isinstance(options.profile, Profile) else load_profile(options.profile)
    variants = parse_variants(options.variants, profile)
    prune = parse_prune(options.prune)
    q = profile.quantization
    method = options.calib_method or q.method
    if method not in CALIB_METHODS:
        raise EdgekitError("calibration method %r is unknown" % method, "use one of %s" % ", ".join(CALIB_METHODS))
    images = q.images if options.calib_images is None else options.calib_images
    if images < 1:
        raise EdgekitError("--calib-images must be at least 1", "pass e.g. --calib-images 128")
    if options.eval_images is not None and options.eval_images < 1:
        raise EdgekitError("--eval-images must be at least 1", "leave it out to evaluate on every image")
    if options.nms not in ("numpy", "graph"):
        raise EdgekitError("--nms %r is unknown" % (options.nms,), "use --nms numpy (the agent's numpy NMS) or --nms graph (NMS inside the model)")
    if options.nms == "graph" and getattr(options, "dynamic_batch", False):
        raise EdgekitError("--nms graph is built for batch 1 and cannot be combined with --dynamic-batch", "drop one of --nms graph and --dynamic-batch")
    for exporter in options.exporters:
        if exporter not in EXPORTERS:
            raise EdgekitError("unknown exporter %r" % exporter, "use %s" % " or ".join(EXPORTERS))
    if any(r > 0 for r in prune) and (options.recover_steps or options.recover_seconds):
        from ..prune.recovery import resolve_device  # before any work: `cuda` without a GPU fails here

        resolve_device(options.device)
    if "int8" in variants and options.int8_tool:
        from ..quantize.modelopt_ptq import check_tool, check_usable  # before any work, as for the device

        check_tool(options.int8_tool, q.scheme)
        check_usable(options.int8_tool)
    if options.max_map_drop is not None and str(options.eval or "").lower() == "none":
        raise EdgekitError("an mAP-controlled int8 needs an evaluation set, and --eval is none", "pass --eval DIR_OR_JSON, or leave out --max-map-drop")
    out = options.out or os.path.join("bundles", "%s-%s" % (model_name, profile.name))
    snr = q.snr_target_db if options.snr_target_db is None else float(options.snr_target_db)
    return Plan(profile, variants, prune, os.path.abspath(out), images, method, snr, options.opset or profile.opset)
