"""What the GPU measurement scripts share (``gpu-measure.sh``'s Python steps, ``decode_shards.py``): a run's settings
as ``hearts eval`` reads them, its resolved base, dtype, tokenizer and held-out prompts, and, where a step needs
it, the trained adapter (trained first, or found in the cache). Run from the repository's root
(``gpu-measure.sh`` changes there), so ``scripts`` imports as a namespace package.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from harness import cli, evaluation, model, train
from harness.commands import options
from harness.config import RunSettings
from harness.train import TrainedAdapter


@dataclasses.dataclass(frozen=True)
class Setup:
    s: RunSettings
    base: Path | str  # the resolved base: a folder, or a Hub id
    dtype: torch.dtype
    tokenizer: Any  # the adapter's where there is one (it saved the base's with its pad token), else the base's
    prompts: list[str]
    adapter: TrainedAdapter | None


def setup(base_name: str, out: Path, toml: str | None = None, *, trained: bool = False) -> Setup:
    """The settings of ``hearts eval --base-model base_name [--config toml]`` and what a measurement loads with."""
    config = ["--config", toml] if toml else []
    argv = ["eval", "--base-model", base_name, "--out", str(Path(out) / "unused"), *config]
    s = options.settings(cli.build_parser().parse_args(argv))
    adapter = train.adapter_for(s.artifacts, s.train, s.lora, s.data) if trained else None
    base = adapter.base if adapter else model.resolve_base(s.train.base_model, s.artifacts)
    return Setup(s, base, model.run_dtype(s.train), model.load_tokenizer(adapter.path if adapter else base),
                 evaluation.held_out_prompts(s.eval), adapter)
