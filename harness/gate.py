"""Stage 9: the gate — does a report clear the release thresholds, and did nothing regress?

Rows, one per check:

- each check that should be high (single_emoji, in_list, between_every_word, terminated) on its Wilson lower
  bound, ``ci_low >= threshold`` — the bound, not the rate, so luck cannot pass a small set;
- each fault that should be rare (malformed, template_leak) on its *rate*, ``rate <= threshold``: the Wilson
  upper bound of a clean run only drops under 0.01 from about 380 prompts, so on an evaluation set of 66 the
  bound would fail a perfect model;
- every row counted in prompts also needs ``margin`` prompts to spare (``spare_prompts``: that many more failures
  and it would still pass), capped at what a perfect run of that size has — a verdict one prompt from its bound
  flips with the processor or a library release;
- ``control_single_emoji``: the base model's single_emoji *rate* must stay at or under its threshold, so the
  behaviour comes from the adapter. The rate, not ``ci_high``: a clean control of 66 prompts (0/66) has a
  Wilson upper bound of 0.055, so the bound would fail a perfect control for want of prompts;
- ``merge_top1`` (when the report judged the 4-bit adapter model too): the share of teacher-forced positions
  where the merged model's top-1 token equals the trained 4-bit model's — what is uploaded computes what was
  trained;
- ``retention_chrf`` / ``retention_nll_increase``, optional: capability retention's bootstrap bounds;
- with a baseline report: an exact McNemar test per check on the prompts both reports share (matched by prompt
  text); a significant change (p < mcnemar_alpha) for the worse fails;
- with two pytest-benchmark JSONs: every ``*_per_s`` in ``extra_info`` of a benchmark present in both may drop
  by at most ``throughput_margin``.

Thresholds come from ``GateConfig``: defaults, then a ``[gate]`` table of a TOML file (``[tool.hearts.gate]``
when the file is a ``pyproject.toml``); an unknown key is an error.
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from harness import checks
from harness import report as reports
from harness.bench import load_bench
from harness.config import ConfigError, GateConfig, build, load_toml
from harness.environment import environment_drift
from harness.errors import InputError
from harness.stats import mcnemar_exact, wilson

ReportLike = str | Path | Mapping[str, Any]
Sample = dict[str, Any]
HIGH_CHECKS, LOW_CHECKS = checks.HIGH, checks.LOW
_RATE_FIELDS = (*HIGH_CHECKS, *LOW_CHECKS, "control_single_emoji", "merge_top1")


@dataclasses.dataclass(frozen=True)
class GateRow:
    """One gate check: what was measured, against what, and whether it passed."""

    name: str
    value: float
    interval: tuple[float, float] | None
    threshold: str
    passed: bool
    note: str = ""
    changed: bool = False  # a baseline row: some prompt's verdict on this check flipped
    spare: int | None = None  # prompts that could still fail with the bound held; None: not counted in prompts


@dataclasses.dataclass(frozen=True)
class GateResult:
    rows: tuple[GateRow, ...]
    drift: tuple[tuple[str, str, str], ...] = ()  # (what, baseline, report) when a check flipped vs a baseline

    @property
    def passed(self) -> bool:
        return all(row.passed for row in self.rows)

    @property
    def failures(self) -> tuple[GateRow, ...]:
        return tuple(row for row in self.rows if not row.passed)

    def table(self, rows: tuple[GateRow, ...] | None = None) -> str:
        """A plain-text table, one row per check."""
        header = ("check", "value", "interval", "threshold", "spare", "result", "note")
        cells = [header] + [
            (r.name, f"{r.value:.4g}", f"[{r.interval[0]:.3f}, {r.interval[1]:.3f}]" if r.interval else "",
             r.threshold, "" if r.spare is None else str(r.spare), "pass" if r.passed else "FAIL", r.note)
            for r in (self.rows if rows is None else rows)
        ]
        widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
        lines = ("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells)
        return "\n".join(lines)

    def drift_text(self) -> str:
        """What differs from the baseline's environment, shown when a check flipped ("" when nothing did)."""
        if not self.drift:
            return ""
        flipped = ", ".join(r.name.removesuffix(" vs baseline") for r in self.rows if r.changed)
        lines = [f"verdicts flipped against the baseline ({flipped}); its environment differs:"]
        lines += [f"  {name}: {old} (baseline) -> {new}" for name, old, new in self.drift]
        return "\n".join(lines)

    def summary(self) -> str:
        failed = len(self.failures)
        return "gate: PASSED" if not failed else f"gate: FAILED ({failed} of {len(self.rows)} checks)"


# --- configuration --------------------------------------------------------------------------------


def load_config(path: str | Path | None = None) -> GateConfig:
    """GateConfig from defaults and ``path``'s ``[gate]`` (or a pyproject's ``[tool.hearts.gate]``) table."""
    if path is None:
        return GateConfig()
    path = Path(path)
    whole = load_toml(path, "")  # parsed once; the table is picked from it below
    if path.name == "pyproject.toml":
        table = whole.get("tool", {}).get("hearts", {}).get("gate", {}) if isinstance(whole.get("tool"), dict) \
            else {}
    else:
        table = whole.get("gate", {})
        other = sorted(set(whole) - {"gate"})
        if other:
            raise ConfigError(f"{path}: unknown table or key {other[0]!r} (gate settings go in [gate])")
    if not isinstance(table, dict):
        where = "tool.hearts.gate" if path.name == "pyproject.toml" else "gate"
        raise ConfigError(f"{path}: [{where}] is not a table")
    try:
        return checked_config(build(GateConfig, table))
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def checked_config(cfg: GateConfig) -> GateConfig:
    """Reject thresholds outside the range where they mean anything."""
    for name in _RATE_FIELDS:
        value = getattr(cfg, name)
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"GateConfig.{name}: expected a rate in [0, 1], got {value}")
    if cfg.retention_chrf is not None and not 0.0 <= cfg.retention_chrf <= 100.0:
        raise ConfigError(f"GateConfig.retention_chrf: expected a chrF in [0, 100], got {cfg.retention_chrf}")
    if cfg.retention_nll_increase is not None and not math.isfinite(cfg.retention_nll_increase):
        raise ConfigError(f"GateConfig.retention_nll_increase: expected a finite number, got "
                          f"{cfg.retention_nll_increase}")
    if cfg.pass_k is not None and not 0.0 <= cfg.pass_k <= 1.0:
        raise ConfigError(f"GateConfig.pass_k: expected a rate in [0, 1], got {cfg.pass_k}")
    if cfg.margin < 0:
        raise ConfigError(f"GateConfig.margin: expected a number of prompts >= 0, got {cfg.margin}")
    if not 0.0 < cfg.mcnemar_alpha < 1.0:
        raise ConfigError(f"GateConfig.mcnemar_alpha: expected a value in (0, 1), got {cfg.mcnemar_alpha}")
    if not 0.0 <= cfg.throughput_margin < 1.0:
        margin = cfg.throughput_margin
        raise ConfigError(f"GateConfig.throughput_margin: expected a value in [0, 1), got {margin}")
    return cfg


# --- evaluation -----------------------------------------------------------------------------------


def evaluate(
    report: ReportLike,
    config: GateConfig | None = None,
    *,
    baseline: ReportLike | None = None,
    bench: str | Path | None = None,
    baseline_bench: str | Path | None = None,
) -> GateResult:
    """Every gate row for ``report`` (a path or a loaded report), with an optional baseline and benchmarks."""
    cfg = checked_config(config or GateConfig())
    if (bench is None) != (baseline_bench is None):
        given = "--bench" if bench is not None else "--baseline-bench"
        raise InputError(f"{given}: --bench and --baseline-bench go together (got only {given})")
    name, data = _loaded(report, "report")
    rows = [*threshold_rows(data, cfg)]
    drift: list[tuple[str, str, str]] = []
    if baseline is not None:
        base_name, base = _loaded(baseline, "baseline report")
        against = baseline_rows(data, base, cfg.mcnemar_alpha, names=(name, base_name))
        rows += against
        if any(row.changed for row in against):
            drift = environment_drift(data, base)
    if bench is not None and baseline_bench is not None:
        rows += throughput_rows(load_bench(bench), load_bench(baseline_bench), cfg.throughput_margin,
                                names=(str(bench), str(baseline_bench)))
    return GateResult(tuple(rows), tuple(drift))


def assert_gate(report: ReportLike, config: GateConfig | Mapping[str, Any] | str | Path | None = None, *,
                baseline: ReportLike | None = None) -> GateResult:
    """For pytest: the GateResult when the gate passes, else AssertionError listing the failing rows."""
    if isinstance(config, Mapping):
        config = checked_config(build(GateConfig, config))
    elif not isinstance(config, GateConfig):
        config = load_config(config)
    result = evaluate(report, config, baseline=baseline)
    if not result.passed:
        raise AssertionError(f"{result.summary()}\n{result.table(result.failures)}")
    return result


def _loaded(report: ReportLike, label: str) -> tuple[str, dict[str, Any]]:
    if isinstance(report, Mapping):
        reports.validate(report, label)
        return label, dict(report)
    return str(report), reports.load_report(report)


def threshold_rows(report: Mapping[str, Any], cfg: GateConfig) -> Iterator[GateRow]:
    metrics = report["metrics"]
    for check in checks.NAMES:
        m, limit = metrics[check], getattr(cfg, check)
        high = check in HIGH_CHECKS
        yield counted_row(check, m, limit, high, cfg.margin)
    yield counted_row("control_single_emoji", report["control"]["metrics"]["single_emoji"],
                      cfg.control_single_emoji, False, cfg.margin, "base model on the same prompts")
    logits = (report.get("agreement") or {}).get("logits")
    if logits is not None:
        yield GateRow("merge_top1", logits["top1_agreement"], None, f">= {cfg.merge_top1:g}",
                      logits["top1_agreement"] >= cfg.merge_top1,
                      f"merged vs trained 4-bit model, top-1 tokens at {logits['positions']} positions")
    yield from retention_rows(report.get("retention"), cfg)
    if cfg.pass_k is not None:
        yield pass_k_row(report.get("sampled"), cfg.pass_k, cfg.margin)


def counted_row(name: str, m: Mapping[str, Any], limit: float, high: bool, margin: int, note: str = "") -> GateRow:
    """A rate over prompts against its bound: the Wilson lower bound of a check that should be high, the rate of a
    fault that should be rare; passing also needs ``margin`` prompts to spare (capped at a perfect run's).

    The bound is judged on the report's own figures (``ci_low``, ``rate``) and the spare on its ``k`` of ``n``:
    the same thing for a report the harness wrote, whose rates are ``stats.wilson`` of those counts."""
    k, n, confidence = m["k"], m["n"], m.get("confidence", 0.95)
    held = m["ci_low"] >= limit if high else m["rate"] <= limit
    spare = spare_prompts(k, n, limit, high, confidence)
    best = spare_prompts(n if high else 0, n, limit, high, confidence)  # a perfect run's
    notes = [note]
    if best < 0:  # the evaluation set is too small for the bound (a high check: no fault always clears a rate)
        notes.append(f"unreachable at n={n}: a perfect run's bound is {wilson(n, n, confidence).ci_low:.3f}")
    needed = max(0, min(margin, best))  # best < 0: the row fails on the bound alone
    if held and spare < needed:
        notes.append(f"{spare} prompt(s) to spare, the margin is {needed}")
    note = "; ".join(filter(None, notes))
    return GateRow(name, m["rate"], (m["ci_low"], m["ci_high"]),
                   f"ci_low >= {limit:g}" if high else f"rate <= {limit:g}", held and spare >= needed, note,
                   spare=spare)


def spare_prompts(k: int, n: int, limit: float, high: bool, confidence: float = 0.95) -> int:
    """How many more of ``n`` prompts could fail with the bound still held; negative: how many it is short.

    A check that should be high passes on its Wilson lower bound, which rises with ``k``: spare is ``k`` minus
    the fewest passes that clear ``limit``. A rare fault passes on its rate: spare is the most faults the rate
    allows minus ``k``. The same comparisons as the rows make, so ``spare >= 0`` exactly when the bound holds.
    """
    if high:
        return k - fewest_passing(n, limit, confidence)
    most = math.floor(limit * n)
    while (most + 1) / n <= limit:  # floor's float rounding, settled by the comparison the row makes
        most += 1
    while most >= 0 and most / n > limit:
        most -= 1
    return most - k


def fewest_passing(n: int, limit: float, confidence: float = 0.95) -> int:
    """The smallest k whose Wilson lower bound of k/n reaches ``limit``; n + 1 when not even n/n does."""
    lo, hi = 0, n + 1
    while lo < hi:  # bisection: the lower bound rises with k
        mid = (lo + hi) // 2
        if wilson(mid, n, confidence).ci_low >= limit:
            hi = mid
        else:
            lo = mid + 1
    return lo


def pass_k_row(sampled: Any, limit: float, margin: int) -> GateRow:
    """The optional pass^K threshold, on the behaviour at the first sampled temperature."""
    if not sampled:
        return GateRow("pass_k", math.nan, None, f"ci_low >= {limit:g}", False,
                       "the report has no sampled answers ([eval] samples)")
    block = sampled[0]
    return counted_row("pass_k", block["checks"]["behaviour"]["pass_k"], limit, True, margin,
                       f"all {block['samples']} samples pass, T={block['temperature']:g}")


def retention_rows(block: Mapping[str, Any] | None, cfg: GateConfig) -> Iterator[GateRow]:
    """The optional retention thresholds: chrF's lower bound, the NLL increase's upper bound."""
    wanted = [("retention_chrf", "chrf", cfg.retention_chrf, True),
              ("retention_nll_increase", "nll_increase", cfg.retention_nll_increase, False)]
    for name, key, limit, high in wanted:
        if limit is None:
            continue
        m = (block or {}).get(key)
        if not m:
            yield GateRow(name, math.nan, None, f"set to {limit:g}", False, "the report has no retention figures")
            continue
        passed = m["ci_low"] >= limit if high else m["ci_high"] <= limit
        yield GateRow(name, m["mean"], (m["ci_low"], m["ci_high"]),
                      f"ci_low >= {limit:g}" if high else f"ci_high <= {limit:g}", passed,
                      "merged vs base answers, bootstrap interval")


# --- baseline report: paired McNemar per check -------------------------------------------------------


def baseline_rows(report: Mapping[str, Any], baseline: Mapping[str, Any], alpha: float,
                  names: tuple[str, str] = ("report", "baseline report")) -> list[GateRow]:
    """One McNemar row per check on the prompts both reports answered; a significant drop fails."""
    pairs = _shared(baseline["samples"], report["samples"])
    if not pairs:
        raise InputError(f"{names[1]}: no prompts shared with {names[0]} (prompts are matched by their text)")
    rows = []
    for check in checks.NAMES:
        old = [_pass_flag(b["verdict"], check) for b, _ in pairs]
        new = [_pass_flag(r["verdict"], check) for _, r in pairs]
        test = mcnemar_exact(old, new)
        worse = test.direction == "worse" and test.p_value < alpha
        rows.append(GateRow(f"{check} vs baseline", test.p_value, None,
                            f"no significant drop (p >= {alpha:g})", not worse,
                            f"p-value; {test.b10} lost, {test.b01} gained of {test.n} shared",
                            changed=test.b10 + test.b01 > 0))
    return rows


def _shared(old: list[Sample], new: list[Sample]) -> list[tuple[Sample, Sample]]:
    """Samples paired by prompt text; a prompt asked k times pairs its first min(k, k') answers in order."""
    by_prompt: dict[str, list[Sample]] = defaultdict(list)
    for sample in old:
        by_prompt[sample["prompt"]].append(sample)
    taken: dict[str, int] = defaultdict(int)
    pairs = []
    for sample in new:
        i = taken[sample["prompt"]]
        if i < len(by_prompt.get(sample["prompt"], ())):
            pairs.append((by_prompt[sample["prompt"]][i], sample))
            taken[sample["prompt"]] += 1
    return pairs


def _pass_flag(verdict: Mapping[str, Any], check: str) -> bool | None:
    """True when the response does well on ``check``; None when the check does not apply."""
    if check == "between_every_word" and not verdict["applicable"]:
        return None
    flag = verdict.get(check)
    if flag is None:
        return None
    return not flag if check in LOW_CHECKS else bool(flag)


# --- benchmarks: throughput against a baseline -------------------------------------------------------


def throughput_rows(new: Mapping[str, Mapping[str, float]], old: Mapping[str, Mapping[str, float]],
                    margin: float, names: tuple[str, str] = ("bench", "baseline bench")) -> list[GateRow]:
    """One row per ``*_per_s`` measured in both; a drop of more than ``margin`` fails."""
    rows = []
    for name in sorted(set(new) & set(old)):
        for key in sorted(set(new[name]) & set(old[name])):
            floor = old[name][key] * (1.0 - margin)
            rows.append(GateRow(f"{name} {key}", new[name][key], None,
                                f">= {floor:.4g} (baseline {old[name][key]:.4g} - {margin:.0%})",
                                new[name][key] >= floor, "throughput"))
    if not rows:
        raise InputError(f"{names[0]}: no benchmark with a *_per_s value in extra_info is also in {names[1]}")
    return rows
