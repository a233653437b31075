"""Preference losses as pure functions of sequence log-probabilities and rewards.

DPO's family compares the policy with a reference; SimPO and ORPO are reference-free, on
length-normalised (per-token mean) log-probs. Shapes: B pairs.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor


def dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    beta: float,
    loss_type: Literal["sigmoid", "ipo", "hinge"],
    label_smoothing: float = 0.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """Direct Preference Optimization loss per pair, and its variants.

    ``h = (log π(y_w|x) − log π_ref(y_w|x)) − (log π(y_l|x) − log π_ref(y_l|x))``

    - ``sigmoid``: ``−(1−ε)·log σ(β·h) − ε·log σ(−β·h)``. With ε = 0 it is DPO's loss (Rafailov
      et al. 2023, eq. 7, https://arxiv.org/abs/2305.18290); ε > 0 is conservative DPO (cDPO,
      Mitchell 2023), which treats each label as flipped with probability ε.
    - ``ipo``: ``(h − 1/(2β))²`` (Azar et al. 2023, eq. 17, https://arxiv.org/abs/2310.12036).
      IPO's h compares length-AVERAGED log-probs: pass ``Σ_t log π(y_t) / |y|`` for all four inputs.
    - ``hinge``: ``max(0, 1 − β·h)`` (SLiC, Zhao et al. 2023, https://arxiv.org/abs/2305.10425).

    The implicit rewards are ``r_w = β·(log π(y_w|x) − log π_ref(y_w|x))`` and likewise ``r_l``.

    Args:
        policy_chosen_logps: (B,) response log-probs of the chosen responses under π (summed
            over tokens; averaged for ``ipo``).
        policy_rejected_logps: (B,) the same for the rejected responses.
        ref_chosen_logps: (B,) chosen responses under the frozen reference π_ref.
        ref_rejected_logps: (B,) rejected responses under π_ref.
        beta: β, the strength of the implicit KL penalty (for ``ipo``: h is pulled towards 1/(2β)).
        loss_type: ``"sigmoid"``, ``"ipo"`` or ``"hinge"``.
        label_smoothing: ε of cDPO, in [0, 0.5); ``sigmoid`` only.

    Returns:
        losses: (B,) loss per pair (differentiable w.r.t. the policy log-probs).
        chosen_rewards: (B,) detached implicit rewards of the chosen responses.
        rejected_rewards: (B,) detached implicit rewards of the rejected responses.
    """
    chosen_logratios = policy_chosen_logps - ref_chosen_logps  # (B,)
    rejected_logratios = policy_rejected_logps - ref_rejected_logps  # (B,)
    h = chosen_logratios - rejected_logratios  # (B,)
    if label_smoothing and loss_type != "sigmoid":
        raise ValueError(f"label_smoothing applies to the 'sigmoid' loss only, not {loss_type!r}")
    match loss_type:
        case "sigmoid":
            # ε = 0 leaves the second term at exactly 0, so plain DPO is computed bit for bit.
            losses = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
        case "ipo":
            losses = (h - 1 / (2 * beta)) ** 2  # (B,)
        case "hinge":
            losses = F.relu(1 - beta * h)  # (B,)
        case _:
            raise ValueError(f"unknown DPO loss type {loss_type!r}")
    chosen_rewards = beta * chosen_logratios.detach()  # (B,)
    rejected_rewards = beta * rejected_logratios.detach()  # (B,)
    return losses, chosen_rewards, rejected_rewards


def simpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    beta: float,
    gamma: float,
    label_smoothing: float = 0.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """Simple Preference Optimization loss per pair (Meng et al. 2024, eq. 6, https://arxiv.org/abs/2405.14734).

    ``z = β·log π(y_w|x)/|y_w| − β·log π(y_l|x)/|y_l| − γ``, ``loss = −(1−ε)·log σ(z) − ε·log σ(−z)``.
    The implicit reward is the length-normalised log-prob ``r = β·log π(y|x)/|y|``, with no
    reference model; γ is a target margin between the rewards. ε > 0 smooths the labels as cDPO
    does (0 in the paper), as TRL's ``CPOTrainer(loss_type="simpo")`` allows.

    Args:
        policy_chosen_logps: (B,) length-normalised log-probs ``log π(y_w|x)/|y_w|`` of the chosen responses.
        policy_rejected_logps: (B,) the same for the rejected responses.
        beta: β, the scale of the reward (SimPO paper: 2.0 to 2.5).
        gamma: γ, the target reward margin (TRL: 0.5).
        label_smoothing: ε, in [0, 0.5).

    Returns:
        losses: (B,) loss per pair (differentiable w.r.t. the policy log-probs).
        chosen_rewards: (B,) detached rewards ``β·log π(y_w|x)/|y_w|``.
        rejected_rewards: (B,) detached rewards of the rejected responses.
    """
    z = beta * (policy_chosen_logps - policy_rejected_logps) - gamma  # (B,)
    # ε = 0 leaves the second term at exactly 0, so plain SimPO is computed bit for bit.
    losses = -(1 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)  # (B,)
    return losses, beta * policy_chosen_logps.detach(), beta * policy_rejected_logps.detach()


def log1mexp(x: Tensor) -> Tensor:
    """``log(1 − exp(x))`` for x < 0, without cancellation (Mächler 2012, "Accurately computing log(1 − exp(−|a|))").

    ``log(−expm1(x))`` near 0, ``log1p(−exp(x))`` below −ln 2. x is first capped at −1e-7, so a
    probability that rounds to 1 (x = 0 in float32) gives log(1e-7) rather than −inf and NaN gradients.

    Args:
        x: (...) log-probabilities, at most 0.

    Returns:
        (...) ``log(1 − exp(x))``, the log of the complementary probability.
    """
    x = x.clamp(max=-1e-7)
    return torch.where(x < -0.6931471805599453, torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def orpo_loss(
    policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, beta: float
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Odds Ratio Preference Optimization loss per pair (Hong et al. 2024, eqs. 6-7, https://arxiv.org/abs/2403.07691).

    With P(y|x) = exp(log π(y|x)/|y|) the length-normalised likelihood, ``odds(y) = P / (1 − P)`` and
    ``log odds(y) = log P − log(1 − P)``::

        L_SFT = −log π(y_w|x)/|y_w|                      (mean NLL of the chosen response's tokens)
        L_OR  = −log σ(log odds(y_w) − log odds(y_l))
        loss  = L_SFT + λ·L_OR

    No reference model: the SFT term adapts the policy to the chosen responses, the odds-ratio term
    pushes the rejected ones down. Rewards are TRL's ``λ·log π(y|x)/|y|``.

    Args:
        policy_chosen_logps: (B,) length-normalised log-probs ``log π(y_w|x)/|y_w|`` of the chosen responses.
        policy_rejected_logps: (B,) the same for the rejected responses.
        beta: λ, the weight of the odds-ratio term (paper and TRL: 0.1).

    Returns:
        losses: (B,) loss per pair (differentiable w.r.t. the policy log-probs).
        chosen_rewards: (B,) detached ``λ·log π(y_w|x)/|y_w|``.
        rejected_rewards: (B,) detached ``λ·log π(y_l|x)/|y_l|``.
        log_odds: (B,) detached log odds ratio ``log odds(y_w) − log odds(y_l)``.
    """
    log_odds = (policy_chosen_logps - policy_rejected_logps) - (
        log1mexp(policy_chosen_logps) - log1mexp(policy_rejected_logps)
    )  # (B,)
    losses = -policy_chosen_logps - beta * F.logsigmoid(log_odds)  # (B,) L_SFT + λ·L_OR
    return losses, beta * policy_chosen_logps.detach(), beta * policy_rejected_logps.detach(), log_odds.detach()


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
