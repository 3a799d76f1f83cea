"""Errors about a library function's arguments, worded for whoever called it.

The pruning library is called from Python and from the CLI. Its messages
must not name CLI flags (a Python caller has no ``--recover-steps``), and the
CLI's users should not read Python keyword names either. A
:class:`ParameterError` keeps its problem and fix as templates with a
``{name}`` slot for each argument they talk about: by default a slot reads as
the Python keyword (``steps``); whoever calls the library rewords it with
:meth:`ParameterError.worded` or :func:`reworded` (a function that passes its
own ``recover_steps`` on as ``steps``; the CLI, ``{"recover_steps":
"--recover-steps"}``) before it is shown.
"""
import contextlib
import re
from typing import Dict, Iterator, Mapping, Optional

from edgekit.contract.errors import EdgekitError

_SLOT = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


class ParameterError(EdgekitError):
    """A bad (or missing) argument; ``problem`` and ``fix`` may hold ``{parameter}`` slots."""

    def __init__(self, problem: str, fix: str, names: Optional[Mapping[str, str]] = None) -> None:
        self.templates = (problem, fix)
        self.names: Dict[str, str] = dict(names or {})
        super().__init__(_fill(problem, self.names), _fill(fix, self.names))

    def slots(self):
        return sorted(set(_SLOT.findall(self.templates[0])) | set(_SLOT.findall(self.templates[1])))

    def worded(self, names: Mapping[str, str]) -> "ParameterError":
        """The same error with each argument's current name translated by ``names`` (others kept).

        Translations compose: ``recover()`` says ``steps``, ``prune_and_recover()``
        rewords it to its own ``recover_steps``, the CLI that to ``--recover-steps``."""
        now = {slot: self.names.get(slot, slot) for slot in self.slots()}
        again = ParameterError(self.templates[0], self.templates[1], {slot: names.get(name, name) for slot, name in now.items()})
        return again.with_traceback(self.__traceback__)


def _fill(template: str, names: Mapping[str, str]) -> str:
    # Only {identifier} slots: values already formatted into the text (a dict's repr) stay as they are.
    return _SLOT.sub(lambda m: names.get(m.group(1), m.group(1)), template)


@contextlib.contextmanager
def reworded(names: Mapping[str, str]) -> Iterator[None]:
    """Re-raise a :class:`ParameterError` from inside with ``names`` (the caller's words for the arguments)."""
    try:
        yield
    except ParameterError as exc:
        raise exc.worded(names) from None
