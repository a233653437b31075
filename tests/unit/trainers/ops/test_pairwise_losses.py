import math

import pytest
import torch

from trainers.ops.pairwise_losses import dpo_loss


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
    from trainers.ops.pairwise_losses import bradley_terry_loss

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
    from trainers.ops.pairwise_losses import bradley_terry_loss

    chosen = torch.zeros(4, requires_grad=True)
    rejected = torch.zeros(4, requires_grad=True)
    bradley_terry_loss(chosen, rejected).sum().backward()
    assert (chosen.grad < 0).all() and (rejected.grad > 0).all()  # descent raises r_c, lowers r_r
    torch.testing.assert_close(chosen.grad, torch.full((4,), -0.5))  # −σ(−0) = −0.5


# The pairs of `test_sigmoid_loss_and_rewards_by_hand`: h = 2 and h = −4.
PAIRS = (torch.tensor([-10.0, -13.0]), torch.tensor([-12.0, -9.0]), torch.tensor([-11.0, -11.0]),
         torch.tensor([-11.0, -11.0]))  # fmt: skip


def test_conservative_dpo_by_hand():
    # −(1−ε)·log σ(x) − ε·log σ(−x) with x = βh: 0.9·softplus(−x) + 0.1·softplus(x)
    # x = 0.2:  0.9·0.598139 + 0.1·0.798139 = 0.618139;  x = −0.4: 0.9·0.913015 + 0.1·0.513015 = 0.873015
    losses, chosen, rejected = dpo_loss(*PAIRS, beta=0.1, loss_type="sigmoid", label_smoothing=0.1)
    assert losses.tolist() == pytest.approx([0.618139, 0.873015], abs=1e-6)
    assert chosen.tolist() == pytest.approx([0.1, -0.2]) and rejected.tolist() == pytest.approx([-0.1, 0.2])


def test_conservative_dpo_with_no_smoothing_is_exactly_the_sigmoid_loss():
    g = torch.Generator().manual_seed(0)
    logps = [torch.randn(64, generator=g) * 10 for _ in range(4)]
    plain, _, _ = dpo_loss(*logps, beta=0.3, loss_type="sigmoid")
    smoothed, _, _ = dpo_loss(*logps, beta=0.3, loss_type="sigmoid", label_smoothing=0.0)
    assert torch.equal(plain, smoothed)


def test_ipo_loss_by_hand():
    # (h − 1/(2β))² with 1/(2·0.1) = 5: (2 − 5)² = 9, (−4 − 5)² = 81
    losses, chosen, rejected = dpo_loss(*PAIRS, beta=0.1, loss_type="ipo")
    assert losses.tolist() == pytest.approx([9.0, 81.0])
    assert chosen.tolist() == pytest.approx([0.1, -0.2]) and rejected.tolist() == pytest.approx([-0.1, 0.2])


def test_hinge_loss_by_hand():
    # relu(1 − βh): β = 0.1 → 1 − 0.2 = 0.8, 1 + 0.4 = 1.4;  β = 1 → relu(−1) = 0, 1 + 4 = 5
    losses, _, _ = dpo_loss(*PAIRS, beta=0.1, loss_type="hinge")
    assert losses.tolist() == pytest.approx([0.8, 1.4])
    losses, _, _ = dpo_loss(*PAIRS, beta=1.0, loss_type="hinge")
    assert losses.tolist() == pytest.approx([0.0, 5.0])


def test_label_smoothing_is_refused_for_other_losses():
    with pytest.raises(ValueError, match="'sigmoid' loss only"):
        dpo_loss(*PAIRS, beta=0.1, loss_type="ipo", label_smoothing=0.1)
