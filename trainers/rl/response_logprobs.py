"""A rollout's responses scored by a model in one forward pass: the logits and log-probs of PPO and GRPO.

The old-policy, reference and training passes all run `response_logprobs` over the rollout's
prompts and responses (`Rollout.model_inputs`), divided by the temperature the responses were
sampled at (see `trainers.rl.rollout`, "One temperature for every pass"). Rows that share a prompt
(GRPO's G completions of a prompt) run packed as `SharedPromptLayout` rows when the model's
attention allows it, so each prompt is computed once.
Shapes: B sequences, P prompt tokens, A response tokens, V vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from trainers.models.loading import attention_mask_for, packs_exactly
from trainers.ops.logprobs import selective_log_softmax
from trainers.rl.rollout import Rollout


def response_logits(model: nn.Module, rollout: Rollout, temperature: float) -> Tensor:
    """Temperature-scaled logits that predict each response token, from one forward pass.

    ``logits[b, a] = model(prompt ⊕ response)[b, P − 1 + a] / τ``: column a predicts response token
    a. Only the positions that predict response tokens get logits (`logits_to_keep`), so the
    prompt costs no (B, P, V) tensor. When rows share their prompt (GRPO's G completions of a
    prompt) and the packed mask states the model's attention (`packs_exactly`: full attention, or
    rows no longer than the sliding window), the pass runs on `SharedPromptLayout` rows, which
    compute each prompt once; the logits are those of the row-per-completion layout up to rounding.
    Differentiable: for the training pass, and for ``policy/entropy`` via `entropy_from_logits`.

    Args:
        model: a causal LM (see `generate`).
        rollout: the batch, from `generate`.
        temperature: τ; must equal ``rollout.temperature`` for ratios against its log-probs.

    Returns:
        (B, A, V) logits divided by τ.
    """
    # Packed rows state full causal attention: a sliding-window model takes them only when no row
    # is longer than its window (`packs_exactly`), else every completion runs in its own row.
    longest = int((rollout.prompt_mask.sum(dim=1) + rollout.response_lengths).max())
    layout = SharedPromptLayout.of(rollout) if packs_exactly(model, longest) else None
    if layout is not None:
        return layout.response_logits(model) / temperature
    input_ids, attention_mask, position_ids = rollout.model_inputs()  # (B, P+A)
    A = rollout.response_ids.shape[1]
    logits = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        use_cache=False,
        logits_to_keep=A + 1,
    ).logits  # (B, A+1, V) positions P-1 … P+A-1
    return logits[:, :-1] / temperature  # (B, A, V) the last position predicts nothing we scored


@dataclass
class SharedPromptLayout:
    """A rollout's rows that share a prompt, packed as one sequence each: ``prompt ⊕ c₁ ⊕ … ⊕ c_k``.

    Completion j's positions continue from the prompt's end (``P_g … P_g + L_j − 1``) and its
    tokens attend to the prompt and to their own earlier tokens only, so every token sees what it
    sees in its own row of `Rollout.model_inputs`, while the prompt runs once for its k completions
    instead of k times (for GRPO, G times fewer prompt tokens, and no padding between completions).
    Prompts are left-padded to the longest, so every position that predicts a response token lies
    in the last K columns, the only ones that get logits. Padding attends to itself only.
    Shapes: g packed rows of width W, B rollout rows, A response columns, V vocabulary.
    """

    input_ids: Tensor  # (g, W) pad… prompt, the completions back to back, then padding
    position_ids: Tensor  # (g, W) 0…P−1 on the prompt, P…P+L_j−1 on completion j, 0 on padding
    attention_mask: Tensor  # (g, 1, W, W) bool, True where a query (dim 2) may attend to a key (dim 3)
    keep: int  # K: the last K columns hold every position that predicts a response token
    gather: Tensor  # (B, A) long, into the (g·K) kept positions: the one predicting response token a of row b

    @classmethod
    def of(cls, rollout: Rollout) -> SharedPromptLayout | None:
        """The layout of a rollout, or None when no two rows share a prompt or it would not compute fewer tokens.

        Rows share a prompt when their prompt tokens are equal; they need not be adjacent.
        """
        lengths = rollout.response_lengths.tolist()
        prompt_lengths = rollout.prompt_mask.sum(dim=1).tolist()
        groups: dict[tuple[int, ...], list[int]] = {}
        for row, (ids, n) in enumerate(zip(rollout.prompt_ids.tolist(), prompt_lengths, strict=True)):
            groups.setdefault(tuple(ids[len(ids) - n :]), []).append(row)
        P = max(prompt_lengths)  # longest real prompt; every packed row is left-padded to it
        W = P + max(sum(lengths[r] for r in rows) for rows in groups.values())
        if len(groups) == len(lengths) or len(groups) * W >= len(lengths) * (P + rollout.response_ids.shape[1]):
            return None
        return cls._build(rollout, list(groups.items()), lengths, P, W)

    @classmethod
    def _build(
        cls, rollout: Rollout, groups: list[tuple[tuple[int, ...], list[int]]], lengths: list[int], P: int, W: int
    ) -> SharedPromptLayout:
        device = rollout.response_ids.device
        K = W - P + 1  # columns P − 1 … W − 1
        B, A = rollout.response_ids.shape
        responses = rollout.response_ids.tolist()
        input_ids = torch.zeros((len(groups), W), dtype=torch.long)  # (g, W) padding: any id, masked
        position_ids = torch.zeros((len(groups), W), dtype=torch.long)  # (g, W)
        mask = torch.eye(W, dtype=torch.bool).repeat(len(groups), 1, 1)  # (g, W, W) padding sees itself only
        gather = torch.zeros((B, A), dtype=torch.long)  # (B, A) padding columns read any kept position
        for g, (prompt, rows) in enumerate(groups):
            p = len(prompt)
            start = P - p  # first real prompt column
            input_ids[g, start:P] = torch.tensor(prompt, dtype=torch.long)
            position_ids[g, start:P] = torch.arange(p)
            mask[g, start:P, start:P] = torch.ones((p, p), dtype=torch.bool).tril()
            column = P
            for row in rows:
                n = lengths[row]
                end = column + n
                input_ids[g, column:end] = torch.tensor(responses[row][:n], dtype=torch.long)
                position_ids[g, column:end] = torch.arange(p, p + n)
                mask[g, column:end, start:P] = True  # the completion sees the whole prompt
                mask[g, column:end, column:end] = torch.ones((n, n), dtype=torch.bool).tril()
                # Token 0 is predicted by the last prompt token, token a > 0 by the one before it.
                predictors = torch.tensor([P - 1, *range(column, end - 1)][:n], dtype=torch.long)
                gather[row, :n] = g * K + predictors - (P - 1)
                column = end
        return cls(
            input_ids=input_ids.to(device), position_ids=position_ids.to(device),
            attention_mask=mask.unsqueeze(1).to(device), keep=K, gather=gather.to(device),
        )  # fmt: skip

    def response_logits(self, model: nn.Module) -> Tensor:
        """Logits predicting each rollout row's response tokens, from one forward over the packed rows.

        Returns:
            (B, A, V) unscaled logits; columns past a row's response length hold some other
            position's logits (finite, and masked by the caller as padding).
        """
        logits = model(
            input_ids=self.input_ids,
            attention_mask=attention_mask_for(model, self.attention_mask),
            position_ids=self.position_ids,
            use_cache=False,
            logits_to_keep=self.keep,
        ).logits  # (g, K, V)
        return logits.reshape(-1, logits.shape[-1])[self.gather]  # (B, A, V)


def response_logprobs(model: nn.Module, rollout: Rollout, temperature: float) -> Tensor:
    """Per-token log-probs of the rollout's responses under `model`, in one forward pass.

    ``logp[b, a] = log softmax(logits[b, P − 1 + a] / τ)[response[b, a]] · response_mask[b, a]``,
    via `selective_log_softmax`. With the sampling model and ``τ = rollout.temperature`` it equals
    ``rollout.logprobs`` (up to floating-point differences between cached and full attention).
    Used for the old-policy, reference and training passes alike; wrap in ``torch.no_grad()``
    for the first two.

    Args:
        model: a causal LM (see `generate`).
        rollout: the batch, from `generate`.
        temperature: τ, the rollout's sampling temperature.

    Returns:
        (B, A) float32 log-probs, 0 on padding.
    """
    logits = response_logits(model, rollout, temperature)  # (B, A, V)
    logp = selective_log_softmax(logits, rollout.response_ids)  # (B, A)
    return logp * rollout.response_mask.to(logp.dtype)
