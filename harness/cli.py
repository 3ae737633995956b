"""The ``hearts`` command line: one subcommand per pipeline stage, each defined in ``harness/commands/``.

Every command exits 0 on success, 1 when a check it runs fails (gate), and 2 on bad input with a single
line on stderr naming the input — never a traceback for a user's mistake.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from harness.errors import InputError

# (subcommand, module under harness.commands); modules are imported lazily so `hearts --help` stays fast.
COMMANDS: tuple[tuple[str, str], ...] = (
    ("prepare", "prepare"),
    ("train", "train"),
    ("merge", "merge"),
    ("generate", "generate"),
    ("eval", "eval"),
    ("run", "run"),
    ("gate", "gate"),
    ("bench", "bench"),
    ("upload", "upload"),
    ("env", "env"),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hearts", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in COMMANDS:
        mod = importlib.import_module(f"harness.commands.{module}")
        sp = sub.add_parser(name, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(sp)
        sp.set_defaults(_run=mod.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except (InputError, OSError) as err:
        print(f"hearts {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return 2


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


if __name__ == "__main__":
    sys.exit(main())
