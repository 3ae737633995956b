"""The decode-bound arithmetic the GPU envelope prints next to measured generation throughput."""

from __future__ import annotations

import types

import pytest
from hypothesis import given
from hypothesis import strategies as st

from test_training.perf import decode_bound_tokens_per_s, memory_bandwidth


def test_h100_sxm_bandwidth_from_its_reported_clock_and_bus() -> None:
    # What torch reports for the H100 80GB HBM3 we measure on: 2,619 MHz, 5,120-bit bus -> 3.35 TB/s.
    props = types.SimpleNamespace(memory_clock_rate=2_619_000, memory_bus_width=5120)
    assert memory_bandwidth(props) == pytest.approx(3.352e12, rel=1e-3)


def test_unknown_bandwidth_is_none_not_zero() -> None:
    assert memory_bandwidth(types.SimpleNamespace()) is None
    assert memory_bandwidth(types.SimpleNamespace(memory_clock_rate=0, memory_bus_width=5120)) is None


def test_llama2_7b_fp16_bound_matches_the_issue_figure() -> None:
    # 13.5 GB of fp16 weights on 3.35 TB/s: ~248 steps/s, ~7,900 new tokens/s at batch 32.
    assert decode_bound_tokens_per_s(13_476_831_232, 3.352e12, 32) == pytest.approx(7959, rel=1e-3)


@given(st.integers(1, 10**12), st.floats(1e6, 1e13), st.integers(1, 512), st.integers(2, 8))
def test_bound_is_linear_in_batch_and_bandwidth(weights: int, bandwidth: float, batch: int, k: int) -> None:
    one = decode_bound_tokens_per_s(weights, bandwidth, batch)
    assert decode_bound_tokens_per_s(weights, bandwidth, batch * k) == pytest.approx(one * k)
    assert decode_bound_tokens_per_s(weights, bandwidth * k, batch) == pytest.approx(one * k)
    assert decode_bound_tokens_per_s(weights * k, bandwidth, batch) == pytest.approx(one / k)


@pytest.mark.parametrize("bad", [(0, 1e12, 1), (10, 0.0, 1), (10, 1e12, 0)])
def test_bound_refuses_non_positive_inputs(bad) -> None:
    with pytest.raises(ValueError, match="positive"):
        decode_bound_tokens_per_s(*bad)
