"""The one exception family for bad input: the CLI turns it into a one-line error and exit 2."""

from __future__ import annotations

import sys


class InputError(ValueError):
    """Input a user gave (a file, a row, a config key, a model) is not what the harness expects."""


def warn(message: str) -> None:
    """A problem that does not stop the run, as one ``warning:`` line on stderr (library code stays quiet)."""
    print(f"warning: {' '.join(message.split())}", file=sys.stderr)


def first_line(err: BaseException) -> str:
    """The first line of ``err``'s message (its type's name when it has none), for a one-line error."""
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__
