"""``hearts train``: QLoRA-train the adapter (or reuse the cached one) and print where it is."""

from __future__ import annotations

import argparse
import json

from harness.commands.options import add_model_options, check_runtime, settings

HELP = "QLoRA-train the adapter on the prepared data (cached: a second run with the same inputs reuses it)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_options(parser)


def run(args: argparse.Namespace) -> int:
    from harness import distributed, train

    s = settings(args)
    check_runtime(s)
    adapter = train.adapter_for(s.artifacts, s.train, s.lora, s.data, retrain=s.retrain)
    if not distributed.world().main:
        return 0  # rank 0 reports for the launcher's whole group
    metrics = json.loads((adapter.path / train.METRICS).read_text())
    print(f"adapter: {adapter.path} ({'trained now' if adapter.built_now else 'from the cache'})")
    print(f"steps {metrics['steps']}, final loss {metrics['loss'][-1]['loss']:.3f}, "
          f"{metrics['samples_per_s']:.2f} samples/s, {metrics['tokens_per_s']:.0f} tokens/s, "
          f"{metrics['wall_s']:.1f} s on {metrics['device']}")
    return 0
