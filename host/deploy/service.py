"""The deploy as one library call (what ``edgekit deploy`` runs)."""
import os
import shutil
import tempfile
import threading
from typing import List, Optional, Sequence

from edgekit.contract.manifest import MANIFEST_NAME

from edgekit.contract.errors import EdgekitError
from .agent import build_agent
from edgekit.host.progress import Callback

from .events import DeployReporter
from .fleet import DEFAULT_JOBS, run_fleet
from .pipeline import DeployOptions, DeployOutcome, deploy_target
from .ssh import SSHOptions
from .sync import load_local_bundle
from .targets import Target

DEFAULT_BUNDLES_DIR = "bundles"


def find_latest_bundle(search_dir: str = DEFAULT_BUNDLES_DIR) -> str:
    """The most recently written bundle folder under ``search_dir`` (what edgekit build writes)."""
    candidates = []
    if os.path.isdir(search_dir):
        for name in os.listdir(search_dir):
            manifest = os.path.join(search_dir, name, MANIFEST_NAME)
            if not name.startswith(".") and os.path.isfile(manifest):
                candidates.append((os.path.getmtime(manifest), os.path.join(search_dir, name)))
    if not candidates:
        raise EdgekitError("no bundle found under %s/" % search_dir, "build one with edgekit build, or pass --bundle DIR")
    return max(candidates)[1]


def deploy(
    targets: Sequence[Target],
    bundle_dir: Optional[str] = None,
    ssh_options: Optional[SSHOptions] = None,
    options: Optional[DeployOptions] = None,
    progress: Optional[Callback] = None,
    jobs: int = DEFAULT_JOBS,
    agent: Optional[str] = None,
    cancel: Optional[threading.Event] = None,
) -> List[DeployOutcome]:
    """Deploy one bundle to every target (in parallel); one outcome per target, in order.

    ``agent`` is a prebuilt edgekit-agent.pyz; by default one is built from the
    installed edgekit into a temporary folder.
    """
    if not targets:
        raise EdgekitError("no target given", "name one (user@host, an SSH config alias, or local) or pass --inventory")
    bundle = load_local_bundle(bundle_dir or find_latest_bundle())
    ssh_options = ssh_options or SSHOptions()
    options = options or DeployOptions()
    events = DeployReporter(progress)
    tmp = None
    try:
        if agent is None:
            tmp = tempfile.mkdtemp(prefix="edgekit-agent-")
            agent_path, agent_sha = build_agent(tmp)
        else:
            if not os.path.isfile(agent):
                raise EdgekitError("agent %s does not exist" % agent, "pass a file built by edgekit, or leave --agent out")
            from edgekit.contract.manifest import sha256_file

            agent_path, agent_sha = os.path.abspath(agent), sha256_file(agent)

        def work(target: Target, cancel_event: threading.Event) -> DeployOutcome:
            return deploy_target(target, bundle, agent_path, agent_sha, ssh_options, options, events, cancel_event)

        return run_fleet(targets, work, jobs=jobs, cancel=cancel)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
