"""The checks every answer is judged on, in one place: name, which way is good, what it means.

The report computes a rate per check, the gate thresholds it (``GateConfig`` holds one threshold per check under
the check's name), the summary table, the model card and the plots list them in this order. A check that should
be high is judged on its Wilson lower bound; a fault that should be rare on its rate (see ``harness.gate``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Check:
    name: str
    high: bool  # True: the share of answers that do it right; False: the share with a fault
    means: str


CHECKS: tuple[Check, ...] = (
    Check("single_emoji", True, "exactly one distinct emoji in the answer"),
    Check("in_list", True, "every emoji is one of the listed hearts"),
    Check("between_every_word", True, "the heart stands in every gap between two words, and nowhere else"),
    Check("terminated", True, "the answer stopped at EOS within max_new_tokens"),
    Check("malformed", False, "broken UTF-8: U+FFFD, a lone surrogate, a stray variation selector or joiner"),
    Check("template_leak", False, "the answer ran into a new prompt-template block"),
)
NAMES: tuple[str, ...] = tuple(c.name for c in CHECKS)
HIGH: tuple[str, ...] = tuple(c.name for c in CHECKS if c.high)
LOW: tuple[str, ...] = tuple(c.name for c in CHECKS if not c.high)
BEHAVIOUR: tuple[str, ...] = ("single_emoji", "in_list", "between_every_word")  # a verdict passes if all do
