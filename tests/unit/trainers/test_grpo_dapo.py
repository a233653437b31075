"""GRPO with DAPO's dynamic sampling and overlong shaping on builtin:tiny-llama: learning, resume, skipped rollouts."""

import json

import pytest
import torch

import trainers
from tests.unit.trainers.test_grpo_training import CONTAINS_E, LEARNING, PROMPTS, grpo_job
from tests.unit.trainers.trainer_fixtures import RecordingCallbacks, cli, write_jsonl
from trainers import TrainingData
from trainers.__main__ import build_parser
from trainers.loop import EXTRA_STATE_FILE
from trainers.spec.errors import UserError

pytestmark = pytest.mark.trains

class StopAtPoll(RecordingCallbacks):
    """Asks to stop from the `stop_at`-th poll on (polls come before each rollout and before and after each
    round's grading); records the polls made by each step's report."""

    def __init__(self, root=None, *, stop_at=None):
        super().__init__(root)
        self.stop_at, self.polls_at = stop_at, {}

    def on_metrics(self, step, metrics):
        super().on_metrics(step, metrics)
        self.polls_at[step] = self.polls

    def should_stop(self):
        super().should_stop()
        return self.stop_at is not None and self.polls >= self.stop_at


SAMPLING = ("sampling/rounds", "sampling/groups_dropped", "sampling/frac_groups_kept", "sampling/groups_trained",
            "sampling/rollouts_skipped", "sampling/reward_mean")  # fmt: skip


def test_dynamic_sampling_learns_the_rewarded_letter_from_the_groups_that_differ():
    # About 3% of the untrained policy's 8-token completions contain an "e": most groups of 8 are all 0
    # and are dropped, so the first rollouts need several rounds of 4 prompts and train on fewer groups.
    callbacks = RecordingCallbacks()
    job = grpo_job(0, base=LEARNING, max_steps=10, dynamic_sampling=True)
    result = trainers.run(job, TrainingData(train=PROMPTS), callbacks)
    assert (result.status, result.step) == ("completed", 10)
    metrics = callbacks.metrics
    assert set(SAMPLING) <= set(metrics[1])
    assert metrics[1]["sampling/rounds"] > 1 and metrics[1]["sampling/groups_dropped"] > 0
    assert metrics[1]["sampling/groups_trained"] < 4  # the bound was hit: a smaller update
    assert all(m["frac_reward_zero_std"] == 0 for m in metrics.values())  # only groups with signal are trained
    before = sum(metrics[s]["sampling/reward_mean"] for s in [1, 2]) / 2
    after = sum(metrics[s]["sampling/reward_mean"] for s in [9, 10]) / 2
    assert before < 0.2 and after > 0.6, (before, after)


def test_a_resumed_run_draws_the_prompts_and_completions_the_uninterrupted_run_draws(tmp_path):
    # Rounds of 2 prompts × 4 completions; with two minibatches and μ = 2 a full rollout is 4 steps and a
    # rollout cut short by the bound fewer, so the steps do not say how many prompt batches were drawn.
    job = grpo_job(3, batch_size=4, num_iterations=2, max_steps=10, dynamic_sampling=True, max_sampling_rounds=2,
                   overlong_buffer=2, checkpoint_every=100)  # fmt: skip
    data = TrainingData(train=PROMPTS)
    straight = StopAtPoll()
    assert trainers.run(job, data, straight).step == 10
    rounds = [m["sampling/rounds"] for m in straight.metrics.values()]
    assert max(rounds) == 2, rounds  # some rollouts drew a second batch of prompts

    interrupted = RecordingCallbacks(tmp_path / "first", stop_after=3)
    result = trainers.run(job, data, interrupted)
    assert result.status == "stopped"
    saved, _ = interrupted.checkpoints[result.step]
    drawn = torch.load(saved / EXTRA_STATE_FILE, weights_only=True)["extra"]["dynamic_sampling"]
    # Every rollout drew 2 batches, and skipped rollouts (all groups equal) drew theirs too: more batches than
    # the rollouts trained on (2 steps each), which the steps alone could not tell.
    assert drawn["prompt_batches_drawn"] > result.step // 2

    resumed = RecordingCallbacks(tmp_path / "second")
    assert trainers.run(job, data, resumed, resume_from=saved).step == 10
    combined = interrupted.metrics | resumed.metrics
    assert sorted(combined) == sorted(straight.metrics)
    for step, metrics in straight.metrics.items():
        assert combined[step] == pytest.approx(metrics, abs=1e-6), f"step {step}"
    assert "reward/overlong_penalty" in straight.metrics[1]

    # A stop while the rollout after step 4 grades its second round: its rounds are dropped, not counted as
    # drawn, and the resumed run draws them again. Polls: 1 before the rollout, then 2 per round.
    assert straight.metrics[5]["sampling/rounds"] == 2
    cut = StopAtPoll(tmp_path / "third", stop_at=straight.polls_at[4] + 4)
    result = trainers.run(job, data, cut)
    assert (result.status, result.step) == ("stopped", 4) and sorted(cut.metrics) == [1, 2, 3, 4]
    again = RecordingCallbacks(tmp_path / "fourth")
    assert trainers.run(job, data, again, resume_from=cut.checkpoints[4][0]).step == 10
    for step, metrics in (cut.metrics | again.metrics).items():
        assert metrics == pytest.approx(straight.metrics[step], abs=1e-6), f"step {step}"


def test_rollouts_without_signal_are_skipped_and_then_fail_the_job():
    # Every completion contains the empty string: no group ever differs.
    callbacks = RecordingCallbacks()
    job = grpo_job(reward={**CONTAINS_E, "reference": ""}, max_steps=2, beta=0.0, dynamic_sampling=True,
                   max_sampling_rounds=1)  # fmt: skip
    with pytest.raises(UserError, match="no group whose rewards differ in 5 consecutive rollouts") as caught:
        trainers.run(job, TrainingData(train=PROMPTS), callbacks)
    assert caught.value.param == "hyperparameters.dynamic_sampling"
    assert callbacks.metrics == {}  # nothing was trained on
    skipped = [m for level, m in callbacks.events if m.startswith("rollout skipped")]
    assert len(skipped) == 4 and all("1 rounds of 2 prompts × 4 completions" in m for m in skipped)


def test_overlong_shaping_penalises_long_completions_in_the_reward():
    # max_new_tokens 6, buffer 5: every completion longer than one token loses (|y| − 1)/5.
    callbacks = RecordingCallbacks()
    job = grpo_job(reward={**CONTAINS_E, "reference": ""}, max_steps=1, beta=0.0, overlong_buffer=5,
                   overlong_penalty_factor=2.0)  # fmt: skip
    trainers.run(job, TrainingData(train=PROMPTS), callbacks)
    metrics = callbacks.metrics[1]
    length = metrics["completions/mean_length"]
    assert metrics["reward/overlong_penalty"] == pytest.approx(-2.0 * (length - 1) / 5, abs=1e-5)
    assert metrics["reward/mean"] == pytest.approx(1 + metrics["reward/overlong_penalty"], abs=1e-5)
    assert metrics["reward/has_e"] == 1


def test_the_cli_takes_the_options_and_reports_the_sampling_metrics(tmp_path):
    args = build_parser().parse_args(["grpo", "--data", "d", "--base-model", "m", "--output", "o", "--reward", "{}",
                                      "--dynamic-sampling", "true", "--max-sampling-rounds", "4",
                                      "--overlong-buffer", "2", "--overlong-penalty-factor", "0.5"])  # fmt: skip
    assert (args.dynamic_sampling, args.max_sampling_rounds, args.overlong_buffer, args.overlong_penalty_factor) == (
        True, 4, 2, 0.5)
    data = write_jsonl(tmp_path / "prompts.jsonl", PROMPTS)
    out = cli("grpo", "--data", data, "--base-model", "builtin:tiny-llama", "--output", tmp_path / "run",
              "--reward", json.dumps(CONTAINS_E), "--max-steps", 2, "--rollout-batch-size", 2, "--num-generations", 4,
              "--batch-size", 8, "--max-new-tokens", 6, "--learning-rate", 1e-2, "--dynamic-sampling", "true",
              "--overlong-buffer", 2)  # fmt: skip
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert [line["step"] for line in lines] == [1, 2]
    assert {"sampling/rounds", "sampling/groups_dropped", "reward/overlong_penalty"} <= set(lines[-1])
    assert torch.load(tmp_path / "run" / "checkpoint-2" / EXTRA_STATE_FILE, weights_only=True)["extra"][
        "dynamic_sampling"]["prompt_batches_drawn"] >= 2
