"""What to prune and how: :class:`PruneConfig`, validated into one-line errors."""
import dataclasses
from typing import List, Optional, Tuple

from edgekit.contract.errors import EdgekitError

from .param_errors import ParameterError

CRITERIA = ("l1", "bn")
STRATEGIES = ("uniform", "global", "sensitivity")
SPARSITY_KINDS = ("unstructured", "2:4")
DEFAULT_RATIO = 0.5


@dataclasses.dataclass
class PruneConfig:
    """Settings of one structured-pruning run.

    How much to prune is said in exactly one way: ``ratio`` (fraction of each
    group's channels to remove, default 0.5), ``target_macs`` (fraction of the
    model's MACs to remove; the strategy decides where), or ``bn_threshold``
    (network slimming: remove channels whose BatchNorm scale is below it).
    ``sensitivity`` without ``target_macs`` aims at the MACs that ``uniform``
    would remove at ``ratio``, spending them where they hurt least.
    """

    ratio: Optional[float] = None
    criterion: str = "l1"
    strategy: str = "uniform"
    target_macs: Optional[float] = None
    bn_threshold: Optional[float] = None
    alignment: int = 8
    ignore: List[str] = dataclasses.field(default_factory=list)
    sparsity: Optional[str] = None
    sparsity_ratio: float = 0.5
    # No group loses more than this fraction of its channels (global and
    # sensitivity strategies; at least one aligned unit always stays).
    max_group_ratio: float = 0.9
    # Sensitivity analysis: how many calibration images, and at which
    # per-group pruning fractions the damage is measured.
    sensitivity_images: int = 8
    sensitivity_levels: Tuple[float, ...] = (0.25, 0.5, 0.75)

    @property
    def effective_ratio(self) -> float:
        return DEFAULT_RATIO if self.ratio is None else self.ratio

    def validate(self) -> "PruneConfig":
        if self.criterion not in CRITERIA:
            raise ParameterError("unknown pruning criterion %r" % (self.criterion,), "set {criterion} to one of: %s" % ", ".join(CRITERIA))
        if self.strategy not in STRATEGIES:
            raise ParameterError("unknown pruning strategy %r" % (self.strategy,), "set {strategy} to one of: %s" % ", ".join(STRATEGIES))
        # Slots, not flag names: param_errors.ParameterError is worded by the caller (the CLI says --target-macs).
        given = [n for n, v in (("{ratio}", self.ratio), ("{target_macs}", self.target_macs), ("{bn_threshold}", self.bn_threshold)) if v is not None]
        if len(given) > 1:
            raise ParameterError("%s are alternatives, got both" % " and ".join(given), "give only one way of saying how much to prune")
        if self.ratio is not None and not 0.0 <= self.ratio < 1.0:
            raise ParameterError("pruning ratio %r is out of range" % (self.ratio,), "set {ratio} to the fraction of channels to remove, 0 <= ratio < 1 (e.g. 0.5)")
        if self.target_macs is not None and not 0.0 < self.target_macs < 1.0:
            raise ParameterError(
                "target MACs reduction %r is out of range" % (self.target_macs,),
                "set {target_macs} to the fraction of MACs to remove, between 0 and 1 (e.g. 0.5 for half)",
            )
        if self.bn_threshold is not None:
            if self.criterion != "bn":
                raise ParameterError("{bn_threshold} needs the BatchNorm-scale criterion", "set {criterion} to bn")
            if not self.bn_threshold > 0:
                raise ParameterError("BatchNorm threshold %r must be positive" % (self.bn_threshold,), "set {bn_threshold} to a positive scale, e.g. 0.01")
        if not isinstance(self.alignment, int) or self.alignment < 1:
            raise EdgekitError("channel alignment %r must be a positive integer" % (self.alignment,), "use the profile's alignment (e.g. 8)")
        if self.sparsity is not None and self.sparsity not in SPARSITY_KINDS:
            raise EdgekitError("unknown sparsity %r" % (self.sparsity,), "use one of: %s" % ", ".join(SPARSITY_KINDS))
        if self.sparsity == "unstructured" and not 0.0 < self.sparsity_ratio < 1.0:
            raise EdgekitError("sparsity ratio %r is out of range" % (self.sparsity_ratio,), "pass the fraction of weights to zero, 0 < ratio < 1")
        if not 0.0 < self.max_group_ratio < 1.0:
            raise EdgekitError("max_group_ratio %r is out of range" % (self.max_group_ratio,), "use a fraction between 0 and 1")
        if self.sensitivity_images < 1:
            raise EdgekitError("sensitivity_images must be at least 1", "pass a positive number of images")
        levels = tuple(float(v) for v in self.sensitivity_levels)
        if not levels or any(not 0.0 < v < 1.0 for v in levels) or list(levels) != sorted(set(levels)):
            raise EdgekitError("sensitivity_levels %r must be increasing fractions in (0, 1)" % (self.sensitivity_levels,), "e.g. (0.25, 0.5, 0.75)")
        self.sensitivity_levels = levels
        for pattern in self.ignore:
            if not isinstance(pattern, str) or not pattern.strip():
                raise ParameterError("an {ignore} pattern is empty", "give a layer name or glob such as 'head.*'")
        return self

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["ratio"] = self.ratio
        data["sensitivity_levels"] = list(self.sensitivity_levels)
        return data
