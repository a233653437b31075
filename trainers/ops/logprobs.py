"""Per-token log-probabilities of given tokens under a causal LM (DESIGN §7, shared by all trainers)."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
from peft import PeftModel
from torch import Tensor, nn

from trainers.data.batching import map_buckets


def selective_log_softmax(logits: Tensor, index: Tensor) -> Tensor:
    """log softmax(logits)[index], without materialising the full log-softmax.

    ``out[..., t] = logits[..., t, index[..., t]] − logsumexp_v logits[..., t, v]``

    The chosen logits are gathered first; the normaliser is computed one leading row at a time,
    so peak extra memory is one row of logits instead of a second (B, T, V) tensor. The
    normaliser is computed in float32 whatever the input dtype.

    Args:
        logits: (..., T, V) unnormalised scores.
        index: (..., T) integer token ids in [0, V).

    Returns:
        (..., T) float32 log-probabilities of the indexed tokens.
    """
    selected = torch.gather(logits, dim=-1, index=index.unsqueeze(-1)).squeeze(-1).float()  # (..., T)
    rows = logits.reshape(-1, *logits.shape[-2:])  # (N, T, V), N = product of leading dims
    normaliser = torch.stack([torch.logsumexp(row.float(), dim=-1) for row in rows])  # (N, T)
    return selected - normaliser.reshape(selected.shape)


def sequence_logprobs(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    loss_mask: Tensor,
    temperature: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """Log-probabilities of each sequence's own tokens, counted only where `loss_mask` is 1.

    ``logp[b, t] = log softmax(logits[b, t] / temperature)[input_ids[b, t + 1]] · loss_mask[b, t + 1]``,
    ``total[b] = Σ_t logp[b, t]``.
    Position t predicts token t + 1, so the outputs are one shorter than the input. Prompt and
    padding positions carry 0 in `loss_mask` and contribute exactly 0, whatever their logits.

    Args:
        model: a causal LM returning `.logits` of shape (B, T, V).
        input_ids: (B, T) token ids, right-padded.
        attention_mask: (B, T) 1 on real tokens, 0 on padding.
        loss_mask: (B, T) 1 on the tokens to score (the response), 0 elsewhere.
        temperature: logits are divided by it, as during sampling.

    Returns:
        per_token: (B, T-1) float32 masked log-probabilities.
        total: (B,) float32 sum of `per_token` over tokens.
    """
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits  # (B, T, V)
    logits = logits[:, :-1] / temperature  # (B, T-1, V) position t predicts token t+1
    targets = input_ids[:, 1:]  # (B, T-1)
    mask = loss_mask[:, 1:].to(torch.float32)  # (B, T-1)
    per_token = selective_log_softmax(logits, targets) * mask  # (B, T-1)
    return per_token, per_token.sum(dim=-1)


def sequence_logprob_totals(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    loss_mask: Tensor,
    buckets: Sequence[tuple[Tensor, int]] = (),
    temperature: float = 1.0,
) -> Tensor:
    """`sequence_logprobs`' totals, with each group of rows run as its own forward cut to its width.

    A row's log-probs do not depend on the other rows of its forward, so grouping rows of similar
    length (`trainers.data.batching.length_buckets`) changes no value, only how much padding is computed.

    Args:
        model: a causal LM returning `.logits`.
        input_ids: (B, T) token ids, right-padded.
        attention_mask: (B, T) 1 on real tokens.
        loss_mask: (B, T) 1 on the tokens to score.
        buckets: ``(row indices, width)`` groups (e.g. `PreferenceBatch.buckets`); empty for one
            forward over all rows at full width.
        temperature: logits are divided by it, as during sampling.

    Returns:
        (B,) float32 summed log-probabilities of the scored tokens.
    """

    def totals(ids: Tensor, mask: Tensor, scored: Tensor) -> Tensor:
        return sequence_logprobs(model, ids, mask, scored, temperature)[1]  # (n,)

    return map_buckets(totals, buckets, input_ids, attention_mask, loss_mask)


def scored_token_counts(loss_mask: Tensor) -> Tensor:
    """How many tokens `sequence_logprobs` sums over in each row: ``n[b] = Σ_{t≥1} loss_mask[b, t]``.

    Dividing `sequence_logprobs`' totals by it gives length-averaged log-probs (as IPO needs).
    The first position is left out because no logit predicts it.

    Args:
        loss_mask: (B, T) 1 on the tokens to score.

    Returns:
        (B,) float32 counts, at least 1 (a row with nothing to score averages to 0, not NaN).
    """
    return loss_mask[:, 1:].sum(dim=-1).clamp(min=1).to(torch.float32)


@torch.no_grad()
def reference_sequence_logprobs(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    loss_mask: Tensor,
    temperature: float = 1.0,
    buckets: Sequence[tuple[Tensor, int]] = (),
) -> Tensor:
    """`sequence_logprobs` totals under a frozen reference: no gradients, eval mode, adapters off.

    A peft model stands for its own base model here: its adapters are disabled for the pass, so
    LoRA training needs no second copy of the weights. Eval mode keeps dropout out of the
    reference, whatever mode `model` is in (it is restored afterwards).

    Args:
        model: the reference model, or a peft model whose base is the reference.
        input_ids: (B, T) token ids, right-padded.
        attention_mask: (B, T) 1 on real tokens.
        loss_mask: (B, T) 1 on the tokens to score.
        temperature: logits are divided by it, as during sampling.
        buckets: groups of rows run as separate forwards (`sequence_logprob_totals`).

    Returns:
        (B,) float32 summed log-probabilities of the scored tokens.
    """
    was_training = model.training
    model.eval()
    adapters_off = model.disable_adapter() if isinstance(model, PeftModel) else contextlib.nullcontext()
    with adapters_off:
        total = sequence_logprob_totals(model, input_ids, attention_mask, loss_mask, buckets, temperature)  # (B,)
    model.train(was_training)
    return total
