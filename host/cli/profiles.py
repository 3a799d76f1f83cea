"""`edgekit profiles list|show`."""
import json

import click

from ..profiles import builtin_names, load_profile


@click.group()
def profiles() -> None:
    """Target profiles (built-in names, or a path to your own .toml)."""


@profiles.command("list")
def list_cmd() -> None:
    """List the built-in profiles."""
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, header_style="bold")
    for col in ("name", "runtime", "variants", "align", "opset", "description"):
        table.add_column(col)
    for name in builtin_names():
        p = load_profile(name)
        table.add_row(p.name, p.runtime, ",".join(p.variants), str(p.alignment), str(p.opset), p.description)
    Console(width=160).print(table)


@profiles.command("show")
@click.argument("profile")
@click.option("--json", "as_json", is_flag=True, help="Print the resolved profile as JSON.")
def show_cmd(profile: str, as_json: bool) -> None:
    """Show the resolved PROFILE (a built-in name or a path to a .toml file)."""
    p = load_profile(profile)
    data = p.to_dict()
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=False))
        return
    for key, value in data.items():
        if isinstance(value, dict):
            click.echo("[%s]" % key)
            for sub, subvalue in value.items():
                click.echo("  %-22s %s" % (sub, json.dumps(subvalue)))
        else:
            click.echo("%-24s %s" % (key, json.dumps(value)))
