"""Command-line parsing shared by ``graphattn`` and ``python -m graphattn.bench`` (internal).

A user mistake on the command line is one line on stderr, ``graphattn: error: ...``, and exit
status 2, never a traceback or a usage block: :class:`ArgumentParser` raises :class:`UsageError`
instead of printing argparse's usage, and the entry points print it with :func:`report_usage_error`.
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["ArgumentParser", "UsageError", "report_usage_error", "int_at_least", "int_list"]


class UsageError(Exception):
    """A user mistake: printed as one line, exit status 2."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors raise :class:`UsageError` (subparsers inherit the class)."""

    def error(self, message: str):
        raise UsageError(f"{message} (see {self.prog} --help)")


def report_usage_error(err: Exception) -> int:
    """Print ``graphattn: error: MESSAGE`` on stderr; returns the exit status, 2."""
    print(f"graphattn: error: {err}", file=sys.stderr)
    return 2


def int_at_least(minimum: int):
    """An argparse ``type``: an int ``>= minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an int >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an int >= {minimum}, got {value}")
        return value

    parse.__name__ = f"int >= {minimum}"
    return parse


def int_list(text: str) -> list[int]:
    """An argparse ``type``: comma-separated ints, ``5`` (one element), ``0,5`` or ``""`` (none)."""
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated ints such as 0,5, got {text!r}") from None
