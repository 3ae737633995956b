"""Does a host-bound eager decode go faster split across processes on one GPU? SmolLM2's held-out prompts, greedy,
the 4-bit model (a fresh, zero-B adapter: the kernels of a trained one, the base's answers) and the bf16 base:
one batch in one process, then K concurrent processes with a 1/K shard each (length-interleaved), started
together once all have loaded; a torch.profiler window of the one-batch decode (GPU busy share).

    scripts/gpu-measure.sh decode-shards      # = python3 -m scripts.decode_shards main OUT_DIR (from the root)
    python3 -m scripts.decode_shards profile OUT_DIR   # the 4-bit model's profile only

Measured on the H200 (2026-12-02, torch 2.11, transformers 5.24, bitsandbytes 0.50.2; README, "Tried and
dropped"): no. The bf16 base took 10.2 s in one batch and 10.0 s as two processes; the 4-bit model 33.5 s as two
and 27.6 s as four, against 25.8-34.1 s in one batch in other runs; and the shards' greedy text matched the one
batch's on 244 (two) and 211 (four) of 316 prompts: the batch size picks the GEMM kernels.
EXP_BASE (default smollm2-135m) and EXP_N (prompts) shrink it for a dry run on a CPU.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity

from harness import generate, merge, model
from scripts.measuring import Setup, setup

SYNC = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)


def measured() -> Setup:
    run = setup(os.environ.get("EXP_BASE", "smollm2-135m"), Path(tempfile.gettempdir()))
    return dataclasses.replace(run, prompts=run.prompts[: int(os.environ.get("EXP_N", "100000"))])


def warm(kind: str, run: Setup):
    """The ``kind`` model, loaded and past its first decode (CUDA's and bitsandbytes' warm-up is no variant's)."""
    s, dtype = run.s, run.dtype
    if kind == "4bit":
        from peft import get_peft_model

        lm = merge.lora_in(get_peft_model(model.load_quantized(run.base, s.train, dtype), model.lora_config(s.lora)),
                           dtype)
    else:
        lm = model.load_base(run.base, dtype, None, model.run_device(s.train))
    generate.generate(lm.eval(), run.tokenizer, run.prompts[:8], s.generation)
    SYNC()
    return lm


def shard(prompts, tok, k, i):
    order = sorted(range(len(prompts)), key=lambda j: len(tok(prompts[j])["input_ids"]))
    return sorted(order[i::k])


def worker(kind, k, i, out):
    run = measured()
    s, tok, prompts = run.s, run.tokenizer, run.prompts
    lm = warm(kind, run)
    idx = shard(prompts, tok, k, i)
    (out / f"ready-{kind}-{k}-{i}").write_text("")
    while not (out / f"go-{kind}-{k}").exists():
        time.sleep(0.01)
    start = time.perf_counter()
    made = generate.generate(lm, tok, [prompts[j] for j in idx], s.generation)
    SYNC()
    secs = time.perf_counter() - start
    (out / f"done-{kind}-{k}-{i}.json").write_text(json.dumps(
        {"seconds": secs, "end": time.time(), "idx": idx, "texts": [g.response for g in made],
         "tokens": sum(g.new_tokens for g in made)}))


def concurrent(kind, k, reference):
    # The workers' ready/go/done files live in a scratch folder: a runner may return only so many files.
    out = Path(tempfile.mkdtemp(prefix=f"shards-{kind}-{k}-"))
    procs = [subprocess.Popen([sys.executable, "-m", "scripts.decode_shards", "worker", kind, str(k), str(i), str(out)])
             for i in range(k)]
    while not all((out / f"ready-{kind}-{k}-{i}").exists() for i in range(k)):
        time.sleep(0.05)
        if any(p.poll() not in (None, 0) for p in procs):
            return {"error": "a worker failed"}
    start = time.time()
    (out / f"go-{kind}-{k}").write_text("")
    for p in procs:
        p.wait()
    parts = [json.loads((out / f"done-{kind}-{k}-{i}.json").read_text()) for i in range(k)]
    shutil.rmtree(out)
    wall = max(p["end"] for p in parts) - start
    same = sum(reference[j] == t for part in parts for j, t in zip(part["idx"], part["texts"], strict=True))
    return {"k": k, "wall_s": round(wall, 2), "each_s": [round(p["seconds"], 2) for p in parts],
            "tokens": sum(p["tokens"] for p in parts), "same_text_as_one_batch": same}


def profile(lm, tok, prompts, s, out, kind):
    cfg = dataclasses.replace(s.generation, max_new_tokens=48)
    generate.generate(lm, tok, prompts, dataclasses.replace(cfg, max_new_tokens=4))
    SYNC()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with torch.profiler.profile(activities=activities) as prof:
        start = time.perf_counter()
        generate.generate(lm, tok, prompts, cfg)
        SYNC()
        wall = time.perf_counter() - start
    avg = prof.key_averages()
    (out / f"profile-{kind}-by-cuda.txt").write_text(avg.table(sort_by="self_cuda_time_total", row_limit=20))
    (out / f"profile-{kind}-by-cpu.txt").write_text(avg.table(sort_by="self_cpu_time_total", row_limit=20))
    kernels = sum(e.self_device_time_total for e in avg if e.device_type == torch.autograd.DeviceType.CUDA)
    return {"profiled_wall_s": round(wall, 3), "kernel_s": round(kernels / 1e6, 3),
            "gpu_busy": round(kernels / 1e6 / wall, 3)}


def main(out):
    run = measured()
    s, tok, prompts = run.s, run.tokenizer, run.prompts
    rows = {"prompts": len(prompts)}
    for kind in ("4bit", "bf16"):
        lm = warm(kind, run)
        made, secs = generate.timed(lambda lm=lm: generate.generate(lm, tok, prompts, s.generation))
        row = {"one_batch_s": round(secs, 2), "tokens": sum(g.new_tokens for g in made)}
        row.update(profile(lm, tok, prompts, s, out, kind))
        reference = [g.response for g in made]
        del lm
        torch.cuda.empty_cache()
        print(kind, json.dumps(row), flush=True)
        for k in ((2, 4) if kind == "4bit" else (2,)):
            row[f"k{k}"] = concurrent(kind, k, reference)
            print(kind, k, json.dumps(row[f"k{k}"]), flush=True)
        rows[kind] = row
        (out / "shards.json").write_text(json.dumps(rows, indent=1) + "\n")
    print(json.dumps(rows, indent=1))


def profile_only(out):
    run = measured()
    row = profile(warm("4bit", run), run.tokenizer, run.prompts, run.s, out, "4bit")
    (out / "profile-4bit.json").write_text(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "main":
        main(Path(args[0]))
    elif mode == "profile":
        profile_only(Path(args[0]))
    else:
        worker(args[0], int(args[1]), int(args[2]), Path(args[3]))
