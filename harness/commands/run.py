"""``hearts run``: the main job — prepare, train (or reuse), merge, evaluate, report, gate."""

from __future__ import annotations

import argparse
from pathlib import Path

from harness.commands.options import add_model_options, settings

HELP = "the whole job on the embedded defaults (tiny stand-in, bundled data) or your model: exit 0 when the gate passes"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_options(parser)
    parser.add_argument("--out", type=Path, default=Path("out"), help="folder for the report (default: ./out)")
    parser.add_argument("--gate-config", type=Path, default=None,
                        help="gate thresholds TOML ([gate] or [tool.hearts.gate]; default: built-in)")


def run(args: argparse.Namespace) -> int:
    from harness import evaluation, gate, pipeline
    from harness.report import write_report

    s = settings(args)
    cfg = gate.load_config(args.gate_config)  # bad gate config fails before an hour of training
    adapter, merged_dir = pipeline.train_and_merge(s)
    print(f"adapter: {adapter.path} ({'trained now' if adapter.built_now else 'from the cache'})")
    print(f"merged:  {merged_dir}")
    report = evaluation.evaluate(s, adapter, merged_dir, progress=True).report
    path = write_report(args.out, report)
    print(pipeline.summary_table(report))
    result = gate.evaluate(path, cfg)
    print(result.table())
    print(f"report: {path}  ({path.parent / 'report.md'})")
    print(result.summary())
    return 0 if result.passed else 1
