"""SimPO's and ORPO's losses (reference-free, on length-normalised log-probs) against hand values and naive loops."""

import math

import pytest
import torch

from trainers.ops.pairwise_losses import log1mexp, orpo_loss, simpo_loss


def _naive_simpo(chosen, rejected, beta, gamma, eps):
    losses = []
    for c, r in zip(chosen, rejected, strict=True):
        z = beta * c - beta * r - gamma
        losses.append(-(1 - eps) * math.log(1 / (1 + math.exp(-z))) - eps * math.log(1 / (1 + math.exp(z))))
    return losses


def _naive_orpo(chosen, rejected, lam):
    losses, log_odds = [], []
    for c, r in zip(chosen, rejected, strict=True):
        p_c, p_r = math.exp(c), math.exp(r)
        ratio = math.log(p_c / (1 - p_c)) - math.log(p_r / (1 - p_r))
        losses.append(-c + lam * math.log(1 + math.exp(-ratio)))
        log_odds.append(ratio)
    return losses, log_odds


def test_simpo_loss_and_rewards_by_hand():
    # β = 2, γ = 0.5. pair 0: z = 2·(−1 + 1.5) − 0.5 = 0.5; pair 1: z = 2·(−2 + 1) − 0.5 = −2.5
    chosen, rejected = torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -1.0])
    losses, chosen_rewards, rejected_rewards = simpo_loss(chosen, rejected, beta=2.0, gamma=0.5)
    assert losses.tolist() == pytest.approx([math.log(1 + math.exp(-0.5)), math.log(1 + math.exp(2.5))], abs=1e-6)
    assert losses.tolist() == pytest.approx([0.474077, 2.578889], abs=1e-6)
    assert chosen_rewards.tolist() == [-2.0, -4.0] and rejected_rewards.tolist() == [-3.0, -2.0]


@pytest.mark.parametrize("beta, gamma, eps", [(2.0, 0.5, 0.0), (2.5, 1.4, 0.0), (0.7, 0.0, 0.2)])
def test_simpo_loss_equals_a_naive_loop(beta, gamma, eps):
    generator = torch.Generator().manual_seed(0)
    chosen = -torch.rand(16, generator=generator, dtype=torch.float64) * 3  # (B,) mean log-probs
    rejected = -torch.rand(16, generator=generator, dtype=torch.float64) * 3
    losses, _, _ = simpo_loss(chosen, rejected, beta, gamma, eps)
    assert losses.tolist() == pytest.approx(_naive_simpo(chosen.tolist(), rejected.tolist(), beta, gamma, eps),
                                            abs=1e-12)  # fmt: skip


def test_simpo_gradient_by_hand_and_rewards_detached():
    chosen = torch.tensor([-1.0], requires_grad=True)
    rejected = torch.tensor([-1.5], requires_grad=True)
    losses, chosen_rewards, rejected_rewards = simpo_loss(chosen, rejected, beta=2.0, gamma=0.5)
    losses.sum().backward()
    # d/dc −log σ(z) = −β·σ(−z) with z = 0.5: −2·0.377541
    assert chosen.grad.item() == pytest.approx(-0.755081, abs=1e-6)
    assert rejected.grad.item() == pytest.approx(0.755081, abs=1e-6)
    assert not chosen_rewards.requires_grad and not rejected_rewards.requires_grad


def test_simpo_margin_gamma_asks_for_a_reward_gap():
    # Equal rewards: γ = 0 gives log 2, γ > 0 a larger loss: the margin is not yet met.
    x = torch.tensor([-1.0, -3.0])
    assert simpo_loss(x, x, 2.0, 0.0)[0].tolist() == pytest.approx([math.log(2)] * 2)
    assert simpo_loss(x, x, 2.0, 1.0)[0].tolist() == pytest.approx([math.log(1 + math.e)] * 2)


def test_orpo_loss_by_hand():
    # P(y_w) = 0.5: odds 1, log odds 0, NLL log 2. P(y_l) = 0.2: odds 0.25. Log odds ratio log 4,
    # L_OR = log(1 + 1/4) = log 1.25. λ = 0.1: loss = log 2 + 0.1·log 1.25.
    chosen, rejected = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.2)])
    losses, chosen_rewards, rejected_rewards, log_odds = orpo_loss(chosen, rejected, beta=0.1)
    assert losses.item() == pytest.approx(math.log(2) + 0.1 * math.log(1.25), abs=1e-6)
    assert losses.item() == pytest.approx(0.715461, abs=1e-6)
    assert log_odds.item() == pytest.approx(math.log(4), abs=1e-6)
    assert chosen_rewards.item() == pytest.approx(0.1 * math.log(0.5))
    assert rejected_rewards.item() == pytest.approx(0.1 * math.log(0.2))


@pytest.mark.parametrize("lam", [0.1, 1.0])
def test_orpo_loss_equals_a_naive_loop(lam):
    generator = torch.Generator().manual_seed(1)
    chosen = -torch.rand(16, generator=generator, dtype=torch.float64) * 4 - 1e-3  # (B,) mean log-probs
    rejected = -torch.rand(16, generator=generator, dtype=torch.float64) * 4 - 1e-3
    losses, _, _, log_odds = orpo_loss(chosen, rejected, lam)
    expected_losses, expected_odds = _naive_orpo(chosen.tolist(), rejected.tolist(), lam)
    assert losses.tolist() == pytest.approx(expected_losses, abs=1e-10)
    assert log_odds.tolist() == pytest.approx(expected_odds, abs=1e-10)


def test_orpo_gradient_by_hand():
    chosen = torch.tensor([math.log(0.5)], requires_grad=True)
    rejected = torch.tensor([math.log(0.2)], requires_grad=True)
    orpo_loss(chosen, rejected, beta=0.1)[0].sum().backward()
    # ∂ log odds/∂c = 1/(1 − P_w) = 2, ∂/∂r = −1/(1 − P_l) = −1.25, 1 − σ(log 4) = 0.2:
    # ∂loss/∂c = −1 − 0.1·0.2·2 = −1.04; ∂loss/∂r = 0.1·0.2·1.25 = 0.025
    assert chosen.grad.item() == pytest.approx(-1.04, abs=1e-6)
    assert rejected.grad.item() == pytest.approx(0.025, abs=1e-6)


def test_log1mexp_is_accurate_on_both_sides_of_its_branch_and_finite_at_zero():
    xs = [-1e-6, -1e-3, -0.5, -0.6931, -0.6932, -2.0, -30.0]
    got = log1mexp(torch.tensor(xs, dtype=torch.float64)).tolist()
    assert got == pytest.approx([math.log(-math.expm1(x)) for x in xs], rel=1e-12)
    # A response whose every token has probability 1 in float32 still has finite odds and gradients.
    chosen = torch.tensor([0.0], requires_grad=True)
    losses, _, _, log_odds = orpo_loss(chosen, torch.tensor([-1.0]), beta=0.1)
    losses.sum().backward()
    assert math.isfinite(log_odds.item()) and math.isfinite(chosen.grad.item())
