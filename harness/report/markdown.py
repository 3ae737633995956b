"""The human report, ``report.md``: compliance table, plots, hearts, agreement, retention, training, samples."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from harness.checks import BEHAVIOUR

_TRAINING_SUMMARY = ("steps", "train_loss", "tokens_per_s", "wall_s", "compute_dtype", "device")


def render_markdown(report: Mapping[str, Any], plots: Sequence[str] = (), n_samples: int = 3) -> str:
    """The human report: summary table, plots, hearts, agreement, training, passing and failing samples."""
    model = report["model"]
    lines = [
        "# Hearts evaluation report", "",
        f"- created: {report['created']}",
        f"- base model: `{model['base']}`",
        f"- adapter: `{model['adapter_path']}`",
        f"- merged model: `{model['merged_path']}`", "",
        "## Compliance", "",
        "| check | adapter (merged) | interval | base (control) | interval |",
        "|---|---|---|---|---|",
    ]
    control = report["control"]["metrics"]
    for check in [c for c in report["metrics"] if isinstance(report["metrics"][c], Mapping)]:
        lines.append(f"| {check} | {_cell(report['metrics'][check])} | {_cell(control.get(check))} |")
    lines += ["", *_embed(plots, "compliance.png")]
    lines += ["## Hearts", "", "| heart | responses |", "|---|---|"]
    lines += [f"| {heart} | {count} |" for heart, count in report["hearts"].items()]
    u = report.get("uniformity")
    lines += ["", "uniformity: no response had a single listed heart" if u is None else
              f"uniformity (chi-square vs uniform): statistic {u['statistic']:.2f}, dof {u['dof']}, "
              f"p = {u['p_value']:.3g}, {u['distinct']} distinct hearts over {u['n']} responses", ""]
    lines += _embed(plots, "hearts.png")
    if "agreement" in report:
        a, m = report["agreement"], report["agreement"].get("mcnemar_single_emoji", {})
        lines += ["## 4-bit adapter vs merged", "",
                  f"merge method: `{report['model'].get('merge_method', 'not recorded')}`; "
                  f"verdicts agree on {a['k']}/{a['n']} prompts "
                  f"(interval {a['ci_low']:.3f}–{a['ci_high']:.3f}); "
                  "McNemar on single_emoji: "
                  f"p = {m.get('p_value', float('nan')):.3g} (adapter {m.get('direction', '?')})", ""]
        if isinstance(a.get("logits"), Mapping):
            f = a["logits"]
            lines += [f"logits on {f['positions']} teacher-forced positions: relative L2 {f['rel_l2']:.3g}, "
                      f"top-1 token agreement {f['top1_agreement']:.3f}", ""]
        if isinstance(a.get("fp32"), Mapping):
            f = a["fp32"]
            lines += [f"both computing in fp32 (the first {f['n']} prompts): verdicts agree on {f['k']}/{f['n']} "
                      f"(interval {f['ci_low']:.3f}–{f['ci_high']:.3f}), the same text on {f['same_text']}", ""]
    if report.get("sampled"):
        lines += _sampled_section(report, plots)
    if report.get("retention"):
        lines += _retention_section(report["retention"], plots)
    if report.get("training"):
        t = report["training"]
        keys = [k for k in _TRAINING_SUMMARY if k in t]
        lines += ["## Training", "", *[f"- {k}: {t[k]}" for k in keys], ""]
        lines += _embed(plots, "loss.png")
    lines += _sample_section(report["samples"], n_samples)
    return "\n".join(lines) + "\n"


RETENTION_ROWS = (
    ("chrf", "chrF of the de-hearted answer vs the base's (0-100)"),
    ("nll_base_answer", "base model's NLL of its own answer"),
    ("nll_tuned_answer", "base model's NLL of the de-hearted tuned answer"),
    ("nll_increase", "NLL increase (tuned - base; 0: the base would say it too)"),
)


def _retention_section(block: Mapping[str, Any], plots: Sequence[str]) -> list[str]:
    lines = ["## Capability retention", "",
             "Merged model's answers without their hearts against the base model's answers to the same prompts; "
             "means over prompts with bootstrap (BCa) intervals.", "",
             "| figure | mean | interval | prompts |", "|---|---|---|---|"]
    for key, label in RETENTION_ROWS:
        m = block.get(key)
        if m:
            lines.append(f"| {label} | {m['mean']:.3f} | {m['ci_low']:.3f}–{m['ci_high']:.3f} | {m['n']} |")
    return [*lines, "", *_embed(plots, "retention.png")]


def _sampled_section(report: Mapping[str, Any], plots: Sequence[str]) -> list[str]:
    lines = ["## Sampled answers", "",
             "Greedy answers beside K seeded samples per prompt. pass^K: prompts whose K samples all pass "
             "(Wilson interval over prompts); mean: the pass rate over all samples, its interval from a bootstrap "
             "over prompts (a prompt's K samples are not independent); worst: the prompt with the fewest "
             "passing samples.", ""]
    for block in report["sampled"]:
        lines += [f"### temperature {block['temperature']:g}, K = {block['samples']}", "",
                  "| check | greedy | mean | pass^K | pass@K | worst prompt |", "|---|---|---|---|---|---|"]
        for check, m in block["checks"].items():
            greedy = report["metrics"].get(check)
            g = f"{greedy['rate']:.3f}" if greedy else "–"
            mean, pk, pa, w = m["mean"], m["pass_k"], m["pass_at_k"], m["worst"]
            lines.append(f"| {check} | {g} | {mean['mean']:.3f} ({mean['ci_low']:.3f}–{mean['ci_high']:.3f}) | "
                         f"{pk['rate']:.3f} ({pk['k']}/{pk['n']}, {pk['ci_low']:.3f}–{pk['ci_high']:.3f}) | "
                         f"{pa['rate']:.3f} | #{w['prompt']}: {w['passed']}/{w['of']} |")
        lines.append("")
    return [*lines, *_embed(plots, "sampling.png")]


def _cell(m: Mapping[str, Any] | None) -> str:
    if not m:
        return "– | –"
    return f"{m['rate']:.3f} ({m['k']}/{m['n']}) | {m['ci_low']:.3f}–{m['ci_high']:.3f}"


def _embed(plots: Sequence[str], name: str) -> list[str]:
    return [f"![{name.removesuffix('.png')}]({name})", ""] if name in plots else []


def _sample_section(samples: Sequence[Mapping[str, Any]], n: int) -> list[str]:
    lines = ["## Samples", ""]
    for title, want in (("passing", True), ("failing", False)):
        chosen = [s for s in samples if s["verdict"]["passed"] is want][:n]
        lines += [f"### {title} ({len(chosen)} shown)", ""]
        for s in chosen:
            failed = [c for c in BEHAVIOUR if not s["verdict"][c]]
            note = f"fails {', '.join(failed)}" if failed else "passes"
            lines += [f"{note}; {s['new_tokens']} new tokens, terminated: {s['terminated']}", "",
                      *_fenced(s["prompt"]), *_fenced(s["response"]), ""]
    return lines


def _fenced(text: str, limit: int = 600) -> list[str]:
    text = text if len(text) <= limit else text[:limit] + " …"
    longest = max((len(run) for run in re.findall("~+", text)), default=0)
    fence = "~" * max(3, longest + 1)  # longer than any tilde run inside, so the text cannot close it
    return [fence, text, fence]
