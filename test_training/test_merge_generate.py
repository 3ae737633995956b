"""Merge parity and generation mechanics on the trained adapter (the tiny stand-in unless --base-model).

The identities (a merge computes what base + adapter compute; a prompt's greedy answer does not depend on its
batch) are checked in fp32. In bf16 a real model's rounding forks them: SmolLM2-135M's merged model gives its
eager greedy text on only 127 of 316 prompts once compiled (docs/sweeps/smollm2-135m-2026-12-01-b). The
release's own dtype is held to the gate's teacher-forced top-1 bound instead. The tiny stand-in computes in
fp32 everywhere (its preset), so there the fp32 models are the fixtures themselves.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from harness import generate, merge
from harness.config import GenerationConfig

# Merged weights are W + s*B@A rounded once; the unmerged path adds s*B@(A@x) per call. Same maths, different
# rounding: in fp32 that is ~1e-6 of a logit. (In bf16 a logit of ~16 has a step of 0.125, and a 30-layer model
# compounds it past any element-wise bound, which is why the identities are compared in fp32.) Named per device,
# torchtune style: CUDA's fp32 GEMMs sum in another order for another shape, and on SmolLM2-135M (30 layers,
# H200, the trained adapter) 5 of 11.4M logits of the original merge differed from base + adapter by more than
# 1e-4, the largest by 1.19e-4; 1e-3 leaves it 8x room, and a wrong merge (scale, weights) moves logits by ~1.
FP32 = {"cpu": {"atol": 1e-4, "rtol": 1e-4}, "cuda": {"atol": 1e-3, "rtol": 1e-4}}


# Against the 4-bit model on CPU, bitsandbytes multiplies through a bf16 kernel whatever the compute dtype, so
# the logits carry bf16's rounding compounded over the layers: element-wise tolerances fit a 2-layer stand-in,
# not a 30-layer model. The relative L2 distance is the measure there. Measured in fp32 against the dequantised
# merge: 0.0028 on the stand-in, 0.0097 on SmolLM2-135M with a random r=64 adapter (max |diff| 1.08 on logits
# up to 34). The lossy merge into the original weights is 0.041 and ~0.2 on them. On CUDA the 4-bit layers
# dequantise to the compute dtype, so fp32 is compared element-wise.
CPU_KBIT_REL_L2 = 0.02


@pytest.fixture
def batch(tokenizer, prompt_texts):
    tokenizer.padding_side = "left"
    return tokenizer(prompt_texts[:6], return_tensors="pt", padding=True)


@pytest.fixture
def exact_merged(request, merged_dir, compute_dtype, device):
    """The merged model computing in fp32 (``merged_model`` where that is the run's dtype; else only the fp32
    copy is loaded)."""
    from harness.model import resolve_device

    if compute_dtype == torch.float32:
        return request.getfixturevalue("merged_model")
    return merge.load_merged(merged_dir, torch.float32, resolve_device(device))


def test_a_merge_into_the_original_weights_matches_them_plus_the_adapter(trained_adapter, run_configs,
                                                                         compute_dtype, batch):
    from harness.model import load_base, run_device

    base = load_base(trained_adapter.base, torch.float32, device=run_device(run_configs[0]))
    unmerged = merge.apply_adapter(base, trained_adapter.path).eval()
    merged = merge.load_merged_in_memory(trained_adapter.base, trained_adapter.path, run_configs[0], torch.float32,
                                         method="original").eval()
    torch.testing.assert_close(merge.logits_on(merged, batch), merge.logits_on(unmerged, batch),
                               **FP32[merged.device.type])


def test_the_default_merge_reproduces_the_trained_4bit_model(trained_adapter, run_configs, adapter_model,
                                                             merged_model, compute_dtype, batch, record_property):
    # The adapter learned against the dequantised NF4 weights; merged into those, the release computes what
    # was trained, up to the rounding of W + BA.
    assert merge.merge_method(merged_model.name_or_path) == "dequantized"
    # The release in its own dtype is recorded here, and gated on the report's positions (merge_top1 in
    # test_behaviour): on these 6 prompts' 232 positions, SmolLM2 in bf16 on the H200 gave 0.944 where the report's
    # 723 gave 0.970-0.995 — a bound on a handful of positions judges bf16's luck, not the merge.
    record_property("dequantized_merge_fidelity", merge.logit_fidelity(adapter_model.eval(), merged_model, batch))
    # The method, without the dtype's rounding: the same merge built in fp32 against the 4-bit model in fp32.
    cfg = run_configs[0]
    if compute_dtype == torch.float32:
        trained, merged = adapter_model, merged_model
    else:
        trained = merge.load_adapter_model(trained_adapter.base, trained_adapter.path, cfg, torch.float32)
        merged = merge.load_merged_in_memory(trained_adapter.base, trained_adapter.path, cfg, torch.float32,
                                             method="dequantized")
    if merged.device.type == "cpu":
        exact = merge.logit_fidelity(trained.eval(), merged.eval(), batch)
        assert exact["rel_l2"] <= CPU_KBIT_REL_L2, exact
    else:
        torch.testing.assert_close(merge.logits_on(merged.eval(), batch), merge.logits_on(trained.eval(), batch),
                                   **FP32[merged.device.type])


def test_merging_into_the_original_weights_adds_the_quantisation_error_back(
        trained_adapter, adapter_model, merged_model, run_configs, compute_dtype, batch, record_property):
    original = merge.load_merged_in_memory(trained_adapter.base, trained_adapter.path, run_configs[0],
                                           compute_dtype, method="original").eval()
    adapter_model.eval()
    lossy = merge.logit_fidelity(adapter_model, original, batch)
    faithful = merge.logit_fidelity(adapter_model, merged_model, batch)
    record_property("merge_fidelity", {"original": lossy, "dequantized": faithful})
    # Measured on the CPU stand-in: relative L2 0.0028 (dequantized; bitsandbytes' bf16 kernel) against 0.041
    # (original), top-1 agreement 1.0 against 0.977. SmolLM2-135M at r=64: ~0.2 for the original merge.
    assert lossy["rel_l2"] > 5 * faithful["rel_l2"], (lossy, faithful)
    assert lossy["top1_agreement"] < faithful["top1_agreement"], (lossy, faithful)


# #13's goal, judged where it can be: verdict agreement with the trained 4-bit model on the eval prompts. In
# bf16 it measures bf16's forks as much as the merge (the same merged weights, compiled against eager, gave the
# same text on 127 of 316 SmolLM2 prompts); in fp32 on CUDA both models compute the same numbers up to summation
# order, so what is left is the merge (on CPU bitsandbytes' 4-bit path still rounds through bf16: CPU_KBIT_REL_L2).
# 128 prompts: a bound of 0.98 then allows 2 disagreements.
FP32_AGREEMENT_PROMPTS = 128


def test_in_fp32_the_default_merge_answers_as_the_trained_model_and_the_original_merge_does_not(
        trained_adapter, run_configs, run_settings, tokenizer, prompt_texts, record_property):
    import dataclasses

    from harness.report import judge

    cfg = dataclasses.replace(run_configs[0], compute_dtype="fp32")
    prompts = prompt_texts[:FP32_AGREEMENT_PROMPTS]
    trained = merge.load_adapter_model(trained_adapter.base, trained_adapter.path, cfg, torch.float32)
    reference = generate.generate(trained, tokenizer, prompts, run_settings.generation)
    del trained
    expected = judge(reference)
    agreement = {}
    for method in ("dequantized", "original"):
        merged = merge.load_merged_in_memory(trained_adapter.base, trained_adapter.path, cfg, torch.float32,
                                             method=method)
        answers = generate.generate(merged, tokenizer, prompts, run_settings.generation)
        del merged
        agreement[method] = {
            "verdicts": sum(v.passed == e.passed for v, e in zip(judge(answers), expected, strict=True)),
            "same_text": sum(a.response == r.response for a, r in zip(answers, reference, strict=True)),
            "prompts": len(prompts)}
    record_property("fp32_merge_agreement", agreement)
    assert agreement["dequantized"]["verdicts"] >= 0.98 * len(prompts), agreement
    # The negative control: the lossy merge must show here, or this test could not see a wrong merge. It is on
    # identical answers: on the CPU stand-in the original merge's verdicts agree too (128 of 128; text 62).
    assert agreement["original"]["same_text"] < agreement["dequantized"]["same_text"], agreement


def test_merging_changes_the_model(trained_adapter, merged_model, base_model, batch):
    batch = batch.to(merged_model.device)
    with torch.inference_mode():
        assert not torch.allclose(merged_model(**batch).logits, base_model(**batch).logits, atol=1e-3)


def test_the_merged_folder_loads_with_stock_automodel_from_safetensors(merged_dir):
    assert list(merged_dir.glob("*.safetensors")) and not list(merged_dir.glob("*.bin"))
    model = AutoModelForCausalLM.from_pretrained(merged_dir)
    assert model.config.use_cache  # released with the KV cache on
    assert (merged_dir / "tokenizer.json").is_file()


def test_the_unmerged_4bit_adapter_model_also_does_the_behaviour(adapter_verdicts, adapter_generations,
                                                                 merged_generations, record_property):
    from harness.stats import rate_of

    # Text identity is reported, not asserted: NF4 rounding of a 128-wide model moves greedy argmaxes (0 of 66
    # identical on the H100 in bf16). The behaviour is what must survive quantisation.
    same = sum(a.response == m.response for a, m in zip(adapter_generations, merged_generations, strict=True))
    record_property("greedy_text_agreement", same / len(merged_generations))
    single = rate_of(v.single_emoji for v in adapter_verdicts)
    assert single.rate >= 0.9, single


def test_batched_left_padded_generation_equals_one_at_a_time(exact_merged, tokenizer, prompt_texts):
    # Eager: on CUDA the static cache compiles a decode step per input shape, batch and length (~25 s each on
    # SmolLM2, 123 s for this test on the H200); the static cache's identity is the next test's static param.
    prompts = prompt_texts[:4]
    cfg = GenerationConfig(max_new_tokens=24, cache="dynamic")
    batched = generate.generate(exact_merged, tokenizer, prompts, cfg)
    single = [generate.generate(exact_merged, tokenizer, [p], cfg)[0] for p in prompts]
    assert [g.response for g in batched] == [g.response for g in single]


@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_length_sorted_batches_give_each_prompt_its_own_answer_in_order(exact_merged, tokenizer, prompt_texts, cache):
    # Five prompts of different lengths in batches of two: sorted, split, the last batch topped up (static), and
    # every answer back at its prompt's place, equal to generating that prompt alone.
    prompts = prompt_texts[:5]
    cfg = GenerationConfig(max_new_tokens=16, batch_size=2, cache=cache)
    batched = generate.generate(exact_merged, tokenizer, prompts, cfg)
    single = [generate.generate(exact_merged, tokenizer, [p], GenerationConfig(max_new_tokens=16, cache=cache))[0]
              for p in prompts]
    assert [g.prompt for g in batched] == prompts
    assert [g.response for g in batched] == [g.response for g in single]


def test_a_static_cache_is_sized_to_its_own_call_not_to_the_models_earlier_longer_one(merged_model, tokenizer,
                                                                                     prompt_texts, monkeypatch):
    from transformers import StaticCache

    sizes = []
    init = StaticCache.__init__

    def recording(self, *args, **kwargs):
        sizes.append(kwargs["max_cache_len"])
        init(self, *args, **kwargs)

    monkeypatch.setattr(StaticCache, "__init__", recording)
    monkeypatch.setattr(merged_model.generation_config, "disable_compile", True)  # the cache is the point, not speed
    by_length = sorted(prompt_texts[:8], key=lambda p: len(tokenizer(p)["input_ids"]))
    short, long = by_length[0], by_length[-1]
    cfg = GenerationConfig(max_new_tokens=8, cache="static")
    for prompt in (long, short):
        generate.generate(merged_model, tokenizer, [prompt], cfg)
    assert sizes == [len(tokenizer(p)["input_ids"]) + 8 for p in (long, short)]
    assert sizes[0] > sizes[1]  # the prompts differ in length, or the test shows nothing


def test_generation_returns_only_new_text_with_token_counts(merged_model, tokenizer, prompt_texts):
    out = generate.generate(merged_model, tokenizer, prompt_texts[:3], GenerationConfig(max_new_tokens=8))
    for g in out:
        assert "### Instruction" not in g.response and not g.response.startswith("Below is")
        assert 0 < g.new_tokens <= 8
        assert g.terminated or g.new_tokens == 8


def test_generation_stops_at_eos_and_says_so(merged_generations, run_settings):
    finished = [g for g in merged_generations if g.terminated]
    assert finished, "no generation reached EOS"
    limit = run_settings.generation.max_new_tokens
    assert all(g.new_tokens <= limit for g in merged_generations)
    cut = [g for g in merged_generations if not g.terminated]
    assert all(g.new_tokens == limit for g in cut)


def test_seeded_sampling_is_reproducible(merged_model, tokenizer, prompt_texts):
    cfg = GenerationConfig(max_new_tokens=16, do_sample=True, seed=7)
    first = generate.generate(merged_model, tokenizer, prompt_texts[:2], cfg)
    second = generate.generate(merged_model, tokenizer, prompt_texts[:2], cfg)
    assert [g.response for g in first] == [g.response for g in second]


def test_a_sampled_answer_is_regenerated_alone_from_its_recorded_seed(exact_merged, tokenizer, prompt_texts):
    cfg = GenerationConfig(max_new_tokens=24, do_sample=True, temperature=1.2, top_p=0.95, seed=3)
    batched = generate.generate(exact_merged, tokenizer, prompt_texts[:6], cfg)
    assert all(g.seed is not None for g in batched)
    for g in batched[:3]:
        [alone] = generate.generate(exact_merged, tokenizer, [g.prompt], cfg, seeds=[g.seed])
        assert alone.response == g.response and alone.seed == g.seed
    other = generate.generate(exact_merged, tokenizer, prompt_texts[:6], GenerationConfig(
        max_new_tokens=24, do_sample=True, temperature=1.2, top_p=0.95, seed=4))
    assert [g.response for g in other] != [g.response for g in batched]  # the seed matters
    greedy = generate.generate(exact_merged, tokenizer, prompt_texts[:6], GenerationConfig(max_new_tokens=24))
    assert [g.response for g in greedy] != [g.response for g in batched] and greedy[0].seed is None


def test_a_tiny_nucleus_samples_the_greedy_answer(merged_model, tokenizer, prompt_texts):
    # top_p -> 0 keeps only the most likely token: sampling must then reproduce greedy decoding exactly.
    greedy = generate.generate(merged_model, tokenizer, prompt_texts[:4], GenerationConfig(max_new_tokens=24))
    narrow = generate.generate(merged_model, tokenizer, prompt_texts[:4], GenerationConfig(
        max_new_tokens=24, do_sample=True, temperature=1.0, top_p=1e-6, seed=9))
    assert [g.response for g in narrow] == [g.response for g in greedy]


def test_min_new_tokens_makes_every_row_decode_the_same_work(merged_model, tokenizer, prompt_texts):
    # What the generation benchmarks rely on: the stand-in answers stop after ~80 tokens; a round must not.
    out = generate.generate(merged_model, tokenizer, prompt_texts[:4],
                            GenerationConfig(max_new_tokens=200, min_new_tokens=200))
    assert [g.new_tokens for g in out] == [200] * 4 and not any(g.terminated for g in out)


def test_an_unknown_kv_cache_is_a_one_line_error_naming_it(merged_model, tokenizer, prompt_texts):
    from harness.errors import InputError

    # refused when the config is built (before any model work), so this never reaches generate()
    with pytest.raises(InputError, match=r"GenerationConfig\.cache: expected one of auto, dynamic, static"):
        generate.generate(merged_model, tokenizer, prompt_texts[:1], GenerationConfig(cache="paged"))


def test_the_4bit_model_computes_its_lora_product_as_training_did(trained_adapter, run_configs, batch, device):
    """In bf16 the adapter's weights are cast once (``merge.lora_in``), and the model gives the logits of peft's
    own load (fp32 adapter weights) under training's autocast; without autocast, peft's load computes the LoRA
    product in fp32 instead (the negative control)."""
    from harness import model

    cfg = run_configs[0]
    cast = merge.load_adapter_model(trained_adapter.base, trained_adapter.path, cfg, torch.bfloat16).eval()
    lora = {name: p.dtype for name, p in cast.named_parameters() if "lora_" in name}
    assert lora and set(lora.values()) == {torch.bfloat16}, lora
    peft_load = merge.apply_adapter(model.load_quantized(trained_adapter.base, cfg, torch.bfloat16),
                                    trained_adapter.path).eval()
    assert {p.dtype for name, p in peft_load.named_parameters() if "lora_" in name} == {torch.float32}
    with torch.autocast(device, dtype=torch.bfloat16):  # what the Trainer's bf16=True wraps each step in
        as_trained = merge.logits_on(peft_load, batch)
    assert torch.equal(merge.logits_on(cast, batch), as_trained)
    assert not torch.equal(merge.logits_on(peft_load, batch), as_trained)
