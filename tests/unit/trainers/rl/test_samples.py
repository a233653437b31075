"""The rows a rollout reports as samples: which completions, their text without special tokens, their values."""

import math

import torch

from tests.unit.trainers.trainer_fixtures import RecordingCallbacks, rollout_of, tiny
from trainers.rl.samples import report_samples, sample_positions, sample_rows


def test_positions_take_one_completion_of_each_group_before_a_second():
    assert sample_positions(12, 4, group_size=4) == [0, 4, 8, 1]  # 3 groups of 4
    assert sample_positions(8, 3, group_size=2) == [0, 2, 4]
    assert sample_positions(4, 10, group_size=2) == [0, 2, 1, 3]  # every row, no repeat
    assert sample_positions(5, 3) == [0, 1, 2]  # PPO: one completion per prompt
    assert sample_positions(5, 0) == []


def test_rows_hold_the_decoded_text_without_special_tokens_and_the_values_of_each_completion():
    items = [{"prompt": "Hi"}, {"prompt": "Hi"}, {"prompt": "Yo there"}, {"prompt": "Yo there"}]
    rollout = rollout_of(["ab", "c", "long one", ""], [True, False, True, True], items)  # prompts left-padded
    rewards = torch.tensor([1.0, 0.0, 0.5, float("nan")])
    per_grader = {"has_a": torch.tensor([1.0, 0.0, 0.0, 0.0])}
    rows = sample_rows(tiny()[1], rollout, rewards, count=3, group_size=2, per_grader=per_grader,
                       extras={"advantage": torch.tensor([0.75, -0.75, 2.0, -2.0])})
    assert rows == [
        {"prompt": "Hi", "completion": "ab", "reward": 1.0, "reward/has_a": 1.0, "advantage": 0.75, "length": 3},
        {"prompt": "Yo there", "completion": "long one", "reward": 0.5, "reward/has_a": 0.0,
         "advantage": 2.0, "length": 9},
        {"prompt": "Hi", "completion": "c", "reward": 0.0, "reward/has_a": 0.0, "advantage": -0.75, "length": 1},
    ]
    last = sample_rows(tiny()[1], rollout, rewards, count=4)[3]  # PPO's order: row 3, its reward not finite
    assert last["completion"] == "" and last["reward"] is None and last["length"] == 1
    assert all(isinstance(v, str) or v is None or (isinstance(v, float | int) and math.isfinite(v))
               for row in rows for v in row.values())


def test_report_sends_the_rows_of_the_step_and_nothing_when_off():
    callbacks = RecordingCallbacks()
    rollout = rollout_of(["x", "y"], [True, True])
    report_samples(callbacks, 7, tiny()[1], rollout, torch.tensor([0.25, 1.0]), count=1)
    report_samples(callbacks, 8, tiny()[1], rollout, torch.tensor([0.25, 1.0]), count=0)
    assert callbacks.samples == {7: [{"prompt": "", "completion": "x", "reward": 0.25, "length": 2}]}
