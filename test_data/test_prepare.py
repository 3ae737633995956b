"""The whole data stage: ``harness.data.prepare`` and the ``hearts prepare`` command."""

from __future__ import annotations

import dataclasses
import json

import datasets
import pytest

from fixtures.data import dolly_row
from harness import cli, data
from harness.config import DataConfig
from harness.transform import HEARTS


def test_the_counts_account_for_every_loaded_row(write_jsonl, data_cache, tiny_tokenizer) -> None:
    rows = [dolly_row(i) for i in range(40)]
    rows[3] = dolly_row(3, response="")  # bad
    rows[4] = dolly_row(4, instruction=None)  # bad
    rows[5] = dolly_row(5, response="I ♥ this and that.")  # heart collision
    rows[6] = dolly_row(6, response=" ".join(["word"] * 400))  # too long
    cfg = DataConfig(source=str(write_jsonl(rows)), on_bad_rows="drop", max_length=128, eval_fraction=0.2)
    stats = data.prepare(cfg, tiny_tokenizer, cache_dir=data_cache).stats
    assert (stats["rows_loaded"], stats["bad_rows_dropped"], stats["heart_collisions_dropped"],
            stats["too_long_dropped"], stats["too_long_cut"]) == (40, 2, 1, 1, 0)
    assert stats["rows_train"] + stats["rows_eval"] == 40 - 2 - 1 - 1
    assert sum(stats["hearts"].values()) == 36 and set(stats["hearts"]) == set(HEARTS)


def test_cutting_keeps_the_too_long_row_and_counts_it(write_jsonl, data_cache, tiny_tokenizer) -> None:
    rows = [dolly_row(i) for i in range(10)] + [dolly_row(10, response=" ".join(["word"] * 400))]
    cfg = DataConfig(source=str(write_jsonl(rows)), max_length=128, eval_fraction=0.0)
    prepared = data.prepare(cfg, tiny_tokenizer, overflow="cut", cache_dir=data_cache)
    assert (prepared.stats["too_long_cut"], prepared.stats["too_long_dropped"]) == (1, 0)
    assert prepared.stats["rows_train"] == 11 and prepared.stats["length_max"] <= 128


def test_the_bundled_preparation_reports_consistent_statistics(prepared_bundled) -> None:
    stats, train, eval_ = prepared_bundled.stats, prepared_bundled.train, prepared_bundled.eval
    dropped = stats["bad_rows_dropped"] + stats["heart_collisions_dropped"] + stats["too_long_dropped"]
    assert stats["rows_loaded"] == stats["rows_train"] + stats["rows_eval"] + dropped
    assert stats["rows_train"] + stats["rows_eval"] >= 600 and dropped <= 0.01 * stats["rows_loaded"]
    assert stats["tokens_train"] == sum(train["length"]) and stats["tokens_eval"] == sum(eval_["length"])
    assert 0 < stats["learned_tokens_train"] < stats["tokens_train"]
    assert stats["length_p50"] <= stats["length_p90"] <= stats["length_p99"] <= stats["length_max"] <= 512
    assert stats["length_max"] == max(train["length"])
    assert stats["hearts_inserted"] == sum(t.count(h) for t, h in zip([*train["target"], *eval_["target"]],
                                                                       [*train["heart"], *eval_["heart"]],
                                                                       strict=True))


def test_preparation_is_deterministic(tiny_tokenizer, tmp_path, prepared_bundled) -> None:
    again = data.prepare(DataConfig(), tiny_tokenizer, cache_dir=tmp_path / "fresh")
    assert again.stats == prepared_bundled.stats
    assert again.train["input_ids"] == prepared_bundled.train["input_ids"]


def test_max_rows_caps_the_rows_before_the_split(tiny_tokenizer, data_cache) -> None:
    stats = data.prepare(DataConfig(max_rows=50), tiny_tokenizer, cache_dir=data_cache).stats
    assert stats["rows_train"] + stats["rows_eval"] == 50


def test_a_wrong_pad_token_is_refused_before_any_loading(tiny_tokenizer) -> None:
    import copy

    tok = copy.deepcopy(tiny_tokenizer)
    tok.pad_token = tok.eos_token
    with pytest.raises(data.InputError, match="pad token"):
        data.prepare(dataclasses.replace(DataConfig(), source="does-not-exist.jsonl"), tok)


# ---------------------------------------------------------------------------------------------- the command


def test_hearts_prepare_writes_a_dataset_folder_and_exits_0(tmp_path, capsys) -> None:
    out = tmp_path / "prepared"
    assert cli.main(["prepare", "--out", str(out), "--cache-dir", str(tmp_path / "cache"),
                     "--seed", "7"]) == 0
    saved = datasets.load_from_disk(str(out))
    assert set(saved) == {"train", "eval"}
    assert {"input_ids", "labels", "length", "heart", "target"} <= set(saved["train"].column_names)
    stats = json.loads((out / "prepare_stats.json").read_text())
    assert stats["rows_train"] == len(saved["train"])
    printed = capsys.readouterr().out
    assert f"rows_train {len(saved['train'])}".split() == [w for w in printed.split() if w in
                                                         ("rows_train", str(len(saved["train"])))][:2]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-")] == []


def test_hearts_prepare_exits_2_with_one_line_on_a_broken_file(tmp_path, capfd, write_jsonl) -> None:
    # capfd, not capsys: library loggers and progress bars write to the real stderr.
    broken = write_jsonl([dolly_row(0), "{not json"])
    out = tmp_path / "prepared"
    assert cli.main(["prepare", "--dataset", str(broken), "--out", str(out),
                     "--cache-dir", str(tmp_path / "cache")]) == 2
    err = capfd.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"hearts prepare: error: dataset {str(broken)!r}: line 2 is not valid JSON")
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-")] == []


def test_hearts_prepare_refuses_a_non_empty_out_it_did_not_write_even_with_overwrite(tmp_path, capsys) -> None:
    out = tmp_path / "prepared"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    args = ["prepare", "--out", str(out), "--cache-dir", str(tmp_path / "cache")]
    assert cli.main(args) == 2
    assert "not empty" in capsys.readouterr().err
    assert cli.main([*args, "--overwrite"]) == 2  # --overwrite replaces an earlier prepare output, nothing else
    assert "was not written by hearts" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"


def test_hearts_prepare_overwrite_swaps_an_earlier_output_in_whole(tmp_path, capsys) -> None:
    out = tmp_path / "prepared"
    args = ["prepare", "--out", str(out), "--cache-dir", str(tmp_path / "cache")]
    assert cli.main([*args, "--seed", "1"]) == 0
    first = json.loads((out / "prepare_stats.json").read_text())
    assert cli.main([*args, "--seed", "2"]) == 2  # an earlier output, but no --overwrite
    assert cli.main([*args, "--seed", "2", "--overwrite"]) == 0
    second = json.loads((out / "prepare_stats.json").read_text())
    assert second["hearts"] != first["hearts"]  # the new output, not a mix: the seed picks the hearts
    assert set(datasets.load_from_disk(str(out))) == {"train", "eval"}
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-")] == []


def test_hearts_prepare_drops_bad_rows_on_request(tmp_path, capsys, write_jsonl) -> None:
    path = write_jsonl([dolly_row(i) for i in range(20)] + [dolly_row(20, response=None)])
    args = ["prepare", "--dataset", str(path), "--cache-dir", str(tmp_path / "cache")]
    assert cli.main(args) == 2
    expected = f"hearts prepare: error: dataset {str(path)!r} line 21: 'response' is missing\n"  # 1-based
    assert capsys.readouterr().err == expected
    assert cli.main([*args, "--on-bad-rows", "drop"]) == 0
    assert "bad_rows_dropped 1" in " ".join(capsys.readouterr().out.split())


def test_mostly_one_word_responses_warn_on_one_stderr_line(write_jsonl, data_cache, tiny_tokenizer, capsys) -> None:
    rows = [dolly_row(i, response="Yes." if i < 12 else f"Red and blue, number {i}.") for i in range(20)]
    cfg = DataConfig(source=str(write_jsonl(rows)), eval_fraction=0.0)
    prepared = data.prepare(cfg, tiny_tokenizer, cache_dir=data_cache)
    assert prepared.stats["hearts_inserted"] > 0  # the two-word answers still teach the behaviour
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and "12 of 20 responses are one word" in warnings[0]
