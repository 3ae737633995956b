"""Performance arithmetic: how fast decoding could be at best, from the card's bandwidth and the model's bytes.

A decode step at small batch reads every weight once and does little arithmetic per byte, so the ceiling is
``bandwidth / weight bytes`` steps per second, times the batch in tokens. KV-cache reads are left out, so the
bound is optimistic (at batch 32 x 228 positions a 7B cache adds ~3.7 GB a step to the 13.5 GB of weights).
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def memory_bandwidth(props: Any) -> float | None:
    """Bytes/s of a CUDA device from ``torch.cuda.get_device_properties``; None when the driver does not say.

    ``memory_clock_rate`` is in kHz and HBM/GDDR move data on both clock edges; ``memory_bus_width`` is in bits.
    """
    clock_khz = getattr(props, "memory_clock_rate", 0) or 0
    bus_bits = getattr(props, "memory_bus_width", 0) or 0
    if clock_khz <= 0 or bus_bits <= 0:
        return None
    return clock_khz * 1e3 * 2 * bus_bits / 8


def weight_bytes(model: Any) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def decode_bound_tokens_per_s(weights: int, bandwidth: float, batch: int) -> float:
    """New tokens/s if each decode step only had to stream the weights once at full bandwidth."""
    if weights <= 0 or bandwidth <= 0 or batch <= 0:
        raise ValueError(f"need positive weights, bandwidth and batch, got {weights}, {bandwidth}, {batch}")
    return batch * bandwidth / weights


def synced(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` followed by a CUDA sync, so a benchmark's timer stops when the GPU is done, not when the launch
    returns (a no-op on CPU)."""

    def timed(*args: Any, **kwargs: Any) -> Any:
        result = fn(*args, **kwargs)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return result

    return timed


# --- optimizer steps, timed the way training takes them (shared by the envelope benchmarks) -----------------


def peak() -> dict[str, float]:
    from harness import train

    return {k: round(v, 3) for k, v in train.peak_memory().items()}


def under_cap(gpu_profile) -> None:
    if gpu_profile:
        reserved = torch.cuda.max_memory_reserved() / 2**30
        assert reserved <= gpu_profile["cap_gib"], f"{reserved:.2f} GiB reserved over the T4 cap"


def _rows_tokens(batch) -> tuple[int, int]:
    """A batch's rows and its tokens that are not padding."""
    return len(batch["input_ids"]), int(batch["attention_mask"].sum())


def time_steps(benchmark, trainer, cfg, gpu_profile, *, warmup: int = 2, rounds: int = 8, **info) -> dict:
    """Time optimizer steps over the trainer's own batches (its sampler, its collator); rates, peak memory and
    whether activations were checkpointed into ``extra_info`` (and returned)."""
    from harness import model as models
    from harness import train

    step, model = train.stepper(trainer, cfg)
    batches = itertools.cycle(list(trainer.get_train_dataloader()))  # group_by_length order, as training sees it
    seen: list[tuple[int, int]] = []  # (rows, tokens) of every round, warm-up included
    took: list[float] = []  # seconds of every round, warm-up included: the first holds a compile's cost

    def next_batch():
        batch = next(batches)
        seen.append(_rows_tokens(batch))
        return (batch,), {}

    def timed_step(batch):
        start = time.perf_counter()
        loss = synced(step)(batch)
        took.append(time.perf_counter() - start)
        return loss

    torch.cuda.reset_peak_memory_stats()
    loss = benchmark.pedantic(timed_step, setup=next_batch, rounds=rounds, warmup_rounds=warmup, iterations=1)
    assert math.isfinite(loss) and model.training
    under_cap(gpu_profile)
    info.update(checkpointing=models.checkpointing_on(model), first_step_s=round(took[0], 3), **peak())
    if benchmark.stats and len(seen) >= warmup + rounds:
        # The last `rounds` batches: an extra profiling round (--benchmark-cprofile) comes after the timed ones
        # and stands in for the first of them, the same count of batches either way.
        rows, tokens = (sum(x) for x in zip(*seen[-rounds:], strict=True))
        total = benchmark.stats.stats.total
        info.update(tokens_per_row=tokens / rows, samples_per_s=rows / total, tokens_per_s=tokens / total)
    benchmark.extra_info.update(info)
    return info


def time_plainly(trainer, cfg, gpu_profile, *, warmup: int = 2, rounds: int = 8) -> dict[str, float]:
    """What ``time_steps`` measures, without pytest-benchmark: for a goal test run on its own."""
    from harness import model as models
    from harness import train

    step, model = train.stepper(trainer, cfg)
    batches = itertools.cycle(list(trainer.get_train_dataloader()))
    for _ in range(warmup):
        step(next(batches))
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    rows = tokens = 0
    start = time.perf_counter()
    for _ in range(rounds):
        batch = next(batches)
        batch_rows, batch_tokens = _rows_tokens(batch)
        rows, tokens = rows + batch_rows, tokens + batch_tokens
        step(batch)
    torch.cuda.synchronize()
    total = time.perf_counter() - start
    assert model.training
    under_cap(gpu_profile)
    return {"samples_per_s": rows / total, "tokens_per_s": tokens / total,
            "checkpointing": models.checkpointing_on(model), **peak()}


def trl_trainer(out: Path, base: Path, tokenizer, train_ds, cfg, lora, *, max_length: int):
    """TRL's SFTTrainer on the same 4-bit base, data (response-only loss as a completion mask), LoRA, optimizer
    and checkpointing as the harness's Trainer.

    ``Trainer.train`` switches checkpointing on when training starts, so a trainer timed step by step never
    gets it (TRL's earlier 32 GiB against the harness's 6.7 on the 7B shape): it is switched on here, the
    way the harness does, and ``time_steps`` records that it is on.
    """
    from trl import SFTConfig, SFTTrainer

    from harness import model as models
    from harness import train

    dtype = models.compute_dtype(cfg.compute_dtype)
    args = SFTConfig(
        output_dir=str(out / "trl"), per_device_train_batch_size=cfg.batch_size, max_steps=cfg.max_steps,
        learning_rate=cfg.learning_rate, lr_scheduler_type=cfg.lr_scheduler, warmup_steps=cfg.warmup_ratio,
        max_grad_norm=cfg.max_grad_norm, optim=train.optimizer_name(cfg), train_sampling_strategy="group_by_length",
        bf16=dtype == torch.bfloat16, gradient_checkpointing=cfg.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False}, max_length=max_length, packing=False,
        completion_only_loss=True, seed=cfg.seed, report_to="none", save_strategy="no",
        use_cpu=not torch.cuda.is_available(),
    )
    rows = train_ds.map(lambda r: {"completion_mask": [int(label != train.IGNORED) for label in r["labels"]]})
    trainer = SFTTrainer(model=models.load_quantized(base, cfg, dtype), args=args, processing_class=tokenizer,
                         train_dataset=rows.select_columns(["input_ids", "completion_mask"]),
                         peft_config=models.lora_config(lora))
    if cfg.gradient_checkpointing:
        models.enable_checkpointing(trainer.model)
    return trainer
