"""Stage 4a: the training loss — cross-entropy of the response tokens, the LM head applied in row chunks.

transformers' causal LM loss projects every kept position onto the whole vocabulary and keeps those logits, their
fp32 copy and their log-softmax for the backward pass: for SmolLM2 (49k words) at batch 32 that is ~2.4 GB, a
sixth of the step's peak, where TRL's SFTTrainer (its fused LM head) keeps none. Here the model's forward stops
before its head (``head_deferred``) and ``chunked_cross_entropy`` projects ``CHUNK_BYTES`` of logits at a time,
keeping one fp32 log-sum-exp per row and projecting again in the backward pass. The arithmetic is transformers':
the head's matmul in the compute dtype, the softmax in fp32, the gradient scaled before it is cast back.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

CHUNK_BYTES = 2**28  # fp32 logits projected at once: 1,365 rows of SmolLM2's 49,152 words, 2,097 of Llama-2's 32,000


def chunk_rows(vocab: int, chunk_bytes: int = CHUNK_BYTES) -> int:
    """Rows whose fp32 logits over ``vocab`` words fit ``chunk_bytes`` (at least one)."""
    return max(1, chunk_bytes // (4 * vocab))


def _logits(hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """fp32 logits of a chunk, the matmul in ``weight``'s dtype (the compute dtype) as autocast runs the head."""
    return (hidden.to(weight.dtype) @ weight.T).float()


class _ChunkedCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of ``hidden @ weight.T`` against ``targets``, never holding more than ``rows`` rows of
    logits; the backward pass projects each chunk again rather than keeping its logits."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, dtype, rows):  # type: ignore[override]
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        lse = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        w = weight.to(dtype)
        for h, t, chunk_lse in zip(hidden.split(rows), targets.split(rows), lse.split(rows), strict=True):
            logits = _logits(h, w)
            chunk_lse.copy_(logits.logsumexp(dim=-1))  # a view: lse fills in place
            total += (chunk_lse - logits.gather(1, t[:, None]).squeeze(1)).sum()
        ctx.save_for_backward(hidden, weight, targets, lse)
        ctx.dtype, ctx.rows = dtype, rows
        return total

    @staticmethod
    def backward(ctx, grad_total):  # type: ignore[override]
        hidden, weight, targets, lse = ctx.saved_tensors
        rows, w = ctx.rows, weight.to(ctx.dtype)
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = (torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
                       if ctx.needs_input_grad[1] else None)
        for i, (h, t, chunk_lse) in enumerate(zip(hidden.split(rows), targets.split(rows), lse.split(rows),
                                                  strict=True)):
            # d(sum of lse - picked)/d logits = softmax - one-hot, scaled by the incoming gradient (the fp16 loss
            # scale among it) before the cast to the compute dtype, as autograd orders it for transformers' loss
            grad_logits = (_logits(h, w) - chunk_lse[:, None]).exp_()
            grad_logits.scatter_add_(1, t[:, None], torch.full_like(chunk_lse[:, None], -1.0))
            grad_logits = (grad_logits * grad_total).to(ctx.dtype)
            if grad_hidden is not None:
                grad_hidden[i * rows:(i + 1) * rows] = grad_logits @ w
            if grad_weight is not None:
                grad_weight += (grad_logits.T @ h.to(ctx.dtype)).float()
        return (grad_hidden, grad_weight.to(weight.dtype) if grad_weight is not None else None, None, None, None)


def chunked_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                          dtype: torch.dtype | None = None, rows: int | None = None) -> torch.Tensor:
    """``cross_entropy(hidden @ weight.T, targets, reduction="sum")`` in fp32, ``rows`` rows at a time (default:
    ``CHUNK_BYTES`` of logits); the matmul in ``dtype`` (default: ``hidden``'s)."""
    if hidden.ndim != 2 or weight.ndim != 2 or hidden.shape[1] != weight.shape[1] or targets.shape != hidden.shape[:1]:
        raise ValueError(f"chunked_cross_entropy: hidden {tuple(hidden.shape)}, weight {tuple(weight.shape)} and "
                         f"targets {tuple(targets.shape)} do not line up as (n, d), (vocab, d), (n,)")
    return _ChunkedCrossEntropy.apply(hidden, weight, targets, dtype or hidden.dtype,
                                      rows or chunk_rows(weight.shape[0]))


def _identity(hidden: torch.Tensor) -> torch.Tensor:
    return hidden


@contextlib.contextmanager
def head_deferred(head: torch.nn.Module) -> Iterator[None]:
    """Within the block, ``head`` returns what it is given: the model's "logits" are the hidden states its head
    would project, for ``chunked_cross_entropy`` to project in chunks. A forward already set on the instance (an
    accelerate hook's) is put back after."""
    own = head.__dict__.get("forward")
    head.forward = _identity  # an instance attribute: nn.Module.__call__ looks it up before the class's
    try:
        yield
    finally:
        if own is None:
            del head.forward
        else:
            head.forward = own


def projects_plainly(head: torch.nn.Module | None) -> bool:
    """Whether ``head`` is a plain bias-free ``nn.Linear`` (not a LoRA or quantised layer), whose whole work
    ``chunked_cross_entropy`` can do from its weight."""
    return type(head) is torch.nn.Linear and head.bias is None
