"""python -m trainers grpo makes flags of the advantage estimator and GSPO's importance-sampling level."""

import pytest

from trainers.__main__ import build_parser, job_from_args

REWARD = '{"type": "string_check", "name": "a", "operation": "contains", "reference": "x"}'


def test_the_cli_makes_flags_of_the_options():
    args = build_parser().parse_args(
        ["grpo", "--data", "d", "--base-model", "m", "--output", "o", "--reward", REWARD,
         "--advantage-estimator", "reinforce_pp", "--importance-sampling-level", "sequence"]
    )  # fmt: skip
    hp = job_from_args(args).hyperparameters
    assert (hp.advantage_estimator, hp.importance_sampling_level) == ("reinforce_pp", "sequence")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["grpo", "--data", "d", "--base-model", "m", "--output", "o", "--reward", REWARD,
                                   "--advantage-estimator", "gae"])  # fmt: skip
