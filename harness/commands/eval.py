"""``hearts eval``: judge the merged model, its base (negative control) and the 4-bit adapter; write the report."""

from __future__ import annotations

import argparse
from pathlib import Path

from harness.commands.options import add_model_options, settings

HELP = "generate on the held-out prompts and write report.json + report.md with plots"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_options(parser)
    parser.add_argument("--out", type=Path, required=True, help="folder for report.json, report.md and plots")
    parser.add_argument("--prompts", default=None, help="evaluation prompts: 'bundled' (default) or a file")
    parser.add_argument("--skip-adapter", action="store_true",
                        help="do not also judge the unmerged 4-bit adapter (default: judge it, for agreement)")


def run(args: argparse.Namespace) -> int:
    from harness import evaluation, pipeline
    from harness.report import write_report

    s = settings(args)
    adapter, merged_dir = pipeline.train_and_merge(s)
    report = evaluation.evaluate(s, adapter, merged_dir, progress=True).report
    print(f"report: {write_report(args.out, report)}")
    print(pipeline.summary_table(report))
    return 0
