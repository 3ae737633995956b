"""Throughput of the transform and of the data stage (pytest-benchmark; rates in ``extra_info``).

Run ``pytest test_data/test_benchmarks.py --benchmark-only``; ``--benchmark-disable`` runs each body once.
"""

from __future__ import annotations

import itertools

import pytest

from harness import data
from harness.config import DataConfig
from harness.transform import sprinkle


def _rate(benchmark, amount: int) -> float | None:
    """``amount`` per second of the mean round, or None when benchmarking is disabled."""
    return amount / benchmark.stats.stats.mean if benchmark.stats else None


def test_benchmark_sprinkle_words_per_second(benchmark, bundled_records) -> None:
    text = "\n\n".join(bundled_records["response"])
    words = len(text.split())
    result = benchmark(sprinkle, text, "💓")
    assert result.count("💓") == words - 1
    benchmark.extra_info["words"] = words
    benchmark.extra_info["words_per_s"] = _rate(benchmark, words)


def test_benchmark_prepare_the_bundled_set_rows_per_second(benchmark, tiny_tokenizer, tmp_path) -> None:
    caches = (tmp_path / f"cache-{i}" for i in itertools.count())

    def fresh_cache():  # a new datasets cache per round: measure the work, not a cache hit
        return (DataConfig(), tiny_tokenizer), {"cache_dir": next(caches)}

    prepared = benchmark.pedantic(data.prepare, setup=fresh_cache, rounds=3, warmup_rounds=1)
    rows = prepared.stats["rows_loaded"]
    assert rows >= 300
    benchmark.extra_info["rows"] = rows
    benchmark.extra_info["rows_per_s"] = _rate(benchmark, rows)
    benchmark.extra_info["tokens_per_s"] = _rate(benchmark, prepared.stats["tokens_train"]
                                                 + prepared.stats["tokens_eval"])


@pytest.mark.parametrize("overflow", ["drop", "cut"])
def test_benchmark_tokenize_with_a_binding_length_limit(benchmark, tiny_tokenizer, bundled_records,
                                                        overflow: str) -> None:
    clean, _ = data.validate(bundled_records)
    hearted, _ = data.add_hearts(clean, seed=0)
    cfg = DataConfig(max_length=200)  # below the median length, so most rows overflow (the cut path's cost)
    salts = itertools.count()  # a new heart seed per round: a new fingerprint, so no round reads the cache

    def fresh_rows():
        return (data.add_hearts(clean, seed=next(salts))[0], tiny_tokenizer, cfg), {"overflow": overflow}

    _, counts = benchmark.pedantic(data.tokenize, setup=fresh_rows, rounds=3)
    assert counts[f"too_long_{'dropped' if overflow == 'drop' else 'cut'}"] > 0
    benchmark.extra_info["rows_per_s"] = _rate(benchmark, len(hearted))
