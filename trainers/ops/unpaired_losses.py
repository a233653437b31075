"""Losses of unpaired binary feedback (KTO) as pure functions of sequence log-probabilities.

Kahneman-Tversky Optimization (Ethayarajh et al. 2024, https://arxiv.org/abs/2402.01306) learns from
single completions labelled desirable or undesirable. Each completion's implicit reward
``r = log π(y|x) − log π_ref(y|x)`` is compared with a reference point ``z_ref``, an estimate of
``KL(π ‖ π_ref)`` made from mismatched pairs (a prompt with another example's completion), and
the value of a gain or a loss is a sigmoid of the difference (the paper's eq. 7; TRL's
``KTOTrainer.kto_loss``).
"""

from __future__ import annotations

import torch
from torch import Tensor


def kto_reference_point(kl_logratio_sum: Tensor, count: int) -> Tensor:
    """KTO's reference point ``z_ref = max(0, (1/n) Σ_i [log π(y'_i|x_i) − log π_ref(y'_i|x_i)])``, detached.

    The mean log-ratio of mismatched pairs (x_i, y'_i) is a biased but low-variance estimate of
    ``KL(π ‖ π_ref)`` (Ethayarajh et al. 2024, §4.1); it is clamped at 0, as a KL is, and carries no
    gradient (the paper and TRL back-propagate through r only). It is taken as a sum and a count so
    that it can be summed over micro-batches and processes before it is divided once.

    Args:
        kl_logratio_sum: () summed ``log π(y'|x) − log π_ref(y'|x)`` over the n mismatched pairs.
        count: n, the number of mismatched pairs summed (at least 1).

    Returns:
        () detached float32 reference point, ≥ 0.
    """
    return (kl_logratio_sum.detach().float() / count).clamp(min=0)  # ()


def kto_loss(
    policy_logps: Tensor,
    ref_logps: Tensor,
    desirable: Tensor,
    reference_point: Tensor,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """KTO loss per example (Ethayarajh et al. 2024, eq. 7, https://arxiv.org/abs/2402.01306).

    With ``r = log π(y|x) − log π_ref(y|x)`` (summed over the completion's tokens) and the reference
    point ``z_ref`` (`kto_reference_point`):

    - desirable y:   ``λ_D · (1 − σ(β·(r − z_ref)))``
    - undesirable y: ``λ_U · (1 − σ(β·(z_ref − r)))``

    λ_D and λ_U (`desirable_weight`, `undesirable_weight`) balance unequal numbers of desirable and
    undesirable examples; the paper suggests ``λ_D·n_D / (λ_U·n_U) ∈ [1, 4/3]``. The implicit reward
    reported for each example is ``β·r``, as in TRL's ``rewards/chosen`` and ``rewards/rejected``.

    Args:
        policy_logps: (B,) summed completion log-probs under the policy π.
        ref_logps: (B,) the same under the frozen reference π_ref.
        desirable: (B,) bool, True for a desirable completion (label true).
        reference_point: () z_ref, detached.
        beta: β, the strength of the implicit KL penalty (paper and TRL: 0.1).
        desirable_weight: λ_D.
        undesirable_weight: λ_U.

    Returns:
        losses: (B,) weighted loss per example (differentiable w.r.t. `policy_logps`).
        rewards: (B,) detached implicit rewards β·r.
    """
    logratios = policy_logps - ref_logps  # (B,) r
    desirable_losses = desirable_weight * (1 - torch.sigmoid(beta * (logratios - reference_point)))  # (B,)
    undesirable_losses = undesirable_weight * (1 - torch.sigmoid(beta * (reference_point - logratios)))  # (B,)
    losses = torch.where(desirable, desirable_losses, undesirable_losses)  # (B,)
    return losses, beta * logratios.detach()
