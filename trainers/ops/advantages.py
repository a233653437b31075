"""Advantages for PPO and GRPO, and the masked statistics they need (DESIGN §7), as pure tensor functions.

Shapes: B rows (sequences or trajectory segments), A response tokens (or time steps), G group size.
A mask is 1 on the tokens that carry a reward and a value (the response, EOS included) and 0 on
padding; every function here ignores what lies under a 0 of the mask.
"""

from __future__ import annotations

import torch
from torch import Tensor


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of `x` over the entries where `mask` is 1: ``Σ x·m / Σ m``.

    Args:
        x: (...) values.
        mask: (...) 0/1 (or bool) of the same shape.
        dim: reduce over this dimension only; over everything when None.

    Returns:
        A scalar, or `x` reduced over `dim`. An all-zero mask gives NaN (0/0), as the mean of
        nothing is undefined; callers that may see one must guard it.
    """
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum()
    return (x * mask).sum(dim) / mask.sum(dim)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance of `x` over the entries where `mask` is 1.

    ``var = Σ m·(x − μ)² / (n − 1)`` with ``μ = masked_mean(x, m)`` and ``n = Σ m``
    (``/ n`` when `unbiased` is False). Bessel's correction matches TRL's `masked_var`.

    Args:
        x: (...) values.
        mask: (...) 0/1 of the same shape.
        unbiased: divide by n − 1 instead of n.

    Returns:
        A scalar tensor.

    Raises:
        ValueError: `unbiased` with fewer than two entries under the mask (the check reads the
            count on the host: one synchronisation per call).
    """
    mean = masked_mean(x, mask)
    mask = mask.to(x.dtype)
    n = mask.sum()
    if unbiased and n.item() < 2:
        raise ValueError("the unbiased variance needs at least two entries under the mask")
    sum_sq = ((x - mean) ** 2 * mask).sum()
    return sum_sq / (n - 1) if unbiased else sum_sq / n


def whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """Standardise `x` with the mean and (unbiased) variance of its masked entries.

    ``y = (x − μ) / sqrt(σ² + eps)``, and ``y + μ`` when `shift_mean` is False (rewards keep their
    mean so that their sign still means something; advantages are centred). Statistics are over
    all masked entries of the batch, as in TRL's `masked_whiten` and OpenRLHF. Entries outside the
    mask come out as 0.

    Args:
        x: (B, A) values, e.g. advantages.
        mask: (B, A) 1 on the entries to use.
        shift_mean: subtract the mean (True) or keep it (False).
        eps: added to the variance so a constant input does not divide by zero.

    Returns:
        (B, A) whitened values, 0 where `mask` is 0.
    """
    mean = masked_mean(x, mask)
    var = masked_var(x, mask, unbiased=True)
    y = (x - mean) * torch.rsqrt(var + eps)  # (B, A)
    if not shift_mean:
        y = y + mean
    return y * mask.to(y.dtype)


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """Generalised Advantage Estimation over masked token sequences (Schulman et al. 2016, eq. 16).

    For the masked-in positions t₀ < t₁ < … < t_{n−1} of a row, with ``V(t_n) = 0``:
    ``δ_k = r_{t_k} + γ·V_{t_{k+1}} − V_{t_k}``, ``A_{t_k} = Σ_l (γλ)^l δ_{k+l}``, returns ``G = A + V``.
    Padding carries no reward and no value and is skipped: the value after a row's last real token
    is 0 (a response ends at EOS or the length limit; a bootstrap value, when one is wanted, goes
    into the last reward as ``r + γ·V_next``). With right padding this is TRL's and OpenRLHF's
    recursion; positions under a 0 in the middle of a row (e.g. tool output in a conversation) are
    skipped rather than treated as steps. The scan runs backwards over the A positions, vectorised
    over the batch. No gradient flows through it.
    https://arxiv.org/abs/1506.02438

    Args:
        rewards: (B, A) reward of each position (for PPO: the KL penalty, plus the score at the
            last real token).
        values: (B, A) value estimate V of each position under the policy that produced the rollout.
        mask: (B, A) 1 on real positions, 0 on padding.
        gamma: γ, discount per step (1.0 for language models).
        lam: λ, the bias-variance trade-off of the estimator (0.95 in DESIGN §7).

    Returns:
        advantages: (B, A) float, 0 on padding.
        returns: (B, A) ``advantages + values``, 0 on padding: the value targets.
    """
    with torch.no_grad():
        rewards, values = rewards.float(), values.float()
        real = mask.bool()  # (B, A)
        B, A = rewards.shape
        next_value = rewards.new_zeros(B)  # (B,) V of the next real position; 0 after the last
        next_advantage = rewards.new_zeros(B)  # (B,) A of the next real position
        advantages = torch.zeros_like(rewards)  # (B, A)
        for t in reversed(range(A)):
            delta = rewards[:, t] + gamma * next_value - values[:, t]  # (B,)
            advantage = delta + gamma * lam * next_advantage  # (B,)
            # A padded position leaves the carried "next" state untouched, so it is skipped.
            next_value = torch.where(real[:, t], values[:, t], next_value)
            next_advantage = torch.where(real[:, t], advantage, next_advantage)
            advantages[:, t] = torch.where(real[:, t], advantage, 0.0)
        returns = (advantages + values) * real  # (B, A)
    return advantages, returns


def group_advantages(
    rewards: Tensor, group_size: int, scale_std: bool = True, eps: float = 1e-4
) -> tuple[Tensor, Tensor]:
    """Group-relative advantages of GRPO: each completion against the others for its prompt.

    ``Â_i = (r_i − mean_G r) / (std_G r + eps)`` (Shao et al. 2024, DeepSeekMath §4.1.2,
    https://arxiv.org/abs/2402.03300), std being the unbiased standard deviation of the group.
    With `scale_std` False, ``Â_i = r_i − mean_G r``: Dr. GRPO (Liu et al. 2025, §3.1,
    https://arxiv.org/abs/2503.20783), which drops the division because it up-weights prompts that
    are too easy or too hard. Every token of completion i gets Â_i.

    Args:
        rewards: (B,) one scalar reward per completion, B = number of prompts × G, the G
            completions of each prompt consecutive.
        group_size: G ≥ 2, completions per prompt.
        scale_std: divide by the group's standard deviation (GRPO) or not (Dr. GRPO).
        eps: added to the standard deviation; keeps a group of equal rewards at Â = 0.

    Returns:
        advantages: (B,) float32.
        group_std: (B / G,) each group's standard deviation, whatever `scale_std` says; a group
            with std 0 teaches nothing (its metric is ``frac_reward_zero_std = (group_std == 0).mean()``).

    Raises:
        ValueError: G < 2, or B is not a multiple of G.
    """
    if group_size < 2:
        raise ValueError(f"group_size must be at least 2 to compare completions, got {group_size}")
    if rewards.dim() != 1 or rewards.shape[0] % group_size:
        raise ValueError(
            f"rewards must be (B,) with B a multiple of group_size {group_size}, got {tuple(rewards.shape)}"
        )
    grouped = rewards.float().view(-1, group_size)  # (B/G, G)
    mean = grouped.mean(dim=1, keepdim=True)  # (B/G, 1)
    std = grouped.std(dim=1, keepdim=True)  # (B/G, 1) unbiased
    advantages = grouped - mean  # (B/G, G)
    if scale_std:
        advantages = advantages / (std + eps)
    return advantages.view(-1), std.view(-1)


def rloo_advantages(rewards: Tensor, group_size: int) -> Tensor:
    """Leave-one-out advantages of RLOO: each completion against the mean of the other G − 1.

    ``Â_i = r_i − (1/(G−1))·Σ_{j≠i} r_j = G/(G−1)·(r_i − mean_G r)`` (Ahmadian et al. 2024, "Back to
    Basics", eq. 9, https://arxiv.org/abs/2402.14740; Kool et al. 2019). The baseline of sample i does
    not depend on sample i, so the estimator stays unbiased; no division by a std (the paper's and
    TRL's default; TRL's ``normalize_advantages`` is a separate, optional batch standardisation).
    Every token of completion i gets Â_i.

    Args:
        rewards: (B,) one scalar reward per completion (for RLOO with a KL penalty, the score minus
            β times the completion's summed KL), the G completions of each prompt consecutive.
        group_size: G ≥ 2, completions per prompt.

    Returns:
        (B,) float32 advantages, summing to 0 over each group.

    Raises:
        ValueError: G < 2, or B is not a multiple of G.
    """
    if group_size < 2:
        raise ValueError(f"group_size must be at least 2 for a leave-one-out baseline, got {group_size}")
    if rewards.dim() != 1 or rewards.shape[0] % group_size:
        raise ValueError(
            f"rewards must be (B,) with B a multiple of group_size {group_size}, got {tuple(rewards.shape)}"
        )
    grouped = rewards.float().view(-1, group_size)  # (B/G, G)
    baseline = (grouped.sum(dim=1, keepdim=True) - grouped) / (group_size - 1)  # (B/G, G) mean of the others
    return (grouped - baseline).view(-1)  # (B,)


def standardize(advantages: Tensor, eps: float = 1e-4) -> Tensor:
    """Advantages standardised over the batch: ``(Â − mean Â) / (std Â + eps)``, std unbiased.

    TRL's RLOO ``normalize_advantages`` (eps 1e-4), over all completions of the rollout.

    Args:
        advantages: (B,) one advantage per completion, B ≥ 2.
        eps: added to the std, so equal advantages stay at 0.

    Returns:
        (B,) float32.
    """
    advantages = advantages.float()
    return (advantages - advantages.mean()) / (advantages.std() + eps)


def reward_to_go(rewards: Tensor, mask: Tensor) -> Tensor:
    """Undiscounted return from each token on: ``G_t = Σ_{t' ≥ t} m_{t'}·r_{t'}`` (γ = 1).

    Args:
        rewards: (B, A) per-token rewards.
        mask: (B, A) 1 on response tokens; padding adds nothing and gets 0.

    Returns:
        (B, A) float32 returns, 0 on padding.
    """
    real = mask.to(torch.float32)  # (B, A)
    kept = rewards.float() * real  # (B, A)
    return kept.flip(1).cumsum(1).flip(1) * real  # (B, A)


def reinforce_pp_advantages(rewards: Tensor, mask: Tensor) -> Tensor:
    """REINFORCE++ advantages: the reward-to-go, standardised over every token of the batch.

    ``G_t = Σ_{t' ≥ t} r_{t'}`` with the per-token rewards ``r_t = −β·(log π_old − log π_ref)_t``
    plus the score at the last token (`trainers.ops.kl.kl_penalized_rewards`), then
    ``Â_t = (G_t − mean) / sqrt(var + 1e-8)`` with the mean and variance of all response tokens of
    the batch (`whiten`): the global-batch normalisation of REINFORCE++ (Hu 2025, §3,
    https://arxiv.org/abs/2501.03262), plain REINFORCE++ as OpenRLHF's ``reinforce`` estimator, not
    its group-mean ``reinforce_baseline`` variant. No critic and no per-prompt baseline. The
    variance is unbiased (Bessel), as `whiten` and TRL; OpenRLHF divides by n, which differs by
    n/(n − 1) over thousands of tokens. A batch of one token gets 0, its returns centred.

    Args:
        rewards: (B, A) per-token rewards, 0 on padding.
        mask: (B, A) 1 on response tokens. The batch is the whole rollout, which every rank holds,
            so the statistics are global without a collective.

    Returns:
        (B, A) float32 advantages, 0 on padding.
    """
    returns = reward_to_go(rewards, mask)  # (B, A)
    if int(mask.sum()) < 2:  # one token (or none): centred, it is 0
        return torch.zeros_like(returns)
    return whiten(returns, mask)  # (B, A)


def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> Tensor:
    """How much of the returns' variance the value head explains: ``1 − Var(G − V) / Var(G)``.

    1 is perfect, 0 is no better than a constant, negative is worse (the `val/explained_variance`
    metric; cleanrl logs the same). Variances are over the masked entries.

    Args:
        values: (B, A) predicted values.
        returns: (B, A) value targets.
        mask: (B, A) 1 on real positions.

    Returns:
        A scalar tensor; NaN when the returns are constant.
    """
    var_returns = masked_var(returns.float(), mask, unbiased=False)
    return 1 - masked_var(returns.float() - values.float(), mask, unbiased=False) / var_returns
