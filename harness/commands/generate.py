"""``hearts generate``: answer prompts with a merged model (or base + adapter) and write JSONL."""

from __future__ import annotations

import argparse
from pathlib import Path

from harness.config import GenerationConfig, build

HELP = "generate answers (greedy by default) for the held-out prompts or a prompts file; write JSONL"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--model", type=Path, required=True, help="a merged model folder (or the base, with --adapter)")
    add("--adapter", type=Path, default=None, help="apply this adapter to --model first (default: none)")
    add("--prompts", default="bundled",
        help="'bundled' (the held-out evaluation prompts, default) or a .jsonl/.json/.csv/.parquet file")
    add("--out", type=Path, required=True, help="JSONL file to write (prompt, response, new_tokens, terminated)")
    add("--max-new-tokens", type=int, default=None, help="per answer (default: 320)")
    add("--batch-size", type=int, default=None, help="prompts per batch (default: 16)")
    add("--sample", action="store_true", help="seeded sampling instead of greedy decoding")
    add("--seed", type=int, default=None, help="sampling seed (default: 0)")


def run(args: argparse.Namespace) -> int:
    from harness import data, generate, merge, model

    cfg = build(GenerationConfig, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                do_sample=args.sample or None, seed=args.seed)
    records = data.load_eval_prompts(args.prompts)
    resolved = model.resolve_base(str(args.model), Path(".hearts-cache"))
    dtype = model.compute_dtype()
    lm = model.load_base(resolved, dtype)
    if args.adapter is not None:
        lm = merge.apply_adapter(lm, args.adapter)
    tokenizer = model.load_tokenizer(args.adapter if args.adapter else resolved)
    results = generate.generate(lm, tokenizer, generate.prompts_for(records), cfg, progress=True)
    generate.write_jsonl(args.out, [{"instruction": r["instruction"], **g.to_dict()}
                                    for r, g in zip(records, results, strict=True)])
    done = sum(g.terminated for g in results)
    print(f"{len(results)} answers ({done} stopped at EOS) written to {args.out}")
    return 0
