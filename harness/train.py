"""Stage 4b: QLoRA training with transformers' Trainer — NF4 base, LoRA adapters, metrics next to the adapter.

Every run writes, into one folder: the adapter (safetensors, loadable with stock ``PeftModel.from_pretrained``),
``run_config.json`` (everything that determined it) and ``metrics.json`` (loss per step, tokens/s, samples/s,
peak memory, wall time).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import DataCollatorForSeq2Seq, Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import PrinterCallback

from harness import cache, distributed, loss
from harness import model as models
from harness.config import DataConfig, LoraSettings, TrainConfig
from harness.errors import InputError, first_line

RUN_CONFIG = "run_config.json"
METRICS = "metrics.json"


class TrainingModeGuard(TrainerCallback):
    """Fail loudly if a step runs in eval mode: checkpointing then silently does nothing (22 vs 7 GiB on 7B)."""

    def __init__(self, expect_checkpointing: bool) -> None:
        self.expect_checkpointing = expect_checkpointing
        self.checked_steps = 0

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if model is None or not model.training:
            raise RuntimeError("QLoRA step started with the model in eval mode")
        if self.expect_checkpointing and not models.checkpointing_on(model):
            raise RuntimeError("gradient checkpointing was requested but is off")
        self.checked_steps += 1


def optimizer_name(cfg: TrainConfig) -> str:
    on_cuda = models.run_device(cfg).type == "cuda"
    if cfg.optimizer != "auto":
        if cfg.optimizer.startswith("paged_") and not on_cuda:
            raise InputError(f"optimizer {cfg.optimizer!r} needs CUDA (paged optimizers live in GPU memory)")
        return cfg.optimizer
    return "paged_adamw_32bit" if on_cuda else "adamw_torch"


def per_rank_batch(cfg: TrainConfig) -> int:
    """``batch_size`` is the rows of one optimizer step (before accumulation) over all ranks of a launcher: each
    rank takes 1/N, so a recipe keeps its global batch on 1 GPU or N (``rank_independent``: the same adapter)."""
    ranks = distributed.world().size
    if cfg.batch_size % ranks:
        raise InputError(f"batch_size {cfg.batch_size}: not divisible by the launcher's {ranks} processes "
                         "(each takes an equal share of every step's rows)")
    return cfg.batch_size // ranks


def training_arguments(cfg: TrainConfig, out_dir: Path, dtype: torch.dtype) -> TrainingArguments:
    on_cuda = models.run_device(cfg).type == "cuda"
    return TrainingArguments(
        output_dir=str(out_dir / "trainer"),
        per_device_train_batch_size=per_rank_batch(cfg),
        gradient_accumulation_steps=cfg.grad_accum,
        max_steps=cfg.max_steps,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_ratio,  # a float in [0, 1) is a ratio of total steps in transformers 5
        max_grad_norm=cfg.max_grad_norm,
        optim=optimizer_name(cfg),
        train_sampling_strategy="group_by_length" if cfg.group_by_length else "random",
        fp16=on_cuda and dtype == torch.float16,  # fp16 AMP on a T4; bf16 autocast where supported
        bf16=on_cuda and dtype == torch.bfloat16,
        use_cpu=not on_cuda,
        logging_steps=1,
        logging_strategy="steps",
        save_strategy="no",
        report_to="none",
        seed=cfg.seed,
        data_seed=cfg.seed,
        include_num_input_tokens_seen="non_padding",
        remove_unused_columns=False,
        dataloader_num_workers=0,
        ddp_find_unused_parameters=False,  # under a launcher: every LoRA weight takes part in every step
        disable_tqdm=not sys.stderr.isatty(),
    )


IGNORED = -100  # the label of a position the loss skips (prompt, padding)


def response_positions(labels: torch.Tensor) -> torch.Tensor:
    """``(batch, length)`` booleans: the positions whose next token is a response token (logits at t predict
    the label at t + 1)."""
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != IGNORED
    return keep


def _response_targets(labels: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The response tokens the kept positions predict, in ``response_positions`` order."""
    return labels[:, 1:][labels[:, 1:] != IGNORED].to(device)


def _per_item(total: torch.Tensor, targets: torch.Tensor, num_items_in_batch: torch.Tensor | int | None):
    """``total`` over the accumulated batch's response-token count (this batch's when not given)."""
    count = num_items_in_batch if num_items_in_batch is not None else targets.numel()
    return total / (count.to(total.device) if torch.is_tensor(count) else count)


def response_loss(outputs, labels: torch.Tensor, num_items_in_batch: torch.Tensor | int | None = None) -> torch.Tensor:
    """The causal LM loss of transformers (``ForCausalLMLoss``: fp32 cross-entropy summed over response tokens,
    over the accumulated batch's count of them) from the logits of the response positions only, ``(n, vocab)``
    (``ResponseLogitsCollator``)."""
    logits = outputs.logits
    targets = _response_targets(labels, logits.device)
    total = torch.nn.functional.cross_entropy(logits.float(), targets, reduction="sum")
    return _per_item(total, targets, num_items_in_batch)


class ChunkedResponseLoss:
    """``response_loss`` from the response positions' hidden states, the LM head applied by
    ``loss.chunked_cross_entropy`` (``ChunkedHeadTrainer`` defers the model's own head)."""

    def __init__(self, head: torch.nn.Linear, dtype: torch.dtype) -> None:
        self.head, self.dtype = head, dtype

    def __call__(self, outputs, labels: torch.Tensor, num_items_in_batch: torch.Tensor | int | None = None):
        hidden = outputs.logits  # (n, hidden): what the deferred head was given
        targets = _response_targets(labels, hidden.device)
        total = loss.chunked_cross_entropy(hidden, self.head.weight, targets, self.dtype)
        return _per_item(total, targets, num_items_in_batch)


class ChunkedHeadTrainer(Trainer):
    """A Trainer whose model stops before its LM head in the loss's forward: ``ChunkedResponseLoss`` projects the
    response positions in chunks, so no batch's logits are ever whole."""

    def __init__(self, *args, head: torch.nn.Linear, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.head = head

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        with loss.head_deferred(self.head):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


def masks_logits(model) -> bool:
    """Whether ``model``'s forward takes a boolean ``logits_to_keep`` mask: its modeling module uses
    transformers' ``slice_logits_to_keep`` and that helper keeps the True positions (transformers 5.22 on)."""
    helper = getattr(sys.modules.get(type(models.unwrapped(model)).__module__), "slice_logits_to_keep", None)
    if helper is None:
        return False
    try:  # a helper that knows only integer positions fails on a mask, or keeps the wrong shape
        return tuple(helper(torch.zeros(1, 2, 1), torch.tensor([[True, False]])).shape) == (1, 1)
    except (IndexError, RuntimeError, TypeError):
        return False


class ResponseLogitsCollator:
    """The padding collator, plus each batch's response positions as ``logits_to_keep``."""

    def __init__(self, pad) -> None:
        self.pad = pad

    def __call__(self, features):
        batch = self.pad(features)
        batch["logits_to_keep"] = response_positions(batch["labels"])
        return batch


def make_trainer(out_dir: Path, base: Path | str, tokenizer, train_ds, cfg: TrainConfig, lora: LoraSettings):
    """A ``Trainer`` over the 4-bit base wrapped with LoRA, plus its train-mode guard and compute dtype."""
    models.quiet_libraries()
    torch.manual_seed(cfg.seed)
    dtype = models.run_dtype(cfg)
    args = training_arguments(cfg, out_dir, dtype)  # before loading: bad options fail fast
    model = models.wrap_qlora(models.load_quantized(base, cfg, dtype), lora, cfg.gradient_checkpointing,
                               cfg.upcast_frozen)
    if cfg.compile_layers:
        models.compile_layers(model)
    guard = TrainingModeGuard(cfg.gradient_checkpointing)
    columns = [c for c in ("input_ids", "attention_mask", "labels", "length") if c in train_ds.column_names]
    collator = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORED)
    masked = cfg.response_logits and masks_logits(model)
    head = models.unwrapped(model).get_output_embeddings()
    common = dict(model=model, args=args, train_dataset=train_ds.select_columns(columns),
                  data_collator=ResponseLogitsCollator(collator) if masked else collator,
                  processing_class=tokenizer, callbacks=[guard])
    trainer: Trainer
    if masked and loss.projects_plainly(head):
        trainer = ChunkedHeadTrainer(**common, head=head, compute_loss_func=ChunkedResponseLoss(head, dtype))
    else:  # a LoRA'd or quantised head: its logits are projected whole, by the head itself
        trainer = Trainer(**common, compute_loss_func=response_loss if masked else None)
    trainer.remove_callback(PrinterCallback)  # loss is logged every step for metrics.json, not for the terminal
    return trainer, guard, dtype


def attention_kernels(cfg: TrainConfig) -> contextlib.AbstractContextManager:
    """Where SDPA may run during training (``TrainConfig.cudnn_attention``; ``model.attention_kernels``)."""
    return models.attention_kernels(models.run_device(cfg), cfg.cudnn_attention)


def stepper(trainer: Trainer, cfg: TrainConfig):
    """One optimizer step as ``Trainer.train`` takes it (autocast, fp16 loss scaling, clipping), for benchmarks.

    Returns ``step(batch) -> loss`` and the prepared model.
    """
    trainer.create_optimizer()  # the configured one (``optimizer_name``)
    model, optimizer = trainer.accelerator.prepare(trainer.model, trainer.optimizer)

    def step(batch: dict[str, torch.Tensor]) -> float:
        n_labels = int((batch["labels"][:, 1:] != IGNORED).sum())
        with training_steps(cfg):
            loss = trainer.training_step(model, batch, n_labels)
        trainer.accelerator.clip_grad_norm_(model.parameters(), trainer.args.max_grad_norm)
        optimizer.step()  # unscales and skips on inf/nan under fp16, as in training
        optimizer.zero_grad(set_to_none=True)
        return float(loss)

    return step, model


@contextlib.contextmanager
def compile_failure_named(cfg: TrainConfig):
    """torch.compile failing on the decoder layer (``compile_layers``) as a one-line ``InputError`` naming the
    setting, not a page of compiler trace. Seen on an H100 (torch 2.11, 2026-12-07): the 7B shape's checkpointed
    layer, compiled whole, stopped inductor's partitioner ("Node add_590 was invalid, but is output") one minute
    into the first step (``model.compile_layers`` now compiles what the checkpoint runs, the checkpoint left eager)."""
    from torch._dynamo.exc import BackendCompilerFailed

    try:
        yield
    except BackendCompilerFailed as err:
        if not cfg.compile_layers:
            raise
        inner = err.inner_exception
        checkpointed = " with gradient_checkpointing" if cfg.gradient_checkpointing else ""
        raise InputError(f"[train] compile_layers: torch.compile could not compile the decoder layer{checkpointed} "
                         f"({type(inner).__name__}: {first_line(inner)}); set compile_layers = false") from None


@contextlib.contextmanager
def training_steps(cfg: TrainConfig):
    """What every optimizer step runs under, in ``train_adapter`` and in the benchmarks' ``stepper`` alike."""
    with attention_kernels(cfg), compile_failure_named(cfg):
        yield


def train_adapter(out_dir: Path, base: Path | str, tokenizer, train_ds, cfg: TrainConfig, lora: LoraSettings,
                  run_config: dict[str, Any]) -> dict[str, Any]:
    """Train a QLoRA adapter on a tokenised dataset and save adapter, config and metrics into ``out_dir``."""
    trainer, guard, dtype = make_trainer(out_dir, base, tokenizer, train_ds, cfg, lora)
    device = models.run_device(cfg)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    with training_steps(cfg):
        output = trainer.train()
    wall = time.perf_counter() - start
    metrics = _metrics(trainer, output, wall, guard, dtype, device)
    trainer.model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    cache.atomic_write_text(out_dir / RUN_CONFIG, json.dumps(run_config, indent=2, default=str))
    cache.atomic_write_text(out_dir / METRICS, json.dumps(metrics, indent=2))
    shutil.rmtree(out_dir / "trainer", ignore_errors=True)  # Trainer's scratch dir; nothing is saved there
    return metrics


def _metrics(trainer: Trainer, output, wall: float, guard: TrainingModeGuard, dtype: torch.dtype,
             device: torch.device) -> dict:
    losses = [(h["step"], h["loss"]) for h in trainer.state.log_history if "loss" in h]
    tokens = int(trainer.state.num_input_tokens_seen)
    samples = trainer.state.global_step * trainer.args.per_device_train_batch_size * \
        trainer.args.gradient_accumulation_steps * trainer.args.world_size  # tokens seen are summed over ranks
    return {
        "steps": trainer.state.global_step,
        "loss": [{"step": s, "loss": loss} for s, loss in losses],
        "train_loss": output.training_loss,
        "wall_s": wall,
        "samples_per_s": samples / wall,
        "tokens_per_s": tokens / wall,
        "tokens_seen": tokens,
        "checked_train_mode_steps": guard.checked_steps,
        "compute_dtype": models.dtype_name(dtype),
        "device": str(device),
        "processes": trainer.args.world_size,
        **peak_memory(device),
    }


def peak_memory(device: torch.device | None = None) -> dict[str, float]:
    """Peak GPU memory allocated/reserved on CUDA, the process's peak RSS on CPU."""
    if (device or models.resolve_device()).type == "cuda":
        return {
            "peak_allocated_gib": torch.cuda.max_memory_allocated() / 2**30,
            "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30,
        }
    return {"peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def run_config(cfg: TrainConfig, lora: LoraSettings, data: DataConfig, base_id: dict[str, Any],
               dataset_fingerprint: str) -> dict[str, Any]:
    """Everything that determines an adapter: the cache key material, saved next to it."""
    import bitsandbytes
    import peft
    import transformers

    from harness import __version__

    device = models.run_device(cfg).type
    return {
        "base": base_id,
        "dataset": dataset_fingerprint,
        # Resolved, not as written: device "auto" and "cpu" on a CPU machine train the same adapter.
        "train": {**dataclasses.asdict(cfg), "device": device,
                  "compute_dtype": models.dtype_name(models.run_dtype(cfg))},
        "lora": dataclasses.asdict(lora),
        "data": dataclasses.asdict(data),
        "device": device,
        **_rank_count(cfg, lora),
        "versions": {
            "torch": torch.__version__.split("+")[0],
            "transformers": transformers.__version__,
            "peft": peft.__version__,
            "bitsandbytes": bitsandbytes.__version__,
            "harness": __version__,
        },
    }


def rank_independent(cfg: TrainConfig, lora: LoraSettings) -> bool:
    """Whether N ranks train what one process trains, up to float summation order: only without dropout (each
    rank draws its own masks) and with one shuffled order (the length-grouped sampler groups per rank)."""
    return lora.dropout == 0 and not cfg.group_by_length


def _rank_count(cfg: TrainConfig, lora: LoraSettings) -> dict[str, int]:
    """Key material for the launcher's rank count where it changes the adapter (else one recipe, one entry)."""
    return {} if rank_independent(cfg, lora) else {"processes": distributed.world().size}


@dataclasses.dataclass(frozen=True)
class TrainedAdapter:
    path: Path
    base: Path | str  # resolved base: a local folder or a Hub id
    built_now: bool  # False when the cache served it


def dataset_fingerprint(ds) -> str:
    """Content hash of the tokenised training set (stable across clones, unlike file mtimes)."""
    return cache.cache_key({"input_ids": ds["input_ids"], "labels": ds["labels"]})


def adapter_for(artifacts: Path, cfg: TrainConfig, lora: LoraSettings, data_cfg: DataConfig, *,
                retrain: bool = False) -> TrainedAdapter:
    """The adapter for these settings: from the cache when a complete entry exists, else trained now (on every
    rank of a launcher, data-parallel: see ``harness.distributed``)."""
    from harness import data, distill

    models.quiet_libraries()
    distributed.init(models.run_device(cfg))
    base = models.resolve_base(cfg.base_model, artifacts)
    tokenizer = models.load_tokenizer(base, cfg.revision)
    respond = distill.responder(artifacts, cfg, base, tokenizer) if data_cfg.responses == "base" else None
    with distributed.main_first():  # one rank fills the datasets (and distilled answers) cache, the others read it
        prepared = data.prepare(data_cfg, tokenizer, respond=respond)
    material = run_config(cfg, lora, data_cfg, models.base_fingerprint(cfg.base_model, base, cfg.revision),
                          dataset_fingerprint(prepared.train))

    def build(tmp: Path) -> None:
        train_adapter(tmp, base, tokenizer, prepared.train, cfg, lora, material)
        cache.atomic_write_text(tmp / "data_stats.json", json.dumps(prepared.stats, indent=2, default=str))

    if distributed.world().distributed:
        path, built = _on_every_rank(artifacts, material, build, retrain)
    else:
        path, built = cache.cached(artifacts, "adapter", material, build, rebuild=retrain)
    return TrainedAdapter(path=path, base=base, built_now=built)


def _on_every_rank(artifacts: Path, material: dict[str, Any], build: Callable[[Path], None],
                   retrain: bool) -> tuple[Path, bool]:
    """One adapter trained by all ranks: rank 0 holds the cache entry's lock, tells the others whether to
    train, and alone writes the entry; the others train in a scratch folder and wait until it is in place.
    A killed rank stops the launcher's whole group, so the entry is never completed (nothing is reused)."""
    if distributed.world().main:
        with cache.building(artifacts, "adapter", material, rebuild=retrain) as (final, tmp):
            distributed.broadcast((str(final), tmp is not None))
            if tmp is not None:
                build(tmp)
        built = tmp is not None
    else:
        where, built = distributed.broadcast(None)
        final = Path(where)
        if built:
            with tempfile.TemporaryDirectory(prefix=".hearts-rank-") as scratch:
                build(Path(scratch))
    distributed.barrier()  # rank 0 has swapped the entry in
    return final, built
