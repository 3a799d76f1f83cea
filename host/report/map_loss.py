"""Accuracy a build variant lost: flag the ones that lost too much, with the likely cause.

Each variant's host mAP (manifest ``host_metrics``) is compared with the
unpruned fp32 variant of the same bundle. More than ``MAX_LOSS_POINTS`` mAP
points lost is flagged: in the build's closing table (red) and in the
manifest's ``build.warnings``. The cause is read from the variant: pruned
without recovery, pruned with a short recovery, or quantization (its
same-ratio fp32 sibling kept its accuracy). A pruned variant whose mAP is
about 0 without recovery gets its own, blunter warning.
"""
from typing import Any, Dict, List, Optional, Sequence

# mAP@0.5:0.95 points (x100) a variant may lose against the unpruned fp32 before it is flagged.
MAX_LOSS_POINTS = 10.0
# Below this mAP a detector finds (almost) nothing.
NEAR_ZERO_MAP = 0.01


def _map(variant: Dict[str, Any]) -> Optional[float]:
    metrics = variant.get("host_metrics")
    value = metrics.get("map") if isinstance(metrics, dict) else None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _ratio(variant: Dict[str, Any]) -> float:
    block = variant.get("prune")
    ratio = block.get("ratio") if isinstance(block, dict) else None
    return float(ratio) if isinstance(ratio, (int, float)) else 0.0


def _recovery(variant: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    block = variant.get("prune")
    recovery = block.get("recovery") if isinstance(block, dict) else None
    return recovery if isinstance(recovery, dict) else None


def _recovery_text(recovery: Dict[str, Any]) -> str:
    bits = []
    if isinstance(recovery.get("steps"), int):
        bits.append("%d steps" % recovery["steps"])
    if isinstance(recovery.get("seconds"), (int, float)):
        bits.append("%.0f s" % recovery["seconds"])
    return ", ".join(bits) or "a short run"


def _reference(variants: Sequence[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    for v in variants:
        if v.get("precision") == "fp32" and _ratio(v) == 0.0 and _map(v) is not None:
            return v
    return None


def loss_flags(variants: Sequence[Dict[str, Any]]) -> Dict[str, str]:
    """{variant name: warning} for each variant that lost too much (empty when none did, or no reference)."""
    ref = _reference(variants)
    if ref is None:
        return {}
    ref_map = _map(ref)
    assert ref_map is not None
    flags: Dict[str, str] = {}
    for v in variants:
        value = _map(v)
        if v is ref or value is None:
            continue
        ratio, recovery = _ratio(v), _recovery(v)
        name = v.get("name")
        if ratio > 0 and recovery is None and value < NEAR_ZERO_MAP:
            flags[name] = (
                "%s has host mAP %.3f (the unpruned %s: %.3f): pruned at %g without recovery, it detects almost nothing; "
                "rebuild with --recover-seconds 300 (or --recover-steps)" % (name, value, ref.get("name"), ref_map, ratio)
            )
            continue
        points = (ref_map - value) * 100.0
        if points <= MAX_LOSS_POINTS:
            continue
        if ratio > 0:
            sibling = next((s for s in variants if s.get("precision") == "fp32" and _ratio(s) == ratio and _map(s) is not None), None)
            sibling_points = (ref_map - (_map(sibling) or 0.0)) * 100.0 if sibling is not None else points
            if sibling is not None and sibling is not v and sibling_points <= MAX_LOSS_POINTS:
                cause = "likely cause: %s quantization (the pruned fp32 %s loses only %.1f points); try --calib-method entropy or more --calib-images" % (
                    v.get("precision"), sibling.get("name"), sibling_points)
            elif recovery is None:
                cause = "likely cause: pruned at %g without recovery; rebuild with --recover-seconds 300 (or --recover-steps)" % ratio
            else:
                cause = "likely cause: recovery too short (%s); give it longer with --recover-seconds or --recover-steps, or prune less" % _recovery_text(recovery)
        else:
            cause = "likely cause: %s quantization; try --calib-method entropy, more --calib-images or --snr-target (mixed precision)" % v.get("precision")
        flags[name] = "%s loses %.1f mAP points against the unpruned %s (%.3f -> %.3f); %s" % (name, points, ref.get("name"), ref_map, value, cause)
    return flags


def flagged_names(variants: Sequence[Dict[str, Any]]) -> List[str]:
    return list(loss_flags(variants))
