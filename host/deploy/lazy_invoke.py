"""Defer paramiko's ``import invoke`` to its first use.

paramiko.config imports invoke (which brings yaml, asyncio and unittest.mock: about
a fifth of ``edgekit deploy``'s start) only for an SSH config's ``Match exec``. With
a stand-in bound before paramiko loads, invoke loads on its first use. Imported
by the deploy package's __init__, the one place that imports paramiko; written by hand
because neither paramiko nor the standard library offers a lazy import of it.
"""
import importlib
import importlib.util
import sys
import types
from typing import Any


class _DeferredModule(types.ModuleType):
    """Stands in for a module until one of its attributes is first asked for."""

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):  # the import system's own questions (__spec__, __path__): not a use
            raise AttributeError(attr)
        real = sys.modules.get(self.__name__)
        if real is self or real is None:  # None: an earlier load failed; fail the same way again
            sys.modules.pop(self.__name__, None)
            real = importlib.import_module(self.__name__)
        return getattr(real, attr)


def defer_invoke() -> None:
    """paramiko.config imports invoke (which brings yaml, asyncio and unittest.mock:
    about a fifth of this command's start) only for an SSH config's ``Match exec``.
    With a stand-in bound before paramiko loads, invoke loads on its first use."""
    if "invoke" in sys.modules or "paramiko" in sys.modules:
        return
    try:
        found = importlib.util.find_spec("invoke") is not None
    except (ImportError, ValueError):
        found = False
    if found:  # else paramiko records the ImportError itself, as without us
        sys.modules["invoke"] = _DeferredModule("invoke")

