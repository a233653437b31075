"""Reward specs checked against the prompt rows at job creation, on both backends: a template that
cannot be rendered for a row, or a templated regex RE2 refuses, is a 422 naming the grader path,
the field and the row."""

import pytest

from api.services import rewards
from tests.support import jsonl, upload

ROWS = [{"prompt": "2+2=", "answer": "4", "pattern": r"\b4\b", "meta": {"lang": "en"}},
        {"prompt": "3+3=", "answer": "6", "pattern": "(unclosed", "meta": {}}]


def check(field: str, reference: str, operation: str = "contains", name: str = "check") -> dict:
    return {"type": "string_check", "name": name, "operation": operation, "input": field, "reference": reference}


def job(dataset_id: str, reward: dict, **fields) -> dict:
    return {"type": "grpo", "base_model": "builtin:tiny-llama", "dataset_id": dataset_id, "reward": reward} | fields


@pytest.fixture
def prompts(client) -> str:
    return upload(client, jsonl(ROWS), kind="prompt").json()["id"]


@pytest.mark.parametrize(("reward", "param", "names"), [
    (check("{{sample.output_text}}", "{{item.final}}"), "reward.reference", ["item.final", "row 0 (line 1)"]),
    ({"type": "multi", "name": "m", "graders": [
        check("{{sample.output_text}}", "{{item.answer}}", name="a"),
        check("{{item.meta.lang}}", "en", operation="eq", name="b")]},
     "reward.graders[1].input", ["item.meta.lang", "row 1 (line 2)"]),
    (check("{{sample.output_text}}", "{{item.pattern}}", operation="regex"), "reward.reference",
     ["'{{item.pattern}}' renders the regex '(unclosed'", "row 1 (line 2)", "missing )"]),
    ({"type": "multi", "name": "m", "calculate_output": "0.5 * a + 0.5 * sim", "graders": [
        check("{{sample.output_text}}", "{{item.answer}}", name="a"),
        {"type": "text_similarity", "name": "sim", "evaluation_metric": "bleu", "reference": "{{item.meta.lang}}"}]},
     "reward.graders[1].reference", ["item.meta.lang", "row 1 (line 2)"]),
    ({"type": "text_similarity", "name": "sim", "evaluation_metric": "fuzzy_match", "input": "{{item.final}}",
      "reference": "{{item.answer}}"}, "reward.input", ["item.final", "row 0 (line 1)"]),
])
def test_a_template_the_rows_cannot_fill_is_422_naming_grader_field_and_row(client, prompts, reward, param, names):
    r = client.post("/v1/jobs", json=job(prompts, reward))
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["param"] == param
    assert error["message"].startswith(f"{param}: dataset_id row ")
    for name in names:
        assert name in error["message"]


def test_the_eval_dataset_is_checked_too(client, prompts):
    train = upload(client, jsonl([{"prompt": "1+1=", "final": "2"}]), kind="prompt").json()["id"]
    r = client.post("/v1/jobs", json=job(train, check("{{sample.output_text}}", "{{item.final}}"),
                                         eval_dataset_id=prompts))
    assert r.status_code == 422, r.text
    assert r.json()["error"]["param"] == "reward.reference"
    assert "eval_dataset_id row 0 (line 1)" in r.json()["error"]["message"]


@pytest.mark.parametrize("job_type", ["grpo", "ppo"])
def test_a_spec_every_row_can_fill_is_created(client, prompts, job_type):
    reward = {"type": "multi", "name": "m", "graders": [
        check("{{sample.output_text}}", "{{item.answer}}", name="a"),
        # The completion in the pattern: it cannot be compiled before sampling, only its fields are checked.
        check("{{sample.output_text}}", "{{item.answer}}|{{sample.output_text}}", operation="regex", name="b"),
        {"type": "text_similarity", "name": "sim", "evaluation_metric": "rouge_l", "reference": "{{item.prompt}}"}],
        "calculate_output": "0.5 * a + 0.25 * b + 0.25 * sim"}
    r = client.post("/v1/jobs", json=job(prompts, reward, type=job_type))
    assert r.status_code == 201, r.text


def test_rows_past_the_checked_bound_are_left_to_training(client, prompts, monkeypatch):
    monkeypatch.setattr(rewards, "MAX_CHECKED_ROWS", 1)  # ROWS[1], the bad pattern, is past the bound
    r = client.post("/v1/jobs", json=job(prompts, check("{{sample.output_text}}", "{{item.pattern}}", "regex")))
    assert r.status_code == 201, r.text


def test_a_formula_naming_no_grader_is_422_at_calculate_output(client, prompts):
    reward = {"type": "multi", "name": "m", "calculate_output": "a + typo", "graders": [
        check("{{sample.output_text}}", "{{item.answer}}", name="a")]}
    r = client.post("/v1/jobs", json=job(prompts, reward))
    assert r.status_code == 422, r.text
    assert r.json()["error"]["param"] == "reward.calculate_output" and "'typo'" in r.json()["error"]["message"]
