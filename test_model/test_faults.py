"""Malformed input through the CLI: exit 2, one stderr line naming the input and the problem, nothing written.

Each case builds its bad input in a fresh folder next to a valid release (a passing report, a merged model
and an adapter) and returns the command line. The folder's whole tree is compared before and after, so a
case that leaves a temp file, a half-written report or a partial staging folder fails.
"""

from __future__ import annotations

import copy
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from harness import hub
from harness.cli import main
from harness.report import write_report
from test_model.test_hub import build_release
from test_model.test_report import eval_prompts, make_report


@pytest.fixture(scope="module")
def passing_report() -> dict[str, Any]:
    return make_report()


@pytest.fixture(scope="module")
def written(tmp_path_factory, passing_report) -> Path:
    return write_report(tmp_path_factory.mktemp("written"), passing_report).parent


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """No case may reach the Hub, and none has a token unless it sets one."""
    def refuse(*args, **kwargs):
        raise AssertionError("a fault case reached the network boundary")

    monkeypatch.setattr(hub.HfApi, "create_repo", refuse)
    monkeypatch.setattr(hub.HfApi, "upload_folder", refuse)
    monkeypatch.delenv("HF_TOKEN", raising=False)


@dataclass
class Workspace:
    root: Path
    report: dict[str, Any]
    release: dict[str, Path]

    def file(self, name: str, content: str | bytes) -> str:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
        return str(path)

    def bad_report(self, mutate: Callable[[dict[str, Any]], Any], name: str = "bad.json") -> str:
        report = copy.deepcopy(self.report)
        mutate(report)
        return self.file(name, json.dumps(report))  # json.dumps writes NaN / Infinity as given

    def gate(self, report: str | None = None, *extra: str) -> list[str]:
        return ["gate", "--report", report or str(self.release["report"]), *extra]

    def upload(self, *extra: str, dry_run: bool = True, model: bool = True) -> list[str]:
        argv = ["upload", "--report", str(self.release["report"]), "--repo-id", "lab/hearts",
                "--adapter", str(self.release["adapter"])]
        argv += ["--model", str(self.release["model"])] if model else []
        argv += ["--dry-run", str(self.root / "stage")] if dry_run else []
        return argv + list(extra)

    def config(self, text: str, name: str = "gate.toml") -> list[str]:
        return self.gate(None, "--config", self.file(name, text))

    def benches(self, new: Any, old: Any) -> list[str]:
        files = [self.file(name, p if isinstance(p, str) else json.dumps(p))
                 for name, p in (("new.json", new), ("old.json", old))]
        return self.gate(None, "--bench", files[0], "--baseline-bench", files[1])

    def stage_at(self, path: str) -> list[str]:
        return [*self.upload()[:-1], path]


def _bench(**per_s: float) -> dict[str, Any]:
    benches = [{"name": n, "stats": {}, "extra_info": {"tokens_per_s": v}} for n, v in per_s.items()]
    return {"benchmarks": benches}


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """Mutation setting a dotted key (``metrics.in_list.rate``); ``...`` deletes it."""
    def mutate(report: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        holder: Any = report
        for key in parents:
            holder = holder[int(key)] if key.isdigit() else holder[key]
        if value is ...:
            del holder[last]
        else:
            holder[last] = value
    return mutate


def _with_merged_path_null(ws: Workspace) -> list[str]:
    report = copy.deepcopy(ws.report)
    report["model"]["merged_path"] = None
    write_report(ws.release["report"].parent, report)
    return ws.upload(model=False)


def _unrelated_baseline(ws: Workspace) -> list[str]:
    other = make_report(10, prompts=eval_prompts(10, offset=5000))
    return ws.gate(None, "--baseline", ws.file("old.json", json.dumps(other)))


def _model_without_tokenizer(ws: Workspace) -> list[str]:
    for tokenizer_file in ws.release["model"].glob("tokenizer*"):
        tokenizer_file.unlink()
    return ws.upload()


def _model_without_weights(ws: Workspace) -> list[str]:
    (ws.release["model"] / "model.safetensors").unlink()
    return ws.upload()


# (id, argv builder, the input's name as the line must show it, the problem)
CASES: list[tuple[str, Callable[[Workspace], list[str]], str, str]] = [
    # report files
    ("report-missing", lambda ws: ws.gate(str(ws.root / "absent.json")), "absent.json", "No such file"),
    ("report-empty", lambda ws: ws.gate(ws.file("bad.json", "")), "bad.json", "file is empty"),
    ("report-not-json", lambda ws: ws.gate(ws.file("bad.json", "{metrics: ")), "bad.json", "not valid JSON"),
    ("report-not-utf8", lambda ws: ws.gate(ws.file("bad.json", b"\xff\xfe{}")), "bad.json", "not UTF-8"),
    ("report-a-list", lambda ws: ws.gate(ws.file("bad.json", "[]")), "bad.json",
     "the top level must be a JSON object, got a list"),
    ("report-a-folder", lambda ws: ws.gate(str(ws.release["report"].parent)), "eval", "Is a directory"),
    ("missing-ci-low", lambda ws: ws.gate(ws.bad_report(_set("metrics.single_emoji.ci_low", ...))),
     "bad.json", "metrics.single_emoji.ci_low is missing"),
    ("missing-samples", lambda ws: ws.gate(ws.bad_report(_set("samples", ...))), "bad.json",
     "samples is missing"),
    ("missing-control", lambda ws: ws.gate(ws.bad_report(_set("control", ...))), "bad.json",
     "control is missing"),
    ("nan-rate", lambda ws: ws.gate(ws.bad_report(_set("metrics.in_list.rate", math.nan))), "bad.json",
     "metrics.in_list.rate is NaN"),
    ("infinite-bound", lambda ws: ws.gate(ws.bad_report(_set("metrics.malformed.ci_high", math.inf))),
     "bad.json", "metrics.malformed.ci_high is Infinity"),
    ("n-zero", lambda ws: ws.gate(ws.bad_report(_set("metrics.terminated.n", 0))), "bad.json",
     "metrics.terminated.n is 0"),
    ("k-above-n", lambda ws: ws.gate(ws.bad_report(_set("metrics.single_emoji.k", 401))), "bad.json",
     "metrics.single_emoji.k = 401 exceeds metrics.single_emoji.n = 400"),
    ("rate-above-one", lambda ws: ws.gate(ws.bad_report(_set("metrics.template_leak.ci_high", 1.5))),
     "bad.json", "metrics.template_leak.ci_high = 1.5 is outside [0, 1]"),
    ("bool-count", lambda ws: ws.gate(ws.bad_report(_set("control.metrics.single_emoji.k", True))),
     "bad.json", "control.metrics.single_emoji.k must be a non-negative integer, got a boolean"),
    ("string-rate", lambda ws: ws.gate(ws.bad_report(_set("metrics.in_list.rate", "1.0"))), "bad.json",
     "metrics.in_list.rate must be a number, got a string"),
    ("samples-truncated", lambda ws: ws.gate(ws.bad_report(lambda r: r["samples"].pop())), "bad.json",
     "samples has 399 entries but metrics.single_emoji.n is 400"),
    ("verdict-flag-a-string", lambda ws: ws.gate(ws.bad_report(_set("samples.5.verdict.in_list", "yes"))),
     "bad.json", "samples[5].verdict.in_list must be true/false, got a string"),
    ("unknown-schema", lambda ws: ws.gate(ws.bad_report(_set("schema", 2))), "bad.json",
     "schema 2 is not supported"),
    # gate configs
    ("config-unknown-key", lambda ws: ws.config("[gate]\nsingle = 0.9\n"), "gate.toml",
     "unknown key 'single'"),
    ("config-wrong-type", lambda ws: ws.config("[gate]\nin_list = '1'\n"), "gate.toml",
     "GateConfig.in_list: expected a finite number"),
    ("config-broken-toml", lambda ws: ws.config("[gate\nin_list="), "gate.toml", "not valid TOML"),
    ("config-gate-not-a-table", lambda ws: ws.config("gate = 3\n"), "gate.toml", "[gate] is not a table"),
    ("config-out-of-range", lambda ws: ws.config("[gate]\nmalformed = -1\n"), "gate.toml",
     "expected a rate in [0, 1]"),
    ("config-missing", lambda ws: ws.gate(None, "--config", str(ws.root / "absent.toml")), "absent.toml",
     "no such config file"),
    ("pyproject-unknown-key", lambda ws: ws.config("[tool.hearts.gate]\nspeed = 1\n", "pyproject.toml"),
     "pyproject.toml", "unknown key 'speed'"),
    # baseline reports
    ("baseline-no-shared-prompts", _unrelated_baseline, "old.json", "no prompts shared with"),
    ("baseline-malformed", lambda ws: ws.gate(None, "--baseline", ws.bad_report(_set("hearts", ...), "o.j")),
     "o.j", "hearts is missing"),
    # benchmark JSON
    ("bench-not-json", lambda ws: ws.benches("{", _bench(t=1.0)), "new.json", "not valid JSON"),
    ("bench-no-list", lambda ws: ws.benches({"benchmarks": {}}, _bench(t=1.0)), "new.json",
     "'benchmarks' list"),
    ("bench-negative-rate", lambda ws: ws.benches(_bench(t=1.0), _bench(t=-3.0)), "old.json",
     "benchmarks[0].extra_info.tokens_per_s must be a positive number"),
    ("bench-nothing-in-common", lambda ws: ws.benches(_bench(a=1.0), _bench(b=1.0)), "new.json",
     "no benchmark with a *_per_s value"),
    ("bench-without-baseline", lambda ws: ws.gate(None, "--bench", ws.file("new.json", "{}")), "--bench",
     "go together"),
    # upload: staging, repo ids, model folders, token
    ("staging-not-empty", lambda ws: (ws.file("stage/old.txt", "x"), ws.upload())[1], "stage",
     "folder exists and is not empty"),
    ("staging-a-file", lambda ws: (ws.file("stage", "x"), ws.upload())[1], "stage",
     "exists and is not a folder"),
    ("staging-under-a-file", lambda ws: ws.stage_at(ws.file("file.txt", "x") + "/sub"), "file.txt/sub",
     "cannot create the staging folder"),
    ("repo-id-three-parts", lambda ws: ws.upload("--repo-id", "a/b/c"), "--repo-id 'a/b/c'", "not a valid"),
    ("repo-id-double-dash", lambda ws: ws.upload("--repo-id", "lab/a--b"), "'lab/a--b'", "not a valid"),
    ("repo-id-leading-dot", lambda ws: ws.upload("--repo-id", ".hidden"), "'.hidden'", "not a valid"),
    ("repo-id-too-long", lambda ws: ws.upload("--repo-id", "x" * 97), "'xxxx", "not a valid"),
    ("repo-id-empty", lambda ws: ws.upload("--repo-id", ""), "--repo-id ''", "not a valid"),
    ("model-dir-missing", lambda ws: ws.upload("--model", str(ws.root / "nowhere")), "nowhere",
     "no such folder"),
    ("model-dir-without-weights", _model_without_weights, "merged", "no *.safetensors weights"),
    ("model-dir-without-tokenizer", _model_without_tokenizer, "merged", "no tokenizer"),
    ("adapter-without-config", lambda ws: ws.upload("--adapter", str(ws.release["model"])), "merged",
     "no adapter_config.json"),
    ("merged-path-null", _with_merged_path_null, "--model", "model.merged_path is empty"),
    ("hf-token-missing", lambda ws: ws.upload(dry_run=False), "HF_TOKEN", "HF_TOKEN is not set"),
]


def _tree(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else None
            for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize(("build", "name", "problem"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_exits_2_with_one_line_naming_it_and_writes_nothing(tmp_path, written, passing_report,
                                                                       build, name, problem, capsys):
    ws = Workspace(tmp_path, passing_report, build_release(tmp_path, written))
    argv = build(ws)
    before = _tree(tmp_path)
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"hearts {argv[0]}: error: ")
    assert name in err and problem in err
    assert _tree(tmp_path) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder; file.txt/sub covers it")
def test_an_unwritable_staging_parent_exits_2_and_leaves_it_empty(tmp_path, written, passing_report, capsys):
    ws = Workspace(tmp_path, passing_report, build_release(tmp_path, written))
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        argv = ws.stage_at(str(locked / "stage"))
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "locked/stage: cannot create the staging folder" in err
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o700)
