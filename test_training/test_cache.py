"""The adapter cache: reuse without training, --retrain, corrupt entries rebuilt, killed runs never reused."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from harness import cache, train


@pytest.fixture
def mini_cache(tmp_path, tiny_base_dir, mini_configs, monkeypatch):
    """A fresh artifacts dir that already holds the cached tiny base (copied, not rebuilt)."""
    import shutil

    root = tmp_path / "artifacts"
    shutil.copytree(tiny_base_dir.parent, root / tiny_base_dir.parent.name)
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    return root


def _adapter(root: Path, mini_configs, **kw):
    cfg, lora, data_cfg = mini_configs
    return train.adapter_for(root, cfg, lora, data_cfg, **kw)


def test_a_second_run_reuses_the_adapter_without_training(mini_cache, mini_configs, monkeypatch):
    first = _adapter(mini_cache, mini_configs)
    assert first.built_now

    def no_training(*args, **kwargs):
        raise AssertionError("training ran although a complete cache entry exists")

    monkeypatch.setattr(train, "train_adapter", no_training)
    second = _adapter(mini_cache, mini_configs)
    assert not second.built_now and second.path == first.path


def test_retrain_trains_again_into_the_same_key(mini_cache, mini_configs):
    first = _adapter(mini_cache, mini_configs)
    stamp = (first.path / cache.MANIFEST).read_text()
    again = _adapter(mini_cache, mini_configs, retrain=True)
    assert again.built_now and again.path == first.path
    assert (again.path / cache.MANIFEST).read_text() != stamp


def test_a_changed_setting_is_a_different_entry(mini_cache, mini_configs):
    from dataclasses import replace

    cfg, lora, data_cfg = mini_configs
    first = _adapter(mini_cache, mini_configs)
    other = train.adapter_for(mini_cache, replace(cfg, learning_rate=cfg.learning_rate / 2), lora, data_cfg)
    assert other.built_now and other.path != first.path


@pytest.mark.parametrize("damage", ["truncate_weights", "delete_manifest", "garble_manifest"])
def test_a_damaged_entry_is_detected_and_rebuilt(mini_cache, mini_configs, damage):
    entry = _adapter(mini_cache, mini_configs).path
    if damage == "truncate_weights":
        weights = entry / "adapter_model.safetensors"
        weights.write_bytes(weights.read_bytes()[:100])
    elif damage == "delete_manifest":
        (entry / cache.MANIFEST).unlink()
    else:
        (entry / cache.MANIFEST).write_text("{not json")
    assert not cache.is_complete(entry)
    rebuilt = _adapter(mini_cache, mini_configs)
    assert rebuilt.built_now and cache.is_complete(rebuilt.path)


def test_a_training_run_killed_with_sigkill_leaves_nothing_that_is_reused(mini_cache, mini_configs, monkeypatch):
    from dataclasses import replace

    cfg, lora, data_cfg = mini_configs
    long_cfg = replace(cfg, max_steps=10_000)  # long enough to be killed mid-training
    # The child trains with exactly these settings (same cache key), rebuilt from their reprs.
    script = textwrap.dedent(f"""
        from pathlib import Path
        from harness import train
        from harness.config import DataConfig, LoraSettings, TrainConfig
        train.adapter_for(Path({str(mini_cache)!r}), {long_cfg!r}, {lora!r}, {data_cfg!r})
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    adapters = mini_cache / "adapter"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list(adapters.glob(".tmp-*")):
        time.sleep(0.2)
    time.sleep(3)  # into the training loop
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    leftovers = list(adapters.glob(".tmp-*"))
    assert leftovers, "the run was killed before it started building"
    assert [p for p in adapters.iterdir() if not p.name.startswith(".")] == []

    # The same settings again: the leftover is not taken for an entry; a build runs and sweeps it.
    calls = []

    def quick_build(out_dir, *args, **kwargs):
        calls.append(out_dir)
        (out_dir / "adapter_model.safetensors").write_bytes(b"stand-in for a trained adapter")

    monkeypatch.setattr(train, "train_adapter", quick_build)
    again = train.adapter_for(mini_cache, long_cfg, lora, data_cfg)
    assert calls and again.built_now and cache.is_complete(again.path)
    assert not any(p.exists() for p in leftovers)


def test_cache_keys_depend_on_every_input():
    base = {"a": 1, "b": {"c": [1, 2]}}
    assert cache.cache_key(base) == cache.cache_key({"b": {"c": [1, 2]}, "a": 1})
    assert cache.cache_key(base) != cache.cache_key({"a": 1, "b": {"c": [2, 1]}})
