"""The INT8 variant: static QDQ quantization through ONNX Runtime's tooling.

1. ``quant_pre_process`` (shape inference, graph clean-up), as ONNX Runtime asks;
2. calibration on real images (edgekit.host.quantize.calibrate, bounded memory);
3. the profile's scheme (edgekit.host.quantize.schemes), TensorRT's placement
   rules where the target is TensorRT;
4. the detection head's decode tail stays float (one int8 scale over pixel
   coordinates and probabilities rounds every score to zero);
5. mixed precision: while the output's SQNR is below the target, the layers
   whose own quantization is worst stay float, a few more each round;
6. for TensorRT 8.x also a calibration cache in TensorRT's format.
"""
import contextlib
import dataclasses
import io
import logging
import os
import shutil
from typing import Any, Callable, Dict, List, Optional, Sequence

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

# Images used to measure SQNR and rank layers (a subset of the calibration set).
CHECK_IMAGES = 8
RANK_IMAGES = 2
MAX_ROUNDS = 6
# Mixed precision never keeps more than this share of the quantizable nodes in
# float: past it the int8 model would be little faster than fp32 anyway.
MAX_FLOAT_FRACTION = 0.25
TRT_CACHE_ALGORITHM = "EntropyCalibration2"


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

    def summary(self) -> str:
        worst = min(self.sqnr_db.values()) if self.sqnr_db else float("nan")
        floats = len({n for u in self.float_units for n in u["nodes"]})
        return "%s/%s, %d images, SQNR %.1f dB, %d head nodes + %d nodes float" % (self.scheme.name, self.method, self.images, worst, len(self.head_float), floats)

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
                "tool": "onnxruntime.quantization (static QDQ after quant_pre_process)",
                "head_float": {"nodes": list(self.head_float), "reason": "detection decode tail: boxes and scores share one tensor"},
                "float_nodes": list(self.float_units),
                "sqnr_db": dict(self.sqnr_db),
                "sqnr_target_db": self.sqnr_target_db,
                "mixed_precision_rounds": list(self.history),
                "shared_scale_tensors": self.shared_scale_tensors,
                "residual_skip_qdq": self.residual_skips,
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


def pre_process(src: str, dst: str) -> onnx.ModelProto:
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with _quiet():
        try:
            quant_pre_process(src, dst, skip_symbolic_shape=False)
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
) -> QuantResult:
    """Write the INT8 QDQ model of ``fp32_path`` to ``out_path`` per the profile."""
    from onnxruntime.quantization.calibrate import save_tensors_data

    from .calibrate import _method

    if calib is None or not len(calib):
        raise EdgekitError("int8 needs calibration images", "pass a folder of representative images with --calib")
    q = profile.quantization
    scheme = scheme_for(q.scheme, q.per_channel)
    work = os.path.join(workdir, "int8-" + os.path.basename(out_path).rsplit(".", 1)[0])
    os.makedirs(work, exist_ok=True)
    pre_path = os.path.join(work, "pre.onnx")
    model = pre_process(fp32_path, pre_path)
    input_name = [i.name for i in model.graph.input if i.name not in {x.name for x in model.graph.initializer}][0]

    head = decode_tail(model) if q.keep_head_float else []
    # The raw maps entering the tail stay float too: one uint8/int8 scale over
    # xy, wh, objectness and class logits costs box precision (mAP@.75).
    head_maps = tail_inputs(model, head) if head else []
    quantized_ops = op_types_to_quantize(scheme)
    # The TensorRT cache covers every tensor; otherwise only what gets quantized.
    calib_ops = [] if q.trt_calibration_cache and implicit_int8(profile.tensorrt.version) else quantized_ops
    count = min(images, len(calib))
    ranges = calibrate(pre_path, calib, input_name, method, calib_ops, count, q.percentile, symmetric=scheme.activation_symmetric)
    shared = unify_ranges(ranges, shared_scale_groups(model, exclude=head)) if scheme.share_concat_scales else 0
    ranges_path = os.path.join(work, "ranges.json")
    save_tensors_data(ranges, ranges_path)
    adds = residual_adds(model, exclude=head) if scheme.residual_rule else []

    check_inputs = [calib.tensor(i) for i in range(min(check_images, len(calib)))]
    reference = _run(pre_path, check_inputs)
    trial = os.path.join(work, "trial.onnx")

    def attempt(exclude: Sequence[str]) -> Dict[str, float]:
        _quantize(pre_path, trial, ranges_path, scheme, _method(method), exclude)
        qmodel = onnx.load(trial)
        attempt.skips = quantize_residual_skips(qmodel, adds, ranges) if adds else []  # type: ignore[attr-defined]
        unquantize_tensors(qmodel, head_maps)
        onnx.save(qmodel, trial)
        return output_sqnr(reference, _run(trial, check_inputs), layout)

    float_units: List[Unit] = []
    excluded = list(head)
    sqnr = attempt(excluded)
    history = [{"float_nodes": 0, "sqnr_db": sqnr}]
    if snr_target_db > 0 and min(sqnr.values()) < snr_target_db:
        qmodel = onnx.load(trial)
        params = qdq_tensors(qmodel)
        acts = _float_activations(pre_path, list(params), check_inputs[:RANK_IMAGES], work)
        ranking = rank_units(model, acts, params, scheme.activation == "int8", scheme.per_channel, excluded, quantized_ops)
        quantizable = sum(1 for n in model.graph.node if n.op_type in quantized_ops and n.name not in head)
        budget = max(1, int(MAX_FLOAT_FRACTION * quantizable))
        take = 1
        for _ in range(max_rounds):
            fresh = [u for u in ranking if u not in float_units and not set(u.nodes) <= set(excluded)]
            room = budget - (len(excluded) - len(head))
            batch = []
            for u in fresh:
                new = [n for n in u.nodes if n not in excluded]
                if len(batch) >= take or len(new) > room:
                    break
                batch.append(u)
                room -= len(new)
            if not batch:
                break
            float_units.extend(batch)
            for u in batch:
                excluded.extend(n for n in u.nodes if n not in excluded)
            sqnr = attempt(excluded)
            history.append({"float_nodes": len(excluded) - len(head), "sqnr_db": sqnr})
            if min(sqnr.values()) >= snr_target_db:
                break
            take *= 2
        if min(sqnr.values()) < snr_target_db:
            warn(
                "int8 output SQNR %.1f dB stays below the %.1f dB target with %d nodes kept in float (the most mixed precision may keep is %d)"
                % (min(sqnr.values()), snr_target_db, len(excluded) - len(head), budget)
            )
    shutil.copyfile(trial, out_path)
    skips = getattr(attempt, "skips", [])

    cache = None
    if q.trt_calibration_cache:
        if implicit_int8(profile.tensorrt.version):
            cache = trt_cache_text(ranges, fp32_path, profile.tensorrt.version)
        else:
            warn("no TensorRT calibration cache: TensorRT %s has no implicit INT8 (the Q/DQ graph is what it builds)" % profile.tensorrt.version)
    return QuantResult(
        path=out_path,
        scheme=scheme,
        method=method,
        images=count,
        skipped=len(calib.skipped),
        head_float=head,
        float_units=[{"nodes": u.nodes, "reason": u.reason, "sqnr_db": round(u.sqnr, 2)} for u in float_units],
        sqnr_db=sqnr,
        sqnr_target_db=snr_target_db,
        history=history,
        shared_scale_tensors=shared,
        residual_skips=len(skips),
        trt_cache=cache,
    )
