"""`edgekit build`: a thin command over edgekit.host.bundle.build_bundle."""
import os
from typing import Any, Dict, Optional, Tuple

import click

from edgekit.contract.errors import EdgekitError

from .progress import ProgressDisplay


def _parse_size(text: Optional[str]) -> Optional[Tuple[int, int]]:
    if not text:
        return None
    parts = text.lower().replace("x", ",").split(",")
    try:
        values = [int(p) for p in parts if p.strip()]
    except ValueError:
        values = []
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or any(v < 32 or v % 32 for v in values):
        raise EdgekitError("--input-size %r is not HxW in multiples of 32" % text, "pass e.g. --input-size 640 or 384x640")
    return values[0], values[1]


# The pruning library's argument names (ParameterError slots) as this command's flags.
BUILD_FLAGS = {
    "recover_steps": "--recover-steps",
    "recover_time_s": "--recover-seconds",
    "calib": "--calib",
    "device": "--device",
    "ratio": "--prune",
    "criterion": "--prune-criterion",
    "strategy": "--prune-strategy",
}


def _fmt(value: Any, pattern: str) -> str:
    return "-" if value is None else pattern % value


@click.command("build")
@click.option("--profile", "profile", default="cpu", show_default=True, help="Target profile: a built-in name or a .toml file.")
@click.option("--model", default="demo", show_default=True, help="'demo' or 'demo-v8' (the built-in detectors), a PyTorch checkpoint (.pt) or an ONNX file.")
@click.option("--weights", default=None, help="Weights for --model (e.g. a retrained demo checkpoint).")
@click.option("--trust-checkpoint", is_flag=True, help="Allow unpickling a full-model checkpoint (runs code it names).")
@click.option("--code-path", default=None, metavar="DIR", help="Where a checkpoint's model classes live (e.g. a yolov5 clone).")
@click.option("--calib", "calib", default=None, metavar="DIR", help="Calibration images (jpg/png/bmp/webp, searched recursively). Default: the demo's, for --model demo only; any other model needs --calib.")
@click.option("--eval", "eval_ref", default=None, metavar="DIR_OR_JSON", help="COCO evaluation set for host reference mAP ('none' to skip). Default: the demo's.")
@click.option("--prune", default="0", show_default=True, help="Pruning ratios, comma-separated: every ratio x variant goes into the bundle.")
@click.option("--variants", default=None, help="Precisions to build, comma-separated (default: the profile's).")
@click.option("--out", default=None, metavar="DIR", help="Bundle folder (default: bundles/<model>-<profile>).")
@click.option("--tar", is_flag=True, help="Also pack the bundle as one .tar beside the folder.")
@click.option("--input-size", default=None, help="Network input HxW (default: the model's own, else the profile's).")
@click.option("--opset", type=int, default=None, help="ONNX opset (default: the profile's).")
@click.option("--calib-images", type=int, default=None, help="Calibration images to use (default: the profile's).")
@click.option("--calib-method", type=click.Choice(["minmax", "entropy", "percentile"]), default=None, help="Calibration method (default: the profile's).")
@click.option("--snr-target", type=float, default=None, help="Mixed precision: output SQNR target in dB, 0 to disable (default: the profile's).")
@click.option("--eval-images", type=int, default=None, help="Evaluate on the first N images only.")
@click.option("--max-map-drop", type=click.FloatRange(0, min_open=True), default=None, metavar="POINTS",
              help="int8: keep the most sensitive layers float, round by round, until mAP is within POINTS (mAP x 100) of fp32 (needs an eval set).")
@click.option("--int8-tool", type=click.Choice(["onnxruntime", "modelopt"]), default=None,
              help="int8 quantizer: ONNX Runtime's (default) or NVIDIA's TensorRT Model Optimizer (TensorRT profiles; pip install nvidia-modelopt).")
@click.option("--dynamic-batch", is_flag=True, help="Export with a dynamic batch dimension (any batch size at run time; edgekit-agent bench --batch 1,4,8).")
@click.option("--nms", type=click.Choice(["numpy", "graph"]), default="numpy", show_default=True,
              help="Where decode + NMS runs: the agent's numpy code, or inside the graph (ONNX NonMaxSuppression; TensorRT's EfficientNMS_TRT on TensorRT profiles).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the calibration image sampling.")
@click.option("--prune-criterion", type=click.Choice(["l1", "bn"]), default=None, help="Channel importance for --prune (default l1).")
@click.option("--prune-strategy", type=click.Choice(["uniform", "global", "sensitivity"]), default=None, help="How --prune spreads the ratio over layers (default uniform).")
@click.option("--recover-steps", type=int, default=0, show_default=True, help="Distillation steps after pruning (0: none).")
@click.option("--recover-seconds", type=float, default=None, help="Time budget of the distillation after pruning.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True, help="Where recovery trains: auto is CUDA when torch sees a GPU, else the CPU.")
def build(**kw: Any) -> None:
    """Export, check, quantize and bundle a model for a target profile."""
    from rich.console import Console
    from rich.table import Table

    from edgekit.host.bundle import BuildOptions, build_bundle

    options = BuildOptions(
        profile=kw["profile"],
        model=kw["model"],
        weights=kw["weights"],
        trust_checkpoint=kw["trust_checkpoint"],
        code_path=kw["code_path"],
        calib=kw["calib"],
        eval=kw["eval_ref"],
        prune=kw["prune"],
        variants=kw["variants"],
        out=kw["out"],
        tar=kw["tar"],
        input_size=_parse_size(kw["input_size"]),
        opset=kw["opset"],
        calib_images=kw["calib_images"],
        calib_method=kw["calib_method"],
        snr_target_db=kw["snr_target"],
        eval_images=kw["eval_images"],
        seed=kw["seed"],
        prune_options={k: v for k, v in (("criterion", kw["prune_criterion"]), ("strategy", kw["prune_strategy"])) if v},
        recover_steps=kw["recover_steps"],
        recover_seconds=kw["recover_seconds"],
        device=kw["device"],
        max_map_drop=kw["max_map_drop"],
        int8_tool=kw["int8_tool"],
        nms=kw["nms"],
        dynamic_batch=kw["dynamic_batch"],
    )
    console = Console(stderr=True, width=120)
    display = ProgressDisplay(console)
    from edgekit.host.prune.param_errors import reworded

    try:
        with reworded(BUILD_FLAGS):
            result = build_bundle(options, progress=display)
    finally:
        display.close()
    table = Table(title="bundle %s" % os.path.relpath(result.out_dir), box=None, header_style="bold")
    for col in ("variant", "size MB", "parity cosine", "max abs err", "host mAP", "mAP50", "float nodes"):
        table.add_column(col, justify="left" if col == "variant" else "right")
    for row in result.summary_rows():
        table.add_row(
            row["variant"],
            "%.2f" % row["size_mb"],
            _fmt(row["cosine"], "%.6f"),
            _fmt(row["max_abs_error"], "%.3g"),
            _fmt(row["map"], "%.3f"),
            _fmt(row["map50"], "%.3f"),
            str(row["float_nodes"]),
            style="red" if row.get("flag") else None,  # lost > 10 mAP points (the warning says why)
        )
    Console(width=120).print(table)
    click.echo(stage_summary(result.stage_seconds, result.total_seconds))
    click.echo("built %s in %.1fs%s" % (result.out_dir, result.total_seconds, (", packed " + result.tar_path) if result.tar_path else ""))


def stage_summary(stage_seconds: Dict[str, float], total: float) -> str:
    """One line: where the build's time went, longest stage first, with its share."""
    parts = ["%s %.1fs (%d%%)" % (stage, sec, round(100.0 * sec / total)) if total > 0 else "%s %.1fs" % (stage, sec)
             for stage, sec in sorted(stage_seconds.items(), key=lambda kv: -kv[1]) if sec >= 0.05]
    return "time by stage: " + (", ".join(parts) if parts else "none over 0.05s")
