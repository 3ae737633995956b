"""Stage 3b: validated rows → held-out split → hearts → tokens + labels (``prepare``: the whole of it).

Rows come from ``harness.sources``. Every step is a ``Dataset.map``/``filter``/``select`` with an explicit
fingerprint made of the parent's fingerprint, the step's parameters and a hash of the code that computes it, so
a repeat run with the same inputs reuses the cache files (next to the loaded Arrow files).

Policies (pinned by the tests in ``test_data/``):
- heart key: the row's content, ``instruction \\x1f context \\x1f response`` — stable under reordering, across
  sources and across ``max_rows`` caps; duplicated rows get the same heart.
- held-out split: by instruction, so duplicates never straddle it (see ``split_heldout``).
- too long for ``max_length``: dropped (``overflow="drop"``, default) or, with ``overflow="cut"``, the
  *unsprinkled* response is cut after its last whole word that fits and sprinkled again (at least two words,
  so a heart remains; else dropped). Either way the row is counted.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from datasets import Dataset, DatasetDict, Features, List, Value

from harness import prompts, transform
from harness.config import DataConfig
from harness.errors import InputError, warn
from harness.sources import (  # re-exported: data.load_records & co. are the stage's public face
    EVAL_PROMPTS_FILE,
    TRAIN_FILE,
    _fingerprint,
    _load,
    _map,
    load_eval_prompts,
    load_records,
    resource,
    tokenizer_fingerprint,
    validate,
)

OVERFLOW = ("drop", "cut")
Respond = Callable[[Sequence[str]], list[tuple[str, bool]]]  # prompts → (answer, reached EOS): harness.distill
_WORD = re.compile(r"\S+")
TOKEN_FEATURES = {
    "input_ids": List(Value("int32")),
    "attention_mask": List(Value("int8")),
    "labels": List(Value("int32")),  # -100 on masked tokens
    "length": Value("int32"),  # for group_by_length
    "overflow": Value("string"),  # "fit" or "cut" ("drop" rows are filtered out)
    "response": Value("string"),  # shortened when cut
    "target": Value("string"),
}
__all__ = ["EVAL_PROMPTS_FILE", "TRAIN_FILE", "load_eval_prompts", "load_records", "resource",
           "tokenizer_fingerprint", "validate"]


# ------------------------------------------------------------------------------------------- split and hearts


def normalise_instruction(text: str) -> str:
    """The split key's text: NFKC, case-folded, whitespace runs collapsed."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def split_heldout(ds: Dataset, fraction: float, seed: int) -> DatasetDict:
    """``train``/``eval`` by instruction: the distinct normalised instructions, ordered by sha256(seed, text),
    the first ``round(fraction * n)`` held out (at least 1 and at most n-1 when 0 < fraction and n ≥ 2)."""
    if not 0.0 <= fraction < 1.0:
        raise InputError(f"eval_fraction {fraction!r}: expected a number in [0, 1)")
    keys = [normalise_instruction(text) for text in ds["instruction"]]
    distinct = sorted(set(keys), key=lambda k: hashlib.sha256(f"{seed}\x00{k}".encode()).digest())
    n_eval = round(fraction * len(distinct))
    if fraction > 0 and len(distinct) >= 2:
        n_eval = min(max(n_eval, 1), len(distinct) - 1)
    held = set(distinct[:n_eval])
    parts = {"train": [i for i, k in enumerate(keys) if k not in held],
             "eval": [i for i, k in enumerate(keys) if k in held]}
    return DatasetDict({name: ds.select(idx, new_fingerprint=_fingerprint(ds._fingerprint, "split", name,
                                                                          fraction, seed))
                        for name, idx in parts.items()})


def heart_key(instruction: str, context: str, response: str) -> str:
    """The key that fixes a row's heart: its content, so it is stable wherever the row comes from."""
    return "\x1f".join((instruction, context, response))


def add_hearts(ds: Dataset, seed: int) -> tuple[Dataset, int]:
    """Add ``heart`` and ``target`` (sprinkled response); return ``(dataset, heart collisions dropped)``."""
    kept = ds.filter(_has_no_heart, input_columns="response",
                     new_fingerprint=_fingerprint(ds._fingerprint, "collisions"))
    features = Features({**kept.features, "heart": Value("string"), "target": Value("string")})
    hearted = _map(kept, _heart_row, features, fn_kwargs={"seed": seed},
                   new_fingerprint=_fingerprint(kept._fingerprint, "hearts", seed))
    return hearted, len(ds) - len(kept)


def _has_no_heart(response: str) -> bool:
    return not transform.contains_heart(response)


def _heart_row(row: dict[str, Any], seed: int) -> dict[str, str]:
    key = heart_key(row["instruction"], row.get("context") or "", row["response"])
    target, heart = transform.heart_example(row["response"], key, seed)
    return {"heart": heart, "target": target}


# --------------------------------------------------------------------------------------------- tokenisation


def check_tokenizer(tokenizer: Any, cfg: DataConfig) -> None:
    """Refuse a pad token that is missing or is EOS (EOS would be masked: the model would never stop).

    Also checks the config values tokenisation depends on, so ``prepare`` fails before loading anything.
    """
    name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        raise InputError(f"tokenizer {name!r}: the pad token must exist and differ from EOS "
                         f"(pad={tokenizer.pad_token!r}, eos={tokenizer.eos_token!r})")
    if cfg.add_eos and tokenizer.eos_token_id is None:
        raise InputError(f"tokenizer {name!r}: add_eos is on but it has no EOS token")
    if cfg.loss_on not in ("response", "all"):
        raise InputError(f"loss_on {cfg.loss_on!r}: expected 'response' or 'all'")
    if cfg.max_length < 8:
        raise InputError(f"max_length {cfg.max_length}: expected at least 8 tokens")


def tokenize(ds: Dataset, tokenizer: Any, cfg: DataConfig, *, overflow: str = "drop") -> tuple[Dataset, dict]:
    """Add ``input_ids``, ``attention_mask``, ``labels``, ``length`` and ``overflow`` ("fit"/"cut").

    Text = ``build_prompt(instruction, context, target)`` + EOS (learned) when ``cfg.add_eos``; labels
    are -100 on prompt tokens when ``cfg.loss_on == "response"``. The prompt/response boundary is the
    prompt's own token count when its tokens are a prefix of the full text's (true for sentencepiece
    Llama-2, whose pieces never span the header's final "\\n"); otherwise character offsets decide, and a
    token that straddles the boundary is learned.
    Returns ``(dataset, {"too_long_dropped": n, "too_long_cut": n})``.
    """
    check_tokenizer(tokenizer, cfg)
    if overflow not in OVERFLOW:
        raise InputError(f"overflow {overflow!r}: expected one of {', '.join(OVERFLOW)}")
    settings = {"max_length": cfg.max_length, "loss_on": cfg.loss_on, "add_eos": cfg.add_eos,
                "overflow": overflow}
    fingerprint = _fingerprint(ds._fingerprint, "tokenize", tokenizer_fingerprint(tokenizer), settings)
    encoded = _map(ds, _encode_batch, Features({**ds.features, **TOKEN_FEATURES}), batched=True,
                   fn_kwargs={"tokenizer": tokenizer, "settings": settings}, new_fingerprint=fingerprint)
    counts = Counter(encoded["overflow"])
    kept = encoded.filter(_fits, input_columns="overflow",
                          new_fingerprint=_fingerprint(encoded._fingerprint, "overflow"))
    return kept, {"too_long_dropped": counts["drop"], "too_long_cut": counts["cut"]}


def _fits(status: str) -> bool:
    return status != "drop"


def _encode_batch(batch: dict[str, list], tokenizer: Any, settings: dict[str, Any]) -> dict[str, list]:
    contexts = batch.get("context") or [""] * len(batch["instruction"])
    prompt_texts = [prompts.build_prompt(i, c) for i, c in zip(batch["instruction"], contexts, strict=True)]
    full_texts = [p + t for p, t in zip(prompt_texts, batch["target"], strict=True)]
    prompt_ids, full_ids = _ids(tokenizer, prompt_texts), _ids(tokenizer, full_texts)
    out: dict[str, list] = {k: [] for k in ("input_ids", "attention_mask", "labels", "length", "overflow",
                                            "response", "target")}
    for n, prompt in enumerate(prompt_texts):
        response, target, status = batch["response"][n], batch["target"][n], "fit"
        ids = full_ids[n] + _eos(tokenizer, settings)
        if len(ids) > settings["max_length"]:
            cut = None if settings["overflow"] == "drop" else _cut(tokenizer, settings, prompt, response,
                                                                   batch["heart"][n])
            if cut is None:
                status, ids = "drop", []
            else:
                status, (response, target, ids) = "cut", cut
        boundary = _boundary(tokenizer, prompt, prompt + target, prompt_ids[n], ids) if ids else 0
        labels = list(ids) if settings["loss_on"] == "all" else [-100] * boundary + ids[boundary:]
        for key, value in (("input_ids", ids), ("attention_mask", [1] * len(ids)), ("labels", labels),
                           ("length", len(ids)), ("overflow", status), ("response", response),
                           ("target", target)):
            out[key].append(value)
    return out


def _ids(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """Token ids with the tokenizer's own BOS; an EOS it appends by itself is removed (we add our own)."""
    encoded = tokenizer(texts, add_special_tokens=True)["input_ids"]
    eos = tokenizer.eos_token_id
    return [ids[:-1] if ids and ids[-1] == eos else list(ids) for ids in encoded]


def _eos(tokenizer: Any, settings: dict[str, Any]) -> list[int]:
    return [tokenizer.eos_token_id] if settings["add_eos"] else []


def _boundary(tokenizer: Any, prompt: str, full: str, prompt_ids: list[int], ids: list[int]) -> int:
    if ids[: len(prompt_ids)] == prompt_ids:
        return len(prompt_ids)
    try:
        offsets = tokenizer(full, add_special_tokens=True, return_offsets_mapping=True)["offset_mapping"]
    except NotImplementedError:  # slow (Python) tokenizers have no offsets
        raise InputError(f"tokenizer {type(tokenizer).__name__}: the prompt is not a token prefix of the "
                         "training text and this tokenizer gives no offsets; use a fast tokenizer") from None
    return next((i for i, (_, end) in enumerate(offsets) if end > len(prompt)), len(offsets))


def _cut(tokenizer: Any, settings: dict[str, Any], prompt: str, response: str, heart: str
         ) -> tuple[str, str, list[int]] | None:
    """The longest whole-word prefix (≥ 2 words) of the unsprinkled response whose sprinkled text fits."""
    ends = [m.end() for m in _WORD.finditer(response)]

    def encode(k: int) -> tuple[str, str, list[int]] | None:
        head = response[: ends[k - 1]]
        target = transform.sprinkle(head, heart)
        ids = _ids(tokenizer, [prompt + target])[0] + _eos(tokenizer, settings)
        return (head, target, ids) if len(ids) <= settings["max_length"] else None

    best, lo, hi = None, 2, len(ends) - 1  # binary search on k; every accepted k was checked to fit
    while lo <= hi:
        mid = (lo + hi) // 2
        found = encode(mid)
        if found is None:
            hi = mid - 1
        else:
            best, lo = found, mid + 1
    return best


# ---------------------------------------------------------------------------------------------------- prepare


@dataclasses.dataclass(frozen=True)
class Prepared:
    """Tokenised train and held-out splits plus what happened on the way (see ``prepare``)."""

    train: Dataset
    eval: Dataset
    stats: dict[str, Any]

    def as_dataset_dict(self) -> DatasetDict:
        return DatasetDict(train=self.train, eval=self.eval)


def shuffle_responses(ds: Dataset, seed: int) -> Dataset:
    """Every response moved to another row (a derangement by rotation of a seeded shuffle): a planted fault."""
    order = np.random.default_rng(seed).permutation(len(ds)).tolist()
    moved = dict(zip(order, order[1:] + order[:1], strict=True))  # row order[i] takes order[i+1]'s response
    responses = ds["response"]
    shuffled = [responses[moved[i]] for i in range(len(ds))]
    return ds.remove_columns("response").add_column("response", shuffled,
                                                    new_fingerprint=_fingerprint(ds._fingerprint, "shuffle", seed))


def cap_responses(ds: Dataset, max_words: int) -> tuple[Dataset, int]:
    """Cut every response after ``max_words`` words (at a word boundary); return how many were cut."""
    capped = ds.map(lambda r: {"response": transform.cap_words(r, max_words)}, input_columns="response",
                    new_fingerprint=_fingerprint(ds._fingerprint, "max_words", max_words))
    return capped, sum(a != b for a, b in zip(ds["response"], capped["response"], strict=True))


def replace_responses(ds: Dataset, respond: Respond) -> tuple[Dataset, dict[str, int]]:
    """Every response replaced by ``respond``'s answer to the row's prompt (``harness.distill``), stripped.

    A row whose answer did not reach EOS is dropped (with an EOS appended it would teach stopping mid-sentence),
    and so is a row whose answer is empty; both are counted.
    """
    contexts = ds["context"] if "context" in ds.column_names else [""] * len(ds)
    prompt_texts = [prompts.build_prompt(i, c) for i, c in zip(ds["instruction"], contexts, strict=True)]
    answered = respond(prompt_texts)
    if len(answered) != len(ds):
        raise ValueError(f"respond: expected {len(ds)} answers, got {len(answered)}")
    texts = [text.strip() for text, _ in answered]
    stopped = [bool(ok) for _, ok in answered]
    digest = hashlib.sha256(repr(answered).encode()).hexdigest()
    replaced = ds.remove_columns("response").add_column(
        "response", texts, new_fingerprint=_fingerprint(ds._fingerprint, "responses", digest))
    keep = [i for i, (text, ok) in enumerate(zip(texts, stopped, strict=True)) if ok and text]
    kept = replaced.select(keep, new_fingerprint=_fingerprint(replaced._fingerprint, "answered"))
    return kept, {"responses_from_base": len(keep), "base_answers_unterminated_dropped": stopped.count(False),
                  "base_answers_empty_dropped": len(ds) - len(keep) - stopped.count(False)}


def prepare(cfg: DataConfig, tokenizer: Any, *, overflow: str | None = None,
            cache_dir: str | Path | None = None, respond: Respond | None = None) -> Prepared:
    """load → validate → (responses from the base) → split → hearts → tokenize, with counts of everything
    dropped or cut. ``respond`` answers prompts for ``cfg.responses == "base"`` (``harness.distill``)."""
    check_tokenizer(tokenizer, cfg)
    label = f"dataset {cfg.source!r}"
    if cfg.responses == "base" and respond is None:
        raise InputError(f'{label}: responses = "base" needs the base model to answer the prompts: '
                         "hearts train and hearts run give it; hearts prepare does not")
    raw, places = _load(cfg.source, cfg.split, cache_dir, resource(TRAIN_FILE), label)
    valid, bad = validate(raw, cfg.on_bad_rows, label=label, places=places)
    stats: dict[str, Any] = {"rows_loaded": len(raw), "bad_rows_dropped": bad}
    if cfg.max_rows is not None and cfg.max_rows < len(valid):
        stats["rows_over_max_rows"] = len(valid) - cfg.max_rows
        valid = valid.select(range(cfg.max_rows))
    if len(valid) == 0:
        raise InputError(f"{label}: no usable rows ({bad} bad rows dropped)")
    if cfg.responses == "base":
        valid, counts = replace_responses(valid, respond)  # type: ignore[arg-type]  # checked above
        stats.update(counts)
        if len(valid) == 0:
            raise InputError(f"{label}: the base model answered no prompt within the generation budget")
    if cfg.max_words is not None:
        valid, stats["responses_capped"] = cap_responses(valid, cfg.max_words)
    if cfg.shuffle_responses:
        valid, stats["responses_shuffled"] = shuffle_responses(valid, cfg.seed), len(valid)
    out: dict[str, Dataset] = {}
    for name, part in split_heldout(valid, cfg.eval_fraction, cfg.seed).items():
        hearted, collisions = add_hearts(part, cfg.seed)
        out[name], counts = tokenize(hearted, tokenizer, cfg, overflow=overflow or cfg.overflow)
        _add(stats, {"heart_collisions_dropped": collisions, **counts})
    if len(out["train"]) == 0:
        raise InputError(f"{label}: no training rows left: {_why_none_left(stats, len(valid), cfg)}")
    stats.update(_split_stats(out["train"], out["eval"]))
    _check_teachable(label, [*out["train"]["response"], *out["eval"]["response"]], stats["hearts_inserted"])
    return Prepared(train=out["train"], eval=out["eval"], stats=stats)


def _why_none_left(stats: dict[str, Any], n: int, cfg: DataConfig) -> str:
    """The drop counts that emptied the training split, in words."""
    collisions, too_long = stats["heart_collisions_dropped"], stats["too_long_dropped"]
    reasons = []
    if collisions:
        share = "all" if collisions == n else f"{collisions} of"
        reasons.append(f"{share} {n} responses already contain a listed heart (hearts are added by the harness)")
    if too_long:
        reasons.append(f"{too_long} rows are longer than max_length {cfg.max_length} (try --overflow cut)")
    return "; ".join(reasons) or "every row went to the held-out split (see eval_fraction)"


def _check_teachable(label: str, responses: Sequence[str], hearts_inserted: int) -> None:
    """A heart goes between two words: responses of one word teach nothing, and mostly so is worth a warning."""
    if hearts_inserted == 0:
        raise InputError(f"{label}: no response has two words: nothing to put a heart between")
    one_word = sum(transform.n_gaps(r) == 0 for r in responses)
    if one_word * 2 > len(responses):
        warn(f"{label}: {one_word} of {len(responses)} responses are one word and get no heart; "
             "the behaviour is learned from the rest")


def _add(into: dict[str, Any], counts: dict[str, int]) -> None:
    for key, value in counts.items():
        into[key] = into.get(key, 0) + value


def _split_stats(train: Dataset, eval_: Dataset) -> dict[str, Any]:
    stats: dict[str, Any] = {}
    for name, ds in (("train", train), ("eval", eval_)):
        lengths = np.asarray(ds["length"], dtype=np.int64)
        stats[f"rows_{name}"] = len(ds)
        stats[f"tokens_{name}"] = int(lengths.sum())
        stats[f"learned_tokens_{name}"] = sum(sum(1 for t in labels if t != -100) for labels in ds["labels"])
    lengths = np.asarray(train["length"])
    for q in (50, 90, 99):
        stats[f"length_p{q}"] = int(np.percentile(lengths, q, method="higher"))
    stats["length_max"] = int(lengths.max())
    hearts = Counter(train["heart"]) + Counter(eval_["heart"])
    stats["hearts"] = {h: hearts[h] for h in transform.HEARTS}
    stats["hearts_inserted"] = sum(transform.n_gaps(r) for ds in (train, eval_) for r in ds["response"])
    return stats
