"""GRPO and PPO on 2 gloo processes (DPPO) equal one process: losses, rewards, evaluations, checkpoints.

Each run is a real torchrun launch (`train_in_ranks`, ~15–20 s on 2 cores), shared by every
assertion that reads it. Each rank samples and grades half of every rollout's prompts (whole GRPO
groups), from seeds of (seed, rollout, prompt, completion), so both ranks together draw the tokens
one process draws; rewards are those of the same completions. The GRPO runs recompute π_old (two
minibatches, two iterations), penalise the KL to the reference and evaluate 3 prompts (one rank
samples a stand-in in the last chunk); the PPO runs whiten advantages and adapt β on the rollout's
KL, and train the critic spread over the ranks.
"""

import json

import pytest
import torch
from safetensors.torch import load_file

from tests.unit.trainers.distributed.rank_runs import train_in_ranks
from trainers.models.checkpoint import MODEL_DIR
from trainers.models.value import CRITIC_DIR

pytestmark = pytest.mark.trains

TOLERANCE = 1e-4
PROMPTS = [{"prompt": p} for p in ["Hello", "Say something", "Write", "Go", "Tell me", "Once", "Why", "Hi there"]]
DATA = {"train": PROMPTS, "eval": [{"prompt": p} for p in ["Alpha", "Be brief", "Count"]]}
LOWERCASE = {"type": "string_check", "name": "lowercase", "operation": "regex", "reference": "[a-z]"}  # about half
GRPO = {"learning_rate": 1e-2, "max_steps": 4, "rollout_batch_size": 4, "num_generations": 4, "batch_size": 8,
        "num_iterations": 2, "gradient_accumulation_steps": 2, "beta": 0.04, "max_new_tokens": 6,
        "max_prompt_length": 16, "max_length": 64, "eval_every": 4, "checkpoint_every": 4}  # fmt: skip
PPO = {"learning_rate": 1e-2, "critic_learning_rate": 3e-3, "max_steps": 4, "rollout_batch_size": 8, "batch_size": 4,
       "ppo_epochs": 1, "gradient_accumulation_steps": 2, "adaptive_kl": True, "target_kl": 0.5, "kl_horizon": 100,
       "value_model": "policy", "max_new_tokens": 6, "max_prompt_length": 16, "max_length": 64,
       "checkpoint_every": 4,
       # π_old by a forward pass: the sampling pass's log-probs round with each rank's padding, and Adam's
       # first steps magnify a 1e-7 difference in the ratio where a gradient is near zero.
       "recompute_old_logprobs": True}  # fmt: skip
GRPO_TRAIN = ("train/loss", "policy/clipfrac", "policy/approx_kl", "policy/entropy", "objective/kl", "train/grad_norm")
GRPO_ROLLOUT = ("reward/mean", "reward/std", "reward/lowercase", "frac_reward_zero_std", "completions/mean_length")
PPO_TRAIN = ("train/loss", "policy/pg_loss", "policy/entropy", "val/vf_loss", "train/grad_norm", "critic/grad_norm")
PPO_ROLLOUT = ("objective/scores", "reward/lowercase", "completions/mean_length")
PPO_KL = ("objective/kl", "objective/kl_coef", "objective/rlhf_reward")


def job(job_type, hyperparameters, strategy="ddp"):
    return {"type": job_type, "base_model": "builtin:tiny-llama", "seed": 3, "strategy": strategy,
            "reward": LOWERCASE, "hyperparameters": hyperparameters}  # fmt: skip


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Runs launched on first use, each once: ``runs(name)`` → ``(record, output directory)``."""
    root = tmp_path_factory.mktemp("rl_ranks")
    specs = {
        "grpo_1": (job("grpo", GRPO), 1),
        "grpo_ddp": (job("grpo", GRPO), 2),
        "grpo_fsdp": (job("grpo", GRPO, strategy="fsdp"), 2),
        "ppo_1": (job("ppo", PPO), 1),
        "ppo_ddp": (job("ppo", PPO), 2),
    }
    done = {}

    def run(name):
        if name not in done:
            spec, processes = specs[name]
            done[name] = (train_in_ranks(spec, DATA, root / name, processes=processes), root / name)
        return done[name]

    return run


def assert_close_metrics(run, expected, names):
    for step in [1, 2, 3, 4]:
        for name in names:
            assert run["metrics"][step][name] == pytest.approx(expected["metrics"][step][name], rel=TOLERANCE,
                                                               abs=1e-6), (step, name)  # fmt: skip


def assert_equal_metrics(run, expected, names):
    for step in [1, 2, 3, 4]:
        assert {n: run["metrics"][step][n] for n in names} == {n: expected["metrics"][step][n] for n in names}, step


def assert_same_weights(directory, expected_directory, subdirectory=MODEL_DIR):
    weights = load_file(directory / subdirectory / "model.safetensors")
    expected = load_file(expected_directory / subdirectory / "model.safetensors")
    assert weights.keys() == expected.keys()
    for name, tensor in expected.items():
        torch.testing.assert_close(weights[name], tensor, rtol=TOLERANCE, atol=TOLERANCE, msg=name)


def assert_rank_0_reports_the_samples(directory, expected_directory):
    """Rank 0 alone reports samples (the other rank's callbacks get none), the ones one process reports."""
    two = [json.loads((directory / f"samples-{rank}.json").read_text()) for rank in (0, 1)]
    one = json.loads((expected_directory / "samples-0.json").read_text())
    assert two[1] == {} and sorted(two[0]) == sorted(one) and one
    for step, rows in one.items():
        assert [(r["prompt"], r["completion"], r["reward"]) for r in two[0][step]] == [
            (r["prompt"], r["completion"], r["reward"]) for r in rows]
        for got, expected in zip(two[0][step], rows, strict=True):  # advantages, KL: computed share by share
            assert got.keys() == expected.keys()
            assert {k: v for k, v in got.items() if not isinstance(v, str)} == pytest.approx(
                {k: v for k, v in expected.items() if not isinstance(v, str)}, rel=TOLERANCE, abs=1e-6)


def test_grpo_on_two_ddp_processes_equals_one_process(runs):
    (one, one_dir), (two, two_dir) = runs("grpo_1"), runs("grpo_ddp")

    assert one["result"]["status"] == two["result"]["status"] == "completed"
    assert sorted(two["metrics"]) == sorted(one["metrics"]) == [1, 2, 3, 4]
    assert_equal_metrics(two, one, GRPO_ROLLOUT)  # the same completions, hence the same rewards
    assert_close_metrics(two, one, GRPO_TRAIN)
    assert two["metrics"][4]["eval/reward/mean"] == one["metrics"][4]["eval/reward/mean"]
    assert two["metrics"][4]["eval/completions/mean_length"] == one["metrics"][4]["eval/completions/mean_length"]
    assert_same_weights(two_dir / "checkpoint-4", one_dir / "checkpoint-4")
    assert ["info", "2 processes, strategy ddp"] in two["events"]
    assert_rank_0_reports_the_samples(two_dir, one_dir)
    assert 0 < one["metrics"][1]["reward/mean"] < 1  # rewards that teach: the losses are not all zero
    assert one["metrics"][4]["objective/kl"] > 0


def test_grpo_on_two_fsdp_processes_equals_ddp(runs):
    (ddp, ddp_dir), (fsdp, fsdp_dir) = runs("grpo_ddp"), runs("grpo_fsdp")

    assert_equal_metrics(fsdp, ddp, GRPO_ROLLOUT)
    assert_close_metrics(fsdp, ddp, GRPO_TRAIN)
    assert fsdp["metrics"][4]["eval/reward/mean"] == ddp["metrics"][4]["eval/reward/mean"]
    assert_same_weights(fsdp_dir / "checkpoint-4", ddp_dir / "checkpoint-4")
    assert ["info", "2 processes, strategy fsdp"] in fsdp["events"]


def test_ppo_on_two_ddp_processes_equals_one_process(runs):
    (one, one_dir), (two, two_dir) = runs("ppo_1"), runs("ppo_ddp")

    assert one["result"]["status"] == two["result"]["status"] == "completed"
    assert sorted(two["metrics"]) == sorted(one["metrics"]) == [1, 2, 3, 4]
    assert_equal_metrics(two, one, PPO_ROLLOUT)
    assert_close_metrics(two, one, PPO_TRAIN + PPO_KL)
    assert one["metrics"][4]["objective/kl_coef"] != one["metrics"][1]["objective/kl_coef"]  # β adapted
    assert_same_weights(two_dir / "checkpoint-4", one_dir / "checkpoint-4")
    assert_same_weights(two_dir / "checkpoint-4", one_dir / "checkpoint-4", CRITIC_DIR)
    assert_rank_0_reports_the_samples(two_dir, one_dir)
