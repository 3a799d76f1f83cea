"""The host's results store: ``results/<target>/<bundle>/<timestamp>.json``.

Each file is the agent's result (edgekit.contract.result) plus a ``deploy`` key the
host adds: which target and bundle, how the files got there (sync statistics),
and each variant's size, parameters and MACs from the manifest, so a result
file is enough to draw a report even after the bundle is gone.
"""
import datetime
import json
import os
import tempfile
from typing import Any, Dict, Optional, Tuple

from edgekit.contract.result import ResultRecord

from edgekit.contract.errors import EdgekitError
from .targets import safe_component

DEFAULT_RESULTS_DIR = "results"


def host_timestamp() -> str:
    """The host's clock (boards without an RTC often think it is 1970)."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")[:-4] + "Z"


def _number(*values: Any) -> Optional[float]:
    for value in values:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return value
    return None


def _after(block: Any) -> Any:
    return block.get("after") if isinstance(block, dict) else block


def _before(block: Any) -> Any:
    return block.get("before") if isinstance(block, dict) else None


def variant_facts(manifest: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    """Per variant: precision, model file size, params, MACs and host metrics, as the manifest records them.

    A pruned variant's counts come from its pruning report (``prune.params.after``,
    ``prune.macs.after``); an unpruned one's from ``model`` or, for MACs, from the
    "before" side of any pruned variant's report (the same unpruned network).
    """
    model = manifest.get("model") or {}
    variants = manifest.get("variants", [])
    unpruned_params = _number(model.get("params"), *[_before((v.get("prune") or {}).get("params")) for v in variants])
    unpruned_macs = _number(model.get("macs"), *[_before((v.get("prune") or {}).get("macs")) for v in variants])
    facts = {}
    for v in variants:
        prune = v.get("prune") or {}
        entry = (manifest.get("files") or {}).get(v.get("file"), {})
        facts[v["name"]] = {
            "precision": v.get("precision"),
            "file": v.get("file"),
            "size_bytes": entry.get("size"),
            "params": _number(_after(prune.get("params")), unpruned_params),
            "macs": _number(_after(prune.get("macs")), unpruned_macs),
            "prune_ratio": _number(prune.get("ratio")) or 0.0,
            "host_metrics": v.get("host_metrics"),
        }
    return facts


def save_result(results_dir: str, target_name: str, bundle_name: str, result: Dict[str, Any], deploy: Dict[str, Any]) -> Tuple[str, Dict[str, Any]]:
    """Write the result with its ``deploy`` record (complete temp file, then an exclusive link); returns (path, record)."""
    ResultRecord.from_dict(result, "the agent's result", "the agent returned a malformed result: %s", "deploy an agent built by this edgekit version")
    record = dict(result)
    record["deploy"] = deploy
    folder = os.path.join(results_dir, safe_component(target_name), safe_component(bundle_name))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise EdgekitError("cannot create %s (%s)" % (folder, exc.strerror), "pass a writable --results folder")
    stamp = (deploy.get("host_time") or host_timestamp()).replace(":", "")
    fd, tmp = tempfile.mkstemp(prefix=".result-", suffix=".partial", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(record, f, indent=2)
            f.write("\n")
        path = _publish(tmp, folder, stamp)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path, record


def _publish(tmp: str, folder: str, stamp: str) -> str:
    """Give the complete temp file its final name without ever replacing a result.

    os.link fails when the name exists, so two writers with the same timestamp
    (fleet threads, two edgekit processes) each get their own file; an
    exists-check followed by a rename would let the second overwrite the first.
    """
    n = 1
    while True:
        path = os.path.join(folder, "%s.json" % stamp if n == 1 else "%s-%d.json" % (stamp, n))
        try:
            os.link(tmp, path)
            return path
        except FileExistsError:
            n += 1
        except OSError:
            # No hard links on this filesystem: reserve the name exclusively, then fill it.
            try:
                os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
            except FileExistsError:
                n += 1
                continue
            os.replace(tmp, path)
            return path
