"""Which rows make up each optimizer step, and how a step's rows are grouped for the forward passes.

The rows of a step are a pure function of (seed, step), so resuming is exact. Within a step, rows of
similar length can be run as separate forwards (`length_buckets`, `map_buckets`), each padded only
to its own longest row: the per-row results are the same, the padding is not computed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
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


# What one more forward costs, in tokens of padded batch: the fixed price (kernel launches, Python
# per layer) that makes splitting a batch into groups of similar length worth it only when it saves
# more padding than that. Measured on the benchmark model of bench/trainers_vs_trl.py: a forward
# and backward costs about 5 ms plus 0.25 ms per token on one CPU core, so ~20 tokens; GPUs run a
# token in far less time than a launch, so a split must save a few thousand padded tokens there.
BUCKET_OVERHEAD_TOKENS = {"cpu": 32, "cuda": 4096}


def bucket_overhead_tokens(device_type: str) -> int:
    """`BUCKET_OVERHEAD_TOKENS` of a device type (``"cpu"``, ``"cuda"``; others as ``"cuda"``)."""
    return BUCKET_OVERHEAD_TOKENS.get(device_type, BUCKET_OVERHEAD_TOKENS["cuda"])


def length_buckets(
    lengths: list[int], overhead_tokens: int, max_rows: int | None = None
) -> list[tuple[list[int], int]]:
    """Group rows of a batch by length so that padding each group to its own longest row costs least.

    Rows are sorted by length and cut into consecutive groups; the cuts minimise
    ``Σ_groups (rows · longest length) + overhead_tokens · number of groups`` exactly (dynamic
    programming over the sorted rows, O(N²)). With ``overhead_tokens`` large the whole batch stays
    one group, which is plain padding to the batch's longest row.

    Args:
        lengths: (N,) real tokens of each row.
        overhead_tokens: the cost of one more group, in padded tokens.
        max_rows: the most rows a group may hold (a memory bound); None for no bound.

    Returns:
        Groups as ``(row indices, width)``: the indices into `lengths` (every row exactly once) and
        the longest length among them.
    """
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    sorted_lengths = [lengths[i] for i in order]
    n = len(order)
    best = [0.0] + [float("inf")] * n  # best[j]: least cost of the first j sorted rows
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(0 if max_rows is None else max(0, j - max_rows), j):  # last group: sorted rows [i, j),
            # padded to sorted_lengths[j - 1]
            cost = best[i] + (j - i) * sorted_lengths[j - 1] + overhead_tokens
            if cost < best[j]:
                best[j], cut[j] = cost, i
    groups, j = [], n
    while j > 0:
        i = cut[j]
        groups.append((order[i:j], sorted_lengths[j - 1]))
        j = i
    return groups[::-1]


def map_buckets(fn: Callable[..., Tensor], buckets: Sequence[tuple[Tensor, int]], *rows: Tensor) -> Tensor:
    """Apply a per-row function to groups of rows cut to their own width; results in the original order.

    ``fn(*(t[idx, :width] for t in rows))`` must return one value per row of its input, and a row's
    value must not depend on the other rows (a forward pass of a model without batch statistics).
    Padding columns are dropped, which is what `length_buckets` groups are for.

    Args:
        fn: maps (n, w) tensors to (n,) values.
        buckets: ``(row indices, width)`` groups covering every row once, indices on the rows' device;
            empty for all rows at full width.
        rows: (N, T) tensors cut alike (e.g. input ids, attention mask, loss mask).

    Returns:
        (N,) values, row i's at position i.
    """
    if not buckets:  # ungrouped: the rows as they are
        return fn(*rows)
    if len(buckets) == 1:  # every row: no reordering needed
        return fn(*(t[:, : buckets[0][1]] for t in rows))
    parts = [fn(*(t[idx, :width] for t in rows)) for idx, width in buckets]  # (n_g,) each
    order = torch.cat([idx for idx, _ in buckets])  # (N,) the row of each value in `parts`
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel(), device=order.device)
    return torch.cat(parts)[inverse]  # (N,)
