"""The Bradley–Terry reward-model loop on builtin:tiny-llama (a few seconds on a 2-core CPU)."""

import json
import math

import pytest
import torch

import trainers
import trainers.reward_model
import trainers.run_setup
from tests.unit.trainers.trainer_fixtures import RecordingCallbacks, tiny
from trainers import ModelNotFoundError, NumericalError, RewardModelJob, TrainingData, UserError
from trainers.data.preference import collate_pairs, tokenize_pairs
from trainers.data.synthetic import uppercase_preference_rows
from trainers.models.checkpoint import MODEL_DIR, MODEL_INFO_FILE, STATE_FILE
from trainers.models.lora import apply_lora
from trainers.models.reward import load_reward_model, reward_stats, rewards, stats_sample
from trainers.ops.pairwise_losses import bradley_terry_loss
from trainers.spec.config import LoRAConfig

# Settings that teach builtin:tiny-llama the upper-case preference of the synthetic rows: held-out
# accuracy >= 0.98 on 12 seeds (plain and conversational rows, full weights and LoRA) after 20 steps.
LEARNING = {"learning_rate": 1e-3, "max_steps": 20, "batch_size": 8}
TRAIN_NAMES = {"train/loss", "train/accuracy", "train/margin", "train/reward_mean", "train/reward_std",
               "train/learning_rate", "train/grad_norm", "train/epoch", "train/num_tokens"}  # fmt: skip
EVAL_NAMES = {"eval/loss", "eval/accuracy", "eval/margin", "eval/reward_mean", "eval/reward_std"}


def reward_job(seed=0, lora=None, **hyperparameters):
    return RewardModelJob(base_model="builtin:tiny-llama", seed=seed, lora=lora, hyperparameters=hyperparameters)


@pytest.mark.trains
@pytest.mark.parametrize("seed, conversational", [(0, False), (1, True)])
def test_reward_model_learns_the_synthetic_preference(seed, conversational):
    data = TrainingData(
        train=uppercase_preference_rows(128, seed=seed, conversational=conversational),
        eval=uppercase_preference_rows(64, seed=seed + 1000, conversational=conversational),
    )
    callbacks = RecordingCallbacks()

    result = trainers.run(reward_job(seed, eval_every=10, **LEARNING), data, callbacks)

    assert (result.status, result.step) == ("completed", 20)
    assert sorted(callbacks.metrics) == list(range(1, 21))
    first, last = callbacks.metrics[1], callbacks.metrics[20]
    assert set(first) == TRAIN_NAMES
    assert set(callbacks.metrics[10]) == set(last) == TRAIN_NAMES | EVAL_NAMES
    assert first["train/loss"] == pytest.approx(math.log(2), abs=0.02)  # the fresh head barely separates
    assert last["eval/accuracy"] > 0.9 and last["eval/margin"] > 1.0
    assert last["train/loss"] < 0.2 and last["train/accuracy"] > 0.9
    assert last["train/reward_std"] > 0 and last["train/epoch"] == pytest.approx(20 / 16)
    assert result.metrics == last
    assert list(callbacks.checkpoints) == [20]
    model_info = callbacks.checkpoints[20][1]["model"]
    assert model_info["kind"] == "reward_model" and model_info["adapter"] is False
    assert model_info["base_model"] == "builtin:tiny-llama"


@pytest.mark.trains
def test_margin_and_centring_enter_the_loss_as_the_formula_says():
    rows = uppercase_preference_rows(6, seed=2)
    margins = [0.5, 0.0, 2.0, -1.0, 0.25, 0.0]
    for row, margin in zip(rows, margins, strict=True):
        if margin:
            row["margin"] = margin  # rows without one count as 0
    eta = 0.3
    model, tokenizer = load_reward_model("builtin:tiny-llama")
    pairs = tokenize_pairs(rows, tokenizer, max_length=512, max_prompt_length=256)
    batch = collate_pairs(pairs, tokenizer.pad_token_id)  # (12, T): the step's one batch

    def by_hand(margin, coefficient):
        model.zero_grad()
        r = rewards(model, batch.input_ids, batch.attention_mask)  # (12,)
        loss = bradley_terry_loss(r[:6], r[6:], margin, coefficient).mean()
        loss.backward()
        norm = torch.cat([p.grad.flatten() for p in model.parameters()]).norm()
        return loss.item(), norm.item()

    for margin, coefficient in ((None, 0.0), (torch.tensor(margins), 0.0), (torch.tensor(margins), eta)):
        callbacks = RecordingCallbacks()
        data = TrainingData(train=rows if margin is not None else uppercase_preference_rows(6, seed=2))
        job = reward_job(max_steps=1, batch_size=6, center_rewards_coefficient=coefficient)
        trainers.run(job, data, callbacks)
        loss, norm = by_hand(margin, coefficient)
        assert callbacks.metrics[1]["train/loss"] == pytest.approx(loss, rel=1e-5)
        assert callbacks.metrics[1]["train/grad_norm"] == pytest.approx(norm, rel=1e-4)
    plain, _ = by_hand(None, 0.0)
    with_margin, _ = by_hand(torch.tensor(margins), 0.0)
    assert with_margin != pytest.approx(plain, abs=1e-3)  # the margins do matter on this batch


@pytest.mark.trains
def test_gradient_accumulation_does_not_change_the_result():
    rows = uppercase_preference_rows(24, seed=4)
    for row, margin in zip(rows, range(24), strict=True):
        row["margin"] = (margin % 3) / 2
    runs = []
    for accumulation in (1, 2):
        callbacks = RecordingCallbacks()
        job = reward_job(max_steps=3, batch_size=8, learning_rate=1e-3, gradient_accumulation_steps=accumulation,
                         center_rewards_coefficient=0.01)  # fmt: skip
        trainers.run(job, TrainingData(train=rows), callbacks)
        runs.append(callbacks)
    for step in (1, 2, 3):
        assert runs[1].metrics[step] == pytest.approx(runs[0].metrics[step], rel=1e-4, abs=1e-5)
    model_infos = [run.checkpoints[3][1]["model"] for run in runs]
    assert model_infos[1]["reward_mean"] == pytest.approx(model_infos[0]["reward_mean"], rel=1e-4, abs=1e-6)


@pytest.mark.trains
def test_checkpoint_records_reward_statistics_of_a_fixed_training_sample(tmp_path):
    rows = uppercase_preference_rows(16, seed=6)
    callbacks = RecordingCallbacks(tmp_path)
    job = reward_job(seed=7, max_steps=4, batch_size=4, learning_rate=1e-3, checkpoint_every=2, reward_stats_rows=5)
    data = TrainingData(train=rows, eval=uppercase_preference_rows(4, seed=8))

    trainers.run(job, data, callbacks)

    assert sorted(callbacks.checkpoints) == [2, 4]
    assert set(callbacks.metrics[2]) == TRAIN_NAMES | EVAL_NAMES  # evaluated at checkpoints
    directory, info = callbacks.checkpoints[4]
    written = json.loads((directory / MODEL_DIR / MODEL_INFO_FILE).read_text())
    assert written == info["model"]
    assert written["kind"] == "reward_model" and written["adapter"] is False
    assert math.isfinite(written["reward_mean"]) and written["reward_std"] > 0

    model, tokenizer = load_reward_model(directory / MODEL_DIR)
    pairs = tokenize_pairs(rows, tokenizer, max_length=512, max_prompt_length=256)
    sample = [pairs[i] for i in stats_sample(len(pairs), 5, seed=7)]
    mean, std = reward_stats(model, sample, tokenizer.pad_token_id, batch_size=3, device=torch.device("cpu"))
    assert written["reward_mean"] == pytest.approx(mean, abs=1e-5)
    assert written["reward_std"] == pytest.approx(std, abs=1e-5)
    assert callbacks.checkpoints[2][1]["model"]["reward_mean"] != written["reward_mean"]  # taken at each checkpoint


@pytest.mark.trains
def test_lora_trains_only_the_adapters_and_the_score_head(monkeypatch):
    trained = {}
    real_load = trainers.run_setup.load_trainable_model

    def keep_the_model(*args, **kwargs):
        trained["model"], tokenizer = real_load(*args, **kwargs)
        return trained["model"], tokenizer

    monkeypatch.setattr(trainers.run_setup, "load_trainable_model", keep_the_model)
    lora = LoRAConfig(r=4, dropout=0.0)
    callbacks = RecordingCallbacks()
    trainers.run(reward_job(lora=lora, max_steps=3, batch_size=4, learning_rate=1e-2),
                 TrainingData(train=uppercase_preference_rows(12)), callbacks)  # fmt: skip

    torch.manual_seed(0)  # the job's seed: the same initial adapters
    initial = apply_lora(load_reward_model("builtin:tiny-llama")[0], lora, task="seq_cls")
    before = dict(initial.named_parameters())
    changed = {name for name, p in trained["model"].named_parameters() if not torch.equal(p, before[name])}
    trainable = {name for name, p in trained["model"].named_parameters() if p.requires_grad}
    assert changed and changed <= trainable
    assert all("lora_" in name or ".score.modules_to_save." in name for name in trainable)
    assert any(".score.modules_to_save." in name for name in changed)
    assert any("lora_B" in name for name in changed)
    assert callbacks.checkpoints[3][1]["model"]["adapter"] is True


@pytest.mark.trains
@pytest.mark.parametrize("lora, weights", [(None, "model.safetensors"), ({"r": 4}, "adapter_model.safetensors")])
def test_interrupted_and_resumed_run_matches_an_uninterrupted_one(tmp_path, lora, weights):
    # 20 rows in batches of 8: 3 steps per epoch (the last one partial), so 6 steps cross an
    # epoch boundary; warmup, accumulation and margins make the optimizer state and data matter,
    # and LoRA's dropout the RNG state.
    rows = uppercase_preference_rows(20, seed=5)
    for i, row in enumerate(rows):
        row["margin"] = i / 10
    job = reward_job(3, lora, learning_rate=2e-3, max_steps=6, batch_size=8, gradient_accumulation_steps=2,
                     warmup_steps=2, weight_decay=0.1, center_rewards_coefficient=0.05)  # fmt: skip
    data = TrainingData(train=rows, eval=uppercase_preference_rows(5, seed=6))
    straight = RecordingCallbacks()
    assert trainers.run(job, data, straight).step == 6

    interrupted = RecordingCallbacks(tmp_path / "first", stop_after=3)
    result = trainers.run(job, data, interrupted)
    assert (result.status, result.step) == ("stopped", 3)
    assert list(interrupted.checkpoints) == [3]  # a stop saves the progress
    saved, _ = interrupted.checkpoints[3]
    assert (saved / MODEL_DIR / weights).is_file() and (saved / STATE_FILE).is_file()

    resumed = RecordingCallbacks(tmp_path / "second")
    result = trainers.run(job, data, resumed, resume_from=saved)
    assert (result.status, result.step) == ("completed", 6)
    assert sorted(resumed.metrics) == [4, 5, 6]
    assert straight.total_steps == interrupted.total_steps == resumed.total_steps == [6]

    combined = interrupted.metrics | resumed.metrics
    assert sorted(combined) == sorted(straight.metrics) == [1, 2, 3, 4, 5, 6]
    for step, metrics in straight.metrics.items():
        assert combined[step] == pytest.approx(metrics, abs=1e-6), f"step {step}"
    assert straight.checkpoints[6][1]["model"] == pytest.approx(resumed.checkpoints[6][1]["model"], abs=1e-6)
    assert straight.metrics[1]["train/learning_rate"] == pytest.approx(2e-3 / 3)  # warmup
    # Steps 1-3 and 4-6 are an epoch each: every pair once per epoch, its prompt computed once beside
    # both responses (the shared-prompt rows builtin:tiny-llama reads), the count continued across the resume.
    hp = job.hyperparameters
    pairs = tokenize_pairs(rows, tiny()[1], max_length=hp.max_length, max_prompt_length=hp.max_prompt_length)
    (rows_of_pairs,) = collate_pairs(pairs, tiny()[1].pad_token_id, shared_prompt=True).shared
    epoch_tokens = (rows_of_pairs.input_ids != tiny()[1].pad_token_id).sum().item()
    assert [combined[s]["train/num_tokens"] for s in (3, 6)] == [epoch_tokens, 2 * epoch_tokens]


def test_stop_before_any_step_saves_nothing():
    callbacks = RecordingCallbacks(stop_after=0)
    result = trainers.run(reward_job(max_steps=5), TrainingData(train=uppercase_preference_rows(8)), callbacks)
    assert (result.status, result.step) == ("stopped", 0)
    assert callbacks.checkpoints == {} and callbacks.metrics == {}


@pytest.mark.trains
def test_non_finite_loss_raises_naming_the_step(monkeypatch):
    calls = {"n": 0}
    real_loss = trainers.reward_model.bradley_terry_loss

    def loss_that_breaks_at_step_2(*args, **kwargs):
        calls["n"] += 1
        losses = real_loss(*args, **kwargs)
        return losses * float("nan") if calls["n"] == 2 else losses

    monkeypatch.setattr(trainers.reward_model, "bradley_terry_loss", loss_that_breaks_at_step_2)
    callbacks = RecordingCallbacks()
    with pytest.raises(NumericalError, match="step 2") as info:
        trainers.run(reward_job(max_steps=4), TrainingData(train=uppercase_preference_rows(16)), callbacks)
    assert info.value.step == 2
    assert sorted(callbacks.metrics) == [1]


def test_unknown_model_is_a_user_error_naming_it():
    with pytest.raises(ModelNotFoundError, match="builtin:gpt-17"):
        trainers.run(
            RewardModelJob(base_model="builtin:gpt-17"), TrainingData(train=uppercase_preference_rows(4)),
            RecordingCallbacks(),
        )  # fmt: skip


@pytest.mark.parametrize("margin", ["1.0", True, float("nan"), [1]])
def test_a_margin_that_is_not_a_number_names_its_row(margin):
    rows = uppercase_preference_rows(4)
    rows[2]["margin"] = margin
    with pytest.raises(UserError, match="train row 2: 'margin'"):
        trainers.run(reward_job(max_steps=1), TrainingData(train=rows), RecordingCallbacks())
