"""Stage 9: evaluation — every model of a run answers the held-out prompts, is judged, and the report is built.

``evaluate`` is the one way to do it: ``hearts eval``, ``hearts run`` and the test fixtures all call it. Models
load one at a time and each is dropped before the next, in the order that lets a later one use what an earlier
one left behind:

1. the 4-bit base + adapter, as trained (``[eval] with_adapter``): its answers, for the merged model's verdict
   agreement, and its logits on a few of those answers, the reference for the merge's logit fidelity;
2. the merged model, the release: its answers, and its logits on the same inputs;
3. the base model, the negative control: its answers, then its NLL of both answer sets (capability retention).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

from harness import data, generate, merge, model, retention
from harness.config import EvalConfig, RunSettings
from harness.generate import Generation
from harness.report import build_report
from harness.train import METRICS, TrainedAdapter

FIDELITY_PROMPTS = 4  # teacher-forced answers the merge's logits are compared on: enough positions, little memory
CONFIG_TABLES = ("train", "lora", "data", "merge", "generation", "eval")


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """Every model's answers on the same prompts, and the report built from them."""

    prompts: list[str]
    merged: list[Generation]
    control: list[Generation]
    adapter: list[Generation] | None
    report: dict[str, Any]


def held_out_prompts(cfg: EvalConfig) -> list[str]:
    """The prompt texts of the evaluation set (``cfg.prompts``, the first ``cfg.max_prompts``)."""
    return generate.prompts_for(data.load_eval_prompts(cfg.prompts)[: cfg.max_prompts])


def evaluate(s: RunSettings, adapter: TrainedAdapter, merged_dir: Path, *, progress: bool = False) -> Evaluation:
    """Generate with every model of the run, judge, measure fidelity and retention, and build the report."""
    dtype, device = model.run_dtype(s.train), model.run_device(s.train)
    tokenizer = model.load_tokenizer(adapter.path)
    prompts = held_out_prompts(s.eval)

    unmerged, reference, probe = None, None, None
    if s.eval.with_adapter:
        lm = merge.load_adapter_model(adapter.base, adapter.path, s.train, dtype)
        unmerged = generate.generate(lm, tokenizer, prompts, s.generation, progress)
        probe = _teacher_forced(tokenizer, prompts, unmerged)
        reference = merge.logits_on(lm, probe)
        del lm
        _release_memory()
    lm = merge.load_merged(merged_dir, dtype, device)
    merged = generate.generate(lm, tokenizer, prompts, s.generation, progress)
    fidelity = None if probe is None else merge.compare_logits(reference, merge.logits_on(lm, probe))
    del lm, reference
    _release_memory()
    base = model.load_base(adapter.base, dtype, s.train.revision, device)
    control = generate.generate(base, tokenizer, prompts, s.generation, progress)
    kept = retention.measure(base, tokenizer, prompts, [g.response for g in merged], [g.response for g in control])
    del base
    _release_memory()
    report = build_report(
        # absolute: `hearts upload` reads these from wherever the report is, not from where eval ran
        model={"base": s.train.base_model, "base_resolved": _absolute(adapter.base),
               "adapter_path": _absolute(adapter.path), "merged_path": _absolute(merged_dir),
               "merge_method": s.merge.method, "compute_dtype": model.dtype_name(dtype)},
        config={name: dataclasses.asdict(getattr(s, name)) for name in CONFIG_TABLES},
        prompts=prompts, merged=merged, control=control, adapter=unmerged, fidelity=fidelity, retention=kept,
        training=_read_json(adapter.path / METRICS), data_stats=_read_json(adapter.path / "data_stats.json"),
    )
    return Evaluation(prompts, merged, control, unmerged, report)


def _teacher_forced(tokenizer, prompts: list[str], answers: list[Generation]) -> dict[str, torch.Tensor]:
    """The first few prompts with the trained model's own answers, right-padded, for the logit comparison."""
    tokenizer.padding_side = "right"
    texts = [p + g.response for p, g in zip(prompts[:FIDELITY_PROMPTS], answers, strict=False)]
    return tokenizer(texts, return_tensors="pt", padding=True)


def _release_memory() -> None:
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _absolute(path: Path | str) -> str:
    return str(path.resolve()) if isinstance(path, Path) else path  # a Hub id stays as it is


def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None
