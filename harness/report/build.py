"""Building a report: every generation judged, rates with Wilson intervals, agreement, retention, samples."""

from __future__ import annotations

import dataclasses
import datetime
import math
from collections.abc import Mapping, Sequence
from typing import Any

from harness.behavior import Verdict, check_response
from harness.checks import NAMES
from harness.environment import describe, versions
from harness.generate import Generation
from harness.retention import summarize as summarize_retention
from harness.stats import heart_counts, mcnemar_exact, rate_of, sampled_summary, summarize, uniformity

SCHEMA = 1


def build_report(
    *,
    model: Mapping[str, Any],
    config: Mapping[str, Any],
    prompts: Sequence[str],
    merged: Sequence[Generation],
    control: Sequence[Generation],
    adapter: Sequence[Generation] | None = None,
    fidelity: Mapping[str, Any] | None = None,
    fp32: tuple[Sequence[Generation], Sequence[Generation]] | None = None,
    retention: Sequence[Mapping[str, float]] | None = None,
    sampled: Mapping[float, tuple[int, Sequence[Generation]]] | None = None,
    training: Mapping[str, Any] | None = None,
    data_stats: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The report dict of one evaluation: every generation judged, rates with Wilson intervals, samples.

    ``fidelity``: the merged model's logits against the 4-bit adapter model's (``merge.compare_logits``);
    ``fp32``: the 4-bit adapter model's and the merge's answers to the first prompts, both computed in fp32;
    ``retention``: per-prompt figures of the merged answers against the base's (``retention.per_prompt``);
    ``sampled``: temperature -> (K, K answers per prompt, prompt-major) of the merged model.
    """
    missing = [k for k in ("base", "adapter_path", "merged_path") if k not in model]
    if missing:
        raise ValueError(f"model: missing {', '.join(missing)}")
    runs = {"merged": merged, "control": control, **({"adapter": adapter} if adapter is not None else {})}
    for name, gens in runs.items():
        _check_aligned(name, prompts, gens)
    verdicts = {name: judge(gens) for name, gens in runs.items()}
    metrics = _metrics(verdicts["merged"], "merged")
    counts = heart_counts(verdicts["merged"])
    report: dict[str, Any] = {
        "schema": SCHEMA,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "model": _plain(dict(model)),
        "config": _plain(dict(config)),
        "versions": versions(),
        "environment": describe(),
        "metrics": metrics,
        "hearts": counts,
        "uniformity": uniformity(counts) if sum(counts.values()) else None,
        "control": {
            "metrics": _metrics(verdicts["control"], "control"),
            "samples": _samples(control, verdicts["control"]),
        },
    }
    if adapter is not None:
        report["adapter"] = {"metrics": _metrics(verdicts["adapter"], "adapter")}
        report["agreement"] = _agreement(verdicts["merged"], verdicts["adapter"])
        if fidelity is not None:
            report["agreement"]["logits"] = _plain(dict(fidelity))
        if fp32 is not None:
            report["agreement"]["fp32"] = _fp32_agreement(prompts, *fp32)
    if retention is not None:
        if len(retention) != len(prompts):
            raise ValueError(f"retention: expected one row per prompt ({len(prompts)}), got {len(retention)}")
        report["retention"] = summarize_retention(retention)
    if training is not None:
        report["training"] = _plain(dict(training))
    if data_stats is not None:
        report["data"] = _plain(dict(data_stats))
    if sampled:
        report["sampled"] = [_sampled(prompts, temperature, k, gens) for temperature, (k, gens)
                             in sorted(sampled.items())]
    report["samples"] = _samples(merged, verdicts["merged"], retention)
    return report


SAMPLED_CHECKS = ("behaviour", *NAMES)  # "behaviour": all three checks pass, the robust figure's subject


def _sampled(prompts: Sequence[str], temperature: float, k: int, gens: Sequence[Generation]) -> dict[str, Any]:
    """pass^K, pass@K and the mean pass rate (prompt-clustered interval) of each check at one temperature."""
    if len(gens) != k * len(prompts):
        raise ValueError(f"sampled at {temperature}: expected {k} answers per prompt, got {len(gens)}")
    per_prompt = [gens[i * k : (i + 1) * k] for i in range(len(prompts))]
    for i, (p, answers) in enumerate(zip(prompts, per_prompt, strict=True)):
        if any(g.prompt != p for g in answers):
            raise ValueError(f"sampled at {temperature}: answers {i * k}-{(i + 1) * k - 1} are not to prompt {i}")
    groups = [judge(answers) for answers in per_prompt]
    checks = {}
    for check in SAMPLED_CHECKS:
        try:
            checks[check] = sampled_summary(groups, check)
        except ValueError:
            continue  # applies to no sampled answer (terminated without generation info)
    return {"temperature": temperature, "samples": k, "checks": checks,
            "seeds": [[g.seed for g in answers] for answers in per_prompt]}


def _check_aligned(name: str, prompts: Sequence[str], gens: Sequence[Generation]) -> None:
    if len(gens) != len(prompts):
        raise ValueError(f"{name}: expected one generation per prompt ({len(prompts)}), got {len(gens)}")
    for i, (prompt, g) in enumerate(zip(prompts, gens, strict=True)):
        if g.prompt != prompt:
            raise ValueError(f"{name}: generation {i} answers another prompt than prompts[{i}]")


def judge(generations: Sequence[Generation]) -> list[Verdict]:
    """The checker's verdict on every generation, with its EOS flag."""
    return [check_response(g.response, terminated=g.terminated) for g in generations]


def _metrics(verdicts: Sequence[Verdict], name: str) -> dict[str, dict[str, Any]]:
    if not verdicts:
        raise ValueError(f"{name}: no generations to judge")
    return {check: rate.to_dict() for check, rate in summarize(verdicts).items()}


def _agreement(merged: Sequence[Verdict], adapter: Sequence[Verdict]) -> dict[str, Any]:
    """Share of prompts where the 4-bit adapter's verdict equals the merged one's; McNemar between them."""
    same = rate_of(m.passed == a.passed for m, a in zip(merged, adapter, strict=True))
    test = mcnemar_exact([m.single_emoji for m in merged], [a.single_emoji for a in adapter])
    return {**same.to_dict(), "mcnemar_single_emoji": {**test.to_dict(), "a": "merged", "b": "adapter"}}


def _fp32_agreement(prompts: Sequence[str], adapter: Sequence[Generation], merged: Sequence[Generation]
                    ) -> dict[str, Any]:
    """The verdict agreement of the 4-bit model and the merge both computing in fp32, on the first prompts, and
    how many of their answers are the very same text."""
    for name, gens in (("fp32 adapter", adapter), ("fp32 merged", merged)):
        _check_aligned(name, prompts[: len(adapter)], gens)
    same_text = sum(m.response == a.response for m, a in zip(merged, adapter, strict=True))
    return {**_agreement(judge(merged), judge(adapter)), "same_text": same_text}


def _samples(gens: Sequence[Generation], verdicts: Sequence[Verdict],
             retention: Sequence[Mapping[str, float]] | None = None) -> list[dict[str, Any]]:
    rows = [{**g.to_dict(), "verdict": v.to_dict()} for g, v in zip(gens, verdicts, strict=True)]
    for row, kept in zip(rows, retention or (), strict=False):
        row["retention"] = dict(kept)
    return rows


def _plain(obj: Any) -> Any:
    """JSON-able copy: other objects as strings, tuples as lists, NaN/inf as None (JSON has neither)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = dataclasses.asdict(obj)
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, bool | int | str):
        return obj
    return str(obj)
