import math

import pytest
import torch

from trainers.ops.kl import (
    AdaptiveKLController,
    FixedKLController,
    apply_missing_eos_penalty,
    kl_k1,
    kl_k3,
    kl_penalized_rewards,
    last_token_index,
)


def test_k1_and_k3_by_hand():
    logp = torch.tensor([math.log(0.5), math.log(0.2), math.log(0.3)])
    ref = torch.tensor([math.log(0.25), math.log(0.4), math.log(0.3)])
    # x = ref − logp: log 0.5, log 2, 0  →  k3 = e^x − x − 1
    expected_k3 = torch.tensor([0.5 - math.log(0.5) - 1, 2 - math.log(2) - 1, 0.0])
    torch.testing.assert_close(kl_k3(logp, ref), expected_k3)
    torch.testing.assert_close(kl_k1(logp, ref), torch.tensor([math.log(2), -math.log(2), 0.0]))


def test_k1_and_k3_are_unbiased_estimates_of_the_kl():
    g = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(6, generator=g), 0)
    q = torch.softmax(torch.randn(6, generator=g), 0)
    exact = (p * (p / q).log()).sum()
    samples = torch.multinomial(p, 200_000, replacement=True, generator=g)
    logp, ref = p.log()[samples], q.log()[samples]
    k3 = kl_k3(logp, ref)
    assert (k3 >= 0).all()
    assert k3.mean().item() == pytest.approx(exact.item(), abs=5e-3)
    assert kl_k1(logp, ref).mean().item() == pytest.approx(exact.item(), abs=1e-2)


def test_last_token_index():
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0], [0, 0, 0]])
    assert last_token_index(mask).tolist() == [2, 1, 0, 0]


def test_kl_penalized_rewards_by_hand():
    score = torch.tensor([1.0, 2.0])
    logp_ref = torch.zeros(2, 3)
    logp_old = torch.tensor([[0.1, 0.2, 0.3], [0.5, -0.5, 9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    rewards, kl = kl_penalized_rewards(score, logp_old, logp_ref, mask, beta=0.1)
    torch.testing.assert_close(rewards, torch.tensor([[-0.01, -0.02, -0.03 + 1.0], [-0.05, 0.05 + 2.0, 0.0]]))
    torch.testing.assert_close(kl, torch.tensor([[0.1, 0.2, 0.3], [0.5, -0.5, 0.0]]))


def test_kl_penalized_rewards_put_no_score_on_an_empty_response():
    rewards, _ = kl_penalized_rewards(torch.tensor([5.0]), torch.zeros(1, 2), torch.zeros(1, 2), torch.zeros(1, 2), 0.1)
    assert rewards.abs().sum().item() == 0


def test_missing_eos_penalty():
    score = torch.tensor([1.0, 1.0, -2.0])
    ended = torch.tensor([True, False, False])
    torch.testing.assert_close(apply_missing_eos_penalty(score, ended, 1.5), torch.tensor([1.0, -0.5, -3.5]))


def test_fixed_controller_never_moves_and_round_trips():
    ctl = FixedKLController(0.05)
    ctl.update(100.0, 64)
    assert ctl.value == 0.05
    other = FixedKLController(1.0)
    other.load_state_dict(ctl.state_dict())
    assert other.value == 0.05


def test_adaptive_controller_by_hand():
    ctl = AdaptiveKLController(init_kl_coef=0.1, target=6.0, horizon=10_000)
    ctl.update(current_kl=9.0, n_steps=256)  # error = clip(9/6 − 1) = 0.2 (clipped from 0.5)
    assert ctl.value == pytest.approx(0.1 * (1 + 0.2 * 256 / 10_000))
    ctl.update(current_kl=5.4, n_steps=256)  # error = 5.4/6 − 1 = −0.1
    assert ctl.value == pytest.approx(0.1 * (1 + 0.2 * 0.0256) * (1 - 0.1 * 0.0256))
    ctl.update(current_kl=0.0, n_steps=10_000)  # error = −1 → clipped to −0.2: one horizon, −20 %
    expected = 0.1 * (1 + 0.2 * 0.0256) * (1 - 0.1 * 0.0256) * 0.8
    assert ctl.value == pytest.approx(expected)

    resumed = AdaptiveKLController(init_kl_coef=0.1, target=6.0, horizon=10_000)
    resumed.load_state_dict(ctl.state_dict())
    assert resumed.value == ctl.value
    assert ctl.state_dict() == {"value": ctl.value, "target": 6.0, "horizon": 10_000}


def test_adaptive_controller_rejects_a_zero_target():
    with pytest.raises(ValueError):
        AdaptiveKLController(0.1, target=0.0, horizon=10)
