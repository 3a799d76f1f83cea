"""The INT8 variant: static QDQ quantization through ONNX Runtime's tooling.

1. ``quant_pre_process`` (shape inference, graph clean-up), as ONNX Runtime asks;
2. calibration on real images (edgekit.host.quantize.calibrate, bounded memory);
3. the profile's scheme (edgekit.host.quantize.schemes), TensorRT's placement
   rules where the target is TensorRT;
4. the detection head's decode tail stays float (one int8 scale over pixel
   coordinates and probabilities rounds every score to zero); on the CPU
   schemes the head convs are split into box and score parts so they run
   int8 (edgekit.host.quantize.head_split);
5. mixed precision: while the output's SQNR is below the target, the layers
   whose own quantization is worst stay float, a few more each round;
6. for TensorRT, the result must pass TensorRT's documented Q/DQ rules
   (edgekit.host.quantize.trt_rules); for TensorRT 8.x also a calibration
   cache in TensorRT's format;
7. what ONNX Runtime runs in float after fusing the graph is counted on its
   optimized graph (edgekit.host.quantize.runtime_graph) and reported.
"""
import contextlib
import dataclasses
import io
import logging
import os
import shutil
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import onnx

from edgekit.calibration import trt_cache
from edgekit.calibration.images import ImageBatch

from edgekit.contract.errors import EdgekitError
from ..export.session import open_session
from ..profiles import Profile
from .calibrate import calibrate, tensor_range, unify_ranges
from edgekit.host.quantize.qdq_graph import decode_tail, name_nodes, residual_adds, shared_scale_groups, tail_inputs
from .placement import qdq_tensors, quantize_residual_skips, unquantize_tensors
from .schemes import Scheme, op_types_to_quantize, scheme_for
from edgekit.host.quantize.layer_sqnr import Unit, output_sqnr, rank_units
from .head_split import split_head_convs
from .runtime_graph import runtime_summary
from .trt_rules import tensorrt_violations

# Images used to measure SQNR and rank layers (a subset of the calibration set).
CHECK_IMAGES = 8
RANK_IMAGES = 2
MAX_ROUNDS = 6
# Mixed precision never keeps more than this share of the quantizable nodes in
# float: past it the int8 model would be little faster than fp32 anyway.
MAX_FLOAT_FRACTION = 0.25
TRT_CACHE_ALGORITHM = "EntropyCalibration2"


# mAP-controlled fallback (AccuracyControl): rounds of returning layers to float.
MAP_ROUNDS = 4


@dataclasses.dataclass
class AccuracyControl:
    """Return layers to float while int8 loses more than ``max_drop_points`` of mAP against fp32.

    ``evaluate`` gives the mAP (0-1) of an ONNX file on the evaluation set (the
    build passes host-side pycocotools evaluation on the bundle's eval set).
    Layers go back to float in the order of their own quantization error
    (edgekit.host.quantize.layer_sqnr), 1, 2, 4, ... a round, at most
    ``max_rounds`` rounds and the mixed-precision cap (MAX_FLOAT_FRACTION);
    the decision to go on is by mAP. The round with the best mAP is kept.
    """

    evaluate: Callable[[str], float]
    max_drop_points: float = 1.0
    max_rounds: int = MAP_ROUNDS
    reference_map: Optional[float] = None  # fp32 mAP; evaluated on the fp32 graph when None


@dataclasses.dataclass
class QuantResult:
    path: str
    scheme: Scheme
    method: str
    images: int
    skipped: int
    head_float: List[str]
    float_units: List[Dict[str, Any]]
    sqnr_db: Dict[str, float]
    sqnr_target_db: float
    history: List[Dict[str, Any]]
    shared_scale_tensors: int
    residual_skips: int  # residual Adds whose skip input (only) arrives through Q/DQ
    trt_cache: Optional[str]  # the cache text, when the profile asks for one
    # What ONNX Runtime runs in float after fusing the QDQ graph (runtime_graph.runtime_summary).
    runtime: Dict[str, Any] = dataclasses.field(default_factory=dict)
    # The mAP-controlled loop's record (None when it did not run).
    accuracy: Optional[Dict[str, Any]] = None
    tool: str = "onnxruntime"  # or "modelopt" (edgekit.host.quantize.modelopt_ptq)

    def runtime_float_nodes(self) -> int:
        return int(self.runtime.get("float_nodes", 0))

    def summary(self) -> str:
        worst = min(self.sqnr_db.values()) if self.sqnr_db else float("nan")
        floats = len({n for u in self.float_units for n in u["nodes"]})
        return "%s/%s, %d images, SQNR %.1f dB, %d nodes run float (head %d + mixed precision %d in the QDQ graph)" % (
            self.scheme.name,
            self.method,
            self.images,
            worst,
            self.runtime_float_nodes(),
            len(self.head_float),
            floats,
        )

    def calibration_dict(self) -> Dict[str, Any]:
        ranges = {
            "minmax": "mean over images of each image's min and max",
            "entropy": "KL-divergence threshold of the value histogram",
            "percentile": "percentile of the value histogram",
        }[self.method]
        return {"method": self.method, "ranges": ranges, "images": self.images, "skipped_images": self.skipped}

    def quantization_dict(self) -> Dict[str, Any]:
        d = self.scheme.to_dict()
        d.update(
            {
                "tool": (
                    "onnxruntime.quantization (static QDQ after quant_pre_process)"
                    if self.tool == "onnxruntime"
                    else "nvidia-modelopt (modelopt.onnx.quantization, int8, CPU calibration, after quant_pre_process)"
                ),
                "head_float": {"nodes": list(self.head_float), "reason": "detection decode tail: boxes and scores share one tensor"},
                "float_nodes": list(self.float_units),
                "sqnr_db": dict(self.sqnr_db),
                "sqnr_target_db": self.sqnr_target_db,
                "mixed_precision_rounds": list(self.history),
                "shared_scale_tensors": self.shared_scale_tensors,
                "residual_skip_qdq": self.residual_skips,
                "runtime_float": {k: v for k, v in self.runtime.items()},
                "accuracy_control": self.accuracy,
            }
        )
        return d


@contextlib.contextmanager
def _quiet():
    """ONNX Runtime's quantizer logs and prints; keep the build's display clean."""
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)


@contextlib.contextmanager
def _scratch_cwd() -> Iterator[None]:
    import tempfile

    here = os.getcwd()
    scratch = tempfile.mkdtemp(prefix="edgekit-shape-")
    os.chdir(scratch)
    try:
        yield
    finally:
        os.chdir(here)
        shutil.rmtree(scratch, ignore_errors=True)


def pre_process(src: str, dst: str) -> onnx.ModelProto:
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with _quiet():
        try:
            # On a failure (e.g. a dynamic batch, edgekit build --dynamic-batch) ONNX Runtime's
            # symbolic shape inference saves sym_shape_infer_temp.onnx + a .data file in the
            # current directory: run it in a scratch one.
            with _scratch_cwd():
                quant_pre_process(os.path.abspath(src), os.path.abspath(dst), skip_symbolic_shape=False)
        except Exception:  # symbolic shape inference fails on some graphs; ONNX's own is enough here
            quant_pre_process(src, dst, skip_symbolic_shape=True)
    model = name_nodes(onnx.load(dst))
    onnx.save(model, dst)
    return model


def _quantize(pre_path: str, out_path: str, ranges_path: str, scheme: Scheme, method: Any, exclude: Sequence[str]) -> None:
    from onnxruntime.quantization import QuantFormat, quantize_static

    act, weight = scheme.ort_types()
    with _quiet():
        quantize_static(
            pre_path,
            out_path,
            calibration_data_reader=None,
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=op_types_to_quantize(scheme),
            per_channel=scheme.per_channel,
            reduce_range=False,
            activation_type=act,
            weight_type=weight,
            nodes_to_exclude=list(exclude),
            calibrate_method=method,
            extra_options=scheme.extra_options(),
            calibration_cache_path=ranges_path,
        )


def _run(path: str, inputs: Sequence[np.ndarray]) -> List[List[np.ndarray]]:
    session = open_session(path)
    name = session.get_inputs()[0].name
    return [[np.asarray(o) for o in session.run(None, {name: x})] for x in inputs]


def _float_activations(pre_path: str, tensors: Sequence[str], inputs: Sequence[np.ndarray], workdir: str) -> Dict[str, np.ndarray]:
    """Float values of ``tensors`` over ``inputs`` (flattened, concatenated)."""
    model = onnx.load(pre_path)
    existing = {o.name for o in model.graph.output}
    for t in tensors:
        if t not in existing:
            model.graph.output.append(onnx.ValueInfoProto(name=t))
    path = os.path.join(workdir, "activations.onnx")
    onnx.save(model, path)
    session = open_session(path, optimize=False)
    names = [o.name for o in session.get_outputs()]
    wanted = set(tensors)
    collected: Dict[str, List[np.ndarray]] = {}
    in_name = session.get_inputs()[0].name
    for x in inputs:
        for n, value in zip(names, session.run(None, {in_name: x})):
            if n in wanted:
                collected.setdefault(n, []).append(np.asarray(value, np.float32).ravel())
    os.remove(path)
    return {k: np.concatenate(v) for k, v in collected.items()}


def implicit_int8(version: str) -> bool:
    """TensorRT 11 dropped implicit (calibrator-based) INT8; earlier versions take a cache."""
    try:
        return int(str(version).split(".")[0]) < 11
    except ValueError:
        return True


def trt_cache_text(ranges: Any, fp32_graph: str, version: str) -> str:
    """TensorRT's calibration table for the fp32 graph: scale = amax / 127 per tensor."""
    model = onnx.load(fp32_graph, load_external_data=False)
    names = [i.name for i in model.graph.input] + [t for n in model.graph.node for t in n.output]
    scales = {}
    for name in names:
        r = tensor_range(ranges, name)
        if r is None:
            continue
        scales[name] = max(abs(r[0]), abs(r[1]), 1e-8) / 127.0
    return trt_cache.dumps(trt_cache.TrtCache(trt_cache.version_code(version), TRT_CACHE_ALGORITHM, scales))


@dataclasses.dataclass
class _Prepared:
    """Everything one build's trial quantizations share (computed once)."""

    scheme: Scheme
    method: str
    work: str
    pre_path: str
    model: onnx.ModelProto
    head: List[str]  # decode-tail nodes kept float
    head_maps: List[str]  # the raw maps the tail reads (their Q/DQ is removed)
    quantized_ops: List[str]
    ranges: Any
    ranges_path: str
    images: int
    shared: int
    adds: List[Any]
    check_inputs: List[np.ndarray]
    reference: List[List[np.ndarray]]
    trial: str


@dataclasses.dataclass
class _Trial:
    sqnr: Dict[str, float]
    skips: List[Dict[str, Any]]  # residual skip inputs given their own Q/DQ


def _per_channel_possible(model: onnx.ModelProto, profile_name: str, warn: Callable[[str], None]) -> bool:
    """Per-channel DequantizeLinear (its ``axis``) exists from opset 13; older graphs get per-tensor weights."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    if opset >= 13:
        return True
    warn(
        "int8 weights per tensor, not per channel: profile %s exports opset %d and per-channel DequantizeLinear needs opset 13"
        " (set opset = 13 in the profile if its toolchain takes it)" % (profile_name, opset)
    )
    return False


def _outputs_of(model: onnx.ModelProto, names: Sequence[str]) -> List[str]:
    wanted = set(names)
    return [t for n in model.graph.node if n.name in wanted for t in n.output]


def _head(model: onnx.ModelProto, pre_path: str, scheme: Scheme, keep_float: bool) -> Tuple[List[str], List[str]]:
    """(decode-tail nodes kept float, head maps whose Q/DQ is removed); may split the head convs in ``pre_path``."""
    if not keep_float:
        return [], []
    head = decode_tail(model)
    # The raw maps entering the tail stay float too: one uint8/int8 scale over
    # xy, wh, objectness and class logits costs box precision (mAP@.75) ...
    head_maps = tail_inputs(model, head) if head else []
    if head_maps and scheme.split_head:
        # ... unless the head convs are split into box and score parts, each
        # with its own int8 scale: then they run as QLinearConv.
        split = split_head_convs(model, head_maps)
        if split.parts:
            onnx.save(model, pre_path)
            # The split's Reshape/Transpose (data movement) and the score
            # Sigmoid run int8; the box Sigmoid and what follows stay float.
            int8_tail = set(split.int8_tail)
            head = [n for n in decode_tail(model) if n not in int8_tail]
            head_maps = [t for t in tail_inputs(model, head) if t not in split.parts and t not in _outputs_of(model, int8_tail)]
    return head, head_maps


def _prepare(
    fp32_path: str, out_path: str, calib: ImageBatch, profile: Profile, method: str, images: int, workdir: str, check_images: int, warn: Callable[[str], None]
) -> _Prepared:
    """Pre-process, find the head, calibrate once, and run the float reference."""
    from onnxruntime.quantization.calibrate import save_tensors_data

    q = profile.quantization
    work = os.path.join(workdir, "int8-" + os.path.basename(out_path).rsplit(".", 1)[0])
    os.makedirs(work, exist_ok=True)
    pre_path = os.path.join(work, "pre.onnx")
    model = pre_process(fp32_path, pre_path)
    scheme = scheme_for(q.scheme, q.per_channel and _per_channel_possible(model, profile.name, warn))
    input_name = [i.name for i in model.graph.input if i.name not in {x.name for x in model.graph.initializer}][0]
    head, head_maps = _head(model, pre_path, scheme, q.keep_head_float)
    quantized_ops = op_types_to_quantize(scheme)
    # The TensorRT cache covers every tensor; otherwise only what gets quantized.
    calib_ops = [] if q.trt_calibration_cache and implicit_int8(profile.tensorrt.version) else quantized_ops
    count = min(images, len(calib))
    ranges = calibrate(pre_path, calib, input_name, method, calib_ops, count, q.percentile, symmetric=scheme.activation_symmetric)
    # ONNX Runtime gives a Resize's output its input's scale; on the CPU schemes
    # the Resize joins its Concat's group so QLinearConcat copies every input.
    same_scale_ops = ("Concat", "MaxPool") if scheme.name == "tensorrt" else ("Concat", "MaxPool", "Resize")
    groups = shared_scale_groups(model, exclude=head, same_scale_ops=same_scale_ops)
    shared = unify_ranges(ranges, groups) if scheme.share_concat_scales else 0
    ranges_path = os.path.join(work, "ranges.json")
    save_tensors_data(ranges, ranges_path)
    check_inputs = [calib.tensor(i) for i in range(min(check_images, len(calib)))]
    return _Prepared(
        scheme=scheme,
        method=method,
        work=work,
        pre_path=pre_path,
        model=model,
        head=head,
        head_maps=head_maps,
        quantized_ops=quantized_ops,
        ranges=ranges,
        ranges_path=ranges_path,
        images=count,
        shared=shared,
        adds=residual_adds(model, exclude=head) if scheme.residual_rule else [],
        check_inputs=check_inputs,
        reference=_run(pre_path, check_inputs),
        trial=os.path.join(work, "trial.onnx"),
    )


def _attempt(prep: _Prepared, exclude: Sequence[str], layout: str) -> _Trial:
    """Quantize with ``exclude`` kept float, apply the placement fix-ups, measure output SQNR."""
    from .calibrate import _method

    _quantize(prep.pre_path, prep.trial, prep.ranges_path, prep.scheme, _method(prep.method), exclude)
    qmodel = onnx.load(prep.trial)
    skips = quantize_residual_skips(qmodel, prep.adds, prep.ranges) if prep.adds else []
    unquantize_tensors(qmodel, prep.head_maps)
    onnx.save(qmodel, prep.trial)
    return _Trial(output_sqnr(prep.reference, _run(prep.trial, prep.check_inputs), layout), skips)


def _next_batch(ranking: List[Unit], float_units: List[Unit], excluded: List[str], take: int, room: int) -> List[Unit]:
    """The next ``take`` worst units not yet float whose new nodes fit in ``room``."""
    batch: List[Unit] = []
    for u in ranking:
        if u in float_units or set(u.nodes) <= set(excluded):
            continue
        new = [n for n in u.nodes if n not in excluded]
        if len(batch) >= take or len(new) > room:
            break
        batch.append(u)
        room -= len(new)
    return batch


def _ranking(prep: _Prepared) -> List[Unit]:
    """Quantizable layers, worst own quantization error first (from the current trial's scales)."""
    params = qdq_tensors(onnx.load(prep.trial))
    acts = _float_activations(prep.pre_path, list(params), prep.check_inputs[:RANK_IMAGES], prep.work)
    return rank_units(prep.model, acts, params, prep.scheme.activation == "int8", prep.scheme.per_channel, list(prep.head), prep.quantized_ops)


def _float_budget(prep: _Prepared) -> int:
    quantizable = sum(1 for n in prep.model.graph.node if n.op_type in prep.quantized_ops and n.name not in prep.head)
    return max(1, int(MAX_FLOAT_FRACTION * quantizable))


def _accuracy_control(
    prep: _Prepared, trial: _Trial, float_units: List[Unit], control: AccuracyControl, fp32_path: str, layout: str, warn: Callable[[str], None]
) -> Tuple[_Trial, List[Unit], Dict[str, Any]]:
    """While mAP drops more than allowed, try the next-worst layers in float (bounded rounds).

    A round's layers stay float only if they raise the mAP; otherwise they go
    back to int8 and the next candidates are tried. The graph kept is the
    best one measured.
    """
    reference = control.reference_map if control.reference_map is not None else float(control.evaluate(fp32_path))
    excluded = list(dict.fromkeys(list(prep.head) + [n for u in float_units for n in u.nodes]))
    best_map = float(control.evaluate(prep.trial))

    def drop(m: float) -> float:
        return round((reference - m) * 100.0, 3)

    rounds: List[Dict[str, Any]] = [{"round": 0, "float_nodes": len(excluded) - len(prep.head), "map": round(best_map, 4), "drop_points": drop(best_map), "added": [], "kept": True}]
    record: Dict[str, Any] = {
        "max_drop_points": control.max_drop_points,
        "max_rounds": control.max_rounds,
        "fp32_map": round(reference, 4),
        "rounds": rounds,
        "ranking": "each layer's own quantization error (layer_sqnr), worst first; a round is kept only if it raises the mAP",
    }
    best = trial
    stopped = "met" if drop(best_map) <= control.max_drop_points else ""
    if not stopped:
        ranking = _ranking(prep)
        budget = _float_budget(prep)
        rejected: List[Unit] = []
        rejected_nodes: List[str] = []
        take = 1
        for k in range(1, control.max_rounds + 1):
            batch = _next_batch(ranking, float_units + rejected, excluded + rejected_nodes, take, budget - (len(excluded) - len(prep.head)))
            if not batch:
                stopped = "no layer left within the float cap (%d nodes, %d%% of the quantizable ones)" % (budget, int(MAX_FLOAT_FRACTION * 100))
                break
            added = [Unit(u.nodes, u.sqnr, "mAP control round %d: %s" % (k, u.reason)) for u in batch]
            candidate = excluded + [n for u in batch for n in u.nodes if n not in excluded]
            attempt = _attempt(prep, candidate, layout)
            value = float(control.evaluate(prep.trial))
            kept = value > best_map
            rounds.append(
                {
                    "round": k,
                    "float_nodes": len(candidate) - len(prep.head),
                    "map": round(value, 4),
                    "drop_points": drop(value),
                    "added": [{"nodes": u.nodes, "reason": u.reason} for u in added],
                    "kept": kept,
                }
            )
            if kept:
                best_map, best, excluded = value, attempt, candidate
                float_units = float_units + added
            else:
                rejected += batch
                rejected_nodes += [n for u in batch for n in u.nodes]
            if drop(best_map) <= control.max_drop_points:
                stopped = "met"
                break
            take *= 2
        else:
            stopped = "round limit (%d)" % control.max_rounds
        if not rounds[-1]["kept"]:  # the trial file holds a rejected round: rebuild the best one
            best = _attempt(prep, excluded, layout)
    record.update({"met": drop(best_map) <= control.max_drop_points, "stopped": stopped, "map": round(best_map, 4), "drop_points": drop(best_map)})
    record["kept_float"] = [{"nodes": u.nodes, "reason": u.reason} for u in float_units if u.reason.startswith("mAP control")]
    if not record["met"]:
        warn(
            "int8 mAP %.3f is %.2f points below fp32 %.3f, more than the %.2f allowed, after %d round(s) of trying layers in float (%s; %d kept float)"
            % (best_map, drop(best_map), reference, control.max_drop_points, len(rounds) - 1, stopped, len(record["kept_float"]))
        )
    return best, float_units, record


def _mixed_precision(
    prep: _Prepared, first: _Trial, layout: str, target_db: float, max_rounds: int, warn: Callable[[str], None]
) -> Tuple[_Trial, List[Unit], List[Dict[str, Any]]]:
    """While the output SQNR is below target, return the worst layers to float (1, 2, 4, ... a round, capped)."""
    trial = first
    float_units: List[Unit] = []
    history = [{"float_nodes": 0, "sqnr_db": trial.sqnr}]
    if target_db <= 0 or min(trial.sqnr.values()) >= target_db:
        return trial, float_units, history
    excluded = list(prep.head)
    ranking = _ranking(prep)
    budget = _float_budget(prep)
    take = 1
    for _ in range(max_rounds):
        batch = _next_batch(ranking, float_units, excluded, take, budget - (len(excluded) - len(prep.head)))
        if not batch:
            break
        float_units.extend(batch)
        for u in batch:
            excluded.extend(n for n in u.nodes if n not in excluded)
        trial = _attempt(prep, excluded, layout)
        history.append({"float_nodes": len(excluded) - len(prep.head), "sqnr_db": trial.sqnr})
        if min(trial.sqnr.values()) >= target_db:
            break
        take *= 2
    if min(trial.sqnr.values()) < target_db:
        warn(
            "int8 output SQNR %.1f dB stays below the %.1f dB target with %d nodes kept in float (the most mixed precision may keep is %d)"
            % (min(trial.sqnr.values()), target_db, len(excluded) - len(prep.head), budget)
        )
    return trial, float_units, history


def _trt_cache(profile: Profile, ranges: Any, fp32_path: str, warn: Callable[[str], None]) -> Optional[str]:
    if not profile.quantization.trt_calibration_cache:
        return None
    if implicit_int8(profile.tensorrt.version):
        return trt_cache_text(ranges, fp32_path, profile.tensorrt.version)
    warn("no TensorRT calibration cache: TensorRT %s has no implicit INT8 (the Q/DQ graph is what it builds)" % profile.tensorrt.version)
    return None


def quantize_int8(
    fp32_path: str,
    out_path: str,
    calib: Optional[ImageBatch],
    profile: Profile,
    method: str,
    images: int,
    snr_target_db: float,
    layout: str,
    workdir: str,
    warn: Callable[[str], None] = lambda message: None,
    check_images: int = CHECK_IMAGES,
    max_rounds: int = MAX_ROUNDS,
    accuracy: Optional[AccuracyControl] = None,
    tool: Optional[str] = None,
) -> QuantResult:
    """Write the INT8 QDQ model of ``fp32_path`` to ``out_path`` per the profile.

    ``tool``: "onnxruntime" (default) or "modelopt" (TensorRT scheme only;
    default from the ``EDGEKIT_INT8_TOOL`` environment variable).
    """
    from .modelopt_ptq import check_tool, quantize_with_modelopt

    tool = tool or os.environ.get("EDGEKIT_INT8_TOOL") or "onnxruntime"
    check_tool(tool, profile.quantization.scheme)
    if calib is None or not len(calib):
        raise EdgekitError("int8 needs calibration images", "pass a folder of representative images with --calib")
    prep = _prepare(fp32_path, out_path, calib, profile, method, images, workdir, check_images, warn)
    if tool == "modelopt":
        quantize_with_modelopt(prep.pre_path, prep.trial, [calib.tensor(i) for i in range(prep.images)], method, prep.head)
        first = _Trial(output_sqnr(prep.reference, _run(prep.trial, prep.check_inputs), layout), [])
        trial, float_units, history = first, [], [{"float_nodes": 0, "sqnr_db": first.sqnr}]
    else:
        first = _attempt(prep, prep.head, layout)
        trial, float_units, history = _mixed_precision(prep, first, layout, snr_target_db, max_rounds, warn)
    accuracy_record = None
    if accuracy is not None and tool == "onnxruntime":
        trial, float_units, accuracy_record = _accuracy_control(prep, trial, float_units, accuracy, fp32_path, layout, warn)
    violations = tensorrt_violations(onnx.load(prep.trial)) if prep.scheme.name == "tensorrt" else []
    if violations:
        raise EdgekitError(
            "the int8 graph breaks TensorRT's Q/DQ rules: %s" % "; ".join(violations[:3]),
            "report this as an edgekit bug; build fp16 or fp32 for TensorRT meanwhile",
        )
    shutil.copyfile(prep.trial, out_path)
    return QuantResult(
        path=out_path,
        scheme=prep.scheme,
        method=method,
        images=prep.images,
        skipped=len(calib.skipped),
        head_float=prep.head,
        float_units=[{"nodes": u.nodes, "reason": u.reason, "sqnr_db": round(u.sqnr, 2)} for u in float_units],
        sqnr_db=trial.sqnr,
        sqnr_target_db=snr_target_db,
        history=history,
        shared_scale_tensors=prep.shared,
        residual_skips=len(trial.skips),
        trt_cache=_trt_cache(profile, prep.ranges, fp32_path, warn),
        runtime=runtime_summary(out_path),
        accuracy=accuracy_record,
        tool=tool,
    )
