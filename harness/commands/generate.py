"""``hearts generate``: answer prompts with a merged model (or base + adapter) and write JSONL."""

from __future__ import annotations

import argparse
from pathlib import Path

from harness import inputs
from harness.commands.options import check_prompts
from harness.config import GenerationConfig, build
from harness.errors import InputError

HELP = "generate answers (greedy by default) for the held-out prompts or a prompts file; write JSONL"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--model", type=inputs.text_arg, required=True,
        help="a merged model folder (or the base, with --adapter: a folder, a Hub id or 'tiny')")
    add("--adapter", type=inputs.path_arg, default=None, help="apply this adapter to --model first (default: none)")
    add("--prompts", default="bundled", type=inputs.text_arg,
        help="'bundled' (the held-out evaluation prompts, default) or a .jsonl/.json/.csv/.parquet file")
    add("--out", type=inputs.path_arg, required=True,
        help="JSONL file to write (prompt, response, new_tokens, terminated)")
    add("--max-new-tokens", type=int, default=None, help="per answer (default: 320)")
    add("--batch-size", type=int, default=None, help="prompts per batch (default: 16)")
    add("--sample", action="store_true", help="seeded sampling instead of greedy decoding")
    add("--seed", type=int, default=None, help="sampling seed (default: 0)")
    add("--artifacts-dir", type=inputs.path_arg, default=Path(".hearts-cache"),
        help="where a stand-in --model is built and cached (default: ./.hearts-cache)")


def run(args: argparse.Namespace) -> int:
    cfg = build(GenerationConfig, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                do_sample=args.sample or None, seed=args.seed)
    local = _check_model(args)
    inputs.check_out_file(args.out, "--out", protect=[p for p in (Path(args.prompts), local, args.adapter) if p])
    check_prompts(args.prompts)
    if args.artifacts_dir.exists() and not args.artifacts_dir.is_dir():
        raise InputError(f"--artifacts-dir {args.artifacts_dir}: exists and is not a folder")

    from harness import data, generate, merge, model
    from harness.staging import output_errors

    records = data.load_eval_prompts(args.prompts)
    resolved = model.resolve_base(args.model, args.artifacts_dir)
    tokenizer = model.load_tokenizer(_tokenizer_source(args.adapter, resolved))  # before the weights: cheaper
    lm = model.load_base(resolved, model.compute_dtype())
    if args.adapter is not None:
        lm = merge.apply_adapter(lm, args.adapter)
    results = generate.generate(lm, tokenizer, generate.prompts_for(records), cfg, progress=True)
    with output_errors("--out", args.out):
        generate.write_jsonl(args.out, [{"instruction": r["instruction"], **g.to_dict()}
                                        for r, g in zip(records, results, strict=True)])
    done = sum(g.terminated for g in results)
    print(f"{len(results)} answers ({done} stopped at EOS) written to {args.out}")
    return 0


def _check_model(args: argparse.Namespace) -> Path | None:
    """``--model`` (and ``--adapter``) before anything loads; returns the local model folder, if it is one."""
    if args.adapter is not None:
        inputs.check_adapter_dir(args.adapter, "--adapter", safetensors_only=False)
    local = inputs.check_base_model(args.model, "--model")
    if local is not None:
        has_tokenizer = args.adapter is not None and _has_tokenizer(args.adapter)
        inputs.check_model_dir(local, "--model", tokenizer=not has_tokenizer,
                               weights=("*.safetensors", "pytorch_model*.bin"))
    return local


def _has_tokenizer(folder: Path) -> bool:
    return any((folder / name).is_file() for name in inputs.TOKENIZER_FILES)


def _tokenizer_source(adapter: Path | None, resolved: Path | str) -> Path | str:
    return adapter if adapter is not None and _has_tokenizer(adapter) else resolved
