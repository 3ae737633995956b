"""The greedy decode loop whose step is replayed as a CUDA graph (``[generation] cache = "graph"``,
``harness.decode``): it answers what transformers' own generate answers with a static cache, decoded eagerly,
for the merged model and for the 4-bit model with its adapter; it stops when every row has; one capture serves a
whole call. On CPU the same loop runs without a capture; ``pytest -m gpu`` runs these on CUDA, in the run's
dtype (bf16 on SmolLM2), where the captured kernels must give the eager ones' answers bit for bit.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from harness import decode, generate
from harness.config import GenerationConfig
from harness.errors import InputError

PROMPTS, BATCH = 10, 4  # three batches, the last topped up with repeats: the graph serves batches it was not made in
NEW_TOKENS = 96  # past the stand-in's answers (they stop after ~80 tokens), so rows stop at different steps


def _greedy(min_new: int = 0, **kwargs) -> GenerationConfig:
    return GenerationConfig(max_new_tokens=NEW_TOKENS, min_new_tokens=min_new, batch_size=BATCH, **kwargs)


def _static_eager(model, tokenizer, prompts, cfg: GenerationConfig, monkeypatch):
    """transformers' generate with a static cache, decoded eagerly (on CUDA it would compile the step)."""
    monkeypatch.setattr(model.generation_config, "disable_compile", True)
    return generate.generate(model, tokenizer, prompts, dataclasses.replace(cfg, cache="static"))


@pytest.mark.parametrize("which", ["merged_model", "adapter_model"])
@pytest.mark.parametrize("bar", [None, 0, 1], ids=["no-min-new", "min-new-allows-the-shortest", "min-new-bars-it"])
def test_graph_decoding_answers_as_transformers_static_cache_decoded_eagerly(request, which, bar, tokenizer,
                                                                            prompt_texts, monkeypatch):
    # ``bar``: min_new_tokens set to the shortest answer's tokens before its EOS (0: the EOS comes just in time
    # and stays) or to one more (1: it comes one step too early and is barred), so both sides of the bound show.
    model = request.getfixturevalue(which)
    prompts = prompt_texts[:PROMPTS]
    min_new = 0
    if bar is not None:
        free = generate.generate(model, tokenizer, prompts, _greedy(cache="graph"))
        stopped = [i for i, g in enumerate(free) if g.terminated]
        if not stopped:
            pytest.skip(f"no answer stopped within {NEW_TOKENS} tokens: no EOS for min_new_tokens to bar")
        shortest = min(stopped, key=lambda i: free[i].new_tokens)
        min_new = free[shortest].new_tokens - 1 + bar  # new_tokens counts the EOS
    graph = generate.generate(model, tokenizer, prompts, _greedy(min_new, cache="graph"))
    assert graph == _static_eager(model, tokenizer, prompts, _greedy(min_new), monkeypatch)
    if bar is not None:
        assert (graph[shortest] == free[shortest]) == (bar == 0)
        assert all(g.new_tokens > min_new for g in graph if g.terminated)  # EOS is the (min_new + 1)-th token at best


def test_a_decoder_that_hides_the_fed_tokens_answers_otherwise(merged_model, tokenizer, prompt_texts, monkeypatch):
    # The negative control of the comparison above: a loop that never lets a row attend to what it generated.
    prompts = prompt_texts[:PROMPTS]
    right = generate.generate(merged_model, tokenizer, prompts, _greedy(cache="graph"))
    monkeypatch.setattr(decode.GraphDecoder, "_reveal", lambda self, slot: None)
    blind = generate.generate(merged_model, tokenizer, prompts, _greedy(cache="graph"))
    assert [g.response for g in blind] != [g.response for g in right]


def test_graph_decoding_stops_once_every_row_has(merged_model, tokenizer, prompt_texts, monkeypatch):
    steps = []
    replay = decode.GraphDecoder._replay
    monkeypatch.setattr(decode.GraphDecoder, "_replay", lambda self: (steps.append(1), replay(self)))
    cfg = GenerationConfig(max_new_tokens=400, batch_size=PROMPTS, cache="graph")
    out = generate.generate(merged_model, tokenizer, prompt_texts[:PROMPTS], cfg)
    longest = max(g.new_tokens for g in out)
    if longest == cfg.max_new_tokens:
        pytest.skip(f"an answer ran to the {cfg.max_new_tokens}-token budget: there was nothing to stop early")
    assert all(g.terminated for g in out)
    # The first token comes from the prefill; the host looks every CHECK_EVERY steps.
    assert longest - 1 <= len(steps) < longest - 1 + decode.CHECK_EVERY


def test_one_capture_serves_every_batch_of_a_call(merged_model, tokenizer, prompt_texts, device, monkeypatch):
    made = []
    graph_class = torch.cuda.CUDAGraph

    def counting(*args, **kwargs):
        made.append(1)
        return graph_class(*args, **kwargs)

    monkeypatch.setattr(torch.cuda, "CUDAGraph", counting)
    out = generate.generate(merged_model, tokenizer, prompt_texts[:PROMPTS], _greedy(cache="graph"))
    assert len(out) == PROMPTS
    assert len(made) == (1 if device == "cuda" else 0)  # three batches, one capture; CPU replays nothing


def test_a_model_whose_generation_config_changes_greedy_decoding_is_refused_by_name(merged_model, tokenizer,
                                                                                   prompt_texts, monkeypatch):
    assert decode.unsupported(merged_model) is None
    monkeypatch.setattr(merged_model.generation_config, "repetition_penalty", 1.3)
    assert decode.unsupported(merged_model) == "its generation_config sets repetition_penalty"
    with pytest.raises(InputError, match=r"cache 'graph': .*repetition_penalty"):
        generate.generate(merged_model, tokenizer, prompt_texts[:2], _greedy(cache="graph"))


@pytest.mark.parametrize(("where", "key", "value", "said"), [
    ("config", "sliding_window", 4, "sliding-window"),  # the loop's mask is full causal attention
    ("config", "_attn_implementation", "eager", "attention is 'eager', not 'sdpa'"),  # eager adds the mask
    ("config", "rope_parameters", {"rope_type": "dynamic", "rope_theta": 1e4, "factor": 2.0}, "RoPE ('dynamic')"),
    ("config", "num_local_experts", 8, "mixture-of-experts"),
    ("generation_config", "num_beams", 4, "num_beams")])
def test_a_model_the_loop_would_decode_otherwise_is_refused_by_name(merged_model, monkeypatch, where, key, value,
                                                                     said):
    monkeypatch.setattr(getattr(merged_model, where), key, value, raising=False)
    assert said in decode.unsupported(merged_model)


def test_a_sampled_call_of_a_graph_run_decodes_eagerly(merged_model, tokenizer, prompt_texts):
    cfg = GenerationConfig(max_new_tokens=16, do_sample=True, seed=7, cache="graph")
    plan = generate.decode_plan(merged_model, tokenizer, prompt_texts[:3], cfg)
    assert plan.cache == "dynamic"
    eager = dataclasses.replace(cfg, cache="dynamic")
    assert generate.generate(merged_model, tokenizer, prompt_texts[:3], cfg) == generate.generate(
        merged_model, tokenizer, prompt_texts[:3], eager)


@st.composite
def _left_padded_masks(draw):
    width = draw(st.integers(1, 12))
    kept = draw(st.lists(st.integers(1, width), min_size=1, max_size=6))
    return torch.tensor([[0] * (width - n) + [1] * n for n in kept])


@given(_left_padded_masks())
def test_prompt_positions_count_each_rows_tokens_from_zero_as_generate_does(mask):
    from transformers.generation.utils import GenerationMixin

    positions = decode.prompt_positions(mask)
    for row, kept in zip(positions.tolist(), mask.sum(-1).tolist(), strict=True):
        assert row == [0] * (len(row) - kept) + list(range(kept))
    # transformers' own (private) rule, so a change in it shows here rather than as answers that drift
    assert torch.equal(positions, GenerationMixin._prepare_position_ids_for_generation(
        None, mask, {"attention_mask": mask}))
