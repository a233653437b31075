"""PPO runs on builtin:tiny-llama: learning a grader's reward on CPU, resume, stop, the KL controller,
a diverging critic, PPO-ptx, and a LoRA critic started from a reward model."""

import math
import re

import pytest
import torch

import trainers
import trainers.ppo
from tests.unit.trainers.trainer_fixtures import RecordingCallbacks, tiny
from trainers import NumericalError, PPOJob, TrainingData, UserError
from trainers.data.prompts import tokenize_prompts
from trainers.loop import EXTRA_STATE_FILE, load_run_state
from trainers.models.checkpoint import MODEL_DIR, read_model_info
from trainers.models.reward import load_reward_model
from trainers.models.value import CRITIC_DIR
from trainers.rl.ptx import PtxData

# The same prompts and reward as GRPO's tests: an untrained tiny-llama is close to uniform over its
# 262 tokens, so about 6% of its 16-token completions contain an "e".
PROMPTS = [{"prompt": p} for p in ["Hello", "Say something", "Write", "Go", "Tell me", "Once", "Why", "Hi there"]]
CONTAINS_E = {"type": "string_check", "name": "has_e", "operation": "contains", "reference": "e"}
LOWERCASE = {"type": "string_check", "name": "lowercase", "operation": "regex", "reference": "[a-z]"}  # about half
# The learning settings (also the service's end-to-end PPO job): rollouts of 32 prompts × one
# 16-token completion, 2 epochs × 2 minibatches of 16 = 4 optimizer steps per rollout, 12 rollouts;
# β = 0.05 (fixed) against a frozen copy of the base model; the critic starts from the policy.
LEARNING = {"learning_rate": 1e-2, "critic_learning_rate": 3e-3, "max_steps": 48, "rollout_batch_size": 32,
            "batch_size": 16, "ppo_epochs": 2, "max_new_tokens": 16, "max_prompt_length": 16,
            "max_length": 64}  # fmt: skip
SMALL = {"learning_rate": 1e-2, "critic_learning_rate": 3e-3, "rollout_batch_size": 8, "batch_size": 4,
         "ppo_epochs": 2, "max_new_tokens": 6, "max_prompt_length": 16, "max_length": 64}  # fmt: skip


@pytest.fixture(autouse=True)
def one_intra_op_thread():
    """tiny-llama's matrices are too small to gain from intra-op threads; on a busy machine the
    threads' synchronisation costs more than the work (a learning run: 2 s on one thread, 15–25 s
    on two at a load of 4 on 2 cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def ppo_job(seed=0, reward=CONTAINS_E, lora=None, base=SMALL, **hp):
    return PPOJob(base_model="builtin:tiny-llama", seed=seed, reward=reward, lora=lora, hyperparameters=base | hp)


def rollout_starts(metrics, steps_per_rollout):
    return [s for s in sorted(metrics) if (s - 1) % steps_per_rollout == 0]


@pytest.mark.trains
@pytest.mark.parametrize("seed", [0, 1])
def test_ppo_learns_to_write_the_rewarded_letter(seed):
    # Over seeds 0–19 the first rollout scores 0–0.12 and the mean of the last three 0.67–0.92.
    callbacks = RecordingCallbacks()
    result = trainers.run(ppo_job(seed, base=LEARNING), TrainingData(train=PROMPTS), callbacks)
    assert (result.status, result.step) == ("completed", 48)
    metrics = callbacks.metrics
    scores = [metrics[s]["objective/scores"] for s in rollout_starts(metrics, 4)]  # one per rollout
    before, after = scores[0], sum(scores[-3:]) / 3
    assert before < 0.15 and after > 0.6 and after - before > 0.45, scores
    # π = π_old = π_ref; π_old comes from the sampling pass (cached attention): equal to float rounding
    assert metrics[1]["objective/kl"] == pytest.approx(0, abs=1e-6) and metrics[1]["policy/clipfrac"] == 0
    assert metrics[48]["objective/kl"] > 1 and metrics[48]["policy/entropy"] < metrics[1]["policy/entropy"]
    assert {m["objective/kl_coef"] for m in metrics.values()} == {0.05}
    assert metrics[48]["objective/rlhf_reward"] == pytest.approx(
        metrics[48]["objective/scores"] - 0.05 * metrics[48]["objective/kl"], abs=1e-5
    )
    expected = {"objective/kl", "objective/kl_coef", "objective/scores", "objective/rlhf_reward",
                "objective/non_score_reward", "policy/approx_kl", "policy/clipfrac", "policy/entropy",
                "policy/pg_loss", "val/vf_loss", "val/clipfrac", "val/explained_variance", "reward/has_e",
                "completions/mean_length", "completions/eos_fraction", "train/loss", "train/learning_rate",
                "train/grad_norm", "critic/learning_rate", "critic/grad_norm"}  # fmt: skip
    assert expected <= set(metrics[48])


@pytest.mark.trains
@pytest.mark.parametrize("lora", [None, {"r": 4, "dropout": 0.0}])
def test_an_interrupted_and_resumed_run_matches_an_uninterrupted_one(tmp_path, lora):
    # 2 minibatches × 2 epochs = 4 steps per rollout, micro-batched, warmup, an adaptive β: the
    # stop comes between rollouts; the resumed run restores policy, critic, both optimizers and β.
    job = ppo_job(3, reward=LOWERCASE, lora=lora, max_steps=12, gradient_accumulation_steps=2, warmup_steps=2,
                  adaptive_kl=True, target_kl=1.0, kl_horizon=100, checkpoint_every=100)  # fmt: skip
    data = TrainingData(train=PROMPTS)
    straight = RecordingCallbacks()
    assert trainers.run(job, data, straight).step == 12

    interrupted = RecordingCallbacks(tmp_path / "first", stop_after=3)
    result = trainers.run(job, data, interrupted)
    assert (result.status, result.step) == ("stopped", 4)  # polled between rollouts
    saved, info = interrupted.checkpoints[4]
    assert info["model"] == {"kind": "causal_lm", "adapter": lora is not None, "base_model": "builtin:tiny-llama"}
    assert read_model_info(saved / MODEL_DIR)["kind"] == "causal_lm"
    assert (saved / CRITIC_DIR / ("adapter_config.json" if lora else "config.json")).is_file()
    assert not (saved / MODEL_DIR / CRITIC_DIR).exists() and (saved / EXTRA_STATE_FILE).is_file()
    assert load_run_state(saved)["extra"]["kl_controller"]["value"] == straight.metrics[5]["objective/kl_coef"]

    resumed = RecordingCallbacks(tmp_path / "second")
    result = trainers.run(job, data, resumed, resume_from=saved)
    assert (result.status, result.step) == ("completed", 12)
    assert sorted(resumed.metrics) == list(range(5, 13))
    for step in range(5, 13):
        assert resumed.metrics[step] == straight.metrics[step], step
    assert resumed.checkpoints[12][1]["probe"] == straight.checkpoints[12][1]["probe"]
    # Each rollout holds every prompt once, and its 4 steps read each sequence (prompt + response) twice.
    prompt_tokens = sum(len(p.ids) for p in tokenize_prompts(PROMPTS, tiny()[1], max_prompt_length=16))
    total = 0
    for end in (4, 8, 12):
        total += 2 * (prompt_tokens + len(PROMPTS) * straight.metrics[end]["completions/mean_length"])
        assert straight.metrics[end]["train/num_tokens"] == pytest.approx(total, abs=1e-3), end


@pytest.mark.trains
def test_adaptive_kl_coefficient_moves_towards_the_target():
    """β ← β·(1 + clip(KL / KL_target − 1, ±0.2)·B / horizon) after each rollout (Ziegler et al. 2019)."""
    callbacks = RecordingCallbacks()
    job = ppo_job(reward=LOWERCASE, max_steps=20, learning_rate=3e-2, kl_coef=0.1, adaptive_kl=True, target_kl=2.0,
                  kl_horizon=40)  # fmt: skip
    trainers.run(job, TrainingData(train=PROMPTS), callbacks)
    rollouts = [callbacks.metrics[s] for s in rollout_starts(callbacks.metrics, 4)]
    moves = []
    for before, after in zip(rollouts, rollouts[1:], strict=False):
        error = min(max(before["objective/kl"] / 2.0 - 1, -0.2), 0.2)
        assert after["objective/kl_coef"] == pytest.approx(before["objective/kl_coef"] * (1 + error * 8 / 40))
        moves.append((before["objective/kl"] > 2.0, after["objective/kl_coef"] > before["objective/kl_coef"]))
    assert all(above == rose for above, rose in moves)  # up when the KL was above its target, down below
    assert {above for above, _ in moves} == {False, True}  # the first rollout's KL is 0; later ones exceed 2
    # Each rollout shows 4 of its completions at its last step, each with the score it was trained on.
    assert sorted(callbacks.samples) == [4, 8, 12, 16, 20]
    for rows in callbacks.samples.values():
        assert len(rows) == 4 and all("kl" in row for row in rows)
        for row in rows:
            assert row["reward"] == row["reward/lowercase"] == float(re.search("[a-z]", row["completion"]) is not None)


def test_stop_before_any_step_saves_nothing():
    stopped = RecordingCallbacks(stop_after=0)
    result = trainers.run(ppo_job(max_steps=4), TrainingData(train=PROMPTS), stopped)
    assert (result.status, result.step, stopped.checkpoints) == ("stopped", 0, {})


def test_a_diverging_critic_stops_the_run_with_a_numerical_error(monkeypatch):
    real = trainers.ppo.initial_critic

    def poisoned(*args, **kwargs):
        critic = real(*args, **kwargs)
        torch.nn.init.constant_(critic.score.weight, float("nan"))
        return critic

    monkeypatch.setattr(trainers.ppo, "initial_critic", poisoned)
    callbacks = RecordingCallbacks()
    with pytest.raises(NumericalError, match="non-finite loss at step 1") as info:
        trainers.run(ppo_job(max_steps=4), TrainingData(train=PROMPTS), callbacks)
    assert info.value.step == 1 and callbacks.metrics == {}


@pytest.mark.trains
def test_ptx_mixes_a_language_modelling_loss_into_every_step():
    texts = [{"text": t} for t in ["the quick brown fox", "jumps over the lazy dog", "hello world"]]
    callbacks = RecordingCallbacks()
    trainers.run(ppo_job(max_steps=4, ptx_coef=0.5), TrainingData(train=PROMPTS, ptx=texts), callbacks)
    plain = RecordingCallbacks()
    trainers.run(ppo_job(max_steps=1), TrainingData(train=PROMPTS), plain)
    first, without = callbacks.metrics[1], plain.metrics[1]
    assert math.log(262) - 1 < first["ptx/loss"] < math.log(262) + 1  # a near-uniform model's NLL per token
    assert first["train/loss"] == pytest.approx(without["train/loss"] + 0.5 * first["ptx/loss"], rel=1e-5)
    ptx = PtxData.from_rows(texts, tiny()[1], max_length=64, batch_size=4, seed=0)  # a step of 4: the 3 texts
    assert first["train/num_tokens"] == without["train/num_tokens"] + sum(len(s) for s in ptx.step_rows(1))
    assert callbacks.metrics[4]["ptx/loss"] < first["ptx/loss"]  # 4 steps of the 3 texts
    with pytest.raises(UserError, match="needs text rows") as info:
        trainers.run(ppo_job(max_steps=1, ptx_coef=0.5), TrainingData(train=PROMPTS), RecordingCallbacks())
    assert info.value.param == "ptx"


@pytest.mark.trains
def test_a_lora_critic_from_the_reward_model_with_evaluation(tmp_path):
    reward_model, tokenizer = load_reward_model("builtin:tiny-llama")
    reward_model.save_pretrained(tmp_path / "rm")
    tokenizer.save_pretrained(tmp_path / "rm")
    job = PPOJob(
        base_model="builtin:tiny-llama", lora={"r": 4, "dropout": 0.0},
        reward={"type": "model", "checkpoint_id": "rm", "normalize": False},
        reward_model_dirs={"rm": str(tmp_path / "rm")},
        hyperparameters=SMALL | {"max_steps": 4, "value_model": "reward_model", "eval_every": 4},
    )  # fmt: skip
    callbacks = RecordingCallbacks(tmp_path / "run")
    result = trainers.run(job, TrainingData(train=PROMPTS, eval=PROMPTS[:3]), callbacks)
    assert result.status == "completed"
    metrics = callbacks.metrics[4]
    assert all(math.isfinite(v) for v in metrics.values())
    assert {"eval/reward/mean", "reward/model", "val/explained_variance"} <= set(metrics)
    critic_dir = callbacks.checkpoints[4][0] / CRITIC_DIR
    assert (critic_dir / "adapter_config.json").is_file()
