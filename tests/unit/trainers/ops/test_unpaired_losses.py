import math

import pytest
import torch

from trainers.ops.unpaired_losses import kto_loss, kto_reference_point


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_reference_point_is_the_mean_log_ratio_clamped_at_zero_and_detached():
    ratios = torch.tensor([0.5, -0.1, 1.2], requires_grad=True)
    z = kto_reference_point(ratios.sum(), 3)
    assert z.item() == pytest.approx(1.6 / 3) and not z.requires_grad
    # a negative mean (the policy puts less mass on mismatched completions than π_ref) clamps to 0
    assert kto_reference_point(torch.tensor(-0.9), 3).item() == 0.0


def test_loss_by_hand():
    # r = policy − ref: +2 (desirable), −1 (undesirable), +0.5 (undesirable); z_ref = 0.5, β = 0.1
    policy = torch.tensor([-8.0, -12.0, -10.5])
    ref = torch.tensor([-10.0, -11.0, -11.0])
    desirable = torch.tensor([True, False, False])
    losses, rewards = kto_loss(policy, ref, desirable, torch.tensor(0.5), beta=0.1,
                               desirable_weight=1.0, undesirable_weight=1.0)
    # 1 − σ(0.1·(2 − 0.5)) = 1 − σ(0.15); 1 − σ(0.1·(0.5 + 1)) = 1 − σ(0.15); 1 − σ(0.1·(0.5 − 0.5)) = 0.5
    assert losses.tolist() == pytest.approx([1 - _sigmoid(0.15), 1 - _sigmoid(0.15), 0.5], abs=1e-7)
    assert losses.tolist() == pytest.approx([0.462570, 0.462570, 0.5], abs=1e-6)
    assert rewards.tolist() == pytest.approx([0.2, -0.1, 0.05], abs=1e-6)
    assert not rewards.requires_grad


def test_weights_scale_each_side():
    policy, ref = torch.tensor([-1.0, -1.0]), torch.tensor([-1.0, -1.0])
    losses, _ = kto_loss(policy, ref, torch.tensor([True, False]), torch.tensor(0.0), 0.1,
                         desirable_weight=2.0, undesirable_weight=0.25)
    assert losses.tolist() == pytest.approx([1.0, 0.125])


def test_matches_a_naive_loop_with_a_clamped_reference_point():
    generator = torch.Generator().manual_seed(0)
    policy = torch.randn(9, generator=generator) * 3 - 20
    ref = torch.randn(9, generator=generator) * 3 - 20
    kl_policy = torch.randn(9, generator=generator) * 3 - 20
    kl_ref = kl_policy + torch.randn(9, generator=generator)
    labels = [bool(x) for x in torch.randint(0, 2, (9,), generator=generator)]
    beta, wd, wu = 0.3, 1.5, 0.7
    for shift in (0.0, 5.0, -5.0):  # a positive mean log-ratio, and a negative one that clamps
        kl_sum = (kl_policy + shift - kl_ref).sum()
        z = kto_reference_point(kl_sum, 9)
        losses, rewards = kto_loss(policy, ref, torch.tensor(labels), z, beta, wd, wu)
        mean = sum(float(kl_policy[i]) + shift - float(kl_ref[i]) for i in range(9)) / 9
        naive_z = max(0.0, mean)
        assert z.item() == pytest.approx(naive_z, abs=1e-5)
        for i in range(9):
            r = float(policy[i]) - float(ref[i])
            expected = wd * (1 - _sigmoid(beta * (r - naive_z))) if labels[i] else \
                wu * (1 - _sigmoid(beta * (naive_z - r)))
            assert losses[i].item() == pytest.approx(expected, abs=1e-6)
            assert rewards[i].item() == pytest.approx(beta * r, abs=1e-5)
    assert kto_reference_point((kl_policy - 5.0 - kl_ref).sum(), 9).item() == 0.0


def test_gradient_raises_desirable_and_lowers_undesirable_log_probs():
    policy = torch.tensor([-5.0, -5.0], requires_grad=True)
    losses, _ = kto_loss(policy, torch.tensor([-5.0, -5.0]), torch.tensor([True, False]), torch.tensor(0.0), 0.1)
    losses.sum().backward()
    # d/dr (1 − σ(βr)) at r = 0 is −β/4 = −0.025; the undesirable side's is +0.025
    assert policy.grad.tolist() == pytest.approx([-0.025, 0.025])
