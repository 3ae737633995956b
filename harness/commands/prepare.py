"""``hearts prepare``: load, validate, split, sprinkle and tokenise a dataset; print the counts; save it."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from harness.errors import InputError

HELP = "prepare the training data (validate, hold out, add hearts, tokenise) and print its statistics"
STATS_FILE = "prepare_stats.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--dataset", default="bundled",
        help="'bundled' (default), a Hub dataset id, a folder or a .jsonl/.json/.parquet/.csv file")
    add("--tokenizer", default=None,
        help="a model id or path whose tokenizer to use (default: the tiny stand-in's)")
    add("--out", default=None, type=Path,
        help="save the prepared train/eval DatasetDict into this folder (default: only print the statistics)")
    add("--overwrite", action="store_true", help="replace a non-empty --out (default: refuse)")
    add("--max-length", type=int, default=None, help="tokens per example with prompt and EOS (default: 512)")
    add("--overflow", choices=["drop", "cut"], default="drop",
        help="a too-long row is dropped (default) or cut after a whole word of its response")
    add("--on-bad-rows", choices=["error", "drop"], default=None,
        help="stop on a bad row (default) or drop bad rows and count them")
    add("--loss-on", choices=["response", "all"], default=None,
        help="learn the response only (default) or the whole text")
    add("--seed", type=int, default=None, help="heart choice and held-out split (default: 1234)")
    add("--cache-dir", default=None, help="datasets cache folder (default: the datasets library's own)")


def run(args: argparse.Namespace) -> int:
    import datasets

    from harness import data
    from harness.config import DataConfig, build

    datasets.disable_progress_bars()  # one line per problem on stderr, no bars
    out = _check_out(args.out, args.overwrite) if args.out is not None else None
    cfg = build(DataConfig, source=args.dataset, max_length=args.max_length, on_bad_rows=args.on_bad_rows,
                loss_on=args.loss_on, seed=args.seed)
    tokenizer = _tokenizer(args.tokenizer)
    prepared = data.prepare(cfg, tokenizer, overflow=args.overflow, cache_dir=args.cache_dir)
    if out is not None:
        _save(prepared, out)
    print(format_stats(prepared.stats))
    if out is not None:
        print(f"saved to {out}")
    return 0


def _check_out(out: Path, overwrite: bool) -> Path:
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {str(out)!r}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise InputError(f"--out {str(out)!r}: folder exists and is not empty (--overwrite replaces it)")
    return out


def _tokenizer(name: str | None) -> Any:
    if name is None:
        from harness.standin import build_tokenizer, bundled_plain_texts

        return build_tokenizer(bundled_plain_texts())
    from harness.model import load_tokenizer  # AutoTokenizer, trust_remote_code off, pad set to unk if needed

    path = Path(name).expanduser()
    try:
        return load_tokenizer(path if path.exists() else name)
    except OSError as err:
        raise InputError(f"--tokenizer {name!r}: cannot load ({' '.join(str(err).split())[:200]})") from None


def _save(prepared: Any, out: Path) -> None:
    """Write into a temp folder beside ``out`` and rename it into place, so ``out`` is never half-written."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".tmp-{out.name}-{uuid.uuid4().hex[:8]}"  # save_to_disk creates it
    try:
        prepared.as_dataset_dict().save_to_disk(str(tmp))
        (tmp / STATS_FILE).write_text(json.dumps(prepared.stats, indent=2, ensure_ascii=False))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def format_stats(stats: dict[str, Any]) -> str:
    """The statistics as a two-column table; the per-heart counts as one row each."""
    rows: list[tuple[str, str]] = []
    for key, value in stats.items():
        if isinstance(value, dict):
            rows += [(f"{key} {name}", str(count)) for name, count in value.items()]
        else:
            rows.append((key, f"{value:,}" if isinstance(value, int) else str(value)))
    width = max(len(k) for k, _ in rows)
    vwidth = max(len(v) for _, v in rows)
    return "\n".join(f"{k:<{width}}  {v:>{vwidth}}" for k, v in rows)
