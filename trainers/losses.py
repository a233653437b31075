"""Preference losses as pure functions of summed log-probabilities."""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from torch import Tensor


def dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    beta: float,
    loss_type: Literal["sigmoid"],
) -> tuple[Tensor, Tensor, Tensor]:
    """Direct Preference Optimization loss per pair (Rafailov et al. 2023, eq. 7).

    ``h = (log π(y_w|x) − log π_ref(y_w|x)) − (log π(y_l|x) − log π_ref(y_l|x))``
    ``sigmoid: loss = −log σ(β·h) = log(1 + exp(−β·h))``
    The implicit rewards are ``r_w = β·(log π(y_w|x) − log π_ref(y_w|x))`` and likewise ``r_l``.
    https://arxiv.org/abs/2305.18290

    Args:
        policy_chosen_logps: (B,) summed response log-probs of the chosen responses under π.
        policy_rejected_logps: (B,) the same for the rejected responses.
        ref_chosen_logps: (B,) chosen responses under the frozen reference π_ref.
        ref_rejected_logps: (B,) rejected responses under π_ref.
        beta: β, the strength of the implicit KL penalty.
        loss_type: ``"sigmoid"`` (the paper's loss).

    Returns:
        losses: (B,) loss per pair (differentiable w.r.t. the policy log-probs).
        chosen_rewards: (B,) detached implicit rewards of the chosen responses.
        rejected_rewards: (B,) detached implicit rewards of the rejected responses.
    """
    chosen_logratios = policy_chosen_logps - ref_chosen_logps  # (B,)
    rejected_logratios = policy_rejected_logps - ref_rejected_logps  # (B,)
    h = chosen_logratios - rejected_logratios  # (B,)
    match loss_type:
        case "sigmoid":
            losses = -F.logsigmoid(beta * h)  # (B,)
        case _:
            raise ValueError(f"unknown DPO loss type {loss_type!r}")
    chosen_rewards = beta * chosen_logratios.detach()  # (B,)
    rejected_rewards = beta * rejected_logratios.detach()  # (B,)
    return losses, chosen_rewards, rejected_rewards


def bradley_terry_loss(
    chosen_rewards: Tensor,
    rejected_rewards: Tensor,
    margin: Tensor | None = None,
    center_rewards_coefficient: float = 0.0,
) -> Tensor:
    """Pairwise reward-model loss per pair (Bradley & Terry 1952; Ouyang et al. 2022, eq. 1).

    ``loss = −log σ(r_c − r_r − m) + η·(r_c + r_r)²``
    The margin m (Touvron et al. 2023, §3.2.2) asks for a larger gap on clearer preferences; the
    centring term η (Eisenstein et al. 2023) keeps rewards near zero, as their scale is free.
    https://arxiv.org/abs/2203.02155

    Args:
        chosen_rewards: (B,) scalar rewards of the chosen responses.
        rejected_rewards: (B,) scalar rewards of the rejected responses.
        margin: (B,) optional per-pair margin m; zero when None.
        center_rewards_coefficient: η; 0 turns the centring term off.

    Returns:
        (B,) loss per pair, differentiable w.r.t. both rewards.
    """
    diff = chosen_rewards - rejected_rewards  # (B,)
    if margin is not None:
        diff = diff - margin
    losses = -F.logsigmoid(diff)  # (B,)
    if center_rewards_coefficient:
        losses = losses + center_rewards_coefficient * (chosen_rewards + rejected_rewards) ** 2
    return losses
