"""``hearts upload``: re-check the gate, stage the release folder and push it to the Hugging Face Hub."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from harness.errors import InputError

HELP = "gate a report, then stage the merged model, adapter, report and model card and upload them to the Hub"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--report", required=True, type=Path, help="the report.json that must pass the gate")
    add("--repo-id", required=True, help="target Hub repo, 'namespace/name'")
    add("--model", type=Path, default=None, help="merged model folder (default: report's model.merged_path)")
    add("--adapter", type=Path, default=None, help="adapter folder (default: report's model.adapter_path)")
    add("--dry-run", type=Path, default=None, metavar="DIR",
        help="write the staged folder to DIR (absent or empty) and upload nothing (default: upload)")
    add("--private", action="store_true", help="create the repo private (default: public)")
    add("--config", type=Path, default=None,
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
        hub.check_staging_dir(args.dry_run)
    report = load_report(args.report)
    cfg = gate.load_config(args.config)
    model_dir = hub.check_model_dir(_default(args.model, report, "merged_path", "--model"))
    adapter_dir = hub.check_adapter_dir(_default(args.adapter, report, "adapter_path", "--adapter"))

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
        staged = hub.stage(Path(tmp) / "release", link=True, **staging)
        url = hub.push(staged, repo_id, token=token, private=args.private)
    print(f"uploaded to {repo_id}: {url}")
    return 0


def _scratch(model_dir: Path) -> tempfile.TemporaryDirectory[str]:
    """Beside the model where possible, so staging hard-links gigabytes of weights instead of copying them."""
    try:
        return tempfile.TemporaryDirectory(prefix=".hearts-upload-", dir=model_dir.resolve().parent)
    except OSError:
        return tempfile.TemporaryDirectory(prefix="hearts-upload-")


def _default(given: Path | None, report: dict[str, Any], key: str, flag: str) -> Path:
    if given is not None:
        return given
    value = report["model"].get(key)
    if not isinstance(value, str) or not value:
        raise InputError(f"{flag} not given and the report's model.{key} is empty")
    return Path(value)
