"""PPO/GRPO losses as pure functions of per-token tensors, and how they are aggregated (DESIGN §7).

Shapes: B sequences in the micro-batch, A response tokens, V vocabulary.

**Aggregation does not depend on micro-batching.** An optimizer step sees N sequences, split into
micro-batches for gradient accumulation (and, later, across data-parallel ranks). Every loss here
divides by a `normalizer` that the caller computes once for the whole step with `loss_normalizer`
(global token count, global sequence count, or a constant), never by a count of the micro-batch
alone. Summing the micro-batch losses (calling ``backward`` on each) therefore gives exactly the
loss, and the gradient, of the whole step in one batch. Under data parallelism with averaged
gradients, multiply the loss by the world size (or divide the normalizer by it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

Aggregation = Literal["token", "sequence", "constant"]
ImportanceSamplingLevel = Literal["token", "sequence"]


def loss_normalizer(
    mode: Aggregation, *, num_tokens: Tensor | float, num_sequences: int, max_tokens: int | None = None
) -> Tensor | float:
    """What `aggregate` divides by, for the whole optimizer step.

    - ``token`` (DAPO, Yu et al. 2025, §3.3, https://arxiv.org/abs/2503.14476): the number of
      response tokens in the step, so every token weighs the same.
    - ``sequence`` (GRPO, Shao et al. 2024, eq. 3, https://arxiv.org/abs/2402.03300): the number of
      sequences; each sequence's loss is first its mean over its own tokens.
    - ``constant`` (Dr. GRPO, Liu et al. 2025, §3.1, https://arxiv.org/abs/2503.20783):
      ``num_sequences · max_tokens``, the same for every step, so no length bias creeps in.

    Args:
        mode: the aggregation.
        num_tokens: response tokens (sum of the response masks) over the whole step: all
            micro-batches, and all ranks under data parallelism. May stay a device tensor.
        num_sequences: sequences in the whole step.
        max_tokens: the constant of ``constant`` (e.g. the generation's max new tokens).

    Returns:
        The normalizer (a tensor if `num_tokens` is one and the mode uses it).
    """
    match mode:
        case "token":
            return num_tokens
        case "sequence":
            return num_sequences
        case "constant":
            if max_tokens is None:
                raise ValueError("the 'constant' aggregation needs max_tokens")
            return num_sequences * max_tokens
        case _:
            raise ValueError(f"unknown aggregation {mode!r}")


def aggregate(per_token: Tensor, mask: Tensor, mode: Aggregation, *, normalizer: Tensor | float) -> Tensor:
    """Reduce a per-token loss to this micro-batch's share of the step's scalar loss.

    - ``token``: ``Σ_{b,t} m·ℓ / N_tokens``
    - ``sequence``: ``Σ_b (Σ_t m·ℓ / Σ_t m) / N_sequences`` (an empty row contributes 0)
    - ``constant``: ``Σ_{b,t} m·ℓ / (N_sequences · max_tokens)``

    With `normalizer` from `loss_normalizer` for the whole step, the shares of all micro-batches
    add up to the step's loss (see the module docstring).

    Args:
        per_token: (B, A) loss of each token.
        mask: (B, A) 1 on response tokens.
        mode: ``"token"``, ``"sequence"`` or ``"constant"``.
        normalizer: from `loss_normalizer`, for the whole step.

    Returns:
        A scalar tensor.
    """
    m = mask.to(per_token.dtype)  # (B, A)
    match mode:
        case "token" | "constant":
            return (per_token * m).sum() / normalizer
        case "sequence":
            per_sequence = (per_token * m).sum(dim=1) / m.sum(dim=1).clamp(min=1)  # (B,)
            return per_sequence.sum() / normalizer
        case _:
            raise ValueError(f"unknown aggregation {mode!r}")


def sequence_log_ratio(logp: Tensor, logp_old: Tensor, mask: Tensor) -> Tensor:
    """GSPO's sequence-level log importance ratio, on every token, with GSPO-token's gradient.

    ``log s_i = (1/|y_i|)·Σ_t (log π − log π_old)_{i,t}``, the length-normalised log-ratio of the
    whole completion (Zheng et al. 2025, GSPO, eq. 7, https://arxiv.org/abs/2507.18071). Each token
    gets ``log s_{i,t} = sg[log s_i] + log π_{i,t} − sg[log π_{i,t}]`` (GSPO-token, eq. 13): its value
    is log s_i, so the clip acts on the sequence's ratio, and ``∇ s_{i,t} = s_i·∇ log π_{i,t}``, so a
    per-token advantage (REINFORCE++) weights its own token. With one advantage per completion and
    ``sequence`` aggregation this is GSPO's objective, and the values and gradients equal TRL's
    ``importance_sampling_level="sequence"`` (which broadcasts exp(log s_i) without the trick).

    Args:
        logp: (B, A) log-probs of the response tokens under the policy being trained.
        logp_old: (B, A) the same under the rollout policy (no gradient).
        mask: (B, A) 1 on response tokens.

    Returns:
        (B, A) the log-ratio of each token, log s_i in value (0 for an empty row).
    """
    real = mask.to(logp.dtype)  # (B, A)
    per_sequence = ((logp - logp_old) * real).sum(dim=1) / real.sum(dim=1).clamp(min=1)  # (B,)
    return per_sequence.detach().unsqueeze(1) + logp - logp.detach()  # (B, A)


@dataclass
class PolicyLoss:
    """What `clipped_policy_loss` returns.

    Attributes:
        loss: () the aggregated loss, differentiable.
        clip_frac: () detached, fraction of this micro-batch's tokens whose clipped term was
            chosen (no gradient flows through them): ``policy/clipfrac``.
        approx_kl: () detached, mean k3 estimate of KL(π_old ‖ π) over the micro-batch's tokens:
            ``policy/approx_kl``.
    """

    loss: Tensor
    clip_frac: Tensor
    approx_kl: Tensor


def clipped_policy_loss(
    logp: Tensor,
    logp_old: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    eps_low: float,
    eps_high: float,
    aggregation: Aggregation,
    normalizer: Tensor | float,
    max_log_ratio: float = 20.0,
    importance_sampling_level: ImportanceSamplingLevel = "token",
    token_weights: Tensor | None = None,
) -> PolicyLoss:
    """PPO's clipped surrogate (Schulman et al. 2017, eq. 7, https://arxiv.org/abs/1707.06347).

    ``ρ = exp(clamp(log π − log π_old, ±max_log_ratio))`` per token (``importance_sampling_level``
    ``token``), or GSPO's sequence ratio on every token of the completion (``sequence``, see
    `sequence_log_ratio`), so the clip keeps or drops whole completions;
    ``ℓ_t = −min(ρ·A, clip(ρ, 1 − ε_low, 1 + ε_high)·A)``, aggregated by `aggregate`.
    ε_low = ε_high is PPO; ε_high > ε_low is DAPO's clip-higher (Yu et al. 2025, §3.1). The clamp
    only guards exp against overflow on a token whose probability collapsed; at ±20 it never
    changes a ratio the clip keeps. GRPO's KL term is linear in the aggregation, so it is added
    by the caller: ``loss + β·aggregate(kl_k3(logp, ref_logp), mask, mode, normalizer=n)``.

    `approx_kl` is k3 of the token ratio at either level, ``(ρ − 1) − log ρ`` (Schulman's low-variance, never negative
    estimator of KL(π_old ‖ π) from tokens sampled by π_old; cleanrl logs the same).

    Args:
        logp: (B, A) log-probs of the response tokens under the policy being trained.
        logp_old: (B, A) the same under the rollout policy (no gradient).
        advantages: (B, A), or (B, 1) for one advantage per sequence (GRPO).
        mask: (B, A) 1 on response tokens.
        eps_low: ε_low, the ratio's lower clip is 1 − ε_low.
        eps_high: ε_high, the upper clip is 1 + ε_high.
        aggregation: see `aggregate`.
        normalizer: from `loss_normalizer`, for the whole step.
        max_log_ratio: bound of the log-ratio before exponentiating.
        importance_sampling_level: ``token`` (PPO, GRPO) or ``sequence`` (GSPO).
        token_weights: (B, A) a detached factor on each token's term, or None: the truncated
            importance weights of `truncated_importance_weights` (``tis_cap``).

    Returns:
        The loss, clip fraction and approximate KL.
    """
    logp_old = logp_old.detach()
    match importance_sampling_level:
        case "token":
            log_ratio = logp - logp_old  # (B, A)
        case "sequence":
            log_ratio = sequence_log_ratio(logp, logp_old, mask)  # (B, A) log s_i on each token
        case _:
            raise ValueError(f"unknown importance sampling level {importance_sampling_level!r}")
    ratio = torch.exp(log_ratio.clamp(-max_log_ratio, max_log_ratio))  # (B, A)
    advantages = advantages.detach()
    unclipped = -ratio * advantages  # (B, A)
    clipped = -ratio.clamp(1 - eps_low, 1 + eps_high) * advantages  # (B, A)
    per_token = torch.maximum(unclipped, clipped)  # (B, A) −min(ρA, clip(ρ)A)
    if token_weights is not None:
        per_token = per_token * token_weights.detach()  # (B, A)
    loss = aggregate(per_token, mask, aggregation, normalizer=normalizer)
    with torch.no_grad():
        real = mask.to(torch.float32)  # (B, A)
        n = real.sum().clamp(min=1)
        clip_frac = ((clipped > unclipped).float() * real).sum() / n
        token_log_ratio = (logp - logp_old).clamp(-max_log_ratio, max_log_ratio)  # (B, A)
        approx_kl = ((torch.exp(token_log_ratio) - 1 - token_log_ratio) * real).sum() / n
    return PolicyLoss(loss=loss, clip_frac=clip_frac, approx_kl=approx_kl)


@dataclass
class ImportanceWeights:
    """What `truncated_importance_weights` returns.

    Attributes:
        weights: (B, A) detached ``min(exp(log π_old − log π_engine), cap)``, 1 on padding.
        mean: () the mean weight over the micro-batch's tokens: ``policy/tis_weight_mean``.
        clip_frac: () the share of its tokens whose weight was capped: ``policy/tis_clipfrac``.
    """

    weights: Tensor
    mean: Tensor
    clip_frac: Tensor


@torch.no_grad()
def truncated_importance_weights(logp_old: Tensor, logp_engine: Tensor, mask: Tensor, cap: float) -> ImportanceWeights:
    """Truncated importance sampling (TIS) weights for a rollout sampled by another engine.

    ``w_t = min(π_old(y_t) / π_engine(y_t), C) = exp(min(log π_old − log π_engine, log C))``, where
    π_engine is the distribution the engine actually sampled from (vLLM's kernels, in another
    precision) and π_old the trainer's own rollout policy: multiplying each token's policy-gradient
    term by w_t corrects the gradient for the mismatch, and the cap C bounds its variance (Yao et al.
    2025, "Your efficient RL framework secretly brings you off-policy RL training",
    https://fengyao.notion.site/off-policy-rl; verl's ``tis_imp_ratio_cap``). The weights carry no
    gradient.

    Args:
        logp_old: (B, A) log π_old of the response tokens, computed by the trainer.
        logp_engine: (B, A) their log-probs as the engine sampled them (``Rollout.logprobs``).
        mask: (B, A) 1 on response tokens.
        cap: C ≥ 1.

    Returns:
        The weights and their mean and capped share over the response tokens.
    """
    real = mask.to(torch.float32)  # (B, A)
    log_ratio = (logp_old.float() - logp_engine.float()) * real  # (B, A) 0 on padding
    weights = torch.exp(log_ratio.clamp(max=math.log(cap)))  # (B, A)
    n = real.sum().clamp(min=1)
    return ImportanceWeights(
        weights=weights,
        mean=(weights * real).sum() / n,
        clip_frac=((log_ratio > math.log(cap)).float() * real).sum() / n,
    )


@dataclass
class ValueLoss:
    """What `clipped_value_loss` returns.

    Attributes:
        loss: () the aggregated value loss, differentiable.
        clip_frac: () detached, fraction of this micro-batch's tokens where the clipped error was
            the larger: ``val/clipfrac``.
    """

    loss: Tensor
    clip_frac: Tensor


def clipped_value_loss(
    values: Tensor,
    values_old: Tensor,
    returns: Tensor,
    mask: Tensor,
    *,
    eps_v: float,
    aggregation: Aggregation,
    normalizer: Tensor | float,
) -> ValueLoss:
    """PPO's clipped value loss (as in OpenAI baselines' ppo2 and Ziegler et al. 2019's code).

    ``ℓ_t = ½·max((V − G)², (V_old + clip(V − V_old, −ε_v, ε_v) − G)²)``, aggregated by `aggregate`.
    Taking the max keeps the value function from moving more than ε_v per rollout where that
    would reduce the error (the pessimistic bound, as the policy's clip does).
    https://github.com/openai/baselines/blob/master/baselines/ppo2/model.py

    Args:
        values: (B, A) predictions of the value head being trained.
        values_old: (B, A) its predictions at rollout time (no gradient).
        returns: (B, A) targets G (from `gae`).
        mask: (B, A) 1 on response tokens.
        eps_v: ε_v, how far a prediction may move from `values_old` and still lower the loss.
        aggregation: see `aggregate`.
        normalizer: from `loss_normalizer`, for the whole step.

    Returns:
        The loss and the clip fraction.
    """
    values_old, returns = values_old.detach(), returns.detach()
    clipped_values = values_old + (values - values_old).clamp(-eps_v, eps_v)  # (B, A)
    error = (values - returns) ** 2  # (B, A)
    clipped_error = (clipped_values - returns) ** 2  # (B, A)
    per_token = 0.5 * torch.maximum(error, clipped_error)  # (B, A)
    loss = aggregate(per_token, mask, aggregation, normalizer=normalizer)
    with torch.no_grad():
        real = mask.to(torch.float32)  # (B, A)
        clip_frac = ((clipped_error > error).float() * real).sum() / real.sum().clamp(min=1)
    return ValueLoss(loss=loss, clip_frac=clip_frac)


def entropy_from_logits(logits: Tensor, chunk_size: int = 64) -> Tensor:
    """Entropy of the categorical distribution at each position: ``H = logsumexp(z) − Σ_v softmax(z)_v·z_v``.

    The identity avoids a (…, V) log-softmax; rows are processed `chunk_size` at a time in float32,
    so the extra memory is a chunk, not a second copy of the logits. For ``policy/entropy``: pass
    the temperature-scaled logits the samples were drawn from, under ``torch.no_grad()``.

    Args:
        logits: (..., V) unnormalised scores (e.g. (B, A, V)).
        chunk_size: rows of the flattened leading dimensions per chunk.

    Returns:
        (...) float32 entropies in nats.
    """
    flat = logits.reshape(-1, logits.shape[-1])  # (N, V)
    out = []
    for chunk in flat.split(chunk_size):
        z = chunk.float()  # (n, V)
        probs = torch.softmax(z, dim=-1)  # (n, V)
        # A −inf logit (a masked-out token) has probability 0 and adds 0, not 0·(−inf) = NaN.
        expected = torch.where(probs > 0, probs * z, 0.0).sum(dim=-1)  # (n,)
        out.append(torch.logsumexp(z, dim=-1) - expected)  # (n,)
    return torch.cat(out).reshape(logits.shape[:-1])
