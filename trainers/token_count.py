"""``train/num_tokens``: the tokens every trainer's training forward passes have read so far.

As TRL's ``num_tokens`` (its trainers add up the attention masks of the batches they train on,
gathered over processes), the count is of non-padding tokens, cumulative over the run; the worker
divides its increments by the time between them for a job's tokens per second (`worker.pace`).
It is counted from the rows of each whole optimizer step, which every process holds, so it is the
same on every process and equal to one process's count, with no communication.

A trainer whose steps take rows in a `BatchOrder` (SFT, DPO, ORPO, KTO, reward models) knows the
tokens of every row up front: a resumed run derives the tokens of the steps before it from the
order (`tokens_through`), as it derives its rows. An RL trainer's rows are sampled (every process
holds the whole rollout), so it counts each step's sequences (`sequence_tokens`) and keeps its count
in the checkpoint (`TokenCount.state_dict`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from trainers.data.batching import BatchOrder
from trainers.spec.results import NUM_TOKENS_METRIC

if TYPE_CHECKING:
    from trainers.rl.rollout import Rollout

class TokenCount:
    """The cumulative token count of a run, reported as ``train/num_tokens`` after each optimizer step.

    Args:
        lengths: (N,) tokens the training forward passes read for each row, for `add_rows`.
        total: tokens counted before this run (a resumed run's steps so far).
    """

    def __init__(self, lengths: Sequence[int] = (), *, total: int = 0):
        self.lengths = lengths
        self.total = total

    @classmethod
    def through(cls, order: BatchOrder, lengths: Sequence[int], step: int) -> TokenCount:
        """The count of a run whose steps take rows in `order`, after `step` steps (0 for a fresh run)."""
        return cls(lengths, total=tokens_through(order, lengths, step))

    def add_rows(self, indices: Iterable[int]) -> dict[str, float]:
        """Count the rows of an optimizer step (positions in `lengths`); return the metric."""
        return self.add(sum(self.lengths[i] for i in indices))

    def add(self, tokens: int) -> dict[str, float]:
        """Count an optimizer step's tokens; return ``{"train/num_tokens": total}``."""
        self.total += int(tokens)
        return {NUM_TOKENS_METRIC: float(self.total)}

    def state_dict(self) -> dict[str, int]:
        """What a checkpoint keeps of the count (for trainers that cannot derive it)."""
        return {"num_tokens": self.total}

    def load_state_dict(self, state: dict[str, int] | None) -> None:
        """Continue a checkpoint's count; None (a checkpoint from before the count was kept) leaves it at 0."""
        self.total = int((state or {}).get("num_tokens", 0))


def tokens_through(order: BatchOrder, lengths: Sequence[int], step: int) -> int:
    """Tokens of the rows of steps 1 … `step` (``train/num_tokens`` after that step).

    Args:
        order: the run's data order.
        lengths: (N,) tokens of each training row, after truncation.
        step: optimizer steps done.

    Returns:
        Whole epochs count every row once; the current epoch adds its first batches.
    """
    epochs, position = divmod(step, order.steps_per_epoch)
    done = order.epoch_permutation(epochs)[: position * order.batch_size].tolist() if position else []
    return epochs * sum(lengths) + sum(lengths[i] for i in done)


def sequence_tokens(rollout: Rollout) -> list[int]:
    """(B,) tokens a training forward reads of each of a rollout's sequences: prompt and response, no padding."""
    return (rollout.prompt_mask.sum(dim=1) + rollout.response_mask.sum(dim=1)).tolist()
