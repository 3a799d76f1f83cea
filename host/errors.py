"""User-facing errors. The type lives with the device code so the agent (which
cannot import the host package) raises the same one; see edgekit.device.errors."""
from edgekit.device.errors import EdgekitError

__all__ = ["EdgekitError"]
