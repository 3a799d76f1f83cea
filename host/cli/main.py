"""Entry point of the `edgekit` command.

Commands stay thin: they parse options, call a library function and print. User
mistakes arrive as EdgekitError and become one line ``error: ...`` with exit
code 2; ``--debug`` (or EDGEKIT_DEBUG=1) shows the traceback instead.
"""
import os
import sys
import traceback
from typing import List, Optional

import click

from edgekit.contract._version import __version__

from edgekit.contract.errors import EdgekitError

_state = {"debug": os.environ.get("EDGEKIT_DEBUG", "") not in ("", "0")}


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "--version", prog_name="edgekit")
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
def cli(debug: bool) -> None:
    """Prune, export, calibrate and deploy vision models to edge devices, and measure them there."""
    if debug:
        _state["debug"] = True


def _register() -> None:
    # Each command module owns one command group; only working commands are listed.
    from . import profiles

    cli.add_command(profiles.profiles)
    from edgekit.host.cli.demo import demo; cli.add_command(demo)  # noqa: E702 - one line per command group
    from .deploy import deploy; cli.add_command(deploy)  # noqa: E702
    from .report import report; cli.add_command(report)  # noqa: E702
    from .build import build; cli.add_command(build)  # noqa: E702 - one line per command group
    from .prune import prune; cli.add_command(prune)  # noqa: E702 - one line per command group
    from .agent import agent; cli.add_command(agent)  # noqa: E702 - one line per command group


def main(argv: Optional[List[str]] = None) -> None:
    try:
        _register()  # imports every command's modules: a Ctrl-C lands here too
    except KeyboardInterrupt:
        click.echo("error: interrupted", err=True)
        sys.exit(130)
    if argv is None:
        argv = sys.argv[1:]
    if "--debug" in argv:
        # Honour --debug even when the failure happens before click parses it.
        _state["debug"] = True
    try:
        cli.main(args=argv, prog_name="edgekit", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("error: interrupted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except EdgekitError as exc:
        if _state["debug"]:
            traceback.print_exc()
        click.echo("error: %s" % exc.one_line(), err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("error: interrupted", err=True)
        sys.exit(130)
    except Exception as exc:  # a bug: say so in one line, traceback on request
        if _state["debug"]:
            traceback.print_exc()
        message = " ".join(("%s: %s" % (type(exc).__name__, exc)).split())
        click.echo("error: internal error (%s); rerun with --debug and report it" % message, err=True)
        sys.exit(1)
    sys.exit(0)


if __name__ == "__main__":  # pragma: no cover
    main()
