"""Tokenise canonical preference rows and collate them into one policy forward per micro-batch.

A pair is ``prompt_ids + chosen_ids`` and ``prompt_ids + rejected_ids``, each rendered as
`trainers.data.tokenizing` says (a response ends with EOS).

Truncation keeps what matters for the preference: the prompt keeps its last `max_prompt_length`
tokens (left truncation), then each response is cut on the right so prompt + response fits in
`max_length`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from trainers.data.batching import length_buckets
from trainers.data.tokenizing import prompt_token_ids, report_truncated, response_token_ids
from trainers.spec.callbacks import Callbacks
from trainers.spec.config import LoopHyperparameters
from trainers.spec.errors import UserError


@dataclass
class TokenizedPair:
    """One preference pair as token ids, after truncation."""

    prompt_ids: list[int]  # (P,) prompt tokens, P <= max_prompt_length
    chosen_ids: list[int]  # (A_w,) chosen response tokens, EOS last unless truncated
    rejected_ids: list[int]  # (A_l,) rejected response tokens, EOS last unless truncated
    truncated: bool  # whether any of the three was cut


@dataclass
class PreferenceBatch:
    """B pairs as 2B right-padded rows: chosen responses in rows [0, B), rejected in [B, 2B).

    `buckets` groups the rows for the forward passes (`trainers.data.batching.map_buckets`): each group
    runs cut to its own longest row, so short rows do not pay for the batch's longest one.
    """

    input_ids: Tensor  # (2B, T) prompt + response tokens, then pad_token_id
    attention_mask: Tensor  # (2B, T) 1 on prompt and response tokens, 0 on padding
    loss_mask: Tensor  # (2B, T) 1 on response tokens only
    buckets: list[tuple[Tensor, int]] = field(default_factory=list)  # (n_g,) row indices and width W_g ≤ T
    shared: list[SharedPromptRows] = field(default_factory=list)  # the same pairs, one row each (optional)

    @property
    def num_pairs(self) -> int:
        """B, the number of preference pairs."""
        return self.input_ids.shape[0] // 2

    def to(self, device: torch.device) -> PreferenceBatch:
        """The same batch on `device`."""
        return PreferenceBatch(
            input_ids=self.input_ids.to(device),
            attention_mask=self.attention_mask.to(device),
            loss_mask=self.loss_mask.to(device),
            buckets=[(rows.to(device), width) for rows, width in self.buckets],
            shared=[group.to(device) for group in self.shared],
        )


@dataclass
class SharedPromptRows:
    """Pairs as one row each, ``prompt ⊕ chosen ⊕ rejected``, so the prompt is computed once per pair.

    The rejected response's positions continue from the prompt's end and its tokens attend to the
    prompt and to themselves only (never to the chosen response), so every token sees exactly what
    it sees in its own row of the two-row layout: the same hidden states, with the prompt run once
    instead of twice. Needs a model that takes a 4D attention mask (SDPA or eager attention). "Rows"
    below are the two-row layout's 2B rows (chosen p → p, rejected p → B + p).

    Reward models read it (`trainers.models.reward.shared_prompt_rewards`). DPO does not: its
    log-probs must equal, to the last bit, those of the reference pass, which runs on other groups
    of pairs, and the rounding of this layout depends on the group (that of the two-row layout does
    not), which moves exact ties such as ``rewards/accuracies`` at the first step.
    """

    input_ids: Tensor  # (b, W) prompt, chosen, rejected, then pad_token_id
    position_ids: Tensor  # (b, W) 0…P−1, P…P+C−1, P…P+R−1, then 0
    attention_mask: Tensor  # (b, 1, W, W) bool, True where a query (dim 2) may attend to a key (dim 3)
    ends: Tensor  # (2b,) flat positions of the last chosen and the last rejected token of each pair
    end_rows: Tensor  # (2b,) their rows in the two-row layout

    def to(self, device: torch.device) -> SharedPromptRows:
        """The same rows on `device`."""
        return SharedPromptRows(**{name: getattr(self, name).to(device) for name in self.__dataclass_fields__})


def shared_prompt_rows(pairs: Sequence[TokenizedPair], indices: Sequence[int], num_pairs: int, pad_token_id: int
                       ) -> SharedPromptRows:  # fmt: skip
    """Lay out some of a batch's pairs as `SharedPromptRows`.

    Args:
        pairs: the batch's B pairs.
        indices: which of them (positions in `pairs`) go into these rows.
        num_pairs: B, for the two-row layout's row numbers.
        pad_token_id: id written into padding positions.

    Returns:
        One row per pair of `indices`, right-padded to the longest.
    """
    lengths = [len(pairs[i].prompt_ids) + len(pairs[i].chosen_ids) + len(pairs[i].rejected_ids) for i in indices]
    width = max(lengths)  # W
    input_ids = torch.full((len(indices), width), pad_token_id, dtype=torch.long)  # (b, W)
    position_ids = torch.zeros((len(indices), width), dtype=torch.long)  # (b, W)
    mask = torch.zeros((len(indices), width, width), dtype=torch.bool)  # (b, W, W)
    causal = torch.ones((width, width), dtype=torch.bool).tril()  # (W, W)
    ends, end_rows = [], []
    for row, i in enumerate(indices):
        pair = pairs[i]
        p, c, r = len(pair.prompt_ids), len(pair.chosen_ids), len(pair.rejected_ids)
        input_ids[row, : p + c + r] = torch.tensor(pair.prompt_ids + pair.chosen_ids + pair.rejected_ids)
        position_ids[row, : p + c + r] = torch.cat([torch.arange(p + c), torch.arange(p, p + r)])
        mask[row] = causal
        mask[row, p + c : p + c + r, p : p + c] = False  # rejected tokens never see the chosen response
        mask[row, p + c + r :, :] = torch.eye(width, dtype=torch.bool)[p + c + r :]  # padding sees itself only
        base = row * width
        ends += [base + p + c - 1, base + p + c + r - 1]
        end_rows += [i, num_pairs + i]
    return SharedPromptRows(
        input_ids=input_ids, position_ids=position_ids, attention_mask=mask.unsqueeze(1),
        ends=torch.tensor(ends, dtype=torch.long), end_rows=torch.tensor(end_rows, dtype=torch.long),
    )  # fmt: skip


def tokenize_pairs(
    rows: Sequence[dict[str, Any]],
    tokenizer: PreTrainedTokenizerBase,
    *,
    max_length: int,
    max_prompt_length: int,
    split: str = "train",
) -> list[TokenizedPair]:
    """Tokenise and truncate canonical preference rows.

    Args:
        rows: canonical rows ``{"prompt", "chosen", "rejected"}``, each a string or a list of
            ``{"role", "content"}`` messages.
        tokenizer: the policy's tokenizer; it needs an EOS token, and a chat template for
            message-list prompts.
        max_length: most tokens of prompt plus response.
        max_prompt_length: most prompt tokens (must be < max_length).
        split: name of the rows in error messages (``"train"`` or ``"eval"``).

    Returns:
        One `TokenizedPair` per row, in order.

    Raises:
        UserError: a row is malformed, or message rows meet a tokenizer without chat template;
            the message names the row.
    """
    if tokenizer.eos_token_id is None:
        raise UserError("the model's tokenizer has no EOS token", param="base_model")
    pairs = []
    for i, row in enumerate(rows):
        for key in ("prompt", "chosen", "rejected"):
            if key not in row:
                raise UserError(f"{split} row {i}: missing field {key!r}")
        prompt_ids = prompt_token_ids(row["prompt"], tokenizer, where=f"{split} row {i}")
        chosen_ids = response_token_ids(row["chosen"], tokenizer, where=f"{split} row {i}, field 'chosen'")
        rejected_ids = response_token_ids(row["rejected"], tokenizer, where=f"{split} row {i}, field 'rejected'")
        pairs.append(truncate_pair(prompt_ids, chosen_ids, rejected_ids, max_length, max_prompt_length))
    return pairs


def tokenize_split(
    rows: Sequence[dict[str, Any]],
    tokenizer: PreTrainedTokenizerBase,
    hp: LoopHyperparameters,
    split: str,
    callbacks: Callbacks,
) -> list[TokenizedPair]:
    """`tokenize_pairs` with a job's length limits, reporting truncated pairs as one warning event.

    Args:
        rows: canonical preference rows of one split.
        tokenizer: the model's tokenizer.
        hp: supplies `max_length` and `max_prompt_length`.
        split: ``"train"`` or ``"eval"``, in messages.
        callbacks: receive the warning when any pair was cut (`report_truncated`).

    Returns:
        One `TokenizedPair` per row, in order.

    Raises:
        UserError: the tokenizer has no EOS token, or a row is malformed; the message names the row.
    """
    pairs = tokenize_pairs(
        rows, tokenizer, max_length=hp.max_length, max_prompt_length=hp.max_prompt_length, split=split
    )
    report_truncated(callbacks, pairs, split,
                     f"pairs were truncated (max_prompt_length={hp.max_prompt_length}, max_length={hp.max_length})")
    return pairs


def truncate_pair(
    prompt_ids: list[int],
    chosen_ids: list[int],
    rejected_ids: list[int],
    max_length: int,
    max_prompt_length: int,
) -> TokenizedPair:
    """Keep the prompt's last `max_prompt_length` tokens, then cut responses to fit `max_length`.

    Args:
        prompt_ids: (P,) prompt tokens.
        chosen_ids: (A_w,) chosen response tokens.
        rejected_ids: (A_l,) rejected response tokens.
        max_length: most tokens of prompt plus response.
        max_prompt_length: most prompt tokens.

    Returns:
        The truncated pair, flagged when anything was cut.
    """
    prompt = prompt_ids[-max_prompt_length:]  # left truncation: the end of the prompt matters most
    budget = max_length - len(prompt)
    chosen, rejected = chosen_ids[:budget], rejected_ids[:budget]  # right truncation
    truncated = len(prompt) < len(prompt_ids) or len(chosen) < len(chosen_ids) or len(rejected) < len(rejected_ids)
    return TokenizedPair(prompt_ids=prompt, chosen_ids=chosen, rejected_ids=rejected, truncated=truncated)


def collate_pairs(
    pairs: Sequence[TokenizedPair],
    pad_token_id: int,
    *,
    bucket_overhead_tokens: int | None = None,
    shared_prompt: bool = False,
) -> PreferenceBatch:
    """Stack B pairs into one right-padded batch of 2B rows, chosen rows first.

    Args:
        pairs: the B pairs of a micro-batch.
        pad_token_id: id written into padding positions (distinct from EOS).
        bucket_overhead_tokens: group the rows by length for the forward passes, a new group
            costing this many padded tokens (`trainers.data.batching.length_buckets`); None keeps all
            2B rows in one group of width T.
        shared_prompt: also lay the pairs out as `SharedPromptRows` (in groups of similar length
            when `bucket_overhead_tokens` is set), for models that take 4D attention masks.

    Returns:
        The batch; T is the longest prompt + response among the 2B rows.
    """
    sequences = [(p.prompt_ids, p.chosen_ids) for p in pairs] + [(p.prompt_ids, p.rejected_ids) for p in pairs]
    input_ids, attention_mask, loss_mask, buckets = pad_responses(sequences, pad_token_id, bucket_overhead_tokens)
    shared = []
    if shared_prompt:
        packed = [len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids) for p in pairs]
        groups = [list(range(len(pairs)))] if bucket_overhead_tokens is None else [
            rows for rows, _ in length_buckets(packed, bucket_overhead_tokens)]  # fmt: skip
        shared = [shared_prompt_rows(pairs, rows, len(pairs), pad_token_id) for rows in groups]
    return PreferenceBatch(input_ids=input_ids, attention_mask=attention_mask, loss_mask=loss_mask, buckets=buckets,
                           shared=shared)  # fmt: skip


def pad_responses(
    sequences: Sequence[tuple[list[int], list[int]]], pad_token_id: int, bucket_overhead_tokens: int | None = None
) -> tuple[Tensor, Tensor, Tensor, list[tuple[Tensor, int]]]:
    """Right-pad ``(prompt, response)`` token lists into rows scored on their responses.

    Args:
        sequences: N ``(prompt_ids, response_ids)``.
        pad_token_id: id written into padding positions.
        bucket_overhead_tokens: group the rows by length (`trainers.data.batching.length_buckets`), a new
            group costing this many padded tokens; None keeps all N rows in one group of width T.

    Returns:
        input_ids: (N, T) prompt + response tokens, then `pad_token_id`; T the longest row.
        attention_mask: (N, T) 1 on real tokens.
        loss_mask: (N, T) 1 on response tokens only.
        buckets: ``(row indices, width)`` groups for `trainers.data.batching.map_buckets`.
    """
    width = max(len(prompt) + len(response) for prompt, response in sequences)  # T
    input_ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)  # (N, T)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)  # (N, T)
    loss_mask = torch.zeros((len(sequences), width), dtype=torch.long)  # (N, T)
    for row, (prompt, response) in enumerate(sequences):
        end = len(prompt) + len(response)
        input_ids[row, :end] = torch.tensor(prompt + response, dtype=torch.long)
        attention_mask[row, :end] = 1
        loss_mask[row, len(prompt) : end] = 1
    if bucket_overhead_tokens is None:
        buckets = [(torch.arange(len(sequences)), width)]
    else:
        lengths = [len(prompt) + len(response) for prompt, response in sequences]
        buckets = [(torch.tensor(rows), w) for rows, w in length_buckets(lengths, bucket_overhead_tokens)]
    return input_ids, attention_mask, loss_mask, buckets
