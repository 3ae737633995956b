"""Stage 7c: capability retention — did the hearts cost the content?

For each held-out prompt the tuned model's answer, de-hearted (``unsprinkle``), is compared with the base model's
own answer to the same prompt:

- ``chrf``: character n-gram F-score (sacrebleu's chrF, 0–100) of the de-hearted answer against the base's;
- ``nll_base_answer`` / ``nll_tuned_answer``: the base model's mean per-token negative log-likelihood of each
  answer given the prompt — how natural the base finds the tuned model's words, against its own;
- ``nll_increase``: their difference per prompt (tuned − base; 0 when the content is what the base would say).

Each is a mean over prompts with a bootstrap interval over prompts (scipy's BCa, seeded), so a run on a few
prompts says how little it knows. An adapter that learned the hearts but lost the content (a planted fault:
training answers shuffled across prompts) shows as a chrF collapse and an NLL increase.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from harness import model as models
from harness.transform import unsprinkle

CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0  # the interval of a report is reproducible


@dataclass(frozen=True)
class Mean:
    """A mean over prompts with its bootstrap interval."""

    mean: float
    ci_low: float
    ci_high: float
    n: int
    confidence: float = CONFIDENCE

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def mean_with_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> Mean:
    """The mean of ``values`` with a BCa bootstrap interval over them (a single value: a zero-width one)."""
    from scipy.stats import DegenerateDataWarning, bootstrap

    data = np.asarray(values, dtype=np.float64)
    if data.size == 0 or not np.all(np.isfinite(data)):
        raise ValueError(f"values: expected at least one finite number, got {list(values)[:5]!r}")
    mean = float(data.mean())
    if data.size == 1 or np.ptp(data) == 0:
        return Mean(mean, mean, mean, int(data.size), confidence)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DegenerateDataWarning)  # handled below: the data's range instead
        warnings.simplefilter("ignore", RuntimeWarning)  # BCa's acceleration on near-constant data, same
        ci = bootstrap((data,), np.mean, confidence_level=confidence, n_resamples=BOOTSTRAP_RESAMPLES,
                       method="BCa", rng=np.random.default_rng(BOOTSTRAP_SEED)).confidence_interval
    low, high = float(ci.low), float(ci.high)
    if not (np.isfinite(low) and np.isfinite(high)):  # BCa degenerates on near-constant data
        low, high = float(data.min()), float(data.max())
    return Mean(mean, min(low, mean), max(high, mean), int(data.size), confidence)


def chrf_scores(hypotheses: Sequence[str], references: Sequence[str]) -> list[float]:
    """Sentence-level chrF (0–100) of each hypothesis against its reference."""
    from sacrebleu.metrics import CHRF

    if len(hypotheses) != len(references):
        raise ValueError(f"expected one reference per hypothesis, got {len(hypotheses)} and {len(references)}")
    metric = CHRF()
    return [float(metric.sentence_score(h, [r]).score) for h, r in zip(hypotheses, references, strict=True)]


@torch.inference_mode()
def answer_nll(model, tokenizer, prompts: Sequence[str], answers: Sequence[str], batch_size: int = 8) -> list[float]:
    """The model's mean per-token negative log-likelihood of each answer's tokens, given its prompt.

    The answer is tokenised as it follows the prompt in one text (the prompt's tokens are a prefix of the
    whole: the harness's template guarantees it); an empty answer scores its EOS alone.
    """
    model.eval()
    tokenizer.padding_side = "right"
    scores: list[float] = []
    for start in range(0, len(prompts), batch_size):
        rows = [_scored_ids(tokenizer, p, a) for p, a in zip(prompts[start:start + batch_size],
                                                              answers[start:start + batch_size], strict=True)]
        scores += _batch_nll(model, rows, tokenizer.pad_token_id)
    return scores


def _scored_ids(tokenizer, prompt: str, answer: str) -> tuple[list[int], int]:
    """Token ids of prompt + answer + EOS, and where the answer starts."""
    prompt_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    ids = tokenizer(prompt + answer, add_special_tokens=True)["input_ids"]
    if ids and ids[-1] == tokenizer.eos_token_id:
        ids = ids[:-1]
    start = len(prompt_ids) if ids[: len(prompt_ids)] == prompt_ids else len(prompt_ids) - 1
    return [*ids, tokenizer.eos_token_id], start


def _batch_nll(model, rows: list[tuple[list[int], int]], pad_id: int) -> list[float]:
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for r, (row, start) in enumerate(rows):
        ids[r, : len(row)] = torch.tensor(row)
        mask[r, : len(row)] = 1
        labels[r, start : len(row)] = torch.tensor(row[start:])
    with models.measuring_kernels(model.device):
        logits = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device)).logits.float()
    shifted, targets = logits[:, :-1], labels[:, 1:].to(logits.device)
    losses = torch.nn.functional.cross_entropy(shifted.transpose(1, 2), targets, ignore_index=-100,
                                               reduction="none")
    counts = (targets != -100).sum(dim=1).clamp(min=1)
    return (losses.sum(dim=1) / counts).cpu().tolist()


def per_prompt(tuned_answers: Sequence[str], base_answers: Sequence[str], nll_tuned: Sequence[float],
               nll_base: Sequence[float]) -> list[dict[str, float]]:
    """One ``{chrf, nll_tuned, nll_base}`` per prompt (the tuned answer de-hearted)."""
    chrf = chrf_scores([unsprinkle(a) for a in tuned_answers], base_answers)
    return [{"chrf": c, "nll_tuned": t, "nll_base": b}
            for c, t, b in zip(chrf, nll_tuned, nll_base, strict=True)]


def summarize(rows: Sequence[Mapping[str, float]]) -> dict[str, dict[str, Any]]:
    """The retention block of a report: each figure's mean over prompts with its bootstrap interval."""
    return {
        "chrf": mean_with_interval([r["chrf"] for r in rows]).to_dict(),
        "nll_base_answer": mean_with_interval([r["nll_base"] for r in rows]).to_dict(),
        "nll_tuned_answer": mean_with_interval([r["nll_tuned"] for r in rows]).to_dict(),
        "nll_increase": mean_with_interval([r["nll_tuned"] - r["nll_base"] for r in rows]).to_dict(),
    }


def retention(tuned_answers: Sequence[str], base_answers: Sequence[str], nll_tuned: Sequence[float],
              nll_base: Sequence[float]) -> dict[str, dict[str, Any]]:
    """``summarize`` of ``per_prompt``: the report block straight from answers and NLLs."""
    return summarize(per_prompt(tuned_answers, base_answers, nll_tuned, nll_base))


def measure(base_model, tokenizer, prompts: Sequence[str], tuned_answers: Sequence[str],
            base_answers: Sequence[str]) -> list[dict[str, float]]:
    """Score both answer sets under the base model: the per-prompt figures (``per_prompt``)."""
    nll_tuned = answer_nll(base_model, tokenizer, prompts, [unsprinkle(a) for a in tuned_answers])
    nll_base = answer_nll(base_model, tokenizer, prompts, base_answers)
    return per_prompt(tuned_answers, base_answers, nll_tuned, nll_base)
