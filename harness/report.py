"""Stage 9: the report — verdicts and statistics of one evaluation as ``report.json``, plus ``report.md``.

``build_report`` judges the merged model's (and the base control's, and optionally the 4-bit adapter model's)
generations on the same prompts; ``write_report`` writes the JSON, a markdown summary and PNG plots, each file
atomically and ``report.json`` last; ``load_report`` reads one back and rejects a malformed one with a single
line naming the file and the problem. The schema is pinned by ``validate``.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from harness.behavior import Verdict, check_response
from harness.cache import atomic_save_figure, atomic_write_text
from harness.environment import describe, versions
from harness.errors import InputError
from harness.generate import Generation
from harness.inputs import read_json, tree_problem
from harness.retention import summarize as summarize_retention
from harness.stats import heart_counts, mcnemar_exact, rate_of, summarize, uniformity

SCHEMA = 1
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
PLOTS = ("compliance.png", "hearts.png", "loss.png", "retention.png")
CHECKS: tuple[str, ...] = ("single_emoji", "in_list", "between_every_word", "terminated", "malformed",
                           "template_leak")
_VERDICT_FLAGS = ("single_emoji", "in_list", "between_every_word", "applicable", "malformed", "template_leak")
_TRAINING_SUMMARY = ("steps", "train_loss", "tokens_per_s", "wall_s", "compute_dtype", "device")
_EPS = 1e-9  # float slack when checking that a rate lies inside its own interval
MAX_N = 2**31  # beyond this scipy's exact tests overflow; no evaluation set comes near it


# --- build ------------------------------------------------------------------------------------------


def build_report(
    *,
    model: Mapping[str, Any],
    config: Mapping[str, Any],
    prompts: Sequence[str],
    merged: Sequence[Generation],
    control: Sequence[Generation],
    adapter: Sequence[Generation] | None = None,
    fidelity: Mapping[str, Any] | None = None,
    retention: Sequence[Mapping[str, float]] | None = None,
    training: Mapping[str, Any] | None = None,
    data_stats: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The report dict of one evaluation: every generation judged, rates with Wilson intervals, samples.

    ``fidelity``: the merged model's logits against the 4-bit adapter model's (``merge.compare_logits``);
    ``retention``: per-prompt figures of the merged answers against the base's (``retention.per_prompt``).
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
    if retention is not None:
        if len(retention) != len(prompts):
            raise ValueError(f"retention: expected one row per prompt ({len(prompts)}), got {len(retention)}")
        report["retention"] = summarize_retention(retention)
    if training is not None:
        report["training"] = _plain(dict(training))
    if data_stats is not None:
        report["data"] = _plain(dict(data_stats))
    report["samples"] = _samples(merged, verdicts["merged"], retention)
    return report


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


# --- write ------------------------------------------------------------------------------------------


def write_report(out_dir: str | Path, report: Mapping[str, Any]) -> Path:
    """Write ``report.json``, ``report.md`` and the plots into ``out_dir``; returns the ``report.json`` path.

    The report is validated first. Each file is written atomically and ``report.json`` last, so a reader that
    finds it finds the rest; plots of an earlier run that this one does not draw are removed.
    """
    report = dict(report)
    validate(report, "report")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    drawn = _draw_plots(report, out)
    atomic_write_text(out / REPORT_MD, render_markdown(report, drawn))
    text = json.dumps(report, indent=2, ensure_ascii=False, allow_nan=False)
    atomic_write_text(out / REPORT_JSON, text + "\n")
    for stale in set(PLOTS) - set(drawn):  # only now: the report that showed them has been replaced
        (out / stale).unlink(missing_ok=True)
    return out / REPORT_JSON


def _draw_plots(report: Mapping[str, Any], out: Path) -> list[str]:
    """Draw each plot the report has data for; returns the file names written."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    drawn = []
    losses = [p for p in (report.get("training") or {}).get("loss") or []
              if isinstance(p, Mapping) and p.get("loss") is not None]
    plots: list[tuple[str, Callable[[Any, Any], None], Any]] = [
        ("compliance.png", _plot_compliance, report), ("hearts.png", _plot_hearts, report["hearts"])]
    if losses:
        plots.append(("loss.png", _plot_loss, losses))
    kept = [s["retention"] for s in report["samples"] if isinstance(s.get("retention"), Mapping)]
    if kept:
        plots.append(("retention.png", _plot_retention, kept))
    for name, draw, data in plots:
        fig = Figure(figsize=(8, 4.5), layout="constrained")
        FigureCanvasAgg(fig)
        draw(fig.subplots(), data)
        atomic_save_figure(fig, out / name)
        drawn.append(name)
    return drawn


def _plot_compliance(ax: Any, report: Mapping[str, Any]) -> None:
    height = 0.38
    runs = (("adapter (merged)", report["metrics"], -height / 2), ("base (control)",
            report["control"]["metrics"], height / 2))
    for label, metrics, offset in runs:
        rows = [(i, metrics[c]) for i, c in enumerate(CHECKS) if c in metrics]
        rates = [m["rate"] for _, m in rows]
        errors = [[m["rate"] - m["ci_low"] for _, m in rows], [m["ci_high"] - m["rate"] for _, m in rows]]
        ax.barh([i + offset for i, _ in rows], rates, height=height, xerr=errors, capsize=3, label=label)
    ax.set_yticks(range(len(CHECKS)), CHECKS)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    confidence = report["metrics"]["single_emoji"].get("confidence", 0.95)
    ax.set_xlabel(f"rate with {confidence:.0%} Wilson interval (malformed, template_leak: lower is better)")
    ax.set_title("compliance per check")
    ax.figure.legend(loc="outside lower center", ncols=2)  # outside: a full bar would hide it


def _plot_hearts(ax: Any, counts: Mapping[str, int]) -> None:
    # Code points, not glyphs: the default font has no colour-emoji hearts, and a missing glyph warns.
    labels = [" ".join(f"U+{ord(ch):04X}" for ch in heart) for heart in counts]
    ax.bar(labels, list(counts.values()))
    ax.tick_params(axis="x", labelrotation=30)
    ax.set_ylabel("responses with exactly this heart")
    ax.set_title("heart distribution (merged model)")


def _plot_loss(ax: Any, losses: Sequence[Mapping[str, Any]]) -> None:
    ax.plot([p["step"] for p in losses], [p["loss"] for p in losses], marker=".")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title("training loss")


def _plot_retention(ax: Any, rows: Sequence[Mapping[str, float]]) -> None:
    base, tuned = [r["nll_base"] for r in rows], [r["nll_tuned"] for r in rows]
    dots = ax.scatter(base, tuned, c=[r["chrf"] for r in rows], cmap="viridis", vmin=0, vmax=100, s=14)
    low, high = min(base + tuned), max(base + tuned)
    ax.plot([low, high], [low, high], color="grey", linewidth=1, label="tuned = base")
    ax.set_xlabel("base model's NLL of its own answer (nats/token)")
    ax.set_ylabel("base model's NLL of the tuned answer, de-hearted")
    ax.set_title("capability retention per prompt")
    ax.figure.colorbar(dots, ax=ax, label="chrF vs the base answer")
    ax.legend(loc="upper left")


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
            failed = [c for c in ("single_emoji", "in_list", "between_every_word") if not s["verdict"][c]]
            note = f"fails {', '.join(failed)}" if failed else "passes"
            lines += [f"{note}; {s['new_tokens']} new tokens, terminated: {s['terminated']}", "",
                      *_fenced(s["prompt"]), *_fenced(s["response"]), ""]
    return lines


def _fenced(text: str, limit: int = 600) -> list[str]:
    text = text if len(text) <= limit else text[:limit] + " …"
    longest = max((len(run) for run in re.findall("~+", text)), default=0)
    fence = "~" * max(3, longest + 1)  # longer than any tilde run inside, so the text cannot close it
    return [fence, text, fence]


# --- read and validate ---------------------------------------------------------------------------


def load_report(path: str | Path) -> dict[str, Any]:
    """Read and validate a ``report.json``; any problem is an InputError naming the file and the key."""
    report = read_json(path, expected="a JSON report")
    validate(report, str(path))
    return report


def validate(report: Any, src: str) -> None:
    """Raise InputError (``src: key.path problem``) unless ``report`` has the report schema."""
    problem = tree_problem(report)  # NaN, ±inf, huge integers, deep nesting: before any key is read
    if problem is not None:
        raise InputError(f"{src}: {problem}")
    r = _obj(report, src, "", "the top level")
    schema = _field(r, "schema", src, "")
    if schema != SCHEMA:
        raise InputError(f"{src}: schema {schema!r} is not supported (expected {SCHEMA})")
    if not isinstance(_field(r, "created", src, ""), str):
        raise InputError(f"{src}: created must be a string")
    model = _obj(_field(r, "model", src, ""), src, "model")
    for key in ("base", "adapter_path", "merged_path"):
        _field(model, key, src, "model")
    for key in ("config", "versions"):
        _obj(_field(r, key, src, ""), src, key)
    n = _metrics_block(_field(r, "metrics", src, ""), src, "metrics", CHECKS)
    _hearts(_field(r, "hearts", src, ""), src)
    if _field(r, "uniformity", src, "") is not None:
        _obj(r["uniformity"], src, "uniformity")
    control = _obj(_field(r, "control", src, ""), src, "control")
    _metrics_block(_field(control, "metrics", src, "control"), src, "control.metrics", ("single_emoji",))
    if "samples" in control:
        _samples_block(control["samples"], src, "control.samples")
    if "adapter" in r:
        adapter = _obj(r["adapter"], src, "adapter")
        _metrics_block(_field(adapter, "metrics", src, "adapter"), src, "adapter.metrics", ("single_emoji",))
    if "agreement" in r:
        _rate(r["agreement"], src, "agreement")
    for key in ("training", "data"):
        if key in r:
            _obj(r[key], src, key)
    samples = _samples_block(_field(r, "samples", src, ""), src, "samples")
    if len(samples) != n:
        raise InputError(f"{src}: samples has {len(samples)} entries but metrics.single_emoji.n is {n}")


def _join(at: str, key: str) -> str:
    return f"{at}.{key}" if at else key


def _kind(value: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
             dict: "an object", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _obj(value: Any, src: str, at: str, label: str | None = None) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InputError(f"{src}: {label or at} must be a JSON object, got {_kind(value)}")
    return value


def _field(d: Mapping[str, Any], key: str, src: str, at: str) -> Any:
    if key not in d:
        raise InputError(f"{src}: {_join(at, key)} is missing")
    return d[key]


def _number(value: Any, src: str, at: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InputError(f"{src}: {at} must be a number, got {_got(value)}")
    return float(value)


def _count(value: Any, src: str, at: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InputError(f"{src}: {at} must be a non-negative integer, got {_got(value)}")
    return value


def _got(value: Any) -> str:
    return _kind(value) if value is None else f"{_kind(value)} {json.dumps(value)[:40]}"


def _rate(value: Any, src: str, at: str) -> int:
    """Validate one ``{rate, k, n, ci_low, ci_high[, confidence]}`` block; returns n."""
    block = _obj(value, src, at)
    k = _count(_field(block, "k", src, at), src, f"{at}.k")
    n = _count(_field(block, "n", src, at), src, f"{at}.n")
    if n == 0:
        raise InputError(f"{src}: {at}.n is 0 (a rate needs at least one judged response)")
    if n > MAX_N:
        raise InputError(f"{src}: {at}.n = {n} is more responses than any evaluation judges (at most {MAX_N})")
    if "confidence" in block:  # the Wilson interval's level; the gate recomputes bounds with it
        c = _number(block["confidence"], src, f"{at}.confidence")
        if not 0.0 < c < 1.0:
            raise InputError(f"{src}: {at}.confidence = {c:g} is outside (0, 1) (e.g. 0.95)")
    if k > n:
        raise InputError(f"{src}: {at}.k = {k} exceeds {at}.n = {n}")
    rate, low, high = (_number(_field(block, key, src, at), src, f"{at}.{key}") for key in ("rate", "ci_low",
                                                                                           "ci_high"))
    for key, v in (("rate", rate), ("ci_low", low), ("ci_high", high)):
        if not 0.0 <= v <= 1.0:
            raise InputError(f"{src}: {at}.{key} = {v} is outside [0, 1]")
    if abs(rate - k / n) > _EPS:
        raise InputError(f"{src}: {at}.rate = {rate} is not k/n = {k}/{n}")
    if not low - _EPS <= rate <= high + _EPS:
        raise InputError(f"{src}: {at}: rate {rate} lies outside its interval [{low}, {high}]")
    return n


def _metrics_block(value: Any, src: str, at: str, required: Sequence[str]) -> int:
    """Validate each rate block of a metrics object (``required`` must be there); returns single_emoji's n."""
    metrics = _obj(value, src, at)
    for check in required:
        _field(metrics, check, src, at)
    ns = {check: _rate(block, src, f"{at}.{check}") for check, block in metrics.items()}
    return ns["single_emoji"]


def _hearts(value: Any, src: str) -> None:
    hearts = _obj(value, src, "hearts")
    for heart, count in hearts.items():
        _count(count, src, f"hearts[{heart!r}]")


def _samples_block(value: Any, src: str, at: str) -> list[Any]:
    if not isinstance(value, list):
        raise InputError(f"{src}: {at} must be a list, got {_kind(value)}")
    for i, sample in enumerate(value):
        here = f"{at}[{i}]"
        s = _obj(sample, src, here)
        for key in ("prompt", "response"):
            if not isinstance(_field(s, key, src, here), str):
                raise InputError(f"{src}: {here}.{key} must be a string, got {_kind(s[key])}")
        _count(_field(s, "new_tokens", src, here), src, f"{here}.new_tokens")
        verdict = _obj(_field(s, "verdict", src, here), src, f"{here}.verdict")
        for flag in (*_VERDICT_FLAGS, "passed"):
            if not isinstance(_field(verdict, flag, src, f"{here}.verdict"), bool):
                got = _kind(verdict[flag])
                raise InputError(f"{src}: {here}.verdict.{flag} must be true/false, got {got}")
        for key, holder in (("terminated", s), ("terminated", verdict)):
            if not isinstance(holder.get(key), bool | None):
                raise InputError(f"{src}: {here}.{key} must be true/false/null, got {_kind(holder[key])}")
    return value
