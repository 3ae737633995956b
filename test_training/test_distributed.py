"""Several processes, one run: ``torchrun`` ranks on this CPU (gloo) train one adapter and share one evaluation.

Every run here is the real CLI under ``python -m torch.distributed.run --standalone`` (what a user types as
``torchrun``), on the tiny stand-in with a few steps: these tests prove the mechanics — data-parallel gradients,
rank 0's cache entry, sharded generation — not the behaviour. The GPU figures (tokens/s on 1, 2, 4 GPUs) need
a multi-GPU runner.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import load_file

from harness import cache, distributed, train
from harness.cli import main
from harness.config import TrainConfig
from harness.errors import InputError

RANKS = 2
# Two ranks of 4 rows against one process of 8: the same global batch, so the same gradients up to float
# summation order. Measured on this CPU: 6.5e-7 relative L2 over lora_B after 6 steps.
TOLERANCE = 1e-4
MINI = """
[train]
device = "cpu"
max_steps = {steps}
warmup_ratio = 0.0
batch_size = {batch}
group_by_length = false     # the length-grouped sampler groups per rank; random order is one permutation
gradient_checkpointing = false
[lora]
r = 8
dropout = 0.0               # dropout masks are drawn per rank: with them no two runs are comparable
[data]
max_rows = 48
[eval]
max_prompts = 9             # 5 prompts for rank 0, 4 for rank 1
"""
REPORT_PER_RUN = {"created", "environment", "generation_timing", "stage_timing"}  # what differs between any two runs


@pytest.fixture
def ranks_cache(tmp_path: Path, tiny_base_dir: Path) -> Path:
    """An artifacts folder of this test's own holding only the (cached) tiny stand-in."""
    root = tmp_path / "artifacts"
    shutil.copytree(tiny_base_dir, root / tiny_base_dir.parent.name / tiny_base_dir.name)
    return root


def mini_config(tmp_path: Path, *, batch: int = 8, steps: int = 4, name: str = "mini.toml") -> Path:
    path = tmp_path / name
    path.write_text(MINI.format(batch=batch, steps=steps))
    return path


def torchrun(*args: str, ranks: int = RANKS, log: Path | None = None):
    """``torchrun --standalone --nproc-per-node RANKS -m harness.cli ARGS`` (one thread per rank: 2 cores);
    with ``log``, started in the background, its output into that file."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}",
           "-m", "harness.cli", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if log is not None:
        with open(log, "w") as out:  # a file, not a pipe nobody reads while the test waits
            return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def rank_process(launcher: subprocess.Popen, rank: int) -> psutil.Process | None:
    """The launcher's worker process of ``rank`` (by the RANK torchrun gives it), if it is running."""
    for child in psutil.Process(launcher.pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):  # gone, a zombie, or not ours to read
            if child.environ().get("RANK") == str(rank):
                return child
    return None


def lora_b(adapter: Path) -> dict:
    weights = load_file(adapter / "adapter_model.safetensors")
    return {k: v for k, v in weights.items() if "lora_B" in k}  # zero at init: all of it was learned


def relative_l2(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    num = sum(float(((a[k] - b[k]) ** 2).sum()) for k in a)
    return (num / sum(float((b[k] ** 2).sum()) for k in a)) ** 0.5


def entries(root: Path) -> list[Path]:
    folder = root / "adapter"
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".")) if folder.is_dir() else []


def test_two_ranks_train_the_adapter_one_process_trains_with_the_same_global_batch(ranks_cache, tmp_path):
    cfg = mini_config(tmp_path)
    done = torchrun("train", "--config", str(cfg), "--artifacts-dir", str(ranks_cache))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert done.stdout.count("adapter: ") == 1, "rank 0 alone reports"
    [shared] = entries(ranks_cache)
    assert cache.is_complete(shared)
    assert json.loads((shared / train.METRICS).read_text())["processes"] == RANKS
    leftovers = [p.name for p in (ranks_cache / "adapter").iterdir() if p.name.startswith(".tmp-")]
    assert leftovers == [], "rank 0 swapped its build in and left no temp folder"

    alone = tmp_path / "alone"
    shutil.copytree(ranks_cache / "standin-tiny", alone / "standin-tiny")
    assert main(["train", "--config", str(cfg), "--artifacts-dir", str(alone)]) == 0
    [single] = entries(alone)
    assert single.name == shared.name, "one recipe, one cache key, however many processes train it"
    assert json.loads((single / train.METRICS).read_text())["processes"] == 1
    assert relative_l2(lora_b(shared), lora_b(single)) < TOLERANCE

    # Negative control: the comparison can fail. Another global batch (4 rows a step) trains another adapter.
    other = tmp_path / "other"
    shutil.copytree(ranks_cache / "standin-tiny", other / "standin-tiny")
    assert main(["train", "--config", str(mini_config(tmp_path, batch=4, name="b4.toml")),
                 "--artifacts-dir", str(other)]) == 0
    [smaller] = entries(other)
    assert relative_l2(lora_b(smaller), lora_b(single)) > 100 * TOLERANCE


def test_the_ranks_reuse_a_cached_adapter_and_give_the_single_process_report(ranks_cache, tmp_path):
    cfg = mini_config(tmp_path)
    out_one, out_ranks = tmp_path / "one", tmp_path / "ranks"
    # One process trains and judges; the ranks then judge the same cached adapter, generating anew. The same
    # thread count as each rank's, so that float reductions (NLL, logits) run in the same order.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        code = main(["eval", "--config", str(cfg), "--artifacts-dir", str(ranks_cache), "--no-generation-cache",
                     "--out", str(out_one)])
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    [adapter] = entries(ranks_cache)
    done = torchrun("eval", "--config", str(cfg), "--artifacts-dir", str(ranks_cache), "--no-generation-cache",
                    "--out", str(out_ranks))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert entries(ranks_cache) == [adapter], "the ranks trained nothing"
    assert "trained now" not in done.stdout
    one = json.loads((out_one / "report.json").read_text())
    ranks = json.loads((out_ranks / "report.json").read_text())
    assert len(ranks["samples"]) == 9
    assert {k: v for k, v in ranks.items() if k not in REPORT_PER_RUN} == \
        {k: v for k, v in one.items() if k not in REPORT_PER_RUN}
    # Negative control: the comparison sees answer order. Sharding without putting answers back in place
    # (rank 0's five, then rank 1's four) is a different report.
    interleaved = [one["samples"][i] for share in distributed.shares(9, RANKS) for i in share]
    assert interleaved != one["samples"]


def test_a_killed_rank_leaves_nothing_that_is_reused(ranks_cache, tmp_path, monkeypatch):
    cfg = mini_config(tmp_path, steps=10_000)  # long enough to be killed mid-training
    log = tmp_path / "torchrun.log"
    launcher = torchrun("train", "--config", str(cfg), "--artifacts-dir", str(ranks_cache), log=log)
    adapters = ranks_cache / "adapter"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not list(adapters.glob(".tmp-*")) and launcher.poll() is None:
        time.sleep(0.2)
    time.sleep(5)  # into the training loop
    rank1 = rank_process(launcher, 1)
    assert rank1 is not None, "rank 1 not found: " + log.read_text()[-2000:]
    rank1.send_signal(signal.SIGKILL)
    launcher.wait(timeout=300)
    assert launcher.returncode != 0
    assert entries(ranks_cache) == [], "no entry was completed"

    # The same settings in one process (the same cache key): nothing is taken for an entry; a build runs.
    calls = []

    def quick_build(out_dir, *args, **kwargs):
        calls.append(out_dir)
        (out_dir / "adapter_model.safetensors").write_bytes(b"stand-in for a trained adapter")
        metrics = {"steps": 1, "loss": [{"step": 1, "loss": 1.0}], "samples_per_s": 1.0, "tokens_per_s": 1.0,
                   "wall_s": 1.0, "device": "cpu"}
        (out_dir / train.METRICS).write_text(json.dumps(metrics))

    monkeypatch.setattr(train, "train_adapter", quick_build)
    assert main(["train", "--config", str(cfg), "--artifacts-dir", str(ranks_cache)]) == 0
    assert calls, "the killed run's leftovers were not taken for an adapter"
    assert [p for p in adapters.iterdir() if p.name.startswith(".tmp-")] == []


@given(st.integers(0, 300), st.integers(1, 9))
def test_the_shares_cover_every_item_once_and_go_back_in_order(n, size):
    parts = distributed.shares(n, size)
    assert sorted(i for share in parts for i in share) == list(range(n))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1  # balanced
    results = [(share, [f"answer {i}" for i in share]) for share in parts]
    assert distributed.in_order(results, n) == [f"answer {i}" for i in range(n)]


def test_a_lost_or_doubled_share_is_an_error_not_a_short_report():
    parts = [([0, 2], ["a", "c"]), ([1], ["b"])]
    assert distributed.in_order(parts, 3) == ["a", "b", "c"]
    with pytest.raises(RuntimeError, match="2 results for 3 items"):
        distributed.in_order(parts[:1], 3)
    with pytest.raises(RuntimeError):
        distributed.in_order([([0, 1], ["a", "b"]), ([1], ["b"])], 3)


def test_a_global_batch_that_the_ranks_cannot_share_is_refused(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(InputError, match="batch_size 8: not divisible by the launcher's 3 processes"):
        train.per_rank_batch(TrainConfig(batch_size=8))
    assert train.per_rank_batch(TrainConfig(batch_size=9)) == 3
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert train.per_rank_batch(TrainConfig(batch_size=8)) == 8


# Arguments that parse; every file they name is missing, so a command that got past the launcher check would
# stop at once on its own one-line error (the negative control below).
ONE_PROCESS = {
    "prepare": ["--dataset", "missing.jsonl", "--out", "p"],
    "merge": ["--config", "missing.toml"],
    "generate": ["--model", "./missing", "--out", "g"],
    "judge": ["--answers", "missing.jsonl", "--control", "missing.jsonl"],
    "gate": ["--report", "missing.json"],
    "bench": ["--new", "missing.json", "--old", "missing.json", "--out", "b.md"],
    "upload": ["--report", "missing.json", "--repo-id", "me/m", "--dry-run", "d"],
    "env": ["--lock", "missing.txt"],
}


@pytest.mark.parametrize("command", sorted(ONE_PROCESS))
def test_the_one_process_commands_refuse_a_launcher(command, monkeypatch, capsys, tmp_path):
    # Under torchrun each rank would redo the work and race for the same output folder.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert main([command, *ONE_PROCESS[command]]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"hearts {command}: error: runs as one process, not as rank 1 of 2: start it without "
                   "torchrun/accelerate launch (only train, eval, run use several ranks)"]
    assert not any(tmp_path.iterdir())
    # Negative control: without a launcher the same command gets past that check (to its own error).
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert main([command, *ONE_PROCESS[command]]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"hearts {command}: error: ") and "runs as one process" not in err


def test_the_cache_key_names_the_rank_count_only_where_it_changes_the_adapter(monkeypatch):
    from harness.config import DataConfig, LoraSettings

    def key(world_size: int, cfg: TrainConfig, lora: LoraSettings) -> str:
        monkeypatch.setenv("WORLD_SIZE", str(world_size))
        return cache.cache_key(train.run_config(cfg, lora, DataConfig(), {"base": "tiny"}, "data"))

    defaults = TrainConfig(device="cpu"), LoraSettings()  # dropout 0.1, length-grouped: per-rank randomness
    assert key(1, *defaults) != key(2, *defaults)
    independent = TrainConfig(device="cpu", group_by_length=False), LoraSettings(dropout=0.0)
    assert key(1, *independent) == key(2, *independent)
    assert train.rank_independent(*independent) and not train.rank_independent(*defaults)
