"""`python -m trainers orpo ...` and `python -m trainers dpo --loss-type simpo`: flags from the job models."""

import json

import pytest

from tests.unit.trainers.trainer_fixtures import cli, write_jsonl
from trainers.__main__ import build_parser, job_from_args
from trainers.data.synthetic import uppercase_preference_rows
from trainers.spec.config import DPOJob, ORPOJob

BASE = ["--data", "d.jsonl", "--base-model", "m", "--output", "o"]


def test_orpo_is_a_subcommand_whose_flags_are_its_hyperparameters():
    job = job_from_args(build_parser().parse_args(["orpo", *BASE, "--beta", "0.2", "--max-steps", "3"]))
    assert isinstance(job, ORPOJob) and (job.hyperparameters.beta, job.hyperparameters.max_steps) == (0.2, 3)
    assert job.hyperparameters.loss_type == "orpo" and job.hyperparameters.reference_free
    for flag in ("--loss-type", "--precompute-ref-logprobs", "--simpo-gamma"):  # not ORPO settings
        with pytest.raises(SystemExit):
            build_parser().parse_args(["orpo", *BASE, flag, "1"])


def test_dpo_takes_the_simpo_loss_with_its_beta_default_and_gamma():
    job = job_from_args(build_parser().parse_args(["dpo", *BASE, "--loss-type", "simpo"]))
    assert isinstance(job, DPOJob) and (job.hyperparameters.loss_type, job.hyperparameters.beta) == ("simpo", 2.0)
    job = job_from_args(build_parser().parse_args(["dpo", *BASE, "--loss-type", "simpo", "--simpo-gamma", "1.2"]))
    assert (job.hyperparameters.simpo_gamma, job.hyperparameters.reference_free) == (1.2, True)
    assert job_from_args(build_parser().parse_args(["dpo", *BASE])).hyperparameters.beta == 0.1


@pytest.mark.trains
def test_cli_trains_orpo_and_prints_its_metrics(tmp_path):
    data = write_jsonl(tmp_path / "rows.jsonl", uppercase_preference_rows(8))
    out = cli("orpo", "--data", data, "--base-model", "builtin:tiny-llama", "--output", tmp_path / "run",
              "--max-steps", 2, "--learning-rate", 1e-3, "--batch-size", 4)  # fmt: skip
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert [line["step"] for line in lines] == [1, 2]
    assert {"train/nll_loss", "train/log_odds_ratio", "train/log_odds_chosen", "rewards/margins"} <= set(lines[-1])
    assert "reference" not in out.stderr
    assert (tmp_path / "run" / "checkpoint-2" / "model" / "config.json").is_file()
