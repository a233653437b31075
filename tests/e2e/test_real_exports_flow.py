"""Exports as they come, through the real API and worker: hh-rlhf rows (two of them broken) train DPO,
GSM8K rows with a column map train GRPO on the math_answer reward, a grader that can never work fails
its job as the user's error, and a run in which every group gets the same reward says so, live."""

import json

import pytest

from tests.e2e.e2e_support import stream_until_done
from tests.support import jsonl

pytestmark = pytest.mark.e2e

# Anthropic hh-rlhf as exported: whole dialogues, no prompt; rows 3 and 7 end with an empty reply.
HH = [{"chosen": f"\n\nHuman: say {word}\n\nAssistant: {word.upper()}",
       "rejected": f"\n\nHuman: say {word}\n\nAssistant: {word}" if i not in (3, 7) else
                   f"\n\nHuman: say {word}\n\nAssistant:"}
      for i, word in enumerate(["alpha", "bravo", "delta", "echo", "golf", "hotel", "india", "kilo", "lima", "mike"])]
# GSM8K as exported: `question` and an `answer` whose last line is `#### <number>`.
GSM8K = [{"question": f"What is {a} + {b}?", "answer": f"{a} + {b} = {a + b}\n#### {a + b}"}
         for a, b in [(1, 2), (3, 4), (5, 6), (7, 1), (2, 2), (9, 3), (4, 4), (6, 1)]]
MATH = {"type": "function", "name": "correct", "function": "math_answer"}
GRPO_SHORT = {"learning_rate": 1e-3, "rollout_batch_size": 2, "num_generations": 4, "batch_size": 8,
              "max_new_tokens": 6, "max_prompt_length": 24, "max_length": 64}


def upload(client, rows, kind, **form) -> dict:
    r = client.post("/v1/datasets", data={"kind": kind, **form}, files={"file": ("rows.jsonl", jsonl(rows))})
    assert r.status_code == 201, r.text
    return r.json()


def run(client, body: dict) -> tuple[dict, list[dict]]:
    r = client.post("/v1/jobs", json={"base_model": "builtin:tiny-llama", "seed": 0} | body)
    assert r.status_code == 201, r.text
    frames = stream_until_done(client, r.json()["id"])
    return client.get(f"/v1/jobs/{r.json()['id']}").json(), frames


def test_hh_rlhf_rows_upload_as_they_come_and_train_dpo(embedded_service):
    assert embedded_service.post("/v1/datasets", data={"kind": "preference"},
                                 files={"file": ("hh.jsonl", jsonl(HH))}).status_code == 422  # all or nothing
    dataset = upload(embedded_service, HH, "preference", skip_invalid="true")
    assert dataset["row_count"] == 8 and dataset["skipped"]["count"] == 2
    assert [row["line"] for row in dataset["skipped"]["rows"]] == [4, 8]
    first = embedded_service.get(f"/v1/datasets/{dataset['id']}/rows").json()["data"][0]["data"]
    assert first == {"prompt": "\n\nHuman: say alpha\n\nAssistant:", "chosen": " ALPHA", "rejected": " alpha"}
    job, frames = run(embedded_service, {"type": "dpo", "dataset_id": dataset["id"],
                                         "hyperparameters": {"max_steps": 3, "batch_size": 4}})
    assert job["status"] == "succeeded", job["error"]
    assert [f["data"]["step"] for f in frames if f["event"] == "metrics"] == [1, 2, 3]


def test_gsm8k_rows_with_a_column_map_train_grpo_on_math_answers(embedded_service):
    dataset = upload(embedded_service, GSM8K, "prompt", column_map=json.dumps({"prompt": "question"}))
    assert dataset["column_map"] == {"prompt": "question"}
    job, frames = run(embedded_service, {"type": "grpo", "dataset_id": dataset["id"], "reward": MATH,
                                         "hyperparameters": GRPO_SHORT | {"max_steps": 2}})
    assert job["status"] == "succeeded", job["error"]
    last = [f["data"]["values"] for f in frames if f["event"] == "metrics"][-1]
    assert 0.0 <= last["reward/correct"] <= 1.0 and last["reward/error_fraction"] == 0.0


def test_a_grader_that_never_works_fails_the_job_and_a_run_with_no_signal_warns_live(embedded_service):
    no_answers = [{"question": row["question"]} for row in GSM8K]  # math_answer reads `answer`: never there
    dataset = upload(embedded_service, no_answers, "prompt", column_map=json.dumps({"prompt": "question"}))
    job, _ = run(embedded_service, {"type": "grpo", "dataset_id": dataset["id"], "reward": MATH,
                                    "hyperparameters": GRPO_SHORT | {"max_steps": 10}})
    assert job["status"] == "failed" and job["error"]["type"] == "user_error", job
    assert job["error"]["param"] == "reward" and "'correct'" in job["error"]["message"]
    assert job["current_step"] == 2  # the third rollout's errors end it, before its update

    always = {"type": "string_check", "name": "always", "operation": "eq", "input": "{{item.prompt}}",
              "reference": "{{item.prompt}}"}
    job, frames = run(embedded_service, {"type": "grpo", "dataset_id": dataset["id"], "reward": always,
                                         "hyperparameters": GRPO_SHORT | {"max_steps": 6}})
    assert job["status"] == "succeeded", job["error"]
    live = [f["data"]["message"] for f in frames if "no learning signal" in str(f["data"].get("message", ""))]
    events = embedded_service.get(f"/v1/jobs/{job['id']}/events", params={"limit": 100}).json()["data"]
    stored = [e["message"] for e in events if "no learning signal" in e["message"]]
    assert len(live) == len(stored) == 1 and live == stored
