"""PNG plots with matplotlib (Agg, no display needed).

* frontier: p50 latency (x) against mAP@0.5:0.95 (y), one colour per bundle, one
  marker per target, p90/p99 whiskers, the Pareto front of each target named in the legend.
* stages: per-image preprocess / inference / postprocess means as stacked bars,
  one bar per run: shows when NMS or decoding, not the network, is the cost.
"""
import os
from typing import Any, List, Optional, Sequence

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


MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
LINESTYLES = ("--", ":", "-.", (0, (5, 1, 1, 1)))
# Where a label may go, in points from its point, tried in order until one overlaps nothing.
OFFSETS = ((6, 5), (6, -12), (-6, 5), (-6, -12), (6, 16), (6, -23), (-6, 16), (-6, -23), (14, -3), (-14, -3))


def _boxes_overlap(a: tuple, b: tuple) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _place_labels(ax, fig, points: Sequence[tuple], fontsize: float) -> None:
    """Annotate each (x, y, text) where its box overlaps no other label and no marker.

    Boxes are estimated in pixels (0.6 em per character): good enough to keep
    labels apart without a layout library.
    """
    fig.canvas.draw()  # fixes the axis limits, so data -> pixel is final
    px = fig.dpi / 72.0
    to_px = ax.transData.transform
    marker_r = 5 * px
    taken = [(x - marker_r, y - marker_r, x + marker_r, y + marker_r) for x, y in (to_px((p[0], p[1])) for p in points)]
    for x, y, text in sorted(points, key=lambda p: (-p[1], p[0])):
        cx, cy = to_px((x, y))
        w, h = len(text) * fontsize * 0.6 * px, fontsize * 1.2 * px
        chosen = OFFSETS[0]
        for dx, dy in OFFSETS:
            left = cx + dx * px if dx >= 0 else cx + dx * px - w
            box = (left, cy + dy * px, left + w, cy + dy * px + h)
            if not any(_boxes_overlap(box, t) for t in taken):
                chosen = (dx, dy)
                taken.append(box)
                break
        ax.annotate(text, (x, y), textcoords="offset points", xytext=chosen, fontsize=fontsize,
                    ha="left" if chosen[0] >= 0 else "right", va="bottom")


def plot_frontier(rows: Sequence[Row], path: str) -> Optional[str]:
    """Latency against mAP; None when no run has both numbers.

    Colour: bundle; marker: target; whiskers: p90 (thick) and p99 (thin) right of
    the p50 point, since latency spread is one-sided; dashed: each target's Pareto front.
    """
    fig = frontier_figure(rows)
    if fig is None:
        return None
    try:
        return _save(fig, path)
    finally:
        _pyplot().close(fig)


def frontier_figure(rows: Sequence[Row]) -> Any:
    """The latency/mAP figure (matplotlib), or None when no run has both numbers."""
    usable = [r for r in rows if r.status == "ok" and r.p50_ms is not None and r.map is not None]
    if not usable:
        return None
    plt = _pyplot()
    from matplotlib.lines import Line2D

    fig, ax = plt.subplots(figsize=(8, 5))
    targets = list(dict.fromkeys(r.target for r in usable))
    bundles = list(dict.fromkeys(r.bundle for r in usable))
    colour = {b: "C%d" % (i % 10) for i, b in enumerate(bundles)}
    marker = {t: MARKERS[i % len(MARKERS)] for i, t in enumerate(targets)}
    for r in usable:
        for high, width in ((r.p99_ms, 1.0), (r.p90_ms, 2.5)):
            if high is not None and high > r.p50_ms:
                ax.plot([r.p50_ms, high], [r.map, r.map], color=colour[r.bundle], linewidth=width, alpha=0.6, zorder=2)
        ax.scatter([r.p50_ms], [r.map], color=colour[r.bundle], marker=marker[r.target], s=40, zorder=3, edgecolors="black", linewidths=0.5)
    handles = [Line2D([], [], color=colour[b], marker="o", linestyle="", label="bundle %s" % b) for b in bundles]
    if len(targets) > 1:
        handles += [Line2D([], [], color="grey", marker=marker[t], linestyle="", label="target %s" % t) for t in targets]
    for i, target in enumerate(targets):
        front = pareto_front([(r.p50_ms, r.map) for r in usable if r.target == target])
        if len(front) > 1:
            style = LINESTYLES[i % len(LINESTYLES)]
            ax.plot([p[0] for p in front], [p[1] for p in front], color="black", linestyle=style, linewidth=1, zorder=1)
            handles.append(Line2D([], [], color="black", linestyle=style, label="Pareto front" + (" (%s)" % target if len(targets) > 1 else "")))
    handles.append(Line2D([], [], color="grey", linewidth=2.5, label="p50 to p90 (thick), p99 (thin)"))
    ax.margins(x=0.15, y=0.12)
    ax.set_xlabel("inference latency p50 (ms), lower is better")
    metric = "top-1" if usable[0].metric == "top1" else "mAP@0.5:0.95"
    ax.set_ylabel("%s, higher is better" % metric)
    ax.set_title("Speed / accuracy per variant")
    ax.grid(True, alpha=0.3)
    ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    # The variant name only: colour and marker already say bundle and target.
    _place_labels(ax, fig, [(r.p50_ms, r.map, r.variant) for r in usable], fontsize=8)
    return fig


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
    # Outside the axes: inside, it hid the tallest bar's total.
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    ax.set_ylim(0, max(bottom) * 1.12 if max(bottom) > 0 else 1.0)
    ax.grid(True, axis="y", alpha=0.3)
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)
