"""Stage 3a (optional): self-distilled responses — the base model's own greedy answers as training responses.

With ``[data] responses = "base"`` every training row's response is replaced, before the hearts go in, by the
base model's greedy answer to the row's prompt. The adapter then has the hearts to learn, and where to stop,
but no new wording: on a real pretrained model the dataset's human-written responses are text the base finds
unlikely, and fitting them competes with the hearts for the adapter's capacity (and costs retention). Here
the words are already the base's most likely ones, so the loss that is left is the hearts'.

An answer that did not reach EOS within the generation budget is dropped, counted (with an EOS appended it
would teach stopping mid-sentence), and so is an empty one (``data.replace_responses``).

The answers are cached under ``artifacts/distilled/<key>``; the key hashes the base's content, the tokenizer,
the prompts, the generation settings, the device, the dtype and the library versions. The cache is taken by
its file lock alone, not by the launcher's collective: under ``torchrun`` rank 0 prepares the data first
(``distributed.main_first``) and the other ranks, coming after, read its answers.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from harness import answers, cache, generate, model
from harness.config import TrainConfig, generation_config
from harness.data import Respond
from harness.generate import Generation

KIND = "distilled"


def responder(artifacts: Path, cfg: TrainConfig, base: Path | str, tokenizer, *, progress: bool = False) -> Respond:
    """``prompts → [(answer, reached EOS)]`` from the base model of ``cfg``."""

    def respond(prompts: Sequence[str]) -> list[tuple[str, bool]]:
        return [(g.response, g.terminated)
                for g in base_answers(artifacts, cfg, base, tokenizer, prompts, progress=progress)]

    return respond


def base_answers(artifacts: Path, cfg: TrainConfig, base: Path | str, tokenizer, prompts: Sequence[str], *,
                 progress: bool = False) -> list[Generation]:
    """The base model's greedy answers to ``prompts`` (the base's generation preset), in their order.

    Each distinct prompt is answered once, and the cache entry is keyed by the set of prompts, so the rows'
    order and their duplicates do not matter.
    """
    gen = generation_config(cfg.base_model)
    device, dtype = model.run_device(cfg), model.run_dtype(cfg)
    distinct = sorted(set(prompts))
    material = {**answers.identity(tokenizer, distinct, gen, cfg),
                "model": model.base_fingerprint(cfg.base_model, base, cfg.revision)}
    with cache.building(Path(artifacts), KIND, answers.with_versions(material)) as (final, tmp):
        if tmp is not None:
            side = tokenizer.padding_side  # generation pads on the left; training's collator must not
            try:  # the model is held by generate_and_release alone, which frees it before training starts
                got = generate.generate_and_release(model.load_base(base, dtype, cfg.revision, device), tokenizer,
                                                    distinct, gen, progress)
            finally:
                tokenizer.padding_side = side
            answers.write_jsonl(tmp / answers.ANSWERS, [g.to_dict() for g in got])
    by_prompt = {g.prompt: g for g in answers.load_generations(final / answers.ANSWERS)}
    return [by_prompt[p] for p in prompts]
