"""End-to-end behaviour of the DPO loop on builtin:tiny-llama (a few seconds on a 2-core CPU)."""

import gc
import math
import weakref
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import trainers
import trainers.dpo
import trainers.run_setup
from tests.unit.trainers.trainer_fixtures import RecordingCallbacks, tiny
from trainers import DPOJob, ModelNotFoundError, NumericalError, TrainingData
from trainers.data.preference import collate_pairs, tokenize_pairs
from trainers.data.synthetic import uppercase_preference_rows
from trainers.models.checkpoint import MODEL_DIR, PROBE_TEXT, PROBE_VOCAB, STATE_FILE

# Settings that reliably teach builtin:tiny-llama the upper-case preference of the synthetic rows.
LEARNING = {"learning_rate": 1e-3, "max_steps": 30, "batch_size": 8}
METRIC_NAMES = {
    "train/loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
    "logps/chosen", "logps/rejected", "train/learning_rate", "train/grad_norm", "train/epoch", "train/num_tokens",
}  # fmt: skip


def dpo_job(seed=0, **hyperparameters):
    return DPOJob(base_model="builtin:tiny-llama", seed=seed, hyperparameters=hyperparameters)


@pytest.mark.trains
@pytest.mark.parametrize("seed, conversational", [(0, False), (1, True), (2, False)])
def test_dpo_learns_the_synthetic_preference(seed, conversational):
    rows = uppercase_preference_rows(256, seed=seed, conversational=conversational)
    callbacks = RecordingCallbacks()

    result = trainers.run(dpo_job(seed, **LEARNING), TrainingData(train=rows), callbacks)

    assert result.status == "completed" and result.step == 30
    steps = sorted(callbacks.metrics)
    assert steps == list(range(1, 31))
    first, last = callbacks.metrics[1], callbacks.metrics[30]
    assert set(first) == METRIC_NAMES
    assert first["train/loss"] == pytest.approx(math.log(2), abs=1e-5)  # policy == reference at step 1
    assert last["train/loss"] < 0.2
    assert all(callbacks.metrics[s]["rewards/accuracies"] > 0.9 for s in steps[-5:])
    assert last["rewards/margins"] > 1.0 and last["rewards/chosen"] > last["rewards/rejected"]
    assert result.metrics == last
    assert list(callbacks.checkpoints) == [30]  # the end is always saved


@pytest.mark.trains
def test_interrupted_and_resumed_run_matches_an_uninterrupted_one(tmp_path):
    # 20 rows in batches of 8: 3 steps per epoch (the last one partial), so 6 steps cross an
    # epoch boundary; warmup and accumulation make the optimizer and schedule state matter.
    rows = uppercase_preference_rows(20, seed=5)
    job = dpo_job(3, learning_rate=2e-3, max_steps=6, batch_size=8, gradient_accumulation_steps=2,
                  warmup_steps=2, weight_decay=0.1)  # fmt: skip
    straight = RecordingCallbacks()
    assert trainers.run(job, TrainingData(train=rows), straight).step == 6

    interrupted = RecordingCallbacks(tmp_path / "first", stop_after=3)
    result = trainers.run(job, TrainingData(train=rows), interrupted)
    assert (result.status, result.step) == ("stopped", 3)
    assert list(interrupted.checkpoints) == [3]
    saved, _ = interrupted.checkpoints[3]
    assert (saved / MODEL_DIR / "model.safetensors").is_file() and (saved / STATE_FILE).is_file()

    resumed = RecordingCallbacks(tmp_path / "second")
    result = trainers.run(job, TrainingData(train=rows), resumed, resume_from=saved)
    assert (result.status, result.step) == ("completed", 6)
    assert sorted(resumed.metrics) == [4, 5, 6]
    assert straight.total_steps == interrupted.total_steps == resumed.total_steps == [6]

    combined = interrupted.metrics | resumed.metrics
    assert sorted(combined) == sorted(straight.metrics) == [1, 2, 3, 4, 5, 6]
    for step, metrics in straight.metrics.items():
        assert combined[step] == pytest.approx(metrics, abs=1e-6), f"step {step}"
    assert straight.metrics[1]["train/learning_rate"] == pytest.approx(2e-3 / 3)  # warmup
    assert straight.metrics[4]["train/epoch"] == pytest.approx(4 / 3)
    # Steps 1-3 and 4-6 are an epoch each: every pair's two rows (prompt + chosen, prompt + rejected)
    # once per epoch, the count continued across the resume.
    hp = job.hyperparameters
    pairs = tokenize_pairs(rows, tiny()[1], max_length=hp.max_length, max_prompt_length=hp.max_prompt_length)
    epoch_tokens = collate_pairs(pairs, tiny()[1].pad_token_id).attention_mask.sum().item()
    assert [combined[s]["train/num_tokens"] for s in (3, 6)] == [epoch_tokens, 2 * epoch_tokens]


def test_stop_before_any_step_saves_nothing():
    callbacks = RecordingCallbacks(stop_after=0)
    result = trainers.run(dpo_job(max_steps=5), TrainingData(train=uppercase_preference_rows(8)), callbacks)
    assert (result.status, result.step) == ("stopped", 0)
    assert callbacks.checkpoints == {} and callbacks.metrics == {}


@pytest.mark.trains
def test_checkpoints_and_logs_follow_their_intervals_and_probe_matches_the_reloaded_model(tmp_path):
    callbacks = RecordingCallbacks(tmp_path)
    job = dpo_job(max_steps=5, batch_size=4, learning_rate=1e-3, checkpoint_every=2, log_every=2)
    data = TrainingData(train=uppercase_preference_rows(16), eval=uppercase_preference_rows(6, seed=9))

    trainers.run(job, data, callbacks)

    assert callbacks.total_steps == [5]
    assert sorted(callbacks.checkpoints) == [2, 4, 5]
    assert sorted(callbacks.metrics) == [2, 4, 5]  # logged every 2 steps, and at the last one
    directory, info = callbacks.checkpoints[5]
    assert info["metrics"] == callbacks.metrics[5]
    assert {"eval/loss", "eval/rewards/accuracies", "eval/rewards/margins"} <= set(info["metrics"])
    assert info["probe"]["text"] == PROBE_TEXT and len(info["probe"]["logits"]) == PROBE_VOCAB

    model = AutoModelForCausalLM.from_pretrained(directory / MODEL_DIR).eval()
    tokenizer = AutoTokenizer.from_pretrained(directory / MODEL_DIR)
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    with torch.no_grad():
        ids = tokenizer(PROBE_TEXT, return_tensors="pt")["input_ids"]
        logits = model(input_ids=ids).logits[0, -1, :PROBE_VOCAB]
    torch.testing.assert_close(logits, torch.tensor(info["probe"]["logits"]), rtol=0, atol=1e-6)
    # the probe changes as the model trains
    assert callbacks.checkpoints[2][1]["probe"]["logits"] != info["probe"]["logits"]


@pytest.mark.trains
def test_gradient_accumulation_does_not_change_the_result():
    rows = uppercase_preference_rows(24, seed=4)
    runs = []
    for accumulation in (1, 3):
        callbacks = RecordingCallbacks()
        job = dpo_job(max_steps=3, batch_size=6, learning_rate=1e-3, gradient_accumulation_steps=accumulation)
        trainers.run(job, TrainingData(train=rows), callbacks)
        runs.append(callbacks.metrics)
    for step in (1, 2, 3):
        assert runs[1][step] == pytest.approx(runs[0][step], rel=1e-4, abs=1e-5)


@pytest.mark.trains
def test_non_finite_loss_raises_naming_the_step(monkeypatch):
    calls = {"n": 0}
    real_loss = trainers.dpo.dpo_loss

    def loss_that_breaks_at_step_2(*args, **kwargs):
        losses, chosen, rejected = real_loss(*args, **kwargs)
        calls["n"] += 1
        return (losses * float("nan") if calls["n"] == 2 else losses), chosen, rejected

    monkeypatch.setattr(trainers.dpo, "dpo_loss", loss_that_breaks_at_step_2)
    callbacks = RecordingCallbacks()
    with pytest.raises(NumericalError, match="step 2") as info:
        trainers.run(dpo_job(max_steps=4), TrainingData(train=uppercase_preference_rows(16)), callbacks)
    assert info.value.step == 2
    assert sorted(callbacks.metrics) == [1]


def test_unknown_model_is_a_user_error_naming_it():
    with pytest.raises(ModelNotFoundError, match="builtin:gpt-17"):
        trainers.run(
            DPOJob(base_model="builtin:gpt-17"), TrainingData(train=uppercase_preference_rows(4)), RecordingCallbacks()
        )


@pytest.mark.trains
def test_truncated_pairs_are_counted_in_a_warning():
    rows = uppercase_preference_rows(6, response_length=40)
    callbacks = RecordingCallbacks()
    trainers.run(dpo_job(max_steps=1, max_length=24, max_prompt_length=16), TrainingData(train=rows), callbacks)
    warnings = [m for level, m in callbacks.events if level == "warning"]
    assert any(m.startswith("6 of 6 train pairs were truncated") for m in warnings), warnings


@pytest.mark.trains
@pytest.mark.parametrize(
    "loss", [{"loss_type": "ipo", "learning_rate": 3e-3}, {"loss_type": "hinge"}, {"label_smoothing": 0.1}]
)
def test_every_loss_of_the_family_learns_the_synthetic_preference(loss):
    callbacks = RecordingCallbacks()
    trainers.run(dpo_job(**(LEARNING | loss)), TrainingData(train=uppercase_preference_rows(256)), callbacks)
    assert all(callbacks.metrics[s]["rewards/accuracies"] > 0.9 for s in range(26, 31))
    assert callbacks.metrics[30]["train/loss"] < callbacks.metrics[1]["train/loss"]


@pytest.mark.trains
def test_eval_metrics_arrive_every_eval_every_steps_and_at_the_end_with_the_train_metrics():
    callbacks = RecordingCallbacks()
    job = dpo_job(max_steps=5, batch_size=4, eval_every=2, log_every=100, checkpoint_every=100)
    data = TrainingData(train=uppercase_preference_rows(16), eval=uppercase_preference_rows(5, seed=9))
    trainers.run(job, data, callbacks)
    assert sorted(callbacks.metrics) == [2, 4, 5]
    for metrics in callbacks.metrics.values():
        assert {"train/loss", "eval/loss", "eval/rewards/accuracies", "eval/logps/chosen"} <= set(metrics)


@pytest.mark.trains
@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_precomputed_and_on_the_fly_reference_give_the_same_run(monkeypatch, loss_type):
    rows, eval_rows = uppercase_preference_rows(24, seed=6), uppercase_preference_rows(7, seed=7)
    runs = {}
    for precompute in (True, False):
        callbacks = RecordingCallbacks()
        job = dpo_job(max_steps=4, batch_size=6, gradient_accumulation_steps=2, learning_rate=2e-3,
                      eval_every=2, loss_type=loss_type, precompute_ref_logprobs=precompute)  # fmt: skip
        if precompute:  # full fine-tuning: the pass reads the initial policy, no frozen copy is made
            monkeypatch.setattr(trainers.run_setup, "copy", SimpleNamespace(deepcopy=no_copy))
        trainers.run(job, TrainingData(train=rows, eval=eval_rows), callbacks)
        monkeypatch.undo()
        runs[precompute] = callbacks.metrics
    assert sorted(runs[True]) == sorted(runs[False]) == [1, 2, 3, 4]
    for step, metrics in runs[False].items():
        assert runs[True][step] == pytest.approx(metrics, abs=1e-5), f"step {step}"
    assert "eval/loss" in runs[True][2]


def no_copy(obj):
    raise AssertionError("the reference model was copied")


@pytest.mark.trains
def test_resumed_run_with_precomputed_reference_does_not_keep_the_base_model(monkeypatch, tmp_path):
    rows = uppercase_preference_rows(12, seed=2)
    job = dpo_job(max_steps=4, batch_size=4, learning_rate=1e-3)
    first = RecordingCallbacks(tmp_path, stop_after=2)
    trainers.run(job, TrainingData(train=rows), first)

    loaded = {}
    real_load = trainers.run_setup.load_policy

    def recording_load(ref, **kwargs):
        model, tokenizer = real_load(ref, **kwargs)
        loaded[str(ref)] = weakref.ref(model)
        return model, tokenizer

    class ChecksMemory(RecordingCallbacks):
        def on_metrics(self, step, metrics):
            gc.collect()
            self.base_alive = loaded["builtin:tiny-llama"]() is not None
            super().on_metrics(step, metrics)

    monkeypatch.setattr(trainers.run_setup, "load_policy", recording_load)
    resumed = ChecksMemory()
    trainers.run(job, TrainingData(train=rows), resumed, resume_from=first.checkpoints[2][0])
    assert set(loaded) == {"builtin:tiny-llama", str(first.checkpoints[2][0] / MODEL_DIR)}
    assert resumed.base_alive is False  # loaded for the reference pass, then dropped
    assert sorted(resumed.metrics) == [3, 4]
