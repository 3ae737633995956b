"""The one exception family for bad input: the CLI turns it into a one-line error and exit 2."""

from __future__ import annotations


class InputError(ValueError):
    """Input a user gave (a file, a row, a config key, a model) is not what the harness expects."""
