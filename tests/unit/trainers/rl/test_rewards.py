"""Rewards of PPO/GRPO completions: graders, reward-model checkpoints, the missing-EOS penalty, grader errors.

A reward model with the policy's tokenizer scores the sampled ids; one with another tokenizer the
re-tokenised text. The tests compare both against direct calls of the reward model.
"""

import copy

import pytest
import torch

from tests.unit.trainers.trainer_fixtures import RecordingCallbacks, computer, rollout_from_ids, rollout_of, tiny
from trainers.data.preference import truncate_pair
from trainers.data.prompts import tokenize_prompts
from trainers.models.checkpoint import write_model_info
from trainers.models.reward import load_reward_model, rewards
from trainers.models.scoring import score
from trainers.rl.rewards import MAX_ERROR_EVENTS, decode_completions, rollout_rows, same_tokenizer
from trainers.spec.config import GRPOJob
from trainers.spec.errors import UserError

HAS_A = {"type": "string_check", "name": "has_a", "operation": "contains", "reference": "a"}
ANSWER = {"type": "string_check", "name": "answer", "operation": "eq", "reference": "{{item.answer}}", "weight": 2.0}
STATS = {"reward_mean": 0.25, "reward_std": 2.0}


def another_tokenizer():
    """The tiny tokenizer with one more token: ids sampled with it cannot be read by the tiny reward model."""
    tokenizer = copy.deepcopy(tiny()[1])
    tokenizer.add_tokens(["<extra>"])
    return tokenizer


@pytest.fixture(scope="module")
def reward_model_dir(tmp_path_factory):
    """The builtin reward model saved as a reward-model checkpoint with reward statistics."""
    from trainers.models.reward import load_reward_model

    directory = tmp_path_factory.mktemp("rm")
    model, tokenizer = load_reward_model("builtin:tiny-llama")
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    write_model_info(directory, {"kind": "reward_model", "adapter": False, "base_model": "builtin:tiny-llama", **STATS})
    return directory


@pytest.fixture(scope="module")
def other_tokenizer_dir(tmp_path_factory):
    """A reward model whose tokenizer has one token more than the policy's (its embeddings grown to match)."""
    directory = tmp_path_factory.mktemp("rm-other")
    model, _ = load_reward_model("builtin:tiny-llama")
    tokenizer = another_tokenizer()
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    write_model_info(directory, {"kind": "reward_model", "adapter": False, "base_model": "builtin:tiny-llama", **STATS})
    return directory


def direct_scores(model_dir, prompts, responses):
    """Raw rewards of prompt ⊕ response ids, one unpadded row at a time."""
    model, _ = load_reward_model(model_dir)
    with torch.no_grad():
        return [rewards(model, torch.tensor([p + r]), torch.ones(1, len(p + r), dtype=torch.long)).item()
                for p, r in zip(prompts, responses, strict=True)]  # fmt: skip


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
    scores = rewarder.score(items, texts, rollout_of(texts, [True] * 4, items))
    pairs = [{"prompt": i["prompt"], "response": t} for i, t in zip(items, texts, strict=True)]
    expected = score(reward_model_dir, pairs)
    normalized = torch.tensor([e["normalized"] for e in expected])
    torch.testing.assert_close(scores.per_grader["rm"], normalized)
    torch.testing.assert_close(scores.rewards, normalized + 10 * torch.tensor([1.0, 0, 0, 1]))
    assert any("loaded reward model 'ckpt'" in m and "sampled token ids" in m for _, m in callbacks.events)


def test_sampled_ids_and_re_tokenised_text_score_alike_when_the_round_trip_is_lossless(reward_model_dir):
    model = {"type": "model", "name": "rm", "checkpoint_id": "ckpt"}
    dirs = {"ckpt": str(reward_model_dir)}
    by_ids = computer(model, reward_model_dirs=dirs, batch_size=3)
    by_text = computer(model, policy_tokenizer=another_tokenizer(), reward_model_dirs=dirs, batch_size=3)
    assert by_ids.reward_models["ckpt"].reads_policy_ids and not by_text.reward_models["ckpt"].reads_policy_ids
    texts = ["The answer is 42.", "no", "", "a much longer completion, with punctuation!", "x y"]
    items = [{"prompt": "What is six times seven?"}, {"prompt": [{"role": "user", "content": "hi"}]},
             {"prompt": "q"}, {"prompt": [{"role": "system", "content": "be brief"},
                                          {"role": "user", "content": "tell me more"}]}, {"prompt": "p"}]  # fmt: skip
    rollout = rollout_of(texts, [True] * 5, items)  # prompts of different lengths: left padding to strip
    ids, text = by_ids.score(items, texts, rollout), by_text.score(items, texts, rollout)
    torch.testing.assert_close(ids.per_grader["rm"], text.per_grader["rm"], rtol=0, atol=1e-5)
    torch.testing.assert_close(ids.rewards, text.rewards, rtol=0, atol=1e-5)
    for rewarder in (by_ids, by_text):  # truncated alike too: the prompt keeps its last L − 1 tokens
        rewarder.reward_models["ckpt"].max_length = 12
    ids, text = by_ids.score(items, texts, rollout), by_text.score(items, texts, rollout)
    torch.testing.assert_close(ids.rewards, text.rewards, rtol=0, atol=1e-5)


def test_invalid_utf8_and_cut_completions_are_scored_on_their_sampled_ids(reward_model_dir):
    _, tokenizer = tiny()
    eos = tokenizer.eos_token_id
    prompts = [p.ids for p in tokenize_prompts([{"prompt": "hi"}, {"prompt": "a longer prompt"}], tokenizer,
                                                max_prompt_length=100)]  # fmt: skip
    responses = [[0xFF, 0xC3, *b"ok", eos], list(b"cut here")]  # bytes that are not UTF-8; no EOS: cut
    rollout = rollout_from_ids(prompts, responses, [True, False])
    items = [{"prompt": "hi"}, {"prompt": "a longer prompt"}]
    texts = decode_completions(tokenizer, rollout)
    assert "\ufffd" in texts[0]  # what the text path would re-encode as other bytes
    dirs = {"ckpt": str(reward_model_dir)}
    scores = computer({"type": "model", "name": "rm", "checkpoint_id": "ckpt"}, reward_model_dirs=dirs)
    raw = torch.tensor(direct_scores(reward_model_dir, prompts, responses))
    expected = (raw - STATS["reward_mean"]) / STATS["reward_std"]  # normalised as on the text path
    torch.testing.assert_close(scores.score(items, texts, rollout).per_grader["rm"], expected, rtol=0, atol=1e-5)
    by_text = computer({"type": "model", "name": "rm", "checkpoint_id": "ckpt"},
                       policy_tokenizer=another_tokenizer(), reward_model_dirs=dirs)  # fmt: skip
    lossy = by_text.score(items, texts, rollout).per_grader["rm"]
    assert ((lossy - expected).abs() > 1e-4).all()  # U+FFFD re-encoded; an EOS appended to the cut one


def test_a_reward_model_with_another_tokenizer_scores_the_re_tokenised_text(other_tokenizer_dir):
    callbacks = RecordingCallbacks()
    spec = {"type": "model", "name": "rm", "checkpoint_id": "c", "normalize": False}
    rewarder = computer(spec, callbacks, reward_model_dirs={"c": str(other_tokenizer_dir)})
    assert not rewarder.reward_models["c"].reads_policy_ids
    assert any("re-tokenised with its own tokenizer" in m for _, m in callbacks.events)
    texts, items = ["abc", "de"], [{"prompt": "hello"}, {"prompt": [{"role": "user", "content": "hi"}]}]
    scores = rewarder.score(items, texts, rollout_of(texts, [True, False]))  # the rollout's prompts are BOS only
    pairs = [{"prompt": i["prompt"], "response": t} for i, t in zip(items, texts, strict=True)]
    expected = torch.tensor([e["score"] for e in score(other_tokenizer_dir, pairs)])
    torch.testing.assert_close(scores.per_grader["rm"], expected)


def test_tokenizers_are_the_same_only_with_equal_vocabularies_and_special_ids():
    _, tokenizer = tiny()
    assert same_tokenizer(tokenizer, copy.deepcopy(tokenizer))
    assert not same_tokenizer(another_tokenizer(), tokenizer)
    swapped = copy.deepcopy(tokenizer)
    swapped.pad_token = tokenizer.eos_token
    assert not same_tokenizer(swapped, tokenizer)


def test_rollout_rows_strip_the_left_padding_and_truncate_as_the_text_path_does():
    prompts, responses = [[1, 2, 3, 4, 5], [6, 7]], [[8, 9, 10], [11, 12, 13, 14]]
    rollout = rollout_from_ids(prompts, responses, [True, True])
    ids, mask = rollout_rows(rollout, pad_token_id=0, max_length=100)
    assert ids.tolist() == [[1, 2, 3, 4, 5, 8, 9, 10], [6, 7, 11, 12, 13, 14, 0, 0]]
    assert mask.tolist() == [[1] * 8, [1] * 6 + [0] * 2]
    ids, mask = rollout_rows(rollout, pad_token_id=0, max_length=5)
    for row, p, r in zip(range(2), prompts, responses, strict=True):
        pair = truncate_pair(p, r, r, max_length=5, max_prompt_length=4)
        assert ids[row][mask[row].bool()].tolist() == pair.prompt_ids + pair.chosen_ids


def test_a_clipped_raw_model_score(reward_model_dir):
    spec = {"type": "model", "checkpoint_id": "ckpt", "normalize": False, "clip": 1e-4}
    rewarder = computer(spec, reward_model_dirs={"ckpt": str(reward_model_dir)})
    scores = rewarder.score([{"prompt": "q"}], ["zzz"], rollout_of(["zzz"], [True], [{"prompt": "q"}]))
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


@pytest.mark.trains
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


def test_a_formula_combines_text_similarity_and_a_reward_model(reward_model_dir):
    similar = {"type": "text_similarity", "name": "close", "evaluation_metric": "fuzzy_match",
               "reference": "{{item.answer}}"}
    model = {"type": "model", "name": "rm", "checkpoint_id": "ckpt"}
    texts = ["abc", "abd"]
    items = [{"prompt": "p", "answer": "abc"}] * 2
    spec = {"type": "multi", "name": "r", "graders": [similar, model], "calculate_output": "2 * close + rm ^ 2"}
    scores = computer(spec, reward_model_dirs={"ckpt": str(reward_model_dir)}).score(
        items, texts, rollout_of(texts, [True, True], items))
    assert scores.per_grader["close"].tolist() == pytest.approx([1.0, 2 / 3])
    expected = 2 * torch.tensor([1.0, 2 / 3]) + scores.per_grader["rm"] ** 2
    torch.testing.assert_close(scores.rewards, expected)
    assert scores.errors == []
    # A formula that gives no number is that completion's grader error, scoring 0.
    spec["calculate_output"] = "close / (rm - rm)"
    scores = computer(spec, reward_model_dirs={"ckpt": str(reward_model_dir)}).score(
        items, texts, rollout_of(texts, [True, True], items))
    assert scores.rewards.tolist() == [0.0, 0.0] and scores.rows_with_errors == 2
    assert scores.errors[0] == "completion 0: r: calculate_output: ZeroDivisionError: float division by zero"
