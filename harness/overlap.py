"""Stage 7, overlapped: the 4-bit model answers in a child process while this one runs the merged and base models.

Decoded eagerly, the 4-bit model (transformers compiles no bitsandbytes model) is bound by the host's kernel
launches, and so, with every prompt in one batch, are the merged and base models. One after the other they were
most of a cold evaluation; side by side they shared a GPU that none of them kept busy. SmolLM2-135M, 316
prompts, H200 (2026-12-02, side by side in one run): the whole ``hearts eval`` took 57.6 s against 72.3 s one
after the other; the child (given its work 9 s in, then 30.6 s of decoding with the GPU busy ~11% of the time)
was its critical path, and the parent waited 13.4 s for it after the merged and base models' answers and the
retention. More processes would not pay: without MPS the GPU runs one process's kernels at a time
(``scripts/decode_shards.py``: the bf16 base 10.2 s in one process, 10.0 s in two).

Only where it changes no batch plan: on CUDA, in one process (a launcher's ranks already share the work), and
where both models and a KV cache for every prompt fit at once in the share of free memory one serial batch may
take (``overlap_batch``). A serial evaluation answers every prompt in one batch there too. Eager decoding then
gives the serial answers (tested, CPU and CUDA). A *compiled* decode (``cache = "static"``) need not: beside the
busy child, the merged model's greedy answers differed on 1 of 4 prompts from its serial ones in the same process
(H200, SmolLM2, bf16, 2026-12-02), while the child's 4-bit answers were the serial ones. The likely cause is
inductor choosing kernel configs by timing them on the GPU (pytorch/pytorch#189121: near-tied winners flip
numerics), which a second process disturbs: answers made beside the child are cached apart.

Off by default since every greedy decode is replayed as a CUDA graph (``harness.decode``): the 4-bit model then
decodes in 4.5 s, and the child's start and hand-over cost more than the overlap saves (H200, 2026-12-06, side
by side in one call: 45.6 s with the child, 41.8 s one after the other). ``[eval] overlap = true`` (``--overlap``)
still runs it: where a decode is eager (a sampled call) or a GPU is slower at launches, it may pay again.
Everything else — the cache, the report — stays in this process.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import pickle
import threading
import traceback
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness import distributed
from harness.config import GenerationConfig, RunSettings, TrainConfig
from harness.errors import InputError

# torch, transformers and the harness's model modules are imported where used: ``warm_child`` runs before the
# command's own heavy imports, and a spawned child unpickles its target from this module.
if TYPE_CHECKING:
    import torch

    from harness.generate import Generation

# What the child sends back: the 4-bit model's answers, its logits on its first few answers (None when not
# asked for) and the seconds its generation took.
AdapterOutputs = tuple["list[Generation]", "torch.Tensor | None", float]


def asked(s: RunSettings) -> bool:
    """Whether the settings ask for the 4-bit model's answers beside the others: ``[eval] overlap``, with the 4-bit
    model judged at all (``with_adapter``); where it may happen is the plan's to say (``planned_batch``)."""
    return s.eval.overlap and s.eval.with_adapter


def overlap_batch(free_bytes: float, weight_bytes: int, per_row_bytes: int, n_prompts: int) -> int | None:
    """The batch both models answer in side by side — every prompt in one — or None where they do not fit.

    Two models' weights and two whole-set KV caches must fit the share of free memory (``KV_MEMORY_SHARE``) that
    one serial batch's KV cache may take; then a serial run, with one model's weights loaded, fits every prompt
    in one batch too (``generate.fitting_batch``), so side by side changes no batch plan."""
    from harness import generate

    if n_prompts < 1 or per_row_bytes <= 0:
        return None
    need = 2 * weight_bytes + 2 * n_prompts * per_row_bytes
    return n_prompts if need <= generate.KV_MEMORY_SHARE * free_bytes else None


def planned_batch(merged_dir: Path, tokenizer, prompts: Sequence[str], cfg: GenerationConfig,
                  device: torch.device, dtype: torch.dtype) -> int | None:
    """The batch size the two models answer in side by side on this run, or None: answer one after the other."""
    if device.type != "cuda" or distributed.world().distributed or not prompts:
        return None
    import torch
    from transformers import AutoConfig

    from harness import generate

    positions = max(len(ids) for ids in tokenizer(list(prompts))["input_ids"]) + cfg.max_new_tokens
    per_row = generate.kv_cache_bytes(AutoConfig.from_pretrained(merged_dir), positions, dtype.itemsize)
    # The merged model in the run's dtype: at least the 4-bit model's size too.
    weights = sum(f.stat().st_size for f in merged_dir.glob("*.safetensors"))
    free, _ = torch.cuda.mem_get_info(device)
    rows = min(cfg.batch_size or len(prompts), len(prompts))  # a batch size the user set is kept
    fits = overlap_batch(free, weights, per_row, rows)
    return None if fits is None else cfg.batch_size or fits


class Child:
    """A process that will compute the 4-bit model's answers (and its logits on its first ``fidelity_texts``
    answers): spawned first, so that it imports torch, transformers and peft while this process does, then
    given its work by ``start``; ``result()`` waits for the outputs and for the process's exit, ``stop()`` ends it
    at once, whether it was given work or not.

    Spawned, not forked: a forked child of a process that has touched CUDA cannot use it. A plain process and
    pipes rather than a pool: a parent that fails must be able to end the child at once (a pool's worker runs its
    task to the end, and the interpreter's exit waits for it)."""

    def __init__(self) -> None:
        context = multiprocessing.get_context("spawn")
        self._receive, send = context.Pipe(duplex=False)
        job_end, self._jobs = context.Pipe(duplex=False)
        self._process = context.Process(target=_serve, name="hearts-4bit-answers", args=(job_end, send))
        self._process.start()
        send.close()  # the child holds the only sending end: its death reads as EOF here
        job_end.close()  # and the only receiving end of its work: closing ours tells an idle child to exit
        self._message: tuple[str, Any] | None = None

    def start(self, base: Path | str, adapter: Path, train: TrainConfig, dtype: torch.dtype,
              prompts: Sequence[str], cfg: GenerationConfig, fidelity_texts: int) -> Child:
        """Give the child its work (once); returns the child."""
        if self._jobs.closed:
            raise RuntimeError("a 4-bit answers process takes one piece of work, and was given it (or stopped)")
        try:
            with contextlib.suppress(BrokenPipeError, OSError):  # a child that died already: result() says so
                self._jobs.send((base, adapter, train, dtype, list(prompts), cfg, fidelity_texts))
        finally:
            self._jobs.close()
        return self

    def raise_early_error(self) -> None:
        """The child's error, raised now if it has reported one already (before work that it would waste)."""
        if self._message is None and self._receive.poll():
            self._message = self._received()
        if self._message is not None and self._message[0] == "error":
            self.result()

    def result(self) -> AdapterOutputs:
        """The child's answers, logits and seconds, once it has sent them and exited (so its GPU memory is free
        for whatever plans a batch next); its error, raised here."""
        import torch

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
        self._jobs.close()
        if self._process.is_alive():
            self._process.terminate()
        self._process.join()

    def _received(self) -> tuple[str, Any]:
        try:
            return self._receive.recv()
        except EOFError:
            self._process.join()
            return "error", ChildDied(f"the 4-bit model's process died before answering (exit code "
                                      f"{self._process.exitcode}); with --no-overlap ([eval] overlap = false) "
                                      "the models answer one after the other")


@contextlib.contextmanager
def warm_child(s: RunSettings) -> Iterator[Child | None]:
    """A ``Child`` spawned now for the evaluation to come, where it may answer beside the others (``[eval]
    overlap`` with the 4-bit model, one process, a GPU visible); None elsewhere. Ended on leaving, used or not.

    Started before a command's heavy imports, so that its own (~9 s on the H200) happen meanwhile, not on the
    evaluation's critical path; whether it is used is decided later, by ``planned_batch``."""
    if not asked(s) or s.train.device == "cpu" or distributed.world().distributed:
        yield None
        return
    import torch

    if not torch.cuda.is_available():
        yield None
        return
    child = Child()
    try:
        yield child
    finally:
        child.stop()


class ChildDied(RuntimeError):
    """The child process ended without sending its answers (killed, out of host memory, a crash)."""


def _serve(jobs, send) -> None:
    """The child's whole life: import what answering needs, take its work (a parent that closes the pipe first
    has none: exit), compute, send the outputs or the error, exit.

    The work is read off the pipe by a thread from the start: a pipe holds 64 KiB, and the prompts of a large
    evaluation set are more, so the parent's send would otherwise wait out these imports. It is unpickled after
    them (its dtype needs torch)."""
    received: list[bytes] = []

    def read() -> None:
        with contextlib.suppress(EOFError, OSError):
            received.append(jobs.recv_bytes())

    reader = threading.Thread(target=read, name="hearts-4bit-work", daemon=True)
    reader.start()
    import bitsandbytes  # noqa: F401  (imported now, while the parent imports too)

    from harness import generate, merge  # noqa: F401

    reader.join()
    if not received:
        return
    _answer_and_send(send, *pickle.loads(received[0]))


def _answer_and_send(send, *args: Any) -> None:
    """Compute, send the outputs or the error."""
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
    from harness import generate, merge
    from harness import model as models

    models.quiet_libraries()
    lm = merge.load_adapter_model(base, adapter, train, dtype)
    tokenizer = models.load_tokenizer(adapter)
    made, seconds = generate.timed(lambda: generate.generate(lm, tokenizer, prompts, cfg))
    reference = None
    if fidelity_texts:
        probe = merge.teacher_forced(tokenizer, prompts[:fidelity_texts], [g.response for g in made])
        reference = merge.logits_on(lm, probe).numpy()
    return made, reference, seconds
