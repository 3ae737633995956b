"""``hearts merge``: unquantised base + adapter → merged safetensors model with its tokenizer."""

from __future__ import annotations

import argparse

from harness import inputs
from harness.commands.options import Protected, add_model_options, check_runtime, protected, settings
from harness.config import RunSettings

HELP = "merge the adapter into the base (dequantised NF4 weights by default, compute dtype), save safetensors"
KIND = "merged"  # the marker kind of a --out folder


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_options(parser)
    parser.add_argument("--adapter", type=inputs.path_arg, default=None,
                        help="adapter folder to merge (default: train or reuse the cached one)")
    parser.add_argument("--out", type=inputs.path_arg, default=None,
                        help="write the merged model into this new (absent or empty) folder "
                             "(default: the artifacts cache)")


def run(args: argparse.Namespace) -> int:
    s = settings(args)
    guard = protected(s, adapter=args.adapter)
    if args.out is not None:  # before the base is resolved: a stand-in is built on first use
        from harness.staging import check_out_dir

        check_out_dir(args.out, flag="--out", kind=KIND, protect=guard)
    if args.adapter is not None:
        inputs.check_adapter_dir(args.adapter, "--adapter", safetensors_only=False)
    check_runtime(s)
    return _merge(args, s, guard)


def _merge(args: argparse.Namespace, s: RunSettings, guard: Protected) -> int:
    from harness import merge, model, train
    from harness.staging import replace_dir

    dtype = model.run_dtype(s.train)
    if args.adapter is not None:
        adapter, base = args.adapter, model.resolve_base(s.train.base_model, s.artifacts)
    else:
        trained = train.adapter_for(s.artifacts, s.train, s.lora, s.data, retrain=s.retrain)
        adapter, base = trained.path, trained.base
    if args.out is None:
        out = merge.merged_for(s.artifacts, adapter, base, s.train, dtype, s.merge.method)
    else:
        out = replace_dir(args.out, lambda tmp: merge.merge(base, adapter, tmp, s.train, dtype, s.merge.method),
                          flag="--out", kind=KIND, protect=guard)
    print(f"merged model ({model.dtype_name(dtype)}, into the {s.merge.method} base weights): {out}")
    return 0
