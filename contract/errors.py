"""The one error type users see, shared by host and agent.

Library code raises :class:`EdgekitError` for anything the user can fix (a bad
profile, a missing file, an unreachable board). The CLI prints it as a single
line ``error: <problem>; <fix>`` and exits with code 2 (the agent puts it in its JSON result); ``--debug`` adds the
traceback. Anything else escaping a command is a bug and is reported as such.
"""
from typing import Optional


class EdgekitError(Exception):
    """A problem the user can fix. ``fix`` says how, in a few words."""

    exit_code = 2

    def __init__(self, problem: str, fix: Optional[str] = None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.fix = fix

    def one_line(self) -> str:
        text = self.problem if not self.fix else "%s; %s" % (self.problem, self.fix)
        # One line, always: a multi-line message from a library would break log parsing.
        return " ".join(text.split())

    def __str__(self) -> str:
        return self.one_line()
