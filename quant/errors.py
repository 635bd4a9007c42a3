"""Errors that end a command with a one-line message and a documented exit code.

Exit codes (shared by every command):
  0  success / the gate passes
  1  the gate found defects (verify, diff, gate)
  2  unreadable or malformed input, usage error, unreachable/crashed server
  130 interrupted (Ctrl-C); nothing is left under the final output name
"""
from __future__ import annotations

EXIT_OK = 0
EXIT_DEFECTS = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


def short(name, limit: int = 80) -> str:
    """``repr`` of a name from a file, cut for a one-line message (a 300,000-character tensor name
    must not become a 300 KB line); lone surrogates are shown escaped, never crash a print."""
    s = str(name)
    r = repr(s if len(s) <= limit else s[:limit])
    if len(s) > limit:
        r = f"{r[:-1]}...{r[-1]} ({len(s):,} chars)"
    return r


class QuantgateError(Exception):
    """A problem the user can act on. ``str(err)`` is the one line the CLI prints."""

    exit_code = EXIT_BAD_INPUT

    def __init__(self, problem: str, path: object | None = None):
        self.problem = problem
        self.path = None if path is None else str(path)
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


class InputError(QuantgateError):
    """Malformed / unreadable / unsupported input file (exit 2)."""


class UsageError(QuantgateError):
    """Bad command-line usage or options (exit 2)."""


class OptionError(UsageError):
    """An option value that is wrong, or options that do not go together. The message is a template
    naming the options as ``{name}`` (the core's own names); ``str(err)`` shows those names,
    :meth:`worded` a front end's (the CLI words them as its flags, harness/commands)."""

    def __init__(self, template: str, path: object | None = None):
        self.template = template
        super().__init__(self.worded(lambda name: name), path)

    def worded(self, flag) -> str:
        """The problem with every ``{name}`` replaced by ``flag(name)``."""
        import re
        return re.sub(r"\{(\w+)\}", lambda m: flag(m.group(1)), self.template)


class DeviceError(UsageError):
    """A device was asked for that is not there (exit 2)."""


class ShapeError(InputError):
    """A tensor shape that the requested format cannot take (exit 2)."""
