"""``hearts env``: the environment a verdict would be earned in, and how it differs from a lock file."""

from __future__ import annotations

import argparse

from harness import inputs
from harness.errors import InputError

HELP = "print library versions, processor and torch's CPU kernels; with --lock, what differs from a pinned set"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--lock", type=inputs.path_arg, default=None,
        help="a pip constraints file (name==version lines), e.g. constraints.txt (default: none)")
    add("--check", action="store_true", help="with --lock: exit 1 when any pinned version differs (default: 0)")


def run(args: argparse.Namespace) -> int:
    from harness import environment

    if args.check and args.lock is None:
        raise InputError("--check compares against a lock file: give --lock too")
    pins = None if args.lock is None else environment.read_lock(args.lock)  # bad input before any output

    import torch  # noqa: F401  (imported so the CPU capability and GPU can be read)

    for name, value in {**environment.describe(), **environment.versions()}.items():
        print(f"{name:<16} {value}")
    if pins is None:
        return 0
    moved = environment.drift(pins, environment.installed(pins))
    print(f"\n{len(moved)} of {len(pins)} pinned distributions differ from {args.lock}" + (":" if moved else ""))
    for name, locked, found in moved:
        print(f"  {name}: {locked} (locked) -> {found}")
    return 1 if moved and args.check else 0
