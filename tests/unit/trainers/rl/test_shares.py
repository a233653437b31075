"""Ranks' shares of a rollout, gathered, are the rollout one process samples: same rows, same layout."""

import torch

from tests.unit.trainers.trainer_fixtures import tiny
from trainers.rl.generation.hf import HFBackend
from trainers.rl.online import completion_seeds, sample_rollout
from trainers.rl.rewards import RewardScores
from trainers.rl.shares import gather_rollout
from trainers.spec.config import GRPOHyperparameters


class Exchange:
    """`Ranks.gather` as one rank sees it: what it sends, followed by the other ranks' parts."""

    def __init__(self, others=()):
        self.others, self.sent = list(others), None

    def gather(self, value):
        self.sent = value
        return [value, *self.others]


def scores_of(rows):
    return RewardScores(rewards=torch.tensor([float(r) for r in rows]),
                        per_grader={"g": torch.tensor([10.0 * r for r in rows])}, errors=[f"row {r}" for r in rows],
                        rows_with_errors=len(rows))  # fmt: skip


def test_gathered_shares_equal_the_whole_rollout_sampled_by_one_process():
    model, tokenizer = tiny()
    prompts = [tokenizer(text).input_ids for text in ["Hi", "Say something longer", "Go", "Tell me a story"]]
    seeds = completion_seeds(1, 2, range(len(prompts)), 1)
    hp = GRPOHyperparameters(max_new_tokens=8, top_p=0.9)
    backend = HFBackend.of(model, tokenizer, hp)
    whole = sample_rollout(backend, prompts, hp, row_seeds=seeds)

    def share(rows):
        return sample_rollout(backend, [prompts[r] for r in rows], hp, row_seeds=[seeds[r] for r in rows])

    rank1 = Exchange()  # rows 1 and 3: the longest prompts, so rank 0 pads its prompts less than one process
    gather_rollout(share([1, 3]), scores_of([1, 3]), [1, 3], 4, tokenizer.pad_token_id, rank1)
    # rank 0 holds rows 0 and 2; a third rank without rows sends nothing
    rollout, scores = gather_rollout(share([0, 2]), scores_of([0, 2]), [0, 2], 4, tokenizer.pad_token_id,
                                     Exchange([rank1.sent, None]))  # fmt: skip

    for name in ("prompt_ids", "prompt_mask", "response_ids", "response_mask", "ended_with_eos", "response_lengths"):
        assert torch.equal(getattr(rollout, name), getattr(whole, name)), name
    torch.testing.assert_close(rollout.logprobs, whole.logprobs, rtol=0, atol=1e-5)
    assert rollout.temperature == whole.temperature
    assert scores.rewards.tolist() == [0.0, 1.0, 2.0, 3.0] and scores.per_grader["g"].tolist() == [0, 10, 20, 30]
    assert scores.rows_with_errors == 4 and sorted(scores.errors) == ["row 0", "row 1", "row 2", "row 3"]
