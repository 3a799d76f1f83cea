"""Per-layer times (the runs' ``layers`` block, ``--profile-layers``) in the report.

Written next to report.md when at least one run was profiled:

* ``layers.md``: per variant, the slowest nodes and the time per op type; per
  pair of variants of one model (int8 or fp16 against fp32 of the same bundle,
  pruning prefix and target), a layer-by-layer comparison: which layers got
  faster, which slower, and what runs in only one of them.
* ``layers_op_types.png``: one stacked bar per variant, ms per image by op type.

Matching nodes of two variants (the rule, also in docs/agent.md): the runtime
renames and fuses nodes (an int8 graph's ``DequantizeLinear -> Conv ->
QuantizeLinear`` becomes one ``QLinearConv``; SiLU's ``Sigmoid`` and ``Mul``
become one ``QuickGelu`` in fp32 but stay two ``QLinearSigmoid`` and
``QLinearMul`` in int8), so runtime node names never match across variants.
The agent already traced each runtime node to the node of the variant's own
ONNX graph it came from (``source``, edgekit.device.layer_profile). Those
source names are the exporter's module paths (``/c3_1/cv1/conv/Conv``), so a
*layer* here is the PyTorch module that exported the node: the source name
without its last path part (``/c3_1/cv1/conv``; SiLU's Sigmoid and Mul are both
``/c3_1/cv1/act``; the int8 head's split convs ``/detect/m.0/Conv_anchor0_part0``
and their Concat are ``/detect/m.0``; a Q or DQ node left standing,
``/c3_1/cv1/act/Mul_output_0_QuantizeLinear``, counts to the module whose
tensor it converts). A source name without a path is its own layer. A node the
runtime inserted (no source: layout ``Transpose``, ``ReorderOutput``) counts to
``(runtime) <op type>``. Layers are matched by that key; a layer found in one
variant only is listed as such.
"""
import dataclasses
import os
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple

from edgekit.contract.errors import EdgekitError
from .load import LoadedResult

TOP_LAYERS = 10
RUNTIME = "(runtime) "
OTHER = "other"
# Op types drawn in their own colour in the stacked bars; the rest is "other".
MAX_BAR_TYPES = 10
LAYERS_MD = "layers.md"
LAYERS_PNG = "layers_op_types.png"
PRECISION_WORDS = ("fp32", "fp16", "int8", "bf16")


@dataclasses.dataclass
class LayerProfile:
    """One profiled run: who it is and its ``layers`` block."""

    target: str
    bundle: str
    variant: str
    precision: str
    backend: str
    layers: Dict[str, Any]
    latency_ms: Optional[float] = None  # the timed loop's mean, for reference
    path: str = ""  # the result file: variants are compared within one run of the agent

    @property
    def label(self) -> str:
        return "%s/%s" % (self.bundle, self.variant)

    @property
    def nodes(self) -> List[Dict[str, Any]]:
        return list(self.layers.get("nodes") or [])

    @property
    def nodes_ms(self) -> float:
        """The agent's summed node means."""
        return float(self.layers.get("nodes_ms") or 0.0)

    @property
    def stat(self) -> str:
        """The per-node figure the report uses: the median when the agent gave one, else the mean."""
        return "median_ms" if self.nodes and all("median_ms" in n for n in self.nodes) else "mean_ms"

    def ms(self, node: Dict[str, Any]) -> float:
        return float(node.get(self.stat) or 0.0)

    @property
    def total_ms(self) -> float:
        return sum(self.ms(n) for n in self.nodes)

    def ranked(self) -> List[Dict[str, Any]]:
        """Nodes slowest first by :attr:`stat`."""
        return sorted(self.nodes, key=lambda n: (-self.ms(n), str(n.get("name"))))

    def op_types(self) -> List[Dict[str, Any]]:
        """[{op_type, count, ms, share}] from the nodes by :attr:`stat`, slowest first."""
        by: Dict[str, Dict[str, Any]] = {}
        for n in self.nodes:
            t = by.setdefault(str(n.get("op_type") or "?"), {"op_type": str(n.get("op_type") or "?"), "count": 0, "ms": 0.0})
            t["count"] += 1
            t["ms"] += self.ms(n)
        total = self.total_ms
        for t in by.values():
            t["share"] = t["ms"] / total if total > 0 else 0.0
        return sorted(by.values(), key=lambda t: (-t["ms"], t["op_type"]))


def profiles_from(results: Sequence[LoadedResult]) -> List[LayerProfile]:
    """Every ok run with a ``layers`` block, in the results' order."""
    out = []
    for result in results:
        for run in result.data.get("runs") or []:
            layers = run.get("layers")
            if run.get("status") != "ok" or not isinstance(layers, dict) or not layers.get("nodes"):
                continue
            lat = (run.get("latency_ms") or {}).get("mean")
            out.append(
                LayerProfile(result.target, result.bundle, str(run.get("variant")), str(run.get("precision")), str(run.get("backend")), layers,
                             float(lat) if isinstance(lat, (int, float)) else None, result.path)
            )
    return out


def layer_key(node: Dict[str, Any]) -> str:
    """The layer a node counts to (module docstring): its source's module path, or the runtime op type."""
    source = node.get("source")
    if not source:
        return RUNTIME + str(node.get("op_type") or "?")
    source = str(source)
    if source.startswith("/") and source.count("/") >= 2:
        return source.rsplit("/", 1)[0]
    return source


def comparison_stat(*profiles: LayerProfile) -> str:
    """``median_ms`` when every node of every profile has it (steadier on a busy board), else ``mean_ms``."""
    if all("median_ms" in n for p in profiles for n in p.nodes):
        return "median_ms"
    return "mean_ms"


def by_layer(profile: LayerProfile, stat: str = "mean_ms") -> Dict[str, Dict[str, Any]]:
    """{layer: {ms, ops: {op_type: count}}} of one profile; ms: the nodes' ``stat`` summed."""
    layers: Dict[str, Dict[str, Any]] = {}
    for n in profile.nodes:
        entry = layers.setdefault(layer_key(n), {"ms": 0.0, "ops": {}})
        entry["ms"] += float(n.get(stat) or 0.0)
        op = str(n.get("op_type") or "?")
        entry["ops"][op] = entry["ops"].get(op, 0) + 1
    return layers


@dataclasses.dataclass
class LayerDelta:
    layer: str
    base_ms: Optional[float]  # None: the layer does not run in the base variant
    other_ms: Optional[float]
    base_ops: str
    other_ops: str

    @property
    def change_ms(self) -> float:
        return (self.other_ms or 0.0) - (self.base_ms or 0.0)

    @property
    def ratio(self) -> Optional[float]:
        """base / other: above 1 the other variant is faster."""
        if self.base_ms and self.other_ms:
            return self.base_ms / self.other_ms
        return None


def _ops_text(ops: Dict[str, int]) -> str:
    return ", ".join(op if k == 1 else "%s x%d" % (op, k) for op, k in sorted(ops.items(), key=lambda kv: (-kv[1], kv[0])))


def compare_layers(base: LayerProfile, other: LayerProfile, stat: Optional[str] = None) -> List[LayerDelta]:
    """Every layer of either profile, matched by :func:`layer_key`; biggest change first.

    ``stat``: the per-node figure summed per layer (default :func:`comparison_stat`).
    """
    stat = stat or comparison_stat(base, other)
    a, b = by_layer(base, stat), by_layer(other, stat)
    deltas = []
    for key in list(a) + [k for k in b if k not in a]:
        ea, eb = a.get(key), b.get(key)
        deltas.append(LayerDelta(key, ea["ms"] if ea else None, eb["ms"] if eb else None, _ops_text(ea["ops"]) if ea else "", _ops_text(eb["ops"]) if eb else ""))
    deltas.sort(key=lambda d: (-abs(d.change_ms), d.layer))
    return deltas


def _stem(variant: str) -> str:
    """The variant name with its precision word replaced: 'p30-int8' and 'p30-fp32' share 'p30-*'."""
    return re.sub(r"(^|[-_])(%s)($|[-_])" % "|".join(PRECISION_WORDS), r"\1*\3", variant)


def pairs(profiles: Sequence[LayerProfile]) -> List[Tuple[LayerProfile, LayerProfile]]:
    """(fp32, other) pairs of one model: same result file, target, bundle, backend and variant name but the precision."""
    out = []
    for other in profiles:
        if other.precision == "fp32":
            continue
        for base in profiles:
            if (
                base.precision == "fp32"
                and (base.path, base.target, base.bundle, base.backend) == (other.path, other.target, other.bundle, other.backend)
                and _stem(base.variant) == _stem(other.variant)
            ):
                out.append((base, other))
                break
    return out


def _md_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


def _ms(value: Optional[float]) -> str:
    return "-" if value is None else "%.3f" % value


def _stat_word(stat: str) -> str:
    return "median" if stat == "median_ms" else "mean"


def top_table(profile: LayerProfile, top: int = TOP_LAYERS) -> List[str]:
    word = _stat_word(profile.stat)
    lines = [_md_row(("#", "node", "op type", "source ONNX node", "%s ms" % word, "mean ms" if word == "median" else "median ms", "share", "cumulative")),
             "|---:|---|---|---|---:|---:|---:|---:|"]
    total = profile.total_ms
    cumulative = 0.0
    for i, n in enumerate(profile.ranked()[:top], 1):
        ms = profile.ms(n)
        cumulative += ms
        other = n.get("mean_ms") if word == "median" else n.get("median_ms")
        lines.append(_md_row((i, "`%s`" % n.get("name"), n.get("op_type"), "`%s`" % n["source"] if n.get("source") else "- (runtime)",
                              "%.3f" % ms, _ms(other), "%.1f %%" % (100.0 * ms / total if total else 0.0), "%.1f %%" % (100.0 * cumulative / total if total else 0.0))))
    return lines


def op_type_table(profile: LayerProfile) -> List[str]:
    lines = [_md_row(("op type", "nodes", "%s ms" % _stat_word(profile.stat), "share")), "|---|---:|---:|---:|"]
    for t in profile.op_types():
        lines.append(_md_row((t["op_type"], t["count"], "%.3f" % t["ms"], "%.1f %%" % (100.0 * t["share"]))))
    return lines


def comparison_table(base: LayerProfile, other: LayerProfile, top: int = TOP_LAYERS) -> List[str]:
    """Markdown lines: totals, the layers that got slower and faster (largest change first), those in one variant only."""
    stat = comparison_stat(base, other)
    deltas = compare_layers(base, other, stat)
    both = [d for d in deltas if d.base_ms is not None and d.other_ms is not None]
    only_base = [d for d in deltas if d.other_ms is None]
    only_other = [d for d in deltas if d.base_ms is None]
    slower = [d for d in both if d.change_ms > 0]
    faster = [d for d in both if d.change_ms < 0]
    b, o = base.variant, other.variant
    sum_ms = lambda ds, attr: sum(getattr(d, attr) or 0.0 for d in ds)  # noqa: E731
    by_total = lambda p: sum(float(n.get(stat) or 0.0) for n in p.nodes)  # noqa: E731
    lines = [
        "Per layer: the %s of its nodes, summed. " % ("median over the profiled runs" if stat == "median_ms" else "mean") +
        "Node time %.3f ms (%s) against %.3f ms (%s). %d layers in both: %.3f -> %.3f ms; %d slower in %s, %d faster. "
        "Only in %s: %d layers, %.3f ms; only in %s: %d layers, %.3f ms."
        % (by_total(base), b, by_total(other), o, len(both), sum_ms(both, "base_ms"), sum_ms(both, "other_ms"), len(slower), o, len(faster),
           b, len(only_base), sum_ms(only_base, "base_ms"), o, len(only_other), sum_ms(only_other, "other_ms")),
        "",
    ]
    header = [_md_row(("layer", "%s ms" % b, "%s ms" % o, "change ms", "%s / %s" % (b, o), "%s ops" % b, "%s ops" % o)), "|---|---:|---:|---:|---:|---|---|"]

    def rows(ds: Sequence[LayerDelta]) -> List[str]:
        return [_md_row(("`%s`" % d.layer, _ms(d.base_ms), _ms(d.other_ms), "%+.3f" % d.change_ms, "%.2fx" % d.ratio if d.ratio else "-", d.base_ops, d.other_ops)) for d in ds]

    for title, ds in (("Slower in %s" % o, slower), ("Faster in %s" % o, faster), ("Only in %s" % o, only_other), ("Only in %s" % b, only_base)):
        if ds:
            shown = ds[:top]
            more = " (the %d largest of %d)" % (len(shown), len(ds)) if len(ds) > len(shown) else ""
            lines += ["**%s**%s:" % (title, more), ""] + header + rows(shown) + [""]
    return lines


def layers_markdown(profiles: Sequence[LayerProfile], top: int = TOP_LAYERS) -> str:
    lines = ["# Per-layer time", ""]
    lines.append(
        "From each run's `layers` (`--profile-layers`: the runtime's profiler on a separate session after the timed loop). "
        "ms: per image, the median over the profiled runs where the agent gave one (steadier than the mean on a busy board; the mean beside it), "
        "else the mean; share: of the summed node time (the runtime's own run span is a little higher: its overhead between nodes). "
        "Layer matching in the comparisons: the PyTorch module of each node's source ONNX node (see edgekit.host.report.layers)."
    )
    for p in profiles:
        lay = p.layers
        lines += ["", "## %s %s (%s, %s)" % (p.target, p.label, p.backend, lay.get("source") or "?"), ""]
        facts = ["%d nodes" % len(p.nodes), "%.3f ms summed node %ss" % (p.total_ms, _stat_word(p.stat))]
        if p.stat == "median_ms":
            facts.append("%.3f ms summed node means" % p.nodes_ms)
        if lay.get("run_ms") is not None:
            facts.append("%.3f ms runtime run span" % float(lay["run_ms"]))
        if p.latency_ms is not None:
            facts.append("%.3f ms timed-loop mean" % p.latency_ms)
        if lay.get("runs"):
            facts.append("%d profiled runs" % int(lay["runs"]))
        if lay.get("source_share") is not None:
            facts.append("%.1f %% of node time traced to a node of %s" % (100.0 * float(lay["source_share"]), lay.get("source_graph") or "the ONNX graph"))
        lines += ["; ".join(facts) + ".", ""] + top_table(p, top) + ["", "By op type:", ""] + op_type_table(p)
    for base, other in pairs(profiles):
        lines += ["", "## %s %s: %s against %s, layer by layer" % (base.target, base.bundle, other.variant, base.variant), ""]
        lines += comparison_table(base, other, top)
    return "\n".join(lines).rstrip("\n") + "\n"


_QUANT_PREFIX = re.compile(r"^(QLinear|Nhwc|Fused|DynamicQuantize)")


def op_family(op_type: str) -> str:
    """The float op an op type stands for: QLinearConv, ConvInteger, NhwcFusedConv -> Conv (one hue per family).

    QuantizeLinear, DequantizeLinear and DynamicQuantizeLinear are one family (the conversions).
    """
    if op_type.lower().endswith("quantizelinear"):
        return "QuantizeLinear"
    base = op_type
    while True:
        stripped = _QUANT_PREFIX.sub("", base)
        if stripped == base or not stripped:
            break
        base = stripped
    if base.endswith("Integer") and len(base) > len("Integer"):
        base = base[: -len("Integer")]
    return base


def _bar_types(profiles: Sequence[LayerProfile]) -> List[str]:
    """The op types drawn in their own colour, at most MAX_BAR_TYPES, ordered by family.

    Families (:func:`op_family`) ranked by the largest share any of their types
    has in any variant; inside one, the float op first. So Conv and QLinearConv
    sit at the same place in every bar, in two shades of one hue.
    """
    best: Dict[str, float] = {}
    for p in profiles:
        for t in p.op_types():
            best[t["op_type"]] = max(best.get(t["op_type"], 0.0), t["share"])
    family_best: Dict[str, float] = {}
    for op, share in best.items():
        family_best[op_family(op)] = max(family_best.get(op_family(op), 0.0), share)
    top = sorted(best, key=lambda k: (-best[k], k))
    if len(top) > MAX_BAR_TYPES:
        top = top[: MAX_BAR_TYPES - 1]
    return sorted(top, key=lambda k: (-family_best[op_family(k)], op_family(k), k != op_family(k), -best[k], k))


def _bar_colours(types: Sequence[str]) -> Dict[str, Any]:
    """tab20's hue pairs: one per family, dark for the float op, light for the others (tab20b past ten families)."""
    from matplotlib import colormaps

    families = list(dict.fromkeys(op_family(t) for t in types))
    tab20, tab20b = colormaps["tab20"], colormaps["tab20b"]
    colours: Dict[str, Any] = {}
    for t in types:
        f = families.index(op_family(t))
        cmap, hue = (tab20, f) if f < 10 else (tab20b, f - 10)
        colours[t] = cmap((2 * hue + (0 if t == op_family(t) else 1)) % 20)
    colours[OTHER] = (0.75, 0.75, 0.75, 1.0)
    return colours


def plot_op_types(profiles: Sequence[LayerProfile], path: str) -> Optional[str]:
    """Horizontal stacked bars, one per variant: ms per image by op type; None without profiles."""
    if not profiles:
        return None
    from .plots import _pyplot, _save

    plt = _pyplot()
    types = _bar_types(profiles)
    many_targets = len({p.target for p in profiles}) > 1
    labels = ["%s %s" % (p.target, p.label) if many_targets else p.label for p in profiles]
    fig, ax = plt.subplots(figsize=(10, 1.2 + 0.55 * len(profiles)))
    colours = _bar_colours(types)
    left = [0.0] * len(profiles)
    ys = list(range(len(profiles)))[::-1]  # first variant on top
    widest = max(p.total_ms for p in profiles) or 1.0
    for t in types + [OTHER]:
        values = []
        for p in profiles:
            ops = {o["op_type"]: o["ms"] for o in p.op_types()}
            values.append(sum(v for k, v in ops.items() if k not in types) if t == OTHER else ops.get(t, 0.0))
        if not any(values):
            continue
        ax.barh(ys, values, left=left, color=colours[t], label=t, edgecolor="white", linewidth=0.5, height=0.6)
        for y, x0, v, p in zip(ys, left, values, profiles):
            # The share inside a segment wide enough to hold it.
            if p.total_ms and v > 0.06 * widest:
                ax.text(x0 + v / 2, y, "%.0f%%" % (100.0 * v / p.total_ms), ha="center", va="center", fontsize=7)
        left = [a + v for a, v in zip(left, values)]
    for y, total in zip(ys, left):
        ax.text(total, y, " %.2f ms" % total, ha="left", va="center", fontsize=8)
    ax.set_yticks(ys)
    ax.set_yticklabels(labels, fontsize=8)
    words = {_stat_word(p.stat) for p in profiles}
    ax.set_xlabel("summed node time per image (ms; per node the %s of the profiled runs)" % " or ".join(sorted(words)))
    ax.set_xlim(0, max(left) * 1.15 if max(left) > 0 else 1.0)
    ax.set_title("Where the inference time goes, by op type")
    ax.grid(True, axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, title="op type", title_fontsize=8)
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)


def write_layers_report(results: Sequence[LoadedResult], out_dir: str, plots: bool = True, top: int = TOP_LAYERS) -> List[str]:
    """layers.md (and the op-type PNG) when any run has ``layers``; [] otherwise."""
    profiles = profiles_from(results)
    if not profiles:
        return []
    from .writers import _write_atomic

    if top < 1:
        raise EdgekitError("--top-layers must be 1 or more, got %d" % top, "pass e.g. --top-layers 10")
    files = [_write_atomic(os.path.join(out_dir, LAYERS_MD), lambda buf: buf.write(layers_markdown(profiles, top)))]
    if plots:
        written = plot_op_types(profiles, os.path.join(out_dir, LAYERS_PNG))
        if written:
            files.append(written)
    return files
