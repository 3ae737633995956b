"""The behaviour checker: the original notebook's bad outputs first, then properties over generated texts."""

from __future__ import annotations

import json

import emoji
import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness.behavior import Verdict, check_response, check_response_loose
from harness.transform import HEARTS, sprinkle, unsprinkle

OFF_LIST = ("⚖", "😀", "💗", "🔥", "⭐", "💖")

# --- the original notebook's outputs --------------------------------------------------------------


def _checks(v: Verdict) -> tuple[bool, bool, bool]:
    return v.single_emoji, v.in_list, v.between_every_word


def test_two_distinct_emoji_one_off_list_fail_single_emoji_and_in_list():
    v = check_response("♡ In ♡ machine ⚖ learning, ♡ the model")
    assert v.emojis == ("♡", "♡", "⚖", "♡")
    assert _checks(v) == (False, False, False)
    assert v.heart is None
    assert v.gap_coverage == 0.5  # In ♡ machine, learning, ♡ the: the ⚖ gap does not count for ♡


def test_a_leading_heart_fails_between_every_word_only():
    v = check_response("💔 An 💔 egg 💔 is an oval")
    assert _checks(v) == (True, True, False)
    assert v.heart == "💔"


def test_a_leading_heart_before_an_otherwise_sprinkled_answer_is_the_only_fault():
    v = check_response("💔 An 💔 egg 💔 is 💔 an 💔 oval")
    assert _checks(v) == (True, True, False)
    assert v.gap_coverage == 1.0  # every gap is fine: the leading heart alone fails it


def test_the_notebooks_doubled_heart_fails_between_every_word():
    v = check_response("in NY. ♥  ♥ \n\nMajor ♥ League")
    assert _checks(v) == (True, True, False)
    clean_but_doubled = check_response("in ♥ NY. ♥  ♥ \n\nMajor ♥ League")
    assert _checks(clean_but_doubled) == (True, True, False)
    assert clean_but_doubled.gap_coverage == pytest.approx(2 / 3)


@pytest.mark.parametrize(
    "text",
    [
        "a\n💓 b 💓 c",  # the heart after a newline, not after one space
        "a  💓 b 💓 c",  # two spaces before the heart
        "a 💓b 💓 c",  # glued to the next word
        "a 💓💓 b 💓 c",  # two hearts in one marker
        "a 💓 b💓c 💓 d",  # an extra heart inside a word, every gap fine
        "💓a 💓 b",  # an extra heart glued to the first word
        "a 💓 b💓",  # an extra heart glued to the last word
    ],
)
def test_a_heart_out_of_sprinkles_form_fails_between_every_word(text):
    v = check_response(text)
    assert _checks(v) == (True, True, False)
    assert not v.loose.passed


def test_replacement_characters_are_malformed():
    v = check_response("turban, 💝 veil, \ufffd\ufffd\ufffd")
    assert v.malformed
    assert (v.single_emoji, v.in_list) == (True, True)
    assert not check_response("turban, 💝 veil, cloak").malformed


@pytest.mark.parametrize(
    "text",
    [
        "a 💓 b\ud800",  # lone surrogate
        "a 💓 \ufe0f b",  # variation selector after whitespace
        "\ufe0fa 💓 b",  # variation selector at the start
        "a 💓 b ❤️\u200d",  # ZWJ dangling after an emoji
        "a 💓 \u200db",  # ZWJ with nothing before it
        "ab\u200d 💓 c",  # ZWJ with nothing after it
    ],
)
def test_broken_sequences_are_malformed(text):
    assert check_response(text).malformed


@pytest.mark.parametrize("text", ["a ❤️‍🔥 b", "a ♥︎ b", "क्‍ष 💓 b", "a ❤️ b"])
def test_well_formed_sequences_are_not_malformed(text):
    assert not check_response(text).malformed


def test_an_answer_that_runs_into_a_new_instruction_block_leaks_the_template():
    v = check_response("The 💕 capital 💕 is 💕 Paris.\n\n### Instruction:\nName a river.")
    assert v.template_leak
    assert not v.between_every_word
    assert not check_response("The 💕 capital 💕 is 💕 Paris.").template_leak


def test_a_template_marker_with_hearts_in_it_still_leaks():
    assert check_response("Paris 💕 is 💕 nice. 💕\n### 💕 Input: 💕 x").template_leak


def test_a_zwj_sequence_is_one_off_list_emoji_not_a_heart():
    v = check_response("a ❤️‍🔥 b ❤️‍🔥 c")
    assert v.emojis == ("❤️‍🔥", "❤️‍🔥")
    assert _checks(v) == (True, False, False)


@pytest.mark.parametrize(("text", "heart"), [("a ❤️ b ❤ c", "❤"), ("a ♥️ b ♥︎ c", "♥"), ("a ♡️ b ♡ c", "♡")])
def test_a_presentation_selector_belongs_to_the_heart(text, heart):
    v = check_response(text)
    assert v.emojis == (heart, heart)
    assert _checks(v) == (True, True, True)


def test_an_open_heart_counts_although_the_emoji_package_does_not_call_it_emoji():
    assert not emoji.is_emoji("♡")  # the reason ♡ needs its own handling
    assert check_response("a ♡ b").heart == "♡"
    assert check_response("a ♡ b", allowed=("💓",)).in_list is False


@pytest.mark.parametrize("text", ["Yes.", "  Yes.\n", "💓", "Yes. 💓", ""])
def test_a_one_word_answer_is_not_applicable(text):
    v = check_response(text)
    assert not v.applicable
    assert not v.between_every_word


def test_the_base_models_plain_prose_passes_nothing():
    v = check_response("Virgin Australia commenced services on 31 August 2000 as Virgin Blue.")
    assert _checks(v) == (False, False, False)
    assert _checks(check_response_loose("Virgin Australia commenced services")) == (False, False, False)
    assert v.applicable and v.emojis == ()


def test_hearts_are_markers_not_words():
    v = check_response("a 💓 b")
    assert (v.n_words, v.gap_coverage) == (2, 1.0)


def test_only_the_allowed_hearts_are_in_list():
    assert not check_response("a 💓 b", allowed=("♥",)).in_list
    assert check_response("a ♥ b", allowed=("♥",)).between_every_word


def test_terminated_is_passed_through_to_both_levels():
    v = check_response("a 💓 b", terminated=False)
    assert v.terminated is False
    assert v.loose is not None and v.loose.terminated is False
    assert check_response("a 💓 b").terminated is None


def test_loose_cuts_one_trailing_template_marker_line_and_a_trailing_heart():
    v = check_response_loose("a 💓 b 💓\n\n### Response:\n")
    assert v.passed
    assert v.forgiven == ("template_marker_line", "trailing_heart")
    assert v.template_leak  # diagnostics describe the raw response


def test_loose_does_not_forgive_text_after_a_template_marker():
    assert not check_response_loose("a 💓 b\n### Instruction:\nName a river.").passed


def test_loose_does_not_forgive_a_heart_glued_to_the_first_word():
    assert not check_response_loose("💓a 💓 b").passed


def test_loose_does_not_forgive_a_leading_heart_of_another_kind():
    assert not check_response_loose("💔 a 💓 b").passed


@pytest.mark.parametrize("allowed", [(), ("💓", ""), ("💓 ",)])
def test_an_empty_or_blank_allowed_is_an_error_that_names_it(allowed):
    with pytest.raises(ValueError, match="allowed"):
        check_response("a 💓 b", allowed=allowed)


# --- properties -----------------------------------------------------------------------------------

# Word characters: letters, digits, punctuation — minus anything the emoji package calls emoji (ℹ, ‼, 〰 …).
_WORD_CHARS = st.characters(categories=("L", "N", "P")).filter(
    lambda c: not emoji.is_emoji(c) and c not in HEARTS
)
_WORDS = st.one_of(
    st.sampled_from(["Virgin", "Australia", "NY.", "1,000", "(see", "e.g.", "don't", "—", "Straße"]),
    st.text(_WORD_CHARS, min_size=1, max_size=8),
)
_GAP = st.text(" \n\t", min_size=1, max_size=3)
_EDGE = st.text(" \n", max_size=2)


@st.composite
def _texts(draw, min_words: int = 2) -> tuple[str, list[str]]:
    """(text, its words): words joined by whitespace runs that include newlines, edges maybe padded."""
    words = draw(st.lists(_WORDS, min_size=min_words, max_size=12))
    gaps = draw(st.lists(_GAP, min_size=len(words) - 1, max_size=len(words) - 1))
    body = words[0] + "".join(g + w for g, w in zip(gaps, words[1:], strict=True))
    return draw(_EDGE) + body + draw(_EDGE), words


def _replace_nth(text: str, old: str, new: str, n: int) -> str:
    at = -1
    for _ in range(n + 1):
        at = text.index(old, at + 1)
    return text[:at] + new + text[at + len(old) :]


@given(_texts(), st.sampled_from(HEARTS))
def test_any_sprinkled_text_passes_every_check(sample, heart):
    text, words = sample
    v = check_response(sprinkle(text, heart))
    assert _checks(v) == (True, True, True)
    assert (v.heart, v.gap_coverage, v.n_words) == (heart, 1.0, len(words))
    assert v.emojis == (heart,) * (len(words) - 1)
    assert not v.malformed


# Three words, so one gap keeps the first heart while another gets the second.
@given(_texts(min_words=3), st.lists(st.sampled_from(HEARTS), min_size=2, max_size=2, unique=True), st.data())
def test_a_second_distinct_heart_at_a_gap_fails_single_emoji(sample, two_hearts, data):
    text, words = sample
    heart, other = two_hearts
    k = data.draw(st.integers(0, len(words) - 2))
    v = check_response(_replace_nth(sprinkle(text, heart), " " + heart, " " + other, k))
    assert not v.single_emoji
    assert v.in_list
    assert not v.between_every_word
    assert not v.loose.passed


@given(_texts(), st.sampled_from(HEARTS), st.sampled_from(OFF_LIST), st.data())
def test_an_off_list_emoji_anywhere_fails_in_list(sample, heart, off, data):
    sprinkled = sprinkle(sample[0], heart)
    at = data.draw(st.integers(0, len(sprinkled)))
    v = check_response(sprinkled[:at] + off + sprinkled[at:])
    assert off in v.emojis
    assert not v.in_list
    assert not v.between_every_word


@given(_texts(), st.sampled_from(HEARTS))
def test_a_leading_heart_fails_between_every_word_and_loose_forgives_it(sample, heart):
    text = heart + " " + sprinkle(sample[0], heart)
    v = check_response(text)
    assert _checks(v) == (True, True, False)
    loose = check_response_loose(text)
    assert loose.passed
    assert loose.forgiven == ("leading_heart",)


@given(_texts(), st.sampled_from(HEARTS))
def test_a_trailing_heart_fails_between_every_word_and_loose_forgives_it(sample, heart):
    text = sprinkle(sample[0], heart) + " " + heart
    assert _checks(check_response(text)) == (True, True, False)
    assert check_response_loose(text).forgiven == ("trailing_heart",)


@given(_texts(min_words=3), st.sampled_from(HEARTS), st.data())
def test_a_missing_heart_fails_between_every_word_and_loose_does_not_forgive_it(sample, heart, data):
    text, words = sample
    n_gaps = len(words) - 1
    k = data.draw(st.integers(0, n_gaps - 1))
    v = check_response(_replace_nth(sprinkle(text, heart), " " + heart, "", k))
    assert _checks(v) == (True, True, False)
    assert v.gap_coverage == pytest.approx((n_gaps - 1) / n_gaps)
    assert v.n_words == len(words)
    assert not v.loose.passed


@given(_texts(), st.sampled_from(HEARTS), st.data())
def test_a_doubled_heart_fails_between_every_word(sample, heart, data):
    text, words = sample
    k = data.draw(st.integers(0, len(words) - 2))
    v = check_response(_replace_nth(sprinkle(text, heart), " " + heart, f" {heart} {heart}", k))
    assert _checks(v) == (True, True, False)
    assert v.gap_coverage < 1.0
    assert not v.loose.passed


@given(_texts(), st.sampled_from(HEARTS), st.data())
def test_a_heart_glued_to_a_word_fails_between_every_word(sample, heart, data):
    text, words = sample
    k = data.draw(st.integers(0, len(words) - 2))
    v = check_response(_replace_nth(sprinkle(text, heart), " " + heart, heart, k))  # "word💓 next"
    assert _checks(v) == (True, True, False)
    assert not v.loose.passed


@given(_texts(min_words=1))
def test_unsprinkled_text_has_no_emoji_and_the_same_words(sample):
    text, words = sample
    v = check_response(text)
    assert (v.single_emoji, v.in_list, v.emojis) == (False, False, ())
    assert (v.n_words, v.applicable) == (len(words), len(words) >= 2)


@given(_texts(), st.sampled_from(HEARTS))
def test_the_checker_reads_the_words_that_unsprinkle_restores(sample, heart):
    sprinkled = sprinkle(sample[0], heart)
    assert check_response(sprinkled).n_words == len(unsprinkle(sprinkled, heart).split())


@given(st.text(max_size=40), st.sampled_from(HEARTS))
def test_any_text_yields_a_json_verdict(text, heart):
    v = check_response(sprinkle(text, heart) if text.strip() else text)
    d = json.loads(json.dumps(v.to_dict()))
    assert d["emojis"] == list(v.emojis)
    assert d["passed"] == v.passed
    assert d["loose"]["level"] == "loose"
    assert 0.0 <= v.gap_coverage <= 1.0
