"""``hearts upload``: re-check the gate, stage the release folder and push it to the Hugging Face Hub."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from harness.errors import InputError, warn
from harness.inputs import path_arg

HELP = "gate a report, then stage the merged model, adapter, report and model card and upload them to the Hub"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--report", required=True, type=path_arg, help="the report.json that must pass the gate")
    add("--repo-id", required=True, help="target Hub repo, 'namespace/name'")
    add("--model", type=path_arg, default=None, help="merged model folder (default: report's model.merged_path)")
    add("--adapter", type=path_arg, default=None, help="adapter folder (default: report's model.adapter_path)")
    add("--dry-run", type=path_arg, default=None, metavar="DIR",
        help="write the staged folder to DIR (absent or empty) and upload nothing (default: upload)")
    add("--private", action="store_true", help="create the repo private (default: public)")
    add("--config", type=path_arg, default=None,
        help="gate thresholds: TOML with [gate], or pyproject.toml's [tool.hearts.gate] (default: built-in)")


def run(args: argparse.Namespace) -> int:
    from harness import gate, hub
    from harness.report import load_report

    # Every input is checked before the gate runs: bad input is exit 2 whatever the report's numbers.
    repo_id = hub.check_repo_id(args.repo_id)
    token = None
    if args.dry_run is None:
        token = os.environ.get("HF_TOKEN", "").strip()  # the CLI reads the env; tests never set it
        if not token:
            raise InputError("HF_TOKEN is not set: export a Hub token with write access or use --dry-run DIR")
    else:
        hub.check_staging_dir(args.dry_run, _given(args))
    report = load_report(args.report)
    cfg = gate.load_config(args.config)
    model_dir = hub.check_model_dir(*_default(args.model, args.report, report, "merged_path", "--model"))
    adapter_dir = hub.check_adapter_dir(*_default(args.adapter, args.report, report, "adapter_path", "--adapter"))
    if args.dry_run is not None:
        hub.check_staging_dir(args.dry_run, [*_given(args), ("--model", model_dir), ("--adapter", adapter_dir)])
        if args.private:
            warn("--private has no effect with --dry-run: nothing is uploaded")

    result = gate.evaluate(report, cfg)
    print(result.table())
    print(result.summary())
    if not result.passed:
        print("hearts upload: the gate failed; nothing staged or uploaded", file=sys.stderr)
        return 1
    staging = dict(report=report, report_path=args.report, gate=result, repo_id=repo_id, model_dir=model_dir,
                   adapter_dir=adapter_dir)
    if args.dry_run is not None:
        staged = hub.stage(args.dry_run, **staging)
        n_files = sum(p.is_file() for p in staged.rglob("*"))
        print(f"staged {n_files} files in {staged}; nothing uploaded (dry run)")
        return 0
    assert token is not None
    with _scratch(model_dir) as tmp:
        staged = hub.stage(Path(tmp) / "release", link=True, flag="the staging folder", **staging)
        url = hub.push(staged, repo_id, token=token, private=args.private)
    print(f"uploaded to {repo_id}: {url}")
    return 0


def _scratch(model_dir: Path) -> tempfile.TemporaryDirectory[str]:
    """Beside the model where possible, so staging hard-links gigabytes of weights instead of copying them."""
    try:
        return tempfile.TemporaryDirectory(prefix=".hearts-upload-", dir=model_dir.resolve().parent)
    except OSError:
        return tempfile.TemporaryDirectory(prefix="hearts-upload-")


def _given(args: argparse.Namespace) -> list[tuple[str, Path | None]]:
    return [("--report", args.report), ("--config", args.config), ("--model", args.model),
            ("--adapter", args.adapter)]


def _default(given: Path | None, report_path: Path, report: dict[str, Any], key: str, flag: str
             ) -> tuple[Path, str]:
    """``(folder, how to name it in an error)``: the flag's value, else the report's path, which is read
    relative to the report's own folder (where ``hearts eval`` wrote it from) and then to this one."""
    if given is not None:
        return given, flag
    value = report["model"].get(key)
    src = f"report's model.{key} (from {report_path})"
    if value is None or value == "":
        raise InputError(f"{flag} not given and the report's model.{key} is empty")
    if not isinstance(value, str):
        raise InputError(f"{src} must be a string, got {type(value).__name__}; pass {flag}")
    path = Path(value).expanduser()
    candidates = [path] if path.is_absolute() else [report_path.parent / path, path]
    found = next((c for c in candidates if c.is_dir()), None)
    if found is None:
        raise InputError(f"report's model.{key} {value!r} (from {report_path}): no such folder; pass {flag}")
    return found, src
