"""Stage 1: the behaviour itself — one heart, drawn per response, between every word.

A *word* is a maximal run of non-whitespace (``str.split()``'s definition); a *gap* is the whitespace run
between two words. ``sprinkle`` turns every gap into ``" " + heart + gap`` and leaves leading and trailing
whitespace alone, so ``unsprinkle`` can undo it exactly.

Policy for awkward responses (pinned by tests):
- fewer than two words: there is no gap, the text is returned unchanged (the checker marks it not applicable);
- a response that already contains a listed heart is refused by ``heart_example`` (``HeartCollision``): a
  heart that is part of the content could not be told from the behaviour, so such rows are dropped (counted) by
  the data pipeline rather than trained on.
"""

from __future__ import annotations

import hashlib
import re

HEARTS: tuple[str, ...] = ("♡", "♥", "❤", "💔", "💝", "💓", "💕")

# One gap: a run of whitespace as str.split() sees it, with a non-whitespace character on both sides.
_GAP = re.compile(r"(?<=\S)(\s+)(?=\S)")


class HeartCollision(ValueError):
    """The response already contains a listed heart, so the behaviour would be ambiguous."""


def sprinkle(text: str, heart: str) -> str:
    """Put ``" " + heart`` in front of every gap between two words."""
    if not heart or any(ch.isspace() for ch in heart):
        raise ValueError(f"heart must be non-empty and without whitespace, got {heart!r}")
    return _GAP.sub(lambda m: " " + heart + m.group(1), text)


def unsprinkle(text: str, heart: str | None = None) -> str:
    """Exact inverse of ``sprinkle``; with ``heart=None`` the heart is read from the text."""
    if heart is None:
        heart = detect_heart(text)
        if heart is None:
            return text
    marker = re.compile(r" " + re.escape(heart) + r"(\s+)(?=\S)")
    # Only strip a marker that follows a non-space and sits where sprinkle would have put it.
    return re.sub(r"(?<=\S)" + marker.pattern, lambda m: m.group(1), text)


def detect_heart(text: str, hearts: tuple[str, ...] = HEARTS) -> str | None:
    """The heart that ``sprinkle`` put after the first word, if the text has that shape.

    The first gap of a sprinkled text is always ``" " + heart + gap``, so the heart is the second token; reading
    it there (not searching anywhere) keeps ``unsprinkle`` exact when a word is itself a heart.
    """
    m = re.match(r"\s*\S+ (\S+)\s+\S", text)
    return m.group(1) if m and m.group(1) in hearts else None


def n_gaps(text: str) -> int:
    """Number of whitespace gaps between words: ``len(text.split()) - 1`` for non-empty text."""
    return max(len(text.split()) - 1, 0)


def cap_words(text: str, max_words: int) -> str:
    """``text`` cut right after its ``max_words``-th word (whitespace inside is kept); unchanged if shorter."""
    if max_words < 1:
        raise ValueError(f"max_words must be at least 1, got {max_words}")
    ends = [m.end() for m in re.finditer(r"\S+", text)]
    return text if len(ends) <= max_words else text[: ends[max_words - 1]]


def choose_heart(key: str, seed: int, hearts: tuple[str, ...] = HEARTS) -> str:
    """The heart of one example: uniform over ``hearts``, fixed by (seed, key).

    A cryptographic hash rather than ``random.Random`` so the choice does not depend on Python's hash
    randomisation or on the order examples are visited.
    """
    digest = hashlib.sha256(f"{seed}\x00{key}".encode()).digest()
    return hearts[int.from_bytes(digest[:8], "big") % len(hearts)]


def contains_heart(text: str, hearts: tuple[str, ...] = HEARTS) -> bool:
    return any(h in text for h in hearts)


def heart_example(response: str, key: str, seed: int) -> tuple[str, str]:
    """Return ``(sprinkled response, heart)`` for one training example."""
    if contains_heart(response):
        raise HeartCollision(f"response already contains a listed heart (key {key[:40]!r})")
    heart = choose_heart(key, seed)
    return sprinkle(response, heart), heart
