"""Stage 7, overlapped: the 4-bit model answers in a child process while this one runs the merged and base models.

The 4-bit model decodes eagerly (transformers compiles no bitsandbytes model) and is bound by the host's kernel
launches, and so, with every prompt in one batch, are the merged and base models (``cache = "auto"`` decodes them
eagerly where a compile would not pay). One after the other they were most of a cold evaluation; side by side
they share a GPU that none of them keeps busy. SmolLM2-135M, 316 prompts, H200 (2026-12-02, side by side in one
run): the whole ``hearts eval`` took 76.7 s against 92.4 s one after the other; the child (~9 s of imports, then
38.8 s of decoding) is its critical path, and the parent waited 18 s for it after the merged and base models'
answers and the retention.

Only where it changes no batch plan: on CUDA, in one process (a launcher's ranks already share the work), and
where both models and a KV cache for every prompt fit at once in the share of free memory one serial batch may
take (``overlap_batch``). A serial evaluation answers every prompt in one batch there too. Eager decoding then
gives the serial answers (tested, CPU and CUDA). A *compiled* decode (``cache = "static"``) need not: beside the
busy child, the merged model's greedy answers differed on 1 of 4 prompts from its serial ones in the same process
(H200, SmolLM2, bf16, 2026-12-02), while the child's 4-bit answers were the serial ones. The likely cause is
inductor choosing kernel configs by timing them on the GPU (pytorch/pytorch#189121: near-tied winners flip
numerics), which a second process disturbs: answers made beside the child are cached apart. ``[eval] overlap`` is
on by default (``--no-overlap``: one after the other; ``test_training/test_envelope_smollm2_eval.py`` times both).
Everything else — the cache, the report — stays in this process.
"""

from __future__ import annotations

import multiprocessing
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from harness import distributed, generate, merge
from harness import model as models
from harness.config import GenerationConfig, TrainConfig
from harness.errors import InputError
from harness.generate import Generation

# What the child sends back: the 4-bit model's answers, its logits on its first few answers (None when not
# asked for) and the seconds its generation took.
AdapterOutputs = tuple[list[Generation], torch.Tensor | None, float]


def overlap_batch(free_bytes: float, weight_bytes: int, per_row_bytes: int, n_prompts: int) -> int | None:
    """The batch both models answer in side by side — every prompt in one — or None where they do not fit.

    Two models' weights and two whole-set KV caches must fit the share of free memory (``KV_MEMORY_SHARE``) that
    one serial batch's KV cache may take; then a serial run, with one model's weights loaded, fits every prompt
    in one batch too (``generate.fitting_batch``), so side by side changes no batch plan."""
    if n_prompts < 1 or per_row_bytes <= 0:
        return None
    need = 2 * weight_bytes + 2 * n_prompts * per_row_bytes
    return n_prompts if need <= generate.KV_MEMORY_SHARE * free_bytes else None


def planned_batch(merged_dir: Path, tokenizer, prompts: Sequence[str], cfg: GenerationConfig,
                  device: torch.device, dtype: torch.dtype) -> int | None:
    """The batch size the two models answer in side by side on this run, or None: answer one after the other."""
    if device.type != "cuda" or distributed.world().distributed or not prompts:
        return None
    from transformers import AutoConfig

    positions = max(len(ids) for ids in tokenizer(list(prompts))["input_ids"]) + cfg.max_new_tokens
    per_row = generate.kv_cache_bytes(AutoConfig.from_pretrained(merged_dir), positions, dtype.itemsize)
    # The merged model in the run's dtype: at least the 4-bit model's size too.
    weights = sum(f.stat().st_size for f in merged_dir.glob("*.safetensors"))
    free, _ = torch.cuda.mem_get_info(device)
    rows = min(cfg.batch_size or len(prompts), len(prompts))  # a batch size the user set is kept
    fits = overlap_batch(free, weights, per_row, rows)
    return None if fits is None else cfg.batch_size or fits


class Child:
    """The 4-bit model's answers (and its logits on its first ``fidelity_texts`` answers), computed in a new
    process; ``result()`` waits for them and for the process's exit, ``stop()`` ends it early.

    Spawned, not forked: a forked child of a process that has touched CUDA cannot use it. A plain process and a
    pipe rather than a pool: a parent that fails must be able to end the child at once (a pool's worker runs its
    task to the end, and the interpreter's exit waits for it)."""

    def __init__(self, base: Path | str, adapter: Path, train: TrainConfig, dtype: torch.dtype,
                 prompts: Sequence[str], cfg: GenerationConfig, fidelity_texts: int) -> None:
        context = multiprocessing.get_context("spawn")
        self._receive, send = context.Pipe(duplex=False)
        self._process = context.Process(target=_answer_and_send, name="hearts-4bit-answers",
                                         args=(send, base, adapter, train, dtype, list(prompts), cfg,
                                               fidelity_texts))
        self._process.start()
        send.close()  # the child holds the only sending end: its death reads as EOF here
        self._message: tuple[str, Any] | None = None

    def raise_early_error(self) -> None:
        """The child's error, raised now if it has reported one already (before work that it would waste)."""
        if self._message is None and self._receive.poll():
            self._message = self._received()
        if self._message is not None and self._message[0] == "error":
            self.result()

    def result(self) -> AdapterOutputs:
        """The child's answers, logits and seconds, once it has sent them and exited (so its GPU memory is free
        for whatever plans a batch next); its error, raised here."""
        status, value = self._message or self._received()
        self._process.join()
        if status == "error":
            raise value
        made, reference, seconds = value
        return made, None if reference is None else torch.from_numpy(reference), seconds

    @property
    def running(self) -> bool:
        return self._process.is_alive()

    def stop(self) -> None:
        """End the child (a no-op once it has exited)."""
        if self._process.is_alive():
            self._process.terminate()
        self._process.join()

    def _received(self) -> tuple[str, Any]:
        try:
            return self._receive.recv()
        except EOFError:
            self._process.join()
            return "error", ChildDied(f"the 4-bit model's process died before answering (exit code "
                                      f"{self._process.exitcode}); without [eval] overlap the models answer one "
                                      "after the other")


class ChildDied(RuntimeError):
    """The child process ended without sending its answers (killed, out of host memory, a crash)."""


def _answer_and_send(send, *args: Any) -> None:
    """The child's whole life: compute, send the outputs or the error, exit."""
    try:
        message: tuple[str, Any] = ("ok", adapter_outputs(*args))
    except Exception as err:  # every error goes to the parent, which raises it
        if not isinstance(err, InputError):  # bad input is one line, the parent's; a bug keeps its traceback
            traceback.print_exc()
        message = ("error", err)
    try:
        send.send(message)
    except Exception as err:  # an exception that does not pickle still reaches the parent
        send.send(("error", ChildDied(f"the 4-bit model's process failed: {err!r}")))
    send.close()


def adapter_outputs(base: Path | str, adapter: Path, train: TrainConfig, dtype: torch.dtype, prompts: list[str],
                    cfg: GenerationConfig, fidelity_texts: int) -> tuple[list[Generation], Any, float]:
    """What the child computes: load the 4-bit model, answer, and teacher-force its first few answers.

    The logits go back as a numpy array, pickled through the pipe: a tensor would travel through shared memory,
    which containers keep small (Docker: 64 MB; SmolLM2's four answers' logits are ~300 MB)."""
    models.quiet_libraries()
    lm = merge.load_adapter_model(base, adapter, train, dtype)
    tokenizer = models.load_tokenizer(adapter)
    made, seconds = generate.timed(lambda: generate.generate(lm, tokenizer, prompts, cfg))
    reference = None
    if fidelity_texts:
        probe = merge.teacher_forced(tokenizer, prompts[:fidelity_texts], [g.response for g in made])
        reference = merge.logits_on(lm, probe).numpy()
    return made, reference, seconds
