"""`edgekit demo data|eval|train`: the built-in demo's data, accuracy and weights."""
import json
from typing import Optional

import click


@click.group()
def demo() -> None:
    """The built-in demo detector and its generated data set (no download)."""


@demo.command("data")
@click.option("--out", "out", default=None, metavar="DIR", help="Folder to generate into (default: $EDGEKIT_CACHE or ~/.cache/edgekit).")
@click.option("--train", is_flag=True, help="Also generate the training split (about a minute, once).")
@click.option("--json", "as_json", is_flag=True, help="Print the paths as JSON.")
def data_cmd(out: Optional[str], train: bool, as_json: bool) -> None:
    """Generate the demo data if needed and print where it is."""
    from edgekit.host.demo import demo_data

    data = demo_data(out, train=train)
    if as_json:
        click.echo(json.dumps(data._asdict(), indent=2))
        return
    for key, value in data._asdict().items():
        click.echo("%-18s %s" % (key, value if value is not None else "(not generated; pass --train)"))


_MODEL = click.option("--model", "model_name", type=click.Choice(["demo", "demo-v8"]), default="demo", show_default=True, help="Which demo detector.")


@demo.command("eval")
@_MODEL
@click.option("--weights", default=None, metavar="FILE", help="A state dict to evaluate instead of the shipped weights.")
@click.option("--data-dir", default=None, metavar="DIR", help="Where the demo data is (or goes).")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Evaluate the first N validation images only.")
@click.option("--json", "as_json", is_flag=True, help="Print the 12 COCO stats as JSON.")
def eval_cmd(model_name: str, weights: Optional[str], data_dir: Optional[str], limit: Optional[int], as_json: bool) -> None:
    """COCO mAP of the demo detector on its validation split (PyTorch, CPU)."""
    from edgekit.host.demo import demo_data
    from edgekit.host.demo import evaluate_torch
    from edgekit.host.demo import load_demo_model

    model = load_demo_model(weights=weights, name=model_name)
    stats = evaluate_torch(model, demo_data(data_dir), limit=limit)
    if as_json:
        click.echo(json.dumps(stats, indent=2))
        return
    click.echo("mAP@0.5:0.95 = %.3f, mAP@0.5 = %.3f" % (stats["map"], stats["map50"]))


@demo.command("train")
@_MODEL
@click.option("--out", default=None, metavar="FILE", help="Where to write the weights (default: the shipped file).")
@click.option("--epochs", type=click.FloatRange(min=0.01), default=None, help="Passes over the training split.")
@click.option("--data-dir", default=None, metavar="DIR", help="Where the demo data is (or goes).")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True, help="Torch threads; 1 is fastest on a shared CPU.")
def train_cmd(model_name: str, out: Optional[str], epochs: Optional[float], data_dir: Optional[str], threads: int) -> None:
    """Train the demo detector from scratch on CPU (reproducible; takes a while)."""
    from edgekit.host.demo import DEMO_MODELS
    from edgekit.host.demo.train import DEFAULT_EPOCHS, DEFAULT_EPOCHS_V8, train_demo

    default_epochs = DEFAULT_EPOCHS_V8 if model_name == "demo-v8" else DEFAULT_EPOCHS
    train_demo(out or DEMO_MODELS[model_name][1], epochs if epochs is not None else default_epochs, data_dir, threads=threads, log=click.echo, model_name=model_name)
