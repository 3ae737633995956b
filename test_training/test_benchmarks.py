"""Throughput of a QLoRA training step and of generation, the release way vs the original notebook's way.

pytest-benchmark targets (rates and peak memory in ``extra_info``, read by ``hearts bench`` and ``hearts gate``).
They run on CPU at stand-in sizes so CI keeps them alive, and on CUDA unchanged: each timed call ends with
``torch.cuda.synchronize()`` there, so a round measures the kernels, not their launch. Peak memory is
``torch.cuda.max_memory_allocated`` on CUDA (reset before timing) and ``ru_maxrss`` on CPU — the process's
high-water mark so far, so compare it only between runs of the same selection of tests.

Run ``pytest test_training/test_benchmarks.py --benchmark-only``; ``--benchmark-disable`` runs each body once.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from harness import generate, train
from harness.config import GenerationConfig, LoraSettings
from test_training import perf

# Sizes: big enough that a round is mostly model work, rounds enough for ~1 s of timing per benchmark on a 2-core
# CPU (3 rounds of a 25 ms one moved 20% between runs on a shared box), the file ~15 s in all.
TRAIN_BATCH = 4  # rows per step: half the tiny preset's 8, so 6 steps (1 warm-up) stay near 1 s on CPU
TRAIN_ROUNDS = 5
N_PROMPTS = 4  # the same few held-out prompts for both ways of generating
NEW_TOKENS = 16  # per prompt: the notebook way runs one 4-bit forward per token per prompt


def _reset_peak_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def _record(benchmark, device: str, *, tokens: int, samples: int) -> None:
    """Rates from the mean round, plus peak memory; nothing when benchmarking is disabled (no stats)."""
    from harness.model import resolve_device

    benchmark.extra_info.update(tokens_per_round=tokens, samples_per_round=samples, device=device)
    if benchmark.stats is None:
        return
    mean = benchmark.stats.stats.mean
    benchmark.extra_info.update(tokens_per_s=tokens / mean, samples_per_s=samples / mean,
                                **train.peak_memory(resolve_device(device)))


# --- training -----------------------------------------------------------------------------------------


def test_benchmark_qlora_training_step(benchmark, tiny_base_dir, mini_configs, mini_prepared, tmp_path) -> None:
    """One optimizer step — forward and backward through the NF4 base with checkpointing, clip, AdamW — on one batch."""
    cfg, lora, _ = mini_configs
    cfg = dataclasses.replace(cfg, batch_size=TRAIN_BATCH)
    tokenizer, prepared = mini_prepared
    trainer, _, _ = train.make_trainer(tmp_path, tiny_base_dir, tokenizer, prepared.train, cfg, lora)
    step, model = train.stepper(trainer, cfg)
    batch = next(iter(trainer.get_train_dataloader()))  # training_step moves it to the device, as in training
    tokens = int(batch["attention_mask"].sum())

    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and all(not p.any() for p in lora_b)  # LoRA's zero init, so a step shows as non-zero B
    _reset_peak_memory()
    loss = benchmark.pedantic(perf.synced(step), args=(batch,), rounds=TRAIN_ROUNDS, warmup_rounds=1, iterations=1)
    assert math.isfinite(loss)
    assert all(p.any() for p in lora_b), "the timed step did not update the adapter"
    assert model.training and all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)
    _record(benchmark, cfg.device, tokens=tokens, samples=len(batch["input_ids"]))


# --- generation ---------------------------------------------------------------------------------------


def _merged_batched_greedy(base_dir, cfg, dtype):
    """The release path: the unquantised model (a merged one has the base's shape and cost), all prompts in one
    left-padded batch, greedy."""
    from harness.model import load_base, run_device

    gen = GenerationConfig(max_new_tokens=NEW_TOKENS, batch_size=N_PROMPTS)
    model = load_base(base_dir, dtype, cfg.revision, run_device(cfg))
    return lambda tokenizer, prompts: generate.generate(model, tokenizer, prompts, gen)


def _notebook_adapter_one_at_a_time(base_dir, cfg, dtype):
    """The original notebook: the 4-bit base with the LoRA adapter unmerged (the release rank), one prompt at a
    time, seeded sampling. A fresh adapter costs what a trained one does."""
    from peft import get_peft_model

    from harness.model import load_quantized, lora_config

    gen = GenerationConfig(max_new_tokens=NEW_TOKENS, batch_size=1, do_sample=True, seed=0)
    model = get_peft_model(load_quantized(base_dir, cfg, dtype), lora_config(LoraSettings()))
    return lambda tokenizer, prompts: [generate.generate(model, tokenizer, [p], gen)[0] for p in prompts]


@pytest.mark.parametrize(
    ("way", "rounds"),  # ~25 ms vs ~200 ms a round on CPU: rounds for a comparable timing budget
    [pytest.param(_merged_batched_greedy, 20, id="merged-batched-greedy"),
     pytest.param(_notebook_adapter_one_at_a_time, 5, id="notebook-4bit-adapter-one-at-a-time-sampling")])
def test_benchmark_generation_new_tokens_per_second(benchmark, way, rounds, tiny_base_dir, mini_configs,
                                                     prompt_texts) -> None:
    from harness.model import load_tokenizer, run_dtype

    cfg = mini_configs[0]
    tokenizer = load_tokenizer(tiny_base_dir)  # own copy: generate() sets left padding, the session's stays as is
    prompts = prompt_texts[:N_PROMPTS]
    run = way(tiny_base_dir, cfg, run_dtype(cfg))
    benchmark.group = "generation"  # the two ways side by side in pytest-benchmark's table

    _reset_peak_memory()
    out = benchmark.pedantic(perf.synced(run), setup=lambda: ((tokenizer, list(prompts)), {}), rounds=rounds,
                             warmup_rounds=1, iterations=1)
    assert len(out) == N_PROMPTS and all(0 < g.new_tokens <= NEW_TOKENS for g in out)
    _record(benchmark, cfg.device, tokens=sum(g.new_tokens for g in out), samples=len(out))
