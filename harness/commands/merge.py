"""``hearts merge``: unquantised base + adapter → merged safetensors model with its tokenizer."""

from __future__ import annotations

import argparse
from pathlib import Path

from harness.commands.options import add_model_options, settings

HELP = "merge the adapter into the base (dequantised NF4 weights by default, compute dtype), save safetensors"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_options(parser)
    parser.add_argument("--adapter", type=Path, default=None,
                        help="adapter folder to merge (default: train or reuse the cached one)")
    parser.add_argument("--out", type=Path, default=None,
                        help="write the merged model here (default: the artifacts cache)")


def run(args: argparse.Namespace) -> int:
    from harness import merge, model, train
    from harness.staging import publish_dir

    s = settings(args)
    dtype = model.compute_dtype(s.train.compute_dtype)
    if args.adapter is not None:
        merge.check_adapter_dir(args.adapter)
        adapter, base = args.adapter, model.resolve_base(s.train.base_model, s.artifacts)
    else:
        trained = train.adapter_for(s.artifacts, s.train, s.lora, s.data, retrain=s.retrain)
        adapter, base = trained.path, trained.base
    if args.out is None:
        out = merge.merged_for(s.artifacts, adapter, base, s.train, dtype, s.merge.method)
    else:
        out = publish_dir(args.out, lambda tmp: merge.merge(base, adapter, tmp, s.train, dtype, s.merge.method))
    print(f"merged model ({model.dtype_name(dtype)}, into the {s.merge.method} base weights): {out}")
    return 0
