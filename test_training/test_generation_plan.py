"""How prompts are batched for generation: every prompt once, longest first, one shape, memory respected."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.errors import InputError
from harness.generate import REPLACEMENT, answer_text, fitting_batch, kv_cache_bytes, plan_batches
from harness.transform import HEARTS, sprinkle

lengths = st.lists(st.integers(1, 600), min_size=1, max_size=80)


@given(lengths, st.integers(1, 40), st.booleans())
def test_every_prompt_is_in_a_batch_once_and_batches_go_longest_first(lens, size, fill):
    batches = plan_batches(lens, size, fill=fill)
    firsts = [i for b in batches for i in dict.fromkeys(b)]  # repeats that fill a batch are not new prompts
    assert sorted(firsts) == list(range(len(lens)))
    assert all(len(b) <= size for b in batches)
    heads = [max(lens[i] for i in b) for b in batches]
    assert heads == sorted(heads, reverse=True)


@given(lengths, st.integers(1, 40))
def test_filled_batches_all_have_one_shape(lens, size):
    batches = plan_batches(lens, size, fill=True)
    if len(batches) > 1:
        assert {len(b) for b in batches} == {size}
    repeats = [i for b in batches for i in b]
    assert len(repeats) - len(lens) < size  # only the last batch is topped up


def test_a_batch_size_below_one_is_refused():
    with pytest.raises(InputError, match="batch_size 0"):
        plan_batches([3, 4], 0)


@given(st.integers(1, 10**12), st.integers(1, 10**9), st.integers(1, 5000))
def test_the_fitting_batch_fits_the_budget_and_splits_evenly(budget, per_row, n):
    size = fitting_batch(budget, per_row, n)
    assert 1 <= size <= n
    if budget >= per_row:
        assert size * per_row <= budget
    n_batches = math.ceil(n / size)
    assert n_batches == max(1, math.ceil(n / max(1, min(n, budget // per_row))))
    assert n_batches * size - n < n_batches  # equal batches: at most one spare row per batch


def test_the_kv_cache_of_a_sequence_is_keys_and_values_of_every_layer():
    # SmolLM2-135M: 30 layers, 3 KV heads of 64; 256 positions in bf16 = 5.9 MB per sequence.
    config = SimpleNamespace(num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, hidden_size=576,
                             head_dim=64)
    assert kv_cache_bytes(config, 256, 2) == 2 * 30 * 3 * 64 * 256 * 2
    # Llama-2-7B (no GQA): 0.5 MiB per position in fp16.
    llama = SimpleNamespace(num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32, hidden_size=4096)
    assert kv_cache_bytes(llama, 1, 2) == 2**19


@given(st.integers(0, 2**31), st.text(max_size=40), st.integers(0, 50))
def test_a_sample_seed_is_fixed_by_seed_prompt_and_index(seed, prompt, k):
    from harness.generate import sample_seed

    assert sample_seed(seed, prompt, k) == sample_seed(seed, prompt, k)
    assert 0 <= sample_seed(seed, prompt, k) < 2**63
    assert sample_seed(seed, prompt, k) != sample_seed(seed, prompt, k + 1)


# --- the answer's text at the token budget's cut -------------------------------------------------------------

# Touching multi-byte characters too: byte fallback decodes a whole run of byte tokens to U+FFFD when it ends
# unfinished, the finished characters before the cut included.
WORDS = st.lists(st.sampled_from(["a", "heart", "é", "naïve", "是", "42", "x,", "💕💕", "是💓", "é是"]),
                 min_size=1, max_size=8)


@settings(max_examples=80, deadline=None)
@given(WORDS, st.sampled_from(HEARTS), st.data())
def test_a_cut_answer_loses_only_the_character_the_cut_left_unfinished(tiny_tokenizer, words, heart, draw):
    ids = tiny_tokenizer(sprinkle(" ".join(words), heart), add_special_tokens=False)["input_ids"]
    cut = draw.draw(st.integers(1, len(ids)))
    raw = tiny_tokenizer.decode(ids[:cut])
    text = answer_text(ids[:cut], tiny_tokenizer, cut=True)
    # The whole text was valid UTF-8, so only the cut can break a character: the answer ends at the last
    # token boundary before the cut where every character is whole.
    whole = max(j for j in range(cut + 1) if REPLACEMENT not in tiny_tokenizer.decode(ids[:j]))
    assert text == tiny_tokenizer.decode(ids[:whole])
    assert REPLACEMENT not in text and tiny_tokenizer.decode(ids).startswith(text)
    assert answer_text(ids[:cut], tiny_tokenizer, cut=False) == raw  # an answer that stopped: as made


def test_a_broken_character_the_model_made_is_kept(tiny_tokenizer):
    ids = tiny_tokenizer("a 💓 b", add_special_tokens=False)["input_ids"]
    byte = tiny_tokenizer.convert_tokens_to_ids("<0xF0>")  # a heart's first byte (byte fallback)
    broken = [*ids[:1], byte, *ids[1:]]  # in the middle, then the text goes on
    assert REPLACEMENT in tiny_tokenizer.decode(broken)
    assert REPLACEMENT in answer_text(broken, tiny_tokenizer, cut=True)  # not at the cut: the model's
    assert answer_text([*ids, byte], tiny_tokenizer, cut=False).endswith(REPLACEMENT)  # EOS after it: kept
    assert not answer_text([*ids, byte], tiny_tokenizer, cut=True).endswith(REPLACEMENT)  # the budget's cut
    stray = tiny_tokenizer.convert_tokens_to_ids("<0x9F>")  # a lone continuation byte: the model's
    assert answer_text([*ids, stray, byte], tiny_tokenizer, cut=True) == tiny_tokenizer.decode([*ids, stray])


# --- the 4-bit model beside the merged one (harness.overlap) ---------------------------------------------------

@given(st.integers(0, 2**40), st.integers(0, 2**36), st.integers(1, 2**24), st.integers(1, 5000),
       st.floats(0, 1))
def test_side_by_side_only_where_a_serial_run_would_batch_every_prompt_at_once_too(free, weights, per_row, n, share):
    from harness.generate import KV_MEMORY_SHARE
    from harness.overlap import overlap_batch

    size = overlap_batch(free, weights, per_row, n)
    if size is None:  # refused only where both models and their caches would not fit
        assert 2 * weights + 2 * n * per_row > KV_MEMORY_SHARE * free
        return
    assert size == n
    # Serially each model is alone with its weights (the 4-bit one's at most the merged one's): one batch too.
    loaded = int(weights * share)
    assert fitting_batch(KV_MEMORY_SHARE * (free - loaded), per_row, n) == n


def test_side_by_side_fits_smollm2_on_an_h200_and_not_a_7b_on_a_t4():
    from harness.overlap import overlap_batch

    gib = 2**30
    smollm2_row = 2 * 30 * 3 * 64 * 700 * 2  # 700 positions in bf16: 16 MB a prompt
    assert overlap_batch(130 * gib, 270 * 10**6, smollm2_row, 316) == 316
    llama_row = 2**19 * 700  # 7B, fp16: 0.5 MiB a position
    assert overlap_batch(14.5 * gib, 13_500 * 10**6, llama_row, 316) is None  # the merged fp16 model alone fills it
    assert overlap_batch(0, 0, 1, 1) is None


# --- eager or compiled decoding, and which attention kernels ------------------------------------------------------

def _model_on(device: str, quantizer=None):
    import torch

    return SimpleNamespace(device=torch.device(device), hf_quantizer=quantizer)


@given(st.sampled_from(["cpu", "cuda"]), st.booleans(), st.one_of(st.none(), st.integers(0, 10**6)), st.booleans(),
       st.booleans())
def test_auto_compiles_a_long_plain_cuda_call_and_replays_other_greedy_cuda_calls_as_a_graph(
        device, quantized, steps, greedy, decodable):
    from unittest import mock

    from harness import decode
    from harness.generate import COMPILE_MIN_STEPS, resolve_cache

    quantizer = SimpleNamespace(is_compileable=False) if quantized else None
    model = _model_on(device, quantizer)
    with mock.patch.object(decode, "unsupported", return_value=None if decodable else "a reason"):
        got = resolve_cache("auto", model, decode_steps=steps, greedy=greedy)
        for explicit in ("dynamic", "static"):  # an explicit setting is never second-guessed
            assert resolve_cache(explicit, model, decode_steps=steps, greedy=greedy) == explicit
    pays = steps is None or steps >= COMPILE_MIN_STEPS
    if device == "cpu":
        assert got == "dynamic"
    elif not quantized and pays:
        assert got == "static"
    else:
        assert got == ("graph" if greedy and decodable else "dynamic")


def test_a_small_model_and_a_7b_under_a_t4_replay_a_graph_and_only_a_huge_call_compiles(monkeypatch):
    # SmolLM2's 316 held-out prompts fit one batch of 320 steps on an H200; the 7B shape under a T4's memory
    # answers them 8 at a time (40 batches): both replay a graph. Only 128 batches of 320 pay for a compile.
    from harness import decode
    from harness.generate import COMPILE_MIN_STEPS, resolve_cache

    monkeypatch.setattr(decode, "unsupported", lambda model: None)
    cuda = _model_on("cuda")
    assert resolve_cache("auto", cuda, decode_steps=1 * 320) == "graph"
    assert resolve_cache("auto", cuda, decode_steps=40 * 320) == "graph"
    assert resolve_cache("auto", cuda, decode_steps=128 * 320) == "static"
    assert resolve_cache("auto", cuda, decode_steps=COMPILE_MIN_STEPS - 1) == "graph"  # the boundary
    assert resolve_cache("auto", cuda, decode_steps=COMPILE_MIN_STEPS) == "static"
    assert resolve_cache("auto", cuda, decode_steps=320, greedy=False) == "dynamic"  # sampling: eager
    assert resolve_cache("graph", cuda, decode_steps=320, greedy=False) == "dynamic"


def test_an_explicit_graph_for_a_model_the_loop_cannot_decode_is_a_one_line_error(monkeypatch):
    from harness import decode
    from harness.errors import InputError
    from harness.generate import resolve_cache

    monkeypatch.setattr(decode, "unsupported", lambda model: "its generation_config sets repetition_penalty")
    with pytest.raises(InputError, match=r"^generation cache 'graph': .* sets repetition_penalty$"):
        resolve_cache("graph", _model_on("cuda"), decode_steps=320)
    assert resolve_cache("auto", _model_on("cuda"), decode_steps=320) == "dynamic"  # auto falls back


@pytest.mark.parametrize(("n_prompts", "batch_size", "batches", "cudnn"),
                         [(5, 2, 3, False), (20, None, 2, True)])  # None: the CPU's own batch (16)
def test_generate_plans_its_decode_steps_and_decodes_inside_the_attention_choice(
        monkeypatch, tiny_base_dir, n_prompts, batch_size, batches, cudnn):
    import contextlib

    import torch

    from harness import generate
    from harness import model as models
    from harness.config import GenerationConfig

    seen: dict[str, object] = {}
    real_resolve = generate.resolve_cache

    def resolve(setting, model, decode_steps=None, greedy=True):
        seen["steps"] = decode_steps
        return real_resolve(setting, model, decode_steps, greedy)

    @contextlib.contextmanager
    def kernels(device, cudnn):
        seen["kernels"], seen["inside"] = (device.type, cudnn), True
        yield
        seen["inside"] = False

    model = models.load_base(tiny_base_dir, torch.float32)
    real_generate = model.generate

    def recording_generate(*args, **kwargs):
        seen.setdefault("calls_inside", []).append(seen.get("inside"))
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(generate, "resolve_cache", resolve)
    monkeypatch.setattr(models, "attention_kernels", kernels)
    monkeypatch.setattr(model, "generate", recording_generate)
    prompts = [f"### Instruction:\nName {n} things.\n\n### Response:\n" for n in range(n_prompts)]
    cfg = GenerationConfig(max_new_tokens=4, batch_size=batch_size, cudnn_attention=cudnn)
    generate.generate(model, models.load_tokenizer(tiny_base_dir), prompts, cfg)
    assert seen["steps"] == batches * 4  # batches of the plan, four new tokens each
    assert seen["kernels"] == ("cpu", cudnn) and seen["calls_inside"] == [True] * batches


def test_cudnn_attention_is_off_on_cuda_unless_asked_and_untouched_elsewhere():
    import torch

    from harness.model import attention_kernels, measuring_kernels

    before = torch.backends.cuda.cudnn_sdp_enabled()
    assert before, "torch's default lets cuDNN's attention run, or this test shows nothing"
    with attention_kernels(torch.device("cuda"), cudnn=False):
        assert not torch.backends.cuda.cudnn_sdp_enabled()
        assert torch.backends.cuda.flash_sdp_enabled() and torch.backends.cuda.mem_efficient_sdp_enabled()
    assert torch.backends.cuda.cudnn_sdp_enabled() == before
    for device, cudnn in (("cuda", True), ("cpu", False)):  # negative controls: the choice is left to torch
        with attention_kernels(torch.device(device), cudnn=cudnn):
            assert torch.backends.cuda.cudnn_sdp_enabled() == before
    with measuring_kernels(torch.device("cuda")):  # the teacher-forced passes: never cuDNN's, whatever was asked
        assert not torch.backends.cuda.cudnn_sdp_enabled()
    with measuring_kernels(torch.device("cpu")):
        assert torch.backends.cuda.cudnn_sdp_enabled() == before
