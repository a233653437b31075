"""GRPO's step by hand: group advantages into the gradient, aggregation over the whole step, micro-batching."""

import copy

import pytest
import torch

from tests.unit.trainers.trainer_fixtures import computer, rollout_of, tiny
from trainers.grpo import GRPOBatch, accumulate_gradients, rollout_statistics
from trainers.ops.advantages import group_advantages
from trainers.rl.online import frozen_logprobs, select_rows
from trainers.rl.response_logprobs import response_logprobs
from trainers.spec.config import GRPOHyperparameters

HAS_A = {"type": "string_check", "name": "has_a", "operation": "contains", "reference": "a"}
TEXTS = ["a", "bc", "def", "ghij", "ka", "lm", "no", "pa"]  # two groups of G = 4


def policy():
    return copy.deepcopy(tiny()[0]).train()


def grads(model):
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def hand_made_batch(**hp):
    """Two prompts × G = 4 completions: rewards [1, 0, 0, 0] (one winner) and [1, 0, 0, 1]."""
    rollout = rollout_of(TEXTS, [True, True, False, True, True, True, False, True])
    items = [{"prompt": "p"}] * len(TEXTS)
    scores = computer(HAS_A).score(items, TEXTS, rollout)
    hp = GRPOHyperparameters(rollout_batch_size=2, num_generations=4, batch_size=8, **hp)
    advantages, group_std = group_advantages(scores.rewards, 4, scale_std=hp.scale_rewards)
    batch = GRPOBatch(rollout=rollout, advantages=advantages, old_logprobs=None, ref_logprobs=None)
    return batch, hp, scores, group_std


def test_advantages_compare_each_completion_with_its_own_group():
    batch, _, scores, group_std = hand_made_batch()
    assert scores.rewards.tolist() == [1, 0, 0, 0, 1, 0, 0, 1]
    # group 1: mean 0.25, unbiased std 0.5; group 2: mean 0.5, std 1/√3
    s = 3**0.5 / 3 + 1e-4
    expected = [0.75 / 0.5001, -0.25 / 0.5001, -0.25 / 0.5001, -0.25 / 0.5001, 0.5 / s, -0.5 / s, -0.5 / s, 0.5 / s]
    torch.testing.assert_close(batch.advantages, torch.tensor(expected))
    unscaled, _ = group_advantages(scores.rewards, 4, scale_std=False)  # Dr. GRPO
    assert unscaled.tolist() == [0.75, -0.25, -0.25, -0.25, 0.5, -0.5, -0.5, 0.5]
    metrics = rollout_statistics(scores, group_std, batch.rollout)
    assert metrics["reward/mean"] == metrics["reward/has_a"] == 0.375 and metrics["frac_reward_zero_std"] == 0
    assert metrics["completions/eos_fraction"] == 0.75
    assert metrics["completions/mean_length"] == 2.25 + 0.75  # EOS counts


@pytest.mark.parametrize("aggregation", ["token", "sequence"])
def test_on_policy_gradient_is_the_advantage_weighted_log_likelihood_gradient(aggregation):
    # With π_old = π (μ = 1) the ratio is 1 and the clipped loss is −Σ Â·log π / normaliser in gradient.
    batch, hp, _, _ = hand_made_batch(loss_aggregation=aggregation, beta=0.0)
    model = policy()
    stats, names = accumulate_gradients(model, batch, hp)
    assert names == ["train/loss", "policy/clipfrac", "policy/approx_kl", "policy/entropy"]
    assert stats[1] == 0 and stats[2] == 0  # nothing clipped, ratio exactly 1

    naive = policy()
    mask = batch.rollout.response_mask.float()
    logp = response_logprobs(naive, batch.rollout, 1.0)  # (B, A)
    if aggregation == "token":
        objective = (batch.advantages[:, None] * logp * mask).sum() / mask.sum()
    else:
        objective = ((batch.advantages[:, None] * logp * mask).sum(1) / mask.sum(1)).mean()
    (-objective).backward()
    torch.testing.assert_close(grads(model), grads(naive), rtol=1e-4, atol=1e-7)


def test_truncated_importance_weights_scale_the_on_policy_gradient():
    # Engine log-probs below the trainer's by 0.03 (w = e^0.03) on the second group, by 0.2 on the first (capped).
    batch, hp, _, _ = hand_made_batch(beta=0.0, tis_cap=1.05)
    with torch.no_grad():
        logp = response_logprobs(policy(), batch.rollout, 1.0)  # (B, A)
    gap = torch.tensor([0.2] * 4 + [0.03] * 4).unsqueeze(1)  # (B, 1)
    batch.rollout.logprobs = (logp - gap) * batch.rollout.response_mask
    model = policy()
    stats, names = accumulate_gradients(model, batch, hp)
    assert names[-2:] == ["policy/tis_weight_mean", "policy/tis_clipfrac"]
    mask = batch.rollout.response_mask.float()
    weights = torch.where(gap > 0.1, 1.05, torch.exp(gap)) * mask  # (B, A)
    first_group = mask[:4].sum() / mask.sum()
    torch.testing.assert_close(stats[-2:], torch.stack([(weights.sum() / mask.sum()), first_group]))

    naive = policy()
    logp = response_logprobs(naive, batch.rollout, 1.0)  # (B, A)
    (-(batch.advantages[:, None] * weights * logp * mask).sum() / mask.sum()).backward()
    torch.testing.assert_close(grads(model), grads(naive), rtol=1e-4, atol=1e-7)


def noisy_batch():
    """Eight completions of different lengths with old and reference log-probs off the policy's."""
    batch, _, _, _ = hand_made_batch()
    g = torch.Generator().manual_seed(0)
    current = frozen_logprobs(tiny()[0], batch.rollout, 1.0, batch_size=8)  # (B, A)
    mask = batch.rollout.response_mask
    old = (current + 0.3 * torch.randn(current.shape, generator=g)) * mask  # ratios both sides of the clip
    ref = (current + 0.5 * torch.randn(current.shape, generator=g)) * mask
    advantages = torch.randn(8, generator=g)
    return GRPOBatch(rollout=batch.rollout, advantages=advantages, old_logprobs=old, ref_logprobs=ref)


@pytest.mark.parametrize("aggregation", ["token", "sequence", "constant"])
def test_eight_micro_batches_give_the_gradient_of_one(aggregation):
    batch = noisy_batch()
    results = []
    for accumulation in (1, 8):
        hp = GRPOHyperparameters(rollout_batch_size=2, num_generations=4, batch_size=8, beta=0.1,
                                 epsilon_high=0.28, loss_aggregation=aggregation,
                                 gradient_accumulation_steps=accumulation)  # fmt: skip
        model = policy()
        stats, names = accumulate_gradients(model, batch, hp)
        results.append((grads(model), stats))
    assert names[-1] == "objective/kl"
    (one, one_stats), (eight, eight_stats) = results
    assert one.abs().max() > 0 and 0 < one_stats[1] < 1  # some tokens were clipped
    torch.testing.assert_close(eight, one, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(eight_stats, one_stats, rtol=1e-4, atol=1e-6)


def test_the_aggregations_weigh_tokens_differently():
    batch = noisy_batch()
    losses = {}
    for aggregation in ("token", "sequence", "constant"):
        hp = GRPOHyperparameters(rollout_batch_size=2, num_generations=4, batch_size=8, loss_aggregation=aggregation)
        losses[aggregation] = accumulate_gradients(policy(), batch, hp)[0][0].item()
    assert len({round(v, 6) for v in losses.values()}) == 3


def test_a_slice_of_a_rollout_scores_its_tokens_as_the_whole_does():
    batch, _, _, _ = hand_made_batch()
    whole = frozen_logprobs(tiny()[0], batch.rollout, 1.0, batch_size=8)
    part = select_rows(batch.rollout, [1, 5])
    assert part.response_ids.shape[1] == 3  # trimmed to the longest kept response: "bc" and EOS
    sliced = frozen_logprobs(tiny()[0], part, 1.0, batch_size=1)
    torch.testing.assert_close(sliced, whole[[1, 5], :3], rtol=1e-5, atol=1e-5)
