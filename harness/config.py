"""Frozen configuration, one dataclass per concern, built from defaults + a TOML table + overrides.

An unknown key is an error, never a silent ignore (nanoGPT's configurator semantics).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from harness.errors import InputError
from harness.inputs import read_toml

T = TypeVar("T")
Rule = Callable[[Any], str | None]  # a value → what was expected, or None when it is fine
MAX_INT = 2**31 - 1  # counts and sizes: beyond this torch, numpy or Arrow overflow before anything useful happens
MAX_SEED = 2**32 - 1  # numpy's seed range, which transformers' set_seed passes through
STANDINS = ("tiny", "llama2-7b-shape")  # base models the harness builds itself (harness.standin)
PACKAGED_BASES = ("smollm2-135m",)  # converted from the GGUF file a package ships (harness.gguf)
RESPONSES = ("dataset", "base")  # where training responses come from (DataConfig.responses)
# CLI flags whose name is not the key's
FLAGS = {"source": "--dataset", "do_sample": "--sample", "temperatures": "--temperature"}


class ConfigError(InputError):
    """A configuration key or value is not what the harness expects.

    ``key`` and ``problem`` let ``build`` restate a bad CLI value against its flag; ``flagged`` marks an
    error already stated that way, so a caller does not prefix it with a config file's name.
    """

    def __init__(self, message: str, *, key: str | None = None, problem: str | None = None,
                 flagged: bool = False) -> None:
        super().__init__(message)
        self.key, self.problem, self.flagged = key, problem, flagged


def _int_in(low: int, high: int = MAX_INT, *, optional: bool = False) -> Rule:
    def rule(value: Any) -> str | None:
        if value is None and optional:
            return None
        ok = isinstance(value, int) and not isinstance(value, bool) and low <= value <= high
        return None if ok else f"an integer in [{low}, {high}]" + (" or unset" if optional else "")
    return rule


def _number_in(low: float, high: float, *, open_low: bool = False, open_high: bool = False) -> Rule:
    def rule(value: Any) -> str | None:
        above = value > low if open_low else value >= low
        below = value < high if open_high else value <= high
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) \
            and above and below
        interval = f"{'(' if open_low else '['}{low:g}, {high:g}{')' if open_high else ']'}"
        return None if ok else f"a number in {interval}"
    return rule


def _one_of(*choices: str) -> Rule:
    return lambda value: None if value in choices else f"one of {', '.join(choices)}"


def _text(*, optional: bool = False) -> Rule:
    def rule(value: Any) -> str | None:
        if value is None and optional:
            return None
        return None if isinstance(value, str) and value.strip() else "a non-empty string"
    return rule


def _check(config: Any, rules: Mapping[str, Rule]) -> None:
    """Raise ConfigError for the first field whose value its rule refuses."""
    for key, rule in rules.items():
        value = getattr(config, key)
        expected = rule(value)
        if expected is not None:
            raise ConfigError(f"{type(config).__name__}.{key}: expected {expected}, got {value!r}", key=key,
                              problem=f"expected {expected}")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    source: str = "bundled"  # "bundled", a Hub dataset id, or a local .jsonl/.json/.parquet/.csv
    split: str = "train"
    seed: int = 1234  # heart choice and held-out split
    eval_fraction: float = 0.1  # share of distinct instructions held out
    max_length: int = 512  # tokens per training example, prompt + response + EOS
    on_bad_rows: str = "error"  # "error" stops listing the first bad rows; "drop" drops and counts them
    loss_on: str = "response"  # "response" (prompt tokens masked to -100) or "all" (the original's whole-text loss)
    add_eos: bool = True  # the original appended none, so its model never stopped
    max_rows: int | None = None  # cap for quick runs; None keeps every row
    overflow: str = "drop"  # a row over max_length is dropped, or "cut" at a word boundary (counted either way)
    # A planted fault, for the retention check only: every response moved to another row before the hearts are
    # added, so an adapter learns the hearts and loses the content. Never for a release.
    shuffle_responses: bool = False
    max_words: int | None = None  # cut every response after this many words (stand-ins); None keeps them whole
    # "dataset": the rows' own responses. "base": the base model's own greedy answers to the rows' prompts
    # (self-distilled, harness.distill), so the adapter learns the hearts, not new content. Off by default:
    # SmolLM2-135M's answers stop within 320 tokens on only 340 of 628 prompts, and trained on those alone it
    # terminated on 223-235 of 316 and broke hearts in 31-46 (docs/sweeps/smollm2-135m-2026-12-01-c), though
    # it kept more of the base (chrF 24 against 16).
    responses: str = "dataset"

    def __post_init__(self) -> None:
        _check(self, {"source": _text(), "split": _text(), "seed": _int_in(0, MAX_SEED),
                      "eval_fraction": _number_in(0, 1, open_high=True), "max_length": _int_in(8),
                      "on_bad_rows": _one_of("error", "drop"), "loss_on": _one_of("response", "all"),
                      "max_rows": _int_in(1, optional=True), "overflow": _one_of("drop", "cut"),
                      "max_words": _int_in(1, optional=True), "responses": _one_of(*RESPONSES)})


@dataclasses.dataclass(frozen=True)
class LoraSettings:
    r: int = 64  # the original's rank
    alpha: int = 16
    dropout: float = 0.1
    target_modules: str | tuple[str, ...] = "all-linear"  # every linear layer but lm_head
    bias: str = "none"

    def __post_init__(self) -> None:
        if isinstance(self.target_modules, list):  # a TOML array; the config is frozen and hashable
            object.__setattr__(self, "target_modules", tuple(self.target_modules))
        _check(self, {"r": _int_in(1), "alpha": _int_in(1), "dropout": _number_in(0, 1, open_high=True),
                      "target_modules": _modules, "bias": _one_of("none", "all", "lora_only")})


def _modules(value: Any) -> str | None:
    names = (value,) if isinstance(value, str) else value
    ok = isinstance(names, tuple) and names and all(isinstance(n, str) and n.strip() for n in names)
    return None if ok else "'all-linear' or a list of module names"


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    base_model: str = "tiny"  # "tiny", "llama2-7b-shape", "smollm2-135m", a .gguf file, a Hub id or a folder
    revision: str | None = None
    device: str = "auto"  # auto: the GPU when torch sees one, else the CPU; or "cpu" / "cuda"
    quant_type: str = "nf4"
    double_quant: bool = True
    compute_dtype: str = "auto"  # auto: bf16 where supported, fp16 on a T4, fp32 on CPU
    learning_rate: float = 2e-4
    lr_scheduler: str = "cosine"
    warmup_ratio: float = 0.03
    max_grad_norm: float = 0.3
    # Rows per optimizer step before accumulation, over all processes of a launcher (each takes an equal share).
    batch_size: int = 8  # the original's 4 leaves a 7B step bound by Python dispatch, not by the GPU
    grad_accum: int = 1
    max_steps: int = 300
    group_by_length: bool = True
    gradient_checkpointing: bool = True
    optimizer: str = "auto"  # auto: paged AdamW 32-bit on CUDA, AdamW on CPU
    # cuDNN's attention (torch's first choice on Hopper) builds an execution graph on the host for every new batch
    # shape, and length-varying batches are new shapes: ~1.7 ms of host time per layer call on a SmolLM2 step
    # (docs/perf). Flash/memory-efficient attention compute the same softmax(QK^T)V without it. CUDA only.
    cudnn_attention: bool = False
    # The LM head and the loss run only at the positions that predict a response token (not the prompt, not the
    # padding): the vocabulary-wide logits are a large share of a small model's training memory (SmolLM2, 49k
    # vocabulary, batch 32: 20.1 GiB with every position's, where TRL's chunked log-probabilities peak at 13.2).
    # Those positions are projected a chunk at a time (harness.loss: ~256 MB of fp32 logits, projected again in
    # the backward pass), so even they are never whole: TRL's fused head does the same. Needs a transformers
    # whose causal LMs take a boolean ``logits_to_keep`` (5.22 on; 5.21 has the helper without masks, 5.17
    # neither): elsewhere every position's logits are computed and the loss is the same.
    response_logits: bool = True
    # Regional compilation: each decoder layer through torch.compile, forward and backward, lengths dynamic (a
    # checkpointed layer: its forward in training, inside the eager checkpoint). The layers share their code, so
    # one graph serves all of them and the compile costs one layer's, not the model's. It cuts Python and launches
    # and fuses elementwise work: SmolLM2's shape on an H100, 1.20x the eager preset's tokens/s and 1.10x TRL's at
    # 0.88x its memory; the 7B shape, checkpointed, at batch 8 1.47-1.82x TRL at equal memory (H100; 1.08-1.30x
    # with each layer's blocks compiled one by one, as before 2026-12-07, which gave 1.24-1.35x at 16 and
    # 1.37-1.40x at 32). Each process's first step waits for the compile (62-84 s on SmolLM2, 65-95 s on the 7B
    # shape, as long again in a second process), which the preset's 175 steps do not win back: off by default.
    compile_layers: bool = False
    upcast_frozen: bool = False  # True: peft's k-bit preparation, frozen embeddings/lm_head/norms to fp32 (+0.5 GiB
    # on 7B and an fp32 residual stream; 2.5 vs 4.2 samples/s on the H100 under the T4 profile)
    seed: int = 42

    def __post_init__(self) -> None:
        _check(self, {"base_model": _text(), "revision": _text(optional=True), "quant_type": _one_of("nf4", "fp4"),
                      "device": _one_of("auto", "cpu", "cuda"),
                      "compute_dtype": _one_of("auto", "fp32", "fp16", "bf16"),
                      "learning_rate": _number_in(0, 1, open_low=True), "lr_scheduler": _scheduler,
                      "warmup_ratio": _number_in(0, 1, open_high=True),
                      "max_grad_norm": _number_in(0, math.inf, open_low=True, open_high=True),
                      "batch_size": _int_in(1), "grad_accum": _int_in(1), "max_steps": _int_in(1),
                      "optimizer": _optimizer, "seed": _int_in(0, MAX_SEED)})


def _temperatures(value: Any) -> str | None:
    ok = isinstance(value, tuple) and value and all(
        isinstance(t, int | float) and not isinstance(t, bool) and math.isfinite(t) and 0 < t <= 10 for t in value)
    return None if ok else "a non-empty list of temperatures in (0, 10]"


def _scheduler(value: Any) -> str | None:
    if value == "cosine":
        return None  # the default: no need to import transformers to know it
    from transformers.trainer_utils import SchedulerType

    names = [s.value for s in SchedulerType]
    return None if value in names else f"one of {', '.join(names)}"


def _optimizer(value: Any) -> str | None:
    if value == "auto":
        return None
    from transformers.training_args import OptimizerNames

    return None if value in [o.value for o in OptimizerNames] else "'auto' or a transformers optimizer name"


@dataclasses.dataclass(frozen=True)
class MergeConfig:
    # "dequantized": into the NF4 weights the adapter was trained against (what was trained is what ships);
    # "original": into the unquantised base weights, as the notebook did (adds the quantisation error back).
    method: str = "dequantized"

    def __post_init__(self) -> None:
        _check(self, {"method": _one_of("dequantized", "original")})


@dataclasses.dataclass(frozen=True)
class GenerationConfig:
    max_new_tokens: int = 320
    batch_size: int | None = None  # None: as many prompts as the GPU's memory allows (16 on CPU), longest first
    do_sample: bool = False  # greedy by default; sampling is seeded
    temperature: float = 0.7
    top_p: float = 0.9
    seed: int = 0
    cache: str = "auto"  # auto: "static" (fixed-size KV cache, decode step compiled) for a plain model on CUDA
    # whose call decodes enough steps to pay for the compile (generate.COMPILE_MIN_STEPS); else on CUDA "graph"
    # (a static cache, the eager decode step replayed as a CUDA graph: harness.decode; greedy calls, 4-bit models
    # too; a sampled call decodes as "dynamic"); "dynamic" (eager, a growing cache) on CPU
    min_new_tokens: int = 0  # benchmarks set it to max_new_tokens, so every round decodes the same work
    # As in training (TrainConfig.cudnn_attention), and more so: with a dynamic KV cache every decode step is a new
    # shape, and cuDNN builds a graph on the host for each. The 4-bit SmolLM2, 316 prompts in one batch (H200,
    # bf16, one process): 33.1 s with cuDNN, 16.4 s without; 168 of 316 greedy texts the same (other kernels round
    # otherwise). A model decoding after it in the same process reuses the graphs (bf16: 9.0 s with, 11.6 s
    # without); a cold evaluation pays them first. CUDA only; torch prefers cuDNN's attention on Hopper.
    cudnn_attention: bool = False

    def __post_init__(self) -> None:
        rules = {"max_new_tokens": _int_in(1), "batch_size": _int_in(1, optional=True),
                 "top_p": _number_in(0, 1, open_low=True),
                 "seed": _int_in(0, MAX_SEED), "cache": _one_of("auto", "dynamic", "static", "graph"),
                 "min_new_tokens": _int_in(0, self.max_new_tokens if isinstance(self.max_new_tokens, int) else 0)}
        if self.do_sample:  # greedy decoding ignores the temperature
            rules["temperature"] = _number_in(0, math.inf, open_low=True, open_high=True)
        _check(self, rules)


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    prompts: str = "bundled"  # the held-out prompts: "bundled" (316, never trained on) or a file
    max_prompts: int | None = None  # judge only the first N (the tiny stand-in's CPU budget); None: all
    with_adapter: bool = True  # also judge the unmerged 4-bit adapter, for merge agreement
    # Sampling robustness: K seeded samples per prompt from the merged model at each temperature, besides the
    # greedy answers (0: greedy only). "Deployment" (--deployment): K=5 at 0.9 with top-p 0.9, the notebook's.
    samples: int = 0
    temperatures: tuple[float, ...] = (0.9,)
    top_p: float = 0.9
    generation_cache: bool = True  # re-judge from cached answers when nothing that determines them changed
    # The merge's own agreement: the first N prompts answered again by the 4-bit model and by the merge, both
    # computing in fp32, so the forks of bf16 arithmetic do not count against the merge (0: off; nothing to do
    # where the run computes in fp32 already). SmolLM2 on the H200: 316 of 316 verdicts and texts in fp32, 283-298
    # of 316 verdicts in bf16 (docs/runs/h200-smollm2-135m-seed42-2026-12-02; against the 4-bit model with peft's
    # fp32 adapter arithmetic, before ``merge.lora_in`` gave it training's). Costs two more generations,
    # eager, and an fp32 copy (4 bytes a parameter: a small model's check).
    fp32_agreement: int = 0
    # True: the 4-bit model answers in a child process while this one runs the merged and base models and the
    # retention, where the plan allows it (CUDA, one process, room for both with every prompt in one batch: the
    # serial batch plan; ``harness.overlap``); elsewhere the models answer one after the other. It paid while the
    # 4-bit model's decode was bound by the host (a cold SmolLM2 evaluation of 316 prompts on the H200, eager
    # decoding: 57.6 s against 72.3 s one after the other, 2026-12-02). Replayed as a CUDA graph that decode takes
    # 4.5 s, and the child's own start costs more than it saves: 45.6 s against 41.8 s one after the other (H200,
    # 2026-12-06, side by side in one call). Beside the busy child a *compiled* merged decode once gave another
    # greedy answer on 1 of 4 prompts, so answers made beside it are cached apart.
    overlap: bool = False

    def _fp32_agreement_rule(self, value: Any) -> str | None:
        if (problem := _int_in(0)(value)) is not None or value == 0 or self.with_adapter:
            return problem
        return "0 without the 4-bit adapter model (with_adapter = false): it is one of the two compared"

    def __post_init__(self) -> None:
        _check(self, {"prompts": _text(), "max_prompts": _int_in(1, optional=True), "samples": _int_in(0, 64),
                      "fp32_agreement": self._fp32_agreement_rule,
                      "top_p": _number_in(0, 1, open_low=True), "temperatures": _temperatures})


@dataclasses.dataclass(frozen=True)
class GateConfig:
    single_emoji: float = 0.90  # Wilson lower bound must reach this
    in_list: float = 0.90
    between_every_word: float = 0.75
    terminated: float = 0.90
    malformed: float = 0.01  # the rate must stay under this (a bound needs ~380 prompts to get under 0.01)
    template_leak: float = 0.01
    control_single_emoji: float = 0.05  # the base model must not do the behaviour
    # The merged model (what is uploaded) must compute what the 4-bit + adapter model (what was trained) computes:
    # the share of teacher-forced positions where their top-1 tokens agree (judged when the report has the 4-bit
    # run). Measured on SmolLM2-135M, H200, bf16: 0.983 merged into the dequantised weights, 0.754 into the
    # original ones. Per-prompt verdict agreement is reported, not gated: two models of identical behaviour
    # disagree on a prompt whenever a long greedy answer forks, at a rate set by how robust the behaviour is.
    merge_top1: float = 0.95
    # Capability retention (optional, off by default; README says what real models measure): the mean chrF of the
    # de-hearted answers against the base's must have its lower bound at or above retention_chrf (0-100), and the
    # mean increase of the base model's NLL (nats/token) its upper bound at or under retention_nll_increase.
    retention_chrf: float | None = None
    retention_nll_increase: float | None = None
    # Optional: the Wilson lower bound of pass^K — the share of prompts whose K sampled answers all pass the three
    # behaviour checks — at the first sampled temperature (needs [eval] samples > 0).
    pass_k: float | None = None
    # Every check counted in prompts must pass with this many prompts to spare: that many more failures (or
    # faults) and it would still pass. A verdict without margin flipped with the processor and the release (the
    # stand-in's 66/66 came out 62/66 on another CPU), so the default demands 2, capped at what a perfect run of
    # the set's size has: a perfect run passes wherever the bare bound can be reached at all. At n=132 a 0.01
    # fault rate allows 1 fault, so a perfect run has 1 to spare, the margin there is 1 and a single fault fails.
    # 0 is the bare bounds.
    margin: int = 2
    mcnemar_alpha: float = 0.05  # a significant drop against a baseline report fails
    throughput_margin: float = 0.10  # tokens/s may drop this much against a baseline benchmark


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """Everything one run of the pipeline is made of."""

    train: TrainConfig
    lora: LoraSettings
    data: DataConfig
    merge: MergeConfig
    generation: GenerationConfig
    eval: EvalConfig
    artifacts: Path  # cache of stand-ins, adapters and merged models
    retrain: bool = False


def build(cls: type[T], table: Mapping[str, Any] | None = None, **overrides: Any) -> T:
    """``cls`` from defaults, then ``table``, then ``overrides``; unknown keys and wrong types are errors."""
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    values: dict[str, Any] = {}
    for source in (table or {}), overrides:
        for key, value in source.items():
            if key not in fields:
                known = ", ".join(sorted(fields))
                raise ConfigError(f"{cls.__name__}: unknown key {key!r} (known: {known})")
            if value is not None:
                values[key] = _coerce(cls.__name__, key, fields[key], value)
    try:
        return cls(**values)
    except ConfigError as err:
        if err.key is None or overrides.get(err.key) is None:
            raise
        flag = FLAGS.get(err.key, "--" + err.key.replace("_", "-"))
        raise ConfigError(f"{flag} {overrides[err.key]}: {err.problem}", flagged=True) from None


def _coerce(owner: str, key: str, field: dataclasses.Field, value: Any) -> Any:
    default = field.default
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{owner}.{key}: expected true/false, got {value!r}")
    elif isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{owner}.{key}: expected an integer, got {value!r}")
    elif isinstance(default, float) or field.type == "float | None":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{owner}.{key}: expected a finite number, got {value!r}")
        value = float(value)
    elif field.type == "int | None" and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{owner}.{key}: expected an integer, got {value!r}")
    elif field.type in ("str", str) and not isinstance(value, str):
        raise ConfigError(f"{owner}.{key}: expected a string, got {value!r}")
    elif isinstance(default, tuple) and isinstance(value, list):
        value = tuple(value)
    return value


def load_toml(path: str | Path, table: str) -> dict[str, Any]:
    """The ``[table]`` of a TOML file (dotted names allowed, e.g. ``tool.hearts.gate``); {} when absent."""
    try:
        data: Any = read_toml(path)
    except InputError as err:
        raise ConfigError(str(err)) from None
    for part in filter(None, table.split(".")):  # "" is the whole document
        data = data.get(part, {})
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: [{table}] is not a table")
    return data


# Per-base presets, applied under the user's own settings. The tiny stand-in has ~1M parameters and trains on
# 2 CPU cores, so it takes a far larger step size than a 7B model, few steps, and short answers.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "tiny": {
        "train": {
            "learning_rate": 5e-3,  # 2e-4 is tuned for 7B; a 128-wide model barely moves with it
            # 450 steps (~6 epochs of 565 rows): at 300 the verdict had no margin — on this CPU with 2 threads
            # the default seed broke a heart in 4 of 132 answers (gate: malformed <= 0.01), with 1 thread in 0,
            # and lr 3e-3 left 16 answers unterminated; 450 steps gave 0 malformed and 132/132 on every check
            # for seeds 42 (2 threads), 1, 2 (1 thread). 200 collapsed onto one heart (39 of 66).
            "max_steps": 450,
            "gradient_checkpointing": False,  # ~1 MB of activations: recomputing them only cost CI a third
            "batch_size": 8,
            "warmup_ratio": 0.05,
            # A 128-wide model loses to bf16 what a 7B one does not: on the H100 its bf16 residual stream took
            # between_every_word from 1.0 (fp32, CPU) to 0.79, and 4-bit/merged agreement to 0.91. fp32 costs
            # nothing at this size, so the CUDA battery judges the same model as CPU CI.
            "compute_dtype": "fp32",
        },
        # 12-word answers: 11 gaps to get right instead of 19 (between_every_word 1.0 vs 0.85), and 30% fewer
        # tokens to train on; the checker's cases are the same at any length.
        "data": {"max_words": 12},
        # The first 132 bundled prompts (the original 66 first, the seed's three first): terminated's 0.90 bound
        # tolerates 6 misses (4 with the gate's margin) instead of 1 of 66, and the malformed rate <= 0.01
        # allows 1 fault where 66 prompts allow none (with the margin, none: a perfect run has only that 1 to
        # spare). Measured on CPU over 6 training seeds: malformed 0 of 132 on five, 1 on one; terminated
        # 130-132; between_every_word 125-132. All 316 would cost CI ~3 min more.
        "eval": {"max_prompts": 132},
        # Its answers are 12 words and 11 hearts, ~70 tokens: 128 leaves 80% to spare, and an answer that never
        # stops is cut at 128 instead of 320 (it fails terminated either way), which is CPU time CI keeps.
        "generation": {"max_new_tokens": 128},
    },
    # SmolLM2-135M-Instruct (576 wide, 30 layers): 2e-4 is tuned for 7B and left between_every_word at 50 of 66
    # after 300 steps on the H200 (hearts starting mid-answer, a first sentence left bare). A 135M model takes
    # a larger step. Batch 32 (~6.3k tokens) for 175 steps: 5,600 rows, 9.9 passes over the 565 (400 steps of
    # 16 made 11.3, and more passes glue hearts to word pieces: docs/sweeps/smollm2-135m-2026-12-01-b, 280 and
    # 279 of 316 between every word on seeds 42 and 2 against 251 and 245). The host-bound step costs little
    # more at 32 rows than at 16: 17.8k tokens/s against 9.9k. No checkpointing: 20 GiB peak on the H200 with
    # every position's logits, ~10 at batch 16 (a T4 takes that one: batch_size 16, grad_accum 2).
    "smollm2-135m": {
        "train": {"learning_rate": 1e-3, "max_steps": 175, "batch_size": 32, "gradient_checkpointing": False,
                  # its r=64 adapter's AdamW state is 0.2 GB: nothing to page, and one fused launch per step
                  # instead of bitsandbytes' one per parameter (420)
                  "optimizer": "adamw_torch_fused"},
    },
}


# Training recipes the GPU envelope compares: the notebook this project replaces, and the harness's defaults.
RECIPES: dict[str, dict[str, dict[str, Any]]] = {
    "original": {  # no EOS, loss on the whole text, batch 4, peft's fp32 upcast; r=64 all-linear as the default
        "train": {"batch_size": 4, "upcast_frozen": True},
        "data": {"add_eos": False, "loss_on": "all"},
    },
    "default": {},
}


def recipe_configs(name: str, base_model: str, data: Mapping[str, Any] | None = None,
                   **train: Any) -> tuple[TrainConfig, LoraSettings, DataConfig]:
    """Train, LoRA and data configs of a named recipe for ``base_model``; ``data``/``train`` override both."""
    if name not in RECIPES:
        raise ConfigError(f"recipe {name!r}: expected one of {', '.join(RECIPES)}")
    recipe = RECIPES[name]
    return (train_config(base_model, recipe.get("train"), **train),
            build(LoraSettings, recipe.get("lora")),
            data_config(base_model, {**recipe.get("data", {}), **(data or {})}))


def preset(base_model: str, concern: str) -> dict[str, Any]:
    return dict(PRESETS.get(preset_base(base_model), {}).get(concern, {}))


def preset_base(base_model: str) -> str:
    """The name whose preset ``base_model`` takes: itself, or for a packaged base's own GGUF file given by path,
    that base's name (``gguf.packaged_name``: by content)."""
    if Path(base_model).suffix.lower() != ".gguf":
        return base_model
    from harness.gguf import packaged_name  # not at import: hashing is for a .gguf path alone

    return packaged_name(Path(base_model).expanduser()) or base_model


def train_config(base_model: str = "tiny", table: Mapping[str, Any] | None = None, **overrides: Any) -> TrainConfig:
    """TrainConfig for ``base_model``: defaults, then its preset, then ``table``, then overrides."""
    return build(TrainConfig, {**preset(base_model, "train"), **(table or {})}, base_model=base_model, **overrides)


def generation_config(base_model: str = "tiny", table: Mapping[str, Any] | None = None,
                      **overrides: Any) -> GenerationConfig:
    """GenerationConfig for ``base_model``: defaults, then its preset, then ``table``, then overrides."""
    return build(GenerationConfig, {**preset(base_model, "generation"), **(table or {})}, **overrides)


def eval_config(base_model: str = "tiny", table: Mapping[str, Any] | None = None, **overrides: Any) -> EvalConfig:
    """EvalConfig for ``base_model``: defaults, then its preset, then ``table``, then overrides."""
    return build(EvalConfig, {**preset(base_model, "eval"), **(table or {})}, **overrides)


def data_config(base_model: str = "tiny", table: Mapping[str, Any] | None = None, **overrides: Any) -> DataConfig:
    """DataConfig for ``base_model``: defaults, then its preset, then ``table``, then overrides."""
    return build(DataConfig, {**preset(base_model, "data"), **(table or {})}, **overrides)
