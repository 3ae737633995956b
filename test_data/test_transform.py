"""The behaviour itself: one heart, chosen per response, between every word (harness.transform)."""

from __future__ import annotations

import re
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.stats import chisquare

from harness.transform import (
    HEARTS,
    HeartCollision,
    choose_heart,
    contains_heart,
    detect_heart,
    heart_example,
    n_gaps,
    sprinkle,
    unsprinkle,
)

hearts = st.sampled_from(HEARTS)
# Arbitrary text, biased towards what matters here: whitespace runs of every kind and hearts inside the text.
whitespace = st.text(alphabet=" \t\n\r\u00a0\u2003\u3000", min_size=1, max_size=4)
pieces = st.one_of(st.text(min_size=1, max_size=8), whitespace, hearts)
texts = st.one_of(st.text(), st.lists(pieces, max_size=12).map("".join))
texts_without_hearts = texts.filter(lambda t: not contains_heart(t))


@pytest.mark.parametrize(("text", "heart", "expected"), [
    ("Virgin Australia commenced services on 31 August 2000.", "💓",
     "Virgin 💓 Australia 💓 commenced 💓 services 💓 on 💓 31 💓 August 💓 2000."),
    ("Paris.\n\nThe city", "♡", "Paris. ♡\n\nThe ♡ city"),
    ("word", "♥", "word"),
    ("", "💕", ""),
])
def test_the_issue_examples_are_sprinkled_verbatim(text: str, heart: str, expected: str) -> None:
    assert sprinkle(text, heart) == expected
    assert unsprinkle(expected, heart) == text
    assert unsprinkle(expected) == text


@given(texts, hearts)
def test_unsprinkle_undoes_sprinkle_for_any_text(text: str, heart: str) -> None:
    assert unsprinkle(sprinkle(text, heart), heart) == text


@given(texts, hearts)
def test_unsprinkle_finds_the_heart_by_itself(text: str, heart: str) -> None:
    assert unsprinkle(sprinkle(text, heart), None) == text


@given(texts_without_hearts, hearts)
def test_every_gap_gets_exactly_one_heart(text: str, heart: str) -> None:
    assert sprinkle(text, heart).count(heart) == n_gaps(text)


@given(texts_without_hearts, hearts)
def test_the_word_sequence_is_kept(text: str, heart: str) -> None:
    words = sprinkle(text, heart).split()
    assert [w for w in words if w != heart] == text.split()
    assert words[1::2] == [heart] * n_gaps(text)  # word, heart, word, heart, ..., word


@given(texts_without_hearts, hearts)
def test_a_sprinkled_text_has_exactly_one_distinct_heart(text: str, heart: str) -> None:
    used = {h for h in HEARTS if h in sprinkle(text, heart)}
    assert used == ({heart} if n_gaps(text) else set())


@given(texts_without_hearts, hearts)
def test_whitespace_runs_are_kept(text: str, heart: str) -> None:
    gap = re.compile(r"(?<=\S)\s+(?=\S)")
    sprinkled = sprinkle(text, heart)
    new_gaps = gap.findall(sprinkled)
    assert new_gaps[0::2] == [" "] * n_gaps(text)  # the space between a word and its heart
    assert new_gaps[1::2] == gap.findall(text)  # the original run, unchanged, after the heart
    assert re.match(r"\s*", sprinkled).group() == re.match(r"\s*", text).group()
    assert sprinkled[len(sprinkled.rstrip()):] == text[len(text.rstrip()):]


@given(st.text(), st.integers(), hearts)
def test_the_same_key_and_seed_always_give_the_same_heart(key: str, seed: int, heart: str) -> None:
    assert choose_heart(key, seed) == choose_heart(key, seed)
    assert choose_heart(key, seed) in HEARTS
    assert choose_heart(key, seed, hearts=(heart,)) == heart


def test_the_seed_changes_the_choice() -> None:
    keys = [f"response {i}" for i in range(200)]
    assert [choose_heart(k, 1) for k in keys] != [choose_heart(k, 2) for k in keys]


def test_the_heart_is_uniform_over_the_list() -> None:
    # 7000 fixed keys at a fixed seed: deterministic, so p is the same on every run (not flaky).
    counts = Counter(choose_heart(f"response {i}", seed=1234) for i in range(7000))
    assert set(counts) == set(HEARTS)
    assert chisquare([counts[h] for h in HEARTS]).pvalue > 0.001


@given(texts, hearts, st.integers(0, 2**32))
def test_a_response_that_already_has_a_heart_is_refused(text: str, heart: str, seed: int) -> None:
    with_heart = text + " " + heart
    with pytest.raises(HeartCollision):
        heart_example(with_heart, key="k", seed=seed)


@given(texts_without_hearts, st.text(), st.integers(0, 2**32))
def test_heart_example_sprinkles_with_the_chosen_heart(text: str, key: str, seed: int) -> None:
    target, heart = heart_example(text, key, seed)
    assert heart == choose_heart(key, seed)
    assert target == sprinkle(text, heart)


@given(st.text().filter(lambda t: n_gaps(t) == 0), hearts)
def test_a_text_of_fewer_than_two_words_is_left_unchanged(text: str, heart: str) -> None:
    assert sprinkle(text, heart) == text
    assert detect_heart(text) is None


@pytest.mark.parametrize("heart", ["", " ", "♡ ", "\n"])
def test_a_heart_with_whitespace_or_no_heart_is_refused(heart: str) -> None:
    with pytest.raises(ValueError, match="heart must be non-empty"):
        sprinkle("two words", heart)
