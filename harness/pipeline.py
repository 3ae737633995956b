"""The whole job, stage by stage: prepare → train (or reuse) → merge → evaluate (generate, judge, report) → gate.

``hearts run`` is this module; ``hearts eval`` is its last half. Every artifact comes from the cache when its
inputs have not changed, so a second run only evaluates.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from harness import checks, merge, model, train
from harness.config import RunSettings
from harness.evaluation import Stages


def started_stages(started: float) -> Stages:
    """A command's stage timing, begun with what it spent since ``started`` (``time.perf_counter()``): importing
    the libraries and reading its settings."""
    stages = Stages()
    stages.add("imports and settings", time.perf_counter() - started)
    return stages


def train_and_merge(s: RunSettings) -> tuple[train.TrainedAdapter, Path]:
    adapter = train.adapter_for(s.artifacts, s.train, s.lora, s.data, retrain=s.retrain)
    dtype = model.run_dtype(s.train)
    return adapter, merge.merged_for(s.artifacts, adapter.path, adapter.base, s.train, dtype, s.merge.method)


def summary_table(report: dict[str, Any]) -> str:
    """Merged model vs base control, one row per check, with Wilson intervals."""

    def cell(m: dict[str, Any] | None) -> str:
        return "n/a" if m is None else f"{m['rate']:.3f} [{m['ci_low']:.3f}, {m['ci_high']:.3f}] ({m['k']}/{m['n']})"

    rows = [("check", "merged model", "base (control)")]
    rows += [(c, cell(report["metrics"].get(c)), cell(report["control"]["metrics"].get(c))) for c in checks.NAMES]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    used = sum(1 for n in report["hearts"].values() if n)
    lines.append(f"hearts used: {used} of {len(report['hearts'])}  " + " ".join(
        f"{h}{n}" for h, n in report["hearts"].items()))
    return "\n".join(lines)


def timing_line(report: dict[str, Any]) -> str:
    """How long each answer set took to generate in this run (cached ones are not listed)."""
    timing = report.get("generation_timing") or {}
    if not timing:
        return "generation: every answer set came from the cache"
    parts = [f"{name} {t['seconds']:.1f} s ({t['tokens_per_s']:,.0f} new tok/s"
             + (f", beside {t['beside']} in another process)" if "beside" in t else ")") for name, t in timing.items()]
    # Side by side, two sets' seconds overlap: their sum is work done, not time waited.
    total = sum(t["seconds"] for t in timing.values())
    return f"generation: {', '.join(parts)}; total {total:.1f} s" + (" of generation work" if any(
        "beside" in t for t in timing.values()) else "")


def stages_line(report: dict[str, Any]) -> str:
    """Where the command's time went, stage by stage, in the order the stages ran (the report's ``stage_timing``)."""
    stages = report.get("stage_timing") or {}
    return "time: " + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in stages.items()) + (
        f"; total {sum(stages.values()):.1f} s before writing the report")
