"""DAPO's dynamic sampling bookkeeping and overlong shaping on hand-made rollouts (no model)."""

import pytest
import torch

from trainers.rl.dynamic_sampling import (
    SKIPPED_ROLLOUTS_LIMIT,
    DynamicSampler,
    concat_rollouts,
    groups_with_signal,
    shaped_scores,
)
from trainers.rl.online import select_rows
from trainers.rl.rewards import RewardScores
from trainers.rl.rollout import Rollout
from trainers.spec.config import GRPOHyperparameters
from trainers.spec.errors import UserError

PAD = 0


def fake_round(tag: int, rewards: list[float], *, prompt_len: int = 3, max_response: int = 4) -> tuple[Rollout,
                                                                                                         RewardScores]:
    """A round of len(rewards) rows whose token ids say which round (`tag`) and row they come from."""
    B = len(rewards)
    lengths = torch.tensor([1 + (tag + row) % max_response for row in range(B)])
    response_mask = (torch.arange(max_response) < lengths.unsqueeze(1)).long()  # (B, A)
    response_ids = (100 * tag + torch.arange(B).unsqueeze(1) + 1) * response_mask  # (B, A)
    prompt_ids = torch.full((B, prompt_len), 7 + tag)
    rollout = Rollout(
        prompt_ids=prompt_ids, prompt_mask=torch.ones_like(prompt_ids), response_ids=response_ids,
        response_mask=response_mask, logprobs=-0.5 * response_mask.float(), ended_with_eos=lengths < max_response,
        response_lengths=lengths, temperature=1.0,
    )  # fmt: skip
    r = torch.tensor(rewards)
    return rollout, RewardScores(rewards=r, per_grader={"g": r.clone()}, errors=[], rows_with_errors=0)


def test_groups_with_signal_by_hand():
    rewards = torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.5, 0.5000001, 0.5])
    assert groups_with_signal(rewards, 3).tolist() == [False, True, False, True]  # the last by one ulp
    assert groups_with_signal(rewards, 2).tolist() == [False, True, True, False, True, True]
    assert groups_with_signal(torch.tensor([-2.0, -2.0, -2.0, -2.0]), 4).tolist() == [False]


def test_a_full_first_round_is_one_round_and_keeps_the_order():
    sampler = DynamicSampler(prompts_per_rollout=2, group_size=2, max_rounds=3, pad_token_id=PAD)
    sampler.start()
    assert sampler.next_batch() == 1
    rollout, scores = fake_round(1, [0.0, 1.0, 1.0, 0.0])
    assert sampler.add(rollout, scores) == 0.0
    assert sampler.next_batch() is None
    filled = sampler.finish(lambda *a: None)
    assert torch.equal(filled.rollout.response_ids, rollout.response_ids)
    assert filled.scores.rewards.tolist() == [0.0, 1.0, 1.0, 0.0]
    assert filled.stats["sampling/rounds"] == 1 and filled.stats["sampling/groups_dropped"] == 0
    assert sampler.batches_drawn == 1 and sampler.state_dict() == {"prompt_batches_drawn": 1, "rollouts_skipped": 0}
    resumed = DynamicSampler(prompts_per_rollout=2, group_size=2, max_rounds=3, pad_token_id=PAD)
    resumed.load_state_dict({"prompt_batches_drawn": 7, "rollouts_skipped": 2})
    assert (resumed.next_batch(), resumed.skipped) == (8, 2)


def test_rounds_refill_the_rollout_with_the_next_batches_groups_with_signal():
    # R = 3 groups of G = 2. Round 1 (batch 5): groups 0 and 2 equal, group 1 kept. Round 2 (batch 6):
    # group 0 equal, groups 1 and 2 kept: full. Batch 7 is not drawn.
    sampler = DynamicSampler(prompts_per_rollout=3, group_size=2, max_rounds=3, pad_token_id=PAD, batches_drawn=4)
    sampler.start()
    assert sampler.next_batch() == 5
    first = fake_round(1, [1.0, 1.0, 0.0, 1.0, 0.0, 0.0], prompt_len=2)
    assert sampler.add(*first) == pytest.approx(2 / 3)
    assert sampler.next_batch() == 6
    second = fake_round(2, [0.5, 0.5, 1.0, 0.0, 0.2, 0.3], prompt_len=4)
    assert sampler.add(*second) == pytest.approx(1 / 3)
    assert sampler.next_batch() is None
    filled = sampler.finish(lambda *a: None)

    assert sampler.batches_drawn == 6
    assert filled.scores.rewards.tolist() == pytest.approx([0.0, 1.0, 1.0, 0.0, 0.2, 0.3])
    assert filled.scores.per_grader["g"].tolist() == pytest.approx([0.0, 1.0, 1.0, 0.0, 0.2, 0.3])
    out = filled.rollout
    assert out.prompt_ids.shape == (6, 4) and out.response_ids.shape[0] == 6
    # Each kept row is the row it was, re-padded: prompts left, responses right.
    expected = [(first, 2), (first, 3), (second, 2), (second, 3), (second, 4), (second, 5)]
    for row, ((rollout, _), source) in enumerate(expected):
        original = select_rows(rollout, [source])
        got = select_rows(out, [row])
        for name in ("prompt_ids", "prompt_mask", "response_ids", "response_mask", "logprobs"):
            assert torch.equal(getattr(got, name), getattr(original, name)), (row, name)
    assert out.prompt_mask[:2].tolist() == [[0, 0, 1, 1]] * 2
    assert out.response_lengths.tolist() == first[0].response_lengths[2:4].tolist() + \
        second[0].response_lengths[2:6].tolist()
    assert filled.stats == pytest.approx({
        "sampling/rounds": 2.0, "sampling/groups_dropped": 3.0, "sampling/frac_groups_kept": 0.5,
        "sampling/groups_trained": 3.0, "sampling/rollouts_skipped": 0.0,
        "sampling/reward_mean": (3 + 2.5) / 12, "reward/error_fraction": 0.0,
    })  # fmt: skip


def test_surplus_groups_are_dropped_and_the_bound_trains_on_what_there_is():
    sampler = DynamicSampler(prompts_per_rollout=2, group_size=2, max_rounds=2, pad_token_id=PAD)
    sampler.start()
    sampler.add(*fake_round(1, [1.0, 1.0, 0.0, 1.0]))  # one group kept
    sampler.add(*fake_round(2, [0.0, 1.0, 1.0, 0.0]))  # two with signal, one room left
    filled = sampler.finish(lambda *a: None)
    assert filled.stats["sampling/groups_trained"] == 2 and filled.stats["sampling/frac_groups_kept"] == 0.75
    assert filled.scores.rewards.tolist() == [0.0, 1.0, 0.0, 1.0]

    sampler.start()
    assert sampler.next_batch() == 3
    sampler.add(*fake_round(3, [1.0, 1.0, 0.0, 1.0]))
    sampler.add(*fake_round(4, [0.0, 0.0, 1.0, 1.0]))
    assert sampler.next_batch() is None  # the bound: two rounds
    filled = sampler.finish(lambda *a: None)
    assert filled.rollout.response_ids.shape[0] == 2 and filled.stats["sampling/groups_trained"] == 1
    assert sampler.batches_drawn == 4


def test_a_stopped_rollout_draws_its_batches_again():
    sampler = DynamicSampler(prompts_per_rollout=2, group_size=2, max_rounds=3, pad_token_id=PAD, batches_drawn=2)
    sampler.start()
    sampler.add(*fake_round(1, [1.0, 1.0, 0.0, 0.0]))
    assert sampler.next_batch() == 4
    sampler.start()  # the rollout was stopped: nothing of it counts
    assert sampler.next_batch() == 3 and sampler.batches_drawn == 2


def test_rollouts_without_signal_are_skipped_then_fail_the_job():
    events = []

    def on_event(level, message):
        events.append((level, message))

    sampler = DynamicSampler(prompts_per_rollout=1, group_size=2, max_rounds=2, pad_token_id=PAD)
    for n in range(SKIPPED_ROLLOUTS_LIMIT - 1):
        sampler.start()
        while sampler.next_batch() is not None:
            sampler.add(*fake_round(n, [1.0, 1.0]))
        filled = sampler.finish(on_event)
        assert filled.rollout is None and filled.scores is None
    assert sampler.batches_drawn == 2 * (SKIPPED_ROLLOUTS_LIMIT - 1)
    assert [level for level, _ in events] == ["warning"] * (SKIPPED_ROLLOUTS_LIMIT - 1)
    assert "2 rounds of 1 prompts × 2 completions" in events[0][1]

    sampler.start()  # a rollout with signal reports the skipped ones and ends the streak
    sampler.add(*fake_round(9, [0.0, 1.0]))
    assert sampler.finish(on_event).stats["sampling/rollouts_skipped"] == SKIPPED_ROLLOUTS_LIMIT - 1
    for n in range(SKIPPED_ROLLOUTS_LIMIT):
        sampler.start()
        sampler.add(*fake_round(n, [1.0, 1.0]))
        sampler.add(*fake_round(n, [0.0, 0.0]))
        if n < SKIPPED_ROLLOUTS_LIMIT - 1:
            sampler.finish(on_event)
    with pytest.raises(UserError, match="no group whose rewards differ") as caught:
        sampler.finish(on_event)
    assert caught.value.param == "hyperparameters.dynamic_sampling"


def test_error_fraction_counts_every_completion_sampled():
    sampler = DynamicSampler(prompts_per_rollout=1, group_size=2, max_rounds=2, pad_token_id=PAD)
    sampler.start()
    rollout, scores = fake_round(1, [0.0, 0.0])
    scores.rows_with_errors, scores.errors = 2, ["completion 0: g: boom", "completion 1: g: boom"]
    sampler.add(rollout, scores)
    sampler.add(*fake_round(2, [0.0, 1.0]))
    filled = sampler.finish(lambda *a: None)
    assert filled.stats["reward/error_fraction"] == 0.5 and filled.scores.errors == []


def test_concat_rollouts_pads_prompts_left_and_responses_right():
    a, _ = fake_round(1, [0.0], prompt_len=2, max_response=2)
    b, _ = fake_round(2, [0.0], prompt_len=4, max_response=5)
    out = concat_rollouts([a, b], pad_token_id=PAD)
    assert out.prompt_ids.shape == (2, 4) and out.response_ids.shape == (2, 5)
    assert out.prompt_mask.tolist() == [[0, 0, 1, 1], [1, 1, 1, 1]]
    assert out.response_ids[0, 2:].tolist() == [PAD] * 3 and out.response_mask[0, 2:].tolist() == [0] * 3


def test_shaped_scores_add_the_overlong_penalty_and_report_it():
    hp = GRPOHyperparameters(max_new_tokens=8, overlong_buffer=4, overlong_penalty_factor=0.5)
    rollout, scores = fake_round(0, [1.0, 1.0, 0.0, 0.0], max_response=8)
    rollout.response_lengths = torch.tensor([4, 5, 7, 8])  # free, 1, 3 and 4 tokens into the buffer
    shaped = shaped_scores(scores, rollout, hp)
    penalty = [0.0, -0.125, -0.375, -0.5]
    assert shaped.rewards.tolist() == pytest.approx([1.0, 0.875, -0.375, -0.5])
    assert shaped.per_grader["overlong_penalty"].tolist() == pytest.approx(penalty)
    assert shaped.per_grader["g"].tolist() == scores.per_grader["g"].tolist()
    assert shaped_scores(scores, rollout, GRPOHyperparameters(max_new_tokens=8)) is scores


def test_overlong_buffer_must_leave_room():
    with pytest.raises(ValueError, match=r"overlong_buffer \(8\) must be less than max_new_tokens \(8\)"):
        GRPOHyperparameters(max_new_tokens=8, overlong_buffer=8)
    assert GRPOHyperparameters(dynamic_sampling=True).max_sampling_rounds == 3
