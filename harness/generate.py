"""Stage 6: generation — batched, left-padded, KV cache on, greedy by default, decoded from the new tokens only.

Each result carries the token count and whether EOS was reached, so "answers that never stop" are measured,
not eyeballed. Decoding only the new token ids (never slicing the prompt off a decoded string) keeps a prompt
whose tokens re-merge differently from corrupting the answer.
"""

from __future__ import annotations

import dataclasses
import gc
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from harness.cache import atomic_write_text
from harness.config import GenerationConfig
from harness.errors import InputError
from harness.prompts import build_prompt


@dataclasses.dataclass(frozen=True)
class Generation:
    prompt: str
    response: str
    new_tokens: int
    terminated: bool  # EOS reached within max_new_tokens

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def prompts_for(records: Sequence[dict[str, Any]]) -> list[str]:
    return [build_prompt(r["instruction"], r.get("context")) for r in records]


@torch.inference_mode()
def generate(model, tokenizer, prompts: Sequence[str], cfg: GenerationConfig | None = None,
             progress: bool = False) -> list[Generation]:
    """Generate one response per prompt, in order."""
    cfg = cfg or GenerationConfig()
    model.eval()
    model.config.use_cache = True  # training switches it off; decoding without it is quadratic
    tokenizer.padding_side = "left"  # so every row's last prompt token sits at the same position
    eos = tokenizer.eos_token_id
    results: list[Generation] = []
    batches = range(0, len(prompts), cfg.batch_size)
    for start in tqdm(batches, desc="generate", disable=not progress):
        chunk = list(prompts[start : start + cfg.batch_size])
        enc = tokenizer(chunk, return_tensors="pt", padding=True).to(model.device)
        out = model.generate(**enc, **_sampling(cfg), **_decoding(cfg), eos_token_id=eos,
                             pad_token_id=tokenizer.pad_token_id)
        new = out[:, enc["input_ids"].shape[1] :]
        results += [_one(prompt, row, tokenizer, eos) for prompt, row in zip(chunk, new, strict=True)]
    return results


def generate_and_release(model, tokenizer, prompts: Sequence[str], cfg: GenerationConfig | None = None,
                         progress: bool = False) -> list[Generation]:
    """``generate`` with a model loaded just for it, dropped afterwards (three models need not share memory)."""
    try:
        return generate(model, tokenizer, prompts, cfg, progress)
    finally:
        del model
        gc.collect()


def _decoding(cfg: GenerationConfig) -> dict[str, Any]:
    if cfg.cache not in ("dynamic", "static"):
        raise InputError(f"generation cache {cfg.cache!r}: expected dynamic or static")
    kwargs: dict[str, Any] = {"max_new_tokens": cfg.max_new_tokens, "min_new_tokens": cfg.min_new_tokens}
    if cfg.cache == "static":
        kwargs["cache_implementation"] = "static"  # on CUDA, generate() then compiles the decoding forward
    return kwargs


def _sampling(cfg: GenerationConfig) -> dict[str, Any]:
    if not cfg.do_sample:
        return {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    torch.manual_seed(cfg.seed)  # seeded sampling: the same seed gives the same answers
    return {"do_sample": True, "temperature": cfg.temperature, "top_p": cfg.top_p}


def _one(prompt: str, row: torch.Tensor, tokenizer, eos: int) -> Generation:
    ids = row.tolist()
    terminated = eos in ids
    if terminated:
        ids = ids[: ids.index(eos)]
    ids = [i for i in ids if i != tokenizer.pad_token_id]
    text = tokenizer.decode(ids, skip_special_tokens=True)
    return Generation(prompt=prompt, response=text, new_tokens=len(ids) + int(terminated), terminated=terminated)


def write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    atomic_write_text(Path(path), "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
