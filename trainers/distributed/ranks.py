"""Which process of a job this is, and the few collectives the trainers need (`Ranks`).

A job of N processes runs N copies of its trainer under torchrun, one per rank; `init_ranks`
joins them into one process group from torchrun's environment (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``), with the NCCL backend on CUDA and gloo on the
CPU. A single process gets ``Ranks()``, whose collectives return their input: every trainer is
written once, for any number of processes.

The trainers' rule for equal results at any scale: `batch_size` stays the global batch; each rank
takes its share of every micro-batch (`Ranks.share`), divides its summed loss by the *global*
number of rows or tokens, and sums statistics over ranks (`Ranks.sum`) before averaging. Gradient
reduction averages over ranks, so `Ranks.loss_scale` multiplies each loss by the world size first:
the gradients then add up to those of one process seeing the whole batch.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

from trainers.distributed.launch import die_with_launcher

T = TypeVar("T")
# How long a collective may wait for a rank before the job fails instead of hanging (a rank that
# died is noticed by torchrun within seconds; this bounds what it cannot see, e.g. a wedged peer).
COLLECTIVE_TIMEOUT = timedelta(minutes=30)


@dataclass(frozen=True)
class Ranks:
    """This process's place among the job's processes (one process: rank 0 of 1).

    Attributes:
        rank: this process's rank, 0 to ``world_size - 1``; rank 0 alone reports and saves.
        world_size: processes in the job.
        local_rank: this process's index on its node (its GPU, on a GPU node).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, the process that reports metrics, events and checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """Whether the job has more than one process."""
        return self.world_size > 1

    @property
    def loss_scale(self) -> float:
        """What each rank multiplies its loss by before backward: gradient reduction averages over ranks."""
        return float(self.world_size)

    def share(self, items: Sequence[T]) -> list[T]:
        """This rank's share of `items`: every `world_size`-th item from position `rank`.

        Shares differ by at most one item and together hold each item once, so a micro-batch of
        B rows is B / N rows per rank.

        Args:
            items: e.g. the row indices of a micro-batch, in the same order on every rank.

        Returns:
            ``items[rank::world_size]`` (possibly empty when there are fewer items than ranks).
        """
        return list(items[self.rank :: self.world_size])

    def batch_share(self, items: Sequence[T]) -> tuple[list[T], float]:
        """This rank's share of a micro-batch, never empty, and the weight its losses and statistics take.

        Every rank must run the same forward and backward passes (each is a collective on a
        parallel model), so a rank whose share is empty (fewer rows than ranks) runs the batch's
        first row with weight 0: it adds nothing to the gradients or the statistics.

        Args:
            items: a non-empty micro-batch, in the same order on every rank.

        Returns:
            ``(share, 1.0)``, or ``([items[0]], 0.0)`` when the share is empty.
        """
        mine = self.share(items)
        return (mine, 1.0) if mine else ([items[0]], 0.0)

    def sum(self, tensor: Tensor) -> Tensor:
        """The element-wise sum of `tensor` over ranks (a new tensor; `tensor` itself on one process)."""
        if not self.distributed:
            return tensor
        total = tensor.detach().clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total

    def max(self, tensor: Tensor) -> Tensor:
        """The element-wise maximum of `tensor` over ranks."""
        if not self.distributed:
            return tensor
        top = tensor.detach().clone()
        dist.all_reduce(top, op=dist.ReduceOp.MAX)
        return top

    def broadcast(self, value: T) -> T:
        """Rank 0's `value` (any picklable object), on every rank."""
        if not self.distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value: T) -> list[T]:
        """Every rank's `value` (any picklable object), in rank order, on every rank."""
        if not self.distributed:
            return [value]
        values: list[Any] = [None] * self.world_size
        dist.all_gather_object(values, value)
        return values

    def barrier(self) -> None:
        """Wait until every rank has reached this point."""
        if self.distributed:
            dist.barrier()


def launched_ranks() -> Ranks:
    """This process's `Ranks` as torchrun's environment says, without joining a process group."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Ranks()
    return Ranks(rank=int(os.environ["RANK"]), world_size=world_size,
                 local_rank=int(os.environ.get("LOCAL_RANK", "0")))  # fmt: skip


def init_ranks() -> Ranks:
    """Join the job's process group when torchrun started this process; a no-op on one process.

    Idempotent: the worker joins early (to agree on the checkpoint to resume from) and the
    trainer's set-up calls it again. On CUDA each rank uses GPU ``LOCAL_RANK``.

    Returns:
        This process's ranks (``Ranks()`` outside torchrun).
    """
    ranks = launched_ranks()
    die_with_launcher()  # before anything else: a rank never outlives the job's launcher
    if ranks.distributed and not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(ranks.local_rank)
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend, timeout=COLLECTIVE_TIMEOUT)
    return ranks


def device_of(ranks: Ranks) -> torch.device:
    """The device a rank trains on: GPU ``local_rank`` when there are GPUs, else the CPU."""
    return torch.device("cuda", ranks.local_rank) if torch.cuda.is_available() else torch.device("cpu")
