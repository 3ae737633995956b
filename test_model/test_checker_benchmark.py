"""Throughput of the checker on a realistic batch: sprinkled answers and the faults the model makes."""

from __future__ import annotations

import random

from harness.behavior import check_response
from harness.transform import HEARTS, sprinkle

_SENTENCES = (
    "Virgin Australia commenced services on 31 August 2000 as Virgin Blue, with two aircraft on one route.",
    "An egg is an oval reproductive body, typically of a bird or reptile, enclosed in a shell.",
    "The New York Yankees are a professional baseball team based in the Bronx.\n\nThey play in MLB.",
    "In machine learning, the model learns a function from examples rather than from explicit rules.",
    "Tomatoes are botanically fruits, but cooks treat them as vegetables.",
)
# (name, fault): each fault turns one clean sprinkled answer into one the model really produced.
_FAULTS = (
    ("clean", lambda text, heart: text),
    ("leading", lambda text, heart: f"{heart} {text}"),
    ("doubled", lambda text, heart: text.replace(f" {heart} ", f" {heart}  {heart} ", 1)),
    ("missing", lambda text, heart: text.replace(f" {heart}", "", 1)),
    ("off_list", lambda text, heart: text.replace(heart, "⚖", 1)),
    ("malformed", lambda text, heart: text + " \ufffd\ufffd"),
    ("leak", lambda text, heart: text + "\n\n### Instruction:\nName a river."),
    ("plain", lambda text, heart: text.replace(f" {heart}", "")),
)
_N_PER_FAULT = 40  # 8 faults x 40 = 320 responses: a few hundred, like one held-out evaluation


def _batch() -> tuple[list[str], int]:
    rng = random.Random(0)  # fixed, so every run times the same batch
    batch = []
    for _, fault in _FAULTS:
        for _ in range(_N_PER_FAULT):
            heart = rng.choice(HEARTS)
            batch.append(fault(sprinkle(rng.choice(_SENTENCES), heart), heart))
    return batch, _N_PER_FAULT  # only the clean ones pass every check


def test_checker_throughput_on_a_realistic_batch(benchmark):
    batch, n_clean = _batch()
    verdicts = benchmark(lambda: [check_response(text) for text in batch])
    assert sum(v.passed for v in verdicts) == n_clean
    assert sum(v.loose.passed for v in verdicts) == 2 * n_clean  # clean + leading heart
    if benchmark.stats is not None:  # None under --benchmark-disable: nothing was timed
        benchmark.extra_info["responses_per_s"] = len(batch) / benchmark.stats.stats.mean
    benchmark.extra_info["batch_size"] = len(batch)
