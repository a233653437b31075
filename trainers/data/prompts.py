"""Prompt rows of PPO and GRPO jobs as token ids, and which prompts each rollout samples.

A canonical prompt row is ``{"prompt": P, **extra}`` (`trainers.spec.formats.normalize_prompt`). P is
rendered exactly as the preference trainers render a prompt: a string is tokenised as it is (with
the tokenizer's own special tokens, e.g. BOS); a message list goes through the tokenizer's chat
template with a generation prompt, so the completion is the assistant's turn. Prompts longer than
`max_prompt_length` keep their last tokens (left truncation: the end of a prompt is what the
completion continues). The whole row is kept as the ``item`` graders read (``{{item.answer}}``).

Rollout i samples `rollout_batch_size` prompts that are a pure function of (seed, i), so a resumed
run samples the prompts the uninterrupted run would have.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from transformers import PreTrainedTokenizerBase

from trainers.data.batching import BatchOrder
from trainers.data.tokenizing import prompt_token_ids, report_truncated
from trainers.spec.callbacks import Callbacks
from trainers.spec.errors import UserError


@dataclass
class TokenizedPrompt:
    """One prompt row, ready to sample from."""

    ids: list[int]  # (P,) prompt tokens after left truncation, P <= max_prompt_length
    item: dict[str, Any]  # the whole canonical row, as graders see it
    truncated: bool  # whether the prompt lost tokens on the left


def tokenize_prompts(
    rows: Sequence[dict[str, Any]],
    tokenizer: PreTrainedTokenizerBase,
    *,
    max_prompt_length: int,
    split: str = "train",
) -> list[TokenizedPrompt]:
    """Tokenise canonical prompt rows and keep each prompt's last `max_prompt_length` tokens.

    Args:
        rows: canonical prompt rows ``{"prompt": str | [messages], ...}``.
        tokenizer: the policy's tokenizer; message-list prompts need its chat template.
        max_prompt_length: most prompt tokens.
        split: name of the rows in error messages (``"train"`` or ``"eval"``).

    Returns:
        One `TokenizedPrompt` per row, in order.

    Raises:
        UserError: a row has no prompt, a prompt renders to no token, or message rows meet a
            tokenizer without chat template; the message names the row.
    """
    prompts = []
    for i, row in enumerate(rows):
        where = f"{split} row {i}"
        if not isinstance(row, dict) or "prompt" not in row:
            raise UserError(f"{where}: missing field 'prompt'")
        ids = prompt_token_ids(row["prompt"], tokenizer, where=where)
        if not ids:
            raise UserError(f"{where}: the prompt has no tokens")
        kept = ids[-max_prompt_length:]  # (P,)
        prompts.append(TokenizedPrompt(ids=kept, item=row, truncated=len(kept) < len(ids)))
    return prompts


def tokenize_prompt_split(
    rows: Sequence[dict[str, Any]],
    tokenizer: PreTrainedTokenizerBase,
    *,
    max_prompt_length: int,
    split: str,
    callbacks: Callbacks,
) -> list[TokenizedPrompt]:
    """`tokenize_prompts`, reporting the truncated prompts of a split as one warning event.

    Args:
        rows: canonical prompt rows of one split.
        tokenizer: the policy's tokenizer.
        max_prompt_length: most prompt tokens (the job's ``hyperparameters.max_prompt_length``); a
            longer prompt keeps its last ones.
        split: ``"train"`` or ``"eval"``, in messages.
        callbacks: receive the warning when any prompt was cut (`report_truncated`).

    Returns:
        The prompts `tokenize_prompts` returns, one per row.

    Raises:
        UserError: a row has no prompt, or its prompt renders to no token; the message names the row.
    """
    prompts = tokenize_prompts(rows, tokenizer, max_prompt_length=max_prompt_length, split=split)
    report_truncated(callbacks, prompts, split, f"prompts were longer than max_prompt_length={max_prompt_length} "
                                                f"tokens and keep only their last {max_prompt_length}")
    return prompts


@dataclass
class PromptOrder:
    """The prompts of each rollout: `rollout_batch_size` consecutive rows of an endless shuffled stream.

    The stream is epoch after epoch of `BatchOrder`'s permutations (epoch e shuffled by a generator
    seeded with ``seed · 2²⁰ + e``). Rollout i (1-based) takes stream positions
    ``[(i − 1)·R, i·R)``, so every rollout is full, even across an epoch boundary or with fewer rows
    than R (a prompt may then appear twice in one rollout).
    """

    num_rows: int
    rollout_batch_size: int
    seed: int

    def __post_init__(self):
        if self.num_rows < 1:
            raise UserError("the training data has no rows")
        self._order = BatchOrder(num_rows=self.num_rows, batch_size=self.rollout_batch_size, seed=self.seed)

    @property
    def rollouts_per_epoch(self) -> int:
        """Rollouts per pass over the rows: ``ceil(num_rows / rollout_batch_size)``."""
        return math.ceil(self.num_rows / self.rollout_batch_size)

    def rollout_indices(self, rollout: int) -> list[int]:
        """Row indices of rollout `rollout` (1-based).

        Args:
            rollout: the rollout number, counting from 1 over the whole run.

        Returns:
            `rollout_batch_size` row indices.
        """
        start = (rollout - 1) * self.rollout_batch_size
        positions = range(start, start + self.rollout_batch_size)
        return [int(self._order.epoch_permutation(p // self.num_rows)[p % self.num_rows]) for p in positions]
