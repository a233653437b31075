"""python -m trainers grpo: prompt rows, a reward spec in JSON, reward-model directories."""

import json

import pytest

from tests.unit.trainers.trainer_fixtures import cli, write_jsonl
from trainers.__main__ import build_parser, main

REWARD = '{"type": "string_check", "name": "answer", "operation": "contains", "reference": "{{item.answer}}"}'


def test_grpo_flags_include_the_reward_and_parse_booleans():
    args = build_parser().parse_args(
        ["grpo", "--data", "d", "--base-model", "m", "--output", "o", "--reward", REWARD, "--scale-rewards", "false",
         "--reward-model-dir", "ckpt_1=/models/rm", "--num-generations", "4"]
    )  # fmt: skip
    assert args.scale_rewards is False and args.num_generations == 4
    assert args.reward["name"] == "answer" and args.reward_model_dir == [("ckpt_1", "/models/rm")]


@pytest.mark.trains
def test_cli_trains_grpo_on_prompt_rows(tmp_path):
    rows = [{"prompt": "Hello", "answer": "a"}, {"prompt": [{"role": "user", "content": "Hi"}], "answer": "b"}]
    data = write_jsonl(tmp_path / "prompts.jsonl", rows)
    out = cli("grpo", "--data", data, "--base-model", "builtin:tiny-llama", "--output", tmp_path / "run",
              "--reward", REWARD, "--max-steps", 2, "--rollout-batch-size", 2, "--num-generations", 2,
              "--batch-size", 4, "--max-new-tokens", 4, "--learning-rate", 1e-3)  # fmt: skip
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert [line["step"] for line in lines] == [1, 2] and "reward/answer" in lines[-1]
    assert (tmp_path / "run" / "checkpoint-2" / "trainer_state.pt").is_file()
    samples = [json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert [s["step"] for s in samples] == [1, 2] and len(samples[0]["rows"]) == 4  # default log_samples
    assert {"prompt", "completion", "reward", "reward/answer", "length"} <= set(samples[0]["rows"][0])
    assert out.stderr.count("[sample] step 2 reward ") == 4


def test_a_bad_reward_or_preference_rows_exit_2(tmp_path, capsys):
    data = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "p"}])
    bad = '{"type": "string_check", "name": "a", "operation": "startswith", "reference": "x"}'
    argv = ["grpo", "--data", str(data), "--base-model", "builtin:tiny-llama", "--output", str(tmp_path / "run")]
    assert main([*argv, "--reward", bad]) == 2
    assert "reward.string_check.operation" in capsys.readouterr().err
    rows = write_jsonl(tmp_path / "pairs.jsonl", [{"chosen": "c", "rejected": "r"}])
    assert main(["grpo", "--data", str(rows), "--base-model", "builtin:tiny-llama", "--output", str(tmp_path / "o"),
                 "--reward", REWARD]) == 2  # fmt: skip
    assert "line 1" in capsys.readouterr().err
