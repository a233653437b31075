"""Fine-tuning jobs through the `openai` SDK against a live API and worker: what a real run reports in
OpenAI's shapes (metrics events, checkpoint metrics with validation loss, trained tokens, the estimated
finish while it runs), and a fine-tuned model's name as the base model of the next job."""

import json
import time

import openai
import pytest
from openai.types.fine_tuning import FineTuningJob

from tests.e2e.e2e_support import DEADLINE

pytestmark = pytest.mark.e2e
WORDS = ["apple", "river", "stone", "cloud", "tiger", "maple", "piano", "ocean"]
ENDED = ("succeeded", "failed", "cancelled")


def sdk(http) -> openai.OpenAI:
    key = http.headers["Authorization"].removeprefix("Bearer ")
    return openai.OpenAI(base_url=f"{http.base_url}/v1", api_key=key, max_retries=0)


def upload(client: openai.OpenAI, tmp_path, name: str, rows: list[dict]):
    path = tmp_path / name
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return client.files.create(file=path, purpose="fine-tune")


def follow(client: openai.OpenAI, job_id: str) -> tuple[FineTuningJob, list]:
    """Poll until the job ends; also return what it showed while running."""
    seen, deadline = [], time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in ENDED:
            return job, seen
        seen.append(job)
        time.sleep(0.2)
    pytest.fail(f"job {job_id} did not end: {job}")


def test_a_supervised_run_reports_openais_metrics_and_its_model_trains_on(embedded_service, tmp_path):
    client = sdk(embedded_service)
    chats = [{"messages": [{"role": "user", "content": f"Shout: {w}"}, {"role": "assistant", "content": w.upper()}]}
             for w in WORDS]
    training = upload(client, tmp_path, "train.jsonl", chats * 2)
    validation = upload(client, tmp_path, "valid.jsonl", chats[:4])
    created = client.fine_tuning.jobs.create(
        model="builtin:tiny-llama", training_file=training.id, validation_file=validation.id, suffix="e2e", seed=0,
        method={"type": "supervised", "supervised": {"hyperparameters": {
            "n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 50}}})
    sft, seen = follow(client, created.id)
    assert sft.status == "succeeded", sft.error
    assert sft.fine_tuned_model.startswith("ft:builtin:tiny-llama:") and sft.fine_tuned_model.endswith(
        f":e2e:{sft.id}")
    assert sft.estimated_finish is None and sft.finished_at >= sft.created_at
    assert sft.trained_tokens > 0
    # Whenever it showed an estimate, the estimate lay after the job's creation.
    assert all(job.estimated_finish >= job.created_at for job in seen if job.estimated_finish is not None)

    events = list(client.fine_tuning.jobs.list_events(sft.id, limit=100))
    metrics = [e for e in events if e.type == "metrics"]
    assert [e.data["step"] for e in metrics] == list(range(len(metrics), 0, -1))  # 8 steps: 16 rows / 4, twice
    assert len(metrics) == 8 and all("train_loss" in e.data for e in metrics)
    assert metrics[0].data["train_loss"] < metrics[-1].data["train_loss"]
    assert "valid_loss" in metrics[0].data  # the last step evaluates on the validation file
    assert "succeeded" in events[0].message

    (last, *_) = client.fine_tuning.jobs.checkpoints.list(sft.id)
    assert last.step_number == 8 and last.fine_tuned_model_checkpoint == f"{sft.fine_tuned_model}:ckpt-step-8"
    assert last.metrics.train_loss is not None and last.metrics.valid_loss is not None
    assert last.metrics.train_mean_token_accuracy is not None

    # DPO from the fine-tuned model: the worker resolves its name to the checkpoint, and the new model is
    # named after it.
    pairs = upload(client, tmp_path, "pairs.jsonl", [
        {"input": {"messages": [{"role": "user", "content": f"Shout: {w}"}]},
         "preferred_output": [{"role": "assistant", "content": w.upper()}],
         "non_preferred_output": [{"role": "assistant", "content": w}]} for w in WORDS])
    dpo, _ = follow(client, client.fine_tuning.jobs.create(
        model=sft.fine_tuned_model, training_file=pairs.id, suffix="dpo",
        method={"type": "dpo", "dpo": {"hyperparameters": {"n_epochs": 1, "batch_size": 8}}}).id)
    assert dpo.status == "succeeded", dpo.error
    assert dpo.model == sft.fine_tuned_model and dpo.fine_tuned_model == f"ft:{sft.fine_tuned_model}:" + \
        dpo.fine_tuned_model.removeprefix(f"ft:{sft.fine_tuned_model}:")
    assert dpo.fine_tuned_model.endswith(f":dpo:{dpo.id}")
