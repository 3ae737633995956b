"""Stage 7b: statistics over verdicts — rates with Wilson intervals, heart uniformity, paired McNemar tests.

Distributions come from scipy; nothing here is hand-rolled. A flag of ``None`` means "not applicable" (a
one-word response for ``between_every_word``, missing generation info for ``terminated``) and is left out of
the denominator, never counted as a failure.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from scipy.stats import binomtest, chisquare

from harness import checks
from harness.behavior import Verdict
from harness.transform import HEARTS


@dataclass(frozen=True)
class Rate:
    """k successes out of n, with a two-sided Wilson score interval."""

    rate: float
    k: int
    n: int
    ci_low: float
    ci_high: float
    confidence: float = 0.95

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class McNemar:
    """Exact McNemar test of paired pass/fail flags of runs a and b on the same prompts.

    ``b01``: a failed, b passed; ``b10``: a passed, b failed; ``n``: pairs compared.
    """

    b01: int
    b10: int
    n: int
    p_value: float
    direction: str  # b relative to a: "better", "worse" or "same"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def wilson(k: int, n: int, confidence: float = 0.95) -> Rate:
    """Rate k/n with its Wilson score interval (no continuity correction)."""
    if n <= 0:
        raise ValueError(f"n: expected at least one trial, got n={n}")
    if not 0 <= k <= n:
        raise ValueError(f"k: expected 0 <= k <= n={n}, got k={k}")
    ci = binomtest(k, n).proportion_ci(confidence_level=confidence, method="wilson")
    return Rate(rate=k / n, k=k, n=n, ci_low=float(ci.low), ci_high=float(ci.high), confidence=confidence)


def rate_of(flags: Iterable[bool | None], confidence: float = 0.95) -> Rate:
    """Share of True among the flags that are not None."""
    counted = [bool(f) for f in flags if f is not None]
    return wilson(sum(counted), len(counted), confidence)


def heart_counts(verdicts: Iterable[Verdict], hearts: tuple[str, ...] = HEARTS) -> dict[str, int]:
    """Responses per heart, over responses with a single listed heart; every heart is a key.

    Responses that mix hearts or use none are left out: each counted response is one draw of one heart, as
    the chi-square test in ``uniformity`` needs.
    """
    counts = dict.fromkeys(hearts, 0)
    for i, v in enumerate(verdicts):
        if v.heart is None:
            continue
        if v.heart not in counts:
            raise ValueError(f"verdict {i}: heart {v.heart!r} is not one of hearts={hearts!r}")
        counts[v.heart] += 1
    return counts


def uniformity(counts: dict[str, int]) -> dict[str, Any]:
    """Did the model collapse onto a few hearts? Chi-square goodness of fit against uniform.

    A small ``p_value`` says the hearts are not drawn uniformly; ``distinct`` says how many were used at all.
    The chi-square approximation wants ``expected`` >= 5 per heart; below that, read p as a rough guide.
    """
    if len(counts) < 2:
        raise ValueError(f"counts: expected at least two hearts, got {len(counts)}")
    observed = list(counts.values())
    total = sum(observed)
    if total == 0:
        raise ValueError("counts: no responses with a single listed heart (all counts are 0)")
    result = chisquare(observed)
    return {
        "statistic": float(result.statistic),
        "dof": len(observed) - 1,
        "p_value": float(result.pvalue),
        "distinct": sum(c > 0 for c in observed),
        "n": total,
        "expected": total / len(observed),
    }


def mcnemar_exact(a: Sequence[bool | None], b: Sequence[bool | None]) -> McNemar:
    """Exact two-sided McNemar test: did run b pass a different share of the same prompts than run a?

    Pairs where either flag is None (not applicable) are dropped.
    """
    if len(a) != len(b):
        raise ValueError(f"a and b: expected paired flags of equal length, got {len(a)} and {len(b)}")
    pairs = [(bool(x), bool(y)) for x, y in zip(a, b, strict=True) if x is not None and y is not None]
    b01 = sum(1 for x, y in pairs if not x and y)
    b10 = sum(1 for x, y in pairs if x and not y)
    discordant = b01 + b10
    # Under H0 each discordant pair is a fair coin; with none there is no evidence either way.
    p = 1.0 if discordant == 0 else float(binomtest(min(b01, b10), discordant, 0.5).pvalue)
    direction = "better" if b01 > b10 else "worse" if b10 > b01 else "same"
    return McNemar(b01=b01, b10=b10, n=len(pairs), p_value=p, direction=direction)


def _flags(verdicts: Sequence[Verdict]) -> dict[str, list[bool | None]]:
    loose = [v.loose or v for v in verdicts]  # a verdict without a loose one is itself loose-level
    return {
        "single_emoji": [v.single_emoji for v in verdicts],
        "in_list": [v.in_list for v in verdicts],
        "between_every_word": [v.between_every_word if v.applicable else None for v in verdicts],
        "terminated": [v.terminated for v in verdicts],
        "malformed": [v.malformed for v in verdicts],
        "template_leak": [v.template_leak for v in verdicts],
        "single_emoji_loose": [v.single_emoji for v in loose],
        "in_list_loose": [v.in_list for v in loose],
        "between_every_word_loose": [v.between_every_word if v.applicable else None for v in loose],
    }


def summarize(verdicts: Sequence[Verdict], confidence: float = 0.95) -> dict[str, Rate]:
    """Rate of each check over the responses where it applies.

    A check that applies to none of them (``terminated`` without generation info) is left out rather than
    reported as 0 of 0.
    """
    if not verdicts:
        raise ValueError("verdicts: expected at least one verdict, got none")
    return {
        name: rate_of(flags, confidence)
        for name, flags in _flags(verdicts).items()
        if any(f is not None for f in flags)
    }


# --- sampled answers: K per prompt ---------------------------------------------------------------------


def _passes(group: Sequence[Verdict], check: str) -> list[bool]:
    """Whether each answer of ``group`` does well on ``check`` (a fault check: its absence), leaving out the
    answers where it does not apply."""
    if check == "behaviour":
        return [v.passed for v in group]
    fault = check in checks.LOW
    return [not f if fault else bool(f) for f in _flags(group)[check] if f is not None]


def sampled_summary(groups: Sequence[Sequence[Verdict]], check: str, confidence: float = 0.95) -> dict[str, Any]:
    """K sampled answers per prompt, judged on ``check`` ("behaviour": all three checks pass).

    - ``mean``: the pass rate over all samples, with a bootstrap interval that resamples *prompts* (the K
      samples of one prompt are not independent draws of the model's behaviour);
    - ``pass_k``: the share of prompts whose K samples all pass (Wilson, one Bernoulli per prompt) — the figure
      a user meets when they retry;
    - ``pass_at_k``: the share of prompts with at least one passing sample (Wilson);
    - ``worst``: the prompt index with the fewest passing samples, and how many of K passed.

    Prompts where the check applies to no sample are left out.
    """
    from harness.retention import mean_with_interval

    rows = [_passes(group, check) for group in groups]
    kept = [(i, r) for i, r in enumerate(rows) if r]
    if not kept:
        raise ValueError(f"{check}: applies to no sampled answer")
    per_prompt = [sum(r) / len(r) for _, r in kept]
    worst, worst_row = min(kept, key=lambda item: (sum(item[1]) / len(item[1]), item[0]))
    return {
        "mean": mean_with_interval(per_prompt, confidence).to_dict(),
        "pass_k": rate_of((all(r) for _, r in kept), confidence).to_dict(),
        "pass_at_k": rate_of((any(r) for _, r in kept), confidence).to_dict(),
        "worst": {"prompt": worst, "passed": sum(worst_row), "of": len(worst_row)},
        "k": max(len(r) for _, r in kept),
    }
