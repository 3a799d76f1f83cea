"""``edgekit build``: turn a (pruned) PyTorch model into a bundle a board can run."""
from .options import BuildOptions, Plan, parse_prune, parse_variants, variant_name
from .assemble import BuildResult, build_bundle

__all__ = ["BuildOptions", "BuildResult", "Plan", "build_bundle", "parse_prune", "parse_variants", "variant_name"]
