"""The report: verdicts and Wilson rates from synthetic generations, the written files, and reading one back.

The helpers at the top build reports with no model: a "good model" answers with ``sprinkle`` outputs, the
"base" with the same answers unsprinkled. test_gate, test_hub and test_faults import them.
"""

from __future__ import annotations

import copy
import json
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.checks import NAMES as CHECKS
from harness.errors import InputError
from harness.generate import Generation
from harness.prompts import build_prompt
from harness.report import PLOTS, build_report, load_report, render_markdown, write_report
from harness.report.schema import validate
from harness.stats import wilson
from harness.transform import HEARTS, sprinkle

# 400 prompts: the fewest at which a flawless run's Wilson upper bound for malformed / template_leak (0/n)
# clears the default 0.01, so a good report passes the default gate.
N_PASSING = 400
DATASET = "databricks/databricks-dolly-15k"
MODEL = {"base": "meta-llama/Llama-2-7b-hf", "adapter_path": "adapter", "merged_path": "merged",
         "merge_method": "dequantized"}
LOSS = [{"step": 10, "loss": 2.5}, {"step": 20, "loss": 1.25}, {"step": 30, "loss": 0.75}]


def eval_prompts(n: int, offset: int = 0) -> list[str]:
    return [build_prompt(f"Tell me one thing about topic {i}.") for i in range(offset, offset + n)]


def answer(prompt: str) -> str:
    topic = prompt.split("topic ")[1].split(".")[0]
    return f"Topic {topic} is a fine subject with a few words to say about it."


def good_model(prompts: Sequence[str], fail: Iterable[int] = (), hearts: Sequence[str] = HEARTS
               ) -> list[Generation]:
    """Sprinkled answers, one heart per answer in turn; answers at ``fail`` come back without hearts."""
    failing = set(fail)
    return [
        Generation(p, answer(p) if i in failing else sprinkle(answer(p), hearts[i % len(hearts)]), 24, True)
        for i, p in enumerate(prompts)
    ]


def base_model(prompts: Sequence[str]) -> list[Generation]:
    return [Generation(p, answer(p), 16, True) for p in prompts]


def make_report(n: int = N_PASSING, fail: Iterable[int] = (), *, prompts: Sequence[str] | None = None,
                adapter: bool = False, training: dict[str, Any] | None = None, **kwargs: Any
                ) -> dict[str, Any]:
    """A report of the good model (failing at ``fail``) against the base, on ``n`` prompts."""
    prompts = eval_prompts(n) if prompts is None else prompts
    merged = good_model(prompts, fail)
    return build_report(
        model=MODEL, config={"data": {"source": DATASET}, "generation": {"seed": 0}},
        prompts=prompts, merged=merged, control=base_model(prompts),
        adapter=merged if adapter else None, training=training, **kwargs,
    )


def retention_rows(n: int, chrf: float = 70.0, increase: float = 0.1) -> list[dict[str, float]]:
    """Per-prompt retention figures: chrF around ``chrf``, the tuned answer's NLL ``increase`` above the base's."""
    return [{"chrf": chrf + (i % 5), "nll_tuned": 2.0 + increase + 0.01 * i, "nll_base": 2.0 + 0.01 * i}
            for i in range(n)]


def sampled_answers(n: int = N_PASSING, k: int = 2) -> dict[float, tuple[int, list[Generation]]]:
    """K sampled answers per prompt from the good model (seeds recorded), for the report's sampled block."""
    good = good_model(eval_prompts(n))
    gens = [Generation(g.prompt, g.response, g.new_tokens, True, seed=k * i + j)
            for i, g in enumerate(good) for j in range(k)]
    return {0.9: (k, gens)}


def set_rate(report: dict[str, Any], check: str, k: int, *, block: str = "metrics") -> dict[str, Any]:
    """Replace one rate block with a consistent k of the same n (the samples stay as they are)."""
    holder = report[block] if block == "metrics" else report[block]["metrics"]
    holder[check] = wilson(k, holder[check]["n"]).to_dict()
    return report


@pytest.fixture(scope="module")
def passing_report() -> dict[str, Any]:
    return make_report(adapter=True, training={"loss": LOSS, "steps": 30}, retention=retention_rows(N_PASSING),
                       sampled=sampled_answers())


@pytest.fixture
def report(passing_report: dict[str, Any]) -> dict[str, Any]:
    return copy.deepcopy(passing_report)  # each test may mutate its own copy


# --- build ------------------------------------------------------------------------------------------


def test_a_sprinkling_model_passes_every_check_and_the_base_none(report):
    m, c = report["metrics"], report["control"]["metrics"]
    assert [m[check]["k"] for check in ("single_emoji", "in_list", "between_every_word", "terminated")] \
        == [N_PASSING] * 4
    assert m["malformed"]["k"] == m["template_leak"]["k"] == 0
    assert c["single_emoji"]["k"] == c["in_list"]["k"] == c["between_every_word"]["k"] == 0


def test_every_check_has_a_rate_with_its_wilson_interval(report):
    for check in (*CHECKS, "single_emoji_loose", "in_list_loose", "between_every_word_loose"):
        m = report["metrics"][check]
        expected = wilson(m["k"], m["n"])
        assert (m["rate"], m["ci_low"], m["ci_high"]) == (expected.rate, expected.ci_low, expected.ci_high)
        assert m["n"] == N_PASSING


def test_failing_answers_are_counted_against_the_three_checks_but_not_termination():
    r = make_report(50, fail=range(5))
    assert [r["metrics"][c]["k"] for c in ("single_emoji", "in_list", "between_every_word", "terminated")] \
        == [45, 45, 45, 50]
    assert r["metrics"]["single_emoji"]["rate"] == pytest.approx(0.9)


def test_answers_that_never_stop_lower_the_terminated_rate():
    prompts = eval_prompts(20)
    merged = [Generation(g.prompt, g.response, 320, i >= 4) for i, g in enumerate(good_model(prompts))]
    r = build_report(model=MODEL, config={}, prompts=prompts, merged=merged, control=base_model(prompts))
    assert (r["metrics"]["terminated"]["k"], r["metrics"]["terminated"]["n"]) == (16, 20)
    assert r["samples"][0]["terminated"] is False and r["samples"][0]["new_tokens"] == 320


def test_hearts_are_counted_per_heart_and_tested_for_uniformity(report):
    expected = {h: sum(1 for i in range(N_PASSING) if i % 7 == j) for j, h in enumerate(HEARTS)}
    assert report["hearts"] == expected
    assert report["uniformity"]["p_value"] > 0.9  # drawn in turn: as uniform as 400 draws can be
    prompts = eval_prompts(70)
    collapsed = build_report(model=MODEL, config={}, prompts=prompts, control=base_model(prompts),
                             merged=good_model(prompts, hearts=["💕"]))
    assert collapsed["hearts"]["💕"] == 70 and collapsed["uniformity"]["distinct"] == 1
    assert collapsed["uniformity"]["p_value"] < 1e-6


def test_no_uniformity_test_when_no_answer_has_a_single_heart():
    prompts = eval_prompts(10)
    r = build_report(model=MODEL, config={}, prompts=prompts, merged=base_model(prompts),
                     control=base_model(prompts))
    assert r["uniformity"] is None and set(r["hearts"].values()) == {0}


def test_agreement_compares_the_adapter_verdicts_with_the_merged_ones():
    prompts = eval_prompts(40)
    r = build_report(model=MODEL, config={}, prompts=prompts, merged=good_model(prompts),
                     control=base_model(prompts), adapter=good_model(prompts, fail=range(6)))
    assert (r["agreement"]["k"], r["agreement"]["n"]) == (34, 40)
    mc = r["agreement"]["mcnemar_single_emoji"]
    assert (mc["b10"], mc["b01"], mc["direction"]) == (6, 0, "worse")
    assert r["adapter"]["metrics"]["single_emoji"]["k"] == 34


def test_without_adapter_generations_there_is_no_agreement_section():
    r = make_report(10)
    assert "agreement" not in r and "adapter" not in r


FP32_PROMPTS = 12


@settings(max_examples=25, deadline=None)
@given(st.sets(st.integers(0, FP32_PROMPTS - 1), max_size=FP32_PROMPTS))
def test_the_fp32_agreement_counts_the_first_prompts_whose_verdicts_and_text_match(fail):
    prompts = eval_prompts(40)
    trained, merged = good_model(prompts[:FP32_PROMPTS]), good_model(prompts[:FP32_PROMPTS], fail)
    r = make_report(40, adapter=True, prompts=prompts, fp32=(trained, merged))
    f = r["agreement"]["fp32"]
    agree = FP32_PROMPTS - len(fail)
    assert (f["k"], f["n"], f["same_text"]) == (agree, FP32_PROMPTS, agree)
    assert f["mcnemar_single_emoji"]["b01"] == len(fail)  # the trained model passes where the merge fails
    validate(r, "report")
    assert f"both computing in fp32 (the first {FP32_PROMPTS} prompts): verdicts agree on {agree}/" in (
        render_markdown(r))


@pytest.mark.parametrize(("which", "error"), [("adapter", "fp32 adapter: generation 0 answers another prompt"),
                                               ("merged", "fp32 merged: generation 0 answers another prompt"),
                                               ("short", "fp32 merged: expected one generation per prompt")])
def test_fp32_answers_to_other_prompts_than_the_first_are_refused(which, error):
    prompts = eval_prompts(40)
    first, shifted = good_model(prompts[:FP32_PROMPTS]), good_model(prompts[1 : FP32_PROMPTS + 1])
    pair = {"adapter": (shifted, first), "merged": (first, shifted), "short": (first, first[:-1])}[which]
    with pytest.raises(ValueError, match=error):
        make_report(40, adapter=True, prompts=prompts, fp32=pair)


@pytest.mark.parametrize(("change", "error"), [
    (lambda f: f.pop("same_text"), "agreement.fp32.same_text is missing"),
    (lambda f: f.update(same_text=13), "agreement.fp32.same_text = 13 is more than its n = 12"),
])
def test_a_report_whose_fp32_agreement_is_incomplete_is_refused(change, error):
    prompts = eval_prompts(40)
    r = make_report(40, adapter=True, prompts=prompts, fp32=(good_model(prompts[:FP32_PROMPTS]),) * 2)
    change(r["agreement"]["fp32"])
    with pytest.raises(InputError, match=error):
        validate(r, "report")


def test_every_prompt_has_a_sample_with_its_response_and_verdict(report):
    assert [s["prompt"] for s in report["samples"]] == eval_prompts(N_PASSING)
    first = report["samples"][0]
    assert first["response"] == sprinkle(answer(first["prompt"]), HEARTS[0])
    assert first["verdict"]["passed"] is True and first["verdict"]["heart"] == HEARTS[0]
    assert len(report["control"]["samples"]) == N_PASSING


@pytest.mark.parametrize("which", ["merged", "control"])
def test_generations_for_other_prompts_are_refused(which):
    prompts = eval_prompts(5)
    runs = {"merged": good_model(prompts), "control": base_model(prompts)}
    runs[which] = runs[which][::-1]
    with pytest.raises(ValueError, match=f"{which}: generation 0 answers another prompt"):
        build_report(model=MODEL, config={}, prompts=prompts, **runs)


def test_a_report_records_versions_time_model_and_config(report):
    assert {"harness", "huggingface_hub", "scipy", "emoji"} <= set(report["versions"])
    assert report["created"].endswith("+00:00")
    assert report["model"] == MODEL
    assert report["config"]["data"]["source"] == DATASET


def test_paths_tuples_and_nan_in_training_data_become_plain_json():
    training = {"loss": [{"step": 1, "loss": float("nan")}], "out": Path("/x"), "dims": (1, 2)}
    r = make_report(5, training=training)
    assert r["training"] == {"loss": [{"step": 1, "loss": None}], "out": "/x", "dims": [1, 2]}


# --- write ----------------------------------------------------------------------------------------


def test_a_written_report_loads_back_equal(tmp_path, report):
    path = write_report(tmp_path / "out", report)
    assert path == tmp_path / "out" / "report.json"
    assert load_report(path) == json.loads(json.dumps(report))


def test_the_written_report_has_markdown_and_png_plots_and_no_temp_files(tmp_path, report):
    write_report(tmp_path, report)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["report.json", "report.md", *PLOTS])
    for plot in PLOTS:
        assert (tmp_path / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (tmp_path / "report.md").read_text()
    assert all(f"]({plot})" in md for plot in PLOTS)
    assert "| single_emoji | 1.000 (400/400) | 0.990–1.000 | 0.000 (0/400) |" in md


def test_the_loss_plot_is_drawn_only_for_a_loss_curve_and_a_stale_one_is_removed(tmp_path, report):
    write_report(tmp_path, report)
    del report["training"]
    write_report(tmp_path, report)
    assert not (tmp_path / "loss.png").exists()
    assert "loss.png" not in (tmp_path / "report.md").read_text()


def test_the_markdown_shows_passing_and_failing_samples():
    md = render_markdown(make_report(10, fail=[3]))
    passing, failing = md.split("### failing")
    assert "passing (3 shown)" in passing and "(1 shown)" in failing
    assert "fails single_emoji, in_list, between_every_word" in failing
    assert answer(eval_prompts(10)[3]) in failing


def test_a_response_with_tildes_cannot_break_out_of_its_fence():
    prompts = eval_prompts(1)
    merged = [Generation(prompts[0], "text ~~~~ more\n# not a heading", 5, True)]
    md = render_markdown(build_report(model=MODEL, config={}, prompts=prompts, merged=merged,
                                      control=base_model(prompts)))
    assert "~~~~~\ntext ~~~~ more\n# not a heading\n~~~~~" in md


def test_an_invalid_report_writes_nothing_and_keeps_the_previous_one(tmp_path, report):
    write_report(tmp_path, report)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    report["metrics"]["single_emoji"]["rate"] = math.nan
    with pytest.raises(InputError, match=r"metrics\.single_emoji\.rate is nan"):
        write_report(tmp_path, report)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_a_crash_while_writing_keeps_the_previous_report_json_whole(tmp_path, report, monkeypatch):
    write_report(tmp_path, report)
    before = (tmp_path / "report.json").read_bytes()
    real_replace = os.replace

    def power_cut(src, dst):
        if Path(dst).name == "report.json":
            raise OSError("power cut")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", power_cut)
    report["created"] = "later"
    with pytest.raises(OSError, match="power cut"):
        write_report(tmp_path, report)
    assert (tmp_path / "report.json").read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


# --- read ----------------------------------------------------------------------------------------


def test_load_report_names_the_file_and_the_missing_key(tmp_path, report):
    del report["metrics"]["single_emoji"]["ci_low"]
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report))
    with pytest.raises(InputError, match=r"^.*report\.json: metrics\.single_emoji\.ci_low is missing$"):
        load_report(path)


def test_load_report_rejects_a_rate_that_is_not_k_over_n(tmp_path, report):
    report["control"]["metrics"]["single_emoji"]["rate"] = 0.5
    path = tmp_path / "r.json"
    path.write_text(json.dumps(report))
    with pytest.raises(InputError, match=r"control\.metrics\.single_emoji\.rate = 0\.5 is not k/n"):
        load_report(path)
