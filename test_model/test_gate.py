"""The release gate: Wilson-bound thresholds, the base control, a baseline report, benchmarks, the CLI."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness.cli import main
from harness.config import ConfigError, GateConfig
from harness.errors import InputError
from harness.gate import assert_gate, evaluate, fewest_passing, load_config, spare_prompts
from harness.report import write_report
from harness.stats import wilson
from test_model.test_report import eval_prompts, make_report, set_rate


@pytest.fixture(scope="module")
def passing_report() -> dict[str, Any]:
    return make_report()


@pytest.fixture
def report(passing_report) -> dict[str, Any]:
    return copy.deepcopy(passing_report)


def _row(result, name):
    return next(r for r in result.rows if r.name == name)


def _failed(result) -> list[str]:
    return [r.name for r in result.failures]


# --- thresholds ------------------------------------------------------------------------------------


def test_a_flawless_report_of_400_prompts_passes_every_row(report):
    result = assert_gate(report)
    assert result.passed
    assert [r.name for r in result.rows] == ["single_emoji", "in_list", "between_every_word", "terminated",
                                             "malformed", "template_leak", "control_single_emoji"]


@pytest.mark.parametrize(
    ("check", "k"),
    [
        pytest.param("single_emoji", 370, id="single_emoji-92.5pct"),
        pytest.param("in_list", 370, id="in_list-92.5pct"),
        pytest.param("between_every_word", 290, id="between_every_word-72.5pct"),
        pytest.param("terminated", 360, id="terminated-90pct"),
        pytest.param("malformed", 5, id="malformed-five-in-400"),
        pytest.param("template_leak", 5, id="template_leak-five-in-400"),
    ],
)
def test_each_check_fails_its_own_row_when_its_bound_misses(report, check, k):
    result = evaluate(set_rate(report, check, k))
    assert _failed(result) == [check]


def test_the_wilson_bound_decides_not_the_rate(report):
    set_rate(report, "single_emoji", 364)  # rate 0.91 clears 0.90, its lower bound 0.878 does not
    row = _row(evaluate(report), "single_emoji")
    assert row.value == pytest.approx(0.91) and row.interval[0] < 0.90 and not row.passed


def test_a_base_model_that_already_does_the_behaviour_fails_the_control_row(report):
    set_rate(report, "single_emoji", 40, block="control")
    assert _failed(evaluate(report)) == ["control_single_emoji"]


def test_the_control_row_judges_the_rate_so_a_clean_small_control_passes():
    small = make_report(66)  # 0/66: rate 0, Wilson upper bound 0.055 > 0.05
    row = _row(evaluate(small), "control_single_emoji")
    assert row.interval[1] > 0.05 and row.passed


def test_a_threshold_no_run_of_this_size_can_clear_is_flagged():
    small = make_report(66)  # a perfect 66/66 has a Wilson lower bound of 0.945
    strict = GateConfig(single_emoji=0.97)
    assert "unreachable at n=66" in _row(evaluate(small, strict), "single_emoji").note
    assert _row(evaluate(small), "single_emoji").note == ""


def test_rare_faults_are_judged_on_the_rate_so_a_clean_small_run_passes():
    small = make_report(66)  # 0/66 faults: rate 0, Wilson upper bound 0.055 > 0.01
    for check in ("malformed", "template_leak"):
        row = _row(evaluate(small), check)
        assert row.interval[1] > 0.01 and row.passed


def test_assert_gate_raises_with_only_the_failing_rows(report):
    set_rate(report, "in_list", 300)
    with pytest.raises(AssertionError, match="FAILED \\(1 of 7 checks\\)") as err:
        assert_gate(report)
    assert "in_list" in str(err.value) and "between_every_word" not in str(err.value)


def test_assert_gate_reads_a_report_file_and_a_config_mapping(tmp_path, report):
    path = write_report(tmp_path, report)
    assert assert_gate(path).passed
    with pytest.raises(AssertionError, match="single_emoji"):
        assert_gate(path, {"single_emoji": 0.995})


# --- margin: prompts to spare --------------------------------------------------------------------------


@given(n=st.integers(1, 500), data=st.data(), limit=st.floats(0.0, 1.0), high=st.booleans())
def test_spare_is_non_negative_exactly_when_the_bound_holds_and_moves_one_per_prompt(n, data, limit, high):
    k = data.draw(st.integers(0, n))
    r = wilson(k, n)
    spare = spare_prompts(k, n, limit, high)
    assert (spare >= 0) == (r.ci_low >= limit if high else r.rate <= limit)
    if k < n:  # one more passing answer (or fault): one more (fewer) to spare, whatever the bound
        assert spare_prompts(k + 1, n, limit, high) == spare + (1 if high else -1)


@given(n=st.integers(1, 500), limit=st.floats(0.0, 1.0))
def test_fewest_passing_is_the_edge_of_the_wilson_bound(n, limit):
    k = fewest_passing(n, limit)
    assert k == n + 1 or wilson(k, n).ci_low >= limit
    assert k == 0 or wilson(k - 1, n).ci_low < limit


def test_a_check_one_prompt_inside_its_bound_fails_for_want_of_margin(report):
    edge = fewest_passing(400, GateConfig().terminated)
    set_rate(report, "terminated", edge + 1)  # the bound holds with 1 prompt to spare
    row = _row(evaluate(report), "terminated")
    assert row.interval[0] >= 0.90 and row.spare == 1 and not row.passed
    assert "1 prompt(s) to spare, the margin is 2" in row.note
    assert _row(evaluate(report, GateConfig(margin=1)), "terminated").passed  # control: the bare-er gates pass it
    assert _row(evaluate(set_rate(report, "terminated", edge + 2)), "terminated").passed


def test_a_rare_fault_needs_room_for_two_more(report):
    set_rate(report, "malformed", 3)  # 3 of 400 under a 0.01 rate: 4 allowed, 1 to spare
    assert _failed(evaluate(report)) == ["malformed"]
    assert _failed(evaluate(set_rate(report, "malformed", 2))) == []


def test_the_margin_is_capped_at_what_a_perfect_run_of_the_size_has():
    small = make_report(66)  # 66/66 clears 0.90 with 1 to spare, 0/66 faults allow 0 more
    rows = {r.name: r for r in evaluate(small).rows}
    assert rows["single_emoji"].spare == 1 and rows["malformed"].spare == 0
    assert all(r.passed for r in rows.values())
    assert not _row(evaluate(set_rate(small, "single_emoji", 65)), "single_emoji").passed


def test_the_table_shows_the_prompts_to_spare(report):
    table = evaluate(report).table()
    assert table.splitlines()[0].split()[:5] == ["check", "value", "interval", "threshold", "spare"]
    spare = _row(evaluate(report), "in_list").spare
    assert spare is not None and spare > 2 and f" {spare} " in next(ln for ln in table.splitlines()
                                                                    if ln.startswith("in_list"))


# --- configuration --------------------------------------------------------------------------------


def test_a_gate_table_overrides_only_the_keys_it_names(tmp_path):
    path = tmp_path / "gate.toml"
    path.write_text("[gate]\nsingle_emoji = 0.95\nmcnemar_alpha = 0.01\n")
    assert load_config(path) == GateConfig(single_emoji=0.95, mcnemar_alpha=0.01)


def test_a_pyproject_is_read_from_tool_hearts_gate(tmp_path):
    path = tmp_path / "pyproject.toml"
    path.write_text("[project]\nname = 'x'\n\n[tool.hearts.gate]\ntemplate_leak = 0.02\n")
    assert load_config(path) == GateConfig(template_leak=0.02)


def test_a_stricter_config_turns_a_pass_into_a_fail(tmp_path, report):
    path = tmp_path / "gate.toml"
    path.write_text("[gate]\nbetween_every_word = 0.995\n")
    assert _failed(evaluate(report, load_config(path))) == ["between_every_word"]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        pytest.param("[gate]\nsingle_emojis = 0.9\n", "unknown key 'single_emojis'", id="unknown-key"),
        pytest.param("[gate]\nin_list = 'high'\n", "expected a finite number", id="string-threshold"),
        pytest.param("[gate]\nin_list = 1.5\n", "expected a rate in [0, 1]", id="threshold-above-one"),
        pytest.param("[gate]\nmcnemar_alpha = 0\n", "mcnemar_alpha", id="alpha-zero"),
        pytest.param("[gate]\nmargin = -1\n", "GateConfig.margin", id="negative-margin"),
        pytest.param("[gate]\nmargin = 1.5\n", "expected an integer", id="fractional-margin"),
        pytest.param("[gates]\nin_list = 0.9\n", "unknown table or key 'gates'", id="misspelt-table"),
    ],
)
def test_a_bad_gate_config_is_an_error_naming_the_file(tmp_path, text, problem):
    path = tmp_path / "gate.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value).startswith(str(path)) and problem in str(err.value)


# --- baseline report ---------------------------------------------------------------------------------


def test_a_significant_drop_against_the_baseline_fails(report):
    worse = make_report(fail=range(12))  # 12 lost, none gained: exact McNemar p = 2 * 0.5**12
    result = evaluate(worse, baseline=report)
    row = _row(result, "single_emoji vs baseline")
    assert not row.passed and row.value == pytest.approx(2 * 0.5**12)
    assert "12 lost, 0 gained of 400 shared" in row.note
    assert _row(result, "terminated vs baseline").passed


def test_a_few_lost_answers_are_not_significant(report):
    result = evaluate(make_report(fail=range(3)), baseline=report)  # p = 0.25
    assert _row(result, "single_emoji vs baseline").passed


def test_an_improvement_over_the_baseline_passes(report):
    result = evaluate(report, baseline=make_report(fail=range(12)))
    assert all(r.passed for r in result.rows if r.name.endswith("vs baseline"))


def test_prompts_are_matched_by_text_not_by_position():
    baseline = make_report(fail=range(388, 400))
    baseline["samples"].reverse()
    new = make_report(300, prompts=eval_prompts(300, offset=100), fail=range(12))  # prompts 100..399
    row = _row(evaluate(new, baseline=baseline), "single_emoji vs baseline")
    assert row.note.endswith("12 lost, 12 gained of 300 shared")


def test_more_malformed_answers_than_the_baseline_count_as_worse(report):
    broken = copy.deepcopy(report)
    for sample in broken["samples"][:12]:
        sample["verdict"]["malformed"] = True
    set_rate(broken, "malformed", 12)
    assert not _row(evaluate(broken, baseline=report), "malformed vs baseline").passed


def test_a_baseline_with_no_shared_prompt_is_an_input_error(report):
    other = make_report(20, prompts=eval_prompts(20, offset=10_000))
    with pytest.raises(InputError, match="no prompts shared"):
        evaluate(report, baseline=other)


# --- benchmarks ------------------------------------------------------------------------------------


def _bench(path: Path, **per_s: float) -> Path:
    benches = [{"name": name, "stats": {"mean": 1.0}, "extra_info": {"tokens_per_s": v, "batch_size": 16}}
               for name, v in per_s.items()]
    benches.append({"name": "test_untimed", "stats": {"mean": 1.0}, "extra_info": {}})
    path.write_text(json.dumps({"machine_info": {}, "benchmarks": benches}))
    return path


@pytest.mark.parametrize(("new", "passed"), [(91.0, True), (89.0, False)], ids=["9pct-drop", "11pct-drop"])
def test_throughput_may_drop_by_the_margin_and_no_more(tmp_path, report, new, passed):
    result = evaluate(report, bench=_bench(tmp_path / "new.json", test_generate=new, test_only_new=1.0),
                      baseline_bench=_bench(tmp_path / "old.json", test_generate=100.0))
    rows = [r for r in result.rows if r.note == "throughput"]
    assert [(r.name, r.passed) for r in rows] == [("test_generate tokens_per_s", passed)]


def test_bench_files_come_in_pairs(tmp_path, report):
    with pytest.raises(InputError, match="go together"):
        evaluate(report, bench=_bench(tmp_path / "new.json", test_generate=1.0))


# --- the command ---------------------------------------------------------------------------------


def test_the_command_exits_0_and_prints_a_row_per_check_when_the_gate_passes(tmp_path, report, capsys):
    assert main(["gate", "--report", str(write_report(tmp_path, report))]) == 0
    out = capsys.readouterr().out
    assert out.count(" pass") == 7 and out.rstrip().endswith("gate: PASSED")


def test_the_command_exits_1_when_a_check_fails(tmp_path, report, capsys):
    path = write_report(tmp_path / "new", make_report(fail=range(12)))
    baseline = write_report(tmp_path / "old", report)
    assert main(["gate", "--report", str(path), "--baseline", str(baseline)]) == 1
    out = capsys.readouterr().out
    assert "single_emoji vs baseline" in out and "gate: FAILED" in out


def test_the_merge_is_gated_on_top1_agreement_with_the_trained_model():
    from test_model.test_report import make_report

    def with_fidelity(top1: float):
        report = make_report(adapter=True)
        report["agreement"]["logits"] = {"rel_l2": 0.03, "top1_agreement": top1, "positions": 700}
        return {r.name: r for r in evaluate(report).rows}

    assert with_fidelity(0.983)["merge_top1"].passed  # the dequantised merge on SmolLM2 (H200, bf16)
    assert not with_fidelity(0.754)["merge_top1"].passed  # the merge into the original weights
    assert "merge_top1" not in {r.name for r in evaluate(make_report()).rows}  # no 4-bit run: nothing to hold
