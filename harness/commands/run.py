"""``hearts run``: the main job — prepare, train (or reuse), merge, evaluate, report, gate."""

from __future__ import annotations

import argparse
from pathlib import Path

from harness import inputs
from harness.commands.eval import KIND
from harness.commands.options import add_eval_options, add_model_options, judged_report, protected, settings

HELP = "the whole job on the embedded defaults (tiny stand-in, bundled data) or your model: exit 0 when the gate passes"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_options(parser)
    add_eval_options(parser)
    parser.add_argument("--out", type=inputs.path_arg, default=Path("out"),
                        help="folder for the report: new, empty, or an earlier report (default: ./out)")
    parser.add_argument("--gate-config", type=inputs.path_arg, default=None,
                        help="gate thresholds TOML ([gate] or [tool.hearts.gate]; default: built-in)")


def run(args: argparse.Namespace) -> int:
    from harness import gate
    from harness.staging import check_out_dir

    s = settings(args)
    cfg = gate.load_config(args.gate_config)  # bad gate config fails before an hour of training
    guard = protected(s, config=args.config, gate_config=args.gate_config)
    check_out_dir(args.out, flag="--out", kind=KIND, overwrite=True, protect=guard)
    report = judged_report(s, args.started, announce=True)
    from harness import distributed, pipeline
    from harness.report import REPORT_JSON, REPORT_MD, write_report
    from harness.staging import replace_dir

    if not distributed.world().main:
        return 0  # rank 0 writes the report and gives the verdict for the launcher's whole group
    out = replace_dir(args.out, lambda tmp: write_report(tmp, report), flag="--out", kind=KIND, overwrite=True,
                      protect=guard)
    path = out / REPORT_JSON
    print(pipeline.summary_table(report))
    print(pipeline.timing_line(report))
    print(pipeline.stages_line(report))
    result = gate.evaluate(path, cfg)
    print(result.table())
    print(f"report: {path}  ({out / REPORT_MD})")
    print(result.summary())
    return 0 if result.passed else 1
