"""GSPO's sequence-level importance ratio: its value, its token gradient, and the clipped loss built on it."""

import pytest
import torch

from trainers.ops.policy_losses import clipped_policy_loss, loss_normalizer, sequence_log_ratio

MASK = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]])


def log_probs(seed):
    g = torch.Generator().manual_seed(seed)
    return (-torch.rand(3, 4, generator=g) * 2) * MASK


def test_the_sequence_ratio_is_the_length_normalised_log_ratio_on_every_token():
    logp, old = log_probs(0), log_probs(1)
    value = sequence_log_ratio(logp, old, MASK)
    for b in range(3):
        n = int(MASK[b].sum())
        expected = sum((logp[b, t] - old[b, t]).item() for t in range(n)) / n
        assert value[b, :n].tolist() == pytest.approx([expected] * n, abs=1e-6)


def test_the_token_gradient_is_the_sequence_ratio_times_the_tokens_log_prob_gradient():
    # GSPO-token (eq. 13): ∂ s_{i,t} / ∂ log π_{i,t} = s_i, and nothing flows to the other tokens.
    logp = log_probs(0).requires_grad_(True)
    old = log_probs(1)
    ratio = torch.exp(sequence_log_ratio(logp, old, MASK))  # (B, A)
    weights = torch.arange(12, dtype=torch.float32).view(3, 4)
    (ratio * weights * MASK).sum().backward()
    s = torch.exp(((logp.detach() - old) * MASK).sum(1) / MASK.sum(1))  # (B,)
    torch.testing.assert_close(logp.grad, s[:, None] * weights * MASK)


def naive_gspo_loss(logp, old, advantages, eps_low, eps_high):
    """GSPO's objective as written (eq. 5 with ratio eq. 7): one clipped term per sequence, mean over sequences."""
    terms = []
    for b in range(logp.shape[0]):
        n = int(MASK[b].sum())
        s = torch.exp((logp[b, :n] - old[b, :n]).sum() / n)
        a = advantages[b]
        terms.append(-torch.minimum(s * a, s.clamp(1 - eps_low, 1 + eps_high) * a))
    return torch.stack(terms).mean()


def test_sequence_level_loss_and_gradient_equal_gspos_objective():
    advantages = torch.tensor([1.0, -0.5, 2.0])
    old = log_probs(1)
    base = log_probs(0)
    base[2] = old[2] + 0.3 * MASK[2]  # sequence 3: s = e^0.3 > 1.2, clipped (advantage > 0)
    ours_logp, naive_logp = base.clone().requires_grad_(True), base.clone().requires_grad_(True)
    result = clipped_policy_loss(
        ours_logp, old, advantages[:, None], MASK, eps_low=0.2, eps_high=0.2, aggregation="sequence",
        normalizer=loss_normalizer("sequence", num_tokens=MASK.sum(), num_sequences=3),
        importance_sampling_level="sequence",
    )  # fmt: skip
    naive = naive_gspo_loss(naive_logp, old, advantages, 0.2, 0.2)
    torch.testing.assert_close(result.loss, naive)
    result.loss.backward()
    naive.backward()
    torch.testing.assert_close(ours_logp.grad, naive_logp.grad)
    assert ours_logp.grad[2].abs().max() == 0  # the clipped sequence adds no gradient
    assert result.clip_frac.item() == pytest.approx(4 / 9)  # its 4 of the 9 tokens


def test_sequence_level_differs_from_token_level_off_policy_and_equals_it_on_policy():
    logp, old = log_probs(0), log_probs(1)
    advantages = torch.tensor([[1.0], [-0.5], [2.0]])
    kwargs = {"eps_low": 0.2, "eps_high": 0.28, "aggregation": "token", "normalizer": MASK.sum()}
    losses, grads = {}, {}
    for level in ("token", "sequence"):
        for name, reference in (("off", old), ("on", logp)):
            x = logp.clone().requires_grad_(True)
            loss = clipped_policy_loss(x, reference, advantages, MASK, importance_sampling_level=level, **kwargs).loss
            loss.backward()
            losses[level, name], grads[level, name] = loss.item(), x.grad
    assert losses["token", "off"] != pytest.approx(losses["sequence", "off"], abs=1e-3)
    assert losses["token", "on"] == pytest.approx(losses["sequence", "on"])  # ratio 1 either way
    torch.testing.assert_close(grads["token", "on"], grads["sequence", "on"])


def test_an_unknown_level_is_refused():
    with pytest.raises(ValueError, match="importance sampling level"):
        clipped_policy_loss(log_probs(0), log_probs(1), torch.ones(3, 1), MASK, eps_low=0.2, eps_high=0.2,
                            aggregation="token", normalizer=9.0, importance_sampling_level="word")  # fmt: skip
