"""Several processes, one run: the ranks that ``torchrun`` or ``accelerate launch`` start.

The launchers set ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``; a plain ``hearts`` process is rank 0 of 1 and
none of this does anything. With several ranks:

- training is data-parallel through the Trainer (DDP; the QLoRA base on ``cuda:LOCAL_RANK``): every rank
  trains, rank 0 alone writes the adapter's cache entry, the others wait for it (``harness.train``);
- evaluation generation is sharded: each rank answers every ``size``-th prompt, and every rank ends with all
  answers in prompt order (``sharded``), so judging, the report and the gate are those of one process;
- only rank 0 writes reports and prints the verdict (``World.main``).

Single host only: the ranks share the artifacts folder (its file locks and renames are what keep them apart).
The other commands run as one process and refuse a launcher (``harness.cli``). torch is imported only where a
process group is used: the CLI asks ``world()`` before anything is loaded.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import torch

T = TypeVar("T")
# How long a rank waits in a collective: the others wait while rank 0 alone builds a cache entry (a 7B merge,
# a stand-in) or waits for another run's build of the same entry; NCCL's default (10 min) would kill them.
TIMEOUT = datetime.timedelta(hours=2)


@dataclasses.dataclass(frozen=True)
class World:
    rank: int = 0
    local_rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def world() -> World:
    """This process's place among the launcher's ranks (rank 0 of 1 without a launcher)."""
    return World(int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)),
                 int(os.environ.get("WORLD_SIZE", 1)))


def _dist():
    """torch.distributed, imported on first use: the CLI asks ``world()`` before torch is loaded."""
    import torch.distributed

    return torch.distributed


def init(device: torch.device) -> World:
    """Join the launcher's process group (gloo on CPU, NCCL on CUDA), once; accelerate's own state does it, so
    the Trainer later finds the group it expects."""
    w = world()
    if w.distributed and not _dist().is_initialized():
        from accelerate import PartialState

        PartialState(cpu=device.type == "cpu", timeout=TIMEOUT)
    return w


def close() -> None:
    """Leave the process group (torch warns at exit about one never destroyed)."""
    if coordinated():
        _dist().destroy_process_group()


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (it fills shared caches, e.g. the datasets cache), then the others."""
    if not coordinated():
        yield
        return
    if not world().main:
        barrier()
    yield
    if world().main:
        barrier()


def coordinated() -> bool:
    """Several ranks, joined in a process group: they can wait for each other."""
    return world().distributed and _dist().is_initialized()


def broadcast(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (pickled)."""
    if not world().distributed:
        return value
    box = [value]
    _dist().broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if world().distributed:
        _dist().barrier()


def shares(n: int, size: int) -> list[list[int]]:
    """Rank r's items of ``range(n)``: every ``size``-th from r, so length-sorted batches stay balanced."""
    return [list(range(rank, n, size)) for rank in range(size)]


def in_order(parts: Sequence[tuple[Sequence[int], Sequence[T]]], n: int) -> list[T]:
    """The ranks' ``(indices, results)`` put back into one list in item order; every item exactly once."""
    out: list[Any] = [None] * n
    seen = 0
    for indices, results in parts:
        if len(indices) != len(results):
            raise RuntimeError(f"{len(results)} results for {len(indices)} items")
        for i, result in zip(indices, results, strict=True):
            out[i] = result
        seen += len(indices)
    if seen != n or len({i for indices, _ in parts for i in indices}) != n:
        raise RuntimeError(f"the ranks returned {seen} results for {n} items")
    return out


def sharded(produce: Callable[[list[int]], Sequence[T]], n: int) -> list[T]:
    """``produce(indices)`` on this rank's share of ``range(n)``, gathered so that every rank returns all ``n``
    results in order (one process: ``produce(range(n))``)."""
    w = world()
    if not w.distributed:
        return list(produce(list(range(n))))
    mine = shares(n, w.size)[w.rank]
    parts: list[Any] = [None] * w.size
    _dist().all_gather_object(parts, (mine, list(produce(mine))))
    return in_order(parts, n)
