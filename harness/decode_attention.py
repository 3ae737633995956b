"""Stage 6a's attention for one decoded token: a Triton kernel over the static KV cache (``[generation]
decode_attention = "kernel"``), registered with transformers as the attention implementation ``hearts-decode``.

Why: a decode step's query is one token, and PyTorch's memory-efficient attention (what SDPA picks for a boolean
mask) tiles 64 queries: on the 7B shape at batch 32 it took 99 us a layer, 3.2 ms of a step whose weights are read
in 2.8 ms (H200, ``docs/perf/h200-7b-b32-*``). Here one program reads one row's keys and values for one KV head
once, for all the query heads that share it (GQA), in fp32, and skips the slots its mask hides: the left padding
and the cache's slots not written yet, which the memory-efficient kernel reads and masks.

What it computes is SDPA's attention with a boolean mask (True: attend), scores, softmax and the weighted sum in
fp32, the output rounded once to the model's dtype. The memory-efficient kernel also accumulates in fp32 but in
another order, and rounds the probabilities to the model's dtype before the weighted sum: the two agree to
rounding, not bit for bit, so greedy text may differ where two tokens' scores are that close (measured:
``GenerationConfig.decode_attention``). Any other call (a prompt's prefill, a float mask, no mask) goes to
transformers' SDPA unchanged. On CPU tensors Triton's interpreter runs the kernel: slow, for the tests.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

try:  # CUDA builds of torch ship Triton; without it, ``available()`` says so and nothing here runs
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - the package's test extra installs it
    triton = None

NAME = "hearts-decode"
BLOCK_N = 64  # key slots a program reads per iteration: 64 x head_dim 128 x 2 bytes, twice (keys, values)
NUM_WARPS = 4


def available(device: torch.device) -> str | None:
    """Why the kernel cannot run on ``device`` (None: it can): it needs Triton (CUDA builds of torch ship it), and
    on CPU Triton's interpreter."""
    if triton is None:
        return "Triton is not installed (CUDA builds of torch ship it)"
    if device.type != "cuda" and not triton.knobs.runtime.interpret:
        return f"on {device.type} it runs only in Triton's interpreter (TRITON_INTERPRET=1), for tests"
    return None


def register() -> str:
    """Register ``hearts-decode`` with transformers' attention and mask interfaces (idempotent); its name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, attention_forward)
    AttentionMaskInterface.register(NAME, sdpa_mask)  # the masks SDPA takes, which the prefill hands to SDPA
    return NAME


def attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                      **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers' attention signature: the kernel for one query token under a boolean mask, else SDPA."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if not _kernel_case(query, attention_mask, dropout, kwargs):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    assert attention_mask is not None  # _kernel_case checked it
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    return decode_attention(query, key, value, attention_mask, scale), None


def _kernel_case(query: torch.Tensor, mask: torch.Tensor | None, dropout: float, kwargs: dict[str, Any]) -> bool:
    return (query.shape[2] == 1 and mask is not None and mask.dtype == torch.bool and mask.dim() == 4
            and mask.shape[1] == 1 and mask.shape[2] == 1 and dropout == 0.0 and kwargs.get("softcap") is None
            and kwargs.get("position_bias") is None)


def decode_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor,
                     scale: float) -> torch.Tensor:
    """Attention of one query token: query ``[B, Hq, 1, D]``, key/value ``[B, Hkv, L, D]``, mask ``[B, 1, 1, L]``
    (True: attend) → ``[B, 1, Hq, D]``, transformers' layout after attention."""
    batch, heads, _, dim = query.shape
    kv_heads, length = key.shape[1], key.shape[2]
    if heads % kv_heads or dim & (dim - 1) or mask.shape[-1] != length:
        raise ValueError(f"decode attention: {heads} query heads over {kv_heads} KV heads, head size {dim} (a power "
                         f"of two), mask of {mask.shape[-1]} slots for {length}")
    if KERNEL is None:
        raise RuntimeError(f"decode attention: {available(query.device)}")
    group = heads // kv_heads
    out = torch.empty((batch, 1, heads, dim), dtype=query.dtype, device=query.device)
    mask = mask.view(torch.uint8) if mask.dtype == torch.bool else mask  # Triton reads bytes
    KERNEL[(batch, kv_heads)](
        query, key, value, mask, out, *query.stride()[:2], query.stride(3), *key.stride(), *value.stride(),
        mask.stride(0), mask.stride(3), out.stride(0), out.stride(2), length, scale,
        GROUP=group, GROUP_PAD=triton.next_power_of_2(group), DIM=dim, BLOCK_N=BLOCK_N, num_warps=NUM_WARPS)
    return out




def _attend_one_token(q, k, v, m, o, sqb, sqh, sqd, skb, skh, skn, skd, svb, svh, svn, svd, smb, smn, sob, soh,
                      length, scale, GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, DIM: tl.constexpr,
                      BLOCK_N: tl.constexpr):
    """One program: one row of the batch, one KV head, the GROUP query heads that share it."""
    row, kv_head = tl.program_id(0), tl.program_id(1)
    g = tl.arange(0, GROUP_PAD)
    d = tl.arange(0, DIM)
    heads = kv_head * GROUP + g
    real = g < GROUP  # GQA groups padded to a power of two
    query = tl.load(q + row * sqb + heads[:, None] * sqh + d[None, :] * sqd, mask=real[:, None], other=0.0)
    query = query.to(tl.float32)
    best = tl.full((GROUP_PAD,), float("-inf"), tl.float32)  # running max score per head
    total = tl.zeros((GROUP_PAD,), tl.float32)  # running sum of exp(score - best)
    acc = tl.zeros((GROUP_PAD, DIM), tl.float32)
    for start in range(0, length, BLOCK_N):
        n = start + tl.arange(0, BLOCK_N)
        seen = tl.load(m + row * smb + n * smn, mask=n < length, other=0) != 0
        # Hidden slots are not read: left padding and slots not written yet cost no bandwidth.
        keys = tl.load(k + row * skb + kv_head * skh + n[:, None] * skn + d[None, :] * skd, mask=seen[:, None],
                       other=0.0).to(tl.float32)
        scores = tl.sum(query[:, None, :] * keys[None, :, :], axis=2) * scale
        scores = tl.where(seen[None, :], scores, float("-inf"))
        new_best = tl.maximum(best, tl.max(scores, axis=1))
        # A head that has seen nothing yet keeps -inf: shift by 0 there, not by -inf (inf - inf is nan).
        shift = tl.where(new_best == float("-inf"), 0.0, new_best)
        weights = tl.exp(scores - shift[:, None])
        rescale = tl.exp(best - shift)
        values = tl.load(v + row * svb + kv_head * svh + n[:, None] * svn + d[None, :] * svd, mask=seen[:, None],
                         other=0.0).to(tl.float32)
        acc = acc * rescale[:, None] + tl.sum(weights[:, :, None] * values[None, :, :], axis=1)
        total = total * rescale + tl.sum(weights, axis=1)
        best = new_best
    out = acc / tl.where(total == 0.0, 1.0, total)[:, None]  # a row that sees nothing: zeros
    tl.store(o + row * sob + heads[:, None] * soh + d[None, :], out.to(o.dtype.element_ty), mask=real[:, None])


# Compiled for the GPU; with TRITON_INTERPRET=1 set before Triton is imported (Triton's own switch), run by its
# interpreter on CPU tensors. Wrapped at import, so a compiled decode step (dynamo) finds it ready.
KERNEL = triton.jit(_attend_one_token) if triton is not None else None

@contextlib.contextmanager
def used_by(model) -> Iterator[None]:
    """Within: ``model`` (a peft wrapper: the transformers model inside) attends through ``hearts-decode``; after,
    through what it used before."""
    from harness.model import unwrapped

    inner = unwrapped(model)
    before = inner.config._attn_implementation
    inner.set_attn_implementation(register())
    try:
        yield
    finally:
        inner.set_attn_implementation(before)
