import math

import pytest
import torch

from trainers.ops.advantages import explained_variance, gae, group_advantages, masked_mean, masked_var, whiten


def naive_gae(rewards, values, mask, gamma, lam):
    """Textbook GAE, one row and one step at a time, over the row's masked-in positions only."""
    advantages = torch.zeros_like(rewards)
    for b in range(rewards.shape[0]):
        steps = [t for t in range(rewards.shape[1]) if mask[b, t]]
        running = 0.0
        for k in reversed(range(len(steps))):
            t = steps[k]
            next_value = values[b, steps[k + 1]].item() if k + 1 < len(steps) else 0.0
            delta = rewards[b, t].item() + gamma * next_value - values[b, t].item()
            running = delta + gamma * lam * running
            advantages[b, t] = running
    return advantages, (advantages + values) * mask


def test_gae_by_hand():
    rewards = torch.tensor([[1.0, 0.0, 2.0, 7.0]])
    values = torch.tensor([[0.5, 1.0, 0.5, 9.0]])
    mask = torch.tensor([[1, 1, 1, 0]])  # the last column is padding: its reward and value are ignored
    advantages, returns = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    # δ2 = 2 − 0.5 = 1.5;  δ1 = 0 + 0.9·0.5 − 1 = −0.55;  δ0 = 1 + 0.9·1 − 0.5 = 1.4;  γλ = 0.72
    a2 = 1.5
    a1 = -0.55 + 0.72 * a2
    a0 = 1.4 + 0.72 * a1
    torch.testing.assert_close(advantages, torch.tensor([[a0, a1, a2, 0.0]]))
    torch.testing.assert_close(returns, torch.tensor([[a0 + 0.5, a1 + 1.0, a2 + 0.5, 0.0]]))


def test_gae_with_gamma_and_lambda_one_is_the_monte_carlo_return_minus_the_value():
    g = torch.Generator().manual_seed(0)
    rewards, values = torch.randn(3, 6, generator=g), torch.randn(3, 6, generator=g)
    mask = torch.ones(3, 6)
    advantages, returns = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    reward_to_go = rewards.flip(1).cumsum(1).flip(1)
    torch.testing.assert_close(advantages, reward_to_go - values)
    torch.testing.assert_close(returns, reward_to_go)


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.99, 0.9), (0.5, 0.0)])
def test_gae_matches_the_naive_loop_on_random_data_with_ragged_masks(gamma, lam):
    g = torch.Generator().manual_seed(1)
    B, A = 6, 9
    rewards, values = torch.randn(B, A, generator=g), torch.randn(B, A, generator=g)
    lengths = torch.tensor([9, 1, 4, 7, 0, 2])
    mask = (torch.arange(A) < lengths.unsqueeze(1)).long()
    mask[3, 2] = 0  # a hole inside a row is skipped, not treated as a step
    advantages, returns = gae(rewards, values, mask, gamma, lam)
    expected_adv, expected_ret = naive_gae(rewards, values, mask, gamma, lam)
    torch.testing.assert_close(advantages, expected_adv)
    torch.testing.assert_close(returns, expected_ret)
    assert not advantages.requires_grad


def test_masked_mean_and_var_ignore_masked_entries():
    x = torch.tensor([[1.0, 2.0], [3.0, 100.0]])
    mask = torch.tensor([[1, 1], [1, 0]])
    torch.testing.assert_close(masked_mean(x, mask), torch.tensor(2.0))
    torch.testing.assert_close(masked_mean(x, mask, dim=1), torch.tensor([1.5, 3.0]))
    torch.testing.assert_close(masked_var(x, mask), torch.tensor(1.0))  # ((1+0+1) / (3 − 1))
    torch.testing.assert_close(masked_var(x, mask, unbiased=False), torch.tensor(2 / 3))
    with pytest.raises(ValueError, match="two entries"):
        masked_var(x, torch.tensor([[1, 0], [0, 0]]))


def test_whiten_by_hand():
    x = torch.tensor([[1.0, 2.0], [3.0, 100.0]])
    mask = torch.tensor([[1, 1], [1, 0]])
    scale = 1 / math.sqrt(1.0 + 1e-8)  # mean 2, unbiased variance 1
    torch.testing.assert_close(whiten(x, mask), torch.tensor([[-scale, 0.0], [scale, 0.0]]))
    torch.testing.assert_close(whiten(x, mask, shift_mean=False), torch.tensor([[2 - scale, 2.0], [2 + scale, 0.0]]))


def test_whiten_gives_zero_mean_unit_variance_on_the_mask():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(4, 7, generator=g) * 3 + 5
    mask = (torch.rand(4, 7, generator=g) > 0.3).long()
    y = whiten(x, mask)
    assert abs(masked_mean(y, mask).item()) < 1e-6
    assert abs(masked_var(y, mask).item() - 1) < 1e-5
    assert (y[mask == 0] == 0).all()


def test_group_advantages_by_hand():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0])
    advantages, group_std = group_advantages(rewards, group_size=4, eps=1e-4)
    std = math.sqrt((4 * 0.25) / 3)  # unbiased std of [1, 0, 0, 1]
    a = 0.5 / (std + 1e-4)
    torch.testing.assert_close(advantages, torch.tensor([a, -a, -a, a, 0.0, 0.0, 0.0, 0.0]))
    torch.testing.assert_close(group_std, torch.tensor([std, 0.0]))
    assert (group_std == 0).float().mean().item() == 0.5  # frac_reward_zero_std


def test_group_advantages_without_std_scaling_is_dr_grpo():
    rewards = torch.tensor([3.0, 1.0, 2.0, 10.0, 10.0, 4.0])
    advantages, group_std = group_advantages(rewards, group_size=3, scale_std=False)
    torch.testing.assert_close(advantages, torch.tensor([1.0, -1.0, 0.0, 2.0, 2.0, -4.0]))
    torch.testing.assert_close(group_std, torch.tensor([1.0, math.sqrt(12.0)]))


@pytest.mark.parametrize("rewards,group_size", [(torch.ones(4), 1), (torch.ones(5), 2), (torch.ones(2, 2), 2)])
def test_group_advantages_rejects_bad_groups(rewards, group_size):
    with pytest.raises(ValueError):
        group_advantages(rewards, group_size)


def test_explained_variance():
    returns = torch.tensor([[1.0, 2.0, 3.0, 50.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    assert explained_variance(returns, returns, mask).item() == pytest.approx(1.0)
    assert explained_variance(torch.full_like(returns, 2.0), returns, mask).item() == pytest.approx(0.0)
    # V = [1, 1, 1]: residuals [0, 1, 2] have variance 2/3, the returns 2/3 → 0
    assert explained_variance(torch.ones_like(returns), returns, mask).item() == pytest.approx(0.0)
    # V = [2, 2, 4]: residuals [-1, 0, -1] have variance 2/9 → 1 − (2/9)/(2/3) = 2/3
    values = torch.tensor([[2.0, 2.0, 4.0, 0.0]])
    assert explained_variance(values, returns, mask).item() == pytest.approx(2 / 3)
