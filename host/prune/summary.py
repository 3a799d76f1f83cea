"""The pruning report: JSON for the bundle, a PNG chart, and a terminal rendering."""
import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from edgekit.host.prune.alignment import LayerRow
from edgekit.host.prune.metrics import MACS_COUNT

REPORT_JSON = "prune_report.json"
REPORT_PNG = "prune_channels.png"
FORMAT = "edgekit-prune-report/1"


@dataclass
class PruneReport:
    criterion: str
    strategy: str
    ratio: Optional[float]
    target_macs: Optional[float]
    bn_threshold: Optional[float]
    alignment: int
    input_shape: List[int]
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    size_before: int  # bytes of the float32 state_dict as saved by torch.save
    size_after: int
    layers: List[LayerRow]
    aligned: bool
    runs: bool
    outputs_before: List[List[int]]
    outputs_after: List[List[int]]
    problems: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    ignore: List[str] = field(default_factory=list)
    groups: int = 0
    sparsity: Optional[Dict[str, Any]] = None
    recovery: Optional[Dict[str, Any]] = None
    excluded: List[Dict[str, str]] = field(default_factory=list)  # groups left unpruned automatically: group, block, reason
    seconds: float = 0.0

    @property
    def outputs_unchanged(self) -> bool:
        return self.outputs_before == self.outputs_after

    @property
    def macs_reduction(self) -> float:
        return 1.0 - self.macs_after / float(self.macs_before) if self.macs_before else 0.0

    @property
    def ok(self) -> bool:
        """Aligned, runs, and the output shapes did not change."""
        return self.aligned and self.runs and self.outputs_unchanged

    def to_dict(self) -> Dict[str, Any]:
        return {
            "format": FORMAT,
            "criterion": self.criterion,
            "strategy": self.strategy,
            "ratio": self.ratio,
            "target_macs": self.target_macs,
            "bn_threshold": self.bn_threshold,
            "alignment": self.alignment,
            "ignore": list(self.ignore),
            "input_shape": list(self.input_shape),
            "params": {"before": self.params_before, "after": self.params_after},
            "macs": {"before": self.macs_before, "after": self.macs_after, "reduction": round(self.macs_reduction, 6), "counts": MACS_COUNT},
            "file_size": {"before": self.size_before, "after": self.size_after},
            "groups": self.groups,
            "aligned": self.aligned,
            "runs": self.runs,
            "outputs": {"before": self.outputs_before, "after": self.outputs_after, "unchanged": self.outputs_unchanged},
            "problems": list(self.problems),
            "notes": list(self.notes),
            "excluded": [dict(e) for e in self.excluded],
            "sparsity": self.sparsity,
            "recovery": self.recovery,
            "seconds": round(self.seconds, 3),
            "layers": [row.to_dict() for row in self.layers],
        }

    def write(self, folder: str) -> Dict[str, str]:
        """Write prune_report.json and prune_channels.png into ``folder``; returns their paths."""
        os.makedirs(folder, exist_ok=True)
        json_path = os.path.join(folder, REPORT_JSON)
        tmp = json_path + ".partial"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2)
            f.write("\n")
        os.replace(tmp, json_path)
        png_path = os.path.join(folder, REPORT_PNG)
        self.plot(png_path)
        return {"json": json_path, "png": png_path}

    def plot(self, path: str) -> None:
        """Horizontal bars per layer: kept channels, channels pruned, and channels added by alignment."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = self.layers
        height = max(3.0, 0.18 * len(rows) + 1.5)
        fig, ax = plt.subplots(figsize=(9, height))
        try:
            ys = list(range(len(rows)))[::-1]
            kept = [r.out_after for r in rows]
            pruned = [max(0, r.out_before - r.out_after) for r in rows]
            added = [max(0, r.added_by_alignment or 0) for r in rows]
            base = [k - a for k, a in zip(kept, added)]
            colours = ["#9a9a9a" if r.fixed else "#3b7dd8" for r in rows]
            ax.barh(ys, base, color=colours, label="kept")
            ax.barh(ys, added, left=base, color="#8fc1f0", label="added by alignment")
            ax.barh(ys, pruned, left=kept, color="#e0e0e0", edgecolor="#b0b0b0", linewidth=0.3, label="pruned")
            labels = ["%s%s" % (r.name, " (fixed)" if r.fixed else "") for r in rows]
            ax.set_yticks(ys)
            ax.set_yticklabels(labels, fontsize=6)
            ax.set_xlabel("output channels")
            title = "%s, %s: %.2fM -> %.2fM params, %.1f%% fewer MACs, aligned to %d" % (
                self.strategy,
                self.criterion,
                self.params_before / 1e6,
                self.params_after / 1e6,
                100.0 * self.macs_reduction,
                self.alignment,
            )
            ax.set_title(title, fontsize=9)
            # Legend swatches drawn from the bar colours themselves: an empty barh for
            # "fixed" fell back to matplotlib's default blue while the fixed bars are grey.
            from matplotlib.patches import Patch

            handles = [Patch(color="#3b7dd8", label="kept")]
            if any(r.fixed for r in rows):
                handles.append(Patch(color="#9a9a9a", label="fixed (task output / ignored)"))
            handles += [Patch(color="#8fc1f0", label="added by alignment"), Patch(facecolor="#e0e0e0", edgecolor="#b0b0b0", label="pruned")]
            ax.legend(handles=handles, loc="lower right", fontsize=7)
            ax.margins(y=0.005)
            fig.tight_layout()
            tmp = path + ".partial.png"
            fig.savefig(tmp, dpi=110)
            os.replace(tmp, path)
        finally:
            plt.close(fig)
