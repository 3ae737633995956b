"""Capability retention catches a planted fault: an adapter trained on answers moved to other prompts learns the
hearts and loses the content, and the retention figures say so where the real adapter passes (``-m gpu``).

Needs a real base: the tiny stand-in's answers are word salad, so its retention figures carry no signal.
Measured on the H200 with SmolLM2-135M under the preset (lr 1e-3, batch 32, 175 steps, response-only head;
transformers 5.24): the real adapter's NLL increase is 1.24-1.25 nats/token and chrF 15.6-15.8 (seeds 42 and 2,
docs/sweeps/smollm2-135m-2026-12-01-c); the planted fault's 2.30 [2.23, 2.36] and chrF 7.96 [7.32, 8.70]. The
old preset's figures (1.94 real, 3.13 planted) set an NLL bound of 2.5, which the planted fault now passes under:
README's suggested thresholds sit between the new figures, retention_chrf 12, retention_nll_increase 1.75.
"""

from __future__ import annotations

import dataclasses

import pytest

from harness import evaluation, merge, model, train
from harness.config import GateConfig
from harness.gate import evaluate

pytestmark = pytest.mark.gpu

THRESHOLDS = GateConfig(retention_chrf=12.0, retention_nll_increase=1.75)  # README's suggested values


@pytest.fixture(scope="session", autouse=True)
def real_base(run_settings, device):
    # Session-scoped and autouse, so it runs before the session's training and evaluation: pytest sets up
    # higher-scoped fixtures first, and a function-scoped skip came after the CPU param had trained SmolLM2.
    if device != "cuda":
        pytest.skip("trains a second real adapter: on CUDA only")
    if run_settings.train.base_model == "tiny":
        pytest.skip("retention needs a real base: the stand-in answers in word salad (use --base-model)")


@pytest.fixture(scope="module")
def planted_report(run_settings):
    # Retention compares the merged model with the base; the 4-bit model's answers (merge agreement, and the
    # slowest of the three to generate: eager 4-bit decoding) say nothing about it, so they are not made.
    s = dataclasses.replace(run_settings, data=dataclasses.replace(run_settings.data, shuffle_responses=True),
                            eval=dataclasses.replace(run_settings.eval, with_adapter=False))
    adapter = train.adapter_for(s.artifacts, s.train, s.lora, s.data)
    merged = merge.merged_for(s.artifacts, adapter.path, adapter.base, s.train, model.run_dtype(s.train),
                              s.merge.method)
    return evaluation.evaluate(s, adapter, merged).report


def _rows(report):
    return {r.name: r for r in evaluate(report, THRESHOLDS).rows}


def test_the_real_adapter_passes_the_retention_thresholds(release_report):
    rows = _rows(release_report)
    assert rows["retention_chrf"].passed and rows["retention_nll_increase"].passed, rows


def test_a_planted_fault_fails_them(planted_report, release_report):
    rows = _rows(planted_report)
    assert not rows["retention_chrf"].passed and not rows["retention_nll_increase"].passed, rows
    assert planted_report["retention"]["chrf"]["ci_high"] < release_report["retention"]["chrf"]["ci_low"]
