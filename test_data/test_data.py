"""Loading, validating, splitting and sprinkling the records (harness.data, up to tokenisation)."""

from __future__ import annotations

import json

import datasets
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fixtures.data import dolly_row
from harness import data, sources
from harness.errors import InputError
from harness.transform import HEARTS, choose_heart, sprinkle

DOLLY_CATEGORIES = {"open_qa", "closed_qa", "general_qa", "classification", "brainstorming",
                    "information_extraction", "summarization", "creative_writing"}
SEED_PROMPTS = ("what is an egg?", "Peux tu me dire quelle taille fait la tour eiffel ?",
                "What is fine-tuning in machine learning?")


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


# ------------------------------------------------------------------------------------------------- sources


def test_a_missing_file_is_named(tmp_path, monkeypatch, data_cache) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError) as err:
        data.load_records("x.jsonl", cache_dir=data_cache)
    assert one_line(err) == "dataset 'x.jsonl': no such file"


@pytest.mark.parametrize("source", ["./nowhere", "some/deep/folder", "missing.csv", "~/no-such-file.parquet"])
def test_a_missing_path_is_not_mistaken_for_a_hub_id(source: str, data_cache) -> None:
    with pytest.raises(InputError, match="no such file"):
        data.load_records(source, cache_dir=data_cache)


def test_a_broken_json_line_is_named_with_its_line_number(write_jsonl, data_cache) -> None:
    path = write_jsonl([dolly_row(0), '{"instruction": "a", "response":', dolly_row(2)])
    with pytest.raises(InputError) as err:
        data.load_records(str(path), cache_dir=data_cache)
    assert one_line(err).startswith(f"dataset {str(path)!r}: line 2 is not valid JSON (")


def test_a_json_line_that_is_not_an_object_is_named(write_jsonl, data_cache) -> None:
    path = write_jsonl([dolly_row(0), '["a list"]'])
    with pytest.raises(InputError) as err:
        data.load_records(str(path), cache_dir=data_cache)
    assert "line 2 is not a JSON object" in one_line(err)


@pytest.mark.parametrize(("name", "builder"), [("broken.parquet", "parquet"), ("broken.json", "json")])
def test_an_unreadable_file_is_named_with_its_problem(tmp_path, name: str, builder: str, data_cache) -> None:
    path = tmp_path / name
    path.write_bytes(b'{"instruction": "a", "response": ' if builder == "json" else b"not parquet at all")
    with pytest.raises(InputError) as err:
        data.load_records(str(path), cache_dir=data_cache)
    message = one_line(err)
    assert message.startswith(f"dataset {str(path)!r}: ")
    assert ("not valid JSON" in message) if builder == "json" else ("cannot be read as parquet" in message)


def test_an_unknown_suffix_is_refused(tmp_path, data_cache) -> None:
    path = tmp_path / "rows.txt"
    path.write_text(json.dumps(dolly_row()))
    with pytest.raises(InputError, match=r"unknown file type '\.txt'"):
        data.load_records(str(path), cache_dir=data_cache)


@pytest.fixture
def load_calls(monkeypatch):
    """Record every ``datasets.load_dataset`` call made by harness.data, still running the real one."""
    calls: list[dict] = []
    real = datasets.load_dataset

    def spy(**kwargs):
        calls.append(kwargs)
        return real(**kwargs)

    monkeypatch.setattr(sources.datasets, "load_dataset", spy)
    return calls


def _write_as(fmt: str, rows: list[dict], tmp_path):
    frame = datasets.Dataset.from_list(rows)
    if fmt == "folder":
        folder = tmp_path / "folder"
        folder.mkdir()
        (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        return folder
    path = tmp_path / f"rows.{fmt}"
    if fmt == "json":  # a single JSON document (an array), not JSON lines
        path.write_text(json.dumps(rows))
    else:
        getattr(frame, {"jsonl": "to_json", "parquet": "to_parquet", "csv": "to_csv"}[fmt])(str(path))
    return path


@pytest.mark.parametrize(("fmt", "builder"), [("jsonl", "json"), ("json", "json"), ("parquet", "parquet"),
                                              ("csv", "csv"), ("folder", None)])
def test_every_local_format_loads_through_load_dataset(fmt, builder, tmp_path, load_calls,
                                                       data_cache) -> None:
    rows = [dolly_row(i, context="Some context." if i % 2 else "") for i in range(5)]
    source = _write_as(fmt, rows, tmp_path)
    clean, dropped = data.validate(data.load_records(str(source), cache_dir=data_cache))
    assert dropped == 0
    assert clean.select_columns(list(sources.COLUMNS)).to_list() == rows
    assert load_calls[-1]["path"] == (builder or str(source))
    assert ("data_files" in load_calls[-1]) == (builder is not None)


def test_a_hub_id_goes_to_load_dataset_unchanged(monkeypatch) -> None:
    calls = []

    def fake(**kwargs):
        calls.append(kwargs)
        return datasets.Dataset.from_list([dolly_row()])

    monkeypatch.setattr(sources.datasets, "load_dataset", fake)
    data.load_records("databricks/databricks-dolly-15k")
    assert calls == [{"path": "databricks/databricks-dolly-15k", "split": "train", "cache_dir": None}]


def test_a_hub_failure_is_one_line_naming_the_id(monkeypatch) -> None:
    def offline(**kwargs):
        raise ConnectionError("Couldn't reach the Hub\n(offline)")

    monkeypatch.setattr(sources.datasets, "load_dataset", offline)
    with pytest.raises(InputError) as err:
        data.load_records("org/no-such-set")
    assert one_line(err) == ("dataset 'org/no-such-set': cannot be loaded "
                             "(ConnectionError: Couldn't reach the Hub (offline))")


# ---------------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(("field", "value", "problem"), [
    ("instruction", ..., "'instruction' is missing"),
    ("instruction", None, "'instruction' is missing"),
    ("instruction", "", "'instruction' is empty"),
    ("instruction", ["a", "list"], "'instruction' is not a string (list"),
    ("response", ..., "'response' is missing"),
    ("response", None, "'response' is missing"),
    ("response", " \n\t", "'response' is empty"),
    ("response", 42, "'response' is not a string (int"),
    ("context", 3.5, "'context' is not a string (float"),
    ("category", {"a": 1}, "'category' is not a string (dict"),
])
def test_a_bad_row_is_named_with_its_field(field, value, problem, write_jsonl, data_cache) -> None:
    path = write_jsonl([dolly_row(0), dolly_row(1), dolly_row(2, **{field: value}), dolly_row(3)])
    raw = data.load_records(str(path), cache_dir=data_cache)
    with pytest.raises(InputError) as err:
        data.validate(raw)
    assert one_line(err).startswith(f"dataset row 3: {problem}")  # counted from 1: the third row
    clean, dropped = data.validate(raw, "drop")
    assert (dropped, clean["row"]) == (1, [0, 1, 3])


def test_a_missing_column_is_named(write_jsonl, data_cache) -> None:
    path = write_jsonl([dolly_row(i, response=...) for i in range(3)])
    raw = data.load_records(str(path), cache_dir=data_cache)
    for mode in ("error", "drop"):
        with pytest.raises(InputError, match=r"^dataset: no 'response' column \(columns: instruction, cont"):
            data.validate(raw, mode)


def test_the_error_lists_the_first_five_bad_rows_and_the_total(write_jsonl, data_cache) -> None:
    rows = [dolly_row(i, response="" if i % 2 else f"fine {i}") for i in range(16)]
    raw = data.load_records(str(write_jsonl(rows)), cache_dir=data_cache)
    with pytest.raises(InputError) as err:
        data.validate(raw)
    message = one_line(err)
    assert [f"row {i}:" in message for i in (2, 4, 6, 8, 10, 12)] == [True] * 5 + [False]
    assert "(8 bad rows, first 5 shown;" in message


def test_null_optional_fields_become_empty_strings(write_jsonl, data_cache) -> None:
    path = write_jsonl([dolly_row(0, context=None, category=...), dolly_row(1)])
    clean, dropped = data.validate(data.load_records(str(path), cache_dir=data_cache))
    assert dropped == 0
    assert (clean[0]["context"], clean[0]["category"]) == ("", "")


def test_an_unknown_bad_rows_policy_is_refused(bundled_records) -> None:
    with pytest.raises(InputError, match="on_bad_rows 'skip'"):
        data.validate(bundled_records, "skip")


field_values = st.one_of(st.none(), st.just(""), st.just("  "), st.text(max_size=5))


@settings(max_examples=40)
@given(st.lists(st.fixed_dictionaries({"instruction": field_values, "context": field_values,
                                       "response": field_values}), min_size=1, max_size=12))
def test_drop_mode_keeps_exactly_the_good_rows(rows) -> None:
    good = [i for i, r in enumerate(rows)
            if all(isinstance(r[f], str) and r[f].strip() for f in ("instruction", "response"))]
    clean, dropped = data.validate(datasets.Dataset.from_list(rows), "drop")
    assert dropped == len(rows) - len(good)
    assert clean["row"] == good
    assert clean["response"] == [rows[i]["response"] for i in good]
    assert clean["context"] == [rows[i]["context"] or "" for i in good]


# ------------------------------------------------------------------------------------------ held-out split


instructions = st.lists(st.sampled_from(["What is an egg?", "what is an  EGG?", "Name a bird.", "Why?",
                                         "Summarise this.", "Quelle taille?", "2+2?"]) | st.text(min_size=1),
                        min_size=1, max_size=40)


@given(instructions, st.floats(0, 0.9), st.integers(0, 2**16))
def test_the_held_out_split_never_shares_an_instruction(texts, fraction, seed) -> None:
    ds = datasets.Dataset.from_dict({"instruction": texts})
    split = data.split_heldout(ds, fraction, seed)
    seen = {name: {data.normalise_instruction(t) for t in part["instruction"]}
            for name, part in split.items()}
    assert not seen["train"] & seen["eval"]
    assert sorted([*split["train"]["instruction"], *split["eval"]["instruction"]]) == sorted(texts)
    again = data.split_heldout(ds, fraction, seed)
    assert list(again["eval"]["instruction"]) == list(split["eval"]["instruction"])


def test_the_split_holds_out_the_fraction_of_distinct_instructions(bundled_records) -> None:
    split = data.split_heldout(bundled_records, 0.1, seed=7)
    distinct = {data.normalise_instruction(t) for t in bundled_records["instruction"]}
    held = {data.normalise_instruction(t) for t in split["eval"]["instruction"]}
    assert len(held) == round(0.1 * len(distinct))


def test_the_split_depends_on_the_seed(bundled_records) -> None:
    one, two = (data.split_heldout(bundled_records, 0.1, seed)["eval"]["instruction"] for seed in (1, 2))
    assert one != two


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5])
def test_an_impossible_eval_fraction_is_refused(bundled_records, fraction: float) -> None:
    with pytest.raises(InputError, match="eval_fraction"):
        data.split_heldout(bundled_records, fraction, 0)


# -------------------------------------------------------------------------------------------------- hearts


def test_a_row_whose_response_has_a_heart_is_dropped_and_counted() -> None:
    rows = [dolly_row(0), dolly_row(1, response="I ❤ Paris and you."), dolly_row(2, response="Fine ♡")]
    hearted, collisions = data.add_hearts(datasets.Dataset.from_list(rows), seed=0)
    assert collisions == 2
    assert hearted["instruction"] == [rows[0]["instruction"]]


def test_each_row_gets_the_heart_of_its_content(bundled_records) -> None:
    clean, _ = data.validate(bundled_records)
    hearted, collisions = data.add_hearts(clean, seed=5)
    assert collisions == 0
    for row in hearted:
        key = f"{row['instruction']}\x1f{row['context']}\x1f{row['response']}"  # the documented content key
        assert row["heart"] == choose_heart(key, 5)
        assert row["target"] == sprinkle(row["response"], row["heart"])
    reversed_rows, _ = data.add_hearts(clean.select(range(len(clean) - 1, -1, -1)), seed=5)
    assert reversed_rows["heart"][::-1] == hearted["heart"]
    assert set(hearted["heart"]) == set(HEARTS)


# ------------------------------------------------------------------------------------------------- bundled


def test_the_bundled_set_loads_validates_and_covers_the_dolly_categories(bundled_records) -> None:
    clean, dropped = data.validate(bundled_records)
    assert dropped == 0
    assert len(clean) >= 300
    assert set(clean["category"]) == DOLLY_CATEGORIES
    assert not any(data.transform.contains_heart(r) for r in clean["response"])


def test_the_eval_prompts_hold_the_seed_prompts_and_no_training_instruction(bundled_records,
                                                                           data_cache) -> None:
    prompts = data.load_eval_prompts(cache_dir=data_cache)
    assert len(prompts) >= 60
    assert all(set(p) == {"instruction", "context", "category"} for p in prompts)
    assert set(SEED_PROMPTS) <= {p["instruction"] for p in prompts}
    train = {data.normalise_instruction(t) for t in bundled_records["instruction"]}
    assert not train & {data.normalise_instruction(p["instruction"]) for p in prompts}


def test_an_eval_prompt_without_instruction_is_named(write_jsonl, data_cache) -> None:
    path = write_jsonl([{"instruction": "Fine?", "context": ""}, {"context": "no instruction"}])
    with pytest.raises(InputError) as err:
        data.load_eval_prompts(str(path), cache_dir=data_cache)
    assert one_line(err) == f"eval prompts {str(path)!r} line 2: 'instruction' is missing"
