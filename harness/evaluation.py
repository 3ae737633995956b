"""Stage 7: evaluation — every model of a run answers the held-out prompts, is judged, and the report is built.

``evaluate`` is the one way to do it: ``hearts eval``, ``hearts run`` and the test fixtures all call it. Models
load one at a time and each is dropped before the next, in the order that lets a later one use what an earlier
one left behind (with ``[eval] overlap``, the first answers in a child process while the merged and base models
answer here and the retention is measured; the merged model then loads again for its samples and fidelity:
``harness.overlap``):

1. the 4-bit base + adapter, as trained (``[eval] with_adapter``): its answers, for the merged model's verdict
   agreement, and its logits on a few of those answers, the reference for the merge's logit fidelity;
2. the merged model, the release: its greedy answers, its logits on the same inputs, and — with
   ``[eval] samples`` K > 0 — K seeded samples per prompt at each of ``[eval] temperatures``;
3. the base model, the negative control: its answers, then its NLL of both answer sets (capability retention);
4. with ``[eval] fp32_agreement`` N (a run computing in bf16 or fp16): the 4-bit model and the merge again, both
   in fp32, on the first N prompts — the agreement the merge itself is answerable for, without the forks of
   half-precision arithmetic.

Answers and measurements come from the generation cache (``harness.answers``) when their inputs are unchanged,
and a model is loaded only when something it must produce is missing: re-judging after a checker or gate
change loads no model at all. Under ``torchrun``/``accelerate launch`` every rank loads each model on its own
device and answers its share of the prompts (``harness.distributed.sharded``); every rank then holds the same
answers, so the report is the one a single process makes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from harness import answers, cache, data, distributed, generate, merge, model, overlap, retention
from harness.config import EvalConfig, GenerationConfig, RunSettings, TrainConfig
from harness.generate import Generation
from harness.report import build_report
from harness.train import METRICS, TrainedAdapter

if TYPE_CHECKING:
    from transformers import BatchEncoding

SAMPLED = "sampled@"  # the name of a sampled answer set: SAMPLED + its temperature
DECODE_NAMES = {"static": "compiled", "graph": "graph"}  # the report's name for how a plan's cache decodes
FP32_ADAPTER, FP32_MERGED = "adapter@fp32", "merged@fp32"  # the answer sets of the fp32 agreement
MEASURED_SETS = ("adapter", "merged", "control")  # the answer sets the measurements are made on
FIDELITY_PROMPTS = 4  # teacher-forced answers the merge's logits are compared on: enough positions, little memory
# Bumped when the measurements' arithmetic changes, so no cached entry from before is served: 2, their passes no
# longer on cuDNN's attention (``model.measuring_kernels``).
MEASURE_RECIPE = 2
CONFIG_TABLES = ("train", "lora", "data", "merge", "generation", "eval")


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """Every model's answers on the same prompts, and the report built from them."""

    prompts: list[str]
    merged: list[Generation]
    control: list[Generation]
    adapter: list[Generation] | None
    sampled: dict[float, list[Generation]]  # temperature -> K answers per prompt, prompt-major
    report: dict[str, Any]
    generated: tuple[str, ...]  # which answer sets were generated now (the rest came from the cache)


def held_out_prompts(cfg: EvalConfig) -> list[str]:
    """The prompt texts of the evaluation set (``cfg.prompts``, the first ``cfg.max_prompts``)."""
    return generate.prompts_for(data.load_eval_prompts(cfg.prompts)[: cfg.max_prompts])


@dataclasses.dataclass
class Stages:
    """Wall seconds per named stage, in the order first met, the GPU's queued work included: the report's
    ``stage_timing``, where a command's time went besides generation."""

    seconds: dict[str, float] = dataclasses.field(default_factory=dict)

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        """Adds the block's seconds to ``name``'s."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, generate.seconds_since(start))


@dataclasses.dataclass
class _Run:
    """What one evaluation needs and has so far: settings, identities (cache keys) and outputs."""

    s: RunSettings
    adapter: TrainedAdapter
    merged_dir: Path
    tokenizer: Any
    prompts: list[str]
    progress: bool
    keys: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    outputs: dict[str, list[Generation]] = dataclasses.field(default_factory=dict)
    generated: list[str] = dataclasses.field(default_factory=list)
    timing: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)  # answer set -> seconds, tok/s
    stages: Stages = dataclasses.field(default_factory=Stages)
    child: overlap.Child | None = None  # spawned already for the 4-bit model's answers, if they go beside
    overlap_batch: int | None = None  # the batch the models answer in side by side; None: one after the other

    @property
    def use_cache(self) -> bool:
        return self.s.eval.generation_cache and not self.s.retrain


def evaluate(s: RunSettings, adapter: TrainedAdapter, merged_dir: Path, *, progress: bool = False,
             stages: Stages | None = None, child: overlap.Child | None = None) -> Evaluation:
    """Generate with every model of the run, judge, measure fidelity and retention, and build the report.

    ``stages``: the command's stages so far (its imports, the adapter and merge), which the evaluation's follow in
    the report's ``stage_timing``; ``child``: a process spawned already (``overlap.warm_child``) for the 4-bit
    model's answers, if they are made beside the others (its owner ends it either way)."""
    stages = Stages() if stages is None else stages
    with stages("tokenizer and prompts"):
        tokenizer, prompts = model.load_tokenizer(adapter.path), held_out_prompts(s.eval)
    run = _Run(s, adapter, merged_dir, tokenizer, prompts, progress, stages=stages, child=child)
    with run.stages("cache keys"):  # content digests of the merged weights and the adapter
        run.overlap_batch = _overlap_plan(run)
        run.keys = _identities(run)
    # The measurements (logit fidelity, retention) come from the greedy answers alone: adding samples or the fp32
    # agreement must not measure again.
    measure_key = {"answers": {name: cache.cache_key(run.keys[name]) for name in MEASURED_SETS if name in run.keys},
                   "fidelity_prompts": FIDELITY_PROMPTS, "recipe": MEASURE_RECIPE}
    # Rank 0 reads the cache for all ranks: a concurrent run completing an entry between two ranks' lookups
    # would send them down different paths (and into different collectives).
    with run.stages("cache lookup"):
        found, measured = distributed.broadcast(_cached_outputs(run, measure_key) if distributed.world().main
                                                else None)
    run.outputs.update(found)
    fresh = _run_models(run, need_measure=measured is None)
    if measured is None:
        measured = fresh
        if run.use_cache:
            answers.store_json(s.artifacts, "measurements", measure_key, measured)
    return _assemble(run, measured)


def _cached_outputs(run: _Run, measure_key: dict[str, Any]
                    ) -> tuple[dict[str, list[Generation]], dict[str, Any] | None]:
    """The answer sets and measurements the generation cache already holds for this run."""
    if not run.use_cache:
        return {}, None
    found = {name: answers.lookup_answers(run.s.artifacts, key) for name, key in run.keys.items()}
    return ({name: got for name, got in found.items() if got is not None},
            answers.lookup_json(run.s.artifacts, "measurements", measure_key))


def _identities(run: _Run) -> dict[str, dict[str, Any]]:
    """The cache key material of each answer set: the model's content, tokenizer, prompts and settings."""
    s = run.s
    base_id = model.base_fingerprint(s.train.base_model, run.adapter.base, s.train.revision)
    shared = answers.identity(run.tokenizer, run.prompts, s.generation, s.train)
    keys = {"merged": {**shared, "model": {"merged": cache.content_digest(run.merged_dir)}},
            "control": {**shared, "model": base_id}}
    if s.eval.with_adapter:
        quant = {k: getattr(s.train, k) for k in ("quant_type", "double_quant")}
        # "lora": the product in the compute dtype, as training's autocast computed it (``merge.lora_in``);
        # answers cached before, from peft's fp32 arithmetic, are not served.
        keys["adapter"] = {**shared, "model": {"adapter": cache.content_digest(run.adapter.path), "base": base_id,
                                               **quant, "lora": "compute dtype"}}
    for temperature in s.eval.temperatures if s.eval.samples else ():
        keys[f"{SAMPLED}{temperature}"] = {**keys["merged"], "sampling": _sampling(s, temperature)}
    if run.overlap_batch is not None:
        # Beside the busy child a compiled decode may answer otherwise (``harness.overlap``; "auto" compiles where
        # a call decodes many steps): such answers are not served to a run that did not make them so. Keyed by
        # the plan, not the setting: a run that cannot overlap (CPU, a launcher, no room) shares the serial
        # entries. The samples are drawn after the child has gone.
        for name in ("merged", "control"):
            keys[name] = {**keys[name], "beside_4bit_child": True}
    if prompts := _fp32_prompts(run):
        in_fp32 = answers.identity(run.tokenizer, prompts, _fp32_generation(s), _fp32_train(s))
        keys[FP32_ADAPTER] = {**in_fp32, "model": keys["adapter"]["model"]}
        keys[FP32_MERGED] = {**in_fp32, "model": {**keys["adapter"]["model"], "merged_in_memory": s.merge.method}}
    return keys


def _fp32_prompts(run: _Run) -> list[str]:
    """The prompts of the fp32 agreement: none where it is off or the run is fp32 already (EvalConfig refuses it
    without the 4-bit model)."""
    s = run.s
    if not s.eval.fp32_agreement or model.run_dtype(s.train) == torch.float32:
        return []
    return run.prompts[: s.eval.fp32_agreement]


def _fp32_train(s: RunSettings) -> TrainConfig:
    """The run's training config computing in fp32: what both models of the fp32 agreement load with."""
    return dataclasses.replace(s.train, compute_dtype="fp32")


def _fp32_generation(s: RunSettings) -> GenerationConfig:
    """Eager decoding for both: a compiled step rounds otherwise than eager kernels (the 4-bit model is eager),
    and an fp32 compile would cost more than the decoding (SmolLM2, H200: ~34 s)."""
    return dataclasses.replace(s.generation, cache="dynamic")


def _sampled_sets(names: Iterable[str]) -> dict[str, float]:
    """The sampled answer sets among ``names``, with their temperatures."""
    return {name: float(name.removeprefix(SAMPLED)) for name in names if name.startswith(SAMPLED)}


def _sampling(s: RunSettings, temperature: float) -> dict[str, Any]:
    return {"samples": s.eval.samples, "temperature": temperature, "top_p": s.eval.top_p, "seed": s.generation.seed}


def _run_models(run: _Run, *, need_measure: bool) -> dict[str, Any]:
    """Load each model that must produce something (answers not cached, or measurements); returns the
    measurements when ``need_measure``."""
    measured: dict[str, Any] = {}
    wants_adapter = "adapter" in run.keys and ("adapter" not in run.outputs or need_measure)
    beside = None
    try:
        beside = _start_beside(run, need_measure) if wants_adapter else None
        if beside is not None:
            _answers_beside(run, beside, measured, need_measure)
        else:
            reference = _adapter_here(run, need_measure) if wants_adapter else None
            if _merged_wanted(run) or reference is not None:
                _merged_answers(run, reference, measured)
            if "control" not in run.outputs or need_measure:
                _control_answers(run, measured, need_measure)
    finally:
        if beside is not None:  # exited already after its answers; ended here if this process failed first
            beside.child.stop()
    _answer_in_fp32(run)
    return measured


def _merged_wanted(run: _Run) -> bool:
    """Whether the merged model has answers (greedy or sampled) to make."""
    return any(k not in run.outputs for k in ("merged", *_sampled_sets(run.keys)))


def _adapter_here(run: _Run, need_measure: bool) -> torch.Tensor | None:
    """The 4-bit model's answers in this process; returns its logits for the fidelity when ``need_measure``."""
    s = run.s
    with run.stages("load adapter"):
        lm = merge.load_adapter_model(run.adapter.base, run.adapter.path, s.train, model.run_dtype(s.train))
    _answer(run, "adapter", lm)
    reference = None
    if need_measure:
        with run.stages("fidelity"):
            reference = merge.logits_on(lm, _teacher_forced(run))
    del lm
    _release_memory()
    return reference


def _merged_answers(run: _Run, reference: torch.Tensor | None, measured: dict[str, Any]) -> None:
    """The release's greedy answers and samples (those not made yet), then its logit fidelity against the 4-bit
    ``reference``."""
    lm = _load_merged(run)
    _answer(run, "merged", lm)
    for key, temperature in _sampled_sets(run.keys).items():
        _answer(run, key, lm, _samples(run, temperature))
    if reference is not None:
        with run.stages("fidelity"):
            measured["fidelity"] = merge.compare_logits(reference, merge.logits_on(lm, _teacher_forced(run)))
    del lm, reference
    _release_memory()


def _load_merged(run: _Run):
    """The merged model on the run's device, in its dtype (a stage of its own)."""
    with run.stages("load merged"):
        return merge.load_merged(run.merged_dir, model.run_dtype(run.s.train), model.run_device(run.s.train))


def _control_answers(run: _Run, measured: dict[str, Any], need_measure: bool,
                     beside: _Beside | None = None) -> None:
    """The base model's answers (the negative control), then its NLL of both answer sets (retention); ``beside``:
    while the child decodes."""
    s = run.s
    with run.stages("load control"):
        lm = model.load_base(run.adapter.base, model.run_dtype(s.train), s.train.revision,
                             model.run_device(s.train))
    if beside is None:
        _answer(run, "control", lm)
    else:  # in the batch the plan was made for, as the merged model's
        _answer(run, "control", lm, (run.prompts, beside.generation, None), beside="adapter")
    if need_measure:
        with run.stages("retention"):
            measured["retention"] = retention.measure(lm, run.tokenizer, run.prompts,
                                                      [g.response for g in run.outputs["merged"]],
                                                      [g.response for g in run.outputs["control"]])
    del lm
    _release_memory()


def _answers_beside(run: _Run, beside: _Beside, measured: dict[str, Any], need_measure: bool) -> None:
    """While the child decodes: the merged model's greedy answers, then the base model's answers and retention;
    once it is done, the merged model again (the weights read from the page cache) for the samples and the logit
    fidelity against the child's reference. Everything but the 4-bit model's decoding happens beside it."""
    beside.child.raise_early_error()  # e.g. an adapter it cannot load: said before the merged model decodes
    lm = _load_merged(run)
    _answer(run, "merged", lm, (run.prompts, beside.generation, None), beside="adapter")
    del lm
    _release_memory()
    if "control" not in run.outputs or need_measure:
        beside.child.raise_early_error()
        _control_answers(run, measured, need_measure, beside)
    with run.stages("wait for adapter"):  # the child's answers, if it is still decoding
        reference = _collect_beside(run, beside)
    if _merged_wanted(run) or reference is not None:  # the child has exited: its memory is free for the samples
        _merged_answers(run, reference, measured)


@dataclasses.dataclass(frozen=True)
class _Beside:
    """The 4-bit model answering in a child process (``harness.overlap``), and the batch both models use."""

    child: overlap.Child
    generation: GenerationConfig


def _overlap_plan(run: _Run) -> int | None:
    """The batch the 4-bit model answers in beside the others, where ``[eval] overlap`` asks for it with the
    4-bit model and it changes no batch plan (``overlap.planned_batch``); None: one after the other."""
    s = run.s
    if not overlap.asked(s):
        return None
    return overlap.planned_batch(run.merged_dir, run.tokenizer, run.prompts, s.generation,
                                 model.run_device(s.train), model.run_dtype(s.train))


def _start_beside(run: _Run, need_measure: bool) -> _Beside | None:
    """The 4-bit model's answers started in a child process where the plan overlaps; None: it answers here,
    before the merged model."""
    s = run.s
    if run.overlap_batch is None or "adapter" in run.outputs or "merged" in run.outputs:
        return None  # one after the other, or nothing to overlap: the other model has its answers already
    cfg = dataclasses.replace(s.generation, batch_size=run.overlap_batch)
    # A warm child that died meanwhile (a `hearts run` trains for a while) is replaced, not reported.
    warm = run.child if run.child is not None and run.child.running else None
    child = warm or overlap.Child()
    try:
        child.start(run.adapter.base, run.adapter.path, s.train, model.run_dtype(s.train), run.prompts, cfg,
                    FIDELITY_PROMPTS if need_measure else 0)
    except BaseException:
        if warm is None:  # spawned here and not handed over: ended here (a warm one is its owner's)
            child.stop()
        raise
    return _Beside(child, cfg)


def _collect_beside(run: _Run, beside: _Beside) -> torch.Tensor | None:
    """The child's answers, kept like any answer set; returns its logits for the fidelity (None: not asked)."""
    made, reference, seconds = beside.child.result()
    meanwhile = [name for name in ("merged", "control") if run.timing.get(name, {}).get("beside")]
    _keep(run, "adapter", made, seconds, beside=" and ".join(meanwhile) or None)
    return reference


def _answer_in_fp32(run: _Run) -> None:
    """The fp32 agreement's answers: the 4-bit model as trained, then the merge made in memory, both in fp32."""
    s, adapter = run.s, run.adapter
    prompts = _fp32_prompts(run)
    if not prompts:
        return
    train32, cfg = _fp32_train(s), _fp32_generation(s)
    loads = {FP32_ADAPTER: lambda: merge.load_adapter_model(adapter.base, adapter.path, train32, torch.float32),
             FP32_MERGED: lambda: merge.load_merged_in_memory(adapter.base, adapter.path, train32, torch.float32,
                                                              method=s.merge.method)}
    for name, load in loads.items():
        if name not in run.outputs:  # one model at a time, dropped before the next
            with run.stages(f"load {name}"):
                lm = load()
            _answer(run, name, lm, (prompts, cfg, None))
            del lm
            _release_memory()


_Sampling = tuple[list[str], Any, list[int] | None]  # prompts, generation config, a seed per answer (None: greedy)


def _answer(run: _Run, name: str, lm, sampling: _Sampling | None = None, beside: str | None = None) -> None:
    """``name``'s answers from ``lm`` unless the cache already gave them; stored for the next evaluation
    (``beside``: the answer set made in a child process meanwhile).

    Under a launcher each rank answers its share of the prompts and all ranks end with every answer."""
    if name in run.outputs:
        return
    prompts, cfg, seeds = sampling or (run.prompts, run.s.generation, None)
    progress = run.progress and distributed.world().main

    plans: list[generate.DecodePlan] = []  # this process's call (its share, under a launcher)

    def produce(indices: list[int]) -> list[Generation]:
        if not indices:
            return []
        chunk = [prompts[i] for i in indices]
        plans.append(generate.decode_plan(lm, run.tokenizer, chunk, cfg))
        return generate.generate(lm, run.tokenizer, chunk, cfg, progress,
                                 seeds=None if seeds is None else [seeds[i] for i in indices], plan=plans[-1])

    with run.stages(f"generate {name}"):
        made, seconds = generate.timed(lambda: distributed.sharded(produce, len(prompts)))
        _keep(run, name, made, seconds, beside, plans[0] if plans else None)


def _keep(run: _Run, name: str, made: list[Generation], seconds: float, beside: str | None = None,
          plan: generate.DecodePlan | None = None) -> None:
    """``name``'s answers, generated now in ``seconds`` (``beside``: alongside that set's, in another process;
    ``plan``: how they were decoded, where this process decoded them), into the run and the cache."""
    tokens = sum(g.new_tokens for g in made)
    timing: dict[str, Any] = {"seconds": round(seconds, 3), "new_tokens": tokens,
                              "tokens_per_s": round(tokens / seconds, 1)}
    if plan is not None:  # what "auto" chose: the cache key holds the settings, not the free memory they met
        timing.update(batch_size=plan.batch_size, decode=DECODE_NAMES.get(plan.cache, "eager"))
    run.timing[name] = timing | ({"beside": beside} if beside else {})
    run.outputs[name] = made
    run.generated.append(name)
    if run.use_cache:
        answers.store_answers(run.s.artifacts, run.keys[name], made)


def _samples(run: _Run, temperature: float) -> _Sampling:
    """K seeded samples per prompt (prompt-major), each with its own seed (``generate.sample_seed``)."""
    s = run.s
    cfg = dataclasses.replace(s.generation, do_sample=True, temperature=temperature, top_p=s.eval.top_p)
    prompts = [p for p in run.prompts for _ in range(s.eval.samples)]
    seeds = [generate.sample_seed(cfg.seed, p, k) for p in run.prompts for k in range(s.eval.samples)]
    return prompts, cfg, seeds


def _assemble(run: _Run, measured: dict[str, Any]) -> Evaluation:
    with run.stages("judge and report"):  # the verdicts, statistics and tables (the plots are drawn on writing)
        report = _build(run, measured)
    report["generation_timing"] = run.timing  # this run's generation only: cached answer sets cost nothing
    report["stage_timing"] = {name: round(seconds, 3) for name, seconds in run.stages.seconds.items()}
    sampled = {t: run.outputs[name] for name, t in _sampled_sets(run.outputs).items()}
    return Evaluation(run.prompts, run.outputs["merged"], run.outputs["control"], run.outputs.get("adapter"),
                      sampled, report, tuple(run.generated))


def _build(run: _Run, measured: dict[str, Any]) -> dict[str, Any]:
    s, adapter = run.s, run.adapter
    sampled = {t: run.outputs[name] for name, t in _sampled_sets(run.outputs).items()}
    return build_report(
        # absolute: `hearts upload` reads these from wherever the report is, not from where eval ran
        model={"base": s.train.base_model, "base_resolved": _absolute(adapter.base),
               "adapter_path": _absolute(adapter.path), "merged_path": _absolute(run.merged_dir),
               "merge_method": s.merge.method, "compute_dtype": model.dtype_name(model.run_dtype(s.train))},
        config={name: dataclasses.asdict(getattr(s, name)) for name in CONFIG_TABLES},
        prompts=run.prompts, merged=run.outputs["merged"], control=run.outputs["control"],
        adapter=run.outputs.get("adapter"), fidelity=measured.get("fidelity"),
        fp32=(run.outputs[FP32_ADAPTER], run.outputs[FP32_MERGED]) if FP32_ADAPTER in run.outputs else None,
        retention=measured.get("retention"), sampled={t: (s.eval.samples, g) for t, g in sampled.items()},
        training=_read_json(adapter.path / METRICS), data_stats=_read_json(adapter.path / "data_stats.json"),
    )


def _teacher_forced(run: _Run) -> BatchEncoding:
    """The first few prompts with the 4-bit model's own answers: the inputs of the logit comparison."""
    return merge.teacher_forced(run.tokenizer, run.prompts[:FIDELITY_PROMPTS],
                                [g.response for g in run.outputs["adapter"]])


def _release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _absolute(path: Path | str) -> str:
    return str(path.resolve()) if isinstance(path, Path) else path  # a Hub id stays as it is


def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None
