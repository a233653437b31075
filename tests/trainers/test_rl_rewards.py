"""Rewards of PPO/GRPO completions: graders, reward-model checkpoints, the missing-EOS penalty, grader errors."""

import pytest
import torch

from trainer_fixtures import RecordingCallbacks, tiny
from trainers.checkpoint import write_model_info
from trainers.config import GRPOJob
from trainers.errors import UserError
from trainers.rl_rewards import MAX_ERROR_EVENTS, RewardComputer, decode_completions
from trainers.rollout import Rollout
from trainers.scoring import score

HAS_A = {"type": "string_check", "name": "has_a", "operation": "contains", "reference": "a"}
ANSWER = {"type": "string_check", "name": "answer", "operation": "eq", "reference": "{{item.answer}}", "weight": 2.0}
STATS = {"reward_mean": 0.25, "reward_std": 2.0}


def rollout_of(texts, ended_with_eos):
    """A rollout whose responses are `texts` (EOS appended where they ended), right-padded."""
    _, tokenizer = tiny()
    rows = [tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] * e
            for t, e in zip(texts, ended_with_eos, strict=True)]  # fmt: skip
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)], mask[i, : len(r)] = torch.tensor(r), 1
    prompt = torch.full((len(rows), 1), tokenizer.bos_token_id)
    return Rollout(prompt_ids=prompt, prompt_mask=torch.ones_like(prompt), response_ids=ids, response_mask=mask,
                   logprobs=torch.zeros(ids.shape), ended_with_eos=torch.tensor(ended_with_eos, dtype=torch.bool),
                   response_lengths=mask.sum(1), temperature=1.0)  # fmt: skip


def computer(reward, callbacks=None, **job):
    job = GRPOJob(base_model="builtin:tiny-llama", reward=reward, **job)
    callbacks = callbacks or RecordingCallbacks()
    return RewardComputer.from_job(job, device=torch.device("cpu"), on_event=callbacks.on_event)


@pytest.fixture(scope="module")
def reward_model_dir(tmp_path_factory):
    """The builtin reward model saved as a reward-model checkpoint with reward statistics."""
    from trainers.reward_model import load_reward_model

    directory = tmp_path_factory.mktemp("rm")
    model, tokenizer = load_reward_model("builtin:tiny-llama")
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    write_model_info(directory, {"kind": "reward_model", "adapter": False, "base_model": "builtin:tiny-llama", **STATS})
    return directory


def test_completions_are_decoded_without_special_tokens():
    _, tokenizer = tiny()
    assert decode_completions(tokenizer, rollout_of(["abc", "x"], [True, False])) == ["abc", "x"]


def test_graders_score_each_completion_against_its_row_and_truncation_is_penalised():
    rewarder = computer({"type": "multi", "name": "r", "graders": [HAS_A, ANSWER]},
                        hyperparameters={"missing_eos_penalty": 0.5})  # fmt: skip
    texts = ["a cat", "dog", "yes", "banana"]
    items = [{"prompt": "p", "answer": "a cat"}, {"prompt": "p", "answer": "x"}] * 2
    scores = rewarder.score(items, texts, rollout_of(texts, [True, True, True, False]))
    assert scores.per_grader["has_a"].tolist() == [1, 0, 0, 1]
    assert scores.per_grader["answer"].tolist() == [1, 0, 0, 0]
    assert scores.rewards.tolist() == [3.0, 0.0, 0.0, 0.5]  # 1 + 2·1; banana: 1 − 0.5 for the missing EOS
    assert scores.errors == [] and scores.rows_with_errors == 0


def test_reward_model_scores_are_those_of_its_scoring_and_normalised_with_its_statistics(reward_model_dir):
    model = {"type": "model", "name": "rm", "checkpoint_id": "ckpt"}
    spec = {"type": "multi", "name": "r", "graders": [model, {**HAS_A, "weight": 10.0}]}
    callbacks = RecordingCallbacks()
    rewarder = computer(spec, callbacks, reward_model_dirs={"ckpt": str(reward_model_dir)})
    texts = ["a b", "ccc", "", "aaaa"]
    items = [{"prompt": "hello"}, {"prompt": [{"role": "user", "content": "hi"}]}] * 2
    scores = rewarder.score(items, texts, rollout_of(texts, [True] * 4))
    pairs = [{"prompt": i["prompt"], "response": t} for i, t in zip(items, texts, strict=True)]
    expected = score(reward_model_dir, pairs)
    normalized = torch.tensor([e["normalized"] for e in expected])
    torch.testing.assert_close(scores.per_grader["rm"], normalized)
    torch.testing.assert_close(scores.rewards, normalized + 10 * torch.tensor([1.0, 0, 0, 1]))
    assert any("loaded reward model 'ckpt'" in m for _, m in callbacks.events)


def test_a_clipped_raw_model_score(reward_model_dir):
    spec = {"type": "model", "checkpoint_id": "ckpt", "normalize": False, "clip": 1e-4}
    rewarder = computer(spec, reward_model_dirs={"ckpt": str(reward_model_dir)})
    scores = rewarder.score([{"prompt": "q"}], ["zzz"], rollout_of(["zzz"], [True]))
    raw = score(reward_model_dir, [{"prompt": "q", "response": "zzz"}])[0]["score"]
    assert scores.rewards.item() == pytest.approx(max(min(raw, 1e-4), -1e-4))


def test_grader_errors_score_zero_and_become_a_bounded_number_of_warnings():
    callbacks = RecordingCallbacks()
    rewarder = computer({"type": "multi", "name": "r", "graders": [HAS_A, ANSWER]}, callbacks)
    texts = ["a", "b"]
    items = [{"prompt": "p"}, {"prompt": "p", "answer": "b"}]  # the first row has no answer
    scores = rewarder.score(items, texts, rollout_of(texts, [True, True]))
    assert scores.rewards.tolist() == [1.0, 2.0] and scores.rows_with_errors == 1
    assert scores.errors == ["completion 0: answer: {{item.answer}}: the prompt row has no field item.answer"]
    ((level, message),) = callbacks.events
    assert level == "warning" and message.startswith("1 of 2 completions could not be fully graded")
    for _ in range(MAX_ERROR_EVENTS + 5):
        rewarder.score(items, texts, rollout_of(texts, [True, True]))
    assert len(callbacks.events) == MAX_ERROR_EVENTS and "the last such event" in callbacks.events[-1][1]


def test_a_reward_that_cannot_be_loaded_is_a_user_error_naming_what(reward_model_dir, tmp_path):
    with pytest.raises(UserError) as info:
        computer({"type": "model", "checkpoint_id": "ckpt"})
    assert info.value.param == "reward_model_dirs" and "'ckpt'" in info.value.message
    causal, tokenizer = tiny()
    causal.save_pretrained(tmp_path)
    write_model_info(tmp_path, {"kind": "causal_lm", "adapter": False, "base_model": "builtin:tiny-llama"})
    with pytest.raises(UserError, match="not a reward model"):
        computer({"type": "model", "checkpoint_id": "c"}, reward_model_dirs={"c": str(tmp_path)})
    with pytest.raises(UserError) as info:
        computer({"type": "function", "name": "f", "function": "no_such_function"})
    assert info.value.param == "reward.function" and "no_such_function" in info.value.message


def test_a_grpo_run_is_rewarded_by_a_reward_model_checkpoint(reward_model_dir):
    import trainers
    from trainers import TrainingData

    callbacks = RecordingCallbacks()
    reward = {"type": "model", "name": "rm", "checkpoint_id": "ckpt", "clip": 5.0}
    hp = {"max_steps": 1, "rollout_batch_size": 2, "num_generations": 2, "batch_size": 4, "max_new_tokens": 4,
          "max_length": 64, "max_prompt_length": 8, "beta": 0.0}  # fmt: skip
    job = GRPOJob(base_model="builtin:tiny-llama", reward=reward, reward_model_dirs={"ckpt": str(reward_model_dir)},
                  hyperparameters=hp)  # fmt: skip
    rows = [{"prompt": "hello"}, {"prompt": [{"role": "user", "content": "hi"}]}]
    trainers.run(job, TrainingData(train=rows), callbacks)
    metrics = callbacks.metrics[1]
    assert metrics["reward/rm"] == pytest.approx(metrics["reward/mean"]) and metrics["reward/std"] > 0
