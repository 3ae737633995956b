"""Performance arithmetic: how fast decoding could be at best, from the card's bandwidth and the model's bytes.

A decode step at small batch reads every weight once and does little arithmetic per byte, so the ceiling is
``bandwidth / weight bytes`` steps per second, times the batch in tokens. KV-cache reads are left out, so the
bound is optimistic (at batch 32 x 228 positions a 7B cache adds ~3.7 GB a step to the 13.5 GB of weights).
"""

from __future__ import annotations

from collections.abc import Callable
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
