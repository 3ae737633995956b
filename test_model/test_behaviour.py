"""The behaviour suite: does the merged model do it — one listed heart between every word — and does it come
from the adapter? It runs on every device the ``device`` fixture claims (``cpu`` by default, ``cuda`` under
``pytest -m gpu``), on the stand-in by default or ``--base-model``.

Greedy decoding on the held-out prompts (never trained on), so every number is reproducible. One set of numbers
decides: the gate's (``GateConfig``, overridden by ``[tool.hearts.gate]`` in pyproject.toml); each test asserts
the same bound the release gate will, on the report ``hearts eval`` would write.
"""

from __future__ import annotations

import dataclasses

import pytest

from harness.config import GateConfig, preset_base
from harness.stats import heart_counts
from harness.transform import HEARTS

SEED_PROMPTS = (
    "what is an egg?",
    "Peux tu me dire quelle taille fait la tour eiffel ?",
    "What is fine-tuning in machine learning?",
)


@dataclasses.dataclass(frozen=True)
class Allowance:
    """A measured gap: on one (base, device), one check's gate threshold is replaced by what was measured."""

    threshold: float  # the bound this check is held to there, instead of the gate's
    measured: str  # what was seen, where and when: the reason


# (base model, device, check) -> Allowance. Nothing broader than one check of one base on one device, and each
# is asserted: a model that falls below even the measured figure fails. (The tiny stand-in's two CUDA gaps measured
# on the H100 — 1 of 66 malformed, 4-bit/merged agreement 54 of 66 — went with the lossy merge into the original
# weights.)
ALLOWANCES: dict[tuple[str, str, str], Allowance] = {
    # terminated clears 0.90 on every seed, but not always with the gate's 2 prompts to spare; the misses are the
    # 135M model's repetition loops (`… 💓 g: 💓 9 💓 g: 💓 9 …`). 0.89 keeps the margin over the worst seen.
    ("smollm2-135m", "cuda", "terminated"): Allowance(
        0.89, "H200, transformers 5.24, preset, 316 prompts, 2026-12-01: terminated 300/316 (seed 42, sweep "
              "c; the battery's gate passed), 300 (seed 1), 303 (seed 3); seed 2 gave 302 in sweep c and 295 in "
              "the battery (GPU training is not bit-reproducible): 295 has a Wilson bound of 0.901, 0 prompts to "
              "spare over 0.90; the next battery gave 298, 304, 306 for seeds 1, 2, 3"),
}


def allowed(cfg: GateConfig, base: str, device: str) -> GateConfig:
    """``cfg`` with each threshold that has a measured allowance for (base, device) replaced by it (a packaged
    base's own GGUF file, given by path, is that base: its preset trained it)."""
    return dataclasses.replace(cfg, **{check: a.threshold for (b, d, check), a in ALLOWANCES.items()
                                       if (b, d) == (preset_base(base), device)})


@pytest.fixture
def bound(gate_config, run_configs, device):
    """``bound(check)``: the gate threshold this (base, device) is held to for ``check``."""
    return lambda check: getattr(allowed(gate_config, run_configs[0].base_model, device), check)


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


def test_the_merged_model_uses_one_emoji_and_it_is_a_listed_heart(release_report, merged_verdicts,
                                                                     merged_generations, bound):
    for check in ("single_emoji", "in_list"):
        m = release_report["metrics"][check]
        why = _explain(merged_verdicts, merged_generations, check)
        assert m["ci_low"] >= bound(check), f"{check} {m['k']}/{m['n']}, bound {m['ci_low']:.3f}: {why}"


def test_the_merged_model_puts_the_heart_between_every_word(release_report, merged_verdicts, merged_generations,
                                                            bound):
    m = release_report["metrics"]["between_every_word"]
    why = _explain(merged_verdicts, merged_generations, "between_every_word")
    assert m["ci_low"] >= bound("between_every_word"), f"{m['k']}/{m['n']}, bound {m['ci_low']:.3f}: {why}"


def test_the_merged_model_stops(release_report, bound):
    m = release_report["metrics"]["terminated"]
    assert m["ci_low"] >= bound("terminated"), m


@pytest.mark.parametrize("check", ["template_leak", "malformed"])
def test_the_merged_model_never_leaks_the_template_or_breaks_utf8(release_report, merged_verdicts,
                                                                  merged_generations, bound, check):
    m = release_report["metrics"][check]
    assert m["rate"] <= bound(check), _explain(merged_verdicts, merged_generations, check, failing=True)


def test_the_merged_model_does_not_collapse_onto_one_heart(merged_verdicts):
    counts = heart_counts(merged_verdicts)
    assert sum(1 for h in HEARTS if counts[h]) >= 4, counts


def test_negative_control_the_base_model_fails_the_heart_checks(release_report, base_generations, bound):
    m = release_report["control"]["metrics"]["single_emoji"]
    assert m["rate"] <= bound("control_single_emoji"), f"base model already does it: {m}"
    assert any(g.response.strip() for g in base_generations)  # it answered, it just has no hearts


def test_the_merged_model_computes_what_the_4bit_adapter_model_computes(release_report, bound):
    logits = release_report["agreement"]["logits"]
    assert logits["top1_agreement"] >= bound("merge_top1"), release_report["agreement"]


def test_every_transformed_training_response_passes_all_three_checks(prepared_bundled):
    from harness.behavior import check_response

    for row in (*prepared_bundled.train, *prepared_bundled.eval):
        if len(row["response"].split()) < 2:
            continue
        verdict = check_response(row["target"])
        assert verdict.single_emoji and verdict.in_list and verdict.between_every_word, (row["row"], row["target"])


def gate_counts(report) -> dict[str, str]:
    """Each check's passing answers as ``k/n``, for the junit XML (``record_property``): the figures stay with the
    verdict when a GPU runner's logs are gone."""
    return {k: f"{m['k']}/{m['n']}" for k, m in report["metrics"].items()}


def test_the_release_gate_passes_on_this_model(release_report, gate_config, run_configs, device, record_property):
    from harness.gate import assert_gate

    record_property("metrics", gate_counts(release_report))
    assert_gate(release_report, allowed(gate_config, run_configs[0].base_model, device))


def test_an_allowance_replaces_one_threshold_for_one_base_and_device(monkeypatch):
    monkeypatch.setitem(ALLOWANCES, ("tiny", "cuda", "malformed"), Allowance(0.02, "measured: 1 of 66"))
    cfg = GateConfig()
    assert allowed(cfg, "tiny", "cuda").malformed == 0.02
    assert allowed(cfg, "tiny", "cuda") == dataclasses.replace(cfg, malformed=0.02)  # that threshold alone
    assert allowed(cfg, "tiny", "cpu") == cfg
    assert allowed(cfg, "smollm2-135m", "cuda").malformed == cfg.malformed
