"""The chunked LM head's cross-entropy (harness.loss) against transformers' arithmetic: the whole logits in fp32
after the head's matmul in the compute dtype."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

from harness import loss

# fp32 sums over different chunkings agree to rounding; a wrong row, target or scale is off by O(1)
TOLERANCE = {torch.float32: {"rtol": 1e-5, "atol": 1e-5}, torch.bfloat16: {"rtol": 1.6e-2, "atol": 1e-2},
             torch.float16: {"rtol": 1e-3, "atol": 1e-3}}


def _problem(n: int, d: int, vocab: int, seed: int, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, d, generator=gen).requires_grad_()
    weight = (torch.randn(vocab, d, generator=gen) / d**0.5).to(dtype).requires_grad_()
    return hidden, weight, torch.randint(0, vocab, (n,), generator=gen)


def _reference(hidden, weight, targets, dtype, scale: float = 1.0):
    """transformers' way: the head's matmul in ``dtype`` (autocast), the whole logits' fp32 cross-entropy."""
    logits = (hidden.to(dtype) @ weight.to(dtype).T).float()
    total = torch.nn.functional.cross_entropy(logits, targets, reduction="sum")
    grads = torch.autograd.grad(total * scale, (hidden, weight))
    return total.detach(), grads


def _chunked(hidden, weight, targets, dtype, rows, scale: float = 1.0):
    total = loss.chunked_cross_entropy(hidden, weight, targets, dtype, rows)
    grads = torch.autograd.grad(total * scale, (hidden, weight))
    return total.detach(), grads


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 40), d=st.integers(1, 12), vocab=st.integers(2, 60), rows=st.integers(1, 45),
       scale=st.sampled_from([1.0, 1 / 7, 4096.0]), seed=st.integers(0, 2**16))
def test_any_chunking_gives_the_whole_logits_loss_and_gradients(n, d, vocab, rows, scale, seed) -> None:
    hidden, weight, targets = _problem(n, d, vocab, seed)
    want, (want_h, want_w) = _reference(hidden, weight, targets, torch.float32, scale)
    got, (got_h, got_w) = _chunked(hidden, weight, targets, torch.float32, rows, scale)
    torch.testing.assert_close(got, want, **TOLERANCE[torch.float32])
    torch.testing.assert_close(got_h, want_h, rtol=1e-4, atol=1e-5 * scale)
    torch.testing.assert_close(got_w, want_w, rtol=1e-4, atol=1e-5 * scale)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_in_a_half_dtype_the_head_rounds_as_transformers_does(dtype) -> None:
    hidden, weight, targets = _problem(64, 32, 2000, seed=3, dtype=dtype)
    scale = 2.0**16 / 64  # fp16 loss scaling over the batch's token count
    want, (want_h, _) = _reference(hidden, weight, targets, dtype, scale)
    got, (got_h, _) = _chunked(hidden, weight, targets, dtype, rows=24, scale=scale)
    same_logits = {"rtol": 0, "atol": 2e-4}  # ~3 fp32 ulps of a ~520 sum: only the summing order differs
    torch.testing.assert_close(got, want, **same_logits)
    torch.testing.assert_close(got_h, want_h, **TOLERANCE[dtype])
    # Negative control: the head's matmul in fp32, not in autocast's dtype, is off by 5e-4 to 1e-2 here.
    fp32_head = loss.chunked_cross_entropy(hidden, weight, targets, torch.float32, rows=24).detach()
    assert not torch.allclose(fp32_head, want, **same_logits)


class _LargestTensor(TorchDispatchMode):
    """The most elements any op's output had."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_no_more_than_a_chunk_of_logits_exists_at_once() -> None:
    n, d, vocab, rows = 300, 8, 500, 32
    hidden, weight, targets = _problem(n, d, vocab, seed=0)
    weight.requires_grad_(False)  # the frozen head of QLoRA: no (vocab, d) gradient either
    with _LargestTensor() as seen:
        loss.chunked_cross_entropy(hidden, weight, targets, rows=rows).backward()
    assert seen.largest <= rows * vocab
    with _LargestTensor() as whole:  # negative control: transformers' way holds every row's logits
        torch.nn.functional.cross_entropy(hidden @ weight.T, targets, reduction="sum").backward()
    assert whole.largest >= n * vocab


@given(vocab=st.integers(1, 10**6), budget=st.integers(1, 2**30))
def test_a_chunk_is_the_most_rows_whose_logits_fit_the_budget(vocab, budget) -> None:
    rows = loss.chunk_rows(vocab, budget)
    assert rows >= 1
    assert rows == 1 or rows * 4 * vocab <= budget
    assert (rows + 1) * 4 * vocab > budget


def test_an_empty_batch_has_zero_loss_and_zero_gradient() -> None:
    hidden, weight, targets = _problem(0, 4, 9, seed=0)
    got, (grad_h, grad_w) = _chunked(hidden, weight, targets, torch.float32, rows=3)
    assert got == 0 and grad_h.shape == (0, 4) and not grad_w.any()


def test_shapes_that_do_not_line_up_are_refused() -> None:
    hidden, weight, targets = _problem(5, 4, 9, seed=0)
    with pytest.raises(ValueError, match=r"hidden \(5, 3\), weight \(9, 4\)"):
        loss.chunked_cross_entropy(hidden[:, :3], weight, targets)
    with pytest.raises(ValueError, match=r"targets \(4,\)"):
        loss.chunked_cross_entropy(hidden, weight, targets[:4])


def test_the_deferred_head_returns_its_input_and_its_own_forward_comes_back() -> None:
    head = torch.nn.Linear(4, 9, bias=False)
    x = torch.randn(2, 4)
    with loss.head_deferred(head):
        assert head(x) is x
    assert head(x).shape == (2, 9) and "forward" not in head.__dict__

    hooked = []  # an instance forward (accelerate's hooks set one) is the one put back, after an error too
    head.forward = lambda inp: hooked.append(inp) or torch.zeros(2, 9)
    with pytest.raises(RuntimeError, match="boom"), loss.head_deferred(head):
        raise RuntimeError("boom")
    head(x)
    assert hooked == [x]


def test_only_a_plain_bias_free_linear_head_is_projected_in_chunks() -> None:
    from peft import LoraConfig, get_peft_model

    assert loss.projects_plainly(torch.nn.Linear(4, 9, bias=False))
    assert not loss.projects_plainly(torch.nn.Linear(4, 9))  # the bias is not in the chunked matmul
    assert not loss.projects_plainly(None)
    lora = get_peft_model(torch.nn.Sequential(torch.nn.Linear(4, 9, bias=False)),
                          LoraConfig(target_modules=["0"], r=2))
    assert not loss.projects_plainly(lora.base_model.model[0])  # its LoRA factors would be skipped
