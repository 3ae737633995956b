"""The shared battery of the fault suites (``test_faults*.py``): one bad input through the CLI, and what must hold.

A ``Case`` builds its bad input in a fresh workspace (the working folder of the command, next to a valid
release: a passing report, a merged-model-shaped folder and an adapter folder) and returns the command line.
``check`` runs it and asserts, for every case alike:

- exit 2, and stderr is exactly one line, ``hearts CMD: error: ...``, holding the case's fragments;
- no traceback, and nothing written, changed or deleted: the whole tree around the workspace (its parent
  included, for ``--out ..``) is compared byte for byte, and no ``.tmp-``/``.incomplete`` is left anywhere;
- no model or dataset work: the expensive entry points raise ``ExpensiveWork``, a BaseException, so neither
  the CLI's error handler nor ``data._load``'s ``except Exception`` can turn reaching one into a pass.
  ``datasets.load_dataset`` is allowed only for the cases marked ``loads_data`` (row-level problems, found
  after loading by design).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from harness.cli import COMMANDS, main
from harness.report import write_report
from test_model.test_hub import build_release
from test_model.test_report import make_report

DEEP = "[" * 5000 + "]" * 5000  # deeper than Python's recursion limit: the parser itself overflows
NESTED = "[" * 100 + "]" * 100  # within Python's limit, beyond the harness's MAX_DEPTH
CACHE = "hf-cache"  # the datasets cache of the loads_data cases: outside the compared tree


class ExpensiveWork(BaseException):
    """A fault case reached model or dataset work: the input should have been refused before it."""


@dataclass(frozen=True)
class Case:
    id: str
    argv: Callable[[Workspace], list[str]]
    fragments: tuple[str, ...]  # each must appear in the error line
    loads_data: bool = False  # the problem is in the rows, found after datasets has loaded the file

    @property
    def command(self) -> str:
        return self.id.split(":", 1)[0]


def case(command: str, name: str, argv: Callable[[Workspace], list[str]], *fragments: str,
         loads_data: bool = False) -> Case:
    return Case(f"{command}:{name}", argv, fragments, loads_data)


def ids(cases: Sequence[Case]) -> list[str]:
    return [c.id for c in cases]


@dataclass
class Workspace:
    root: Path  # the working folder of the command under test
    report: dict[str, Any]
    release: dict[str, Path]
    cache: Path = field(init=False)

    def __post_init__(self) -> None:
        self.cache = self.root.parent / CACHE

    def file(self, name: str, content: str | bytes) -> str:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        return str(path)

    def folder(self, name: str, files: dict[str, str | bytes] | None = None) -> str:
        (self.root / name).mkdir(parents=True, exist_ok=True)
        for inner, content in (files or {}).items():
            self.file(f"{name}/{inner}", content)
        return str(self.root / name)

    def jsonl(self, rows: Sequence[dict[str, Any] | str], name: str = "data.jsonl") -> str:
        return self.file(name, "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))

    def bad_report(self, mutate: Callable[[dict[str, Any]], Any], name: str = "bad.json") -> str:
        report = copy.deepcopy(self.report)
        mutate(report)
        return self.file(name, json.dumps(report))  # json.dumps writes NaN / Infinity as given

    def model(self, name: str = "base", *, config: str = '{"model_type": "llama"}', weights: bool = True,
              tokenizer: bool = True) -> str:
        """A folder shaped like a model (valid JSON everywhere), not loadable: it must be refused or unused."""
        files: dict[str, str | bytes] = {"config.json": config}
        if weights:
            files["model.safetensors"] = b"weights"
        if tokenizer:
            files["tokenizer.json"] = '{"version": "1.0"}'
        return self.folder(name, files)

    def adapter(self, name: str = "lora", *, config: str = '{"r": 8}', weights: bool = True) -> str:
        files: dict[str, str | bytes] = {"adapter_config.json": config}
        if weights:
            files["adapter_model.safetensors"] = b"lora"
        return self.folder(name, files)

    def marked(self, name: str, kind: str) -> str:
        """A folder an earlier hearts command of ``kind`` wrote."""
        return self.folder(name, {".hearts-output.json": json.dumps({"kind": kind}), "old.txt": "earlier output"})

    def gate(self, report: str | None = None, *extra: str) -> list[str]:
        return ["gate", "--report", report or str(self.release["report"]), *extra]

    def upload(self, *extra: str, dry_run: bool = True, model: bool = True) -> list[str]:
        argv = ["upload", "--report", str(self.release["report"]), "--repo-id", "lab/hearts",
                "--adapter", str(self.release["adapter"])]
        argv += ["--model", str(self.release["model"])] if model else []
        argv += ["--dry-run", str(self.root / "stage")] if dry_run else []
        return argv + list(extra)

    def stage_at(self, path: str) -> list[str]:
        return [*self.upload()[:-1], path]

    def gate_config(self, text: str | bytes, name: str = "gate.toml") -> list[str]:
        return self.gate(None, "--config", self.file(name, text))

    def benches(self, new: Any, old: Any) -> tuple[str, str]:
        """Two pytest-benchmark files: a str is written as is, anything else as JSON."""
        return tuple(self.file(name, p if isinstance(p, str | bytes) else json.dumps(p))  # type: ignore[return-value]
                     for name, p in (("new.json", new), ("old.json", old)))

    def bench(self, new: Any, old: Any, *extra: str, out: str = "cmp/bench.md") -> list[str]:
        files = self.benches(new, old)
        return ["bench", "--new", files[0], "--old", files[1], "--out", out, *extra]

    def prepare(self, *extra: str, dataset: str | None = None) -> list[str]:
        argv = ["prepare", "--cache-dir", str(self.cache)]
        return argv + (["--dataset", dataset] if dataset is not None else []) + list(extra)


def bench_run(**per_s: float) -> dict[str, Any]:
    """A pytest-benchmark JSON with one benchmark per keyword: mean 1 s, ``tokens_per_s`` as given."""
    return {"benchmarks": [{"name": n, "stats": {"mean": 1.0}, "extra_info": {"tokens_per_s": v}}
                           for n, v in per_s.items()]}


def dolly(i: int = 0, **fields: Any) -> dict[str, Any]:
    row = {"instruction": f"Name a colour of the rainbow, number {i}.", "context": "",
           "response": f"Red is one of them, and so is colour {i}.", "category": "open_qa"}
    row.update(fields)
    return {k: v for k, v in row.items() if v is not ...}


def set_key(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
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


# --- running a case -----------------------------------------------------------------------------------


def written_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    """A passing report and the folder it was written to (plots drawn once per module)."""
    report = make_report()
    return report, write_report(tmp_path_factory.mktemp("written"), report).parent


def workspace(tmp_path: Path, written: tuple[dict[str, Any], Path], monkeypatch: pytest.MonkeyPatch
              ) -> Workspace:
    root = tmp_path / "ws"
    root.mkdir()
    monkeypatch.chdir(root)  # relative defaults (.hearts-cache, out) land inside the compared tree
    monkeypatch.delenv("HF_TOKEN", raising=False)
    return Workspace(root, written[0], build_release(root, written[1]))


def forbid_expensive_work(monkeypatch: pytest.MonkeyPatch, cache: Path, *, loads_data: bool,
                          tokenizer: Any = None) -> None:
    """Every entry point to model, training, Hub or (unless ``loads_data``) dataset work raises ExpensiveWork."""
    import datasets
    import transformers
    from huggingface_hub import HfApi

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise ExpensiveWork("a fault case reached expensive work")

    targets = ["harness.standin.tiny_base", "harness.standin.shape_7b_base", "harness.standin.build_tiny",
               "harness.model._from_pretrained", "harness.train.adapter_for", "harness.train.train_adapter",
               "harness.merge.merge", "harness.merge.load_merged"]
    for target in targets:
        monkeypatch.setattr(target, refuse)
    monkeypatch.setattr(HfApi, "create_repo", refuse)
    monkeypatch.setattr(HfApi, "upload_folder", refuse)
    if loads_data:  # the stand-in tokenizer takes seconds to train: the session's copy stands in for it
        monkeypatch.setattr("harness.standin.build_tokenizer", lambda *a, **k: tokenizer)
        monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)  # not the user's cache
    else:
        monkeypatch.setattr(datasets, "load_dataset", refuse)
        monkeypatch.setattr("harness.standin.build_tokenizer", refuse)
        monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", refuse)


def tree(root: Path, skip: str = CACHE) -> dict[str, bytes | None]:
    """Every path under ``root`` (but ``skip``) with its bytes (None for a folder)."""
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else None
            for p in sorted(root.rglob("*")) if p.relative_to(root).parts[0] != skip}


def leftovers(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if p.name.startswith(".tmp-") or p.name.endswith(".incomplete"))


def check(c: Case, ws: Workspace, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
          tokenizer: Any = None) -> str:
    """Run one case and assert everything the module docstring lists; returns the error line."""
    argv = c.argv(ws)
    outer = ws.root.parent
    before = tree(outer)
    forbid_expensive_work(monkeypatch, ws.cache, loads_data=c.loads_data, tokenizer=tokenizer)
    capsys.readouterr()
    code = main(argv)
    out, err = capsys.readouterr()
    prefix = f"hearts {argv[0]}: error: " if argv and argv[0] in dict(COMMANDS) else "hearts: error: "
    assert (code, err.count("\n"), err[: len(prefix)]) == (2, 1, prefix), err
    assert "Traceback" not in err and "Traceback" not in out
    missing = [f for f in c.fragments if f not in err]
    assert not missing, f"{missing} not in {err!r}"
    assert tree(outer) == before, "the case changed the tree"
    assert leftovers(outer) == []
    return err

