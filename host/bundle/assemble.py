"""``edgekit build``: model -> (prune) -> ONNX -> simplify -> parity -> int8/fp16 -> bundle.

One call, :func:`build_bundle`, builds every requested (pruning ratio x
precision) variant into one bundle folder (see edgekit.contract.manifest for its
contract). The folder is assembled in a temporary directory by BundleWriter
and renamed into place only when complete: any error leaves nothing behind.
"""
import dataclasses
import datetime
import os
import tempfile
from typing import Any, Dict, List, Optional, Tuple

from edgekit.calibration.images import ImageBatch, discover_images, load_images
from edgekit.contract._version import __version__
from edgekit.contract.manifest import Manifest, TensorInfo, VariantRecord
from edgekit.contract.specs import PostprocessSpec

from edgekit.host.bundle.writer import BundleWriter, pack_tar
from edgekit.contract.errors import EdgekitError
from edgekit.host import export as X  # torch-free until a stage needs it (PEP 562 lazy names)
from edgekit.host.bundle.eval_set import EvalSet, category_check, load_eval_set, write_eval_set
from edgekit.host.bundle.options import BuildOptions, Plan, resolve, variant_name
from edgekit.host.bundle.stages import Callback, Reporter
from edgekit.host.bundle.reference import evaluate_onnx
from edgekit.host.model.source import ModelSource, _stem, load_source


@dataclasses.dataclass
class BuildResult:
    out_dir: str
    manifest: Dict[str, Any]
    tar_path: Optional[str]
    stage_seconds: Dict[str, float]
    timeline: List[Dict[str, Any]]
    warnings: List[str]
    total_seconds: float

    def summary_rows(self) -> List[Dict[str, Any]]:
        """One row per variant: name, size, parity, host mAP (for the closing table)."""
        from edgekit.host.report.map_loss import loss_flags

        flags = loss_flags(self.manifest["variants"])
        rows = []
        for v in self.manifest["variants"]:
            size = self.manifest["files"][v["file"]]["size"]
            parity = v.get("parity") or {}
            metrics = v.get("host_metrics") or {}
            rows.append(
                {
                    "variant": v["name"],
                    "precision": v["precision"],
                    "size_mb": size / 1e6,
                    "cosine": parity.get("cosine"),
                    "max_abs_error": parity.get("max_abs_error"),
                    "map": metrics.get("map"),
                    "map50": metrics.get("map50"),
                    # What ONNX Runtime runs in float once it has fused the QDQ graph (head, left-over convs, ...).
                    "float_nodes": ((v.get("quantization") or {}).get("runtime_float") or {}).get("float_nodes", 0),
                    # Lost too much mAP against the unpruned fp32 (edgekit.host.report.map_loss): the warning, else None.
                    "flag": flags.get(v["name"]),
                }
            )
        return rows


def _utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _model_name(ref: str) -> str:
    return ref if ref in ("demo", "demo-v8") else _stem(ref)


def _count_params(module: Any) -> Optional[int]:
    if module is None:
        return None
    return int(sum(p.numel() for p in module.parameters()))


def _count_macs(module: Any, input_size: Any) -> Optional[int]:
    """MACs of one forward pass of the unpruned model (None for an .onnx model or a model the counter cannot trace)."""
    if module is None:
        return None
    import torch

    from edgekit.host.prune.metrics import count_macs_params

    try:
        return count_macs_params(module, torch.zeros(1, 3, int(input_size[0]), int(input_size[1])))[0]
    except Exception:  # a counting failure must not fail the build; reports then show no MACs
        return None


def _check_inputs(options: BuildOptions) -> Optional[EvalSet]:
    """Cheap checks of the inputs before any model is loaded, so a typo fails in a second.

    Returns the evaluation set when ``--eval`` names one (parsed once here).
    """
    looks_like_file = options.model.lower().endswith((".pt", ".pth", ".ckpt", ".bin", ".onnx"))
    if looks_like_file and not os.path.exists(options.model):
        raise EdgekitError("model file %s does not exist" % options.model, "pass a checkpoint (.pt), an ONNX file, or --model demo")
    if options.calib is not None:
        discover_images(options.calib)  # raises on a missing or image-less folder
    if options.eval is not None and options.eval != "none":
        return load_eval_set(options.eval, options.eval_images)
    return None


class _Build(object):
    """State of one build; the methods are its stages in order."""

    def __init__(self, options: BuildOptions, plan: Plan, reporter: Reporter, writer: BundleWriter, tmp: str, eval_set: Optional[EvalSet] = None) -> None:
        self.options = options
        self.eval_set = eval_set
        self.plan = plan
        self.profile = plan.profile
        self.r = reporter
        self.writer = writer
        self.tmp = tmp
        self.source: Optional[ModelSource] = None
        self.calib: Optional[ImageBatch] = None
        self.eval_block: Optional[Dict[str, Any]] = None
        self.variants: List[Dict[str, Any]] = []
        self.reports: Dict[float, Dict[str, Any]] = {}
        self.export_info: Dict[str, Any] = {}
        self.io: Tuple[str, List[int], List[str], List[List[int]]] = ("images", [], [], [])
        self.torch_outputs: Dict[float, List[Any]] = {}
        self.simplify_info: Dict[str, Any] = {}
        self.nms_files: List[str] = []  # --nms graph: files that have the tail
        self.nms_post: Optional[PostprocessSpec] = None  # --nms graph: the bundle's postprocess (layout boxes)

    # -- inputs ---------------------------------------------------------------

    def load(self) -> None:
        with self.r.stage("load") as info:
            o = self.options
            self.source = load_source(o.model, o.input_size, self.profile.input_size, o.weights, o.pretrained, o.trust_checkpoint, o.code_path)
            info["detail"] = "%s at %dx%d" % (self.source.source, self.source.input_size[0], self.source.input_size[1])

    def load_calibration(self) -> None:
        folder = self.options.calib or self.source.default_calib_dir
        needs = "int8" in self.plan.variants or self.source.module is not None
        if folder is None:
            if needs:
                raise EdgekitError("no calibration images for %s" % self.options.model, "pass a folder of representative images with --calib")
            return
        with self.r.stage("calibration images") as info:
            count = max(self.plan.calib_images, self.options.parity_images)
            self.calib = load_images(folder, self.source.preprocess, count=count, seed=self.options.seed)
            if self.calib.skipped:
                self.r.warn("skipped %d unreadable image(s) in %s (first: %s)" % (len(self.calib.skipped), folder, os.path.basename(self.calib.skipped[0][0])))
            info["detail"] = "%d images from %s" % (len(self.calib), folder)

    def load_eval(self) -> None:
        ref = self.options.eval if self.options.eval is not None else self.source.default_eval
        if ref is None or ref == "none":
            return
        with self.r.stage("evaluation set") as info:
            eval_set = self.eval_set or load_eval_set(ref, self.options.eval_images)
            category_check(eval_set, self.source.category_ids)
            self.eval_block = write_eval_set(eval_set, self.writer)
            info["detail"] = "%d images from %s" % (eval_set.count, ref)

    # -- per pruning ratio ------------------------------------------------------

    def recover_unit(self) -> str:
        # Recovery counts steps when given steps, else seconds of its time budget.
        return "steps" if self.options.recover_steps else "s"

    def model_for(self, ratio: float) -> Any:
        if ratio <= 0:
            return self.source.module
        from edgekit.host.bundle.pruning import prune_for_bundle

        name = variant_name(ratio, "prune").rsplit("-", 1)[0]
        with self.r.stage("prune", name) as info:
            model, block = prune_for_bundle(
                self.source, ratio, self.profile.alignment, self.calib, self.options, self.writer, name, on_step=self.r.counter("recover", name, self.recover_unit())
            )
            self.reports[ratio] = block
            info["detail"] = "params %d -> %d, MACs -%.0f%%" % (block["params"]["before"], block["params"]["after"], 100 * block["macs"]["reduction"])
        return model

    def export(self, ratio: float, model: Any) -> str:
        """The checked fp32 graph of this ratio, in the temporary folder."""
        label = variant_name(ratio, "fp32")
        raw = os.path.join(self.tmp, "%s.raw.onnx" % label)
        final = os.path.join(self.tmp, "%s.onnx" % label)
        if model is None:  # the input was already ONNX
            with self.r.stage("export", label) as info:
                from edgekit.host.export.session import open_session

                open_session(self.source.onnx_path)
                raw = self.source.onnx_path
                info["detail"] = "ONNX input, not exported"
            self.export_info = {"exporter": None, "opset": None, "fallback_from": []}
        else:
            with self.r.stage("export", label) as info:
                result = X.export_onnx(model, self.source.input_size, raw, self.plan.opset, self.options.exporters, dynamic_batch=self.options.dynamic_batch)
                for failure in result.failures:
                    self.r.warn("%s; used the %s exporter instead" % (failure, result.exporter))
                self.export_info = result.to_dict()
                info["detail"] = "%s exporter, opset %d" % (result.exporter, result.opset)
        with self.r.stage("simplify", label) as info:
            simp = X.simplify_onnx(raw, final)
            if not simp.simplified:
                self.r.warn("kept the unsimplified graph: %s" % simp.reason)
            info["detail"] = "%d -> %d nodes" % (simp.nodes_before, simp.nodes_after) if simp.simplified else "kept original (%s)" % simp.reason
        self.simplify_info = simp.to_dict()
        self.io = X.onnx_io(final)
        with self.r.stage("operators", label) as info:
            counts = X.check_operators(final, self.profile.unsupported_ops, self.profile.name, "the %s graph" % label)
            info["detail"] = "%d op types" % len(counts)
        return final

    def parity_inputs(self) -> List[Any]:
        return [self.calib.tensor(i) for i in range(min(self.options.parity_images, len(self.calib)))]

    def torch_reference(self, ratio: float, model: Any) -> List[Any]:
        """PyTorch's outputs on the parity images, computed once per pruning ratio."""
        from edgekit.host.export.parity import run_torch

        if ratio not in self.torch_outputs:
            self.torch_outputs[ratio] = run_torch(model, self.parity_inputs())
        return self.torch_outputs[ratio]

    def parity(self, ratio: float, model: Any, path: str, label: str, strict: bool = True) -> Optional[Dict[str, Any]]:
        """ONNX Runtime vs PyTorch on real images. ``strict`` stops the build on a
        mismatch (float graphs); otherwise the numbers are only recorded (int8, fp16)."""
        if model is None or self.calib is None:
            return None
        from edgekit.host.export.parity import compare, run_onnx

        with self.r.stage("parity", label) as info:
            reference = self.torch_reference(ratio, model)
            if strict:
                result = X.check_parity(model, path, self.parity_inputs(), self.profile.max_drift, "the %s graph" % label, reference=reference)
            else:
                result = compare(reference, run_onnx(path, self.parity_inputs()))
            info["detail"] = "max abs err %.2g, cosine %.6f" % (result.max_abs_error, result.cosine)
        return result.to_dict()

    def add_variant(self, name: str, precision: str, rel: str, ratio: float, **fields: Any) -> Dict[str, Any]:
        prune = dict(self.reports[ratio]) if ratio > 0 else None
        entry = {
            "name": name,
            "precision": precision,
            "file": rel,
            "prune": prune,
            "calibration": None,
            "quantization": None,
            "sparsity": None,
            "simplified": dict(self.simplify_info),
            "export": dict(self.export_info),
            "parity": None,
            "host_metrics": None,
            "notes": [],
        }
        entry.update(fields)
        self.variants.append(entry)
        return entry

    def build_ratio(self, ratio: float) -> None:
        model = self.model_for(ratio)
        fp32_path = self.export(ratio, model)
        fp32_name = variant_name(ratio, "fp32")
        parity = self.parity(ratio, model, fp32_path, fp32_name)
        fp32_rel = None
        if "fp32" in self.plan.variants:
            fp32_rel = self.writer.add_file("models/%s.onnx" % fp32_name, fp32_path)
            self.add_variant(fp32_name, "fp32", fp32_rel, ratio, parity=parity)
        if "fp16" in self.plan.variants:
            self.build_fp16(ratio, model, fp32_path, fp32_rel, parity)
        if "int8" in self.plan.variants:
            self.build_int8(ratio, model, fp32_path, fp32_rel)
        if self.options.nms == "graph" and self.profile.runtime != "tensorrt":
            self.append_nms(ratio)

    def append_nms(self, ratio: float) -> None:
        """--nms graph: the decode + NMS tail appended to this ratio's finished graphs (after int8: never quantized)."""
        from edgekit.host.export.nms_graph import append_nms_file, nms_spec

        with self.r.stage("nms", variant_name(ratio, "graph")) as info:
            done = set(self.nms_files)
            for v in self.variants:
                if v["file"] not in done:
                    append_nms_file(self.writer.path(v["file"]), self.source.postprocess, self.profile.runtime)
                    v["notes"].append("decode + NMS in the graph (%s)" % ("EfficientNMS_TRT; host metrics are of the graph before it, which ONNX Runtime can run"
                                                                           if self.profile.runtime == "tensorrt" else "NonMaxSuppression"))
                    done.add(v["file"])
                    self.io = X.onnx_io(self.writer.path(v["file"]))
            self.nms_files = sorted(done)
            self.nms_post = nms_spec(self.source.postprocess)
            info["detail"] = "%d graphs" % len(done)

    def build_fp16(self, ratio: float, model: Any, fp32_path: str, fp32_rel: Optional[str], parity: Optional[Dict[str, Any]]) -> None:
        from edgekit.host.quantize.fp16 import needs_fp16_graph, to_fp16

        name = variant_name(ratio, "fp16")
        if not needs_fp16_graph(self.profile):
            # TensorRT < 11 builds fp16 engines from the fp32 graph with its FP16 flag.
            rel = fp32_rel or self.writer.add_file("models/%s.onnx" % variant_name(ratio, "fp32"), fp32_path)
            self.add_variant(name, "fp16", rel, ratio, parity=parity, graph_precision="fp32", notes=["fp16 is TensorRT's builder flag on the fp32 graph"])
            return
        with self.r.stage("fp16", name) as info:
            rel = "models/%s.onnx" % name
            to_fp16(fp32_path, self.writer.path(rel))
            info["detail"] = "fp16 weights and activations, fp32 inputs/outputs"
        fp16_parity = None
        try:
            fp16_parity = self.parity(ratio, model, self.writer.path(rel), name, strict=False)
        except EdgekitError:  # the host's ONNX Runtime may lack fp16 kernels for this graph
            fp16_parity = None
        entry = self.add_variant(name, "fp16", rel, ratio, parity=fp16_parity, graph_precision="fp16")
        if fp16_parity is None:
            entry["notes"].append("fp16 graph not run on the host: its ONNX Runtime has no fp16 kernels for it")

    def accuracy_control(self) -> Any:
        """mAP-controlled int8 (edgekit.host.quantize.AccuracyControl) when ``max_map_drop`` is set and there is an eval set."""
        limit = self.options.max_map_drop
        if limit is None or float(limit) <= 0 or self.eval_block is None:
            return None
        from edgekit.host.quantize import AccuracyControl

        images, annotations = self.writer.path(self.eval_block["images"]), self.writer.path(self.eval_block["annotations"])
        pre, post = self.source.preprocess, self.source.postprocess
        return AccuracyControl(lambda path: evaluate_onnx(path, images, annotations, pre, post)["map"], max_drop_points=float(limit))

    def build_int8(self, ratio: float, model: Any, fp32_path: str, fp32_rel: Optional[str]) -> None:
        from edgekit.host.quantize import quantize_int8

        name = variant_name(ratio, "int8")
        rel = "models/%s.onnx" % name
        with self.r.stage("int8", name) as info:
            result = quantize_int8(
                fp32_path,
                self.writer.path(rel),
                self.calib,
                self.profile,
                method=self.plan.calib_method,
                images=self.plan.calib_images,
                snr_target_db=self.plan.snr_target_db,
                layout=self.source.postprocess.layout,
                workdir=self.tmp,
                warn=self.r.warn,
                accuracy=self.accuracy_control(),
                tool=self.options.int8_tool,
            )
            info["detail"] = result.summary()
        calibration = result.calibration_dict()
        if result.trt_cache is not None:
            cache_rel = "models/%s.calib.cache" % name
            self.writer.add_bytes(cache_rel, result.trt_cache.encode("ascii"))
            calibration["trt_cache"] = cache_rel
            # Implicit INT8 builds the engine from the fp32 graph plus this table.
            calibration["trt_cache_graph"] = fp32_rel or self.writer.add_file("models/%s.onnx" % variant_name(ratio, "fp32"), fp32_path)
        with self.r.stage("operators", name):
            X.check_operators(self.writer.path(rel), self.profile.unsupported_ops, self.profile.name, "the %s graph" % name)
        # Informational: int8 is meant to differ; its accuracy is judged by SQNR and mAP.
        parity = self.parity(ratio, model, self.writer.path(rel), name, strict=False)
        self.add_variant(name, "int8", rel, ratio, parity=parity, calibration=calibration, quantization=result.quantization_dict())

    # -- after all variants -----------------------------------------------------

    def host_metrics(self) -> None:
        if self.eval_block is None:
            return
        images = self.writer.path(self.eval_block["images"])
        annotations = self.writer.path(self.eval_block["annotations"])
        done: Dict[str, Dict[str, float]] = {}  # one evaluation per file (fp16 may share fp32's)
        for v in self.variants:
            if v.get("graph_precision") == "fp32" and v["precision"] == "fp16":
                v["host_metrics"] = None
                v["notes"].append("no host metrics: fp16 runs only on the board (the host has no fp16 engine)")
                continue
            if v["file"] not in done:
                with self.r.stage("evaluate", v["name"]) as info:
                    stats = evaluate_onnx(
                        self.writer.path(v["file"]),
                        images,
                        annotations,
                        self.source.preprocess,
                        self.nms_post or self.source.postprocess,
                        progress=self.r.counter("evaluate", v["name"], "images"),
                    )
                    info["detail"] = "mAP %.3f, mAP50 %.3f on %d images" % (stats["map"], stats["map50"], stats["images"])
                done[v["file"]] = stats
            v["host_metrics"] = dict(done[v["file"]], runtime="onnxruntime-cpu")
        # A variant far below the unpruned fp32 is flagged with its likely cause (build.warnings).
        from edgekit.host.report.map_loss import loss_flags

        for message in loss_flags(self.variants).values():
            self.r.warn(message)

    def manifest(self) -> Dict[str, Any]:
        """The manifest, written through the contract's record (files are added by the writer)."""
        src = self.source
        input_name, input_shape, output_names, output_shapes = self.io
        record = Manifest(
            name=os.path.basename(self.plan.out_dir),
            created=_utc_now(),
            edgekit_version=__version__,
            profile=self.profile.to_dict(),
            task=src.task,
            model={
                "name": src.name,
                "source": src.source,
                "params": _count_params(src.module),
                "macs": _count_macs(src.module, src.input_size),
                "input_size": list(src.input_size),
                "opset": self.plan.opset,
            },
            # A dynamic batch is recorded as input.batch "dynamic"; shapes stay those of batch 1.
            input=TensorInfo(input_name, [1] + list(input_shape[1:]) if input_shape[:1] == [-1] else input_shape, "float32",
                             batch="dynamic" if input_shape[:1] == [-1] else None),
            outputs=[TensorInfo(n, [1] + list(s[1:]) if s[:1] == [-1] else s) for n, s in zip(output_names, output_shapes)],
            preprocess=src.preprocess.to_dict(),
            postprocess=(self.nms_post or src.postprocess).to_dict(),
            eval=self.eval_block,
            variants=[VariantRecord.from_dict(v) for v in self.variants],
            build={
                "stage_seconds": {k: round(v, 3) for k, v in self.r.seconds.items()},
                "warnings": list(self.r.warnings),
                "calibration_images": len(self.calib) if self.calib is not None else 0,
                "seed": self.options.seed,
            },
        )
        return record.to_dict()


def build_bundle(options: BuildOptions, progress: Optional[Callback] = None) -> BuildResult:
    """Build the bundle described by ``options``; raises EdgekitError on bad input, leaving nothing behind."""
    import time

    start = time.perf_counter()
    plan = resolve(options, _model_name(options.model))
    eval_set = _check_inputs(options)
    reporter = Reporter(progress)
    parent = os.path.dirname(plan.out_dir)
    parent_existed = os.path.isdir(parent)
    writer = BundleWriter(plan.out_dir)  # fails now, before any work, if the folder is unwritable
    try:
        with writer, tempfile.TemporaryDirectory(prefix="edgekit-build-") as tmp:
            build = _Build(options, plan, reporter, writer, tmp, eval_set)
            build.load()
            build.load_calibration()
            build.load_eval()
            for ratio in plan.prune:
                build.build_ratio(ratio)
            build.host_metrics()
            if options.nms == "graph" and build.profile.runtime == "tensorrt":
                # EfficientNMS_TRT runs only in TensorRT: host metrics are those of the graphs before the tail.
                build.append_nms(0.0)
            with reporter.stage("write bundle") as info:
                manifest = build.manifest()
                out_dir = writer.commit(manifest)
                info["detail"] = out_dir
    except BaseException:
        # BundleWriter removed its temporary folder; also drop the parent it made (bundles/).
        if not parent_existed:
            try:
                os.rmdir(parent)
            except OSError:
                pass
        raise
    with open(os.path.join(out_dir, "manifest.json"), "r", encoding="utf-8") as f:
        import json

        manifest = json.load(f)
    tar_path = None
    if options.tar:
        with reporter.stage("tar") as info:
            tar_path = pack_tar(out_dir, out_dir.rstrip("/\\") + ".tar")
            info["detail"] = tar_path
    return BuildResult(out_dir, manifest, tar_path, dict(reporter.seconds), list(reporter.timeline), list(reporter.warnings), time.perf_counter() - start)
