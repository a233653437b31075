"""GRPO's options reach the step: each advantage estimator and importance-sampling level gives the gradient
of its own objective, written out here on a fixed batch, and the options' gradients differ."""

import copy

import pytest
import torch

from tests.unit.trainers.trainer_fixtures import computer, rollout_of, tiny
from trainers.grpo import GRPOBatch, accumulate_gradients, rollout_advantages
from trainers.rl.online import frozen_logprobs
from trainers.rl.response_logprobs import response_logprobs
from trainers.spec.config import GRPOHyperparameters

HAS_A = {"type": "string_check", "name": "has_a", "operation": "contains", "reference": "a"}
TEXTS = ["a", "bc", "def", "ghij", "ka", "lm", "no", "pa"]  # two groups of G = 4: rewards [1, 0, 0, 0], [1, 0, 0, 1]
EOS = [True, True, False, True, True, True, False, True]


def policy():
    return copy.deepcopy(tiny()[0]).train()


def grads(model):
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def fixed_batch():
    """The rollout, its rewards, and old and reference log-probs off the policy's (seeded)."""
    rollout = rollout_of(TEXTS, EOS)
    rewards = computer(HAS_A).score([{"prompt": "p"}] * 8, TEXTS, rollout).rewards
    mask = rollout.response_mask
    g = torch.Generator().manual_seed(0)
    current = frozen_logprobs(tiny()[0], rollout, 1.0, batch_size=8)  # (B, A)
    old = (current + 0.3 * torch.randn(current.shape, generator=g)) * mask
    ref = (current + 0.5 * torch.randn(current.shape, generator=g)) * mask
    return rollout, rewards, old, ref


def hyperparameters(**options):
    return GRPOHyperparameters(rollout_batch_size=2, num_generations=4, batch_size=8, **options)


def step_gradient(hp, on_policy):
    """Our step's gradient: advantages by `rollout_advantages`, then `accumulate_gradients`."""
    rollout, rewards, old, ref = fixed_batch()
    beta_ref = ref if hp.beta > 0 else None
    advantages = rollout_advantages(rewards, rollout.response_mask, old, beta_ref, hp)
    batch = GRPOBatch(rollout=rollout, advantages=advantages, old_logprobs=None if on_policy else old,
                      ref_logprobs=beta_ref)  # fmt: skip
    model = policy()
    stats, names = accumulate_gradients(model, batch, hp)
    return grads(model), dict(zip(names, stats.tolist(), strict=True)), advantages


def naive_gradient(per_token_advantages, *, old=None, level="token", eps=0.2, kl=None):
    """The gradient of the clipped objective written out: token aggregation, ratio per token or per sequence."""
    rollout, _, _, _ = fixed_batch()
    model = policy()
    mask = rollout.response_mask.float()
    logp = response_logprobs(model, rollout, 1.0) * mask  # (B, A)
    reference = logp.detach() if old is None else old
    delta = (logp - reference) * mask
    if level == "token":
        log_ratio = delta
    else:  # GSPO-token: value mean_t Δ, gradient of log π per token
        log_ratio = (delta.sum(1, keepdim=True) / mask.sum(1, keepdim=True)).detach() + logp - logp.detach()
    ratio = torch.exp(log_ratio)
    terms = torch.minimum(ratio * per_token_advantages, ratio.clamp(1 - eps, 1 + eps) * per_token_advantages)
    loss = -(terms * mask).sum() / mask.sum()
    if kl is not None:  # GRPO's k3 term against the reference, β = kl[0]
        beta, ref = kl
        loss = loss + beta * ((torch.exp(ref - logp) - (ref - logp) - 1) * mask).sum() / mask.sum()
    loss.backward()
    return grads(model)


def close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


def test_rloo_steps_on_the_leave_one_out_advantages():
    ours, stats, advantages = step_gradient(hyperparameters(advantage_estimator="rloo", beta=0.0), on_policy=True)
    expected = torch.tensor([1, -1 / 3, -1 / 3, -1 / 3, 2 / 3, -2 / 3, -2 / 3, 2 / 3])
    close(advantages, expected)
    mask = fixed_batch()[0].response_mask
    close(ours, naive_gradient(expected[:, None].expand(mask.shape)))
    assert stats["policy/clipfrac"] == 0


def test_rloo_with_beta_puts_the_sequence_kl_in_the_reward_and_adds_no_loss_term():
    rollout, rewards, old, ref = fixed_batch()
    ours, stats, advantages = step_gradient(hyperparameters(advantage_estimator="rloo", beta=0.5), on_policy=True)
    penalised = rewards - 0.5 * ((old - ref) * rollout.response_mask).sum(1)  # score − β·Σ k1
    grouped = penalised.view(2, 4)
    expected = (grouped - (grouped.sum(1, keepdim=True) - grouped) / 3).view(-1)
    close(advantages, expected)
    close(ours, naive_gradient(expected[:, None].expand(old.shape)))  # no k3 term
    assert stats["objective/kl"] > 0  # still reported


def test_rloo_normalize_advantages_standardises_over_the_rollout():
    _, _, advantages = step_gradient(
        hyperparameters(advantage_estimator="rloo", normalize_advantages=True, beta=0.0), on_policy=True
    )
    raw = torch.tensor([1, -1 / 3, -1 / 3, -1 / 3, 2 / 3, -2 / 3, -2 / 3, 2 / 3])
    close(advantages, (raw - raw.mean()) / (raw.std() + 1e-4))


def test_reinforce_pp_steps_on_per_token_whitened_returns():
    rollout, rewards, old, ref = fixed_batch()
    mask = rollout.response_mask.float()
    ours, _, advantages = step_gradient(hyperparameters(advantage_estimator="reinforce_pp", beta=0.1), on_policy=True)
    assert advantages.shape == mask.shape
    rewards_t = -0.1 * (old - ref) * mask
    for b in range(8):
        rewards_t[b, int(mask[b].sum()) - 1] += rewards[b]
    returns = rewards_t.flip(1).cumsum(1).flip(1) * mask
    values = returns[mask.bool()]
    expected = (returns - values.mean()) / torch.sqrt(values.var() + 1e-8) * mask
    close(advantages, expected)
    close(ours, naive_gradient(expected))  # and no k3 term


def test_grpo_keeps_its_k3_loss_term():
    ref = fixed_batch()[3]
    hp = hyperparameters(beta=0.5)
    ours, _, advantages = step_gradient(hp, on_policy=True)
    close(ours, naive_gradient(advantages[:, None].expand(ref.shape), kl=(0.5, ref)))


@pytest.mark.parametrize("estimator", ["grpo", "reinforce_pp"])
def test_gspo_clips_each_sequence_on_its_length_normalised_ratio(estimator):
    old = fixed_batch()[2]
    hp = hyperparameters(advantage_estimator=estimator, importance_sampling_level="sequence", beta=0.0)
    ours, stats, advantages = step_gradient(hp, on_policy=False)
    per_token = advantages[:, None].expand(old.shape) if advantages.dim() == 1 else advantages
    close(ours, naive_gradient(per_token, old=old, level="sequence"))
    token_hp = hyperparameters(advantage_estimator=estimator, beta=0.0)
    token_level, token_stats, _ = step_gradient(token_hp, on_policy=False)
    assert (ours - token_level).abs().max() > 1e-3  # the level changes the step
    assert stats["policy/clipfrac"] != token_stats["policy/clipfrac"]


def test_each_option_gives_a_different_step():
    steps = {}
    for name, options, on_policy in [
        ("grpo", {}, True), ("rloo", {"advantage_estimator": "rloo"}, True),
        ("reinforce_pp", {"advantage_estimator": "reinforce_pp"}, True),
        ("gspo", {"importance_sampling_level": "sequence"}, False), ("token", {}, False),
    ]:  # fmt: skip
        steps[name] = step_gradient(hyperparameters(beta=0.04, **options), on_policy)[0]
    names = sorted(steps)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert (steps[a] - steps[b]).abs().max() > 1e-4, (a, b)


def test_normalize_advantages_is_an_rloo_option():
    with pytest.raises(ValueError, match="rloo"):
        hyperparameters(normalize_advantages=True)
