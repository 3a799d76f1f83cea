"""Per-class AP and precision-recall curves from stored results (``runs[].accuracy.curves``).

The agent computes them with pycocotools (edgekit.device.coco_eval.pr_curves).
A bundle's variant measured on several targets has near-identical curves (the
drift gate keeps each within --max-drift of the host's), so each bundle/variant
is drawn once, from the first target that has it, and ``spread`` says how far
the other targets' per-class APs are from it.
"""
import dataclasses
from typing import Any, Dict, List, Optional, Sequence

from .load import LoadedResult


@dataclasses.dataclass
class VariantCurves:
    bundle: str
    variant: str
    target: str  # where these curves come from
    map: Optional[float]
    map50: Optional[float]
    recall: List[float]
    precision: Dict[str, List[Optional[float]]]  # "map" (IoU 0.50:0.95), "map50"
    per_class: List[Dict[str, Any]]  # {id, name, ap, ap50, gt}
    targets: List[str]  # every target that measured this bundle/variant
    spread: Optional[float] = None  # largest |per-class AP difference| to another target

    @property
    def label(self) -> str:
        return "%s/%s" % (self.bundle, self.variant)


def _curves_of(run: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    acc = run.get("accuracy") or {}
    curves = acc.get("curves")
    if run.get("status") != "ok" or not isinstance(curves, dict):
        return None
    if not isinstance(curves.get("precision"), dict) or not isinstance(curves.get("per_class"), list):
        return None
    return curves


def collect_curves(results: Sequence[LoadedResult]) -> List[VariantCurves]:
    """One VariantCurves per bundle/variant with curves, in report order."""
    found: Dict[Any, VariantCurves] = {}
    for result in results:
        for run in result.data.get("runs") or []:
            curves = _curves_of(run)
            if curves is None:
                continue
            key = (result.bundle, str(run.get("variant")))
            stats = (run.get("accuracy") or {}).get("stats") or {}
            if key not in found:
                found[key] = VariantCurves(
                    bundle=result.bundle,
                    variant=str(run.get("variant")),
                    target=result.target,
                    map=stats.get("map"),
                    map50=stats.get("map50"),
                    recall=list(curves.get("recall") or []),
                    precision=dict(curves["precision"]),
                    per_class=list(curves["per_class"]),
                    targets=[result.target],
                )
                continue
            first = found[key]
            if result.target not in first.targets:
                first.targets.append(result.target)
            mine = {c.get("id"): c.get("ap") for c in first.per_class}
            for c in curves["per_class"]:
                a, b = mine.get(c.get("id")), c.get("ap")
                if isinstance(a, (int, float)) and isinstance(b, (int, float)):
                    diff = abs(float(a) - float(b))
                    first.spread = diff if first.spread is None else max(first.spread, diff)
    return list(found.values())


def class_names(curves: Sequence[VariantCurves]) -> List[str]:
    """Every class with ground truth in any variant, in the first variant's order."""
    names: List[str] = []
    for vc in curves:
        for c in vc.per_class:
            if c.get("ap") is not None and str(c.get("name")) not in names:
                names.append(str(c.get("name")))
    return names
