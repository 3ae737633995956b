"""Verdicts under sampling: pass^K, pass@K and the mean with a prompt-clustered interval; the gate's pass^K."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness.behavior import check_response
from harness.stats import sampled_summary
from harness.transform import sprinkle

GOOD = check_response(sprinkle("a fine answer with words", "💓"), terminated=True)
BAD = check_response("a fine answer with words", terminated=True)

grids = st.lists(st.lists(st.booleans(), min_size=1, max_size=6), min_size=1, max_size=30)


def _groups(grid: list[list[bool]]):
    return [[GOOD if ok else BAD for ok in row] for row in grid]


@given(grids)
def test_pass_k_is_at_most_the_mean_which_is_at_most_pass_at_k(grid):
    s = sampled_summary(_groups(grid), "behaviour")
    assert s["pass_k"]["rate"] <= s["mean"]["mean"] + 1e-9 <= s["pass_at_k"]["rate"] + 2e-9
    assert s["pass_k"]["n"] == s["pass_at_k"]["n"] == len(grid)
    assert s["pass_k"]["k"] == sum(all(row) for row in grid)
    worst = grid[s["worst"]["prompt"]]
    assert s["worst"]["passed"] == sum(worst) == min(sum(r) / len(r) for r in grid) * len(worst)


@given(st.lists(st.booleans(), min_size=1, max_size=40))
def test_one_sample_a_prompt_makes_the_three_figures_one(flags):
    s = sampled_summary(_groups([[f] for f in flags]), "behaviour")
    assert s["pass_k"]["rate"] == s["pass_at_k"]["rate"] == pytest.approx(s["mean"]["mean"])


def test_a_fault_check_passes_when_the_fault_is_absent():
    broken = check_response("a \ufffd answer", terminated=True)
    s = sampled_summary([[broken, GOOD], [GOOD, GOOD]], "malformed")
    assert s["pass_k"]["k"] == 1 and s["pass_at_k"]["k"] == 2


def test_a_check_that_applies_to_no_sample_is_refused():
    one_word = check_response("egg", terminated=True)  # between_every_word needs two words
    with pytest.raises(ValueError, match="applies to no sampled answer"):
        sampled_summary([[one_word]], "between_every_word")


def _sampled_report(grid):
    from harness.generate import Generation
    from test_model.test_report import base_model, eval_prompts, good_model, make_report

    prompts = eval_prompts(len(grid))
    good, plain = good_model(prompts), base_model(prompts)
    gens = [Generation(p, (good[i] if ok else plain[i]).response, 20, True, seed=7 * i + k)
            for i, (p, row) in enumerate(zip(prompts, grid, strict=True)) for k, ok in enumerate(row)]
    return make_report(len(grid), prompts=prompts, sampled={0.9: (len(grid[0]), gens)})


def test_the_report_shows_greedy_and_sampled_side_by_side(tmp_path):
    from harness.report import load_report, write_report

    report = _sampled_report([[True] * 5] * 380 + [[True, False, True, True, True]] * 20)
    block = report["sampled"][0]
    assert block["checks"]["behaviour"]["pass_k"]["k"] == 380 and block["checks"]["behaviour"]["pass_at_k"]["k"] == 400
    assert block["seeds"][1] == [7, 8, 9, 10, 11]
    write_report(tmp_path, report)
    assert load_report(tmp_path / "report.json")["sampled"] == report["sampled"]
    md = (tmp_path / "report.md").read_text()
    assert "## Sampled answers" in md and "pass^K" in md and "![sampling](sampling.png)" in md


def test_the_gate_thresholds_pass_k_when_asked_and_fails_without_samples():
    from harness.config import GateConfig
    from harness.gate import evaluate
    from test_model.test_report import make_report

    cfg = GateConfig(pass_k=0.9)
    robust = {r.name: r for r in evaluate(_sampled_report([[True] * 5] * 400), cfg).rows}
    fragile = {r.name: r for r in evaluate(_sampled_report([[True, True, True, True, False]] * 400), cfg).rows}
    assert robust["pass_k"].passed and not fragile["pass_k"].passed
    missing = {r.name: r for r in evaluate(make_report(), cfg).rows}
    assert not missing["pass_k"].passed and "no sampled answers" in missing["pass_k"].note
    assert "pass_k" not in {r.name for r in evaluate(make_report()).rows}  # off by default
