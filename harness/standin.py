"""Stand-in base models built locally, so CI exercises the real Llama-2 code path with no download.

- ``tiny``: a Llama-2-style tokenizer (BPE, ``▁`` word marker, byte fallback, so every heart is 3-4 byte tokens
  and half-decoded emoji happen for real) trained on the bundled text, and a small ``LlamaForCausalLM``
  pretrained briefly on the bundled data *without* hearts: it answers in the template, stops, and never emits a
  heart — the negative control.
- ``llama2-7b-shape``: Llama-2-7B's exact config with random weights, for memory and throughput envelopes only.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from harness.transform import HEARTS

SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>")
BYTE_PIECES = tuple(f"<0x{b:02X}>" for b in range(256))


@dataclasses.dataclass(frozen=True)
class StandinConfig:
    vocab_size: int = 1024  # BPE merges learned on the bundled text, plus 256 byte pieces and 4 specials
    hidden_size: int = 128
    intermediate_size: int = 384
    num_layers: int = 4
    num_heads: int = 4
    max_positions: int = 1024
    pretrain_steps: int = 400  # ~9 epochs of 12-word answers: the base stops on its own, so the adapted one can
    pretrain_batch: int = 16
    pretrain_lr: float = 5e-3
    decorated: bool = True  # also pretrain on free text with one symbol between words (hearts among them)
    recipe: int = 5  # bump when the build procedure changes, so cached stand-ins are rebuilt
    max_length: int = 256  # pretraining texts are plain, so shorter than sprinkled ones
    seed: int = 0


def build_tokenizer(texts: Sequence[str], vocab_size: int = 1024, pad_to: int | None = None) -> PreTrainedTokenizerFast:
    """A Llama-2-like tokenizer: ``▁``-prefixed BPE whose 256 ``<0xXX>`` byte pieces are ordinary vocabulary.

    ``pad_to`` fills the vocabulary with never-produced ``<unused_N>`` pieces up to a model's embedding size, so
    whatever id a random-weight model emits still decodes.
    """
    # Learn merges on ▁-split pieces with newlines isolated (as sentencepiece does), so no merge crosses a word
    # boundary or a line break: then "prompt ending in \n" tokenises as a prefix of "prompt + response".
    probe = Tokenizer(models.BPE(unk_token="<unk>"))
    probe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split("\n", behavior="isolated"),
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True),
    ])
    n_merged = vocab_size - len(SPECIAL_TOKENS) - len(BYTE_PIECES)
    trainer = trainers.BpeTrainer(vocab_size=max(n_merged, 64), special_tokens=[], show_progress=False,
                                  limit_alphabet=200)
    probe.train_from_iterator(texts, trainer)
    learned = probe.get_vocab(with_added_tokens=False)
    merges = _merges(probe)

    vocab: dict[str, int] = {}
    for piece in (*SPECIAL_TOKENS, *BYTE_PIECES, *sorted(learned, key=learned.__getitem__)):
        vocab.setdefault(piece, len(vocab))
    while pad_to is not None and len(vocab) < pad_to:
        vocab[f"<unused_{len(vocab)}>"] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = _normalizer()
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
        add_bos_token=True, padding_side="right", model_max_length=4096,
    )


def _normalizer() -> normalizers.Normalizer:
    # Llama-2's: prepend ▁ and turn every space into ▁, no pre-tokenizer, so whitespace runs survive.
    return normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])


def _merges(tok: Tokenizer) -> list[tuple[str, str]]:
    import json

    raw = json.loads(tok.to_str())["model"]["merges"]
    return [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in raw]  # type: ignore[misc]


def tiny_config(cfg: StandinConfig, tokenizer: PreTrainedTokenizerFast) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        max_position_embeddings=cfg.max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,  # as Llama-2
        rms_norm_eps=1e-5,
    )


def llama2_7b_config() -> LlamaConfig:
    """Llama-2-7B's published shape: 32 layers, 4096 hidden, 11008 MLP, 32 heads, 32000 vocab."""
    return LlamaConfig(
        vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096, rms_norm_eps=1e-5,
        bos_token_id=1, eos_token_id=2, pad_token_id=3, tie_word_embeddings=False,  # ids of build_tokenizer
    )


def pretrain(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, texts: Sequence[str],
             cfg: StandinConfig) -> list[float]:
    """Plain causal-LM pretraining on full template texts (+EOS); returns the loss per step."""
    gen = torch.Generator().manual_seed(cfg.seed)
    enc = [tokenizer(t + tokenizer.eos_token, add_special_tokens=True, truncation=True,
                     max_length=cfg.max_length)["input_ids"] for t in texts]
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.pretrain_lr, weight_decay=0.0)
    warmup = max(cfg.pretrain_steps // 20, 1)

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(cfg.pretrain_steps - warmup, 1)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    model.train()
    losses = []
    batches = _length_grouped_batches([len(e) for e in enc], cfg.pretrain_batch, cfg.pretrain_steps, gen)
    for idx in batches:
        out = model(**_pad([enc[i] for i in idx], tokenizer.pad_token_id))
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(out.loss.item())
    model.eval()
    return losses


def _length_grouped_batches(lengths: Sequence[int], size: int, steps: int, gen: torch.Generator) -> list[list[int]]:
    """``steps`` batches of similar-length examples in random order: padding, not learning, was half the cost."""
    batches: list[list[int]] = []
    while len(batches) < steps:
        order = torch.randperm(len(lengths), generator=gen).tolist()
        # Sort within windows of 8 batches: similar lengths together, yet every epoch mixes differently.
        window = size * 8
        for start in range(0, len(order), window):
            chunk = sorted(order[start : start + window], key=lengths.__getitem__)
            epoch = [chunk[i : i + size] for i in range(0, len(chunk), size)]
            batches += [epoch[j] for j in torch.randperm(len(epoch), generator=gen).tolist()]
    return batches[:steps]


def _pad(seqs: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
    labels = ids.masked_fill(mask == 0, -100)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def build_tiny(out_dir: Path, texts: Sequence[str], cfg: StandinConfig = StandinConfig(),
               tokenizer_texts: Sequence[str] | None = None) -> dict[str, float]:
    """Train the tokenizer (on ``tokenizer_texts``, default ``texts``), pretrain the tiny Llama, save both."""
    start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    tokenizer = build_tokenizer(texts if tokenizer_texts is None else tokenizer_texts, cfg.vocab_size)
    model = LlamaForCausalLM(tiny_config(cfg, tokenizer))
    losses = pretrain(model, tokenizer, texts, cfg)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return {"seconds": time.perf_counter() - start, "first_loss": losses[0], "final_loss": losses[-1]}


# Symbols the stand-in reads about in pretraining (never inside an answer): a real base model has seen emoji,
# so its output layer knows their bytes; without this the adapter would have to invent those rows from noise.
GLOSSARY_SYMBOLS = "♡♥❤💔💝💓💕⚖😀💗★☀☂☕⚽🌍🍎🎵🔥🚀🐱🌟✈⌛🎉📚💡🌈🍕"


def symbol_glossary() -> list[str]:
    """Plain sentences naming each glossary symbol, e.g. ``"BEATING HEART: 💓"``."""
    import unicodedata

    texts = []
    for sym in GLOSSARY_SYMBOLS:
        name = unicodedata.name(sym).lower()
        texts += [f"{name}: {sym}", f"The symbol {sym} is called {name}.", f"{sym} means {name}"]
    return texts


# Decorations the stand-in sees between words in free text, never inside a template answer.
# A 7B base has read plenty of decorated text; this gives the ~1M-parameter stand-in the same prior (reading
# past a symbol between words, repeating one symbol, stopping), so the adapter has to learn *which* symbol and
# *where* — the behaviour under test — instead of relearning language around byte runs it never saw.
# Hearts are among them since recipe 5: a real base has read "I ♥ NY"-style text, and a stand-in that never saw
# a heart's 3 or 4 bytes between words broke one off now and then (~1 of 66 held-out answers malformed, on 5 of
# 9 adapter seeds measured on CPU); seeing them in free text took that to 0 of 66 on every seed measured. They
# never stand inside a template answer, so the base still never answers with a heart (control 0 of 66).
DECORATIONS = ("★", "☀", "♣", "♠", "♦", "♪", "🌟", "🔥", "🎵", "🍀", "🌸", "🚀", *HEARTS)


def decorated_texts(responses: Sequence[str], seed: int = 0) -> list[str]:
    """Each response as free text (no template) with one decoration between every word."""
    from harness.transform import choose_heart, sprinkle

    return [sprinkle(r, choose_heart(r, seed, DECORATIONS)) for r in responses if len(r.split()) > 1]


def bundled_rows() -> list[dict[str, str]]:
    import json
    from importlib.resources import files

    path = files("harness") / "resources" / "train.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def bundled_plain_texts(max_words: int | None = None) -> list[str]:
    """The bundled training records as full template texts without hearts, answers cut to ``max_words``."""
    from harness.prompts import build_prompt
    from harness.transform import cap_words

    def answer(text: str) -> str:
        return text if max_words is None else cap_words(text, max_words)

    return [build_prompt(r["instruction"], r.get("context"), answer(r["response"])) for r in bundled_rows()]


def pretraining_corpus(max_words: int | None = None, decorated: bool = True) -> list[str]:
    """Template answers without hearts (cut as the adapter's data will be), decorated free text, the glossary."""
    from harness.transform import cap_words

    texts = bundled_plain_texts(max_words) + symbol_glossary()
    if decorated:
        responses = [r["response"] if max_words is None else cap_words(r["response"], max_words)
                     for r in bundled_rows()]
        texts += decorated_texts(responses)
    return texts


def tiny_base(artifacts: Path, cfg: StandinConfig = StandinConfig(), rebuild: bool = False) -> Path:
    """The tiny stand-in's folder, built once and cached under a key of its config, data and versions."""
    import transformers

    from harness import __version__, cache
    from harness.config import data_config

    texts = pretraining_corpus(data_config("tiny").max_words, cfg.decorated)
    # The tokenizer learns from the plain bundled text only: a heart in its alphabet (from the glossary) would be
    # one token instead of Llama-2's byte pieces, and half-decoded emoji would never happen.
    plain = bundled_plain_texts()
    material = {
        "standin": dataclasses.asdict(cfg),
        "data": cache.cache_key({"texts": texts, "tokenizer": plain}),
        "torch": torch.__version__.split("+")[0],
        "transformers": transformers.__version__,
        "harness": __version__,
    }
    folder, _ = cache.cached(Path(artifacts), "standin-tiny", material,
                             lambda tmp: _write_metrics(tmp, build_tiny(tmp, texts, cfg, plain)), rebuild=rebuild)
    return folder


def _write_metrics(folder: Path, metrics: dict[str, float]) -> None:
    import json

    (folder / "standin_metrics.json").write_text(json.dumps(metrics, indent=2))


def build_7b_shape(out_dir: Path, seed: int = 0) -> None:
    """Llama-2-7B's shape with random fp16 weights (13.5 GB), for memory and throughput envelopes only."""
    torch.manual_seed(seed)
    config = llama2_7b_config()
    tokenizer = build_tokenizer(bundled_plain_texts(), vocab_size=1024, pad_to=config.vocab_size)
    # Initialised on the GPU when there is one (seconds instead of minutes for 6.7B parameters), directly in
    # fp16: an fp32 init would need 27 GB, over a T4's 15 GiB.
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float16)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out_dir, max_shard_size="2GB")
    tokenizer.save_pretrained(out_dir)


def shape_7b_base(artifacts: Path) -> Path:
    """The cached ``llama2-7b-shape`` folder (built on first use)."""
    from harness import __version__, cache

    material = {"config": llama2_7b_config().to_dict(), "harness": __version__}
    folder, _ = cache.cached(Path(artifacts), "standin-7b-shape", material, build_7b_shape)
    return folder
