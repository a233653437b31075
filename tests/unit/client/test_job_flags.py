"""`rlhf jobs create <type>`: flags generated from the API's request models, the body they build, and errors
that name the flag."""

import json

import click
import pytest
from click.testing import CliRunner

from api.schemas import JOB_CREATE_MODELS
from client.cli import cli
from client.errors import ApiError
from client.job_create import create_command, name_flag
from client.job_flags import MODELS, body_of, options, validate

OWN = {"--spec", "--watch", "--idempotency-key", "--json", "--quiet", "-q", "--help", "-h"}


def parse(job_type: str, *args: str) -> tuple[dict, dict]:
    """The body the command would send for `args` (parsed by click, as on the command line), and its params."""
    command = create_command(job_type)
    ctx = command.make_context(job_type, list(args))
    flags, _ = options(MODELS[job_type])
    own = {"spec", "as_json", "quiet", "watch_job", "idempotency_key"}
    values = {k: v for k, v in ctx.params.items() if k not in own}
    return body_of(job_type, flags, values, None), values


def test_every_job_type_has_a_command_with_a_flag_per_scalar_field():
    assert set(MODELS) == {m.model_fields["type"].annotation.__args__[0] for m in JOB_CREATE_MODELS}
    for model in MODELS.values():
        flags, _ = options(model)
        names = [f.name for f in flags]
        assert len(names) == len(set(names)) and not OWN & set(names)
        hyper = model.model_fields["hyperparameters"].annotation.model_fields
        assert {f.path[1] for f in flags if f.path[0] == "hyperparameters"} == set(hyper)
        assert {"--base-model", "--dataset-id", "--lora", "--seed"} <= set(names)
    grpo = {f.name: f for f in options(MODELS["grpo"])[0]}
    assert grpo["--reward"].is_json and grpo["--lora"].is_json and not grpo["--num-generations"].is_json


def test_a_dpo_flag_lands_in_hyperparameters_with_its_type():
    body, _ = parse("dpo", "--base-model", "builtin:tiny-llama", "--dataset-id", "ds_1", "--beta", "0.2",
                    "--learning-rate", "1e-5", "--max-steps", "30", "--loss-type", "ipo",
                    "--precompute-ref-logprobs", "false", "--seed", "7")
    assert body == {"type": "dpo", "base_model": "builtin:tiny-llama", "dataset_id": "ds_1", "seed": 7,
                    "hyperparameters": {"beta": 0.2, "learning_rate": 1e-5, "max_steps": 30, "loss_type": "ipo",
                                        "precompute_ref_logprobs": False}}
    assert isinstance(body["hyperparameters"]["max_steps"], int)
    assert isinstance(body["hyperparameters"]["beta"], float)


def test_json_flags_take_inline_json_or_a_file(tmp_path):
    reward = {"type": "string_check", "name": "a", "operation": "contains", "reference": "{{item.answer}}"}
    (tmp_path / "reward.json").write_text(json.dumps(reward))
    body, _ = parse("grpo", "--base-model", "b", "--dataset-id", "d", "--reward", f"@{tmp_path / 'reward.json'}",
                    "--lora", '{"r": 8}', "--metadata", '{"team": "nlp"}', "--num-generations", "4")
    assert body["reward"] == reward and body["lora"] == {"r": 8} and body["metadata"] == {"team": "nlp"}
    assert body["hyperparameters"] == {"num_generations": 4}
    with pytest.raises(click.BadParameter, match="not valid JSON"):
        parse("grpo", "--lora", "{r: 8}")


def test_flags_override_the_spec_and_the_spec_keeps_the_rest():
    flags, _ = options(MODELS["dpo"])
    spec = {"type": "dpo", "base_model": "b", "dataset_id": "d", "hyperparameters": {"beta": 0.5, "max_steps": 9}}
    body = body_of("dpo", flags, {"hyperparameters__beta": 0.2}, spec)
    assert body["hyperparameters"] == {"beta": 0.2, "max_steps": 9} and spec["hyperparameters"]["beta"] == 0.5
    with pytest.raises(click.UsageError, match="the spec's type is 'grpo'"):
        body_of("dpo", flags, {}, {"type": "grpo"})


def test_a_bad_value_names_its_flag():
    with pytest.raises(click.BadParameter) as exc:  # not a number: refused by click, naming the option
        parse("dpo", "--beta", "strong")
    assert "'strong' is not a valid float" in exc.value.format_message() and exc.value.param.opts == ["--beta"]

    model = MODELS["grpo"]
    flags, _ = options(model)
    body, values = parse("grpo", "--dataset-id", "d", "--beta", "-1", "--lora", '{"r": 0}',
                         "--reward", '{"type": "string_check", "name": "a", "operation": "is"}')
    given = {dest for dest, v in values.items() if v is not None}
    with pytest.raises(click.UsageError) as exc:
        validate(model, body, flags, given, spec_given=False)
    lines = exc.value.format_message().splitlines()[1:]
    assert "  --base-model: Field required" in lines
    assert "  --beta: Input should be greater than or equal to 0 (got -1.0)" in lines
    assert "  --lora (lora.r): Input should be greater than or equal to 1 (got 0)" in lines
    assert any(line.startswith("  --reward (reward.operation): Input should be 'eq'") for line in lines)

    spec_body = {"type": "dpo", "base_model": "b", "dataset_id": "d", "hyperparameters": {"beta": -1}}
    with pytest.raises(click.UsageError, match=r"--spec: hyperparameters\.beta: Input should be greater than 0"):
        validate(MODELS["dpo"], spec_body, options(MODELS["dpo"])[0], set(), spec_given=True)


def test_a_refused_spec_is_not_sent_and_exits_2():
    # Nothing listens on port 9: a request would fail with exit status 1, not 2.
    result = CliRunner().invoke(cli, ["--base-url", "http://127.0.0.1:9", "--api-key", "k", "jobs", "create", "dpo",
                                      "--base-model", "b", "--dataset-id", "d", "--max-steps", "0"])
    assert result.exit_code == 2, result.output
    assert "--max-steps: Input should be greater than or equal to 1 (got 0)" in result.output
    assert "Traceback" not in result.output


def test_the_apis_refusal_of_a_field_names_the_flag_that_set_it():
    flags, _ = options(MODELS["dpo"])
    refused = ApiError("hyperparameters.max_prompt_length: must be < max_length", status=422,
                       param="hyperparameters.max_prompt_length")
    assert name_flag(refused, flags).message.startswith("--max-prompt-length: hyperparameters.max_prompt_length:")
    unrelated = ApiError("the database is busy", status=503)
    assert name_flag(unrelated, flags) is unrelated
