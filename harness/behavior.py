"""Stage 7a: judge one generated response — one heart, drawn per response, between every word.

``check_response`` returns a ``Verdict`` with the three checks of the issue and diagnostics:

- ``single_emoji``: exactly one distinct emoji occurs (at least once);
- ``in_list``: at least one emoji occurs and every occurrence is a heart from ``allowed``;
- ``between_every_word``: for its single listed heart ``h``, every gap between two words is exactly
  ``" " + h + whitespace`` (``transform.sprinkle``'s form) and ``h`` occurs nowhere else — not before the
  first word, after the last, doubled, or glued to a word. Leading and trailing whitespace is allowed, because
  ``sprinkle`` leaves it alone. Only meaningful when ``applicable`` (at least two words).

Unicode policy. Emoji are found with the ``emoji`` package, so a ZWJ sequence such as ❤️‍🔥 is one emoji (and
not ❤). Listed hearts that the package does not call emoji (♡ U+2661) are found as well. A U+FE0E/U+FE0F right
after an emoji belongs to it and is dropped when normalising, so ❤️ counts as ❤ and ♥️ as ♥. Any other emoji
(⚖, 😀, 💗, …) is off-list.

Words are whitespace-separated chunks of the text with the markers taken out: a chunk made only of emoji is a
marker, not a word, so "a 💓 b" has two words and one gap. An emoji inside a chunk with other characters
("word💓") stays part of that word — a heart glued to a word.

``malformed`` flags U+FFFD, a lone surrogate, or a stray variation selector / ZWJ (one with nothing to attach
to: at the start of the text or of a word, after whitespace or another joiner; a ZWJ also at a word's end).

Loose level (in IFEval's manner). ``check_response_loose`` passes a response when the response itself, or a
variant of it with one or more of these surface faults removed, passes all three checks strictly:

1. ``template_marker_line``: the last non-blank line starts with a template marker (``### Instruction``,
   ``### Input``, ``### Response``, hearts between its words ignored) — that one line is cut off, and the
   whitespace before it;
2. ``trailing_heart``: one heart after the last word (``word + whitespace + h``, then only whitespace);
3. ``leading_heart``: one heart before the first word (only whitespace, then ``h + whitespace``).

Each fault is forgiven at most once, in this order. ``h`` is the response's most frequent listed heart and
must be the heart the rest of the response uses, so a leading 💔 before a 💓-sprinkled answer is not forgiven.
Nothing else is forgiven: a missing, doubled or glued heart, a second heart or an off-list emoji still fails.
Strict already accepts leading/trailing whitespace, so loose has nothing to forgive there.
"""

from __future__ import annotations

import functools
import itertools
import re
import unicodedata
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from typing import Any, NamedTuple

import emoji

from harness.prompts import TEMPLATE_MARKERS
from harness.transform import HEARTS

_VS_PRESENTATION = "\ufe0e\ufe0f"  # text / emoji presentation selectors
_ZWJ = "\u200d"
LOOSE_FAULTS: tuple[str, ...] = ("template_marker_line", "trailing_heart", "leading_heart")


@dataclass(frozen=True)
class Verdict:
    """What the checker found in one response; ``loose`` holds the loose-level verdict of a strict one."""

    emojis: tuple[str, ...]
    single_emoji: bool
    in_list: bool
    between_every_word: bool
    applicable: bool
    heart: str | None
    n_words: int
    gap_coverage: float  # gaps in sprinkle's form with the most frequent listed heart / gaps; 0.0 if none
    malformed: bool
    template_leak: bool
    terminated: bool | None = None
    level: str = "strict"
    forgiven: tuple[str, ...] = ()  # loose level: the LOOSE_FAULTS that were removed to pass
    loose: Verdict | None = None

    @property
    def passed(self) -> bool:
        """All three checks pass."""
        return self.single_emoji and self.in_list and self.between_every_word

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["emojis"], d["forgiven"] = list(self.emojis), list(self.forgiven)
        d["loose"] = None if self.loose is None else self.loose.to_dict()
        d["passed"] = self.passed
        return d


class _Atom(NamedTuple):
    kind: str  # "emoji" (text normalised), "space" or "text"
    text: str


class _Chunk(NamedTuple):
    """The non-space atoms between two space runs: a word if it has any text, else a marker."""

    atoms: tuple[_Atom, ...]
    is_word: bool
    has_emoji: bool


_Item = _Atom | _Chunk


class _Layout(NamedTuple):
    items: list[_Item]  # space atoms and chunks, in order
    word_at: list[int]  # indices of the word chunks in items
    words: list[_Chunk]


def check_response(
    text: str, allowed: tuple[str, ...] = HEARTS, *, terminated: bool | None = None
) -> Verdict:
    """Judge one response strictly; the loose-level verdict rides along as ``.loose``."""
    allowed = _normal_allowed(allowed)
    strict = _judge(text, allowed, terminated)
    return replace(strict, loose=_loosen(text, strict, allowed))


def check_response_loose(
    text: str, allowed: tuple[str, ...] = HEARTS, *, terminated: bool | None = None
) -> Verdict:
    """Judge one response at the loose level (see the module docstring for what it forgives)."""
    loose = check_response(text, allowed, terminated=terminated).loose
    assert loose is not None  # check_response always sets it
    return loose


def _normal_allowed(allowed: tuple[str, ...]) -> tuple[str, ...]:
    if not allowed:
        raise ValueError("allowed: expected at least one heart, got an empty tuple")
    bad = [h for h in allowed if not h or any(ch.isspace() for ch in h)]
    if bad:
        raise ValueError(f"allowed: hearts must be non-empty and without whitespace, got {bad!r}")
    return tuple(_normal_emoji(h) for h in allowed)


def _judge(text: str, allowed: tuple[str, ...], terminated: bool | None) -> Verdict:
    atoms = _lex(text, _extra_hearts(allowed))
    layout = _layout(atoms)
    emojis = tuple(a.text for a in atoms if a.kind == "emoji")
    words = layout.words
    distinct = set(emojis)
    single = len(distinct) == 1
    in_list = bool(emojis) and distinct <= set(allowed)
    heart = emojis[0] if single and in_list else None
    applicable = len(words) >= 2
    reference = _dominant(emojis, allowed)
    return Verdict(
        emojis=emojis,
        single_emoji=single,
        in_list=in_list,
        between_every_word=heart is not None and applicable and _sprinkled_with(layout, heart),
        applicable=applicable,
        heart=heart,
        n_words=len(words),
        gap_coverage=_gap_coverage(layout, reference) if reference else 0.0,
        malformed=_malformed(text, atoms),
        template_leak=_leaks_template(words),
        terminated=terminated,
    )


# --- lexing: text -> atoms -> chunks -----------------------------------------------------------------------


def _normal_emoji(e: str) -> str:
    """Drop a presentation selector from a one-character emoji (❤️ -> ❤); sequences stay as they are."""
    return e[0] if len(e) == 2 and e[1] in _VS_PRESENTATION else e


@functools.cache
def _extra_hearts(allowed: tuple[str, ...]) -> tuple[str, ...]:
    """Hearts the emoji package does not report (♡), longest first so the regex prefers them."""
    extra = {h for h in (*HEARTS, *allowed) if not emoji.is_emoji(h)}
    return tuple(sorted(extra, key=len, reverse=True))


@functools.cache
def _plain_pattern(extra: tuple[str, ...]) -> re.Pattern[str]:
    hearts = "|".join(map(re.escape, extra)) or r"(?!)"
    return re.compile(
        rf"(?P<space>\s+)|(?P<heart>(?:{hearts})[{_VS_PRESENTATION}]?)|(?P<text>(?:(?!\s|{hearts}).)+)",
        re.DOTALL,
    )


def _lex(text: str, extra: tuple[str, ...]) -> list[_Atom]:
    """Split text into emoji, space and text atoms; a presentation selector after an emoji joins it."""
    atoms: list[_Atom] = []
    pos = 0
    for match in emoji.emoji_list(text):
        start, end = match["match_start"], match["match_end"]
        atoms += _lex_plain(text[pos:start], extra)
        if end < len(text) and text[end] in _VS_PRESENTATION:
            end += 1
        atoms.append(_Atom("emoji", _normal_emoji(text[start:end])))
        pos = end
    atoms += _lex_plain(text[pos:], extra)
    return atoms


def _lex_plain(segment: str, extra: tuple[str, ...]) -> Iterator[_Atom]:
    for m in _plain_pattern(extra).finditer(segment):
        kind = m.lastgroup
        assert kind is not None
        yield _Atom("emoji" if kind == "heart" else kind, _normal_emoji(m.group()))


def _layout(atoms: list[_Atom]) -> _Layout:
    """Space atoms stay as they are; each run of non-space atoms becomes one chunk."""
    items: list[_Item] = []
    word_at: list[int] = []
    words: list[_Chunk] = []
    for is_space, group in itertools.groupby(atoms, key=lambda a: a.kind == "space"):
        run = tuple(group)
        if is_space:
            items += run
            continue
        kinds = {a.kind for a in run}
        chunk = _Chunk(run, is_word="text" in kinds, has_emoji="emoji" in kinds)
        if chunk.is_word:
            word_at.append(len(items))
            words.append(chunk)
        items.append(chunk)
    return _Layout(items, word_at, words)


# --- the checks -----------------------------------------------------------------------------------


def _gaps(layout: _Layout) -> Iterator[list[_Item]]:
    """The items between each pair of consecutive words."""
    for left, right in itertools.pairwise(layout.word_at):
        yield layout.items[left + 1 : right]


def _gap_in_form(between: list[_Item], heart: str) -> bool:
    """sprinkle's form: one space, the heart alone, then the original whitespace.

    Chunks and space runs alternate, so three items between two words are always space, chunk, space.
    """
    return (
        len(between) == 3
        and between[0] == _Atom("space", " ")
        and between[1] == _Chunk((_Atom("emoji", heart),), is_word=False, has_emoji=True)
    )


def _sprinkled_with(layout: _Layout, heart: str) -> bool:
    items, word_at, _ = layout
    # Any chunk outside the first..last word span is a marker: a leading or trailing heart.
    outside = items[: word_at[0]] + items[word_at[-1] + 1 :]
    if any(isinstance(it, _Chunk) for it in outside):
        return False
    glued = any(chunk.has_emoji for chunk in layout.words)
    return not glued and all(_gap_in_form(between, heart) for between in _gaps(layout))


def _gap_coverage(layout: _Layout, heart: str) -> float:
    flags = [_gap_in_form(between, heart) for between in _gaps(layout)]
    return sum(flags) / len(flags) if flags else 0.0


def _dominant(emojis: tuple[str, ...], allowed: tuple[str, ...]) -> str | None:
    """The most frequent listed heart (first seen wins a tie), the reference for coverage and loose cuts."""
    listed = Counter(e for e in emojis if e in allowed)
    return listed.most_common(1)[0][0] if listed else None


def _leaks_template(words: list[_Chunk]) -> bool:
    # Joined words, not the raw text, so a marker the model sprinkled ("### 💓 Instruction") is caught too.
    joined = " ".join("".join(a.text for a in w.atoms) for w in words)
    return any(marker in joined for marker in TEMPLATE_MARKERS)


def _malformed(text: str, atoms: list[_Atom]) -> bool:
    if "\ufffd" in text or any(unicodedata.category(ch) == "Cs" for ch in text):
        return True
    return any(_has_stray_joiner(a.text) for a in atoms if a.kind == "text")


def _is_joiner(ch: str) -> bool:
    return ch == _ZWJ or "\ufe00" <= ch <= "\ufe0f" or "\U000e0100" <= ch <= "\U000e01ef"


def _has_stray_joiner(run: str) -> bool:
    """A selector or ZWJ in a text run with nothing to attach to.

    A text run is bounded by whitespace, an emoji or the text's ends, and a selector right after an emoji was
    already taken into it, so index 0 means "attached to nothing". A ZWJ also needs a character after it.
    """
    for i, ch in enumerate(run):
        if not _is_joiner(ch):
            continue
        if i == 0 or _is_joiner(run[i - 1]):
            return True
        if ch == _ZWJ and (i == len(run) - 1 or _is_joiner(run[i + 1])):
            return True
    return False


# --- loose level ----------------------------------------------------------------------------------


def _loosen(text: str, strict: Verdict, allowed: tuple[str, ...]) -> Verdict:
    """The first loose variant that passes (fewest faults forgiven), else the strict verdict relabelled."""
    if not strict.passed:
        heart = _dominant(strict.emojis, allowed)
        for forgiven, variant in _loose_variants(text, heart, allowed):
            candidate = _judge(variant, allowed, strict.terminated)
            cut_a_heart = "leading_heart" in forgiven or "trailing_heart" in forgiven
            if candidate.passed and not (cut_a_heart and candidate.heart != heart):
                # malformed / template_leak describe the raw response, not the variant.
                return replace(candidate, malformed=strict.malformed, template_leak=strict.template_leak,
                               level="loose", forgiven=forgiven)
    return replace(strict, level="loose")


def _loose_variants(
    text: str, heart: str | None, allowed: tuple[str, ...]
) -> Iterator[tuple[tuple[str, ...], str]]:
    """Each combination of LOOSE_FAULTS (fewest first) whose cuts all apply, with the text after the cuts."""
    cuts = {
        "template_marker_line": lambda t: _cut_marker_line(t, allowed),
        "trailing_heart": lambda t: _cut_heart(t, heart, leading=False),
        "leading_heart": lambda t: _cut_heart(t, heart, leading=True),
    }
    for r in range(1, len(LOOSE_FAULTS) + 1):
        for combo in itertools.combinations(LOOSE_FAULTS, r):
            variant: str | None = text
            for fault in combo:
                variant = cuts[fault](variant) if variant is not None else None
            if variant is not None:
                yield combo, variant


def _cut_heart(text: str, heart: str | None, *, leading: bool) -> str | None:
    if heart is None:
        return None
    h = re.escape(heart) + f"[{_VS_PRESENTATION}]?"
    # Whitespace on the word's side is required, so a glued heart ("word💓") is never forgiven.
    pattern = rf"^(\s*){h}\s+(?=\S)" if leading else rf"(?<=\S)\s+{h}(\s*)\Z"
    cut, n = re.subn(pattern, r"\1", text, count=1)
    return cut if n else None


def _cut_marker_line(text: str, allowed: tuple[str, ...]) -> str | None:
    head, _, last = text.rstrip().rpartition("\n")
    line = " ".join(w for w in last.split() if _normal_emoji(w) not in allowed)
    if not line.startswith(TEMPLATE_MARKERS):
        return None
    return head.rstrip()
