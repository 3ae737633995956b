"""The decode step's attention kernel (``[generation] decode_attention = "kernel"``, ``harness.decode_attention``):
it attends as SDPA does under a boolean mask, for any batch, GQA grouping, cache length and hidden slots, and a
decoder using it answers what the SDPA decoder answers.

On CPU the kernel runs in Triton's interpreter, which must be switched on before Triton is imported: those cases
run in a child process (``TRITON_INTERPRET=1``); ``pytest -m gpu`` runs them compiled, in this process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

pytest.importorskip("triton", reason="needs Triton (the test extra installs it; CUDA builds of torch ship it)")

from harness import decode_attention
from harness.config import GenerationConfig

# (rtol, atol) against float32 SDPA: the output's one rounding to its dtype is half an ulp (fp16 2^-11, bf16 2^-8)
TOLERANCE = {torch.float32: (1e-5, 1e-5), torch.float16: (2e-3, 1e-3), torch.bfloat16: (1.6e-2, 8e-3)}
CHILD_EXAMPLES = 25  # each interpreted example costs ~0.1-0.5 s
NEW_TOKENS, PROMPTS = 16, 3  # interpreted, ~0.1 s a kernel call: 4 layers x 15 steps


@st.composite
def attention_cases(draw):
    """Query, keys, values and a left-padded mask with a hidden tail, as a decode step over a static cache sees."""
    batch, kv_heads, group = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.sampled_from([1, 2, 3, 4]))
    dim = draw(st.sampled_from([16, 32, 64]))
    length = draw(st.integers(1, 150))  # past two of the kernel's 64-slot blocks
    dtype = draw(st.sampled_from(list(TOLERANCE)))
    seed = draw(st.integers(0, 2**16))
    mask = torch.zeros(batch, 1, 1, length, dtype=torch.bool)
    for row in range(batch):
        first = draw(st.integers(0, length - 1))  # left padding before it
        last = draw(st.integers(first, length - 1))  # slots not written yet after it
        mask[row, ..., first : last + 1] = True
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, kv_heads * group, 1, dim, generator=gen).to(dtype)
    k, v = (torch.randn(batch, kv_heads, length, dim, generator=gen).to(dtype) * 3 for _ in range(2))
    return q, k, v, mask


def sdpa_reference(q, k, v, mask) -> torch.Tensor:
    """SDPA in float32 over the repeated KV heads, in transformers' layout ``[B, 1, H, D]``."""
    group = q.shape[1] // k.shape[1]
    k, v = (t.float().repeat_interleave(group, dim=1) for t in (k, v))
    return torch.nn.functional.scaled_dot_product_attention(q.float(), k, v, attn_mask=mask).transpose(1, 2)


def attends_as_sdpa(device: str, shrink: bool = True) -> None:
    """The property, over drawn cases on ``device`` (the child process's entry point too)."""
    phases = tuple(Phase) if shrink else (Phase.generate,)

    @settings(max_examples=CHILD_EXAMPLES if device == "cpu" else 200, deadline=None, database=None, phases=phases)
    @given(attention_cases())
    def check(case):
        q, k, v, mask = (t.to(device) for t in case)
        out = decode_attention.decode_attention(q, k, v, mask, q.shape[-1] ** -0.5)
        assert out.shape == (q.shape[0], 1, q.shape[1], q.shape[-1]) and out.dtype == q.dtype
        torch.testing.assert_close(out.float(), sdpa_reference(q, k, v, mask), rtol=TOLERANCE[q.dtype][0],
                                   atol=TOLERANCE[q.dtype][1])

    check()


def _in_interpreter(code: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture
def interpreted_or_cuda(device):
    """Runs ``code`` in an interpreting child on CPU; on CUDA returns None (the caller runs it here)."""
    return _in_interpreter if device == "cpu" else None


def test_the_kernel_attends_as_sdpa_under_a_boolean_mask(device, interpreted_or_cuda) -> None:
    if interpreted_or_cuda is None:
        attends_as_sdpa(device)
        return
    child = interpreted_or_cuda("from test_training.test_decode_attention import attends_as_sdpa\n"
                                "attends_as_sdpa('cpu')")
    assert child.returncode == 0, child.stderr[-3000:]


def test_a_kernel_that_reads_hidden_slots_fails_the_comparison() -> None:
    # The negative control: the same property against a kernel handed a mask that hides nothing.
    child = _in_interpreter("import torch\nfrom harness import decode_attention\n"
                            "real = decode_attention.decode_attention\n"
                            "decode_attention.decode_attention = lambda q, k, v, m, s: real(q, k, v, "
                            "torch.ones_like(m), s)\n"
                            "from test_training.test_decode_attention import attends_as_sdpa\n"
                            "attends_as_sdpa('cpu', shrink=False)")
    assert child.returncode != 0 and "Tensor-likes are not close" in child.stderr, child.stderr[-3000:]


def test_a_head_count_the_kernel_cannot_group_is_refused_by_name() -> None:
    q, k = torch.zeros(1, 6, 1, 16), torch.zeros(1, 4, 8, 16)
    with pytest.raises(ValueError, match="6 query heads over 4 KV heads"):
        decode_attention.decode_attention(q, k, k, torch.ones(1, 1, 1, 8, dtype=torch.bool), 0.25)


def decode_both_ways(model, tokenizer, prompts: list[str]) -> dict:
    """The graph decoder's answers with SDPA and with the kernel, the kernel's calls, the attention after."""
    from harness import generate

    calls = []
    real = decode_attention.decode_attention
    decode_attention.decode_attention = lambda *args: (calls.append(1), real(*args))[1]
    try:
        answers = {attention: [g.to_dict() for g in generate.generate(model, tokenizer, prompts, GenerationConfig(
            max_new_tokens=NEW_TOKENS, batch_size=len(prompts), cache="graph", decode_attention=attention))]
            for attention in ("sdpa", "kernel")}
    finally:
        decode_attention.decode_attention = real
    return {**answers, "kernel_calls": len(calls), "after": model.config._attn_implementation}


def decode_attention_layers(model_dir) -> int:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(model_dir).get_text_config().num_hidden_layers


CHILD_DECODE = """
import json, sys, torch
from harness.merge import load_merged
from harness.model import load_tokenizer
from test_training.test_decode_attention import decode_both_ways
model = load_merged(sys.argv[1], getattr(torch, sys.argv[2]), torch.device("cpu"))
print(json.dumps(decode_both_ways(model, load_tokenizer(sys.argv[3]), json.loads(sys.argv[4]))))
"""


def test_kernel_decoding_answers_as_sdpa_decoding(request, device, interpreted_or_cuda, merged_dir, compute_dtype,
                                                  tokenizer, trained_adapter, prompt_texts) -> None:
    prompts = prompt_texts[:PROMPTS]
    if interpreted_or_cuda is None:
        got = decode_both_ways(request.getfixturevalue("merged_model"), tokenizer, prompts)
    else:
        child = interpreted_or_cuda(CHILD_DECODE, str(merged_dir), str(compute_dtype).removeprefix("torch."),
                                    str(trained_adapter.path), json.dumps(prompts))
        assert child.returncode == 0, child.stderr[-3000:]
        got = json.loads(child.stdout.splitlines()[-1])
    layers = decode_attention_layers(merged_dir)
    if device == "cpu":  # every decode step attends through the kernel, each layer once
        steps = max(g["new_tokens"] for g in got["kernel"]) - 1
        assert got["kernel_calls"] % layers == 0 and got["kernel_calls"] >= layers * steps
    else:  # the warm-up step and the captured one; the replays run no Python
        assert got["kernel_calls"] == 2 * layers
    assert got["kernel"] == got["sdpa"]
    assert got["after"] == "sdpa"  # the model attends as before once the call is done
