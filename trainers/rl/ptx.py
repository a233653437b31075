"""PPO-ptx: a language-modelling loss on plain text, mixed into PPO's updates (Ouyang et al. 2022, eq. 2).

InstructGPT maximises ``E[r_θ(x, y) − β·log(π/π_ref)] + γ·E_{x∼D_pretrain}[log π(x)]`` so that RLHF
does not erode what the model could already do. Here the second term is a loss,
``γ · (−Σ_t log π(x_t | x_<t) / N)``, with N the number of predicted tokens in the optimizer step's
text rows: a per-token mean over the whole step, so micro-batching does not change it.
https://arxiv.org/abs/2203.02155

The text is `TrainingData.ptx`: rows ``{"text": str}``. Each is tokenised with the tokenizer's own
special tokens (e.g. BOS), EOS appended, and cut to `max_length` tokens. Optimizer step s takes
`batch_size` rows by `BatchOrder` (shuffled epoch after epoch, a pure function of (seed, s)), so a
resumed run reads the rows the uninterrupted run would have. Log-probs are at temperature 1: it is
the model's own likelihood, not the sampling distribution, that the term preserves.
Shapes: B rows, T tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from trainers.data.batching import BatchOrder, split_micro_batches
from trainers.distributed.ranks import Ranks
from trainers.ops.logprobs import sequence_logprobs
from trainers.spec.errors import UserError


def tokenize_texts(
    rows: Sequence[Mapping[str, Any]], tokenizer: PreTrainedTokenizerBase, *, max_length: int
) -> list[list[int]]:
    """Token ids of text rows, EOS appended, each cut to its first `max_length` tokens.

    Args:
        rows: ``{"text": str}`` rows.
        tokenizer: the policy's tokenizer.
        max_length: most tokens per row.

    Returns:
        One id list per row, each of at least two tokens (a text of one token predicts nothing).

    Raises:
        UserError: a row has no non-empty ``text`` string; the message names the row.
    """
    sequences = []
    for i, row in enumerate(rows):
        text = row.get("text") if isinstance(row, Mapping) else None
        if not isinstance(text, str) or not text:
            raise UserError(f"ptx row {i}: expected a non-empty string field 'text'", param="ptx")
        ids = tokenizer(text, add_special_tokens=True)["input_ids"] + [tokenizer.eos_token_id]
        sequences.append(ids[:max_length])
    return sequences


@dataclass
class PtxData:
    """The text rows of PPO-ptx and which of them each optimizer step reads.

    Attributes:
        sequences: token ids of every row (`tokenize_texts`).
        order: `batch_size` rows per optimizer step, a pure function of (seed, step).
        pad_token_id: filler of the right padding.
    """

    sequences: list[list[int]]
    order: BatchOrder
    pad_token_id: int

    @classmethod
    def from_rows(
        cls, rows: Sequence[Mapping[str, Any]], tokenizer: PreTrainedTokenizerBase, *, max_length: int,
        batch_size: int, seed: int,
    ) -> PtxData:  # fmt: skip
        """Tokenise the rows and order them for the run.

        Args:
            rows: ``{"text": str}`` rows; at least one.
            tokenizer: the policy's tokenizer.
            max_length: most tokens per row.
            batch_size: rows per optimizer step.
            seed: the job's seed.

        Returns:
            The data, ready for `step_rows`.

        Raises:
            UserError: no rows, or a malformed row.
        """
        if not rows:
            raise UserError("ptx_coef > 0 needs text rows for the pretraining loss (TrainingData.ptx)", param="ptx")
        sequences = tokenize_texts(rows, tokenizer, max_length=max_length)
        order = BatchOrder(num_rows=len(sequences), batch_size=batch_size, seed=seed)
        return cls(sequences=sequences, order=order, pad_token_id=tokenizer.pad_token_id)

    def step_rows(self, step: int) -> list[list[int]]:
        """Token ids of the rows optimizer step `step` (1-based) reads."""
        return [self.sequences[i] for i in self.order.step_indices(step)]


def collate_texts(sequences: Sequence[Sequence[int]], pad_token_id: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Right-pad token id lists into a batch.

    Args:
        sequences: B id lists.
        pad_token_id: filler.
        device: where the batch goes.

    Returns:
        input_ids: (B, T) long, T the longest row.
        attention_mask: (B, T) long, 1 on real tokens.
    """
    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)  # (B, T)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)  # (B, T)
    for row, ids in enumerate(sequences):
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, : len(ids)] = 1
    return input_ids.to(device), attention_mask.to(device)


def backward_ptx_loss(
    policy: nn.Module, sequences: Sequence[Sequence[int]], *, coef: float, pad_token_id: int,
    gradient_accumulation_steps: int, backward: Callable[[Tensor], None] = Tensor.backward, ranks: Ranks | None = None,
) -> Tensor:  # fmt: skip
    """Backward ``coef · (−Σ log π(x_t | x_<t) / N)`` over one optimizer step's text rows, micro-batch by micro-batch.

    N counts the predicted tokens of all the step's rows (every token but each row's first), so the
    micro-batch losses add up to the step's mean and the gradient does not depend on the split. On
    several ranks each runs its share of every micro-batch (`Ranks.batch_share`), still divided by N.

    Args:
        policy: the policy being trained; gradients accumulate into it.
        sequences: the step's rows as token ids.
        coef: γ, the weight of the term.
        pad_token_id: filler of the right padding.
        gradient_accumulation_steps: micro-batches to split the rows into.
        backward: runs a loss's backward pass (`TrainingLoop.backward`, which scales it under fp16).
        ranks: the job's processes (default: one).

    Returns:
        () the step's unweighted loss (mean negative log-likelihood per token), detached, on the device;
        on several ranks, this rank's share of it.
    """
    ranks = ranks or Ranks()
    device = next(policy.parameters()).device
    num_tokens = sum(len(s) - 1 for s in sequences)
    total = torch.zeros((), device=device)
    for rows in split_micro_batches(list(range(len(sequences))), gradient_accumulation_steps):
        mine, weight = ranks.batch_share(rows)
        input_ids, attention_mask = collate_texts([sequences[i] for i in mine], pad_token_id, device)  # (b, T)
        _, logp = sequence_logprobs(policy, input_ids, attention_mask, attention_mask)  # (b,) summed
        loss = weight * -logp.sum() / num_tokens
        backward(coef * loss)
        total += loss.detach()
    return total
