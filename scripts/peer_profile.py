"""The harness's QLoRA step against TRL's at the recipe's batch 8 (#12): a torch.profiler window of the 7B
shape's step, batch 8, bf16, checkpointed, for the harness (``compile_layers``; each layer's blocks compiled, as
``compile_layers`` did before; eager) and TRL 1.16's SFTTrainer, each built as the envelope builds it
(``test_envelope_gpu._peer_trainer``), in one process, one after the other, over the same batches.

Measured on an H100 (2026-12-07, README's 7B section, ``docs/perf/h100-7b-b8-*``): the host sets each step's
pace (kernels fill 46-64% of it); compiled one region a layer 1.82x TRL's samples/s, its blocks one by one 1.30x,
eager 1.08x. The peers run in ``PEERS`` order in one process: the first pays the compile, and its allocator keeps
what the compile reserved (``peak_reserved_gib``). ``host_cpu_step_s`` is the profiled window's self CPU time of
every thread (autograd's backward thread too) a step, the profiler's own cost included: a comparison between
peers, not the host time of an unprofiled step.

    scripts/gpu-measure.sh peer-profile     # = python3 -m scripts.peer_profile OUT_DIR (from the root)

Per peer: samples/s over ``ROUNDS`` steps after ``WARMUP`` (compile, allocator), the CUDA syncs one step makes
(``torch.cuda.set_sync_debug_mode``, by the line that made them), and a profile of ``PROFILED`` steps: its wall
time, the GPU's busy time (the kernels' self time; a step whose GPU is busy for less than its wall time is
bound by the host), kernel launches a step, and the top tables by self CPU and self CUDA time. Written to
OUT_DIR/peer-profile.json and OUT_DIR/<card>-7b-b8-<peer>-step-by-{cpu,cuda}.txt.
"""

from __future__ import annotations

import collections
import dataclasses
import gc
import itertools
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from harness import data, train
from harness import model as models
from harness.config import recipe_configs
from harness.standin import shape_7b_base
from test_training import perf

BASE, SEQ, BATCH = "llama2-7b-shape", 512, 8  # the envelope's: the original's max length, the recipe's batch
WARMUP, ROUNDS, PROFILED = 3, 16, 3
# The compiled harness first (the one the goal is held for); "-blocks" is how compile_layers compiled a
# checkpointed layer before (each block, a region of its own), for the side-by-side.
PEERS = ("harness-compiled", "harness-compiled-blocks", "trl", "harness")
LAUNCHES = ("cudaLaunchKernel", "cuLaunchKernel", "cuLaunchKernelEx", "cudaLaunchKernelExC")


def peer_trainer(kind: str, shape: Path, tokenizer, tmp: Path):
    cfg, lora, data_cfg = recipe_configs("default", BASE, {"max_length": SEQ, "overflow": "cut"},
                                         compute_dtype="bf16")
    cfg = dataclasses.replace(cfg, batch_size=BATCH, gradient_checkpointing=True,
                              compile_layers=kind == "harness-compiled")
    prepared = data.prepare(data_cfg, tokenizer, cache_dir=tmp / "hf")
    if kind == "trl":
        return perf.trl_trainer(tmp, shape, tokenizer, prepared.train, cfg, lora, max_length=SEQ), cfg
    trainer = train.make_trainer(tmp, shape, tokenizer, prepared.train, cfg, lora)[0]
    if kind == "harness-compiled-blocks":
        compile_blocks(trainer.model)
    return trainer, cfg


def compile_blocks(model) -> None:
    """``model.compile_layers`` on a checkpointed model until 2026-12-07: each block of each layer compiled."""
    inner = models.unwrapped(model)
    inner.enable_input_require_grads()
    for layer in models.decoder_layers(inner):
        for block in layer.children():
            block.compile(dynamic=True)


def timed(step, batches, rounds: int) -> tuple[float, int, int]:
    """(seconds, rows, response-or-not tokens) of ``rounds`` steps, synchronised."""
    rows = tokens = 0
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(rounds):
        batch = next(batches)
        rows, tokens = rows + len(batch["input_ids"]), tokens + int(batch["attention_mask"].sum())
        step(batch)
    torch.cuda.synchronize()
    return time.perf_counter() - start, rows, tokens


def syncs_of_one_step(step, batches) -> dict[str, int]:
    """The CUDA syncs one step makes, counted by the source line that made each (the step's closing
    ``float(loss)`` is one, for every peer alike)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step(next(batches))
        finally:
            torch.cuda.set_sync_debug_mode("default")
    where = collections.Counter(f"{Path(w.filename).name}:{w.lineno}" for w in caught
                                if "synchronizing" in str(w.message))
    return dict(where.most_common())


def profiled(step, batches, out: Path, stem: str) -> dict[str, float]:
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        start = time.perf_counter()
        for _ in range(PROFILED):
            step(next(batches))
        torch.cuda.synchronize()
        wall = time.perf_counter() - start
    events = prof.key_averages()
    for key in ("self_cpu_time_total", "self_cuda_time_total"):
        table = events.table(sort_by=key, row_limit=15, max_name_column_width=70)
        (out / f"{stem}-step-by-{key.split('_')[1]}.txt").write_text(table)
    busy_us = sum(e.self_device_time_total for e in events
                  if e.device_type == DeviceType.CUDA and not getattr(e, "is_user_annotation", False))
    launches = sum(e.count for e in events if e.key in LAUNCHES)
    return {"profiled_step_s": wall / PROFILED, "gpu_busy_step_s": busy_us / 1e6 / PROFILED,
            "gpu_busy_share": busy_us / 1e6 / wall, "kernel_launches_per_step": launches / PROFILED,
            "host_cpu_step_s": events.self_cpu_time_total / 1e6 / PROFILED}


def measure(kind: str, shape: Path, tokenizer, out: Path, card: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        trainer, cfg = peer_trainer(kind, shape, tokenizer, Path(tmp))
        step, model = train.stepper(trainer, cfg)
        batches = itertools.cycle(list(trainer.get_train_dataloader()))  # the sampler's order, as training sees it
        warm, _, _ = timed(step, batches, WARMUP)
        torch.cuda.reset_peak_memory_stats()
        seconds, rows, tokens = timed(step, batches, ROUNDS)
        row = {"peer": kind, "warmup_s": round(warm, 2), "samples_per_s": rows / seconds,
               "tokens_per_s": tokens / seconds, "step_s": seconds / ROUNDS,
               "checkpointing": models.checkpointing_on(model), **perf.peak(),
               "syncs_per_step": syncs_of_one_step(step, batches),
               **profiled(step, batches, out, f"{card}-7b-b{BATCH}-{kind}")}
        del trainer, model, step
    gc.collect()
    torch.cuda.empty_cache()
    return row


def main(out: Path) -> None:
    import bitsandbytes
    import peft
    import transformers
    import trl

    out.mkdir(parents=True, exist_ok=True)
    card = torch.cuda.get_device_name(0).removeprefix("NVIDIA ").split()[0].lower()  # "h100" of "NVIDIA H100 80GB HBM3"
    shape = shape_7b_base(Path(".hearts-cache"))
    tokenizer = models.load_tokenizer(shape)
    peers: list[dict] = []
    report = {"device": torch.cuda.get_device_name(0), "batch": BATCH, "max_length": SEQ,
              "versions": {m.__name__: m.__version__ for m in (torch, transformers, peft, bitsandbytes, trl)},
              "peers": peers}
    for kind in PEERS:
        peers.append(measure(kind, shape, tokenizer, out, card))
        (out / "peer-profile.json").write_text(json.dumps(report, indent=1) + "\n")  # each peer as it is done
        print(json.dumps(peers[-1], indent=1), flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
