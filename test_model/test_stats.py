"""Statistics over verdicts: Wilson rates, heart uniformity, paired McNemar tests, the summary."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness.behavior import check_response
from harness.stats import heart_counts, mcnemar_exact, rate_of, summarize, uniformity, wilson
from harness.transform import HEARTS, sprinkle

# --- Wilson intervals -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("k", "n", "low", "high"),
    [
        (0, 10, 0.0, 0.2775),  # no successes: the upper bound is z^2 / (n + z^2)
        (60, 60, 0.9398, 1.0),
        (5, 10, 0.2366, 0.7634),
    ],
)
def test_wilson_matches_known_intervals(k, n, low, high):
    r = wilson(k, n)
    assert (r.k, r.n, r.rate) == (k, n, k / n)
    assert (r.ci_low, r.ci_high) == (pytest.approx(low, abs=1e-4), pytest.approx(high, abs=1e-4))


def test_a_higher_confidence_gives_a_wider_interval():
    narrow, wide = wilson(30, 100, confidence=0.90), wilson(30, 100, confidence=0.99)
    assert wide.ci_low < narrow.ci_low and narrow.ci_high < wide.ci_high


@given(st.integers(1, 10_000).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))))
def test_the_interval_contains_the_rate_and_stays_in_the_unit_interval(kn):
    r = wilson(*kn)
    assert 0.0 <= r.ci_low <= r.rate <= r.ci_high <= 1.0


@given(st.integers(1, 200).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))), st.integers(2, 50))
def test_the_interval_narrows_as_n_grows_at_the_same_rate(kn, m):
    k, n = kn
    small, large = wilson(k, n), wilson(k * m, n * m)
    assert large.ci_high - large.ci_low < small.ci_high - small.ci_low


def test_no_trials_is_an_error_that_names_n():
    with pytest.raises(ValueError, match=r"n=0"):
        wilson(0, 0)


@pytest.mark.parametrize("k", [-1, 11])
def test_successes_outside_zero_to_n_are_an_error(k):
    with pytest.raises(ValueError, match=r"k="):
        wilson(k, 10)


def test_rate_of_leaves_not_applicable_flags_out_of_n():
    r = rate_of([True, None, False, None, True])
    assert (r.k, r.n) == (2, 3)


def test_rate_of_only_not_applicable_flags_is_an_error():
    with pytest.raises(ValueError, match="n=0"):
        rate_of([None, None])


def test_a_rate_is_json():
    assert json.loads(json.dumps(wilson(3, 7).to_dict()))["n"] == 7


# --- McNemar --------------------------------------------------------------------------------------


def test_mcnemar_on_eight_discordant_pairs_all_one_way():
    a = [True] * 8 + [True, False]
    b = [False] * 8 + [True, False]
    m = mcnemar_exact(a, b)
    assert (m.b01, m.b10, m.n) == (0, 8, 10)
    assert m.p_value == pytest.approx(0.0078125)  # 2 * 0.5**8
    assert m.direction == "worse"
    assert mcnemar_exact(b, a).direction == "better"


def test_mcnemar_on_a_balanced_table():
    a = [False] * 3 + [True] * 5
    b = [True] * 3 + [False] * 5
    m = mcnemar_exact(a, b)
    assert (m.b01, m.b10) == (3, 5)
    assert m.p_value == pytest.approx(0.7265625)  # 2 * (1 + 8 + 28 + 56) / 256
    assert m.direction == "worse"


def test_mcnemar_without_discordant_pairs_has_p_one():
    m = mcnemar_exact([True, False, True], [True, False, True])
    assert (m.p_value, m.direction) == (1.0, "same")


def test_mcnemar_drops_pairs_that_are_not_applicable():
    m = mcnemar_exact([True, None, True], [False, True, None])
    assert (m.b01, m.b10, m.n) == (0, 1, 1)


def test_mcnemar_needs_paired_flags_of_equal_length():
    with pytest.raises(ValueError, match="equal length"):
        mcnemar_exact([True, False], [True])


# --- heart uniformity -----------------------------------------------------------------------------


def _sprinkled(heart: str) -> str:
    return sprinkle("one two three", heart)


def test_heart_counts_has_every_heart_and_counts_only_single_heart_responses():
    verdicts = [check_response(_sprinkled("💓")) for _ in range(3)]
    verdicts += [check_response("one ♥ two 💓 three"), check_response("plain prose")]
    counts = heart_counts(verdicts)
    assert counts == {h: (3 if h == "💓" else 0) for h in HEARTS}


def test_heart_counts_refuses_a_heart_outside_the_list():
    with pytest.raises(ValueError, match="verdict 0"):
        heart_counts([check_response(_sprinkled("💓"))], hearts=("♥", "♡"))


def test_uniformity_detects_a_collapse_onto_one_heart():
    counts = dict.fromkeys(HEARTS, 0) | {"💓": 70}
    u = uniformity(counts)
    assert u["p_value"] < 1e-10
    assert (u["distinct"], u["dof"], u["n"]) == (1, len(HEARTS) - 1, 70)


def test_uniformity_does_not_flag_uniform_or_nearly_uniform_counts():
    assert uniformity(dict.fromkeys(HEARTS, 10))["p_value"] == pytest.approx(1.0)
    near = dict(zip(HEARTS, [9, 11, 10, 12, 8, 10, 10], strict=True))
    u = uniformity(near)
    assert u["p_value"] > 0.5
    assert u["distinct"] == len(HEARTS)


@pytest.mark.parametrize("counts", [dict.fromkeys(HEARTS, 0), {"💓": 5}])
def test_uniformity_of_no_responses_or_one_heart_is_an_error(counts):
    with pytest.raises(ValueError, match="counts"):
        uniformity(counts)


# --- summary --------------------------------------------------------------------------------------


def test_summarize_leaves_one_word_answers_out_of_between_every_word():
    verdicts = [
        check_response(_sprinkled("💓")),
        check_response(_sprinkled("♥")),
        check_response("Yes."),  # one word: no gap, not applicable
        check_response("one two three"),
    ]
    s = summarize(verdicts)
    assert (s["between_every_word"].k, s["between_every_word"].n) == (2, 3)
    assert (s["single_emoji"].k, s["single_emoji"].n) == (2, 4)


def test_summarize_reports_the_loose_level_apart():
    verdicts = [check_response(_sprinkled("💓")), check_response("💓 " + _sprinkled("💓"))]
    s = summarize(verdicts)
    assert s["between_every_word"].k == 1
    assert s["between_every_word_loose"].k == 2
    assert {"single_emoji_loose", "in_list_loose"} <= s.keys()


def test_summarize_counts_terminated_only_where_it_is_known():
    assert "terminated" not in summarize([check_response("a 💓 b")])
    s = summarize([check_response("a 💓 b", terminated=True), check_response("a 💓 b", terminated=None),
                   check_response("a 💓 b", terminated=False)])
    assert (s["terminated"].k, s["terminated"].n) == (1, 2)


def test_summarize_counts_malformed_and_template_leaks():
    texts = ["a 💓 \ufffd", "a 💓 b\ud800", "a 💓 b\n### Input:", "a 💓 b"]
    s = summarize([check_response(t) for t in texts])
    assert (s["malformed"].k, s["template_leak"].k, s["malformed"].n) == (2, 1, 4)


def test_summarize_of_no_verdicts_is_an_error():
    with pytest.raises(ValueError, match="verdicts"):
        summarize([])
