"""RLOO's leave-one-out advantages and REINFORCE++'s whitened returns, by hand and against naive loops."""

import pytest
import torch

from trainers.ops.advantages import reinforce_pp_advantages, reward_to_go, rloo_advantages, standardize
from trainers.ops.kl import kl_penalized_rewards


def test_rloo_by_hand():
    # Group 1: one winner; baseline of the winner is 0, of each loser (1 + 0 + 0) / 3.
    # Group 2: [1, 0, 0, 1]: a winner's baseline is (0 + 0 + 1) / 3, a loser's 2/3.
    advantages = rloo_advantages(torch.tensor([1.0, 0, 0, 0, 1, 0, 0, 1]), 4)
    expected = [1, -1 / 3, -1 / 3, -1 / 3, 2 / 3, -2 / 3, -2 / 3, 2 / 3]
    torch.testing.assert_close(advantages, torch.tensor(expected))
    assert advantages.dtype == torch.float32


def test_rloo_equals_a_naive_leave_one_out_loop_and_is_a_scaled_group_centring():
    rewards = torch.randn(12, generator=torch.Generator().manual_seed(0))
    G = 3
    naive = []
    for i in range(12):
        group = range(i - i % G, i - i % G + G)
        others = [rewards[j].item() for j in group if j != i]
        naive.append(rewards[i].item() - sum(others) / len(others))
    advantages = rloo_advantages(rewards, G)
    torch.testing.assert_close(advantages, torch.tensor(naive), rtol=1e-6, atol=1e-6)
    centred = rewards.view(-1, G) - rewards.view(-1, G).mean(dim=1, keepdim=True)
    torch.testing.assert_close(advantages, (G / (G - 1) * centred).view(-1), rtol=1e-6, atol=1e-6)
    assert advantages.view(-1, G).sum(dim=1).abs().max() < 1e-6  # zero-sum within each group


def test_rloo_rejects_what_has_no_leave_one_out_baseline():
    with pytest.raises(ValueError, match="at least 2"):
        rloo_advantages(torch.zeros(4), 1)
    with pytest.raises(ValueError, match="multiple of group_size"):
        rloo_advantages(torch.zeros(5), 2)


def test_standardize_by_hand():
    x = torch.tensor([1.0, 2.0, 3.0, 6.0])  # mean 3, unbiased std sqrt((4 + 1 + 0 + 9) / 3)
    std = (14 / 3) ** 0.5
    torch.testing.assert_close(standardize(x), (x - 3) / (std + 1e-4))
    assert standardize(torch.ones(4)).abs().max() == 0  # equal advantages stay 0


def test_reward_to_go_by_hand_and_padding_adds_nothing():
    rewards = torch.tensor([[1.0, 2.0, 3.0, 7.0], [4.0, 5.0, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    assert reward_to_go(rewards, mask).tolist() == [[13, 12, 10, 7], [9, 5, 0, 0]]


def naive_reinforce_pp(score, old, ref, mask, beta):
    """REINFORCE++ written out token by token: rewards, returns, then mean/std over every response token."""
    B, A = mask.shape
    returns = torch.zeros(B, A)
    values = []
    for b in range(B):
        length = int(mask[b].sum())
        for t in range(length):
            total = sum(-beta * (old[b, u] - ref[b, u]).item() for u in range(t, length)) + score[b].item()
            returns[b, t] = total
            values.append(total)
    values = torch.tensor(values, dtype=torch.float64)
    mean, std = values.mean(), values.std()  # unbiased, over the whole batch's tokens
    return ((returns - mean) / torch.sqrt(std**2 + 1e-8)).float() * mask


def test_reinforce_pp_equals_the_naive_token_loop():
    g = torch.Generator().manual_seed(1)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0]])
    old, ref = torch.randn(3, 5, generator=g) * mask, torch.randn(3, 5, generator=g) * mask
    score = torch.tensor([1.0, -0.5, 0.25])
    rewards, _ = kl_penalized_rewards(score, old, ref, mask, 0.1)  # (B, A)
    advantages = reinforce_pp_advantages(rewards, mask)
    torch.testing.assert_close(advantages, naive_reinforce_pp(score, old, ref, mask, 0.1), rtol=1e-5, atol=1e-5)
    real = advantages[mask.bool()]
    assert real.mean().abs() < 1e-6 and real.std().item() == pytest.approx(1, abs=1e-4)  # global whitening
    assert advantages[~mask.bool()].abs().max() == 0


def test_reinforce_pp_without_kl_gives_every_token_its_completions_score_standardised():
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    rewards, _ = kl_penalized_rewards(torch.tensor([1.0, 0.0]), torch.zeros(2, 3), torch.zeros(2, 3), mask, 0.0)
    advantages = reinforce_pp_advantages(rewards, mask)
    # Returns [1, 1 | 0, 0, 0] over 5 tokens: mean 0.4, unbiased var 0.3.
    scale = (0.3 + 1e-8) ** -0.5
    torch.testing.assert_close(advantages, torch.tensor([[0.6, 0.6, 0], [-0.4, -0.4, -0.4]]) * scale)
    assert reinforce_pp_advantages(torch.tensor([[2.0, 0.0]]), torch.tensor([[1, 0]])).tolist() == [[0, 0]]
