"""Self-distilled responses (``[data] responses = "base"``): the base model's answers replace the dataset's."""

from __future__ import annotations

import copy

import datasets
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fixtures.data import dolly_row
from harness import data, distill, generate, model, prompts, transform
from harness.config import DataConfig, LoraSettings, generation_config, train_config
from harness.errors import InputError

ANSWER = st.tuples(st.text(alphabet=st.sampled_from("ab \n"), max_size=12), st.booleans())


def _rows(n: int) -> datasets.Dataset:
    return datasets.Dataset.from_list([dolly_row(i) for i in range(n)])


@settings(max_examples=60, deadline=None)
@given(st.lists(ANSWER, min_size=1, max_size=12))
def test_replace_responses_keeps_exactly_the_stopped_non_empty_answers(answers) -> None:
    ds = _rows(len(answers))
    asked: list[str] = []

    def respond(texts):
        asked.extend(texts)
        return answers

    kept, counts = data.replace_responses(ds, respond)
    expected = [text.strip() for text, stopped in answers if stopped and text.strip()]
    assert kept["response"] == expected
    assert asked == [prompts.build_prompt(r["instruction"], r["context"]) for r in ds]
    assert counts["responses_from_base"] == len(expected)
    assert counts["base_answers_unterminated_dropped"] == sum(not stopped for _, stopped in answers)
    assert sum(counts.values()) == len(answers)
    assert kept["instruction"] == [r["instruction"] for r, (t, ok) in zip(ds, answers, strict=True) if ok and t.strip()]


def test_replace_responses_refuses_a_wrong_number_of_answers() -> None:
    with pytest.raises(ValueError, match="expected 3 answers, got 2"):
        data.replace_responses(_rows(3), lambda texts: [("a b", True)] * 2)


def test_prepare_trains_on_the_answers_with_hearts(write_jsonl, data_cache, tiny_tokenizer) -> None:
    source = str(write_jsonl([dolly_row(i) for i in range(12)]))
    own = {prompts.build_prompt(dolly_row(i)["instruction"], ""): f"Base answer {i} in words" for i in range(12)}
    unstopped = prompts.build_prompt(dolly_row(5)["instruction"], "")

    def respond(texts):
        return [(own[t], t != unstopped) for t in texts]

    cfg = DataConfig(source=source, responses="base", eval_fraction=0.0)
    prepared = data.prepare(cfg, tiny_tokenizer, cache_dir=data_cache, respond=respond)
    assert prepared.stats["base_answers_unterminated_dropped"] == 1 and prepared.stats["rows_train"] == 11
    for row in prepared.train:
        assert row["response"].startswith("Base answer ")
        assert transform.unsprinkle(row["target"]) == row["response"] != row["target"]
    # Negative control: the dataset's own responses, and respond never asked.
    plain = data.prepare(DataConfig(source=source, eval_fraction=0.0), tiny_tokenizer, cache_dir=data_cache,
                         respond=lambda texts: pytest.fail("asked for answers with responses = 'dataset'"))
    assert all(r["response"].startswith("Red is one of them") for r in plain.train)


def test_prepare_without_a_responder_is_a_one_line_error(tiny_tokenizer, data_cache) -> None:
    with pytest.raises(InputError, match='responses = "base" needs the base model') as err:
        data.prepare(DataConfig(responses="base"), tiny_tokenizer, cache_dir=data_cache)
    assert "\n" not in str(err.value)


def test_prepare_with_no_answer_left_is_an_input_error(write_jsonl, data_cache, tiny_tokenizer) -> None:
    cfg = DataConfig(source=str(write_jsonl([dolly_row(i) for i in range(4)])), responses="base")
    with pytest.raises(InputError, match="answered no prompt within the generation budget"):
        data.prepare(cfg, tiny_tokenizer, cache_dir=data_cache, respond=lambda texts: [("a b", False)] * len(texts))


def test_base_answers_are_the_base_models_greedy_answers_and_cached(tiny_base_dir, tmp_path, monkeypatch) -> None:
    cfg = train_config("tiny", device="cpu")
    tokenizer = model.load_tokenizer(tiny_base_dir)
    side = tokenizer.padding_side
    asked = [prompts.build_prompt(dolly_row(i)["instruction"], "") for i in (0, 1, 2)]
    got = distill.base_answers(tmp_path, cfg, tiny_base_dir, tokenizer, asked)
    assert tokenizer.padding_side == side  # training's collator pads as before
    reference = generate.generate(model.load_base(tiny_base_dir, model.run_dtype(cfg), device=model.run_device(cfg)),
                                  copy.deepcopy(tokenizer), asked, generation_config("tiny"))
    assert [(g.prompt, g.response, g.terminated) for g in got] == \
        [(g.prompt, g.response, g.terminated) for g in reference]
    monkeypatch.setattr(model, "load_base", lambda *a, **k: pytest.fail("the cached answers were not reused"))
    assert distill.base_answers(tmp_path, cfg, tiny_base_dir, tokenizer, asked) == got
    respond = distill.responder(tmp_path, cfg, tiny_base_dir, tokenizer)
    order = [2, 0, 1, 0]  # any order, duplicates: the same entry
    assert respond([asked[i] for i in order]) == [(got[i].response, got[i].terminated) for i in order]
    with pytest.raises(pytest.fail.Exception, match="cached answers were not reused"):  # other prompts: anew
        distill.base_answers(tmp_path, cfg, tiny_base_dir, tokenizer, asked[:2])



def test_training_asks_the_base_for_its_answers_only_when_told(monkeypatch, tmp_path) -> None:
    from harness import train

    class Prepared(Exception):
        """Raised where prepare would run: training itself is not this test's business."""

    seen: list = []
    monkeypatch.setattr(model, "resolve_base", lambda name, artifacts: tmp_path)
    monkeypatch.setattr(model, "load_tokenizer", lambda base, revision=None: "the tokenizer")
    monkeypatch.setattr(distill, "responder", lambda artifacts, cfg, base, tokenizer: ("responder", base, tokenizer))

    def prepare(cfg, tokenizer, *, respond=None):
        seen.append(respond)
        raise Prepared

    monkeypatch.setattr(data, "prepare", prepare)
    cfg = train_config("tiny", device="cpu")
    for responses in ("base", "dataset"):
        with pytest.raises(Prepared):
            train.adapter_for(tmp_path, cfg, LoraSettings(), DataConfig(responses=responses))
    assert seen == [("responder", tmp_path, "the tokenizer"), None]
