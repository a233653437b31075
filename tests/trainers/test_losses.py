import math

import pytest
import torch

from trainers.losses import dpo_loss


def test_sigmoid_loss_and_rewards_by_hand():
    # pair 0: chosen log-ratio  (-10) - (-11) = +1, rejected log-ratio (-12) - (-11) = -1, h = 2
    # pair 1: chosen log-ratio  (-13) - (-11) = -2, rejected log-ratio  (-9) - (-11) = +2, h = -4
    policy_chosen = torch.tensor([-10.0, -13.0])
    policy_rejected = torch.tensor([-12.0, -9.0])
    ref_chosen = torch.tensor([-11.0, -11.0])
    ref_rejected = torch.tensor([-11.0, -11.0])

    losses, chosen_rewards, rejected_rewards = dpo_loss(
        policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=0.1, loss_type="sigmoid"
    )

    # −log σ(βh) = log(1 + exp(−βh)): βh = 0.2 → 0.598139, βh = −0.4 → 0.913015
    assert losses.tolist() == pytest.approx([math.log(1 + math.exp(-0.2)), math.log(1 + math.exp(0.4))], abs=1e-6)
    assert losses.tolist() == pytest.approx([0.598139, 0.913015], abs=1e-6)
    assert chosen_rewards.tolist() == pytest.approx([0.1, -0.2], abs=1e-6)
    assert rejected_rewards.tolist() == pytest.approx([-0.1, 0.2], abs=1e-6)


def test_equal_policy_and_reference_give_log_2():
    x = torch.tensor([-3.0, -7.0, -1.0])
    losses, chosen, rejected = dpo_loss(x, x + 1, x, x + 1, beta=0.5, loss_type="sigmoid")
    assert losses.tolist() == pytest.approx([math.log(2)] * 3)
    assert chosen.tolist() == [0.0] * 3 and rejected.tolist() == [0.0] * 3


def test_gradient_pushes_chosen_up_and_rejected_down_and_rewards_are_detached():
    pc = torch.tensor([-5.0], requires_grad=True)
    pr = torch.tensor([-5.0], requires_grad=True)
    losses, chosen, rejected = dpo_loss(pc, pr, torch.tensor([-5.0]), torch.tensor([-5.0]), 0.1, "sigmoid")
    losses.sum().backward()
    # d/dπ_c of −log σ(β h) at h = 0 is −β σ(0) = −0.05, and +0.05 for π_r
    assert pc.grad.item() == pytest.approx(-0.05) and pr.grad.item() == pytest.approx(0.05)
    assert not chosen.requires_grad and not rejected.requires_grad


def test_bradley_terry_loss_by_hand():
    from trainers.losses import bradley_terry_loss

    chosen, rejected = torch.tensor([2.0, 0.0, -1.0]), torch.tensor([1.0, 0.0, 1.0])
    # −log σ(d) = log(1 + e^{−d}) with d = 1, 0, −2
    expected = torch.tensor([math.log(1 + math.exp(-1)), math.log(2), math.log(1 + math.exp(2))])
    torch.testing.assert_close(bradley_terry_loss(chosen, rejected), expected)
    # a margin of 1 on the first pair turns its d into 0
    with_margin = bradley_terry_loss(chosen, rejected, margin=torch.tensor([1.0, 0.0, 0.0]))
    torch.testing.assert_close(with_margin[0], torch.tensor(math.log(2)))
    # centring adds η·(r_c + r_r)²: 0.01·9, 0, 0
    centred = bradley_terry_loss(chosen, rejected, center_rewards_coefficient=0.01)
    torch.testing.assert_close(centred - expected, torch.tensor([0.09, 0.0, 0.0]))


def test_bradley_terry_gradient_pushes_rewards_apart():
    from trainers.losses import bradley_terry_loss

    chosen = torch.zeros(4, requires_grad=True)
    rejected = torch.zeros(4, requires_grad=True)
    bradley_terry_loss(chosen, rejected).sum().backward()
    assert (chosen.grad < 0).all() and (rejected.grad > 0).all()  # descent raises r_c, lowers r_r
    torch.testing.assert_close(chosen.grad, torch.full((4,), -0.5))  # −σ(−0) = −0.5
