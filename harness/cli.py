"""The ``hearts`` command line: one subcommand per pipeline stage, each defined in ``harness/commands/``.

Every command exits 0 on success, 1 when a check it runs fails (gate), and 2 on bad input with a single
line on stderr naming the input — never a traceback for a user's mistake.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import time
from collections.abc import Sequence
from typing import Any, NoReturn

from harness import distributed
from harness.errors import InputError

# (subcommand, module under harness.commands); modules are imported lazily so `hearts --help` stays fast.
COMMANDS: tuple[tuple[str, str], ...] = (
    ("prepare", "prepare"),
    ("train", "train"),
    ("merge", "merge"),
    ("generate", "generate"),
    ("eval", "eval"),
    ("judge", "judge"),
    ("run", "run"),
    ("gate", "gate"),
    ("bench", "bench"),
    ("upload", "upload"),
    ("env", "env"),
)
# The commands that know about several ranks (harness.distributed); the rest would only repeat one another's
# work and race for their output under torchrun or accelerate launch.
RANKED = ("train", "eval", "run")


class Parser(argparse.ArgumentParser):
    """argparse with the harness's error shape: one line, ``hearts CMD: error: ...``, exit 2 (no usage block)."""

    commands: dict[str, argparse.ArgumentParser]

    def parse_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> Any:  # type: ignore[override]
        parsed, extra = self.parse_known_args(args, namespace)
        if extra:  # named by the subcommand that did not expect them, not by the top-level parser
            where = self.commands.get(getattr(parsed, "command", None) or "", self)
            where.error(f"unrecognized arguments: {' '.join(extra)}")
        return parsed

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {_one_line(message)} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="hearts", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    parser.commands = {}
    for name, module in COMMANDS:
        mod = importlib.import_module(f"harness.commands.{module}")
        sp = parser.commands[name] = sub.add_parser(name, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(sp)
        sp.set_defaults(_run=mod.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    started = time.perf_counter()  # before the libraries load: a report's stage timing counts their import
    # bitsandbytes logs a notice about optional CPU kernels on import, which would come before a one-line error
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as done:  # --help (0) or a usage error (2, already printed as one line)
        return done.code if isinstance(done.code, int) else 2
    try:
        _check_launcher(args.command)
        args.started = started
        return int(args._run(args) or 0)
    except (InputError, OSError) as err:
        print(f"hearts {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return 2
    finally:
        distributed.close()


def _check_launcher(command: str) -> None:
    ranks = distributed.world()
    if ranks.distributed and command not in RANKED:
        raise InputError(f"runs as one process, not as rank {ranks.rank} of {ranks.size}: start it without "
                         f"torchrun/accelerate launch (only {', '.join(RANKED)} use several ranks)")


def _one_line(err: BaseException | str) -> str:
    return " ".join(str(err).split()) or type(err).__name__


if __name__ == "__main__":
    sys.exit(main())
