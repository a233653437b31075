"""Feedback rows of KTO jobs as token ids: each example, its mismatched pair, and batches of either.

An example is a prompt, a completion and its label (desirable or not), tokenised as the preference
trainers tokenise a prompt and a response (`trainers.data.tokenizing`: the completion ends with EOS).
A preference row gives two examples, its chosen completion desirable and its rejected one not
(`unpair_preference_rows`, as TRL's ``unpair_preference_dataset``).

KTO's reference point is estimated from mismatched pairs: an example's prompt followed by another
example's completion. Each example's partner is fixed once, before training, as TRL's KTOTrainer
fixes it (``_get_kl_dataset``): the examples, in order, are cut into consecutive groups of the job's
batch size and each takes the completion of the example before it in its group, the first the
last's (`kl_partners`). A last group of a single example joins the group before it, so no example
is its own partner (TRL's would be). The mismatched completion is cut to fit after the example's
own (truncated) prompt, as a response of a preference pair is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from trainers.data.preference import TokenizedPair, pad_responses, truncate_pair
from trainers.data.tokenizing import prompt_token_ids, report_truncated, response_token_ids
from trainers.spec.callbacks import Callbacks
from trainers.spec.errors import UserError
from trainers.spec.kto import KTOHyperparameters


@dataclass
class TokenizedExample:
    """One labelled completion as token ids, after truncation, with its mismatched completion."""

    prompt_ids: list[int]  # (P,) prompt tokens, P <= max_prompt_length
    completion_ids: list[int]  # (A,) completion tokens, EOS last unless truncated
    kl_completion_ids: list[int]  # (A',) the partner's completion, cut to fit after this prompt
    desirable: bool  # the row's label
    truncated: bool  # whether the prompt or the completion was cut

    def as_pair(self) -> TokenizedPair:
        """The example and its mismatched pair as one `TokenizedPair`: the completion in the chosen
        slot, the mismatched completion in the rejected one (how `trainers.dpo.Reference` tables them)."""
        return TokenizedPair(prompt_ids=self.prompt_ids, chosen_ids=self.completion_ids,
                             rejected_ids=self.kl_completion_ids, truncated=self.truncated)  # fmt: skip


def unpair_preference_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Canonical preference rows as feedback rows, as TRL's ``unpair_preference_dataset`` writes them.

    Args:
        rows: N canonical ``{"prompt", "chosen", "rejected", **extra}`` rows.

    Returns:
        2N ``{"prompt", "completion", "label"}`` rows: every chosen completion (label true), in row
        order, then every rejected one (label false). TRL orders them so per block of 1000 rows,
        which is the same for up to 1000 rows. Extra keys are dropped.
    """
    chosen = [{"prompt": row["prompt"], "completion": row["chosen"], "label": True} for row in rows]
    rejected = [{"prompt": row["prompt"], "completion": row["rejected"], "label": False} for row in rows]
    return chosen + rejected


def kl_partners(count: int, group_size: int) -> list[int]:
    """Each example's partner for the mismatched pairs: the one before it in its group (the first: the last).

    Args:
        count: N examples.
        group_size: examples per group (the job's batch size, at least 2).

    Returns:
        (N,) partner indices; ``partners[i] != i`` whenever N ≥ 2.
    """
    starts = list(range(0, count, group_size))
    if len(starts) > 1 and count - starts[-1] == 1:
        starts.pop()  # a lone last example joins the group before it
    partners = []
    for start, end in zip(starts, [*starts[1:], count], strict=True):
        partners += [end - 1] + list(range(start, end - 1))  # (x_s, y_{e-1}), (x_{s+1}, y_s), ...
    return partners


def tokenize_feedback(
    rows: Sequence[dict[str, Any]],
    tokenizer: PreTrainedTokenizerBase,
    *,
    max_length: int,
    max_prompt_length: int,
    group_size: int,
    split: str = "train",
) -> list[TokenizedExample]:
    """Tokenise a split's feedback rows (or unpaired preference rows) with their mismatched completions.

    Args:
        rows: canonical feedback rows, or canonical preference rows (unpaired first).
        tokenizer: the policy's tokenizer; it needs an EOS token, and a chat template for messages.
        max_length: most tokens of prompt plus completion.
        max_prompt_length: most prompt tokens (left truncation).
        group_size: the groups `kl_partners` pairs within.
        split: name of the rows in error messages.

    Returns:
        One `TokenizedExample` per feedback row (two per preference row), in `unpair_preference_rows` order.

    Raises:
        UserError: a malformed row, or messages and a tokenizer without chat template; names the row.
    """
    if tokenizer.eos_token_id is None:
        raise UserError("the model's tokenizer has no EOS token", param="base_model")
    pairs = bool(rows) and "chosen" in rows[0]
    feedback = unpair_preference_rows(rows) if pairs else list(rows)
    prompts, completions = [], []
    for j, row in enumerate(feedback):
        where = f"{split} row {j % len(rows)}" if pairs else f"{split} row {j}"
        field = ("chosen" if j < len(rows) else "rejected") if pairs else "completion"
        prompts.append(prompt_token_ids(row["prompt"], tokenizer, where=where))
        completions.append(response_token_ids(row["completion"], tokenizer, where=f"{where}, field {field!r}"))
    examples = []
    for j, partner in enumerate(kl_partners(len(feedback), group_size)):
        cut = truncate_pair(prompts[j], completions[j], completions[partner], max_length, max_prompt_length)
        truncated = len(cut.prompt_ids) < len(prompts[j]) or len(cut.chosen_ids) < len(completions[j])
        examples.append(TokenizedExample(cut.prompt_ids, cut.chosen_ids, cut.rejected_ids,
                                         desirable=bool(feedback[j]["label"]), truncated=truncated))  # fmt: skip
    return examples


def tokenize_feedback_split(
    rows: Sequence[dict[str, Any]],
    tokenizer: PreTrainedTokenizerBase,
    hp: KTOHyperparameters,
    split: str,
    callbacks: Callbacks,
) -> list[TokenizedExample]:
    """`tokenize_feedback` with a job's settings, reporting the labels' balance and truncated examples.

    Args:
        rows: canonical feedback (or preference) rows of one split.
        tokenizer: the model's tokenizer.
        hp: supplies the length limits and the batch size (the mismatched pairs' groups).
        split: ``"train"`` or ``"eval"``, in messages.
        callbacks: receive an info event with the counts of each label, and a warning when examples were cut.

    Returns:
        One `TokenizedExample` per example, in order.

    Raises:
        UserError: a row is malformed; the message names it.
    """
    examples = tokenize_feedback(rows, tokenizer, max_length=hp.max_length, max_prompt_length=hp.max_prompt_length,
                                 group_size=hp.batch_size, split=split)  # fmt: skip
    desirable = sum(e.desirable for e in examples)
    callbacks.on_event("info", f"{len(examples)} {split} examples: {desirable} desirable, "
                               f"{len(examples) - desirable} undesirable")  # fmt: skip
    report_truncated(callbacks, examples, split,
                     f"examples were truncated (max_prompt_length={hp.max_prompt_length}, max_length={hp.max_length})")
    return examples


@dataclass
class FeedbackBatch:
    """B examples (or their mismatched pairs) as B right-padded rows scored on their completions."""

    input_ids: Tensor  # (B, T) prompt + completion tokens, then pad_token_id
    attention_mask: Tensor  # (B, T) 1 on prompt and completion tokens
    loss_mask: Tensor  # (B, T) 1 on completion tokens only
    desirable: Tensor  # (B,) bool, the examples' labels
    buckets: list[tuple[Tensor, int]]  # (n_g,) row indices and width W_g ≤ T, for `map_buckets`

    def to(self, device: torch.device) -> FeedbackBatch:
        """The same batch on `device`."""
        return FeedbackBatch(self.input_ids.to(device), self.attention_mask.to(device), self.loss_mask.to(device),
                             self.desirable.to(device), [(rows.to(device), w) for rows, w in self.buckets])  # fmt: skip


def collate_feedback(
    examples: Sequence[TokenizedExample], pad_token_id: int, *, kl: bool, bucket_overhead_tokens: int | None = None
) -> FeedbackBatch:
    """Stack B examples' rows: each prompt with its own completion, or with its mismatched one (``kl``).

    Args:
        examples: the B examples of a micro-batch.
        pad_token_id: id written into padding positions (distinct from EOS).
        kl: lay out the mismatched pairs (prompt + the partner's completion) instead of the examples.
        bucket_overhead_tokens: `trainers.data.preference.pad_responses`' grouping by length; None for none.

    Returns:
        The batch; T is its longest row.
    """
    sequences = [(e.prompt_ids, e.kl_completion_ids if kl else e.completion_ids) for e in examples]
    input_ids, attention_mask, loss_mask, buckets = pad_responses(sequences, pad_token_id, bucket_overhead_tokens)
    desirable = torch.tensor([e.desirable for e in examples], dtype=torch.bool)  # (B,)
    return FeedbackBatch(input_ids, attention_mask, loss_mask, desirable, buckets)
