import math

import pytest
import torch

from trainers.ops.kl import kl_k3
from trainers.ops.policy_losses import (
    aggregate,
    clipped_policy_loss,
    clipped_value_loss,
    entropy_from_logits,
    loss_normalizer,
    truncated_importance_weights,
)

MODES = ["token", "sequence", "constant"]


def test_aggregate_each_mode_by_hand():
    per_token = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 99.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    n_tok = loss_normalizer("token", num_tokens=4, num_sequences=2)
    n_seq = loss_normalizer("sequence", num_tokens=4, num_sequences=2)
    n_const = loss_normalizer("constant", num_tokens=4, num_sequences=2, max_tokens=3)
    assert (n_tok, n_seq, n_const) == (4, 2, 6)
    assert aggregate(per_token, mask, "token", normalizer=n_tok).item() == pytest.approx((1 + 2 + 3 + 4) / 4)
    assert aggregate(per_token, mask, "sequence", normalizer=n_seq).item() == pytest.approx((6 / 3 + 4 / 1) / 2)
    assert aggregate(per_token, mask, "constant", normalizer=n_const).item() == pytest.approx(10 / 6)


def test_aggregation_errors():
    with pytest.raises(ValueError, match="max_tokens"):
        loss_normalizer("constant", num_tokens=4, num_sequences=2)
    with pytest.raises(ValueError, match="unknown"):
        loss_normalizer("mean", num_tokens=4, num_sequences=2)
    with pytest.raises(ValueError, match="unknown"):
        aggregate(torch.ones(1, 1), torch.ones(1, 1), "mean", normalizer=1)


def test_clipped_policy_loss_hits_both_clip_branches_for_both_signs():
    # token:            0      1      2      3      4      5
    ratio = torch.tensor([[1.5, 0.5, 0.5, 1.5, 1.25, 0.75]])
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0, 1.0, -1.0]])
    logp_old = torch.full((1, 6), -2.0)
    logp = (logp_old + ratio.log()).requires_grad_(True)
    mask = torch.ones(1, 6)
    out = clipped_policy_loss(
        logp, logp_old, adv, mask, eps_low=0.2, eps_high=0.28, aggregation="token", normalizer=6
    )
    # −min(ρA, clip(ρ, 0.8, 1.28)·A) per token
    per_token = [
        -1.28,  # A>0, ρ above 1+ε_high: clipped
        -0.5,  # A>0, ρ low: the unclipped term is the smaller, kept
        0.8,  # A<0, ρ below 1−ε_low: clipped
        1.5,  # A<0, ρ high: unclipped kept
        -1.25,  # A>0, ρ inside the asymmetric range (clip-higher)
        0.8,  # A<0, ρ = 0.75 below 0.8: clipped
    ]
    assert out.loss.item() == pytest.approx(sum(per_token) / 6, abs=1e-6)
    assert out.clip_frac.item() == pytest.approx(3 / 6)
    expected_kl = sum(r - 1 - math.log(r) for r in ratio[0].tolist()) / 6
    assert out.approx_kl.item() == pytest.approx(expected_kl, abs=1e-6)
    out.loss.backward()
    # d/dlogp of −ρA is −ρA; clipped tokens carry no gradient
    expected_grad = torch.tensor([[0.0, -0.5, 0.0, 1.5, -1.25, 0.0]]) / 6
    torch.testing.assert_close(logp.grad, expected_grad)


def test_clipped_policy_loss_ignores_padding_and_takes_one_advantage_per_sequence():
    logp_old = torch.zeros(2, 3)
    logp = torch.tensor([[0.1, -0.1, 50.0], [0.0, 0.0, 0.0]])  # token (0, 2) is padding
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    adv = torch.tensor([[2.0], [-1.0]])  # (B, 1): GRPO's per-sequence advantage
    out = clipped_policy_loss(logp, logp_old, adv, mask, eps_low=0.2, eps_high=0.2, aggregation="sequence",
                              normalizer=2)
    row0 = (-2 * math.exp(0.1) - 2 * math.exp(-0.1)) / 2
    row1 = 1.0
    assert out.loss.item() == pytest.approx((row0 + row1) / 2, abs=1e-6)
    assert out.clip_frac.item() == 0


def test_log_ratio_is_clamped_before_exp():
    logp = torch.tensor([[200.0]], requires_grad=True)
    out = clipped_policy_loss(logp, torch.zeros(1, 1), torch.tensor([[-1.0]]), torch.ones(1, 1),
                              eps_low=0.2, eps_high=0.2, aggregation="token", normalizer=1, max_log_ratio=20.0)
    assert math.isfinite(out.loss.item()) and math.isfinite(out.approx_kl.item())
    assert out.loss.item() == pytest.approx(math.exp(20.0), rel=1e-5)


def test_truncated_importance_weights_and_their_effect_on_the_policy_gradient_by_hand():
    # token:                  0: π_old/π_engine = e^0.5   1: e^−1   2: 5, capped at 2   3: padding
    logp_old = torch.tensor([[-1.0, -2.0, -0.5, -3.0]])
    logp_engine = torch.tensor([[-1.5, -1.0, -0.5 - math.log(5.0), 0.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    tis = truncated_importance_weights(logp_old, logp_engine, mask, cap=2.0)
    expected = [math.exp(0.5), math.exp(-1.0), 2.0]
    assert tis.weights[0, :3].tolist() == pytest.approx(expected)
    assert tis.mean.item() == pytest.approx(sum(expected) / 3)
    assert tis.clip_frac.item() == pytest.approx(1 / 3)

    # With ρ = 1 and A = 1 on every token, ℓ_t = −w_t: the loss is −Σw/3 and ∂ℓ/∂logp_t = −w_t/3 (no
    # gradient through w).
    logp = logp_old.clone().requires_grad_(True)
    out = clipped_policy_loss(logp, logp_old, torch.ones(1, 1), mask, eps_low=0.2, eps_high=0.2,
                              aggregation="token", normalizer=3, token_weights=tis.weights)  # fmt: skip
    assert out.loss.item() == pytest.approx(-sum(expected) / 3)
    out.loss.backward()
    assert logp.grad[0].tolist() == pytest.approx([-w / 3 for w in expected] + [0.0])


def test_clipped_value_loss_both_branches_by_hand():
    values_old = torch.tensor([[1.0, 1.0, 1.0]])
    values = torch.tensor([[2.0, 1.1, 0.0]], requires_grad=True)
    returns = torch.tensor([[2.0, 3.0, 0.5]])
    out = clipped_value_loss(values, values_old, returns, torch.ones(1, 3), eps_v=0.2, aggregation="token",
                             normalizer=3)
    # token 0: unclipped error 0; clipped V = 1.2, error 0.64 → the clipped branch wins
    # token 1: V inside the clip range, both errors 1.9² = 3.61
    # token 2: unclipped error 0.25; clipped V = 0.8, error 0.09 → the unclipped branch wins
    assert out.loss.item() == pytest.approx(0.5 * (0.64 + 3.61 + 0.25) / 3, abs=1e-6)
    assert out.clip_frac.item() == pytest.approx(1 / 3)
    out.loss.backward()
    # the clipped branch has no gradient w.r.t. V (clamped), the others (V − G)/3
    torch.testing.assert_close(values.grad, torch.tensor([[0.0, -1.9, -0.5]]) / 3)


def _step_losses(theta, feats, logp_old, adv, values_old, returns, ref, mask, mode, normalizer):
    logp = (feats * theta).sum(-1) - 2.0  # (B, A) a stand-in policy, linear in θ
    values = (feats * theta).sum(-1) * 0.5  # (B, A) a stand-in value head sharing θ
    policy = clipped_policy_loss(logp, logp_old, adv, mask, eps_low=0.2, eps_high=0.3, aggregation=mode,
                                 normalizer=normalizer)
    value = clipped_value_loss(values, values_old, returns, mask, eps_v=0.2, aggregation=mode, normalizer=normalizer)
    kl = aggregate(kl_k3(logp, ref), mask, mode, normalizer=normalizer)
    return policy.loss + 0.5 * value.loss + 0.04 * kl


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("micro_batch", [1, 2, 4, 8])
def test_gradient_does_not_depend_on_micro_batching(mode, micro_batch):
    g = torch.Generator().manual_seed(0)
    B, A, D = 8, 7, 5
    feats = torch.randn(B, A, D, generator=g)
    theta0 = torch.randn(D, generator=g) * 0.3
    logp_old = (feats * theta0).sum(-1) - 2.0 + 0.2 * torch.randn(B, A, generator=g)
    ref = logp_old + 0.1 * torch.randn(B, A, generator=g)
    adv = torch.randn(B, A, generator=g)
    values_old = torch.randn(B, A, generator=g)
    returns = torch.randn(B, A, generator=g)
    lengths = torch.tensor([7, 1, 3, 5, 2, 7, 4, 6])
    mask = (torch.arange(A) < lengths.unsqueeze(1)).long()
    normalizer = loss_normalizer(mode, num_tokens=mask.sum(), num_sequences=B, max_tokens=A)
    tensors = (feats, logp_old, adv, values_old, returns, ref, mask)

    theta = theta0.clone().requires_grad_(True)
    full = _step_losses(theta, *tensors, mode, normalizer)
    full.backward()
    full_grad = theta.grad.clone()

    theta.grad = None
    total = 0.0
    for start in range(0, B, micro_batch):
        rows = slice(start, start + micro_batch)
        width = int(lengths[rows].max())  # each micro-batch is padded to its own longest response
        part = [t[rows, :width] for t in tensors]
        loss = _step_losses(theta, *part, mode, normalizer)
        loss.backward()  # gradients accumulate, as in gradient accumulation
        total += loss.item()
    assert total == pytest.approx(full.item(), abs=1e-6)
    torch.testing.assert_close(theta.grad, full_grad, rtol=1e-5, atol=1e-7)


def test_entropy_from_logits_matches_the_naive_version_in_chunks():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(3, 5, 11, generator=g) * 3
    logits[0, 0, 4] = float("-inf")  # a masked-out token
    p = torch.softmax(logits, -1)
    naive = -(torch.where(p > 0, p * p.log(), 0.0)).sum(-1)
    torch.testing.assert_close(entropy_from_logits(logits, chunk_size=4), naive)
    uniform = entropy_from_logits(torch.zeros(2, 8))
    torch.testing.assert_close(uniform, torch.full((2,), math.log(8)))
