"""``hearts bench``: two pytest-benchmark runs compared, a verdict per row, exit 1 on a regression, 2 on bad input."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from harness import bench as br
from harness.cli import main
from harness.errors import InputError
from harness.gate import throughput_rows

GEN = "test_benchmark_generation_new_tokens_per_second[merged-batched-greedy]"
STEP = "test_benchmark_qlora_training_step"
BASE = {GEN: {"mean": 0.5, "tokens_per_s": 128.0, "samples_per_s": 8.0, "peak_rss_gib": 0.6},
        STEP: {"mean": 0.25, "tokens_per_s": 4000.0, "samples_per_s": 16.0, "peak_rss_gib": 0.6}}


def bench_json(path: Path, runs: dict[str, dict[str, Any]] | None = None,
               changes: dict[str, dict[str, Any]] | None = None) -> Path:
    """A file shaped as ``pytest --benchmark-json`` writes it; ``changes`` override fields of named benchmarks."""
    runs = {name: {**fields, **(changes or {}).get(name, {})} for name, fields in (runs or BASE).items()}
    benchmarks = []
    for name, fields in runs.items():
        mean = fields.pop("mean")
        benchmarks.append({
            "group": None, "name": name, "fullname": f"test_training/test_benchmarks.py::{name}",
            "params": None, "param": None, "extra_info": {"device": "cpu", "tokens_per_round": 64, **fields},
            "options": {"disable_gc": False, "timer": "perf_counter", "min_rounds": 5, "max_time": 1.0,
                        "min_time": 5e-06, "warmup": False},
            "stats": {"min": mean * 0.9, "max": mean * 1.1, "mean": mean, "stddev": mean / 20, "rounds": 3,
                      "median": mean, "iqr": mean / 10, "q1": mean * 0.95, "q3": mean * 1.05, "iqr_outliers": 0,
                      "stddev_outliers": 1, "outliers": "1;0", "ld15iqr": mean * 0.9, "hd15iqr": mean * 1.1,
                      "ops": 1 / mean, "total": 3 * mean, "data": [mean * 0.9, mean, mean * 1.1],
                      "iterations": 1},
        })
    path.write_text(json.dumps({
        "machine_info": {"node": "ci", "processor": "x86_64", "machine": "x86_64", "python_version": "3.11.9",
                         "cpu": {"brand_raw": "Test CPU @ 2.0GHz", "count": 2}},
        "commit_info": {"id": "0123456789abcdef", "time": "2026-11-25T16:00:00+00:00", "dirty": False},
        "benchmarks": benchmarks, "datetime": "2026-11-25T16:05:00.000000+00:00", "version": "5.3.1",
    }, indent=4))
    return path


@pytest.fixture
def old(tmp_path) -> Path:
    return bench_json(tmp_path / "old.json")


def bench(tmp_path: Path, new: Path, old: Path, *extra: str) -> int:
    return main(["bench", "--new", str(new), "--old", str(old), "--out", str(tmp_path / "cmp" / "bench.md"), *extra])


def table_rows(tmp_path: Path) -> list[list[str]]:
    """The report's table as cells, header and rule left out."""
    lines = (tmp_path / "cmp" / "bench.md").read_text(encoding="utf-8").splitlines()
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines if line.startswith("| test_")]


# --- verdicts through the command ---------------------------------------------------------------------


def test_identical_runs_are_no_regression_and_exit_0(tmp_path, old, capsys):
    assert bench(tmp_path, bench_json(tmp_path / "new.json"), old) == 0
    summary = "bench: no regression (all 6 judged rows within the 10% margin or better)"
    assert capsys.readouterr().out.rstrip().endswith(summary)
    rows = table_rows(tmp_path)
    assert len(rows) == 8  # per benchmark: mean time, samples_per_s, tokens_per_s, peak_rss_gib
    assert {r[-1] for r in rows} == {"ok", "info"} and {r[4] for r in rows} == {"1.000"}


def test_a_30pct_drop_in_tokens_per_s_is_a_regression_named_in_the_report(tmp_path, old, capsys):
    new = bench_json(tmp_path / "new.json", changes={GEN: {"tokens_per_s": 128.0 * 0.7}})
    assert bench(tmp_path, new, old) == 1
    out = capsys.readouterr().out
    assert "bench: REGRESSION (1 of 6 judged rows beyond the 10% margin)" in out
    bad = [r for r in table_rows(tmp_path) if r[-1] == "**regression**"]
    assert bad == [[GEN, "tokens_per_s", "128", "89.6", "0.700", "**regression**"]]
    assert "**Regression**: 1 of 6" in (tmp_path / "cmp" / "bench.md").read_text(encoding="utf-8")


def test_a_faster_run_is_not_a_regression(tmp_path, old):
    twice_as_fast = {"mean": 0.125, "tokens_per_s": 8000.0, "samples_per_s": 32.0}
    new = bench_json(tmp_path / "new.json", changes={STEP: twice_as_fast})
    assert bench(tmp_path, new, old) == 0
    step = {r[1]: r[-1] for r in table_rows(tmp_path) if r[0] == STEP}
    assert step == {"mean time": "improved", "tokens_per_s": "improved", "samples_per_s": "improved",
                    "peak_rss_gib": "info"}


def test_a_mean_time_rising_beyond_the_margin_is_a_regression_even_without_rates(tmp_path):
    runs = {"test_sprinkle": {"mean": 1e-4}}
    old = bench_json(tmp_path / "old.json", runs)
    assert bench(tmp_path, bench_json(tmp_path / "new.json", runs, {"test_sprinkle": {"mean": 1.2e-4}}), old) == 1
    assert table_rows(tmp_path) == [["test_sprinkle", "mean time", "100 µs", "120 µs", "1.200", "**regression**"]]


@pytest.mark.parametrize(("factor", "margin", "code"), [(0.91, "0.1", 0), (0.89, "0.1", 1), (0.7, "0.35", 0)],
                         ids=["9pct-drop", "11pct-drop", "30pct-drop-wider-margin"])
def test_a_rate_may_drop_by_the_margin_and_no_more(tmp_path, old, factor, margin, code):
    new = bench_json(tmp_path / "new.json", changes={GEN: {"tokens_per_s": 128.0 * factor}})
    assert bench(tmp_path, new, old, "--margin", margin) == code


def test_peak_memory_is_shown_but_not_judged(tmp_path, old):
    new = bench_json(tmp_path / "new.json", changes={GEN: {"peak_rss_gib": 1.8}})
    assert bench(tmp_path, new, old) == 0
    assert [GEN, "peak_rss_gib", "0.6 GiB", "1.8 GiB", "3.000", "info"] in table_rows(tmp_path)


def test_benchmarks_in_one_run_only_are_listed_not_compared(tmp_path, old):
    runs = {STEP: BASE[STEP], "test_new_thing": {"mean": 9.0}}
    assert bench(tmp_path, bench_json(tmp_path / "new.json", runs), old) == 0
    text = (tmp_path / "cmp" / "bench.md").read_text(encoding="utf-8")
    assert "Only in the new run (not compared): `test_new_thing`" in text
    assert f"Only in the old run (not compared): `{GEN}`" in text
    assert {r[0] for r in table_rows(tmp_path)} == {STEP}


def test_the_report_names_both_runs_and_embeds_a_png_written_beside_it(tmp_path, old):
    assert bench(tmp_path, bench_json(tmp_path / "new.json"), old) == 0
    md, png = tmp_path / "cmp" / "bench.md", tmp_path / "cmp" / "bench.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000
    text = md.read_text(encoding="utf-8")
    assert "![new/old per measurement](bench.png)" in text
    assert f"- old: `{old}` — 2026-11-25T16:05:00.000000+00:00, commit 0123456789, Test CPU @ 2.0GHz" in text
    assert sorted(p.name for p in md.parent.iterdir()) == ["bench.md", "bench.png"]  # no temp file left


def test_a_pipe_in_a_benchmark_name_does_not_break_the_table(tmp_path):
    runs = {"test_x[a|b]": {"mean": 1.0}}
    assert bench(tmp_path, bench_json(tmp_path / "new.json", runs), bench_json(tmp_path / "old.json", runs)) == 0
    assert "| test_x[a\\|b] | mean time |" in (tmp_path / "cmp" / "bench.md").read_text(encoding="utf-8")


# --- bad input: exit 2, one line naming the input, nothing written -------------------------------------


def _stats(value: Any) -> dict[str, Any]:
    return {"benchmarks": [{"name": GEN, "stats": value, "extra_info": {}}]}


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        pytest.param(None, "cannot read", id="missing-file"),
        pytest.param("{not json", "not valid JSON", id="not-json"),
        pytest.param({"machine_info": {}}, "'benchmarks' list", id="no-benchmarks-list"),
        pytest.param({"benchmarks": {"a": 1}}, "'benchmarks' list", id="benchmarks-not-a-list"),
        pytest.param({"benchmarks": [{"name": "test_other", "stats": {"mean": 1.0}}]}, "no benchmark is also in",
                     id="no-shared-benchmark"),
        pytest.param({"benchmarks": []}, "no benchmark is also in", id="empty-run"),
        pytest.param(_stats({"mean": "fast"}), "stats.mean must be a positive number, got 'fast'",
                     id="non-numeric-mean"),
        pytest.param(_stats({"mean": 0}), "stats.mean must be a positive number, got 0", id="zero-mean"),
        pytest.param(_stats(None), "stats.mean must be a positive number, got None", id="no-stats"),
        pytest.param({"benchmarks": [{"name": GEN, "stats": {"mean": 1.0}, "extra_info": {"tokens_per_s": "x"}}]},
                     "extra_info.tokens_per_s must be a positive number", id="non-numeric-rate"),
        pytest.param({"benchmarks": [{"name": GEN, "stats": {"mean": 1.0}, "extra_info": {"peak_rss_gib": []}}]},
                     "extra_info.peak_rss_gib must be a number >= 0", id="non-numeric-memory"),
        pytest.param({"benchmarks": [{"name": GEN, "stats": {"mean": 1.0}}, {"name": GEN, "stats": {"mean": 1.0}}]},
                     f"name '{GEN}' appears twice", id="duplicate-name"),
    ],
)
def test_bad_input_exits_2_with_one_line_naming_the_file(tmp_path, old, capsys, content, problem):
    new = tmp_path / "new.json"
    if content is not None:
        new.write_text(content if isinstance(content, str) else json.dumps(content))
    assert bench(tmp_path, new, old) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(f"hearts bench: error: {new}") and captured.err.count("\n") == 1
    assert problem in captured.err and captured.out == ""
    assert not (tmp_path / "cmp").exists()


@pytest.mark.parametrize(("args", "problem"), [
    (["--margin", "1.5"], "--margin 1.5: expected a fraction in [0, 1)"),
    (["--margin", "nan"], "--margin nan"),
    (["--margin", "-0.1"], "--margin -0.1"),
], ids=["above-one", "nan", "negative"])
def test_a_margin_outside_0_1_exits_2(tmp_path, old, capsys, args, problem):
    assert bench(tmp_path, bench_json(tmp_path / "new.json"), old, *args) == 2
    err = capsys.readouterr().err
    assert problem in err and err.count("\n") == 1


def test_an_out_path_that_is_not_markdown_exits_2(tmp_path, old, capsys):
    new = bench_json(tmp_path / "new.json")
    assert main(["bench", "--new", str(new), "--old", str(old), "--out", str(tmp_path / "bench.png")]) == 2
    assert "expected a Markdown file path ending in .md" in capsys.readouterr().err


# --- what pytest-benchmark really writes ---------------------------------------------------------------


def test_a_json_written_by_pytest_benchmark_itself_is_read(tmp_path):
    """Guards the reader against the real format, not only the shape copied into ``bench_json``."""
    (tmp_path / "test_tiny.py").write_text(textwrap.dedent("""
        def test_sum(benchmark):
            benchmark.pedantic(sum, args=(range(1000),), rounds=3, iterations=1)
            benchmark.extra_info.update(items_per_s=1000 / benchmark.stats.stats.mean, peak_rss_gib=0.5)
    """))
    out = tmp_path / "real.json"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:hypothesispytest",
           f"--rootdir={tmp_path}", "--benchmark-json", str(out), str(tmp_path / "test_tiny.py")]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    run = br.load_run(out)
    measured = run.benchmarks["test_sum"]
    assert measured.mean_s > 0 and measured.rates["items_per_s"] > 0 and measured.memory == {"peak_rss_gib": 0.5}
    assert run.about.startswith(json.loads(out.read_text())["datetime"])
    assert not br.compare(run, run, 0.1).regressed


# --- the verdict rule, as properties --------------------------------------------------------------------

_positive = st.floats(min_value=1e-6, max_value=1e9, allow_nan=False, allow_infinity=False)
_ratio = st.floats(min_value=0.25, max_value=4.0)  # new/old: near the margin, where verdicts change
_margin = st.floats(min_value=0.0, max_value=0.99, allow_nan=False)
_judged = st.sampled_from([br.TIME, br.RATE])
_RANK = {br.REGRESSION: 0, br.OK: 1, br.IMPROVED: 2}  # worse to better


@st.composite
def _pair(draw: st.DrawFn) -> tuple[float, float]:
    old = draw(_positive)
    return old, old * draw(_ratio)


@given(kind=_judged, value=_positive, margin=_margin)
def test_a_measurement_against_itself_is_ok(kind, value, margin):
    assert br.verdict(kind, value, value, margin) == br.OK


@given(kind=_judged, pair=_pair(), margin=_margin)
def test_no_pair_is_a_regression_both_ways(kind, pair, margin):
    old, new = pair
    assert not (br.verdict(kind, old, new, margin) == br.REGRESSION == br.verdict(kind, new, old, margin))


@given(kind=_judged, old=st.floats(0.5, 2.0), ratio=_ratio, margin=_margin, power=st.integers(-20, 20))
def test_the_verdict_depends_on_the_ratio_not_the_unit(kind, old, ratio, margin, power):
    new = old * ratio
    scale = 2.0**power  # exact in binary floating point, so no rounding can move a value across the margin
    assert br.verdict(kind, old * scale, new * scale, margin) == br.verdict(kind, old, new, margin)


@given(old=_positive, a=_ratio, b=_ratio, margin=_margin)
def test_a_higher_rate_or_a_lower_time_never_gets_a_worse_verdict(old, a, b, margin):
    low, high = old * min(a, b), old * max(a, b)
    assert _RANK[br.verdict(br.RATE, old, low, margin)] <= _RANK[br.verdict(br.RATE, old, high, margin)]
    assert _RANK[br.verdict(br.TIME, old, high, margin)] <= _RANK[br.verdict(br.TIME, old, low, margin)]


@given(kind=_judged, pair=_pair(), m1=_margin, m2=_margin)
def test_a_wider_margin_never_adds_a_regression(kind, pair, m1, m2):
    old, new = pair
    narrow, wide = sorted((m1, m2))
    if br.verdict(kind, old, new, wide) == br.REGRESSION:
        assert br.verdict(kind, old, new, narrow) == br.REGRESSION


@given(pair=_pair(), margin=_margin)
def test_a_rate_regression_is_exactly_a_failed_gate_throughput_row(pair, margin):
    old, new = pair
    (row,) = throughput_rows({"b": {"x_per_s": new}}, {"b": {"x_per_s": old}}, margin)
    assert (br.verdict(br.RATE, old, new, margin) == br.REGRESSION) == (not row.passed)


@given(kind=_judged, pair=_pair(), margin=_margin)
def test_a_regression_is_a_move_in_the_bad_direction_beyond_the_margin(kind, pair, margin):
    old, new = pair
    assume(old != new)
    got = br.verdict(kind, old, new, margin)
    worse = new < old if kind == br.RATE else new > old
    if got == br.REGRESSION:
        assert worse and abs(new - old) > margin * old * (1 - 1e-12)
    if got == br.IMPROVED:
        assert not worse


def test_memory_is_never_judged():
    assert br.verdict(br.MEMORY, 1.0, 100.0, 0.1) == br.INFO


@given(st.lists(st.tuples(_positive, _positive), min_size=1, max_size=6), _margin)
def test_the_run_regresses_exactly_when_a_row_does(pairs, margin):
    def run(values: list[float]) -> br.BenchRun:
        return br.BenchRun("x.json", {f"b{i}": br.Measured(v, {"t_per_s": 1 / v}, {}) for i, v in enumerate(values)},
                           "")

    c = br.compare(run([n for _, n in pairs]), run([o for o, _ in pairs]), margin)
    assert c.regressed == any(r.verdict == br.REGRESSION for r in c.rows)
    assert len(c.rows) == 2 * len(pairs) and not c.only_new and not c.only_old


def test_compare_rejects_runs_with_nothing_in_common():
    one = br.BenchRun("a.json", {"x": br.Measured(1.0, {}, {})}, "")
    other = br.BenchRun("b.json", {"y": br.Measured(1.0, {}, {})}, "")
    with pytest.raises(InputError, match=re.escape("a.json: no benchmark is also in b.json")):
        br.compare(one, other, 0.1)
