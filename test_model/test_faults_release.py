"""The release commands (gate, bench, upload) with bad input: reports, gate configs, benchmark runs, model and
adapter folders, staging folders. See ``faultkit`` for what every case must satisfy."""

from __future__ import annotations

import json
import math

import pytest

from harness.report import write_report
from test_model import faultkit
from test_model.faultkit import DEEP, NESTED, Workspace, bench_run, case, set_key
from test_model.test_report import eval_prompts, make_report


def _unrelated_baseline(ws: Workspace) -> list[str]:
    other = make_report(10, prompts=eval_prompts(10, offset=5000))
    return ws.gate(None, "--baseline", ws.file("old.json", json.dumps(other)))


def _rewrite_report(ws: Workspace, key: str, value: object) -> None:
    """The release's own report.json with ``model.KEY`` changed (the upload reads paths from it)."""
    report = json.loads(ws.release["report"].read_text())
    report["model"][key] = value
    write_report(ws.release["report"].parent, report)


def _report_path(key: str, value: object, *extra: str):
    def argv(ws: Workspace) -> list[str]:
        _rewrite_report(ws, key, value)
        flag = "--model" if key == "merged_path" else "--adapter"
        given = ws.upload(*extra)
        i = given.index(flag)
        return given[:i] + given[i + 2:]  # the flag left out: the report's path is used
    return argv


def _strip(folder_key: str, pattern: str):
    def argv(ws: Workspace) -> list[str]:
        for path in ws.release[folder_key].glob(pattern):
            path.unlink()
        return ws.upload()
    return argv


def _replace(folder_key: str, name: str, text: str):
    def argv(ws: Workspace) -> list[str]:
        (ws.release[folder_key] / name).write_text(text)
        return ws.upload()
    return argv


def _bad(ws: Workspace, path: str, value: object) -> list[str]:
    return ws.gate(ws.bad_report(set_key(path, value)))


ONE = bench_run(t=1.0)
PYPROJECT = "pyproject.toml"
GATE = [
    # report files
    case("gate", "report-missing", lambda ws: ws.gate(str(ws.root / "absent.json")), "absent.json", "No such file"),
    case("gate", "report-empty", lambda ws: ws.gate(ws.file("bad.json", "")), "bad.json: file is empty"),
    case("gate", "report-blank", lambda ws: ws.gate(ws.file("bad.json", " \n")), "file is empty"),
    case("gate", "report-not-json", lambda ws: ws.gate(ws.file("bad.json", "{metrics: ")), "not valid JSON"),
    case("gate", "report-not-utf8", lambda ws: ws.gate(ws.file("bad.json", b"\xff\xfe{}")), "not UTF-8"),
    case("gate", "report-a-list", lambda ws: ws.gate(ws.file("bad.json", "[]")),
         "the top level must be a JSON object, got a list"),
    case("gate", "report-a-folder", lambda ws: ws.gate(str(ws.release["report"].parent)), "eval", "Is a directory"),
    case("gate", "report-empty-string", lambda ws: ["gate", "--report", ""], "argument --report: expected a value"),
    case("gate", "report-not-given", lambda ws: ["gate"], "the following arguments are required: --report"),
    case("gate", "report-deep-nesting", lambda ws: ws.gate(ws.file("bad.json", DEEP)), "nested deeper than 64"),
    case("gate", "report-nesting-100", lambda ws: ws.gate(ws.bad_report(set_key("extra", json.loads(NESTED)))),
         "nested deeper than 64 levels"),
    case("gate", "report-duplicate-key", lambda ws: ws.gate(ws.file("bad.json", '{"schema": 1, "schema": 1}')),
         "duplicate key 'schema'"),
    case("gate", "report-int-beyond-64-bits", lambda ws: _bad(ws, "metrics.in_list.k", 2**70),
         "metrics.in_list.k is an integer beyond 64 bits"),
    case("gate", "missing-ci-low", lambda ws: _bad(ws, "metrics.single_emoji.ci_low", ...),
         "metrics.single_emoji.ci_low is missing"),
    case("gate", "missing-samples", lambda ws: _bad(ws, "samples", ...), "samples is missing"),
    case("gate", "missing-control", lambda ws: _bad(ws, "control", ...), "control is missing"),
    case("gate", "nan-rate", lambda ws: _bad(ws, "metrics.in_list.rate", math.nan), "metrics.in_list.rate is NaN"),
    case("gate", "infinite-bound", lambda ws: _bad(ws, "metrics.malformed.ci_high", math.inf),
         "metrics.malformed.ci_high is Infinity"),
    case("gate", "n-zero", lambda ws: _bad(ws, "metrics.terminated.n", 0), "metrics.terminated.n is 0"),
    case("gate", "n-huge", lambda ws: _bad(ws, "metrics.terminated.n", 2**40), "metrics.terminated.n = 1099511627776",
         "at most"),
    case("gate", "k-above-n", lambda ws: _bad(ws, "metrics.single_emoji.k", 401),
         "metrics.single_emoji.k = 401 exceeds metrics.single_emoji.n = 400"),
    case("gate", "rate-above-one", lambda ws: _bad(ws, "metrics.template_leak.ci_high", 1.5),
         "metrics.template_leak.ci_high = 1.5 is outside [0, 1]"),
    case("gate", "bool-count", lambda ws: _bad(ws, "control.metrics.single_emoji.k", True),
         "control.metrics.single_emoji.k must be a non-negative integer, got a boolean"),
    case("gate", "string-rate", lambda ws: _bad(ws, "metrics.in_list.rate", "1.0"),
         "metrics.in_list.rate must be a number, got a string"),
    case("gate", "confidence-high", lambda ws: _bad(ws, "metrics.in_list.confidence", "high"),
         "metrics.in_list.confidence must be a number, got a string"),
    case("gate", "confidence-null", lambda ws: _bad(ws, "metrics.single_emoji.confidence", None),
         "metrics.single_emoji.confidence must be a number, got null"),
    case("gate", "confidence-above-one", lambda ws: _bad(ws, "metrics.terminated.confidence", 1.5),
         "metrics.terminated.confidence = 1.5 is outside (0, 1)"),
    case("gate", "confidence-zero", lambda ws: _bad(ws, "metrics.terminated.confidence", 0),
         "metrics.terminated.confidence = 0 is outside (0, 1)"),
    case("gate", "confidence-one", lambda ws: _bad(ws, "control.metrics.single_emoji.confidence", 1),
         "control.metrics.single_emoji.confidence = 1 is outside"),
    case("gate", "confidence-a-boolean", lambda ws: _bad(ws, "metrics.in_list.confidence", True), "got a boolean"),
    case("gate", "samples-truncated", lambda ws: ws.gate(ws.bad_report(lambda r: r["samples"].pop())),
         "samples has 399 entries but metrics.single_emoji.n is 400"),
    case("gate", "verdict-flag-a-string", lambda ws: _bad(ws, "samples.5.verdict.in_list", "yes"),
         "samples[5].verdict.in_list must be true/false, got a string"),
    case("gate", "unknown-schema", lambda ws: _bad(ws, "schema", 2), "schema 2 is not supported"),
    # gate configs
    case("gate", "config-unknown-key", lambda ws: ws.gate_config("[gate]\nsingle = 0.9\n"), "unknown key 'single'"),
    case("gate", "config-chrf-above-100", lambda ws: ws.gate_config("[gate]\nretention_chrf = 150\n"),
         "gate.toml", "retention_chrf: expected a chrF in [0, 100]"),
    case("gate", "config-chrf-a-string", lambda ws: ws.gate_config("[gate]\nretention_chrf = 'high'\n"),
         "GateConfig.retention_chrf: expected a finite number"),
    case("gate", "config-nll-nan", lambda ws: ws.gate_config("[gate]\nretention_nll_increase = nan\n"),
         "retention_nll_increase: expected a finite number"),
    case("gate", "config-wrong-type", lambda ws: ws.gate_config("[gate]\nin_list = '1'\n"),
         "GateConfig.in_list: expected a finite number"),
    case("gate", "config-broken-toml", lambda ws: ws.gate_config("[gate\nin_list="), "gate.toml", "not valid TOML"),
    case("gate", "config-gate-not-a-table", lambda ws: ws.gate_config("gate = 3\n"), "[gate] is not a table"),
    case("gate", "config-out-of-range", lambda ws: ws.gate_config("[gate]\nmalformed = -1\n"),
         "expected a rate in [0, 1]"),
    case("gate", "config-missing", lambda ws: ws.gate(None, "--config", str(ws.root / "absent.toml")),
         "absent.toml", "no such config file"),
    case("gate", "config-not-utf8", lambda ws: ws.gate_config(b"[gate]\nin_list = 0.9 # \xe9t\xe9\n"),
         "gate.toml: not UTF-8 text (line 2"),
    case("gate", "config-a-folder", lambda ws: ws.gate(None, "--config", ws.folder("conf")), "is a folder"),
    case("gate", "config-deep", lambda ws: ws.gate_config("x = " + DEEP + "\n"), "nested too deeply"),
    case("gate", "pyproject-unknown-key", lambda ws: ws.gate_config("[tool.hearts.gate]\nspeed = 1\n", PYPROJECT),
         "pyproject.toml", "unknown key 'speed'"),
    case("gate", "pyproject-gate-not-a-table", lambda ws: ws.gate_config("[tool.hearts]\ngate = 1\n", PYPROJECT),
         "[tool.hearts.gate] is not a table"),
    # baseline reports
    case("gate", "baseline-no-shared-prompts", _unrelated_baseline, "old.json", "no prompts shared with"),
    case("gate", "baseline-malformed", lambda ws: ws.gate(None, "--baseline", ws.bad_report(set_key("hearts", ...),
                                                                                             "o.j")),
         "o.j", "hearts is missing"),
    case("gate", "baseline-missing", lambda ws: ws.gate(None, "--baseline", "old.json"), "old.json: cannot read"),
    case("gate", "baseline-deep", lambda ws: ws.gate(None, "--baseline", ws.file("old.json", DEEP)), "nested deeper"),
    # benchmark JSON
    case("gate", "bench-not-json", lambda ws: ws.gate(None, "--bench", *_pair(ws, "{", ONE)), "new.json",
         "not valid JSON"),
    case("gate", "bench-no-list", lambda ws: ws.gate(None, "--bench", *_pair(ws, {"benchmarks": {}}, ONE)),
         "'benchmarks' list"),
    case("gate", "bench-negative-rate", lambda ws: ws.gate(None, "--bench", *_pair(ws, ONE, bench_run(t=-3.0))),
         "old.json", "benchmarks[0].extra_info.tokens_per_s must be a positive number"),
    case("gate", "bench-nothing-in-common", lambda ws: ws.gate(None, "--bench", *_pair(ws, bench_run(a=1.0),
                                                                                        bench_run(b=1.0))),
         "no benchmark with a *_per_s value"),
    case("gate", "bench-duplicate-name", lambda ws: ws.gate(None, "--bench", *_pair(ws, _twice(), ONE)),
         "name 't' appears twice"),
    case("gate", "bench-deep", lambda ws: ws.gate(None, "--bench", *_pair(ws, DEEP, ONE)), "nested deeper"),
    case("gate", "bench-without-baseline", lambda ws: ws.gate(None, "--bench", ws.file("new.json", "{}")),
         "--bench", "go together"),
]


def _pair(ws: Workspace, new: object, old: object) -> list[str]:
    files = ws.benches(new, old)
    return [files[0], "--baseline-bench", files[1]]


def _twice() -> dict:
    run = bench_run(t=1.0)
    return {"benchmarks": run["benchmarks"] * 2}


BENCH = [
    case("bench", "new-missing", lambda ws: ["bench", "--new", "n.json", "--old", ws.benches(ONE, ONE)[1],
                                             "--out", "b.md"], "n.json: cannot read (No such file"),
    case("bench", "new-not-utf8", lambda ws: ws.bench(b"\xff", ONE), "new.json: not UTF-8"),
    case("bench", "new-deep", lambda ws: ws.bench(DEEP, ONE), "new.json: nested deeper than 64 levels"),
    case("bench", "new-duplicate-key", lambda ws: ws.bench('{"benchmarks": [], "benchmarks": []}', ONE),
         "duplicate key 'benchmarks'"),
    case("bench", "new-nan", lambda ws: ws.bench('{"benchmarks": [], "x": NaN}', ONE), "x is NaN"),
    case("bench", "old-not-json", lambda ws: ws.bench(ONE, "{"), "old.json: not valid JSON"),
    case("bench", "old-empty", lambda ws: ws.bench(ONE, ""), "old.json: file is empty"),
    case("bench", "duplicate-name", lambda ws: ws.bench(_twice(), ONE), "name 't' appears twice"),
    case("bench", "mean-a-string", lambda ws: ws.bench({"benchmarks": [{"name": "t", "stats": {"mean": "fast"}}]},
                                                       ONE), "stats.mean must be a positive number"),
    case("bench", "extra-info-a-list", lambda ws: ws.bench({"benchmarks": [{"name": "t", "extra_info": []}]}, ONE),
         "benchmarks[0].extra_info must be an object"),
    case("bench", "nothing-in-common", lambda ws: ws.bench(bench_run(a=1.0), bench_run(b=1.0)),
         "no benchmark is also in"),
    case("bench", "out-not-markdown", lambda ws: ws.bench(ONE, ONE, out="b.png"), "ending in .md"),
    case("bench", "out-a-folder", lambda ws: ws.bench(ONE, ONE, out=ws.folder("b.md")), "--out", "is a folder"),
    case("bench", "plot-path-a-folder", lambda ws: (ws.folder("b.png"), ws.bench(ONE, ONE, out="b.md"))[1],
         "--out's plot", "is a folder"),
    case("bench", "out-under-a-file", lambda ws: ws.bench(ONE, ONE, out=ws.file("f", "x") + "/b.md"),
         "cannot write", "is a file, not a folder"),
    case("bench", "out-is-an-input", lambda ws: ["bench", "--new", ws.file("run.md", json.dumps(ONE)), "--old",
                                                 ws.benches(ONE, ONE)[1], "--out", "run.md"], "is also an input"),
    case("bench", "out-empty", lambda ws: ws.bench(ONE, ONE, out=""), "argument --out"),
    case("bench", "margin-above-one", lambda ws: ws.bench(ONE, ONE, "--margin", "1.5"), "--margin 1.5: expected"),
    case("bench", "margin-nan", lambda ws: ws.bench(ONE, ONE, "--margin", "nan"), "--margin nan"),
    case("bench", "margin-negative", lambda ws: ws.bench(ONE, ONE, "--margin", "-0.1"), "--margin -0.1"),
    case("bench", "margin-not-a-number", lambda ws: ws.bench(ONE, ONE, "--margin", "ten"), "invalid float value"),
    case("bench", "old-not-given", lambda ws: ["bench", "--new", "a.json", "--out", "b.md"],
         "the following arguments are required: --old"),
]

UPLOAD = [
    # staging folder: absent or empty, never an input, never the working folder
    case("upload", "staging-not-empty", lambda ws: (ws.file("stage/old.txt", "x"), ws.upload())[1], "stage",
         "folder exists and is not empty"),
    case("upload", "staging-a-file", lambda ws: (ws.file("stage", "x"), ws.upload())[1], "exists and is not a folder"),
    case("upload", "staging-under-a-file", lambda ws: ws.stage_at(ws.file("file.txt", "x") + "/sub"),
         "file.txt/sub", "cannot write", "file.txt is a file, not a folder"),
    case("upload", "staging-dot", lambda ws: ws.stage_at("."), "--dry-run .: is the working folder"),
    case("upload", "staging-dotdot", lambda ws: ws.stage_at(".."), "is the working folder"),
    case("upload", "staging-inside-model", lambda ws: ws.stage_at(str(ws.release["model"] / "stage")),
         "lies inside --model"),
    case("upload", "staging-holds-the-report", lambda ws: ws.stage_at(str(ws.release["report"].parent)),
         "holds --report"),
    case("upload", "staging-empty-string", lambda ws: ws.stage_at(""), "argument --dry-run: expected a value"),
    case("upload", "staging-a-symlink", lambda ws: ((ws.root / "s").symlink_to(ws.folder("real")),
                                                    ws.stage_at("s"))[1], "is a symbolic link"),
    # repo ids and the token
    case("upload", "repo-id-three-parts", lambda ws: ws.upload("--repo-id", "a/b/c"), "--repo-id 'a/b/c'",
         "not a valid"),
    case("upload", "repo-id-double-dash", lambda ws: ws.upload("--repo-id", "lab/a--b"), "'lab/a--b'", "not a valid"),
    case("upload", "repo-id-leading-dot", lambda ws: ws.upload("--repo-id", ".hidden"), "'.hidden'", "not a valid"),
    case("upload", "repo-id-too-long", lambda ws: ws.upload("--repo-id", "x" * 97), "'xxxx", "not a valid"),
    case("upload", "repo-id-empty", lambda ws: ws.upload("--repo-id", ""), "--repo-id ''", "not a valid"),
    case("upload", "hf-token-missing", lambda ws: ws.upload(dry_run=False), "HF_TOKEN is not set"),
    # model and adapter folders, given or read from the report
    case("upload", "model-dir-missing", lambda ws: ws.upload("--model", str(ws.root / "nowhere")), "nowhere",
         "no such folder"),
    case("upload", "model-dir-without-weights", _strip("model", "*.safetensors"), "merged", "no *.safetensors"),
    case("upload", "model-dir-without-tokenizer", _strip("model", "tokenizer*"), "merged", "no tokenizer"),
    case("upload", "model-config-broken", _replace("model", "config.json", "{"), "config.json: not valid JSON"),
    case("upload", "model-tokenizer-json-broken", _replace("model", "tokenizer.json", "[1,"), "tokenizer.json"),
    case("upload", "adapter-without-config", lambda ws: ws.upload("--adapter", str(ws.release["model"])), "merged",
         "no adapter_config.json"),
    case("upload", "adapter-config-a-list", _replace("adapter", "adapter_config.json", "[]"),
         "adapter_config.json: expected a JSON object, got an array"),
    case("upload", "adapter-without-safetensors", _strip("adapter", "*.safetensors"), "no adapter_model.safetensors"),
    case("upload", "merged-path-null", _report_path("merged_path", None), "--model",
         "model.merged_path is empty"),
    case("upload", "merged-path-a-number", _report_path("merged_path", 7), "model.merged_path", "must be a string",
         "pass --model"),
    case("upload", "merged-path-missing", _report_path("merged_path", "gone/merged"),
         "report's model.merged_path 'gone/merged' (from", "no such folder; pass --model"),
    case("upload", "adapter-path-missing", _report_path("adapter_path", "/no/such/adapter"),
         "model.adapter_path '/no/such/adapter'", "pass --adapter"),
    case("upload", "report-bad-confidence", lambda ws: [*ws.upload()[:2], ws.bad_report(
        set_key("metrics.in_list.confidence", "high")), *ws.upload()[3:]], "confidence must be a number"),
    case("upload", "report-deep", lambda ws: [*ws.upload()[:2], ws.file("r.json", DEEP), *ws.upload()[3:]],
         "nested deeper"),
    case("upload", "config-not-utf8", lambda ws: ws.upload("--config", ws.file("g.toml", b"\xff")), "not UTF-8"),
    case("upload", "report-not-given", lambda ws: ["upload", "--repo-id", "a/b"], "required: --report"),
]

ENV = [
    case("env", "lock-missing", lambda ws: ["env", "--lock", "nowhere.txt"], "--lock nowhere.txt: cannot read"),
    case("env", "lock-folder", lambda ws: ["env", "--lock", str(ws.root)], "cannot read (Is a directory)"),
    case("env", "lock-not-utf8", lambda ws: ["env", "--lock", ws.file("c.txt", b"torch==\xff")], "not UTF-8"),
    case("env", "lock-no-pins", lambda ws: ["env", "--lock", ws.file("c.txt", "torch>=2\n")],
         "no 'name==version' lines"),
    case("env", "lock-empty", lambda ws: ["env", "--lock", ""], "--lock", "expected a value"),
    case("env", "check-without-lock", lambda ws: ["env", "--check"], "--check", "give --lock too"),
]

def _judge(ws, answers: str | bytes, control: str | bytes | None = None, *extra: str) -> list[str]:
    good = json.dumps({"prompt": "p", "response": "a 💓 b"}) + "\n"
    return ["judge", "--answers", ws.file("answers.jsonl", answers), "--control",
            ws.file("control.jsonl", good if control is None else control), *extra]


ANSWER_LINE = json.dumps({"prompt": "p", "response": "a 💓 b"}) + "\n"

JUDGE = [
    case("judge", "answers-missing", lambda ws: ["judge", "--answers", "a.jsonl", "--control", "c.jsonl"],
         "--answers a.jsonl", "No such file"),
    case("judge", "answers-not-given", lambda ws: ["judge", "--control", "c.jsonl"], "required: --answers"),
    case("judge", "control-not-given", lambda ws: ["judge", "--answers", "a.jsonl"], "required: --control"),
    case("judge", "answers-empty", lambda ws: _judge(ws, ""), "answers.jsonl: no answers"),
    case("judge", "answers-not-utf8", lambda ws: _judge(ws, b"\xff\n"), "not UTF-8"),
    case("judge", "answers-null-line", lambda ws: _judge(ws, ANSWER_LINE + "null\n"),
         "line 2 is not a JSON object (got null)", "--skip-bad-lines"),
    case("judge", "answers-broken-json", lambda ws: _judge(ws, "{prompt\n"), "line 1 is not valid JSON"),
    case("judge", "answers-no-response", lambda ws: _judge(ws, '{"prompt": "p"}\n'), "has no 'response' string"),
    case("judge", "answers-response-a-number", lambda ws: _judge(ws, '{"prompt": "p", "response": 3}\n'),
         "has no 'response' string (got a number)"),
    case("judge", "answers-no-prompt", lambda ws: _judge(ws, '{"response": "a"}\n'),
         "neither a 'prompt' nor an 'instruction'"),
    case("judge", "answers-context-a-list", lambda ws: _judge(ws, '{"instruction": "i", "context": [], '
                                                                  '"response": "a"}\n'), "'context' that is not"),
    case("judge", "answers-terminated-a-string", lambda ws: _judge(ws, '{"prompt": "p", "response": "a", '
                                                                       '"terminated": "yes"}\n'), "'terminated'"),
    case("judge", "answers-tokens-negative", lambda ws: _judge(ws, '{"prompt": "p", "response": "a", '
                                                                   '"new_tokens": -1}\n'), "'new_tokens'"),
    case("judge", "answers-deep", lambda ws: _judge(ws, DEEP + "\n"), "nested deeper"),
    case("judge", "answers-duplicate-prompt", lambda ws: _judge(ws, ANSWER_LINE * 2), "answered more than once"),
    case("judge", "control-misses-a-prompt", lambda ws: _judge(ws, ANSWER_LINE, json.dumps(
        {"prompt": "q", "response": "a"}) + "\n"), "--control: no answer to 1 of the 1 prompts"),
    case("judge", "control-null-line", lambda ws: _judge(ws, ANSWER_LINE, "null\n"),
         "--control", "line 1 is not a JSON object"),
    case("judge", "prompts-missing", lambda ws: _judge(ws, ANSWER_LINE, None, "--prompts", "p.jsonl"),
         "eval prompts 'p.jsonl'"),
    case("judge", "out-a-file", lambda ws: _judge(ws, ANSWER_LINE, None, "--out", ws.file("o.txt", "x")),
         "--out", "not a folder"),
    case("judge", "out-is-answers-folder", lambda ws: _judge(ws, ANSWER_LINE, None, "--out", str(ws.root)),
         "--out"),
    case("judge", "gate-config-broken", lambda ws: _judge(ws, ANSWER_LINE, None, "--gate-config",
                                                          ws.file("g.toml", "[gate")), "not valid TOML"),
]

CASES = [*GATE, *BENCH, *UPLOAD, *ENV, *JUDGE]


@pytest.mark.parametrize("c", CASES, ids=faultkit.ids(CASES))
def test_bad_input_is_exit_2_with_one_line_and_nothing_staged(c, ws, capsys, monkeypatch):
    faultkit.check(c, ws, capsys, monkeypatch)
