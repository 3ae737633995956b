"""``hearts gate``: judge a report against the release thresholds; exit 1 when a check fails."""

from __future__ import annotations

import argparse

from harness.inputs import path_arg

HELP = "check a report against the release thresholds (and a baseline report / benchmark); exit 1 on failure"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--report", required=True, type=path_arg, help="the report.json to judge")
    add("--baseline", type=path_arg, default=None,
        help="an earlier report.json: a significant drop on shared prompts fails (default: none)")
    add("--config", type=path_arg, default=None,
        help="TOML file with a [gate] table, or a pyproject.toml with [tool.hearts.gate] (default: built-in)")
    add("--bench", type=path_arg, default=None, help="pytest-benchmark JSON of this run (with --baseline-bench)")
    add("--baseline-bench", type=path_arg, default=None,
        help="pytest-benchmark JSON of the baseline: *_per_s may drop at most throughput_margin")


def run(args: argparse.Namespace) -> int:
    from harness import gate

    result = gate.evaluate(args.report, gate.load_config(args.config), baseline=args.baseline,
                           bench=args.bench, baseline_bench=args.baseline_bench)
    print(result.table())
    if result.drift:
        print(result.drift_text())
    print(result.summary())
    return 0 if result.passed else 1
