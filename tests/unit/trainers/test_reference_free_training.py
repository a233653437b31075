"""SimPO and ORPO in the DPO loop: no reference at all, length-normalised statistics, learning on builtin:tiny-llama."""

import math

import pytest
import torch

import trainers
import trainers.dpo
import trainers.run_setup
from tests.unit.trainers.trainer_fixtures import RecordingCallbacks
from trainers import DPOJob, ORPOJob, TrainingData
from trainers.data.preference import collate_pairs, tokenize_pairs
from trainers.data.synthetic import uppercase_preference_rows
from trainers.dpo import pair_losses_and_stats, train_metrics
from trainers.models.tiny import build_tiny_llama
from trainers.ops.logprobs import sequence_logprobs
from trainers.spec.config import DPOHyperparameters, ORPOHyperparameters


def _dpo(**hp):
    return DPOJob(base_model="builtin:tiny-llama", hyperparameters=hp)


REFERENCE_FREE_JOBS = {
    "simpo": lambda **hp: _dpo(loss_type="simpo", **hp),
    "simpo_on_the_fly": lambda **hp: _dpo(loss_type="simpo", precompute_ref_logprobs=False, **hp),
    "dpo_orpo": lambda **hp: _dpo(loss_type="orpo", **hp),
    "orpo": lambda **hp: ORPOJob(base_model="builtin:tiny-llama", hyperparameters=hp),
}


def test_simpo_and_orpo_statistics_are_per_token_means_and_need_no_reference():
    policy, tokenizer = build_tiny_llama()
    rows = uppercase_preference_rows(3, seed=1)
    pairs = tokenize_pairs(rows, tokenizer, max_length=64, max_prompt_length=32)
    batch = collate_pairs(pairs, tokenizer.pad_token_id)
    with torch.no_grad():
        _, totals = sequence_logprobs(policy, batch.input_ids, batch.attention_mask, batch.loss_mask)  # (2B,)
        lengths = torch.tensor([len(p.chosen_ids) for p in pairs] + [len(p.rejected_ids) for p in pairs])
        means = totals / lengths  # (2B,) every response token is scored, the prompt's last predicts the first
        chosen, rejected = means[:3].tolist(), means[3:].tolist()

        simpo = DPOHyperparameters(loss_type="simpo", beta=2.0, simpo_gamma=0.5)
        losses, stats = pair_losses_and_stats(policy, batch, None, simpo)
        orpo = ORPOHyperparameters(beta=0.1)
        orpo_losses, orpo_stats = pair_losses_and_stats(policy, batch, None, orpo)

    for i, (c, r) in enumerate(zip(chosen, rejected, strict=True)):
        assert losses[i].item() == pytest.approx(math.log(1 + math.exp(-(2.0 * (c - r) - 0.5))), abs=1e-5)
        log_odds = (c - math.log(-math.expm1(c))) - (r - math.log(-math.expm1(r)))
        assert orpo_losses[i].item() == pytest.approx(-c + 0.1 * math.log(1 + math.exp(-log_odds)), abs=1e-5)
    named = dict(zip(train_metrics("simpo"), stats, strict=True))
    assert named["logps/chosen"].tolist() == pytest.approx(chosen, abs=1e-6)
    assert named["rewards/rejected"].tolist() == pytest.approx([2.0 * r for r in rejected], abs=1e-6)
    named = dict(zip(train_metrics("orpo"), orpo_stats, strict=True))
    assert named["train/nll_loss"].tolist() == pytest.approx([-c for c in chosen], abs=1e-6)
    assert named["rewards/chosen"].tolist() == pytest.approx([0.1 * c for c in chosen], abs=1e-6)
    assert set(train_metrics("orpo")) - set(train_metrics("simpo")) == {
        "train/nll_loss", "train/log_odds_ratio", "train/log_odds_chosen"}


def _never(*args, **kwargs):
    raise AssertionError("the reference was read")


@pytest.mark.trains
@pytest.mark.parametrize("name", sorted(REFERENCE_FREE_JOBS))
def test_no_reference_model_is_built_and_no_reference_logprobs_are_computed(monkeypatch, name):
    monkeypatch.setattr(trainers.run_setup, "reference_policy", _never)  # builds (or names) π_ref
    monkeypatch.setattr(trainers.dpo.Reference, "precompute", _never)  # the table of reference log-probs
    monkeypatch.setattr(trainers.dpo, "reference_sequence_logprobs", _never)  # π_ref on every batch
    callbacks = RecordingCallbacks()
    job = REFERENCE_FREE_JOBS[name](max_steps=2, batch_size=4, eval_every=1, learning_rate=1e-3)
    data = TrainingData(train=uppercase_preference_rows(8), eval=uppercase_preference_rows(3, seed=4))

    result = trainers.run(job, data, callbacks)

    assert (result.status, result.step) == ("completed", 2)
    assert {"train/loss", "eval/loss", "rewards/margins"} <= set(callbacks.metrics[2])
    assert not any("reference" in message for _, message in callbacks.events)


@pytest.mark.trains
def test_the_patches_of_the_reference_test_catch_a_reference_reading_loss(monkeypatch):
    monkeypatch.setattr(trainers.run_setup, "reference_policy", _never)
    job = DPOJob(base_model="builtin:tiny-llama", hyperparameters={"max_steps": 1, "batch_size": 4})
    with pytest.raises(AssertionError, match="the reference was read"):
        trainers.run(job, TrainingData(train=uppercase_preference_rows(4)))


@pytest.mark.trains
def test_simpo_learns_the_synthetic_preference():
    callbacks = RecordingCallbacks()
    job = REFERENCE_FREE_JOBS["simpo"](learning_rate=1e-3, max_steps=30, batch_size=8)
    trainers.run(job, TrainingData(train=uppercase_preference_rows(256)), callbacks)
    first, last = callbacks.metrics[1], callbacks.metrics[30]
    # Untrained, chosen and rejected are equally likely per token: z ≈ −γ, loss ≈ log(1 + e^γ).
    assert first["train/loss"] == pytest.approx(math.log(1 + math.exp(0.5)), abs=0.1)
    assert last["train/loss"] < 0.5 * first["train/loss"]
    assert all(callbacks.metrics[s]["rewards/accuracies"] > 0.9 for s in range(26, 31))
    assert last["rewards/margins"] > 0.5 + first["rewards/margins"]  # past the target margin γ


@pytest.mark.trains
@pytest.mark.parametrize("name", ["orpo", "dpo_orpo"])
def test_orpo_learns_the_synthetic_preference_and_the_chosen_responses(name):
    callbacks = RecordingCallbacks()
    job = REFERENCE_FREE_JOBS[name](learning_rate=3e-3, max_steps=30, batch_size=8)  # λ = 0.1, the default
    trainers.run(job, TrainingData(train=uppercase_preference_rows(256)), callbacks)
    first, last = callbacks.metrics[1], callbacks.metrics[30]
    # The SFT term learns the chosen responses (from ~5.6 nats a token to ~3.3, their entropy), the
    # odds-ratio term separates them from the rejected ones (log odds ratio from ~0 to ~5.5).
    assert last["train/nll_loss"] < first["train/nll_loss"] - 1.5
    assert last["train/log_odds_chosen"] > first["train/log_odds_chosen"] + 3.0
    assert last["train/log_odds_ratio"] > first["train/log_odds_ratio"] + 0.3  # log σ(ratio) towards 0
    assert all(callbacks.metrics[s]["rewards/accuracies"] > 0.9 for s in range(26, 31))
    assert last["train/loss"] < first["train/loss"] - 1.5
