"""`edgekit agent pyz`: write the board agent as one zipapp file."""
import click

from edgekit.contract.manifest import sha256_file


@click.group()
def agent() -> None:
    """The agent that runs on the board (edgekit-agent)."""


@agent.command("pyz")
@click.option("--out", "out", default="edgekit-agent.pyz", show_default=True, type=click.Path(dir_okay=False), help="Where to write the zipapp.")
def pyz(out: str) -> None:
    """Write edgekit-agent.pyz: copy it to a board and run `python3 edgekit-agent.pyz run BUNDLE`."""
    from ..agent_pyz import build_agent_pyz

    path = build_agent_pyz(out)
    click.echo("%s  %s" % (sha256_file(path), path))
