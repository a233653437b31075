"""`python -m trainers reward_model` and `python -m trainers score`, as the service calls them."""

import io
import json
import sys
from pathlib import Path

import pytest

from tests.unit.trainers.trainer_fixtures import cli, tiny
from trainers.__main__ import build_parser, main
from trainers.data.synthetic import uppercase_preference_rows

ROOT = Path(__file__).resolve().parents[3]


def test_reward_model_flags_come_from_its_config():
    args = build_parser().parse_args(["reward_model", "--data", "d.jsonl", "--base-model", "m", "--output", "o",
                                      "--center-rewards-coefficient", "0.01", "--reward-stats-rows", "64"])  # fmt: skip
    assert (args.center_rewards_coefficient, args.reward_stats_rows, args.max_steps) == (0.01, 64, None)


@pytest.mark.trains
def test_train_then_score_from_the_command_line(tmp_path):
    rows = uppercase_preference_rows(16)
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))

    out = cli("reward_model", "--data", data, "--base-model", "builtin:tiny-llama", "--output", tmp_path / "run",
              "--max-steps", 2, "--learning-rate", 1e-3, "--batch-size", 8)  # fmt: skip

    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert [line["step"] for line in lines] == [1, 2] and "train/accuracy" in lines[-1]
    model_dir = tmp_path / "run" / "checkpoint-2" / "model"
    assert json.loads((model_dir / "rlhf_service.json").read_text())["kind"] == "reward_model"

    items = [{"text": "say: hi\nHELLO"}, {"prompt": rows[0]["prompt"], "response": rows[0]["chosen"]}]
    out = cli("score", "--model-dir", model_dir, stdin=json.dumps(items))

    assert out.returncode == 0, out.stderr
    results = json.loads(out.stdout)
    assert len(results) == 2 and all(set(r) == {"score", "normalized"} for r in results)


@pytest.mark.parametrize("stdin, message", [("not json", "invalid JSON"), ('{"text": "x"}', "expected a JSON list")])
def test_score_rejects_bad_input_with_exit_2(tmp_path, monkeypatch, capsys, stdin, message):
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    assert main(["score", "--model-dir", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err.splitlines()[-1]


def test_score_with_a_model_that_is_not_a_reward_model_exits_2(tmp_path, monkeypatch, capsys):
    causal, tokenizer = tiny()
    causal.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    monkeypatch.setattr(sys, "stdin", io.StringIO('[{"text": "hello"}]'))
    assert main(["score", "--model-dir", str(tmp_path)]) == 2
    assert "is not a reward model" in capsys.readouterr().err.splitlines()[-1]
