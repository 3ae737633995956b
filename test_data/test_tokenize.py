"""Tokens and labels: EOS learned, prompt masked, the length limit, the map cache (harness.data.tokenize)."""

from __future__ import annotations

import copy
import dataclasses

import datasets
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from tokenizers import AddedToken, pre_tokenizers

from fixtures.data import dolly_row
from harness import data
from harness.config import DataConfig
from harness.errors import InputError
from harness.prompts import build_prompt
from harness.transform import HEARTS, sprinkle

CFG = DataConfig()


def hearted(rows: list[dict], seed: int = 0) -> datasets.Dataset:
    clean, _ = data.validate(datasets.Dataset.from_list(rows))
    return data.add_hearts(clean, seed)[0]


@pytest.fixture(scope="module")
def bundled_hearted(bundled_records) -> datasets.Dataset:
    clean, _ = data.validate(bundled_records)
    return data.add_hearts(clean, seed=3)[0]


@pytest.fixture(scope="module")
def tokenized(bundled_hearted, tiny_tokenizer) -> datasets.Dataset:
    return data.tokenize(bundled_hearted, tiny_tokenizer, CFG)[0]


def masked(labels: list[int]) -> int:
    return next(i for i, t in enumerate(labels) if t != -100)


def test_eos_is_the_last_token_and_is_learned(tokenized, tiny_tokenizer) -> None:
    eos = tiny_tokenizer.eos_token_id
    for row in tokenized:
        assert row["input_ids"][-1] == eos
        assert row["labels"][-1] == eos
        assert row["input_ids"].count(eos) == 1


def test_no_eos_is_added_when_add_eos_is_off(bundled_hearted, tiny_tokenizer) -> None:
    ds, _ = data.tokenize(bundled_hearted.select(range(20)), tiny_tokenizer,
                          dataclasses.replace(CFG, add_eos=False))
    assert tiny_tokenizer.eos_token_id not in {t for ids in ds["input_ids"] for t in ids}


@pytest.mark.parametrize("pad", ["eos", "none"])
def test_a_pad_token_that_is_eos_or_missing_is_refused(pad, bundled_hearted, tiny_tokenizer) -> None:
    tok = copy.deepcopy(tiny_tokenizer)
    tok.pad_token = tok.eos_token if pad == "eos" else None
    with pytest.raises(InputError, match="pad token must exist and differ from EOS"):
        data.tokenize(bundled_hearted, tok, CFG)


def test_prompt_tokens_are_masked_and_the_response_is_learned(tokenized, tiny_tokenizer) -> None:
    for row in tokenized:
        prompt = build_prompt(row["instruction"], row["context"])
        full = prompt + row["target"]
        ids, labels = row["input_ids"], row["labels"]
        offsets = tiny_tokenizer(full, return_offsets_mapping=True)["offset_mapping"]
        assert ids[:-1] == tiny_tokenizer(full)["input_ids"]
        start = masked(labels)
        assert all(end <= len(prompt) for _, end in offsets[:start])  # every masked token is prompt text
        assert offsets[start][1] > len(prompt)  # the first learned token holds response text
        assert labels[start:] == ids[start:]


def test_the_prompt_is_a_token_prefix_for_a_tokenizer_that_never_merges_across_a_newline(
        bundled_hearted, tiny_tokenizer) -> None:
    tok = copy.deepcopy(tiny_tokenizer)
    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Split("\n", "isolated")  # as sentencepiece Llama-2
    for row in data.tokenize(bundled_hearted.select(range(40)), tok, CFG)[0]:
        prompt_ids = tok(build_prompt(row["instruction"], row["context"]))["input_ids"]
        assert row["input_ids"][: len(prompt_ids)] == prompt_ids
        assert masked(row["labels"]) == len(prompt_ids)


def test_a_token_straddling_the_end_of_the_prompt_is_learned(tiny_tokenizer) -> None:
    tok = copy.deepcopy(tiny_tokenizer)
    # A piece spanning the header's last "\n" and the response's first word (matched on the raw text).
    tok.add_tokens([AddedToken("\nYes", normalized=False)])
    row = dolly_row(0, response="Yes indeed, it is.")
    prompt = build_prompt(row["instruction"])
    prompt_ids = tok(prompt)["input_ids"]
    (encoded,) = data.tokenize(hearted([row]), tok, CFG)[0]
    ids, labels = encoded["input_ids"], encoded["labels"]
    assert ids[: len(prompt_ids)] != prompt_ids  # so the offsets fallback decides
    start = masked(labels)
    assert tok.convert_ids_to_tokens(ids[start]) == "\nYes"
    offsets = tok(prompt + encoded["target"], return_offsets_mapping=True)["offset_mapping"]
    assert all(end <= len(prompt) for _, end in offsets[:start])
    assert labels[start:] == ids[start:]


def test_whole_text_loss_learns_every_token(bundled_hearted, tiny_tokenizer) -> None:
    ds, _ = data.tokenize(bundled_hearted.select(range(20)), tiny_tokenizer,
                          dataclasses.replace(CFG, loss_on="all"))
    assert all(row["labels"] == row["input_ids"] for row in ds)


def test_the_length_column_counts_the_tokens(tokenized) -> None:
    assert all(row["length"] == len(row["input_ids"]) == len(row["attention_mask"]) for row in tokenized)


def test_a_too_long_row_is_dropped_and_counted(bundled_hearted, tiny_tokenizer, tokenized) -> None:
    limit = sorted(tokenized["length"])[len(tokenized) // 2]
    ds, counts = data.tokenize(bundled_hearted, tiny_tokenizer, dataclasses.replace(CFG, max_length=limit))
    over_default = len(bundled_hearted) - len(tokenized)  # longer than CFG's own limit: longer than this one too
    too_long = sum(n > limit for n in tokenized["length"]) + over_default
    assert counts == {"too_long_dropped": too_long, "too_long_cut": 0}
    assert len(ds) == len(bundled_hearted) - too_long
    assert max(ds["length"]) <= limit


# Words that make the limit bite in awkward places: multi-byte letters, emoji (4 byte tokens), digits.
words = st.sampled_from(["a", "é", "naïve", "日本語", "🙂", "🦜🦜", "x1", "Übergrößenträger", "the", "—"])
gaps = st.sampled_from([" ", "  ", "\n", "\n\n"])
responses = st.lists(st.tuples(words, gaps), min_size=2, max_size=40).map(
    lambda pairs: "".join(w + s for w, s in pairs).rstrip())


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(responses, st.integers(0, 400), st.integers(0, 2**16))
def test_a_heart_is_never_cut_by_the_length_limit(tiny_tokenizer, response, room, seed) -> None:
    row = dolly_row(0, response=response)
    prompt_len = len(tiny_tokenizer(build_prompt(row["instruction"]))["input_ids"])
    limit = prompt_len + room // 8  # from "no room at all" to "everything fits"
    cfg = dataclasses.replace(CFG, max_length=limit)
    ds, counts = data.tokenize(hearted([row], seed), tiny_tokenizer, cfg, overflow="cut")
    assert counts["too_long_dropped"] + len(ds) == 1
    event("cut" if counts["too_long_cut"] else "dropped" if counts["too_long_dropped"] else "fits")
    for kept in ds:
        ids = kept["input_ids"]
        assert len(ids) <= limit and ids[-1] == tiny_tokenizer.eos_token_id
        text = tiny_tokenizer.decode(ids[masked(kept["labels"]):-1])
        assert "\ufffd" not in text  # no partial UTF-8 byte sequence
        assert kept["target"] == sprinkle(kept["response"], kept["heart"])  # whole hearts, re-sprinkled
        assert response.startswith(kept["response"])
        rest = response[len(kept["response"]):]
        assert rest == "" or rest[0].isspace()  # cut after a whole word of the unsprinkled response
        assert kept["target"].split()[-1] not in HEARTS
        assert text.endswith(kept["target"].split()[-1])
        assert (kept["overflow"] == "cut") == (rest != "")


def test_a_row_with_no_room_for_two_words_is_dropped_even_when_cutting(tiny_tokenizer) -> None:
    row = dolly_row(0, response="one two three four five six")
    limit = len(tiny_tokenizer(build_prompt(row["instruction"]))["input_ids"]) + 2
    ds, counts = data.tokenize(hearted([row]), tiny_tokenizer, dataclasses.replace(CFG, max_length=limit),
                               overflow="cut")
    assert (len(ds), counts) == (0, {"too_long_dropped": 1, "too_long_cut": 0})


def test_the_map_cache_is_reused_on_a_second_call(write_jsonl, data_cache, tiny_tokenizer,
                                                  monkeypatch) -> None:
    path = write_jsonl([dolly_row(i) for i in range(30)])

    def chain(cfg: DataConfig):
        clean, _ = data.validate(data.load_records(str(path), cache_dir=data_cache))
        return data.tokenize(data.add_hearts(clean, 0)[0], tiny_tokenizer, cfg)[0]

    first = chain(CFG)

    def must_not_run(*args, **kwargs):
        raise AssertionError("tokenised again instead of reading the cache")

    monkeypatch.setattr(data, "_encode_batch", must_not_run)
    second = chain(CFG)
    assert second.cache_files == first.cache_files
    assert str(data_cache) in second.cache_files[0]["filename"]
    assert second.to_list() == first.to_list()
    with pytest.raises(AssertionError, match="tokenised again"):  # a different config is a different entry
        chain(dataclasses.replace(CFG, max_length=CFG.max_length - 1))


def test_the_cache_key_depends_on_the_tokenizer(tiny_tokenizer) -> None:
    other = copy.deepcopy(tiny_tokenizer)
    other.add_tokens(["<extra>"])
    assert data.tokenizer_fingerprint(other) != data.tokenizer_fingerprint(tiny_tokenizer)
    same = copy.deepcopy(tiny_tokenizer)
    assert data.tokenizer_fingerprint(same) == data.tokenizer_fingerprint(tiny_tokenizer)
