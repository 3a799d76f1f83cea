"""PNG plots with matplotlib (Agg, no display needed).

* frontier: p50 latency (x) against mAP@0.5:0.95 (y), one marker per run, one
  colour per target, the speed/accuracy Pareto front of each target drawn as a line.
* stages: per-image preprocess / inference / postprocess means as stacked bars,
  one bar per run: shows when NMS or decoding, not the network, is the cost.
"""
import os
from typing import List, Optional, Sequence

from edgekit.contract.errors import EdgekitError
from .table import Row


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str) -> str:
    tmp = path + ".partial.png"
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        fig.savefig(tmp, dpi=120, bbox_inches="tight")
        os.replace(tmp, path)
    except OSError as exc:
        raise EdgekitError("cannot write %s (%s)" % (path, exc.strerror), "pass a writable --out folder")
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def pareto_front(points: Sequence[tuple]) -> List[tuple]:
    """(latency, accuracy, ...) points not beaten on both: sorted by latency."""
    front = []
    best = None
    for p in sorted(points, key=lambda p: (p[0], -p[1])):
        if best is None or p[1] > best:
            front.append(p)
            best = p[1]
    return front


def plot_frontier(rows: Sequence[Row], path: str) -> Optional[str]:
    """Latency against mAP; None when no run has both numbers."""
    usable = [r for r in rows if r.status == "ok" and r.p50_ms is not None and r.map is not None]
    if not usable:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    targets = list(dict.fromkeys(r.target for r in usable))
    for i, target in enumerate(targets):
        group = [r for r in usable if r.target == target]
        colour = "C%d" % (i % 10)
        ax.scatter([r.p50_ms for r in group], [r.map for r in group], color=colour, label=target, zorder=3)
        for r in group:
            ax.annotate(r.label if len({g.bundle for g in usable}) > 1 else r.variant, (r.p50_ms, r.map),
                        textcoords="offset points", xytext=(5, 4), fontsize=8)
        front = pareto_front([(r.p50_ms, r.map) for r in group])
        if len(front) > 1:
            ax.plot([p[0] for p in front], [p[1] for p in front], color=colour, linestyle="--", linewidth=1, zorder=2)
    ax.margins(x=0.12, y=0.08)
    ax.set_xlabel("inference latency p50 (ms), lower is better")
    metric = "top-1" if usable[0].metric == "top1" else "mAP@0.5:0.95"
    ax.set_ylabel("%s, higher is better" % metric)
    ax.set_title("Speed / accuracy per variant")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)


def plot_stages(rows: Sequence[Row], path: str) -> Optional[str]:
    """Stacked per-stage latency bars; None when no run measured stages."""
    usable = [r for r in rows if r.status == "ok" and r.infer_ms is not None]
    if not usable:
        return None
    plt = _pyplot()
    many_targets = len({r.target for r in usable}) > 1
    labels = ["%s\n%s" % (r.target, r.label) if many_targets else r.label for r in usable]
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(usable) + 2), 4.5))
    bottom = [0.0] * len(usable)
    for attr, name, colour in (("pre_ms", "preprocess", "C0"), ("infer_ms", "inference", "C1"), ("post_ms", "postprocess", "C2")):
        values = [getattr(r, attr) or 0.0 for r in usable]
        ax.bar(range(len(usable)), values, bottom=bottom, label=name, color=colour)
        bottom = [b + v for b, v in zip(bottom, values)]
    for i, total in enumerate(bottom):
        ax.text(i, total, "%.1f" % total, ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(usable)))
    ax.set_xticklabels(labels, rotation=30 if len(usable) > 4 else 0, ha="right" if len(usable) > 4 else "center", fontsize=8)
    ax.set_ylabel("ms per image (mean)")
    ax.set_title("Where the time goes: per-stage latency")
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)
