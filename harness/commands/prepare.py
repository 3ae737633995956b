"""``hearts prepare``: load, validate, split, sprinkle and tokenise a dataset; print the counts; save it."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from harness import datafiles, inputs
from harness.errors import InputError

HELP = "prepare the training data (validate, hold out, add hearts, tokenise) and print its statistics"
STATS_FILE = "prepare_stats.json"
KIND = "prepare"  # the marker kind of a --out folder: only such a folder may be replaced, with --overwrite


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--dataset", default="bundled", type=inputs.text_arg,
        help="'bundled' (default), a Hub dataset id, a folder or a .jsonl/.json/.parquet/.csv file")
    add("--tokenizer", default=None, type=inputs.text_arg,
        help="a model id or path whose tokenizer to use (default: the tiny stand-in's)")
    add("--out", default=None, type=inputs.path_arg,
        help="save the prepared train/eval DatasetDict into this folder (default: only print the statistics)")
    add("--overwrite", action="store_true",
        help="replace --out when it holds an earlier `hearts prepare` output (default: refuse a non-empty --out)")
    add("--max-length", type=int, default=None, help="tokens per example with prompt and EOS (default: 512)")
    add("--overflow", choices=["drop", "cut"], default="drop",
        help="a too-long row is dropped (default) or cut after a whole word of its response")
    add("--on-bad-rows", choices=["error", "drop"], default=None,
        help="stop on a bad row (default) or drop bad rows and count them")
    add("--loss-on", choices=["response", "all"], default=None,
        help="learn the response only (default) or the whole text")
    add("--seed", type=int, default=None, help="heart choice and held-out split (default: 1234)")
    add("--cache-dir", default=None, type=inputs.path_arg,
        help="datasets cache folder (default: the datasets library's own)")


def run(args: argparse.Namespace) -> int:
    from harness.config import DataConfig, build
    from harness.staging import check_out_dir, replace_dir

    # Preflight, cheapest first: nothing is imported, loaded or built until every input has been checked.
    cfg = build(DataConfig, source=args.dataset, max_length=args.max_length, on_bad_rows=args.on_bad_rows,
                loss_on=args.loss_on, seed=args.seed)
    out: dict[str, Any] = {"flag": "--out", "kind": KIND, "overwrite": args.overwrite, "protect": _inputs(args),
                           "hint": " (--overwrite replaces an earlier hearts prepare output)"}
    if args.out is not None:
        check_out_dir(args.out, **out)
    if args.cache_dir is not None and args.cache_dir.exists() and not args.cache_dir.is_dir():
        raise InputError(f"--cache-dir {args.cache_dir}: exists and is not a folder")
    if args.dataset != "bundled":
        datafiles.check_dataset(args.dataset, f"dataset {args.dataset!r}")
    tokenizer = _tokenizer(args.tokenizer)

    import datasets

    from harness import data

    datasets.disable_progress_bars()  # one line per problem on stderr, no bars
    prepared = data.prepare(cfg, tokenizer, overflow=args.overflow, cache_dir=args.cache_dir)
    if args.out is not None:
        replace_dir(args.out, lambda tmp: _save(prepared, tmp), **out)
    print(format_stats(prepared.stats))
    if args.out is not None:
        print(f"saved to {args.out}")
    return 0


def _inputs(args: argparse.Namespace) -> list[tuple[str, Path | str | None]]:
    """What ``--out`` must stay apart from: it may neither be, hold, nor lie inside any of these."""
    return [("--dataset", args.dataset), ("--cache-dir", args.cache_dir), ("--tokenizer", args.tokenizer)]


def _tokenizer(name: str | None) -> Any:
    if name is None:
        from harness.standin import build_tokenizer, bundled_plain_texts

        return build_tokenizer(bundled_plain_texts())
    path = Path(name).expanduser()
    if path.exists():
        inputs.check_tokenizer_dir(path, "--tokenizer")
    elif datafiles.looks_like_path(name) or name.count("/") > 1:
        raise InputError(f"--tokenizer {name!r}: no such folder")

    from harness.model import load_tokenizer  # AutoTokenizer, trust_remote_code off, pad set to unk if needed

    return load_tokenizer(path if path.exists() else name, label=f"--tokenizer {name!r}")


def _save(prepared: Any, folder: Path) -> None:
    """The train/eval DatasetDict and the statistics, into the (temp) folder ``replace_dir`` hands over."""
    prepared.as_dataset_dict().save_to_disk(str(folder))
    (folder / STATS_FILE).write_text(json.dumps(prepared.stats, indent=2, ensure_ascii=False))


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
