"""`edgekit deploy`: bundle to boards (or local), measure there, results home."""
import json
import os
import sys
from typing import List, Optional, Tuple

import click

from ..deploy.fleet import DEFAULT_JOBS
from ..deploy.pipeline import DEFAULT_REMOTE_DIR, DeployOptions, DeployOutcome
from ..deploy.results import DEFAULT_RESULTS_DIR
from ..deploy.ssh import SSHOptions
from edgekit.contract.agent_command import AgentCall
from edgekit.contract.errors import EdgekitError


@click.command("deploy")
@click.argument("targets", nargs=-1)
@click.option("--bundle", "bundle_dir", type=click.Path(), help="Bundle folder (default: the newest under bundles/).")
@click.option("--inventory", type=click.Path(), help="Targets from a file: a YAML list or an Ansible INI inventory.")
@click.option("--group", help="Only this group of an Ansible inventory.")
@click.option("-i", "--identity", "identities", multiple=True, type=click.Path(), help="Private key to log in with (repeatable).")
@click.option("--ask-password", is_flag=True, help="Prompt once for an SSH password (freshly flashed boards).")
@click.option("--known-hosts", type=click.Path(dir_okay=False), help="known_hosts file (default ~/.ssh/known_hosts).")
@click.option("--accept-new-host-key", is_flag=True, help="Trust and record the host key of a board seen for the first time (a changed key is still refused).")
@click.option("--ssh-config", type=click.Path(dir_okay=False), help="SSH config for aliases (default ~/.ssh/config).")
@click.option("--no-ssh-agent", is_flag=True, help="Do not use keys from ssh-agent.")
@click.option("--connect-timeout", type=click.FloatRange(0.1), default=10.0, show_default=True, help="Seconds to wait for a board to answer.")
@click.option("--idle-timeout", type=click.FloatRange(0.1), default=60.0, show_default=True, help="Seconds of silence before a transfer or command is given up.")
@click.option("--timeout", "run_timeout", type=click.FloatRange(1), default=3600.0, show_default=True, help="Seconds the agent may run; then it is stopped.")
@click.option("--remote-dir", default=DEFAULT_REMOTE_DIR, show_default=True, help="Where agent, bundles and engines live on the board.")
@click.option("--python", "python", help="Interpreter on the target (default python3; this one for 'local').")
@click.option("--results", "results_dir", default=DEFAULT_RESULTS_DIR, show_default=True, type=click.Path(file_okay=False), help="Where results are stored.")
@click.option("-j", "--jobs", type=click.IntRange(1, 256), default=DEFAULT_JOBS, show_default=True, help="Targets worked on at once.")
@click.option("--sync-only", is_flag=True, help="Preflight, sync and doctor; do not run the agent.")
@click.option("--skip-doctor", is_flag=True, help="Do not ask the agent's doctor first.")
@click.option("--rehash", is_flag=True, help="Hash every file already on the board again, instead of believing its stat cache for files unchanged since.")
@click.option("--agent", "agent_file", type=click.Path(dir_okay=False), help="A prebuilt edgekit-agent.pyz (default: built from this edgekit).")
@click.option("--variant", "variants", multiple=True, help="Only this variant (repeatable).")
@click.option("--backend", type=click.Choice(["auto", "tensorrt", "onnxruntime"]), help="Agent backend (default: the profile's).")
@click.option("--warmup", type=click.IntRange(0), help="Agent warm-up iterations.")
@click.option("--iterations", type=click.IntRange(1), help="Agent timed iterations.")
@click.option("--max-drift", type=click.FloatRange(0), help="Accuracy gate: largest mAP drift from the host's allowed.")
@click.option("--max-images", type=click.IntRange(1), help="Evaluate on the first N images only (no drift gate).")
@click.option("--batch", "batch", default=None, metavar="LIST", help="Also time batches of these sizes, e.g. 1,4,8 (result key 'throughput'; sizes > 1 need a build with --dynamic-batch).")
@click.option("--profile-layers", is_flag=True, help="After each variant's timed loop, time every layer with the runtime's profiler (result key 'layers').")
@click.option("--json", "as_json", is_flag=True, help="Print the outcomes as JSON on stdout.")
def deploy(
    targets: Tuple[str, ...],
    bundle_dir: Optional[str],
    inventory: Optional[str],
    group: Optional[str],
    identities: Tuple[str, ...],
    ask_password: bool,
    known_hosts: Optional[str],
    accept_new_host_key: bool,
    ssh_config: Optional[str],
    no_ssh_agent: bool,
    connect_timeout: float,
    idle_timeout: float,
    run_timeout: float,
    remote_dir: str,
    python: Optional[str],
    results_dir: str,
    jobs: int,
    sync_only: bool,
    skip_doctor: bool,
    rehash: bool,
    agent_file: Optional[str],
    variants: Tuple[str, ...],
    backend: Optional[str],
    warmup: Optional[int],
    iterations: Optional[int],
    max_drift: Optional[float],
    max_images: Optional[int],
    profile_layers: bool,
    batch: Optional[str],
    as_json: bool,
) -> None:
    """Deploy a bundle to TARGETS and measure it there.

    TARGETS are user@host[:port], aliases from ~/.ssh/config, or 'local' (the
    agent in a subprocess here). Several targets (or --inventory) run in parallel.
    Results go to results/<target>/<bundle>/<time>.json and are summarised.
    Exit status: 0 all good; 1 a target ran but a variant failed or drifted;
    2 a target could not be deployed to.
    """
    from .deploy_display import LiveDisplay
    from ..deploy.inventory import load_inventory
    from ..deploy.service import deploy as run_deploy
    from ..deploy.targets import parse_target

    resolved = [parse_target(spec, ssh_config=ssh_config) for spec in targets]
    if inventory:
        resolved += load_inventory(inventory, group=group, ssh_config=ssh_config)
    elif group:
        raise EdgekitError("--group needs --inventory", "pass the inventory file that defines the group")
    if not resolved:
        raise EdgekitError("no target given", "name one (user@host, an SSH config alias, or local) or pass --inventory")
    for key in identities:
        if not os.path.isfile(key):
            raise EdgekitError("identity file %s does not exist" % key, "pass an existing private key with -i")
    password = None
    if ask_password and any(not t.is_local for t in resolved):
        password = click.prompt("SSH password", hide_input=True, err=True)
    ssh_options = SSHOptions(
        known_hosts=known_hosts,
        accept_new_host_key=accept_new_host_key,
        identity_files=tuple(os.path.abspath(k) for k in identities),
        password=password,
        use_agent=not no_ssh_agent,
        connect_timeout=connect_timeout,
        idle_timeout=idle_timeout,
    )
    options = DeployOptions(
        remote_dir=remote_dir,
        python=python,
        results_dir=results_dir,
        run=not sync_only,
        doctor=not skip_doctor,
        rehash=rehash,
        agent=AgentCall(variants, backend, warmup, iterations, max_drift, max_images, profile_layers=profile_layers, batch=_batch_sizes(batch)),
        run_timeout=run_timeout,
    )
    if not bundle_dir:
        from ..deploy.service import DEFAULT_BUNDLES_DIR, find_latest_bundle

        # Name the choice: "the newest" is a guess the user should see before it runs.
        bundle_dir = find_latest_bundle()
        click.echo("using %s (newest under %s/; pass --bundle to choose)" % (bundle_dir, DEFAULT_BUNDLES_DIR), err=True)
    with LiveDisplay() as display:
        outcomes = run_deploy(resolved, bundle_dir, ssh_options, options, progress=display, jobs=jobs, agent=agent_file)
    _summarise(outcomes, as_json)
    failed_setup = [o for o in outcomes if not o.ok and o.result is None]
    failed_runs = [o for o in outcomes if not o.ok and o.result is not None]
    for o in failed_setup + failed_runs:
        message = o.error or "failed"
        click.echo("error: %s" % (message if o.target.name in message else "%s: %s" % (o.target.name, message)), err=True)
    # sys.exit, not click's Exit: the CLI runs click with standalone_mode=False,
    # where an Exit becomes a return value and the status would be lost.
    if failed_setup:
        sys.exit(2)
    if failed_runs:
        sys.exit(1)


def _summarise(outcomes: List[DeployOutcome], as_json: bool) -> None:
    from rich.console import Console

    from .deploy_display import sync_summary
    from ..report.load import LoadedResult
    from ..report.table import build_rows, rich_table

    if as_json:
        click.echo(json.dumps([_outcome_dict(o) for o in outcomes], indent=2))
        return
    plain = Console()
    # Not a terminal (a log, a pipe): wide enough that no column is cut.
    console = plain if plain.is_terminal else Console(width=220)
    for o in outcomes:
        if o.sync is not None:
            console.print("%s: sync: %s" % (o.target.name, sync_summary(o.sync.to_dict())), highlight=False, soft_wrap=True)
    loaded = [
        LoadedResult(o.result_path or "", o.target.name, (o.result.get("deploy") or {}).get("bundle", ""), o.result)
        for o in outcomes
        if o.result is not None
    ]
    if loaded:
        # On a terminal: the columns that fit its width, whole; in a log: all of them.
        console.print(rich_table(build_rows(loaded), summary=True, width=console.width if plain.is_terminal else None))
        for o in outcomes:
            if o.result_path:
                console.print("%s: result saved to %s" % (o.target.name, o.result_path), highlight=False, soft_wrap=True)


def _outcome_dict(o: DeployOutcome) -> dict:
    return {
        "target": o.target.name,
        "address": o.target.address,
        "ok": o.ok,
        "error": o.error,
        "stage": o.stage,
        "result_path": o.result_path,
        "sync": o.sync.to_dict() if o.sync else None,
        "seconds": o.seconds,
    }


def _batch_sizes(text: Optional[str]) -> Optional[List[int]]:
    """--batch parsed as the agent parses it (edgekit.contract.agent_command.batch_sizes)."""
    import argparse

    from edgekit.contract.agent_command import batch_sizes

    if not text:
        return None
    try:
        return batch_sizes(text)
    except argparse.ArgumentTypeError as exc:
        raise EdgekitError("--batch %s: %s" % (text, exc), "pass batch sizes 1..1024, comma-separated, e.g. --batch 1,4,8")
