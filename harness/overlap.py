"""Stage 7, overlapped: the 4-bit model answers in a child process while this one compiles and runs the merge.

The 4-bit model decodes eagerly (transformers compiles no bitsandbytes model) and is bound by the host's kernel
launches; the merged model's first decode is mostly a compile (Python and Triton on the CPU, the GPU idle). One
after the other they were most of a cold evaluation (SmolLM2-135M, 316 prompts, H200: 43 s + 40 s of 88 s).
Side by side they share a GPU that neither keeps busy.

Only where it changes no batch plan: on CUDA, in one process (a launcher's ranks already share the work), and
where both models and a KV cache for every prompt fit at once in the share of free memory one serial batch may
take (``overlap_batch``). A serial evaluation answers every prompt in one batch there too. Eager decoding then
gives the serial answers (tested, CPU and CUDA). A *compiled* decode need not: beside the busy child, the merged
model's greedy answers differed on 1 of 4 prompts from its serial ones in the same process (H200, SmolLM2, bf16,
2026-12-02), while the child's 4-bit answers were the serial ones. The likely cause is inductor choosing kernel
configs by timing them on the GPU (pytorch/pytorch#189121: near-tied winners flip numerics), which a second
process disturbs; ``torch._inductor.config.deterministic`` skips those timings, not yet measured here. Hence
``[eval] overlap`` is off by default. Everything else — the cache, the report — stays in this process.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path

import torch

from harness import distributed, generate, merge
from harness import model as models
from harness.config import GenerationConfig, TrainConfig
from harness.generate import Generation

# What the child sends back: the 4-bit model's answers, its logits on its first few answers (None when not
# asked for) and the seconds its generation took.
AdapterOutputs = tuple[list[Generation], torch.Tensor | None, float]


def overlap_batch(free_bytes: float, weight_bytes: int, per_row_bytes: int, n_prompts: int) -> int | None:
    """The batch both models answer in side by side — every prompt in one — or None where they do not fit.

    Two models' weights and two whole-set KV caches must fit the share of free memory (``KV_MEMORY_SHARE``) that
    one serial batch's KV cache may take; then a serial run, with one model's weights loaded, fits every prompt
    in one batch too (``generate.fitting_batch``), so side by side changes no batch plan."""
    if n_prompts < 1 or per_row_bytes <= 0:
        return None
    need = 2 * weight_bytes + 2 * n_prompts * per_row_bytes
    return n_prompts if need <= generate.KV_MEMORY_SHARE * free_bytes else None


def planned_batch(merged_dir: Path, tokenizer, prompts: Sequence[str], cfg: GenerationConfig,
                  device: torch.device, dtype: torch.dtype) -> int | None:
    """The batch size the two models answer in side by side on this run, or None: answer one after the other."""
    if device.type != "cuda" or distributed.world().distributed or not prompts:
        return None
    from transformers import AutoConfig

    positions = max(len(ids) for ids in tokenizer(list(prompts))["input_ids"]) + cfg.max_new_tokens
    per_row = generate.kv_cache_bytes(AutoConfig.from_pretrained(merged_dir), positions, dtype.itemsize)
    # The merged model in the run's dtype: at least the 4-bit model's size too.
    weights = sum(f.stat().st_size for f in merged_dir.glob("*.safetensors"))
    free, _ = torch.cuda.mem_get_info(device)
    rows = min(cfg.batch_size or len(prompts), len(prompts))  # a batch size the user set is kept
    fits = overlap_batch(free, weights, per_row, rows)
    return None if fits is None else cfg.batch_size or fits


def start(base: Path | str, adapter: Path, train: TrainConfig, dtype: torch.dtype, prompts: Sequence[str],
          cfg: GenerationConfig, fidelity_texts: int) -> tuple[ProcessPoolExecutor, Future[AdapterOutputs]]:
    """The 4-bit model's answers (and its logits on its first ``fidelity_texts`` answers), in a new process.

    Spawned, not forked: a forked child of a process that has touched CUDA cannot use it."""
    pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
    return pool, pool.submit(adapter_outputs, base, adapter, train, dtype, list(prompts), cfg, fidelity_texts)


def adapter_outputs(base: Path | str, adapter: Path, train: TrainConfig, dtype: torch.dtype, prompts: list[str],
                    cfg: GenerationConfig, fidelity_texts: int) -> AdapterOutputs:
    """What the child computes: load the 4-bit model, answer, and teacher-force its first few answers."""
    models.quiet_libraries()
    lm = merge.load_adapter_model(base, adapter, train, dtype)
    tokenizer = models.load_tokenizer(adapter)
    start_time = time.perf_counter()
    made = generate.generate(lm, tokenizer, prompts, cfg)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start_time
    reference = None
    if fidelity_texts:
        probe = merge.teacher_forced(tokenizer, prompts[:fidelity_texts], [g.response for g in made])
        reference = merge.logits_on(lm, probe)
    return made, reference, seconds
