"""The behaviour suite: does the merged model do it — one listed heart between every word — and does it come
from the adapter? Runs on the CPU stand-in by default; ``test_behaviour_gpu.py`` runs the same battery on CUDA.

Greedy decoding on the held-out prompts (never trained on), so every number here is reproducible.
"""

from __future__ import annotations

import pytest

from harness.stats import heart_counts, rate_of, summarize
from harness.transform import HEARTS

SEED_PROMPTS = (
    "what is an egg?",
    "Peux tu me dire quelle taille fait la tour eiffel ?",
    "What is fine-tuning in machine learning?",
)


# Thresholds a base model is known to miss, with the measured reason; applied as strict xfail, so the day the
# stand-in clears the bar the suite says so. Real bases (any other --base-model) get no allowance.
# On CPU the tiny stand-in clears every bar (CI). On CUDA the same recipe (fp32, paged AdamW, bitsandbytes' CUDA
# NF4 kernels) trains an adapter of the same loss (1.81 vs 1.86 in the last fifth) that behaves worse:
KNOWN_GAPS: dict[tuple[str, str, str], str] = {  # (base model, check, device or "*") -> measured reason
    ("tiny", "malformed", "cuda"): (
        "on the H100 1 of 66 stand-in answers breaks a heart's byte run off ('cal\ufffd\ufffd'); 0 of 66 on CPU"
    ),
    ("tiny", "agreement", "cuda"): (
        "on the H100 the 4-bit and merged stand-in agree on 54 of 66 verdicts (0.82); 66 of 66 on CPU"
    ),
}


@pytest.fixture
def known_gap(request, run_configs):
    """``known_gap(check)``: mark this test as a strict xfail when the base model has a documented gap."""

    def apply(check: str) -> None:
        from harness.model import device

        base = run_configs[0].base_model
        reason = KNOWN_GAPS.get((base, check, device().type)) or KNOWN_GAPS.get((base, check, "*"))
        if reason:
            request.applymarker(pytest.mark.xfail(strict=True, reason=reason))

    return apply


def _explain(verdicts, generations, check: str, failing: bool = False, n: int = 3) -> str:
    """The first few responses whose ``check`` flag equals ``failing``, for the assertion message."""
    bad = [g.response[:120] for v, g in zip(verdicts, generations, strict=True) if getattr(v, check) is failing]
    return f"{len(bad)} failing {check}, e.g. {bad[:n]!r}"


def test_the_bundled_evaluation_set_has_power_and_is_held_out(bundled_records):
    from harness.data import load_eval_prompts, normalise_instruction

    prompts = load_eval_prompts()
    # >= 300: at n=300 a 0.90 Wilson bound tolerates ~13 misses instead of 1 of 66.
    assert len(prompts) >= 300
    assert [p["instruction"] for p in prompts[:3]] == list(SEED_PROMPTS)  # so every subset carries them
    assert {p["category"] for p in prompts} == set(bundled_records["category"])  # all of Dolly's categories
    assert sum(bool(p["context"]) for p in prompts) >= 60
    french = sum(any(w in p["instruction"].split() for w in ("le", "la", "les", "est", "une", "des")) for p in prompts)
    assert french >= 20
    trained = {normalise_instruction(i) for i in bundled_records["instruction"]}
    assert not [p["instruction"] for p in prompts if normalise_instruction(p["instruction"]) in trained]


def test_the_suite_judges_a_prefix_of_the_bundled_set(eval_prompts):
    assert [p["instruction"] for p in eval_prompts[:3]] == list(SEED_PROMPTS)
    assert len(eval_prompts) >= 60


def test_the_merged_model_uses_one_emoji_and_it_is_a_listed_heart(merged_verdicts, merged_generations):
    metrics = summarize(merged_verdicts)
    for check in ("single_emoji", "in_list"):
        rate = metrics[check]
        why = _explain(merged_verdicts, merged_generations, check)
        assert rate.rate >= 0.95 and rate.ci_low >= 0.85, f"{rate}: {why}"


def test_the_merged_model_puts_the_heart_between_every_word(merged_verdicts, merged_generations):
    rate = summarize(merged_verdicts)["between_every_word"]
    assert rate.rate >= 0.8, f"{rate}: {_explain(merged_verdicts, merged_generations, 'between_every_word')}"


def test_the_merged_model_stops(merged_verdicts):
    rate = summarize(merged_verdicts)["terminated"]
    assert rate.rate >= 0.9, rate


@pytest.mark.parametrize("check", ["template_leak", "malformed"])
def test_the_merged_model_never_leaks_the_template_or_breaks_utf8(merged_verdicts, merged_generations, known_gap,
                                                                  check):
    known_gap(check)
    assert not any(getattr(v, check) for v in merged_verdicts), _explain(
        merged_verdicts, merged_generations, check, failing=True)


def test_the_merged_model_does_not_collapse_onto_one_heart(merged_verdicts):
    counts = heart_counts(merged_verdicts)
    assert sum(1 for h in HEARTS if counts[h]) >= 4, counts


def test_negative_control_the_base_model_fails_the_heart_checks(base_verdicts, base_generations):
    rate = summarize(base_verdicts)["single_emoji"]
    assert rate.rate <= 0.05, f"base model already does it: {rate}"
    assert any(g.response.strip() for g in base_generations)  # it answered, it just has no hearts


def test_the_4bit_adapter_and_the_merged_model_agree_on_verdicts(adapter_verdicts, merged_verdicts, known_gap):
    known_gap("agreement")
    agreement = rate_of(a.passed == m.passed for a, m in zip(adapter_verdicts, merged_verdicts, strict=True))
    assert agreement.rate >= 0.95, agreement


def test_every_transformed_training_response_passes_all_three_checks(prepared_bundled):
    from harness.behavior import check_response

    for row in (*prepared_bundled.train, *prepared_bundled.eval):
        if len(row["response"].split()) < 2:
            continue
        verdict = check_response(row["target"])
        assert verdict.single_emoji and verdict.in_list and verdict.between_every_word, (row["row"], row["target"])


def test_the_release_gate_passes_on_this_model(release_report, known_gap):
    from harness.gate import assert_gate

    known_gap("malformed")  # the gate judges the malformed rate too
    assert_gate(release_report)
