"""KL estimators, PPO's KL-penalised rewards and the KL coefficient controllers (DESIGN §7).

Per-token estimators of ``KL(π ‖ π_ref)`` from the log-probs of tokens sampled from π (Schulman,
"Approximating KL Divergence", http://joschu.net/blog/kl-approx.html). With ``x = log π_ref − log π``
at a sampled token:

- ``k1 = −x = log π − log π_ref``: unbiased, high variance, negative on some tokens.
- ``k3 = exp(x) − x − 1``: unbiased, lower variance, never negative (GRPO's penalty).

Shapes: B sequences, A response tokens.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def kl_k1(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """Schulman's k1 per token: ``log π − log π_ref``.

    Args:
        logp: (B, A) log-probs of the sampled tokens under π.
        ref_logp: (B, A) the same tokens under π_ref.

    Returns:
        (B, A) per-token estimates; mask them before reducing.
    """
    return logp - ref_logp


def kl_k3(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """Schulman's k3 per token: ``exp(log π_ref − log π) − (log π_ref − log π) − 1``.

    ``exp(x) − 1 ≥ x`` makes every term ≥ 0, and its expectation under π is KL(π ‖ π_ref).
    It is the penalty GRPO adds to its per-token loss (Shao et al. 2024, eq. 4,
    https://arxiv.org/abs/2402.03300).

    Args:
        logp: (B, A) log-probs of the sampled tokens under π (differentiable for GRPO).
        ref_logp: (B, A) the same tokens under π_ref.

    Returns:
        (B, A) per-token estimates, ≥ 0.
    """
    x = ref_logp - logp  # (B, A)
    return torch.exp(x) - x - 1


def last_token_index(mask: Tensor) -> Tensor:
    """Index of each row's last 1 in `mask`: where the response's score lands.

    Args:
        mask: (B, A) 0/1 response mask.

    Returns:
        (B,) long indices; 0 for a row with no 1 at all.
    """
    positions = torch.arange(mask.shape[1], device=mask.device)  # (A,)
    return (positions * mask.long()).argmax(dim=1)  # (B,) the largest masked-in position


def apply_missing_eos_penalty(score: Tensor, ended_with_eos: Tensor, penalty: float) -> Tensor:
    """Subtract `penalty` from the score of every response cut by the length limit (DESIGN §7).

    A truncated response is unfinished; without a penalty a reward model may still rate it well
    and the policy learns to ramble (TRL's `missing_eos_penalty`).

    Args:
        score: (B,) score of each response.
        ended_with_eos: (B,) bool, True where the response ended with EOS.
        penalty: amount subtracted (≥ 0; 0 changes nothing).

    Returns:
        (B,) adjusted scores.
    """
    return score - penalty * (~ended_with_eos).to(score.dtype)


def kl_penalized_rewards(
    score: Tensor, logp_old: Tensor, logp_ref: Tensor, mask: Tensor, beta: float | Tensor
) -> tuple[Tensor, Tensor]:
    """PPO's per-token rewards: a KL penalty on every token, plus the score at the last one.

    ``r_t = −β·(log π_old − log π_ref)_t + [t = last real token]·score`` (Ziegler et al. 2019, eq. 2,
    https://arxiv.org/abs/1909.08593; Ouyang et al. 2022, eq. 2). The penalty uses k1, as the papers,
    TRL and OpenRLHF do: summed over the response it is the sequence's log-ratio, whose expectation
    is the sequence KL.

    Args:
        score: (B,) the reward model's (or graders') score of each response, already clipped,
            normalised or penalised as wanted.
        logp_old: (B, A) log-probs of the response tokens under the rollout policy.
        logp_ref: (B, A) the same tokens under the frozen reference.
        mask: (B, A) 1 on response tokens (EOS included), 0 on padding.
        beta: β, the KL coefficient (a controller's `value`).

    Returns:
        rewards: (B, A) float32, 0 on padding.
        kl: (B, A) float32 per-token k1, 0 on padding (``objective/kl`` = ``kl.sum(1).mean()``).
    """
    real = mask.to(torch.float32)  # (B, A)
    kl = kl_k1(logp_old.float(), logp_ref.float()) * real  # (B, A)
    rewards = -beta * kl  # (B, A)
    last = last_token_index(mask)  # (B,)
    has_token = real.sum(dim=1) > 0  # (B,) an empty response has nowhere to put its score
    bonus = torch.where(has_token, score.float(), 0.0)  # (B,)
    rewards = rewards.scatter_add(1, last.unsqueeze(1), bonus.unsqueeze(1))  # (B, A)
    return rewards, kl


class FixedKLController:
    """A constant KL coefficient β.

    Args:
        kl_coef: β.
    """

    def __init__(self, kl_coef: float):
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        """Nothing to do: β is fixed (the signature matches `AdaptiveKLController.update`)."""

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps: ``{"value": β}``."""
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore β from `state_dict`'s output."""
        self.value = float(state["value"])


class AdaptiveKLController:
    """β steered towards a target KL by proportional control (Ziegler et al. 2019, §2.2).

    ``e = clip(KL / KL_target − 1, −0.2, 0.2)``, ``β ← β·(1 + e·n / horizon)``, where n is the
    number of samples (episodes) the KL was measured on. The clip keeps one noisy measurement from
    moving β by much; the horizon sets how many samples a full 20% correction takes.
    https://arxiv.org/abs/1909.08593

    Args:
        init_kl_coef: β at the start (the paper: 0.1 for its style tasks).
        target: KL_target, the sequence KL (nats) to hold the policy at (the paper: 6 for style).
        horizon: samples over which β adjusts (the paper: 10,000).
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: int):
        if target <= 0 or horizon <= 0:
            raise ValueError(f"target and horizon must be positive, got {target} and {horizon}")
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = int(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        """Adjust β after a batch.

        Args:
            current_kl: the batch's mean sequence KL (``objective/kl``).
            n_steps: samples in the batch.
        """
        error = min(max(current_kl / self.target - 1, -0.2), 0.2)
        self.value *= 1 + error * n_steps / self.horizon

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps: β and the settings it was steered with."""
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore β from `state_dict`'s output; the target and horizon stay those of this run's spec."""
        self.value = float(state["value"])
