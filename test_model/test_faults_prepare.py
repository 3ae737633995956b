"""``hearts prepare`` with bad input: output folders, dataset files of every format, rows, tokenizers, values.

Each case is one line of the table (see ``faultkit`` for what every case must satisfy). The data-loss tests at
the end pin issue #11's worst defect: ``--out . --overwrite`` once deleted the working folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from harness.cli import main
from test_model import faultkit
from test_model.faultkit import DEEP, NESTED, Workspace, case, dolly


def _rows(n: int = 20, **fields: object) -> list[dict]:
    return [dolly(i, **fields) for i in range(n)]


def _parquet(ws: Workspace, rows: list[dict] | None, name: str = "data.parquet") -> str:
    path = ws.root / name
    if rows is None:  # a schema and no rows
        pq.write_table(pa.table({"instruction": pa.array([], pa.string()), "response": pa.array([], pa.string())}),
                       path)
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    return str(path)


def _dataset(ws: Workspace, text: str | bytes, name: str = "data.jsonl") -> list[str]:
    return ws.prepare(dataset=ws.file(name, text))


def _bad_line_41(ws: Workspace) -> list[str]:
    lines = [json.dumps(r) for r in _rows(40)] + ['{"instruction": "a", "response": '] + [json.dumps(dolly(41))]
    return _dataset(ws, "\n".join(lines) + "\n")


def _out_in_dataset_folder(ws: Workspace) -> list[str]:
    folder = ws.folder("corpus", {"train.jsonl": "\n".join(json.dumps(r) for r in _rows(5)) + "\n"})
    return ws.prepare("--out", f"{folder}/prepared", dataset=folder)


def _blank_lines_then_bad(ws: Workspace) -> list[str]:
    lines = [json.dumps(dolly(0)), "", "   ", json.dumps(dolly(1)), json.dumps(dolly(2, response=None))]
    return _dataset(ws, "\n".join(lines) + "\n")


def _tokenizer_dir(ws: Workspace, files: dict[str, str | bytes]) -> list[str]:
    return ws.prepare("--tokenizer", ws.folder("tok", files))


DATA = "dataset '"
_no_response = dolly(5, response=...)
CASES = [
    # --out: never the working folder, its parents, the inputs, a folder hearts did not write
    case("prepare", "out-dot-overwrite", lambda ws: ws.prepare("--out", ".", "--overwrite"), "--out .",
         "is the working folder"),
    case("prepare", "out-dotdot-overwrite", lambda ws: ws.prepare("--out", "..", "--overwrite"), "is the working"),
    case("prepare", "out-sub-dotdot", lambda ws: ws.prepare("--out", "sub/..", "--overwrite"), "working folder"),
    case("prepare", "out-root", lambda ws: ws.prepare("--out", "/", "--overwrite"), "working folder or holds it"),
    case("prepare", "out-home", lambda ws: ws.prepare("--out", str(Path.home()), "--overwrite"), "home folder"),
    case("prepare", "out-empty-string", lambda ws: ws.prepare("--out", ""), "argument --out: expected a value"),
    case("prepare", "out-blank", lambda ws: ws.prepare("--out", "  "), "argument --out: expected a value"),
    case("prepare", "out-holds-dataset",
         lambda ws: ws.prepare("--out", "corpus", "--overwrite", dataset=ws.jsonl(_rows(5), "corpus/d.jsonl")),
         "holds --dataset"),
    case("prepare", "out-is-dataset-file", lambda ws: ws.prepare("--out", ws.jsonl(_rows(5)), "--overwrite",
                                                                  dataset=ws.jsonl(_rows(5))), "is --dataset"),
    case("prepare", "out-inside-dataset-folder", _out_in_dataset_folder, "lies inside --dataset"),
    case("prepare", "out-holds-cache-dir", lambda ws: [*ws.prepare("--out", "work", "--overwrite")[:1],
                                                       "--cache-dir", ws.folder("work/cache", {"x": "1"}),
                                                       "--out", "work", "--overwrite"], "holds --cache-dir"),
    case("prepare", "out-not-ours-overwrite", lambda ws: ws.prepare("--out", ws.folder("mine", {"a.txt": "x"}),
                                                                    "--overwrite"), "was not written by hearts"),
    case("prepare", "out-not-empty", lambda ws: ws.prepare("--out", ws.folder("mine", {"a.txt": "x"})),
         "folder exists and is not empty", "--overwrite replaces"),
    case("prepare", "out-other-kind", lambda ws: ws.prepare("--out", ws.marked("old", "report"), "--overwrite"),
         "holds a hearts report output, not a prepare one"),
    case("prepare", "out-a-file", lambda ws: ws.prepare("--out", ws.file("x.txt", "x")), "not a folder"),
    case("prepare", "out-under-a-file", lambda ws: ws.prepare("--out", ws.file("x.txt", "x") + "/p"),
         "x.txt is a file, not a folder"),
    case("prepare", "out-a-symlink", lambda ws: (ws.folder("real"), (ws.root / "link").symlink_to("real"),
                                                 ws.prepare("--out", "link"))[2], "is a symbolic link"),
    # the dataset's name or file
    case("prepare", "dataset-empty-string", lambda ws: ws.prepare(dataset=""), "argument --dataset: expected"),
    case("prepare", "dataset-blank", lambda ws: ws.prepare(dataset=" "), "argument --dataset: expected"),
    case("prepare", "dataset-missing-file", lambda ws: ws.prepare(dataset="x.jsonl"), "'x.jsonl': no such file"),
    case("prepare", "dataset-missing-deep-path", lambda ws: ws.prepare(dataset="a/b/c"), "no such file"),
    case("prepare", "dataset-unknown-suffix", lambda ws: _dataset(ws, "hello", "data.txt"),
         "unknown file type '.txt'"),
    case("prepare", "dataset-folder-without-data", lambda ws: ws.prepare(dataset=ws.folder("d", {"a.md": "x"})),
         "folder has no data files"),
    case("prepare", "dataset-folder-bad-file",
         lambda ws: ws.prepare(dataset=ws.folder("d", {"a.jsonl": "null\n"})), "a.jsonl: line 1 is not a JSON"),
    case("prepare", "dataset-a-folder-of-empty", lambda ws: ws.prepare(dataset=ws.folder("d", {"a.jsonl": ""})),
         "has no rows"),
    # JSON Lines
    case("prepare", "jsonl-empty", lambda ws: _dataset(ws, ""), DATA, "has no rows (the file is empty)"),
    case("prepare", "jsonl-blank-lines-only", lambda ws: _dataset(ws, "\n  \n\n"), "only blank lines"),
    case("prepare", "jsonl-first-line-null", lambda ws: _dataset(ws, "null\n" + json.dumps(dolly())),
         "line 1 is not a JSON object (got null)"),
    case("prepare", "jsonl-array-line", lambda ws: _dataset(ws, "[1,2]\n"), "line 1 is not a JSON object (got an"),
    case("prepare", "jsonl-string-line", lambda ws: _dataset(ws, json.dumps(dolly()) + '\n"text"\n'),
         "line 2 is not a JSON object (got a string)"),
    case("prepare", "jsonl-number-line", lambda ws: _dataset(ws, "42\n"), "(got a number)"),
    case("prepare", "jsonl-bool-line", lambda ws: _dataset(ws, "true\n"), "(got true/false)"),
    case("prepare", "jsonl-broken-line-41", _bad_line_41, "line 41 is not valid JSON"),
    case("prepare", "jsonl-nan", lambda ws: _dataset(ws, '{"instruction": "a", "response": NaN}\n'),
         "line 1: response is NaN"),
    case("prepare", "jsonl-infinity", lambda ws: _dataset(ws, '{"instruction": "a", "x": -Infinity}\n'),
         "x is -Infinity"),
    case("prepare", "jsonl-huge-float", lambda ws: _dataset(ws, '{"instruction": "a", "x": 1e400}\n'), "x is inf"),
    case("prepare", "jsonl-int-beyond-64-bits", lambda ws: _dataset(ws, '{"instruction": "a", "n": ' + "9" * 30 + "}"),
         "n is an integer beyond 64 bits"),
    case("prepare", "jsonl-duplicate-key", lambda ws: _dataset(ws, '{"instruction": "a", "instruction": "b"}\n'),
         "line 1: duplicate key 'instruction'"),
    case("prepare", "jsonl-deep-nesting", lambda ws: _dataset(ws, '{"instruction": ' + DEEP + "}\n"),
         "line 1: nested deeper than 64 levels"),
    case("prepare", "jsonl-nesting-100", lambda ws: _dataset(ws, '{"instruction": ' + NESTED + "}\n"),
         "nested deeper than 64 levels"),
    case("prepare", "jsonl-invalid-utf8", lambda ws: _dataset(ws, (json.dumps(dolly()) + "\n").encode() * 2
                                                              + b'{"instruction": "\xff"}\n'),
         "not UTF-8 text (line 3"),
    case("prepare", "jsonl-latin1", lambda ws: _dataset(ws, '{"instruction": "café"}\n'.encode("latin-1")),
         "not UTF-8 text (line 1"),
    # JSON documents, CSV, Parquet
    case("prepare", "json-array-with-null", lambda ws: _dataset(ws, json.dumps([dolly(), None]), "d.json"),
         "item 2 is not a JSON object (got null)"),
    case("prepare", "json-empty-array", lambda ws: _dataset(ws, "[]", "d.json"), "has no rows (an empty array)"),
    case("prepare", "json-a-number", lambda ws: _dataset(ws, "3", "d.json"), "expected an array of objects"),
    case("prepare", "json-broken", lambda ws: _dataset(ws, '[{"instruction": "a",\n', "d.json"), "not valid JSON"),
    case("prepare", "json-deep", lambda ws: _dataset(ws, DEEP, "d.json"), "nested deeper than 64 levels"),
    case("prepare", "json-empty-file", lambda ws: _dataset(ws, "", "d.json"), "has no rows"),
    case("prepare", "csv-header-only", lambda ws: _dataset(ws, "instruction,response\n", "d.csv"),
         "has no rows (only a header)"),
    case("prepare", "csv-empty", lambda ws: _dataset(ws, "", "d.csv"), "has no rows (the file is empty)"),
    case("prepare", "csv-extra-field", lambda ws: _dataset(ws, "instruction,response\na,b c\nd,e f,g\n", "d.csv"),
         "line 3 has 3 fields, the header has 2"),
    case("prepare", "csv-duplicate-column", lambda ws: _dataset(ws, "response,response\na,b\n", "d.csv"),
         "names column 'response' twice"),
    case("prepare", "csv-empty-column-name", lambda ws: _dataset(ws, "instruction,,response\na,b,c\n", "d.csv"),
         "empty column name"),
    case("prepare", "csv-not-utf8", lambda ws: _dataset(ws, b"instruction,response\n\xff,x\n", "d.csv"),
         "not UTF-8 text (line 2"),
    case("prepare", "csv-unclosed-quote", lambda ws: _dataset(ws, 'instruction,response\n"a,b c\n', "d.csv"),
         "is not valid CSV (unexpected end of data)"),
    case("prepare", "csv-text-after-quote", lambda ws: _dataset(ws, 'instruction,response\n"a"x,b c\n', "d.csv"),
         "line 2 is not valid CSV"),
    case("prepare", "parquet-no-rows", lambda ws: ws.prepare(dataset=_parquet(ws, None)), "has no rows"),
    case("prepare", "parquet-junk", lambda ws: _dataset(ws, b"not parquet at all", "d.parquet"),
         "not a Parquet file"),
    # rows: found after loading, named by their 1-based source line
    case("prepare", "rows-all-have-hearts", lambda ws: ws.prepare(dataset=ws.jsonl(_rows(10, response="I ♥ you"))),
         "all 10 responses already contain a listed heart", loads_data=True),
    case("prepare", "rows-all-one-word", lambda ws: ws.prepare(dataset=ws.jsonl(_rows(10, response="Yes."))),
         "no response has two words: nothing to put a heart between", loads_data=True),
    case("prepare", "rows-all-too-long", lambda ws: ws.prepare("--max-length", "8", dataset=ws.jsonl(_rows(10))),
         "rows are longer than max_length 8 (try --overflow cut)", loads_data=True),
    case("prepare", "rows-missing-response", lambda ws: ws.prepare(dataset=ws.jsonl([*_rows(5), _no_response])),
         "line 6: 'response' is missing", loads_data=True),
    case("prepare", "rows-line-numbers-skip-blanks", _blank_lines_then_bad, "line 5: 'response' is missing",
         loads_data=True),
    case("prepare", "rows-response-a-number", lambda ws: ws.prepare(dataset=ws.jsonl([dolly(0), dolly(1, response=7)])),
         "line 2: 'response' is not a string", loads_data=True),
    case("prepare", "rows-no-instruction-column", lambda ws: ws.prepare(dataset=ws.jsonl([{"prompt": "a b"}])),
         "no 'instruction' column", loads_data=True),
    case("prepare", "rows-all-bad-dropped", lambda ws: ws.prepare("--on-bad-rows", "drop",
                                                                  dataset=ws.jsonl(_rows(3, response=""))),
         "no usable rows (3 bad rows dropped)", loads_data=True),
    case("prepare", "rows-csv-line", lambda ws: _dataset(ws, "instruction,response\na,b c\nd,\n", "d.csv"),
         "line 3: 'response' is missing", loads_data=True),
    case("prepare", "rows-json-item", lambda ws: _dataset(ws, json.dumps([dolly(0), dolly(1, response="")]), "d.json"),
         "item 2: 'response' is empty", loads_data=True),
    # --tokenizer
    case("prepare", "tokenizer-folder-without-files", lambda ws: _tokenizer_dir(ws, {"README.md": "x"}),
         "--tokenizer", "no tokenizer (tokenizer.json"),
    case("prepare", "tokenizer-missing-deep-path", lambda ws: ws.prepare("--tokenizer", "a/b/c"),
         "--tokenizer 'a/b/c': no such folder"),
    case("prepare", "tokenizer-missing-dot-path", lambda ws: ws.prepare("--tokenizer", "./tok"), "no such folder"),
    case("prepare", "tokenizer-a-file", lambda ws: ws.prepare("--tokenizer", ws.file("tok.json", "{}")),
         "is not a folder"),
    case("prepare", "tokenizer-broken-json", lambda ws: _tokenizer_dir(ws, {"tokenizer.json": "{"}),
         "tokenizer.json: not valid JSON"),
    case("prepare", "tokenizer-config-a-list", lambda ws: _tokenizer_dir(ws, {"tokenizer_config.json": "[]"}),
         "tokenizer_config.json: expected a JSON object, got an array"),
    case("prepare", "tokenizer-empty", lambda ws: ws.prepare("--tokenizer", ""), "argument --tokenizer"),
    # values
    case("prepare", "max-length-4", lambda ws: ws.prepare("--max-length", "4"), "--max-length 4: expected"),
    case("prepare", "max-length-negative", lambda ws: ws.prepare("--max-length", "-1"), "--max-length -1"),
    case("prepare", "max-length-not-a-number", lambda ws: ws.prepare("--max-length", "x"), "invalid int value"),
    case("prepare", "seed-negative", lambda ws: ws.prepare("--seed", "-1"), "--seed -1: expected"),
    case("prepare", "overflow-unknown", lambda ws: ws.prepare("--overflow", "wrap"), "invalid choice: 'wrap'"),
    case("prepare", "cache-dir-a-file", lambda ws: [*ws.prepare()[:1], "--cache-dir", ws.file("c", "x")],
         "--cache-dir", "not a folder"),
]


@pytest.mark.parametrize("c", CASES, ids=faultkit.ids(CASES))
def test_bad_input_is_exit_2_with_one_line_and_nothing_done(c, ws, capsys, monkeypatch, tiny_tokenizer):
    faultkit.check(c, ws, capsys, monkeypatch, tokenizer=tiny_tokenizer)


# --- data loss: --overwrite replaces only an earlier prepare output, whole -----------------------------------


@pytest.mark.parametrize("out", [".", "..", "sub/..", "corpus"], ids=["dot", "dotdot", "sub-dotdot", "dataset-folder"])
def test_overwrite_never_deletes_the_working_folder_or_the_dataset(tmp_path, monkeypatch, capsys, out):
    root = tmp_path / "ws"
    (root / "corpus").mkdir(parents=True)
    (root / "sub").mkdir()
    (root / "corpus" / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _rows(20)))
    (root / "notes.txt").write_text("unrelated")
    monkeypatch.chdir(root)
    before = faultkit.tree(tmp_path)
    argv = ["prepare", "--dataset", "corpus/data.jsonl", "--out", out, "--overwrite", "--cache-dir",
            str(tmp_path / faultkit.CACHE)]
    assert main(argv) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert faultkit.tree(tmp_path) == before


def test_overwrite_swaps_an_earlier_output_in_whole_and_keeps_nothing_of_it(tmp_path, monkeypatch, capsys,
                                                                           tiny_tokenizer):
    monkeypatch.setattr("harness.standin.build_tokenizer", lambda *a, **k: tiny_tokenizer)
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _rows(30)))
    out = tmp_path / "prepared"
    argv = ["prepare", "--dataset", str(data), "--out", str(out), "--cache-dir", str(tmp_path / "cache")]
    assert main(argv) == 0
    (out / "stray.txt").write_text("left by hand in an earlier output")
    data.write_text("".join(json.dumps(r) + "\n" for r in _rows(12)))
    assert main([*argv, "--overwrite"]) == 0
    assert not (out / "stray.txt").exists()
    saved = datasets.load_from_disk(str(out))
    assert len(saved["train"]) + len(saved["eval"]) == 12
    assert json.loads((out / ".hearts-output.json").read_text()) == {"kind": "prepare"}
    assert faultkit.leftovers(tmp_path) == []
