"""Find and read result files (``results/<target>/<bundle>/<timestamp>.json``)."""
import dataclasses
import json
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

from edgekit.contract.result import ResultRecord

from edgekit.contract.errors import EdgekitError

DEFAULT_RESULTS = "results"


@dataclasses.dataclass(frozen=True)
class LoadedResult:
    path: str
    target: str
    bundle: str
    data: Dict[str, Any]  # the stored JSON, with the host's ``deploy`` record
    record: Optional[ResultRecord] = dataclasses.field(default=None, compare=False)  # the same, validated and typed

    @property
    def when(self) -> str:
        deploy = self.data.get("deploy") or {}
        return str(deploy.get("host_time") or self.data.get("finished") or self.data.get("started") or os.path.basename(self.path))


def find_result_files(paths: Sequence[str]) -> List[str]:
    """Every .json under the given files and folders (default: ./results)."""
    paths = list(paths) or [DEFAULT_RESULTS]
    found: List[str] = []
    for path in paths:
        if os.path.isfile(path):
            found.append(path)
        elif os.path.isdir(path):
            for root, dirs, files in os.walk(path):
                dirs.sort()
                found.extend(os.path.join(root, name) for name in sorted(files) if name.endswith(".json") and not name.startswith("."))
        else:
            raise EdgekitError("%s does not exist" % path, "pass result files or folders written by edgekit deploy (default: results/)")
    return found


def _identity(path: str, data: Dict[str, Any]) -> Tuple[str, str]:
    """(target, bundle) of a result: the deploy record's, else the agent's own fields, else the store's layout."""
    deploy = data.get("deploy") or {}
    parts = os.path.normpath(os.path.abspath(path)).split(os.sep)
    target = deploy.get("target") or (data.get("device") or {}).get("hostname") or (parts[-3] if len(parts) >= 3 else "?")
    bundle = deploy.get("bundle") or (data.get("bundle") or {}).get("name") or (parts[-2] if len(parts) >= 2 else "?")
    return str(target), str(bundle)


def load_results(paths: Sequence[str], latest_only: bool = True) -> List[LoadedResult]:
    """Read and check result files; by default only the newest per (target, bundle)."""
    loaded: List[LoadedResult] = []
    for path in find_result_files(paths):
        try:
            with open(path, "r", encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError) as exc:
            raise EdgekitError("cannot read result %s (%s)" % (path, exc), "remove the damaged file or pass other results")
        record = ResultRecord.from_dict(data, path, path.replace("%", "%%") + " is not an edgekit result: %s", "pass files written by edgekit deploy or edgekit-agent --out")
        target, bundle = _identity(path, data)
        loaded.append(LoadedResult(path, target, bundle, data, record))
    if not loaded:
        raise EdgekitError("no result files found in %s" % ", ".join(paths or [DEFAULT_RESULTS]), "run edgekit deploy first, or pass result files")
    if latest_only:
        newest: Dict[Any, LoadedResult] = {}
        for item in loaded:
            key = (item.target, item.bundle)
            if key not in newest or item.when > newest[key].when:
                newest[key] = item
        loaded = [r for r in loaded if newest[(r.target, r.bundle)] is r]
    return loaded
