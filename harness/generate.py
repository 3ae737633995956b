"""Stage 6a: generation — length-sorted batches, left-padded, KV cache on, greedy by default, new tokens only.

Each result carries the token count and whether EOS was reached, so "answers that never stop" are measured,
not eyeballed. Decoding only the new token ids (never slicing the prompt off a decoded string) keeps a prompt
whose tokens re-merge differently from corrupting the answer.

Speed (judging is most of a run's GPU time): prompts are sorted by length so a batch pads little; on CUDA a
batch holds as many prompts as the free memory's KV cache allows (all of them for a small model). A greedy call
on CUDA replays its eager decode step as a CUDA graph over a static KV cache (``harness.decode``): the host's
launches, which bound an eager decode of a small or 4-bit model, are gone, and nothing is compiled. Every batch
of a call is of one size (the last filled with repeats, whose answers are dropped) so one capture serves them
all. A call that decodes very many steps (``COMPILE_MIN_STEPS``) compiles the step instead: transformers' static
cache, its inductor kernels fused. The cache is sized to its call (``_forget_cache_length``), so a call of
another length compiles again: the price of answers that depend only on their call. A sampled call decodes
eagerly, with a growing cache. cuDNN's attention is off on CUDA (``GenerationConfig.cudnn_attention``).
Generation stops when every row has reached EOS.

The graph gives the eager kernels' answers: on SmolLM2 in bf16 (H200, 316 prompts) the same text as eager
decoding with a growing cache on 316 of 316 prompts, for the merged and the 4-bit model (``scripts/gpu-measure.sh
decode-equivalence``), and transformers' eager static-cache text token for token (tested, CPU and CUDA). The
compiled step rounds differently: on SmolLM2 it matched the eager text on 120-127 of 316 prompts, while verdicts
against the 4-bit model agreed on 295-297 of 316 against 298-300. ``cache = "dynamic"`` always decodes eagerly,
``"static"`` always compiles, ``"graph"`` always replays (greedy calls).
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import hashlib
import json
import math
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
from tqdm.auto import tqdm

from harness import decode
from harness.cache import atomic_write_text
from harness.config import GenerationConfig
from harness.errors import InputError
from harness.prompts import build_prompt

T = TypeVar("T")
CACHES = ("auto", "dynamic", "static", "graph")
CPU_BATCH = 16  # on CPU a batch is compute, not launches: bigger batches only add padding
KV_MEMORY_SHARE = 0.5  # of the free GPU memory, for the KV cache of one batch (the rest: activations, logits)
# Compiling the decode step costs ~33 s once per shape (SmolLM2, H200) and saves, against the eager step replayed
# as a CUDA graph, only what inductor's fused kernels save on the GPU: 0.83 ms a step on the 7B shape at batch 32
# (H200, 2026-12-06, side by side: 128 steps in 1.524 s compiled, 1.630 s as a graph), nothing on SmolLM2 at batch
# 316 (the graph decodes 320 steps in 2.8 s; the compiled step took 38.2 s with its compile, ~5 s without). If the
# 7B compiles in about the same time (not measured), compiling pays past ~40,000 decode steps in one call: 128
# batches of 320 new tokens. A 7B evaluation under a T4's memory (40 batches of 8) replays a graph. The choice is
# per call: a second model of the same shape reuses a compiled step (the base after the merged model), which this
# leaves aside.
COMPILE_MIN_STEPS = 40_960
REPLACEMENT = "\ufffd"  # what decoding makes of bytes that are not a whole UTF-8 character
MAX_CHAR_TOKENS = 3  # bytes of a character left unfinished (at most 3 of 4), so at most as many tokens
# In the generation cache's key: bump when what ``generate`` answers for the same settings changes, so answers
# cached by an earlier version are made again (2: a character left unfinished by the token budget is dropped;
# 3: "auto" decodes eagerly where the compile does not pay, and without cuDNN's attention: other greedy text;
# 4: "auto" decodes greedy calls on CUDA in a CUDA graph over a static cache, ``harness.decode``).
ANSWER_FORMAT = 4


@dataclasses.dataclass(frozen=True)
class Generation:
    prompt: str
    response: str
    new_tokens: int
    terminated: bool  # EOS reached within max_new_tokens
    seed: int | None = None  # sampled: its own seed; its call's prompts and seeds give it again (fp32: alone too)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def prompts_for(records: Sequence[dict[str, Any]]) -> list[str]:
    return [build_prompt(r["instruction"], r.get("context")) for r in records]


def sample_seed(seed: int, prompt: str, k: int) -> int:
    """The seed of the ``k``-th sampled answer to ``prompt``: fixed by (run seed, prompt, k), not by batching."""
    digest = hashlib.sha256(f"{seed}\x00{k}\x00{prompt}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1  # a non-negative int64, as torch.Generator takes


@dataclasses.dataclass(frozen=True)
class DecodePlan:
    """How one call decodes: rows per batch, and the KV cache ("graph": static, the eager step replayed as a CUDA
    graph; "static": the decode step compiled; "dynamic": eager), as ``cache = "auto"`` resolved it for this
    model, these prompts and the free memory; with the prompts' token counts it was planned from."""

    batch_size: int
    cache: str
    lengths: tuple[int, ...]


def decode_plan(model, tokenizer, prompts: Sequence[str], cfg: GenerationConfig) -> DecodePlan:
    """The batch size (``cfg.batch_size`` or what the free memory holds) and the cache of a call (``resolve_cache``
    on its decode steps: batches x ``max_new_tokens``)."""
    lengths = tuple(len(ids) for ids in tokenizer(list(prompts))["input_ids"])
    size = cfg.batch_size or auto_batch_size(model, max(lengths) + cfg.max_new_tokens, len(prompts))
    steps = math.ceil(len(prompts) / size) * cfg.max_new_tokens
    cache = resolve_cache(cfg.cache, model, decode_steps=steps, greedy=not cfg.do_sample)
    return DecodePlan(batch_size=size, cache=cache, lengths=lengths)


@torch.inference_mode()
def generate(model, tokenizer, prompts: Sequence[str], cfg: GenerationConfig | None = None,
             progress: bool = False, seeds: Sequence[int] | None = None,
             plan: DecodePlan | None = None) -> list[Generation]:
    """Generate one response per prompt, returned in the prompts' order (``plan``: the call's ``decode_plan``,
    made here when not given).

    Sampling (``cfg.do_sample``) draws each answer with its own generator, seeded by ``seeds`` (default: the
    first ``sample_seed`` of each prompt), so an answer does not depend on what it was batched with.
    """
    from harness.model import attention_kernels  # not at import: judging saved answers loads no transformers

    cfg = cfg or GenerationConfig()
    if cfg.do_sample and seeds is None:
        seeds = [sample_seed(cfg.seed, p, 0) for p in prompts]
    if seeds is not None and len(seeds) != len(prompts):
        raise ValueError(f"seeds: expected one per prompt ({len(prompts)}), got {len(seeds)}")
    if not prompts:
        return []
    model.eval()
    model.config.use_cache = True  # training switches it off; decoding without it is quadratic
    tokenizer.padding_side = "left"  # so every row's last prompt token sits at the same position
    plan = plan or decode_plan(model, tokenizer, prompts, cfg)
    batches = plan_batches(plan.lengths, plan.batch_size, fill=plan.cache in ("static", "graph"))
    positions = max(plan.lengths) + cfg.max_new_tokens
    decoding = _decoding(cfg, plan.cache, positions)
    if plan.cache == "static":
        _forget_cache_length(model)
    results: dict[int, Generation] = {}
    # (A decode step compiled or captured under one setting keeps the kernels it was made with: a process switching
    # ``cudnn_attention`` between compiled calls wants ``torch._dynamo.reset()``; the harness never switches.)
    with attention_kernels(model.device, cfg.cudnn_attention):
        graph = _graph_decoder(model, tokenizer, len(batches[0]), positions, cfg) if plan.cache == "graph" else None
        for batch in tqdm(batches, desc="generate", disable=not progress):
            chunk = [prompts[i] for i in batch]
            enc = tokenizer(chunk, return_tensors="pt", padding=True).to(model.device)
            rows = None if seeds is None or not cfg.do_sample else [seeds[i] for i in batch]
            if graph is not None:
                new = graph.run(enc["input_ids"], enc["attention_mask"])
            else:
                out = model.generate(**enc, **_sampling(cfg, rows, model.device), **decoding,
                                     eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
                new = out[:, enc["input_ids"].shape[1] :]
            for i, row in zip(batch, new, strict=True):
                seed = None if rows is None else seeds[i]  # type: ignore[index]
                results.setdefault(i, _one(prompts[i], row, tokenizer, seed))  # a repeat filling a batch is dropped
    return [results[i] for i in range(len(prompts))]


def timed(produce: Callable[[], T]) -> tuple[T, float]:
    """``produce()``'s result and its wall seconds, the GPU's queued work included (CUDA runs asynchronously)."""
    start = time.perf_counter()
    result = produce()
    return result, seconds_since(start)


def seconds_since(start: float) -> float:
    """Wall seconds since ``start`` (``time.perf_counter()``) once the GPU's queued work is done."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def generate_and_release(model, tokenizer, prompts: Sequence[str], cfg: GenerationConfig | None = None,
                         progress: bool = False) -> list[Generation]:
    """``generate`` with a model loaded just for it, dropped afterwards (three models need not share memory)."""
    try:
        return generate(model, tokenizer, prompts, cfg, progress)
    finally:
        del model
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def plan_batches(lengths: Sequence[int], size: int, *, fill: bool = False) -> list[list[int]]:
    """Prompt indices in batches of ``size``, longest first, so each batch pads to similar lengths.

    ``fill`` tops the last batch up with repeats of its own prompts, so every batch has one shape (a compiled
    decode step is specialised to its batch size).
    """
    if size < 1:
        raise InputError(f"generation batch_size {size}: expected at least 1")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches = [order[start : start + size] for start in range(0, len(order), size)]
    if fill and batches and len(batches[-1]) < size and len(batches) > 1:
        last = batches[-1]
        batches[-1] = last + [last[j % len(last)] for j in range(size - len(last))]
    return batches


def kv_cache_bytes(config: Any, positions: int, dtype_bytes: int) -> int:
    """Bytes of one sequence's KV cache over ``positions``: keys and values of every layer's KV heads."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    return 2 * text.num_hidden_layers * heads * head_dim * positions * dtype_bytes


def auto_batch_size(model, positions: int, n_prompts: int) -> int:
    """Every prompt in one batch where the KV cache fits in half the free GPU memory; 16 on CPU."""
    if model.device.type != "cuda":
        return min(CPU_BATCH, n_prompts)
    free, _ = torch.cuda.mem_get_info(model.device)
    dtype_bytes = torch.finfo(model.dtype).bits // 8 if model.dtype.is_floating_point else 2
    per_row = kv_cache_bytes(model.config, positions, dtype_bytes)
    return fitting_batch(free * KV_MEMORY_SHARE, per_row, n_prompts)


def fitting_batch(budget_bytes: float, per_row_bytes: int, n_prompts: int) -> int:
    """The largest batch (at most ``n_prompts``, at least 1) whose rows fit ``budget_bytes``, balanced so the
    batches are of equal size (300 prompts at room for 200 are two batches of 150, not 200 + 100)."""
    if per_row_bytes <= 0:
        raise ValueError(f"per_row_bytes: expected a positive size, got {per_row_bytes}")
    room = max(1, min(n_prompts, int(budget_bytes // per_row_bytes)))
    n_batches = math.ceil(n_prompts / room)
    return math.ceil(n_prompts / n_batches)


def resolve_cache(setting: str, model, decode_steps: int | None = None, greedy: bool = True) -> str:
    """``auto``: a static cache with a compiled decode step where transformers can compile the model (a plain model
    on CUDA) and the call decodes enough steps to pay for the compile (``COMPILE_MIN_STEPS``; None: assume so);
    else, for greedy decoding on CUDA, the eager step in a CUDA graph (``harness.decode``) where the model allows
    it; else the dynamic cache, eager. ``graph`` for a model the loop cannot decode is an error."""
    if setting not in CACHES:
        raise InputError(f"generation cache {setting!r}: expected one of {', '.join(CACHES)}")
    if setting == "graph" and not greedy:
        return "dynamic"  # the loop decodes greedily; a sampled call of a "graph" run decodes eagerly
    if setting == "graph" and (why := decode.unsupported(model)):
        raise InputError(f"generation cache 'graph': this model cannot decode in a CUDA graph: {why}")
    if setting != "auto":
        return setting
    if model.device.type != "cuda":
        return "dynamic"
    quantizer = getattr(model, "hf_quantizer", None)
    compileable = quantizer is None or getattr(quantizer, "is_compileable", False)
    if compileable and (decode_steps is None or decode_steps >= COMPILE_MIN_STEPS):
        return "static"
    return "graph" if greedy and decode.unsupported(model) is None else "dynamic"


def _graph_decoder(model, tokenizer, batch: int, positions: int, cfg: GenerationConfig) -> decode.GraphDecoder:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return decode.GraphDecoder(model, batch, positions, cfg.max_new_tokens, cfg.min_new_tokens,
                               tokenizer.eos_token_id, pad)


def _forget_cache_length(model) -> None:
    """Let this call's static cache be its own length, not the longest this model object was ever given.

    transformers sizes a new static cache to at least the longest earlier one (to spare a recompile), and attention
    over a longer cache rounds otherwise: in bf16 an answer then depended on the object's earlier calls (SmolLM2,
    H200, 12 seeded samples: 1 of 12 the same after a batch of longer prompts, 12 of 12 with the length
    forgotten; ``scripts/gpu-measure.sh compile-history``)."""
    for module in model.modules():  # a wrapper (peft) generates through the transformers model inside it
        module.__dict__.pop("_previous_max_cache_length", None)


def _decoding(cfg: GenerationConfig, cache: str, positions: int) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"max_new_tokens": cfg.max_new_tokens, "min_new_tokens": cfg.min_new_tokens}
    if cache == "static":
        # One cache length for every batch, so the compiled decode step is never specialised again.
        kwargs.update(cache_implementation="static", max_cache_len=positions)
    return kwargs


def _sampling(cfg: GenerationConfig, seeds: Sequence[int] | None, device: torch.device) -> dict[str, Any]:
    greedy = {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    if seeds is None:
        return greedy
    from transformers import LogitsProcessorList

    # The draw is made by RowSampler, which leaves one finite score per row for greedy selection to take.
    return {**greedy, "logits_processor": LogitsProcessorList([RowSampler(seeds, cfg.temperature, cfg.top_p,
                                                                          device)])}


class RowSampler:
    """Temperature + nucleus (top-p) sampling with one seeded generator per row, as a logits processor.

    transformers' own sampling draws every row from one global generator, so an answer depends on its batch
    mates; here row ``i``'s token depends only on its logits and ``seeds[i]``. Each step draws one uniform per
    row and inverts the row's nucleus CDF (sorted stably, so ties cannot reorder between runs).
    """

    def __init__(self, seeds: Sequence[int], temperature: float, top_p: float, device: torch.device) -> None:
        self.generators = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]
        self.temperature, self.top_p = temperature, top_p

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(scores.float() / self.temperature, dim=-1)
        sorted_probs, order = torch.sort(probs, dim=-1, descending=True, stable=True)
        before = sorted_probs.cumsum(-1) - sorted_probs  # mass ranked above each token
        sorted_probs = sorted_probs.masked_fill(before >= self.top_p, 0.0)  # the top token always stays
        cdf = sorted_probs.cumsum(-1)
        draws = torch.stack([torch.rand((), generator=g, device=scores.device) for g in self.generators])
        rank = torch.searchsorted(cdf, (draws * cdf[:, -1]).unsqueeze(-1)).clamp(max=cdf.shape[-1] - 1)
        token = order.gather(-1, rank)
        chosen = torch.full_like(scores, float("-inf"))
        return chosen.scatter_(-1, token, 0.0)


def _one(prompt: str, row: torch.Tensor, tokenizer, seed: int | None = None) -> Generation:
    eos = tokenizer.eos_token_id
    ids = row.tolist()
    terminated = eos in ids
    if terminated:
        ids = ids[: ids.index(eos)]
    ids = [i for i in ids if i != tokenizer.pad_token_id]
    return Generation(prompt=prompt, response=answer_text(ids, tokenizer, cut=not terminated),
                      new_tokens=len(ids) + int(terminated), terminated=terminated, seed=seed)


def answer_text(ids: Sequence[int], tokenizer, *, cut: bool) -> str:
    """The answer's text. For an answer the token budget ``cut`` (no EOS), the last character is dropped when
    it was not finished: a heart is 2-3 byte-level tokens in SmolLM2's vocabulary, and a cut after the first
    decodes to U+FFFD. The cut is the budget's, not the model's. ``terminated`` already counts that answer,
    and ``malformed`` must not count it again: in the sweep of docs/sweeps/smollm2-135m-2026-12-01-c, 236 of
    the 238 malformed answers were such cuts. vLLM's incremental detokenizer holds back a trailing U+FFFD the
    same way. Only the bytes of that one character go, found from the tokens' bytes. A broken byte before it,
    and an answer that stopped, are left as the model made them.
    """
    text = tokenizer.decode(list(ids), skip_special_tokens=True)
    if not cut or not text.endswith(REPLACEMENT):
        return text
    k = _unfinished_tail(tokenizer, ids)
    return tokenizer.decode(list(ids[:-k]), skip_special_tokens=True) if k else text


def _unfinished_tail(tokenizer, ids: Sequence[int]) -> int:
    """How many trailing tokens hold only the start of a UTF-8 character (whitespace before it allowed), or 0."""
    byte_level = _byte_level(tokenizer)
    pieces = [_piece_bytes(p, byte_level) for p in tokenizer.convert_ids_to_tokens(list(ids[-MAX_CHAR_TOKENS:]))]
    if any(p is None for p in pieces):
        return 0  # a piece whose bytes are unknown: leave the text as it is
    tail = b"".join(pieces)  # type: ignore[arg-type]  # no None left
    start = _unfinished_start(tail)
    if start is None:
        return 0
    k, covered = 0, 0  # the fewest pieces whose bytes cover the unfinished character
    while covered < len(tail) - start:
        k += 1
        covered += len(pieces[-k])  # type: ignore[arg-type]
    return k if not tail[len(tail) - covered : start].strip(b" \t\n") else 0


def _unfinished_start(data: bytes) -> int | None:
    """Where the unfinished UTF-8 character that ends ``data`` starts, or None if ``data`` ends otherwise."""
    for back in range(1, min(MAX_CHAR_TOKENS, len(data)) + 1):
        byte = data[-back]
        if 0x80 <= byte <= 0xBF:  # a continuation byte: its lead is further back
            continue
        need = 2 if 0xC2 <= byte <= 0xDF else 3 if 0xE0 <= byte <= 0xEF else 4 if 0xF0 <= byte <= 0xF4 else 0
        return len(data) - back if back < need else None
    return None


_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def _piece_bytes(piece: str, byte_level: bool) -> bytes | None:
    """A token's bytes: byte fallback's ``<0xF0>``, a byte-level BPE piece (GPT-2's byte alphabet), or a
    sentencepiece piece (``▁`` a space); None when they cannot be told."""
    found = _BYTE_PIECE.fullmatch(piece)
    if found:
        return bytes([int(found.group(1), 16)])
    if not byte_level:
        return piece.replace("\u2581", " ").encode()
    alphabet = _byte_alphabet()
    return bytes(alphabet[c] for c in piece) if all(c in alphabet for c in piece) else None


@functools.cache
def _byte_alphabet() -> dict[str, int]:
    """Byte-level BPE's character for each byte (GPT-2's table), inverted."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return {char: byte for byte, char in bytes_to_unicode().items()}


def _byte_level(tokenizer) -> bool:
    decoder = getattr(getattr(tokenizer, "backend_tokenizer", None), "decoder", None)
    return decoder is not None and b'"ByteLevel"' in decoder.__getstate__()


def write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    atomic_write_text(Path(path), "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
