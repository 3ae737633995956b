"""The whole job, stage by stage: prepare → train (or reuse) → merge → generate → judge → report → gate.

``hearts run`` is this module; ``hearts eval`` is its last half. Every artifact comes from the cache when its
inputs have not changed, so a second run only evaluates.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path
from typing import Any

from harness import data, generate, merge, model, train
from harness.config import RunSettings


def evaluate(s: RunSettings, adapter: train.TrainedAdapter, merged_dir: Path, *, prompts_source: str = "bundled",
             with_adapter: bool = True) -> dict[str, Any]:
    """Judge the merged model, the base (negative control) and, optionally, the unmerged 4-bit adapter."""
    from harness.report import build_report

    dtype = model.compute_dtype(s.train.compute_dtype)
    tokenizer = model.load_tokenizer(adapter.path)
    prompts = generate.prompts_for(data.load_eval_prompts(prompts_source))
    run = functools.partial(generate.generate_and_release, tokenizer=tokenizer, prompts=prompts,
                            cfg=s.generation, progress=True)
    merged = run(merge.load_merged(merged_dir, dtype))
    control = run(model.load_base(adapter.base, dtype, s.train.revision))
    unmerged = run(merge.load_adapter_model(adapter.base, adapter.path, s.train, dtype)) if with_adapter else None
    return build_report(
        # absolute: `hearts upload` reads these from wherever the report is, not from where eval ran
        model={"base": s.train.base_model, "base_resolved": _absolute(adapter.base),
               "adapter_path": _absolute(adapter.path), "merged_path": _absolute(merged_dir),
               "compute_dtype": model.dtype_name(dtype)},
        config={name: dataclasses.asdict(getattr(s, name)) for name in ("train", "lora", "data", "generation")},
        prompts=prompts, merged=merged, control=control, adapter=unmerged,
        training=_read_json(adapter.path / train.METRICS), data_stats=_read_json(adapter.path / "data_stats.json"),
    )


def train_and_merge(s: RunSettings) -> tuple[train.TrainedAdapter, Path]:
    adapter = train.adapter_for(s.artifacts, s.train, s.lora, s.data, retrain=s.retrain)
    dtype = model.compute_dtype(s.train.compute_dtype)
    return adapter, merge.merged_for(s.artifacts, adapter.path, adapter.base, dtype, s.train.revision)


def _absolute(path: Path | str) -> str:
    return str(path.resolve()) if isinstance(path, Path) else path  # a Hub id stays as it is


def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


SUMMARY_CHECKS = ("single_emoji", "in_list", "between_every_word", "terminated", "malformed", "template_leak")


def summary_table(report: dict[str, Any]) -> str:
    """Merged model vs base control, one row per check, with Wilson intervals."""

    def cell(m: dict[str, Any] | None) -> str:
        return "n/a" if m is None else f"{m['rate']:.3f} [{m['ci_low']:.3f}, {m['ci_high']:.3f}] ({m['k']}/{m['n']})"

    rows = [("check", "merged model", "base (control)")]
    rows += [(c, cell(report["metrics"].get(c)), cell(report["control"]["metrics"].get(c))) for c in SUMMARY_CHECKS]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    used = sum(1 for n in report["hearts"].values() if n)
    lines.append(f"hearts used: {used} of {len(report['hearts'])}  " + " ".join(
        f"{h}{n}" for h, n in report["hearts"].items()))
    return "\n".join(lines)
