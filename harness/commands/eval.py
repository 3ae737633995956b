"""``hearts eval``: judge the merged model, its base (negative control) and the 4-bit adapter; write the report."""

from __future__ import annotations

import argparse

from harness import inputs
from harness.commands.options import (
    add_eval_options,
    add_model_options,
    check_prompts,
    judged_report,
    protected,
    settings,
)

HELP = "generate on the held-out prompts and write report.json + report.md with plots"
KIND = "report"  # the marker kind of a report folder: a later eval or run may replace it, nothing else


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_options(parser)
    add_eval_options(parser)
    parser.add_argument("--out", type=inputs.path_arg, required=True,
                        help="folder for report.json, report.md and plots (new, empty, or an earlier report)")
    parser.add_argument("--prompts", default=None, type=inputs.text_arg,
                        help="evaluation prompts: 'bundled' (default; [eval] prompts) or a file")
    parser.add_argument("--skip-adapter", action="store_true",
                        help="do not also judge the unmerged 4-bit adapter (default: judge it, for agreement)")


def run(args: argparse.Namespace) -> int:
    from harness.staging import check_out_dir

    s = settings(args)
    guard = protected(s, prompts=s.eval.prompts, config=args.config)
    check_out_dir(args.out, flag="--out", kind=KIND, overwrite=True, protect=guard)
    check_prompts(s.eval.prompts)
    report = judged_report(s, args.started)
    from harness import distributed, pipeline
    from harness.report import REPORT_JSON, write_report
    from harness.staging import replace_dir

    if not distributed.world().main:
        return 0  # rank 0 writes the report and gives the verdict for the launcher's whole group
    out = replace_dir(args.out, lambda tmp: write_report(tmp, report), flag="--out", kind=KIND, overwrite=True,
                      protect=guard)
    print(f"report: {out / REPORT_JSON}")
    print(pipeline.summary_table(report))
    print(pipeline.timing_line(report))
    print(pipeline.stages_line(report))
    return 0
