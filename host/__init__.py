"""edgekit.host: the workstation side (load, prune, export, calibrate, bundle, deploy, report)."""
from edgekit.contract._version import __version__

__all__ = ["__version__"]
