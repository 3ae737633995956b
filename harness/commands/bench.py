"""``hearts bench``: compare two pytest-benchmark JSON runs; Markdown report with a plot; exit 1 on a regression."""

from __future__ import annotations

import argparse

from harness.config import GateConfig
from harness.inputs import path_arg

HELP = "compare two pytest-benchmark JSON runs (mean time, *_per_s, peak memory) into a Markdown report; " \
       "exit 1 on a regression"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--new", required=True, type=path_arg, help="pytest-benchmark JSON of the run under test")
    add("--old", required=True, type=path_arg, help="pytest-benchmark JSON to compare against")
    add("--out", required=True, type=path_arg, help="the Markdown report to write (the plot goes beside it as .png)")
    default = GateConfig().throughput_margin
    add("--margin", type=float, default=default,
        help=f"a rate this much lower, or a mean time this much higher, is a regression (default: {default})")


def run(args: argparse.Namespace) -> int:
    from harness import bench

    bench.check_out(args.out, (args.new, args.old))  # before reading anything
    comparison = bench.write_report(args.new, args.old, args.out, args.margin)
    print(bench.render_text(comparison))
    print(f"report: {args.out}  ({args.out.with_suffix('.png')})")
    print(comparison.summary())
    return 1 if comparison.regressed else 0
