"""Options shared by the model commands (train, merge, generate, eval, run) and the configs built from them."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from harness.config import (
    ConfigError,
    GenerationConfig,
    LoraSettings,
    MergeConfig,
    RunSettings,
    build,
    data_config,
    eval_config,
    load_toml,
    train_config,
)

TABLES = ("train", "lora", "data", "merge", "generation", "eval")


def add_model_options(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--base-model", default=None,
        help="'tiny' (default: the CPU stand-in), 'llama2-7b-shape', a Hub id or a local folder")
    add("--dataset", default=None, help="'bundled' (default), a Hub dataset id, a folder or a data file")
    add("--max-steps", type=int, default=None, help="QLoRA training steps (default: the base's preset)")
    add("--config", type=Path, default=None,
        help="a TOML file with [train], [lora], [data], [merge], [generation] and [eval] tables (default: none)")
    add("--artifacts-dir", type=Path, default=Path(".hearts-cache"),
        help="cache for stand-ins, adapters and merged models (default: ./.hearts-cache)")
    add("--retrain", action="store_true", help="train again even when the cache has this adapter")
    add("--merge-method", choices=["dequantized", "original"], default=None,
        help="merge into the dequantised NF4 weights the adapter was trained on (default) or the original ones")


def settings(args: argparse.Namespace) -> RunSettings:
    tables = _tables(args.config)
    base = args.base_model or tables["train"].get("base_model") or "tiny"
    return RunSettings(
        train=train_config(base, tables["train"], max_steps=args.max_steps),
        lora=build(LoraSettings, tables["lora"]),
        data=data_config(base, tables["data"], source=args.dataset),
        merge=build(MergeConfig, tables["merge"], method=args.merge_method),
        generation=build(GenerationConfig, tables["generation"]),
        eval=eval_config(base, tables["eval"], prompts=getattr(args, "prompts", None),
                         with_adapter=False if getattr(args, "skip_adapter", False) else None),
        artifacts=args.artifacts_dir,
        retrain=args.retrain,
    )


def _tables(path: Path | None) -> dict[str, dict[str, Any]]:
    if path is None:
        return {t: {} for t in TABLES}
    whole = load_toml(path, "")
    unknown = sorted(set(whole) - set(TABLES))
    if unknown:
        raise ConfigError(f"{path}: unknown table [{unknown[0]}] (known: {', '.join(TABLES)})")
    return {t: whole.get(t, {}) for t in TABLES}
