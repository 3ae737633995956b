"""Benchmark comparison: two pytest-benchmark JSON runs side by side, with a verdict per row and a plot.

Benchmarks are matched by ``name``; ``load_bench`` (the gate's throughput rows read it too) and ``read_bench``
read and check one run. For each benchmark in both runs:

- the mean time of a round (``stats.mean``): rising by more than ``margin`` is a regression;
- every ``*_per_s`` in ``extra_info``: dropping by more than ``margin`` is a regression (the same rule as the
  gate's throughput rows, so the two never disagree);
- every ``peak_*`` in ``extra_info`` (peak memory): shown with its ratio, never judged — on CPU it is
  ``ru_maxrss``, the process's high-water mark, which depends on what ran before the benchmark.

``new/old`` is the ratio everywhere; the run is a regression when any row is.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from harness.cache import atomic_save_figure, atomic_write_text
from harness.errors import InputError
from harness.inputs import check_out_file, read_json
from harness.staging import output_errors

TIME, RATE, MEMORY = "time", "rate", "memory"
REGRESSION, IMPROVED, OK, INFO = "regression", "improved", "ok", "info"
MEMORY_PREFIX = "peak_"


@dataclasses.dataclass(frozen=True)
class Measured:
    """One benchmark of one run: mean seconds per round, its rates and its peak memory figures."""

    mean_s: float
    rates: dict[str, float]
    memory: dict[str, float]


@dataclasses.dataclass(frozen=True)
class BenchRun:
    path: str
    benchmarks: dict[str, Measured]  # in file order
    about: str  # date, commit and CPU as pytest-benchmark recorded them ("" when absent)


@dataclasses.dataclass(frozen=True)
class Row:
    benchmark: str
    metric: str  # "mean time", a *_per_s key or a peak_* key
    kind: str  # TIME, RATE or MEMORY
    old: float
    new: float
    verdict: str

    @property
    def ratio(self) -> float:
        """new/old; NaN when only ``old`` is 0 (possible for memory alone: times and rates are positive)."""
        if self.old == 0:
            return 1.0 if self.new == 0 else math.nan
        return self.new / self.old


@dataclasses.dataclass(frozen=True)
class Comparison:
    new: BenchRun
    old: BenchRun
    margin: float
    rows: tuple[Row, ...]
    only_new: tuple[str, ...]
    only_old: tuple[str, ...]

    @property
    def regressions(self) -> tuple[Row, ...]:
        return tuple(r for r in self.rows if r.verdict == REGRESSION)

    @property
    def regressed(self) -> bool:
        return bool(self.regressions)

    def counts(self) -> str:
        judged = sum(r.kind != MEMORY for r in self.rows)
        if self.regressed:
            return f"{len(self.regressions)} of {judged} judged rows beyond the {self.margin:.0%} margin"
        return f"all {judged} judged rows within the {self.margin:.0%} margin or better"

    def summary(self) -> str:
        return f"bench: {'REGRESSION' if self.regressed else 'no regression'} ({self.counts()})"


# --- verdicts ---------------------------------------------------------------------------------------


def verdict(kind: str, old: float, new: float, margin: float) -> str:
    """REGRESSION, IMPROVED or OK for one measurement; INFO for memory, which is shown, not judged."""
    if kind == MEMORY:
        return INFO
    if kind == RATE:  # higher is better; the floor is the gate's: old * (1 - margin), inclusive
        worse, better = new < old * (1.0 - margin), new > old * (1.0 + margin)
    elif kind == TIME:  # lower is better
        worse, better = new > old * (1.0 + margin), new < old * (1.0 - margin)
    else:
        raise ValueError(f"unknown kind {kind!r}")
    return REGRESSION if worse else IMPROVED if better else OK


def check_margin(margin: float) -> float:
    if not 0.0 <= margin < 1.0:  # also rejects NaN
        raise InputError(f"--margin {margin}: expected a fraction in [0, 1), e.g. 0.1 for 10%")
    return margin


# --- loading ----------------------------------------------------------------------------------------


def read_bench(path: str | Path) -> dict[str, Any]:
    """A pytest-benchmark JSON, checked: an object with a 'benchmarks' list of objects with unique string names."""
    src = str(path)
    data = read_json(path, expected="a pytest-benchmark JSON")
    if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list):
        raise InputError(f"{src}: expected a pytest-benchmark JSON object with a 'benchmarks' list")
    seen: set[str] = set()
    for i, bench in enumerate(data["benchmarks"]):
        if not isinstance(bench, dict) or not isinstance(bench.get("name"), str):
            raise InputError(f"{src}: benchmarks[{i}] must be an object with a string 'name'")
        if bench["name"] in seen:
            name = bench["name"]
            raise InputError(f"{src}: benchmarks[{i}]: name {name!r} appears twice (benchmarks are matched by name)")
        seen.add(bench["name"])
        if not isinstance(bench.get("extra_info", {}), dict):
            raise InputError(f"{src}: benchmarks[{i}].extra_info must be an object")
    return data


def load_bench(path: str | Path) -> dict[str, dict[str, float]]:
    """``{benchmark: {key: value}}`` for each ``*_per_s`` in the extra_info of a pytest-benchmark JSON."""
    return bench_rates(read_bench(path), str(path))


def bench_rates(data: Mapping[str, Any], src: str) -> dict[str, dict[str, float]]:
    """The ``*_per_s`` values of a checked benchmark run (``read_bench``); each must be a positive number."""
    found: dict[str, dict[str, float]] = {}
    for i, bench in enumerate(data["benchmarks"]):
        rates = {k: v for k, v in bench.get("extra_info", {}).items() if k.endswith("_per_s")}
        for key, value in rates.items():
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
                    or value <= 0:
                raise InputError(f"{src}: benchmarks[{i}].extra_info.{key} must be a positive number, "
                                 f"got {value!r}")
        found[bench["name"]] = {k: float(v) for k, v in rates.items()}
    return found



def load_run(path: str | Path) -> BenchRun:
    """A pytest-benchmark JSON: mean time, ``*_per_s`` and ``peak_*`` per benchmark; InputError when malformed."""

    src = str(path)
    data = read_bench(path)  # the file, the JSON, the 'benchmarks' list, unique names: read and checked once
    rates = bench_rates(data, src)
    benchmarks: dict[str, Measured] = {}
    for i, bench in enumerate(data["benchmarks"]):
        name, where = bench["name"], f"{src}: benchmarks[{i}]"
        stats = bench.get("stats")
        mean = stats.get("mean") if isinstance(stats, dict) else None
        memory = {k: v for k, v in bench.get("extra_info", {}).items() if k.startswith(MEMORY_PREFIX)}
        benchmarks[name] = Measured(
            mean_s=_number(f"{where}.stats.mean", mean, positive=True),
            rates=rates[name],
            memory={k: _number(f"{where}.extra_info.{k}", v, positive=False) for k, v in sorted(memory.items())},
        )
    return BenchRun(path=src, benchmarks=benchmarks, about=_about(data))


def _number(where: str, value: Any, *, positive: bool) -> float:
    ok = not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)
    if not ok or value < 0 or (positive and value == 0):
        expected = "a positive number" if positive else "a number >= 0"
        raise InputError(f"{where} must be {expected}, got {value!r}")
    return float(value)


def _about(data: Mapping[str, Any]) -> str:
    """Date, commit and CPU of a run, from what pytest-benchmark records; missing parts are left out."""
    def table(parent: Mapping[str, Any], key: str) -> Mapping[str, Any]:
        value = parent.get(key)
        return value if isinstance(value, dict) else {}

    commit, machine = table(data, "commit_info"), table(data, "machine_info")
    sha = commit.get("id") and f"commit {str(commit['id'])[:10]}" + (" (dirty)" if commit.get("dirty") else "")
    parts = [data.get("datetime"), sha, table(machine, "cpu").get("brand_raw") or machine.get("processor")]
    return ", ".join(str(p) for p in parts if p)


# --- comparing --------------------------------------------------------------------------------------


def compare(new: BenchRun, old: BenchRun, margin: float) -> Comparison:
    """Rows for every benchmark in both runs; InputError when they share none."""
    check_margin(margin)
    shared = [name for name in new.benchmarks if name in old.benchmarks]
    if not shared:
        raise InputError(f"{new.path}: no benchmark is also in {old.path} (benchmarks are matched by name)")
    rows: list[Row] = []
    for name in shared:
        n, o = new.benchmarks[name], old.benchmarks[name]
        metrics = [("mean time", TIME, o.mean_s, n.mean_s)]
        metrics += [(k, RATE, o.rates[k], n.rates[k]) for k in sorted(set(n.rates) & set(o.rates))]
        metrics += [(k, MEMORY, o.memory[k], n.memory[k]) for k in sorted(set(n.memory) & set(o.memory))]
        rows += [Row(name, metric, kind, old_v, new_v, verdict(kind, old_v, new_v, margin))
                 for metric, kind, old_v, new_v in metrics]
    return Comparison(new=new, old=old, margin=margin, rows=tuple(rows),
                      only_new=tuple(n for n in new.benchmarks if n not in old.benchmarks),
                      only_old=tuple(n for n in old.benchmarks if n not in new.benchmarks))


# --- rendering --------------------------------------------------------------------------------------


def _value(row_kind: str, metric: str, value: float) -> str:
    if row_kind == TIME:
        for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
            if value >= scale:
                return f"{value / scale:.4g} {unit}"
        return f"{value * 1e9:.4g} ns"
    suffix = " GiB" if metric.endswith("_gib") else ""
    return (f"{value:,.0f}" if value >= 1000 else f"{value:.4g}") + suffix


def _ratio(row: Row) -> str:
    return "n/a" if math.isnan(row.ratio) else f"{row.ratio:.3f}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render_markdown(comparison: Comparison, plot_name: str | None) -> str:
    """The comparison as Markdown: runs, overall verdict, one table row per measurement, the plot."""
    c = comparison
    lines = ["# Benchmark comparison", "",
             f"- new: `{c.new.path}`" + (f" — {c.new.about}" if c.new.about else ""),
             f"- old: `{c.old.path}`" + (f" — {c.old.about}" if c.old.about else ""),
             f"- margin: {c.margin:.0%} — a `*_per_s` rate more than {c.margin:.0%} lower, or a mean time more "
             f"than {c.margin:.0%} higher, is a regression; peak memory (`peak_*`) is shown, not judged", "",
             f"**{'Regression' if c.regressed else 'No regression'}**: {c.counts()}.", "",
             "| benchmark | metric | old | new | new/old | verdict |", "|---|---|---|---|---|---|"]
    for r in c.rows:
        mark = f"**{r.verdict}**" if r.verdict == REGRESSION else r.verdict
        lines.append(f"| {_cell(r.benchmark)} | {_cell(r.metric)} | {_value(r.kind, r.metric, r.old)} | "
                     f"{_value(r.kind, r.metric, r.new)} | {_ratio(r)} | {mark} |")
    if plot_name:
        lines += ["", f"![new/old per measurement]({plot_name})"]
    for label, names in (("Only in the new run (not compared)", c.only_new),
                         ("Only in the old run (not compared)", c.only_old)):
        if names:
            lines += ["", f"{label}: " + ", ".join(f"`{n}`" for n in names)]
    return "\n".join(lines) + "\n"


def render_text(comparison: Comparison) -> str:
    """A plain-text table for the terminal."""
    header = ("benchmark", "metric", "old", "new", "new/old", "verdict")
    cells = [header] + [(r.benchmark, r.metric, _value(r.kind, r.metric, r.old), _value(r.kind, r.metric, r.new),
                         _ratio(r), r.verdict.upper() if r.verdict == REGRESSION else r.verdict)
                        for r in comparison.rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells)


_COLOURS = {REGRESSION: "tab:red", IMPROVED: "tab:green", OK: "tab:blue", INFO: "tab:gray"}
_PANELS = ((TIME, "mean time: new/old (lower is better)"), (RATE, "*_per_s: new/old (higher is better)"),
           (MEMORY, "peak memory: new/old (not judged)"))


def draw_plot(comparison: Comparison, path: Path) -> None:
    """One horizontal bar per row, a panel per kind, the margin marked; written atomically as PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    panels = [(kind, title, [r for r in comparison.rows if r.kind == kind]) for kind, title in _PANELS]
    panels = [p for p in panels if p[2]]
    heights = [len(rows) + 1.5 for _, _, rows in panels]
    fig = Figure(figsize=(10, 0.35 * sum(heights) + 1), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(panels), 1, squeeze=False, height_ratios=heights)[:, 0]
    for ax, (kind, title, rows) in zip(axes, panels, strict=True):
        _plot_panel(ax, kind, title, rows, comparison.margin)
    atomic_save_figure(fig, path)


def _plot_panel(ax: Any, kind: str, title: str, rows: Sequence[Row], margin: float) -> None:
    labels = [r.benchmark if kind == TIME else f"{r.benchmark} · {r.metric}" for r in rows]
    labels = [label if len(label) <= 70 else "…" + label[-69:] for label in labels]
    ratios = [0.0 if math.isnan(r.ratio) else r.ratio for r in rows]  # NaN: memory from 0, no bar
    ax.barh(range(len(rows)), ratios, color=[_COLOURS[r.verdict] for r in rows])
    ax.set_yticks(range(len(rows)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.axvline(1.0, color="black", linewidth=0.8)
    if kind != MEMORY:
        ax.axvline(1.0 - margin if kind == RATE else 1.0 + margin, color="tab:red", linestyle="--", linewidth=0.8)
    ax.set_title(title, fontsize=10)


def write_report(new: str | Path, old: str | Path, out: str | Path, margin: float) -> Comparison:
    """Compare two runs and write ``out`` (Markdown) and the plot beside it (same name, ``.png``)."""
    out, png = check_out(out, (Path(new), Path(old)))
    comparison = compare(load_run(new), load_run(old), check_margin(margin))
    with output_errors("--out", out):
        out.parent.mkdir(parents=True, exist_ok=True)
        draw_plot(comparison, png)  # first: the Markdown that shows it is written only once it exists
        atomic_write_text(out, render_markdown(comparison, png.name))
    return comparison


def check_out(out: str | Path, inputs: tuple[Path, ...] = ()) -> tuple[Path, Path]:
    """``--out`` (a .md path, not a folder, not an input) and the plot beside it."""
    out = Path(out)
    if out.suffix.lower() != ".md":
        raise InputError(f"--out {str(out)!r}: expected a Markdown file path ending in .md")
    png = out.with_suffix(".png")
    check_out_file(out, "--out", protect=inputs)
    check_out_file(png, "--out's plot", protect=inputs)
    return out, png
