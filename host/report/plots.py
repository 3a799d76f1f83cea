"""PNG plots with matplotlib (Agg, no display needed).

* frontier: p50 latency (x) against mAP@0.5:0.95 (y), one colour per bundle, one
  marker per target, p90/p99 whiskers, the Pareto front of each target named in the legend.
* energy_vs_map: mJ per inference (x, total rail) against mAP@0.5:0.95 (y), labelled
  like the frontier; drawn only when some run measured energy (boards with power monitors).
* stages: per-image preprocess / inference / postprocess means as stacked bars,
  one bar per run: shows when NMS or decoding, not the network, is the cost.
* per_class_ap: AP@0.5:0.95 per class (and the mean, mAP), one bar per bundle/variant.
* pr_curves: precision against recall at IoU 0.50:0.95 (mean) and 0.50, one line
  per bundle/variant; both from pycocotools' own arrays (host/report/curves.py).
"""
import os
from typing import Any, Callable, List, Optional, Sequence

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
# Where a label may go, in points from its point, tried in order until one overlaps nothing:
# close by first, then further out (those get a thin leader line back to the point).
OFFSETS = ((6, 5), (6, -12), (-6, 5), (-6, -12), (6, 16), (6, -23), (-6, 16), (-6, -23), (14, -3), (-14, -3),
           (10, 30), (-10, 30), (10, -38), (-10, -38), (30, 8), (-30, 8), (30, -18), (-30, -18), (20, 44), (-20, 44), (20, -52), (-20, -52))
LEADER_FROM = 13  # points: a label further than this from its point gets a leader line


def _boxes_overlap(a: tuple, b: tuple) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _leader_points(start: Any, bb: Any) -> List[tuple]:
    """Points along a leader line from ``start`` (pixels) to the nearest corner region of box ``bb``, its ends left out."""
    ex = min(max(start[0], bb.x0), bb.x1)
    ey = min(max(start[1], bb.y0), bb.y1)
    return [(start[0] + (ex - start[0]) * f / 12.0, start[1] + (ey - start[1]) * f / 12.0) for f in range(2, 11)]


def _place_labels(ax, fig, points: Sequence[tuple], fontsize: float, avoid: Sequence[tuple] = ()) -> None:
    """Annotate each (x, y, text[, colour]) where its box overlaps no other label, no marker and no ``avoid`` segment.

    Boxes are the rendered text's own extents (measured, not estimated), and a
    label must stay inside the axes. ``avoid``: (x0, x1, y) horizontal segments
    in data units (the latency whiskers).
    """
    from matplotlib.text import Text

    fig.canvas.draw()  # fixes the axis limits, so data -> pixel is final
    renderer = fig.canvas.get_renderer()
    px = fig.dpi / 72.0
    to_px = ax.transData.transform
    marker_r = 5 * px
    frame = ax.get_window_extent(renderer)
    taken = [(cx - marker_r, cy - marker_r, cx + marker_r, cy + marker_r) for cx, cy in (to_px((p[0], p[1])) for p in points)]
    for x0, x1, y in avoid:
        (ax0, ay), ax1 = to_px((x0, y)), to_px((x1, y))[0]
        taken.append((ax0, ay - 1.5 * px, ax1, ay + 1.5 * px))
    labels = []  # placed label boxes: a leader line must not cross one
    for point in sorted(points, key=lambda p: (-p[1], p[0])):
        x, y, text = point[:3]
        colour = point[3] if len(point) > 3 else "black"
        placed = None
        for dx, dy in OFFSETS:
            far = abs(dx) > LEADER_FROM or abs(dy) > LEADER_FROM
            ann = ax.annotate(
                text, (x, y), textcoords="offset points", xytext=(dx, dy), fontsize=fontsize, color=colour,
                ha="left" if dx >= 0 else "right", va="bottom",
                arrowprops=dict(arrowstyle="-", color=colour, linewidth=0.6, alpha=0.7, shrinkA=1, shrinkB=4) if far else None,
            )
            # The text's own box: an Annotation's extent would include its leader line.
            ann.update_positions(renderer)
            bb = Text.get_window_extent(ann, renderer)
            box = (bb.x0 - px, bb.y0 - px, bb.x1 + px, bb.y1 + px)
            inside = frame.x0 <= bb.x0 and bb.x1 <= frame.x1 and frame.y0 <= bb.y0 and bb.y1 <= frame.y1
            leader = _leader_points(to_px((x, y)), bb) if far else []
            if inside and not any(_boxes_overlap(box, t) for t in taken) and not any(
                t[0] <= lx <= t[2] and t[1] <= ly <= t[3] for lx, ly in leader for t in labels
            ):
                placed = ann
                taken.append(box)
                labels.append(box)
                break
            ann.remove()
        if placed is None:
            # Nowhere free: the nearest spot, so the label is at least drawn beside its point.
            ax.annotate(text, (x, y), textcoords="offset points", xytext=OFFSETS[0], fontsize=fontsize, color=colour, ha="left", va="bottom")


def _darker(colour: str, factor: float = 0.7) -> tuple:
    from matplotlib.colors import to_rgb

    return tuple(c * factor for c in to_rgb(colour))


def plot_frontier(rows: Sequence[Row], path: str) -> Optional[str]:
    """Latency against mAP; None when no run has both numbers.

    Colour: bundle; marker: target; whiskers: p90 (thick) and p99 (thin) right of
    the p50 point, since latency spread is one-sided; dashed: each target's Pareto front.
    """
    return _plot_and_save(frontier_figure(rows), path)


def frontier_figure(rows: Sequence[Row]) -> Any:
    """The latency/mAP figure (matplotlib), or None when no run has both numbers."""
    return _cost_vs_accuracy(rows, lambda r: r.p50_ms, "inference latency p50 (ms), lower is better", "Speed / accuracy per variant", whiskers=True)


def energy_figure(rows: Sequence[Row]) -> Any:
    """mJ per inference against mAP (matplotlib), or None when no run has both numbers."""
    return _cost_vs_accuracy(rows, lambda r: r.mj_per_inf, "energy per inference (mJ, total rail), lower is better", "Energy / accuracy per variant")


def plot_energy(rows: Sequence[Row], path: str) -> Optional[str]:
    """Energy against mAP; None (no file) when no run measured energy."""
    return _plot_and_save(energy_figure(rows), path)


def _cost_vs_accuracy(rows: Sequence[Row], cost: Callable[[Row], Optional[float]], xlabel: str, title: str, whiskers: bool = False) -> Any:
    """One point per variant, a cost (latency, energy) against mAP, with each target's
    Pareto front; ``whiskers``: the p90/p99 latency spread to the right of each point."""
    usable = [r for r in rows if r.status == "ok" and cost(r) is not None and r.map is not None]
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
        if whiskers:
            for high, width in ((r.p99_ms, 1.0), (r.p90_ms, 2.5)):
                if high is not None and high > r.p50_ms:
                    ax.plot([r.p50_ms, high], [r.map, r.map], color=colour[r.bundle], linewidth=width, alpha=0.6, zorder=2)
        ax.scatter([cost(r)], [r.map], color=colour[r.bundle], marker=marker[r.target], s=40, zorder=3, edgecolors="black", linewidths=0.5)
    handles = [Line2D([], [], color=colour[b], marker="o", linestyle="", label="bundle %s" % b) for b in bundles]
    if len(targets) > 1:
        handles += [Line2D([], [], color="grey", marker=marker[t], linestyle="", label="target %s" % t) for t in targets]
    for i, target in enumerate(targets):
        front = pareto_front([(cost(r), r.map) for r in usable if r.target == target])
        if len(front) > 1:
            style = LINESTYLES[i % len(LINESTYLES)]
            ax.plot([p[0] for p in front], [p[1] for p in front], color="black", linestyle=style, linewidth=1, zorder=1)
            handles.append(Line2D([], [], color="black", linestyle=style, label="Pareto front" + (" (%s)" % target if len(targets) > 1 else "")))
    if whiskers:
        handles.append(Line2D([], [], color="grey", linewidth=2.5, label="p50 to p90 (thick), p99 (thin)"))
    ax.margins(x=0.15, y=0.12)
    ax.set_xlabel(xlabel)
    metric = "top-1" if usable[0].metric == "top1" else "mAP@0.5:0.95"
    ax.set_ylabel("%s, higher is better" % metric)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    # The variant name only: colour and marker already say bundle and target; labels avoid the whiskers.
    avoid = [(r.p50_ms, r.p99_ms, r.map) for r in usable if whiskers and r.p99_ms is not None and r.p99_ms > r.p50_ms]
    # Label text in its bundle's colour (darkened), so a crowded row still says which point is whose.
    _place_labels(ax, fig, [(cost(r), r.map, r.variant, _darker(colour[r.bundle])) for r in usable], fontsize=8, avoid=avoid)
    return fig


def plot_stages(rows: Sequence[Row], path: str) -> Optional[str]:
    """Stacked per-stage latency bars; None when no run measured stages.

    Several targets: bars grouped per target (a gap and the target's name
    between groups), each bar labelled bundle/variant only.
    """
    usable = [r for r in rows if r.status == "ok" and r.infer_ms is not None]
    if not usable:
        return None
    plt = _pyplot()
    targets = list(dict.fromkeys(r.target for r in usable))
    usable = [r for t in targets for r in usable if r.target == t]
    xs, x = [], 0.0
    for i, r in enumerate(usable):
        if i and r.target != usable[i - 1].target:
            x += 0.8  # the gap between target groups
        xs.append(x)
        x += 1.0
    rotate = len(usable) > 4
    fig, ax = plt.subplots(figsize=(min(24.0, max(6.0, 0.62 * x + 2.5)), 4.8 if rotate else 4.5))
    bottom = [0.0] * len(usable)
    for attr, name, colour in (("pre_ms", "preprocess", "C0"), ("infer_ms", "inference", "C1"), ("post_ms", "postprocess", "C2")):
        values = [getattr(r, attr) or 0.0 for r in usable]
        ax.bar(xs, values, bottom=bottom, label=name, color=colour, width=0.8)
        bottom = [b + v for b, v in zip(bottom, values)]
    for xi, total in zip(xs, bottom):
        ax.text(xi, total, "%.1f" % total, ha="center", va="bottom", fontsize=7 if len(usable) > 8 else 8)
    ax.set_xticks(xs)
    ax.set_xticklabels([r.label for r in usable], rotation=35 if rotate else 0, ha="right" if rotate else "center", fontsize=8)
    top = max(bottom) * 1.12 if max(bottom) > 0 else 1.0
    if len(targets) > 1:
        for t in targets:
            group = [xi for xi, r in zip(xs, usable) if r.target == t]
            ax.text((group[0] + group[-1]) / 2.0, top * 0.985, "target %s" % t, ha="center", va="top", fontsize=9, fontweight="bold")
        for i in range(1, len(usable)):
            if usable[i].target != usable[i - 1].target:
                ax.axvline((xs[i] + xs[i - 1]) / 2.0, color="grey", linewidth=0.8, linestyle="--")
        top *= 1.08  # room for the target names above the tallest total
    ax.set_ylabel("ms per image (mean)")
    ax.set_title("Where the time goes: per-stage latency")
    # Outside the axes: inside, it hid the tallest bar's total.
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    ax.set_ylim(0, top)
    ax.set_xlim(xs[0] - 0.7, xs[-1] + 0.7)
    ax.grid(True, axis="y", alpha=0.3)
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)


def _source_note(curves: Sequence[Any]) -> str:
    """Which target the curves come from, and how far the others are (per-class AP)."""
    sources = list(dict.fromkeys(vc.target for vc in curves))
    every = list(dict.fromkeys(t for vc in curves for t in vc.targets))
    note = "measured on %s" % ", ".join(sources)
    others = [t for t in every if t not in sources]
    if others:
        spread = max([vc.spread for vc in curves if vc.spread is not None] or [0.0])
        note += "; %s within %.4f AP per class" % (", ".join(others), spread)
    return note


def _series_colour(i: int) -> str:
    return "C%d" % (i % 10)


def per_class_figure(curves: Sequence[Any]) -> Any:
    """AP@0.5:0.95 per class (best first) plus the mean, one bar per bundle/variant; None without curves.

    Up to 20 classes: vertical bars, classes along x. More (e.g. COCO's 80):
    horizontal bars, one class per row, so every name stays readable.
    """
    from .curves import class_names

    names = class_names(curves)
    if not curves or not names:
        return None
    plt = _pyplot()
    first = {str(c.get("name")): c.get("ap") for c in curves[0].per_class}
    names.sort(key=lambda n: (first.get(n) is None, -(first.get(n) or 0.0)))
    groups = ["mean (mAP)"] + names
    n = len(curves)
    bar = 0.8 / n
    label_values = n <= 4 and len(groups) <= 21
    vertical = len(groups) <= 21
    if vertical:
        fig, ax = plt.subplots(figsize=(min(24.0, max(7.0, 0.22 * len(groups) * max(n, 2) + 2.5)), 4.8))
    else:
        fig, ax = plt.subplots(figsize=(8, min(60.0, max(4.0, 0.14 * len(groups) * max(n, 2) + 1.5))))
    for i, vc in enumerate(curves):
        ap = {str(c.get("name")): c.get("ap") for c in vc.per_class}
        values = [vc.map] + [ap.get(name) for name in names]
        pos = [g - 0.4 + bar * (i + 0.5) for g in range(len(groups))]
        shown = [(p, v) for p, v in zip(pos, values) if v is not None]
        if vertical:
            ax.bar([p for p, _v in shown], [v for _p, v in shown], width=bar * 0.92, color=_series_colour(i), label=vc.label)
        else:
            ax.barh([-p for p, _v in shown], [v for _p, v in shown], height=bar * 0.92, color=_series_colour(i), label=vc.label)
        if label_values:
            for p, v in shown:
                ax.text(p, v + 0.01, "%.3f" % v, ha="center", va="bottom", fontsize=6.5, rotation=90 if n > 1 else 0)
    ticks = list(range(len(groups)))
    if vertical:
        ax.set_xticks(ticks)
        ax.set_xticklabels(groups, rotation=30 if len(groups) > 8 else 0, ha="right" if len(groups) > 8 else "center", fontsize=8)
        ax.get_xticklabels()[0].set_fontweight("bold")
        ax.axvline(0.5, color="grey", linewidth=0.6)
        ax.set_ylim(0, 1.12 if label_values else 1.0)
        ax.set_xlim(-0.6, len(groups) - 0.4)
        ax.set_ylabel("AP@0.5:0.95 (pycocotools), higher is better")
        ax.grid(True, axis="y", alpha=0.3)
    else:
        ax.set_yticks([-t for t in ticks])
        ax.set_yticklabels(groups, fontsize=7)
        ax.get_yticklabels()[0].set_fontweight("bold")
        ax.axhline(-0.5, color="grey", linewidth=0.6)
        ax.set_xlim(0, 1.0)
        ax.set_ylim(-len(groups) + 0.4, 0.6)
        ax.set_xlabel("AP@0.5:0.95 (pycocotools), higher is better")
        ax.grid(True, axis="x", alpha=0.3)
    ax.set_title("Per-class AP (%s)" % _source_note(curves), fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    return fig


def pr_figure(curves: Sequence[Any]) -> Any:
    """Precision-recall at IoU 0.50:0.95 (mean) and 0.50, one line per bundle/variant; None without curves."""
    usable = [vc for vc in curves if vc.recall and any(v is not None for v in vc.precision.get("map") or [])]
    if not usable:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6), sharey=True)
    panels = (("map", "IoU 0.50:0.95 (mean)", "map"), ("map50", "IoU 0.50", "map50"))
    for ax, (key, title, stat) in zip(axes, panels):
        for i, vc in enumerate(usable):
            pts = [(r, p) for r, p in zip(vc.recall, vc.precision.get(key) or []) if p is not None]
            if not pts:
                continue
            value = getattr(vc, stat)
            label = vc.label + (" (AP %.3f)" % value if isinstance(value, (int, float)) else "")
            ax.plot([r for r, _p in pts], [p for _r, p in pts], color=_series_colour(i), linewidth=1.6,
                    linestyle=LINESTYLES[i // 10 % len(LINESTYLES)] if i >= 10 else "-", label=label)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("recall")
        ax.set_xlim(0, 1.0)
        ax.set_ylim(0, 1.02)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="lower left")
    axes[0].set_ylabel("precision (COCO interpolated)")
    fig.suptitle("Precision-recall per variant (%s)" % _source_note(usable), fontsize=10)
    return fig


def _plot_and_save(fig: Any, path: str) -> Optional[str]:
    if fig is None:
        return None
    try:
        return _save(fig, path)
    finally:
        _pyplot().close(fig)


def plot_per_class(results: Sequence[Any], path: str) -> Optional[str]:
    """per_class_ap.png from loaded results; None when no run stored curves."""
    from .curves import collect_curves

    return _plot_and_save(per_class_figure(collect_curves(results)), path)


def plot_pr(results: Sequence[Any], path: str) -> Optional[str]:
    """pr_curves.png from loaded results; None when no run stored curves."""
    from .curves import collect_curves

    return _plot_and_save(pr_figure(collect_curves(results)), path)
