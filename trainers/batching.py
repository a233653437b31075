"""Which rows make up each optimizer step: a pure function of (seed, step), so resuming is exact."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class BatchOrder:
    """Shuffled batches of row indices, epoch after epoch.

    Epoch e visits the rows in the order of a permutation drawn by a private generator seeded
    with ``seed · 2²⁰ + e`` (collision-free for the allowed step counts); it is cut into
    ``ceil(num_rows / batch_size)`` batches, the last one possibly smaller. Optimizer step s
    (1-based) takes batch ``(s − 1) mod steps_per_epoch`` of epoch ``(s − 1) // steps_per_epoch``,
    so the data position is just the number of steps done.
    """

    num_rows: int
    batch_size: int
    seed: int
    _cache: tuple[int, Tensor] | None = field(default=None, init=False, repr=False)

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps in one pass over the rows."""
        return math.ceil(self.num_rows / self.batch_size)

    def epoch_permutation(self, epoch: int) -> Tensor:
        """(num_rows,) the row order of `epoch` (0-based)."""
        if self._cache is None or self._cache[0] != epoch:
            generator = torch.Generator().manual_seed(self.seed * 2**20 + epoch)
            self._cache = (epoch, torch.randperm(self.num_rows, generator=generator))
        return self._cache[1]

    def step_indices(self, step: int) -> list[int]:
        """Row indices of optimizer step `step` (1-based).

        Args:
            step: the optimizer step, counting from 1 over the whole run.

        Returns:
            Up to `batch_size` row indices.
        """
        epoch, position = divmod(step - 1, self.steps_per_epoch)
        start = position * self.batch_size
        return self.epoch_permutation(epoch)[start : start + self.batch_size].tolist()


def split_micro_batches(indices: list[int], gradient_accumulation_steps: int) -> list[list[int]]:
    """Split one step's rows into at most `gradient_accumulation_steps` non-empty micro-batches.

    Args:
        indices: the step's row indices.
        gradient_accumulation_steps: how many micro-batches to aim for.

    Returns:
        Consecutive chunks whose sizes differ by at most one; empty chunks are dropped.
    """
    count = min(gradient_accumulation_steps, len(indices))
    size, extra = divmod(len(indices), count)
    chunks, start = [], 0
    for i in range(count):
        end = start + size + (1 if i < extra else 0)
        chunks.append(indices[start:end])
        start = end
    return chunks
