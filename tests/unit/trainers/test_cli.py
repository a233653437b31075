import json
from pathlib import Path

import pytest

import trainers
from tests.unit.trainers.trainer_fixtures import RecordingCallbacks, cli, write_jsonl
from trainers import DPOJob, TrainingData
from trainers.__main__ import build_parser, main
from trainers.data.synthetic import uppercase_preference_rows

ROOT = Path(__file__).resolve().parents[3]


def test_flags_come_from_the_config_models():
    args = build_parser().parse_args(
        ["dpo", "--data", "d.jsonl", "--base-model", "m", "--output", "o", "--max-steps", "3", "--beta", "0.2"]
    )
    assert (args.max_steps, args.beta, args.learning_rate) == (3, 0.2, None)


@pytest.mark.trains
def test_cli_trains_prints_json_metrics_and_writes_checkpoints(tmp_path):
    # OpenAI-format rows are normalised on the way in
    rows = [
        {"input": {"messages": [{"role": "user", "content": r["prompt"]}]},
         "preferred_output": [{"role": "assistant", "content": r["chosen"]}],
         "non_preferred_output": [{"role": "assistant", "content": r["rejected"]}]}
        for r in uppercase_preference_rows(16)
    ]  # fmt: skip
    data = write_jsonl(tmp_path / "rows.jsonl", rows)

    out = cli("dpo", "--data", data, "--base-model", "builtin:tiny-llama", "--output", tmp_path / "run",
              "--max-steps", 3, "--learning-rate", 1e-3, "--batch-size", 4, "--checkpoint-every", 2)  # fmt: skip

    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert [line["step"] for line in lines] == [1, 2, 3]
    assert lines[-1]["train/learning_rate"] == 1e-3
    for step in (2, 3):
        assert (tmp_path / "run" / f"checkpoint-{step}" / "model" / "config.json").is_file()
        assert (tmp_path / "run" / f"checkpoint-{step}" / "trainer_state.pt").is_file()


def test_cli_reports_bad_rows_and_bad_hyperparameters(tmp_path):
    data = write_jsonl(tmp_path / "rows.jsonl", [{"prompt": "p", "chosen": "c", "rejected": "r"}, {"prompt": "p"}])
    out = cli("dpo", "--data", data, "--base-model", "builtin:tiny-llama", "--output", tmp_path / "run")
    assert out.returncode == 2 and "line 2" in out.stderr

    out = cli("dpo", "--data", data, "--base-model", "builtin:tiny-llama", "--output", tmp_path / "run",
              "--max-length", 16, "--max-prompt-length", 16)  # fmt: skip
    assert out.returncode == 2 and "max_prompt_length" in out.stderr


@pytest.mark.trains
def test_merge_writes_a_full_model(tmp_path):
    callbacks = RecordingCallbacks(tmp_path / "run")
    job = DPOJob(base_model="builtin:tiny-llama", lora={"r": 4}, hyperparameters={"max_steps": 1, "batch_size": 4})
    trainers.run(job, TrainingData(train=uppercase_preference_rows(4)), callbacks)
    model_dir = callbacks.checkpoints[1][0] / "model"

    out = cli("merge", "--model-dir", model_dir, "--output", tmp_path / "merged")

    assert out.returncode == 0, out.stderr
    assert (tmp_path / "merged" / "model.safetensors").is_file()
    assert json.loads((tmp_path / "merged" / "rlhf_service.json").read_text())["adapter"] is False


def test_merge_of_a_missing_directory_exits_2_naming_it(tmp_path, capsys):
    assert main(["merge", "--model-dir", str(tmp_path / "nothing"), "--output", str(tmp_path / "out")]) == 2
    assert "nothing" in capsys.readouterr().err.splitlines()[-1]


def test_lora_settings_are_json():
    args = build_parser().parse_args(["dpo", "--data", "d", "--base-model", "m", "--output", "o", "--lora", '{"r": 4}'])
    assert args.lora == {"r": 4}
