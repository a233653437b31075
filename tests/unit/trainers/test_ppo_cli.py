"""python -m trainers ppo: the PPO flags, and a short run from prompt rows to checkpoints with a critic."""

import json

import pytest

from tests.unit.trainers.trainer_fixtures import write_jsonl
from trainers.__main__ import build_parser, main
from trainers.models.value import CRITIC_DIR

REWARD = '{"type": "string_check", "name": "answer", "operation": "contains", "reference": "{{item.answer}}"}'


def test_ppo_flags_come_from_its_config():
    args = build_parser().parse_args(
        ["ppo", "--data", "d", "--base-model", "m", "--output", "o", "--reward", REWARD, "--adaptive-kl", "true",
         "--value-model", "reward_model", "--ppo-epochs", "2", "--reward-model-dir", "ckpt_1=/models/rm"]
    )  # fmt: skip
    assert args.adaptive_kl is True and args.value_model == "reward_model" and args.ppo_epochs == 2
    assert args.reward_model_dir == [("ckpt_1", "/models/rm")]


@pytest.mark.trains
def test_cli_trains_ppo_on_prompt_rows(tmp_path, capsys):
    rows = [{"prompt": "Hello", "answer": "a"}, {"prompt": [{"role": "user", "content": "Hi"}], "answer": "b"}]
    data = write_jsonl(tmp_path / "prompts.jsonl", rows)
    argv = ["ppo", "--data", data, "--base-model", "builtin:tiny-llama", "--output", tmp_path / "run",
            "--reward", REWARD, "--max-steps", 2, "--rollout-batch-size", 2, "--batch-size", 2, "--ppo-epochs", 2,
            "--max-new-tokens", 4, "--learning-rate", 1e-3]  # fmt: skip
    assert main([str(a) for a in argv]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["step"] for line in lines] == [1, 2] and "objective/kl" in lines[-1] and "reward/answer" in lines[-1]
    assert (tmp_path / "run" / "checkpoint-2" / CRITIC_DIR / "config.json").is_file()
