"""`edgekit prune`: structured pruning with channel alignment as a standalone step."""
import json
import os
from typing import Any, Dict, Optional, Tuple

import click

from edgekit.contract.errors import EdgekitError


DEVICE_CHOICES = ["auto", "cpu", "cuda"]
# The library's argument names (edgekit.host.prune.param_errors.ParameterError slots) as this command's flags.
PRUNE_FLAGS = {
    "recover_steps": "--recover-steps",
    "recover_time_s": "--recover-seconds",
    "recover_lr": "--recover-lr",
    "calib": "--calib",
    "device": "--device",
    "out_dir": "--out",
    "ratio": "--ratio",
    "target_macs": "--target-macs",
    "bn_threshold": "--bn-threshold",
    "criterion": "--criterion",
    "strategy": "--strategy",
    "ignore": "--ignore",
}


def _input_size(text: Optional[str]) -> Optional[Tuple[int, int]]:
    from .build import _parse_size  # one parser for --input-size across commands

    return _parse_size(text)


# Options that say how to prune (not how much), shared with `edgekit build`
# (which takes its ratios from --prune): decorate a command with
# @prune_method_options and pass prune_method_kwargs(kw) to PruneConfig.
_METHOD_OPTIONS = (
    click.option("--criterion", type=click.Choice(["l1", "bn"]), default="l1", show_default=True, help="Channel importance: L1 magnitude or BatchNorm scale."),
    click.option(
        "--strategy", type=click.Choice(["uniform", "global", "sensitivity"]), default="uniform", show_default=True, help="How channels are spread over layers."
    ),
    click.option("--ignore", multiple=True, metavar="PATTERN", help="Keep these layers' output channels (name or glob; repeatable)."),
    click.option("--sparsity", type=click.Choice(["unstructured", "2:4"]), default=None, help="Also zero weights: unstructured magnitude, or 2:4 for sparse tensor cores."),
    click.option("--sparsity-ratio", type=float, default=0.5, show_default=True, help="Fraction of weights to zero with --sparsity unstructured."),
)


def prune_method_options(f):
    for option in reversed(_METHOD_OPTIONS):
        f = option(f)
    return f


def prune_method_kwargs(kw: Dict[str, Any]) -> Dict[str, Any]:
    """PruneConfig fields from the options added by :func:`prune_method_options`."""
    return {
        "criterion": kw["criterion"],
        "strategy": kw["strategy"],
        "ignore": list(kw["ignore"]),
        "sparsity": kw["sparsity"],
        "sparsity_ratio": kw["sparsity_ratio"],
    }


@click.command("prune")
@click.option("--model", default="demo", show_default=True, help="'demo', module:factory, file.py:factory, or a .pt checkpoint.")
@click.option("--weights", default=None, help="State dict for --model (loaded with weights_only=True), or a model written by edgekit prune.")
@click.option("--trust-checkpoint", is_flag=True, help="Allow unpickling a model checkpoint (runs code named in the file).")
@click.option("--code-path", default=None, metavar="DIR", help="Folder with the checkpoint's model source (e.g. a yolov5 clone).")
@click.option("--profile", default="cpu", show_default=True, help="Target profile: sets the channel alignment and default input size.")
@click.option("--alignment", type=int, default=None, help="Channel alignment (default: the profile's).")
@click.option("--input-size", default=None, help="Network input HxW (default: the model's own, else the profile's).")
@click.option("--ratio", type=float, default=None, help="Fraction of each group's channels to remove [default: 0.5].")
@click.option("--target-macs", type=float, default=None, help="Fraction of MACs to remove instead (e.g. 0.5).")
@click.option("--bn-threshold", type=float, default=None, help="Network slimming: remove channels whose BN scale is below this (with --criterion bn).")
@prune_method_options
@click.option("--calib", default=None, metavar="DIR", help="Unlabelled images for sensitivity and recovery (default: the demo's for --model demo).")
@click.option("--calib-images", type=int, default=128, show_default=True, help="How many calibration images to use.")
@click.option("--eval", "eval_ref", default=None, metavar="DIR_OR_JSON", help="COCO set to report mAP before/after pruning and after recovery ('none' to skip). Default: the demo's, for --model demo.")
@click.option("--eval-images", type=int, default=100, show_default=True, help="Evaluate on the first N images (each measurement takes seconds).")
@click.option("--recover-steps", type=int, default=None, help="Distil the pruned model from the original for N steps.")
@click.option("--recover-seconds", "--recover-time", "recover_time", type=float, default=None, metavar="SECONDS", help="...or for this long (whichever ends first; as in edgekit build).")
@click.option("--recover-lr", type=float, default=1e-3, show_default=True, help="Distillation learning rate.")
@click.option("--device", type=click.Choice(DEVICE_CHOICES), default="auto", show_default=True, help="Where recovery trains: auto is CUDA when torch sees a GPU, else the CPU.")
@click.option("--out", default="pruned", show_default=True, metavar="DIR", help="Output folder: model.pt, prune_report.json, prune_channels.png.")
@click.option("--allow-unaligned", is_flag=True, help="Write the result even if some channel counts are not aligned.")
@click.option("--layers/--no-layers", default=True, show_default=True, help="Print the per-layer table.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON instead of tables.")
def prune(**kw: Any) -> None:
    """Prune a model's channels (structured, dependency-aware, aligned to the profile)."""
    from rich.console import Console

    from edgekit.host.model.loading import load_model
    from ..profiles import load_profile
    from ..prune import PruneConfig
    from ..prune.param_errors import reworded
    from ..prune.run import write_pruned

    profile = load_profile(kw["profile"])
    with reworded(PRUNE_FLAGS):
        config = PruneConfig(
            ratio=kw["ratio"],
            target_macs=kw["target_macs"],
            bn_threshold=kw["bn_threshold"],
            alignment=kw["alignment"] if kw["alignment"] is not None else profile.alignment,
            **prune_method_kwargs(kw),
        ).validate()
    if kw["calib_images"] < 1:
        raise EdgekitError("--calib-images must be at least 1", "pass a positive number")
    loaded = load_model(kw["model"], weights=kw["weights"], trust_checkpoint=kw["trust_checkpoint"], code_path=kw["code_path"])
    if loaded.module is None:
        raise EdgekitError("%s is an ONNX model, which edgekit cannot prune" % kw["model"], "prune the PyTorch model, then export it")
    size = _input_size(kw["input_size"]) or loaded.input_size or profile.input_size
    needs_images = config.strategy == "sensitivity" or kw["recover_steps"] is not None or kw["recover_time"] is not None
    calib = None
    if needs_images:
        from edgekit.calibration.images import load_images

        folder, spec = _calibration_source(kw["calib"], loaded.source, size)
        # Kept decoded as uint8 and converted per batch: thousands of images fit.
        calib = load_images(folder, spec, count=kw["calib_images"], what="calibration")
    console = Console(width=max(120, Console().width))
    err = Console(stderr=True)
    for note in loaded.notes:
        err.print("[yellow]note:[/yellow] %s" % note, highlight=False)
    from ..prune.run import prune_and_recover
    from .progress import step_text
    from .prune_report import render_prune_report

    def show(report) -> None:
        if kw["as_json"]:
            data = report.to_dict()
            if accuracy is not None:
                data["accuracy"] = accuracy.to_dict()
            click.echo(json.dumps(data, indent=2))
        else:
            render_prune_report(report, console, layers=kw["layers"])
            if accuracy is not None and accuracy.stages:
                console.print(accuracy.line(), highlight=False)

    def refuse_unless_allowed(result) -> None:
        # Before recovery: a model that fails its checks must not spend the recovery budget first.
        report = result.report
        if not report.ok and not kw["allow_unaligned"]:
            show(report)
            raise EdgekitError(
                "the pruned model failed its checks (%d problem(s); first: %s)" % (len(report.problems), report.problems[0] if report.problems else "unknown"),
                "fix the model or the --ignore list, or pass --allow-unaligned to write it anyway",
            )
        if accuracy is not None and recovering:
            accuracy.measure("pruned", result.model)  # before recovery trains it

    from .prune_accuracy import prune_accuracy

    recovering = kw["recover_steps"] is not None or kw["recover_time"] is not None
    accuracy = prune_accuracy(kw["eval_ref"], kw["eval_images"], loaded, size)
    if accuracy is not None:
        with err.status("evaluating the original model on %d images ..." % accuracy.images):
            accuracy.measure("original", loaded.module)
    with err.status("pruning %s ..." % loaded.source) as status, reworded(PRUNE_FLAGS):

        def on_progress(stage: str, done: int, total: int) -> None:
            status.update("%s %d/%d" % (stage, done, total))

        result = prune_and_recover(
            loaded.module,
            config,
            size,
            calib,
            layout=loaded.output_layout,
            recover_steps=kw["recover_steps"],
            recover_time_s=kw["recover_time"],
            recover_lr=kw["recover_lr"],
            on_progress=on_progress,
            progress=lambda event: status.update(step_text(event)),
            check=refuse_unless_allowed,
            device=kw["device"],
        )
    if accuracy is not None:
        stage = "recovered" if recovering else "pruned"
        with err.status("evaluating the %s model on %d images ..." % (stage, accuracy.images)):
            accuracy.measure(stage, result.model)
    show(result.report)
    for warning in accuracy.warnings(recovering) if accuracy is not None else []:
        err.print("[yellow]warning:[/yellow] %s" % warning, highlight=False)
    info = loaded.info()
    info["input_size"] = list(size)  # the size it was pruned (and its MACs counted) at
    with reworded(PRUNE_FLAGS):
        paths = write_pruned(result, kw["out"], info)
    if accuracy is not None:
        from .prune_accuracy import add_to_report

        add_to_report(paths["json"], accuracy.to_dict())
    err.print(
        "wrote %s, %s, %s  (reload with: --model %s --weights %s)"
        % (_rel(paths["model"]), _rel(paths["json"]), _rel(paths["png"]), loaded.source, _rel(paths["model"])),
        highlight=False,
    )


def _calibration_source(calib: Optional[str], source: str, size: Tuple[int, int]):
    from edgekit.calibration.preprocess import PreprocessSpec

    # Letterbox, pad 114, RGB, /255: YOLO's (and the demo's) preprocessing.
    spec = PreprocessSpec(size=size)
    if calib:
        return calib, spec
    if source in ("demo", "demo-v8"):
        from ..demo import demo_data

        return demo_data().calib_dir, spec
    raise EdgekitError("this step needs unlabelled images (sensitivity strategy or recovery)", "pass --calib DIR with images like the ones the model will see")


def _rel(path: str) -> str:
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel
