"""``hearts judge``: judge answers produced by any engine (vLLM, TGI, llama.cpp) — same checker, report, gate."""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from harness import inputs
from harness.commands.eval import KIND
from harness.errors import InputError

HELP = ("judge answers from any engine (JSON Lines: prompt or instruction, response, terminated) against the base "
        "model's answers, write the report and run the gate; exit 1 when it fails")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--answers", type=inputs.path_arg, required=True,
        help="the tuned model's answers: one JSON object a line, {prompt|instruction[, context], response"
             "[, terminated]}")
    add("--control", type=inputs.path_arg, required=True,
        help="the base model's answers to the same prompts, same format (the negative control)")
    add("--prompts", type=inputs.text_arg, default=None,
        help="the prompts answered, in order: 'bundled' or a file (default: the order of --answers)")
    add("--out", type=inputs.path_arg, default=Path("judged"),
        help="folder for the report: new, empty, or an earlier report (default: ./judged)")
    add("--gate-config", type=inputs.path_arg, default=None,
        help="gate thresholds TOML ([gate] or [tool.hearts.gate]; default: built-in)")
    add("--skip-bad-lines", action="store_true", help="skip and count malformed lines (default: stop at the first)")


def run(args: argparse.Namespace) -> int:
    from harness import answers, gate
    from harness.commands.options import check_prompts
    from harness.staging import check_out_dir

    cfg = gate.load_config(args.gate_config)
    guard = [("--answers", args.answers), ("--control", args.control), ("--prompts", args.prompts)]
    check_out_dir(args.out, flag="--out", kind=KIND, overwrite=True, protect=guard)
    if args.prompts is not None:
        check_prompts(args.prompts)
    tuned, skipped = answers.read_answers(args.answers, "--answers", skip_bad=args.skip_bad_lines)
    base, skipped_base = answers.read_answers(args.control, "--control", skip_bad=args.skip_bad_lines)
    prompts = _prompt_order(args.prompts, [g.prompt for g in tuned])
    tuned, base = _aligned(tuned, prompts, "--answers"), _aligned(base, prompts, "--control")

    from harness.pipeline import summary_table
    from harness.report import REPORT_JSON, build_report, write_report
    from harness.staging import replace_dir

    report = build_report(
        model={"base": f"answers from {args.answers}", "adapter_path": "", "merged_path": "",
               "merge_method": None},
        config={"judge": {"answers": str(args.answers), "control": str(args.control), "prompts": args.prompts,
                          "lines_skipped": {"answers": skipped, "control": skipped_base}}},
        prompts=prompts, merged=tuned, control=base)
    out = replace_dir(args.out, lambda tmp: write_report(tmp, report), flag="--out", kind=KIND, overwrite=True,
                      protect=guard)
    if skipped or skipped_base:
        print(f"skipped bad lines: {skipped} in --answers, {skipped_base} in --control")
    print(summary_table(report))
    result = gate.evaluate(out / REPORT_JSON, cfg)
    print(result.table())
    print(f"report: {out / REPORT_JSON}")
    print(result.summary())
    return 0 if result.passed else 1


def _prompt_order(source: str | None, answered: list[str]) -> list[str]:
    """The prompts to judge, in order: ``--prompts``' (bundled or a file), else the answers' own."""
    if source is None:
        repeated = sorted(p for p, n in Counter(answered).items() if n > 1)
        if repeated:
            raise InputError(f"--answers: {len(repeated)} prompts are answered more than once (e.g. "
                             f"{repeated[0][-60:]!r}); give --prompts, or keep one answer a prompt")
        return answered
    from harness.data import load_eval_prompts
    from harness.generate import prompts_for

    return prompts_for(load_eval_prompts(source))


def _aligned(got: list, prompts: list[str], flag: str) -> list:
    """One answer per prompt, in the prompts' order; a missing or extra prompt is named."""
    by_prompt = {g.prompt: g for g in got}
    missing = [p for p in prompts if p not in by_prompt]
    if missing:
        raise InputError(f"{flag}: no answer to {len(missing)} of the {len(prompts)} prompts (e.g. "
                         f"{missing[0][-60:]!r})")
    extra = len(set(by_prompt) - set(prompts))
    if extra:
        raise InputError(f"{flag}: {extra} answers are to prompts not in --prompts")
    return [by_prompt[p] for p in prompts]
