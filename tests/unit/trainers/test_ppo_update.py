"""One PPO optimizer step on a hand-made rollout batch: the losses and gradients of `accumulate_gradients`
against the formulas written out by hand, whatever the micro-batching; and PPO-ptx's language-modelling loss."""

import copy

import pytest
import torch

from tests.unit.trainers.trainer_fixtures import tiny
from trainers.models.value import critic_from_causal_lm, response_values
from trainers.ppo import STEP_METRICS, TIS_METRICS, PPOBatch, accumulate_gradients
from trainers.rl.generation.hf import HFBackend
from trainers.rl.online import frozen_logprobs, reuses_sampling_logprobs, sample_rollout
from trainers.rl.ptx import backward_ptx_loss, collate_texts
from trainers.rl.response_logprobs import response_logits, response_logprobs
from trainers.rl.rollout import generate
from trainers.spec.config import PPOHyperparameters

PAD, BOS, EOS = 256, 257, 258
PROMPTS = [[BOS, 104, 105], [BOS, 97, 98, 99, 65, 66, 67], [BOS], [BOS, 120, 121, 122, 10],
           [BOS, 50], [BOS, 60, 61], [BOS, 70, 71, 72, 73], [BOS, 80]]  # fmt: skip
TEMPERATURE = 0.7


def hyperparameters(**overrides):
    return PPOHyperparameters(**({"rollout_batch_size": 8, "batch_size": 8, "temperature": TEMPERATURE,
                                  "cliprange": 0.2, "cliprange_value": 0.2, "vf_coef": 0.1,
                                  "entropy_coef": 0.01} | overrides))  # fmt: skip


@pytest.fixture(scope="module")
def setup():
    """A policy, a critic with a non-zero head, and a batch whose old log-probs and values are off
    the current ones (so that both clips are hit) with random advantages and returns."""
    policy = copy.deepcopy(tiny()[0])
    critic = critic_from_causal_lm(policy)
    torch.nn.init.normal_(critic.score.weight, std=0.5, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    rollout = generate(policy, PROMPTS, pad_token_id=PAD, eos_token_id=EOS, max_new_tokens=6,
                       temperature=TEMPERATURE, generator=g)  # fmt: skip
    mask = rollout.response_mask.float()  # (B, A)
    with torch.no_grad():
        logp = response_logprobs(policy, rollout, TEMPERATURE)  # (B, A)
        values = response_values(critic, rollout)  # (B, A)
    noise = lambda scale: torch.randn(mask.shape, generator=g) * scale * mask  # noqa: E731
    batch = PPOBatch(rollout=rollout, old_logprobs=logp + noise(0.3), old_values=values + noise(0.3),
                     advantages=noise(1.0), returns=values + noise(1.0))  # fmt: skip
    return policy, critic, batch


def gradients(*models):
    return [p.grad.clone() for m in models for p in m.parameters() if p.requires_grad]


def by_hand(policy, critic, batch, hp):
    """The step's loss per token, each term written out, averaged over all the batch's tokens."""
    m = batch.rollout.response_mask.float()  # (B, A)
    logits = response_logits(policy, batch.rollout, hp.temperature)  # (B, A, V)
    logp_all = torch.log_softmax(logits.float(), dim=-1)  # (B, A, V)
    logp = logp_all.gather(-1, batch.rollout.response_ids.unsqueeze(-1)).squeeze(-1)  # (B, A)
    ratio = torch.exp(logp - batch.old_logprobs)
    A = batch.advantages
    pg = torch.maximum(-ratio * A, -torch.clamp(ratio, 1 - hp.cliprange, 1 + hp.cliprange) * A)  # (B, A)
    if hp.tis_cap is not None:  # truncated importance weight of the sampler's log-probs
        tis = torch.exp(batch.old_logprobs - batch.rollout.logprobs)  # (B, A)
        pg = pg * torch.clamp(tis, max=hp.tis_cap)
    V, V_old, G = response_values(critic, batch.rollout), batch.old_values, batch.returns
    V_clipped = V_old + torch.clamp(V - V_old, -hp.cliprange_value, hp.cliprange_value)
    vf = 0.5 * torch.maximum((V - G) ** 2, (V_clipped - G) ** 2)  # (B, A)
    entropy = -(logp_all.exp() * logp_all).sum(-1)  # (B, A)
    n = m.sum()
    mean = lambda x: (x * m).sum() / n  # noqa: E731
    loss = mean(pg) + hp.vf_coef * mean(vf) - hp.entropy_coef * mean(entropy)
    with torch.no_grad():
        clipfrac = mean(((ratio - 1).abs() > hp.cliprange) & (pg > -ratio * A))
        approx_kl = mean(ratio - 1 - (logp - batch.old_logprobs))
        vf_clipfrac = mean((V_clipped - G) ** 2 > (V - G) ** 2)
    stats = [loss, mean(pg), clipfrac, approx_kl, mean(entropy), mean(vf), vf_clipfrac]
    if hp.tis_cap is not None:
        stats += [mean(torch.clamp(tis, max=hp.tis_cap)), mean(tis > hp.tis_cap)]
    return loss, torch.stack([s.detach().float() for s in stats])


@pytest.mark.parametrize("accumulation", [1, 3])
def test_one_step_matches_the_losses_written_out_by_hand(setup, accumulation):
    policy, critic, batch = (copy.deepcopy(x) for x in setup)
    hp = hyperparameters(gradient_accumulation_steps=accumulation)
    stats = accumulate_gradients(policy, critic, batch, hp)
    got = gradients(policy, critic)

    policy.zero_grad(), critic.zero_grad()
    loss, expected = by_hand(policy, critic, batch, hp)
    loss.backward()
    assert len(stats) == len(STEP_METRICS)
    torch.testing.assert_close(stats, expected, rtol=1e-5, atol=1e-6)
    assert 0 < expected[2] < 1 and 0 < expected[6] < 1  # both clips were hit, and not everywhere
    for a, b in zip(got, gradients(policy, critic), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


def test_truncated_importance_weights_scale_each_tokens_policy_term(setup):
    policy, critic, batch = (copy.deepcopy(x) for x in setup)
    hp = hyperparameters(gradient_accumulation_steps=3, tis_cap=1.2)
    stats = accumulate_gradients(policy, critic, batch, hp)
    got = gradients(policy, critic)

    policy.zero_grad(), critic.zero_grad()
    loss, expected = by_hand(policy, critic, batch, hp)
    loss.backward()
    assert len(stats) == len(STEP_METRICS) + len(TIS_METRICS)
    torch.testing.assert_close(stats, expected, rtol=1e-5, atol=1e-6)
    assert 0 < expected[-1] < 1  # some weights were capped, not all
    for a, b in zip(got, gradients(policy, critic), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


def test_the_step_does_not_depend_on_micro_batching(setup):
    """1 micro-batch of 8 completions and 8 micro-batches of 1 give the same losses and gradients."""
    results = []
    for accumulation in (1, 8):
        policy, critic, batch = (copy.deepcopy(x) for x in setup)
        stats = accumulate_gradients(policy, critic, batch, hyperparameters(gradient_accumulation_steps=accumulation))
        results.append((stats, gradients(policy, critic)))
    (stats_1, grads_1), (stats_8, grads_8) = results
    torch.testing.assert_close(stats_1, stats_8, rtol=1e-5, atol=1e-6)
    for a, b in zip(grads_1, grads_8, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


def test_the_first_minibatch_of_a_rollout_has_a_ratio_of_one(setup):
    """With π_old recomputed by the policy itself, nothing is clipped before the first update."""
    policy, critic, batch = (copy.deepcopy(x) for x in setup)
    with torch.no_grad():
        batch.old_logprobs = response_logprobs(policy, batch.rollout, TEMPERATURE)
    stats = accumulate_gradients(policy, critic, batch, hyperparameters())
    stats = dict(zip(STEP_METRICS, stats.tolist(), strict=True))
    assert stats["policy/clipfrac"] == 0 and stats["policy/approx_kl"] == pytest.approx(0, abs=1e-7)
    masked = batch.advantages * batch.rollout.response_mask
    assert stats["policy/pg_loss"] == pytest.approx(-(masked.sum() / batch.rollout.response_mask.sum()).item())


@pytest.mark.parametrize("accumulation", [1, 3])
def test_the_ptx_loss_is_the_mean_negative_log_likelihood_of_the_step_tokens(accumulation):
    policy = copy.deepcopy(tiny()[0])
    sequences = [[BOS, 104, 105, EOS], [BOS, 97, EOS], [BOS, 120, 121, 122, 10, 11, EOS]]
    loss = backward_ptx_loss(policy, sequences, coef=0.5, pad_token_id=PAD, gradient_accumulation_steps=accumulation)
    got = gradients(policy)

    policy.zero_grad()
    total, count = 0.0, 0
    for ids in sequences:  # each row alone, unpadded
        logits = policy(input_ids=torch.tensor([ids])).logits[0, :-1]  # (T-1, V)
        total = total - torch.log_softmax(logits, -1).gather(-1, torch.tensor(ids[1:]).unsqueeze(-1)).sum()
        count += len(ids) - 1
    (0.5 * total / count).backward()
    torch.testing.assert_close(loss, (total / count).detach(), rtol=1e-5, atol=1e-6)
    for a, b in zip(got, gradients(policy), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
    input_ids, attention_mask = collate_texts(sequences, PAD, torch.device("cpu"))
    assert input_ids.shape == (3, 7) and attention_mask.sum().item() == 14


def test_rows_of_very_different_lengths_run_in_separate_passes_with_the_same_results():
    """Short and long prompts go to different passes (`forward_groups`); the step and the rollout's
    gradient-free passes equal those of one padded pass over every row."""
    from trainers.models.value import rollout_values
    from trainers.rl.online import forward_groups, frozen_logprobs

    policy = copy.deepcopy(tiny()[0])
    critic = critic_from_causal_lm(policy)
    torch.nn.init.normal_(critic.score.weight, std=0.5, generator=torch.Generator().manual_seed(0))
    prompts = [[BOS, 40 + i] for i in range(4)] + [[BOS, *range(60, 60 + 70 + i)] for i in range(4)]
    g = torch.Generator().manual_seed(2)
    rollout = generate(policy, prompts, pad_token_id=PAD, eos_token_id=EOS, max_new_tokens=5,
                       temperature=TEMPERATURE, generator=g)  # fmt: skip
    groups = forward_groups(rollout, range(8), max_rows=8)
    assert sorted(map(sorted, groups)) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert forward_groups(rollout, range(8), max_rows=3) and all(
        len(group) <= 3 for group in forward_groups(rollout, range(8), max_rows=3)
    )
    with torch.no_grad():
        logp = response_logprobs(policy, rollout, TEMPERATURE)  # one padded pass
        values = response_values(critic, rollout)
        torch.testing.assert_close(frozen_logprobs(policy, rollout, TEMPERATURE, batch_size=3), logp, rtol=0, atol=1e-5)
        torch.testing.assert_close(rollout_values(critic, rollout, batch_size=3), values, rtol=0, atol=1e-5)
    mask = rollout.response_mask.float()
    batch = PPOBatch(rollout=rollout, old_logprobs=logp + 0.2 * mask, old_values=values - 0.3 * mask,
                     advantages=torch.randn(mask.shape, generator=g) * mask, returns=values + mask)  # fmt: skip
    hp = hyperparameters()
    stats = accumulate_gradients(policy, critic, batch, hp)
    got = gradients(policy, critic)
    policy.zero_grad(), critic.zero_grad()
    loss, expected = by_hand(policy, critic, batch, hp)
    loss.backward()
    torch.testing.assert_close(stats, expected, rtol=1e-5, atol=1e-6)
    for a, b in zip(got, gradients(policy, critic), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


def test_pi_old_from_the_sampling_pass_gives_the_recomputed_loss_in_fp32():
    """The hf backend in fp32: log π_old taken from the rollout (`reuses_sampling_logprobs`) gives the step's
    statistics of log π_old recomputed by a full forward pass, to 1e-5."""
    policy, tokenizer = copy.deepcopy(tiny()[0]), tiny()[1]
    critic = critic_from_causal_lm(policy)
    hp = hyperparameters(max_new_tokens=8)
    backend = HFBackend.of(policy, tokenizer, hp)
    assert reuses_sampling_logprobs(backend, backend.compute)
    rollout = sample_rollout(backend, PROMPTS, hp, row_seeds=list(range(len(PROMPTS))))
    with torch.no_grad():
        values = response_values(critic, rollout)  # (B, A)
    advantages = torch.randn(rollout.response_mask.shape, generator=torch.Generator().manual_seed(3))
    stats = []
    for old in (rollout.logprobs, frozen_logprobs(policy, rollout, hp.temperature, batch_size=8)):
        batch = PPOBatch(rollout=rollout, old_logprobs=old, old_values=values,
                         advantages=advantages * rollout.response_mask, returns=values + advantages)  # fmt: skip
        models = copy.deepcopy(policy), copy.deepcopy(critic)
        stats.append(accumulate_gradients(*models, batch, hp))
    torch.testing.assert_close(stats[0], stats[1], rtol=0, atol=1e-5)
