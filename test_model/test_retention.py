"""Capability retention: chrF and the base model's NLL of the de-hearted answers, with bootstrap intervals."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from harness import retention
from harness.transform import HEARTS, sprinkle

finite = st.floats(-50, 50, allow_nan=False, allow_infinity=False)

BASE_ANSWERS = [
    "An egg is the oval reproductive body laid by birds and reptiles.",
    "The Eiffel Tower is about three hundred and thirty metres tall.",
    "Fine-tuning adapts a pretrained model to a new task with a little more training.",
    "Zebras may have stripes to keep biting flies away and to stay cool.",
    "A standard piano has eighty-eight keys, fifty-two white and thirty-six black.",
    "The northern lights are charged solar particles hitting the upper atmosphere.",
]


@given(st.lists(finite, min_size=1, max_size=40))
def test_the_interval_holds_the_mean_and_stays_inside_the_data(values):
    m = retention.mean_with_interval(values)
    assert m.n == len(values)
    assert m.ci_low - 1e-9 <= m.mean <= m.ci_high + 1e-9
    assert min(values) - 1e-9 <= m.ci_low and m.ci_high <= max(values) + 1e-9
    assert m.mean == pytest.approx(sum(values) / len(values), abs=1e-9)


@given(finite, st.integers(1, 30))
def test_constant_data_has_a_zero_width_interval(value, n):
    m = retention.mean_with_interval([value] * n)
    assert m.ci_low == m.ci_high == m.mean


def test_more_prompts_give_a_narrower_interval():
    few = retention.mean_with_interval([10.0, 60.0, 35.0, 80.0, 20.0])
    many = retention.mean_with_interval([10.0, 60.0, 35.0, 80.0, 20.0] * 20)
    assert many.ci_high - many.ci_low < few.ci_high - few.ci_low


def test_no_values_or_a_nan_is_refused():
    with pytest.raises(ValueError, match="at least one finite number"):
        retention.mean_with_interval([])
    with pytest.raises(ValueError, match="at least one finite number"):
        retention.mean_with_interval([1.0, math.nan])


def test_the_same_content_with_hearts_keeps_everything_and_shuffled_content_does_not():
    tuned = [sprinkle(a, HEARTS[i % len(HEARTS)]) for i, a in enumerate(BASE_ANSWERS)]
    nll = [2.0, 2.5, 1.5, 3.0, 2.2, 1.8]
    kept = retention.retention(tuned, BASE_ANSWERS, nll, nll)
    assert kept["chrf"]["mean"] == 100.0 and kept["nll_increase"]["mean"] == 0.0
    shuffled = tuned[1:] + tuned[:1]  # the planted fault: each answer belongs to another prompt
    lost = retention.retention(shuffled, BASE_ANSWERS, [x + 1.5 for x in nll], nll)
    assert lost["chrf"]["ci_high"] < 40 < kept["chrf"]["ci_low"]
    assert lost["nll_increase"]["ci_low"] > 0


def test_chrf_needs_one_reference_per_answer():
    with pytest.raises(ValueError, match="one reference per hypothesis"):
        retention.chrf_scores(["a"], [])


@pytest.fixture(scope="module")
def tiny(tiny_base_dir):
    from harness.model import load_base, load_tokenizer

    return load_base(tiny_base_dir, torch.float32).eval(), load_tokenizer(tiny_base_dir)


def test_answer_nll_is_the_mean_cross_entropy_of_the_answer_tokens(tiny, prompt_texts):
    model, tok = tiny
    prompt, answer = prompt_texts[0], BASE_ANSWERS[0]
    [nll] = retention.answer_nll(model, tok, [prompt], [answer])
    start = len(tok(prompt)["input_ids"])
    ids = tok(prompt + answer)["input_ids"] + [tok.eos_token_id]
    with torch.inference_mode():
        logits = model(torch.tensor([ids])).logits[0].float()
    manual = torch.nn.functional.cross_entropy(logits[start - 1 : -1], torch.tensor(ids[start:]))
    assert nll == pytest.approx(float(manual), rel=1e-5)


def test_answer_nll_does_not_depend_on_the_batch(tiny, prompt_texts):
    model, tok = tiny
    prompts = prompt_texts[: len(BASE_ANSWERS)]
    one = retention.answer_nll(model, tok, prompts, BASE_ANSWERS, batch_size=1)
    all_ = retention.answer_nll(model, tok, prompts, BASE_ANSWERS, batch_size=len(prompts))
    assert one == pytest.approx(all_, rel=1e-4)
    word_salad = ["the the the a a a" for _ in prompts]
    assert sum(retention.answer_nll(model, tok, prompts, word_salad)) != pytest.approx(sum(one))


def test_the_teacher_forced_passes_run_on_the_measuring_kernels(tiny, prompt_texts, monkeypatch):
    """Retention's NLL and the fidelity's logits both run inside ``model.measuring_kernels`` (on CUDA: no cuDNN
    attention, which builds a host graph per batch shape), whatever generation was set to use."""
    import contextlib

    from harness import merge
    from harness import model as models

    model, tok = tiny
    inside = {"now": False, "forwards": []}

    @contextlib.contextmanager
    def recording(device):
        inside["now"] = True
        yield
        inside["now"] = False

    monkeypatch.setattr(models, "measuring_kernels", recording)
    handle = model.register_forward_pre_hook(lambda *_: inside["forwards"].append(inside["now"]))
    try:
        model(torch.tensor([[1, 2, 3]]))  # negative control: a forward outside them is seen as outside
        retention.answer_nll(model, tok, prompt_texts[:3], BASE_ANSWERS[:3], batch_size=2)
        merge.logits_on(model, merge.teacher_forced(tok, prompt_texts[:2], BASE_ANSWERS[:2]))
    finally:
        handle.remove()
    assert inside["forwards"] == [False, True, True, True]  # two NLL batches, one logits pass


# --- in the report and the gate ----------------------------------------------------------------------------


def _report(chrf: float = 70.0, increase: float = 0.1, n: int = 400):
    from test_model.test_report import make_report, retention_rows

    return make_report(n, retention=retention_rows(n, chrf, increase))


def test_the_report_carries_retention_with_intervals_and_per_prompt_figures(tmp_path):
    from harness.report import load_report, write_report

    report = _report()
    assert report["retention"]["chrf"]["mean"] == pytest.approx(72.0)
    assert report["retention"]["nll_increase"]["ci_low"] <= 0.1 <= report["retention"]["nll_increase"]["ci_high"]
    assert report["samples"][3]["retention"]["chrf"] == 73.0
    path = write_report(tmp_path, report)
    assert load_report(path)["retention"] == report["retention"]
    md = (tmp_path / "report.md").read_text()
    assert "## Capability retention" in md and "![retention](retention.png)" in md
    assert (tmp_path / "retention.png").stat().st_size > 0


def test_a_retention_row_per_prompt_is_required():
    from test_model.test_report import make_report, retention_rows

    with pytest.raises(ValueError, match="one row per prompt"):
        make_report(10, retention=retention_rows(9))


def test_the_optional_retention_thresholds_pass_a_keeper_and_fail_a_planted_fault():
    from harness.config import GateConfig
    from harness.gate import evaluate

    cfg = GateConfig(retention_chrf=40.0, retention_nll_increase=0.5)
    kept = {r.name: r for r in evaluate(_report(), cfg).rows}
    assert kept["retention_chrf"].passed and kept["retention_nll_increase"].passed
    lost = {r.name: r for r in evaluate(_report(chrf=12.0, increase=1.4), cfg).rows}
    assert not lost["retention_chrf"].passed and not lost["retention_nll_increase"].passed
    assert "retention_chrf" not in {r.name for r in evaluate(_report(chrf=12.0)).rows}  # off by default


def test_a_retention_threshold_without_retention_figures_fails():
    from harness.config import GateConfig
    from harness.gate import evaluate
    from test_model.test_report import make_report

    rows = {r.name: r for r in evaluate(make_report(), GateConfig(retention_chrf=40.0)).rows}
    assert not rows["retention_chrf"].passed and "no retention figures" in rows["retention_chrf"].note


def test_a_chrf_threshold_outside_0_to_100_is_refused():
    from harness.config import ConfigError, GateConfig
    from harness.gate import checked_config

    with pytest.raises(ConfigError, match="retention_chrf"):
        checked_config(GateConfig(retention_chrf=150.0))
