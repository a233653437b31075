"""A cancel that arrives while PPO or GRPO grades a rollout stops the run before it trains on that rollout."""

import time

import pytest

import trainers
from tests.unit.trainers.trainer_fixtures import RecordingCallbacks, tiny
from trainers import GRPOJob, PPOJob, TrainingData
from trainers.rl.generation.hf import HFBackend
from trainers.rl.online import sample_rollout, score_rollout
from trainers.spec.config import GRPOHyperparameters
from trainers.spec.reward_functions import reward_function

PROMPTS = [{"prompt": p} for p in ["Hello", "Say something", "Write", "Go", "Tell me", "Once", "Why", "Hi there"]]
SLOW = {"type": "function", "name": "slow", "function": "test.slow_grader"}
CALLS: list[str] = []
GRADING_S = 0.6  # per completion: longer than the trainers' stop polling interval while grading


@reward_function("test.slow_grader")
def slow_grader(completion, item):
    CALLS.append(completion)
    time.sleep(GRADING_S)
    return 1.0


class CancelWhileGrading(RecordingCallbacks):
    """Asks to stop once the slow grader has graded one completion."""

    def should_stop(self) -> bool:
        self.polls += 1
        return len(CALLS) >= 1


JOBS = {
    "grpo": lambda: GRPOJob(
        base_model="builtin:tiny-llama", reward=SLOW, reward_function_modules=[__name__],
        hyperparameters={"rollout_batch_size": 2, "num_generations": 4, "batch_size": 8, "max_new_tokens": 4,
                         "max_prompt_length": 16, "max_length": 64, "max_steps": 2, "checkpoint_every": 1}),
    "ppo": lambda: PPOJob(
        base_model="builtin:tiny-llama", reward=SLOW, reward_function_modules=[__name__],
        hyperparameters={"rollout_batch_size": 4, "batch_size": 4, "ppo_epochs": 1, "max_new_tokens": 4,
                         "max_prompt_length": 16, "max_length": 64, "max_steps": 2, "checkpoint_every": 1}),
}  # fmt: skip


@pytest.mark.timeout(120)
@pytest.mark.parametrize("algorithm", sorted(JOBS))
def test_a_cancel_during_grading_stops_the_run_within_the_rollout(algorithm):
    CALLS.clear()
    callbacks = CancelWhileGrading()
    result = trainers.run(JOBS[algorithm](), TrainingData(train=PROMPTS), callbacks)
    assert (result.status, result.step) == ("stopped", 0)
    assert len(CALLS) == 1  # the rollout's other completions were never graded
    assert callbacks.metrics == {} and callbacks.checkpoints == {}  # nothing trained, nothing to save
    assert ("info", "stopped at step 0") in callbacks.events
    from trainers.spec.graders import STOP_POLL_S

    assert STOP_POLL_S < GRADING_S  # what makes the trainer poll after every completion it grades


class Rank0Says:
    """A rank's view of the broadcast: what it offered, and rank 0's verdict it gets back."""

    def __init__(self, verdict):
        self.verdict, self.offered = verdict, []

    def broadcast(self, value):
        self.offered.append(value)
        return self.verdict if self.verdict is not None else value


class Grader:
    """A rewarder whose grading polls its `should_stop` once, and gives up when it says so."""

    def __init__(self):
        self.polled_with = None

    def score(self, items, completions, rollout, *, should_stop):
        self.polled_with = should_stop
        return None if should_stop() else "scores"


@pytest.mark.parametrize("rank0_stops", [False, True])
def test_ranks_grade_with_a_local_poll_and_all_take_rank_0s_verdict(rank0_stops):
    model, tokenizer = tiny()
    hp = GRPOHyperparameters(max_new_tokens=3)
    rollout = sample_rollout(HFBackend.of(model, tokenizer, hp), [tokenizer("Hi").input_ids], hp, row_seeds=[0])
    collective_polls = []

    def should_stop():  # the collective poll: rank 0 says go on before grading
        collective_polls.append(1)
        return False

    # Another rank: its local poll never stops it; rank 0's verdict decides.
    grader, ranks = Grader(), Rank0Says(verdict=rank0_stops)
    other = score_rollout(grader, tokenizer, [{}], rollout, should_stop=should_stop, local_stop=lambda: False,
                          ranks=ranks)  # fmt: skip
    assert other == (None if rank0_stops else "scores")
    assert ranks.offered == [False] and len(collective_polls) == 1  # grading polled the local stop only
    assert grader.polled_with() is False

    # Rank 0: a stop seen while grading is what it broadcasts.
    grader, ranks = Grader(), Rank0Says(verdict=None)
    main = score_rollout(grader, tokenizer, [{}], rollout, should_stop=should_stop, local_stop=lambda: rank0_stops,
                         ranks=ranks)  # fmt: skip
    assert main == (None if rank0_stops else "scores") and ranks.offered == [rank0_stops]
