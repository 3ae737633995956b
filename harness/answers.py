"""Stage 6b: answers at rest — the generation cache, and answer files from any engine.

Generation is most of an evaluation's cost, and judging is cheap: a changed checker or gate must never
regenerate. Every model's answers are stored under ``artifacts/generations/<key>``, the key hashing everything
that determines them (the model's content, the tokenizer, the prompt texts, the generation settings with seeds
and K, the library versions), through the crash-safe cache: a killed run leaves nothing that is read as
complete. The measurements that need the models (logit fidelity, retention NLL) are stored the same way under
``artifacts/measurements/<key>``, so a second ``hearts eval`` loads no model at all.

``read_answers`` reads a JSON Lines file of answers produced anywhere (vLLM, TGI, llama.cpp) for
``hearts judge``: ``{"prompt" | "instruction" (+ "context"), "response", "terminated"?}`` per line.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from harness import cache, inputs
from harness.config import GenerationConfig, TrainConfig
from harness.errors import InputError
from harness.generate import ANSWER_FORMAT, Generation
from harness.prompts import build_prompt

ANSWERS = "answers.jsonl"
MEASURED = "measured.json"


def library_versions() -> dict[str, str]:
    """The versions that change what a model generates (the cache key's share of the environment)."""
    from harness.environment import versions

    found = versions(("torch", "transformers", "peft", "bitsandbytes", "tokenizers"))
    return {k: v.split("+")[0] for k, v in found.items() if k != "python"}


def with_versions(material: Mapping[str, Any]) -> dict[str, Any]:
    """A cache key's material with the library versions that change what a model generates."""
    return {**material, "versions": library_versions()}


def identity(tokenizer, prompts: Sequence[str], generation: GenerationConfig, train: TrainConfig) -> dict[str, Any]:
    """What decides a set of answers besides the model: the tokenizer, the prompt texts, the generation settings,
    how tokens become text (``generate.ANSWER_FORMAT``), the dtype and the device."""
    from harness import model
    from harness.sources import tokenizer_fingerprint

    return {"tokenizer": tokenizer_fingerprint(tokenizer), "prompts": cache.cache_key({"p": list(prompts)}),
            "dtype": model.dtype_name(model.run_dtype(train)), "device": model.run_device(train).type,
            "generation": dataclasses.asdict(generation), "answer_format": ANSWER_FORMAT}


def lookup_answers(artifacts: Path, material: Mapping[str, Any]) -> list[Generation] | None:
    """The cached answers for ``material`` (see the module docstring), or None."""
    folder = cache.lookup(Path(artifacts), "generations", with_versions(material))
    return None if folder is None else load_generations(folder / ANSWERS)


def store_answers(artifacts: Path, material: Mapping[str, Any], answers: Sequence[Generation]) -> None:
    cache.cached(Path(artifacts), "generations", with_versions(material),
                 lambda tmp: write_jsonl(tmp / ANSWERS, [g.to_dict() for g in answers]), rebuild=True)


def lookup_json(artifacts: Path, kind: str, material: Mapping[str, Any]) -> dict[str, Any] | None:
    folder = cache.lookup(Path(artifacts), kind, with_versions(material))
    return None if folder is None else json.loads((folder / MEASURED).read_text(encoding="utf-8"))


def store_json(artifacts: Path, kind: str, material: Mapping[str, Any], value: Mapping[str, Any]) -> None:
    cache.cached(Path(artifacts), kind, with_versions(material),
                 lambda tmp: (tmp / MEASURED).write_text(json.dumps(value, ensure_ascii=False)), rebuild=True)


def write_jsonl(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def load_generations(path: Path) -> list[Generation]:
    """Generations a cache entry holds (written by ``cached_answers``)."""
    fields = {f.name for f in dataclasses.fields(Generation)}
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [Generation(**{k: v for k, v in row.items() if k in fields}) for row in rows]


# --- answer files from any engine ---------------------------------------------------------------------------


def read_answers(path: str | Path, flag: str = "--answers", *, skip_bad: bool = False
                 ) -> tuple[list[Generation], int]:
    """``(answers, lines skipped)`` of a JSON Lines answers file; a bad line is an InputError naming it, or
    (``skip_bad``) skipped and counted."""
    label = f"{flag} {path}"
    text = inputs.decode_utf8(inputs.read_bytes(path, label), label)
    answers: list[Generation] = []
    skipped = 0
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            answers.append(_answer(line))
        except ValueError as err:
            if not skip_bad:
                raise InputError(f"{label}: line {number} {err} (--skip-bad-lines skips such lines)") from None
            skipped += 1
    if not answers:
        raise InputError(f"{label}: no answers" + (f" ({skipped} bad lines skipped)" if skipped else ""))
    return answers, skipped


def _answer(line: str) -> Generation:
    """One answer line; ValueError says what is wrong with it, in words."""
    try:
        row = inputs.parse_json(line)
    except ValueError as err:
        raise ValueError(f"is not valid JSON ({err})") from None
    if not isinstance(row, dict):
        raise ValueError(f"is not a JSON object (got {inputs.kind_of(row)})")
    response = row.get("response")
    if not isinstance(response, str):
        raise ValueError(f"has no 'response' string (got {inputs.kind_of(response)})")
    prompt = row.get("prompt")
    if prompt is None:
        instruction, context = row.get("instruction"), row.get("context")
        context = "" if context is None else context
        if not isinstance(instruction, str) or not instruction.strip():
            raise ValueError("has neither a 'prompt' nor an 'instruction' string")
        if not isinstance(context, str):
            raise ValueError(f"has a 'context' that is not a string (got {inputs.kind_of(context)})")
        prompt = build_prompt(instruction, context)
    elif not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"has a 'prompt' that is not a non-empty string (got {inputs.kind_of(prompt)})")
    terminated = row.get("terminated", True)
    if not isinstance(terminated, bool):
        raise ValueError(f"has a 'terminated' that is not true/false (got {inputs.kind_of(terminated)})")
    tokens = row.get("new_tokens", 0)
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
        raise ValueError(f"has a 'new_tokens' that is not a count (got {inputs.kind_of(tokens)})")
    return Generation(prompt=prompt, response=response, new_tokens=tokens, terminated=terminated)
