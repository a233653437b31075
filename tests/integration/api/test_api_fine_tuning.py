"""/v1/fine_tuning/jobs over plain HTTP on both backends: each method's job and what it maps to, the
refusals with their `param`, list and event pagination, checkpoints, status mapping, trained tokens and
the estimated finish. The runs are played by a reporter under a real lease (nothing trains here)."""

from datetime import UTC, datetime

import pytest
from sqlalchemy import update

from core.artifacts import ArtifactStore
from core.db import session_scope
from core.lifecycle import claim_job, transition
from core.models import Job, JobStatus
from tests.support import jsonl, upload
from worker.reporting import JobReporter

WORDS = ["apple", "river", "stone", "cloud"]
CHAT = [{"messages": [{"role": "user", "content": f"Shout: {w}"}, {"role": "assistant", "content": w.upper()}]}
        for w in WORDS]
PAIRS = [{"input": {"messages": [{"role": "user", "content": f"Shout: {w}"}]},
          "preferred_output": [{"role": "assistant", "content": w.upper()}],
          "non_preferred_output": [{"role": "assistant", "content": w}]} for w in WORDS]
PROMPTS = [{"messages": [{"role": "user", "content": f"Shout: {w}"}], "answer": w.upper()} for w in WORDS]
GRADER = {"type": "string_check", "name": "exact", "input": "{{sample.output_text}}",
          "reference": "{{item.answer}}", "operation": "eq"}
URL = "/v1/fine_tuning/jobs"


@pytest.fixture
def files(client) -> dict[str, str]:
    """One dataset per kind, by the method that trains on it."""
    return {"supervised": upload(client, jsonl(CHAT), kind="chat").json()["id"],
            "dpo": upload(client, jsonl(PAIRS), kind="preference").json()["id"],
            "reinforcement": upload(client, jsonl(PROMPTS), kind="prompt").json()["id"]}


def method(kind: str, **hyperparameters) -> dict:
    config = {"hyperparameters": hyperparameters} | ({"grader": GRADER} if kind == "reinforcement" else {})
    return {"type": kind, kind: config}


def create(client, training_file: str, **fields):
    return client.post(URL, json={"model": "builtin:tiny-llama", "training_file": training_file} | fields)


def create_with(client, training_file: str, fields: dict):
    """POST a body whose `fields` may replace any field, the training file too."""
    return client.post(URL, json={"model": "builtin:tiny-llama", "training_file": training_file} | fields)


def created(client, training_file: str, **fields) -> dict:
    r = create(client, training_file, **fields)
    assert r.status_code == 200, r.text
    return r.json()


def run(settings, job_id: str) -> JobReporter:
    """Claim the job as a worker would: a reporter holding its lease."""
    with session_scope(settings.database_url) as session:
        lease = claim_job(session, job_id, "w1")
    return JobReporter(url=settings.database_url, lease=lease, store=ArtifactStore(settings.artifacts_dir))


def save(directory):
    (directory / "model").mkdir()


def end(settings, job_id: str, status: JobStatus, **values) -> None:
    with session_scope(settings.database_url) as session:
        transition(session, job_id, status, values=values or None)


def test_each_method_maps_to_its_native_job_with_every_auto_resolved(client, files):
    sft = created(client, files["supervised"], suffix="shout", seed=7, metadata={"team": "a"},
                  method=method("supervised", n_epochs=2, learning_rate_multiplier=0.1))
    assert sft["id"].startswith("ftjob-") and sft["object"] == "fine_tuning.job" and sft["status"] == "queued"
    assert sft["method"] == {"type": "supervised", "supervised": {"hyperparameters": {
        "n_epochs": 2, "batch_size": 8, "learning_rate_multiplier": 0.1}}}
    assert sft["hyperparameters"] == sft["method"]["supervised"]["hyperparameters"]
    assert (sft["suffix"], sft["user_provided_suffix"], sft["seed"], sft["metadata"]) == ("shout", "shout", 7,
                                                                                          {"team": "a"})
    assert sft["fine_tuned_model"] is None and sft["trained_tokens"] is None and sft["error"] is None
    assert sft["training_file"] == files["supervised"] and sft["result_files"] == [] and sft["integrations"] is None
    native = client.get(f"/v1/jobs/{sft['id']}").json()
    assert native["type"] == "sft" and native["hyperparameters"]["n_epochs"] == 2
    assert native["hyperparameters"]["learning_rate"] == pytest.approx(0.1 * 2e-5)

    dpo = created(client, files["dpo"], method=method("dpo", beta=0.25, batch_size=4))
    assert dpo["method"]["dpo"]["hyperparameters"] == {"n_epochs": 1, "batch_size": 4,
                                                       "learning_rate_multiplier": 1.0, "beta": 0.25}
    native = client.get(f"/v1/jobs/{dpo['id']}").json()
    assert (native["type"], native["hyperparameters"]["beta"], native["hyperparameters"]["learning_rate"]) == (
        "dpo", 0.25, 1e-6)

    rft = created(client, files["reinforcement"], validation_file=files["reinforcement"],
                  method=method("reinforcement", batch_size=4, compute_multiplier=0.5, eval_interval=3,
                                learning_rate_multiplier=2))
    assert rft["method"]["reinforcement"]["hyperparameters"] == {
        "n_epochs": 1, "batch_size": 4, "learning_rate_multiplier": 2.0, "compute_multiplier": 0.5,
        "eval_interval": 3, "eval_samples": 1, "reasoning_effort": "default"}
    assert rft["method"]["reinforcement"]["grader"]["operation"] == "eq"
    assert rft["validation_file"] == files["reinforcement"]
    hp = client.get(f"/v1/jobs/{rft['id']}").json()["hyperparameters"]
    # 4 prompts × 4 completions (8 × 0.5) per rollout, all in one optimizer step.
    assert (hp["rollout_batch_size"], hp["num_generations"], hp["batch_size"], hp["eval_every"]) == (4, 4, 16, 3)
    assert hp["learning_rate"] == pytest.approx(2e-6)

    # All "auto": the native defaults, echoed as values.
    auto = created(client, files["reinforcement"], method=method("reinforcement", n_epochs="auto"))
    assert auto["method"]["reinforcement"]["hyperparameters"] | {"eval_interval": None} == {
        "n_epochs": 1, "batch_size": 8, "learning_rate_multiplier": 1.0, "compute_multiplier": 1.0,
        "eval_interval": None, "eval_samples": 1, "reasoning_effort": "default"}
    assert auto["method"]["reinforcement"]["hyperparameters"]["eval_interval"] == 100  # checkpoint_every


def test_top_level_hyperparameters_are_the_supervised_methods(client, files):
    job = created(client, files["supervised"], hyperparameters={"n_epochs": 4, "batch_size": "auto"})
    assert job["method"]["type"] == "supervised" and job["hyperparameters"]["n_epochs"] == 4
    assert job["hyperparameters"]["batch_size"] == 8


@pytest.mark.parametrize(("fields", "param", "says"), [
    ({"method": method("supervised", n_epoch=1)}, "method.supervised.hyperparameters.n_epoch", "n_epoch"),
    ({"method": method("supervised", beta=0.1)}, "method.supervised.hyperparameters.beta", "beta"),
    ({"method": method("supervised", n_epochs=0)}, "method.supervised.hyperparameters.n_epochs", "at least 1"),
    ({"method": method("supervised", learning_rate_multiplier="fast")},
     "method.supervised.hyperparameters.learning_rate_multiplier", '"auto"'),
    ({"method": method("supervised", n_epochs=1.5)}, "method.supervised.hyperparameters.n_epochs", "integer"),
    ({"method": {"type": "dpo", "supervised": {}}}, "method.supervised", "method.type"),
    ({"method": {"type": "unknown"}}, "method.type", ""),
    ({"method": {"type": "reinforcement"}}, "method.reinforcement.grader", "grader"),
    ({"method": method("reinforcement", eval_samples=4)},
     "method.reinforcement.hyperparameters.eval_samples", "only 1"),
    ({"method": method("reinforcement", reasoning_effort="high")},
     "method.reinforcement.hyperparameters.reasoning_effort", "default"),
    ({"method": method("supervised"), "hyperparameters": {"n_epochs": 2}}, "hyperparameters", "method.supervised"),
    ({"integrations": [{"type": "wandb", "wandb": {"project": "p"}}]}, "integrations", "not supported"),
    ({"suffix": "a:b"}, "suffix", ""),
    ({"suffix": "x" * 65}, "suffix", ""),
    ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata", ""),
    ({"model": "/etc/passwd"}, "model", "model reference"),
    ({"model": "ft:builtin:tiny-llama:test::ftjob-0123"}, "model", "fine-tuned model"),
    ({"training_file": "file-0123456789abcdef01234567"}, "training_file", "no file"),
    ({"validation_file": "ds_nothing"}, "validation_file", "no file"),
    ({"seed": -1}, "seed", ""),
    ({"learning_rate": 1}, "learning_rate", ""),
])
def test_mistakes_are_400_naming_the_field(client, files, fields, param, says):
    kind = fields.get("method", {}).get("type", "supervised")
    r = create_with(client, files.get(kind, files["supervised"]), fields)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and says in error["message"], error
    assert error["type"] == "invalid_request_error"


def test_a_file_of_another_kind_is_refused_naming_the_rows_the_method_needs(client, files):
    r = create(client, files["supervised"], method=method("dpo"))
    assert r.status_code == 400 and r.json()["error"]["param"] == "training_file"
    assert "preferred_output" in r.json()["error"]["message"]
    r = create(client, files["dpo"], validation_file=files["supervised"], method=method("dpo"))
    assert r.status_code == 400 and r.json()["error"]["param"] == "validation_file"


def test_rows_that_fit_the_methods_kind_too_make_the_file_that_kind_until_a_job_uses_it(client):
    # prompt/completion rows are chat rows, and also prompt rows whose `completion` a grader can read.
    rows = [{"prompt": f"Shout: {w}", "completion": w.upper()} for w in WORDS]
    file_id = upload(client, jsonl(rows), kind="chat").json()["id"]
    grader = GRADER | {"reference": "{{item.completion}}"}
    job = created(client, file_id, method={"type": "reinforcement", "reinforcement": {"grader": grader}})
    assert client.get(f"/v1/datasets/{file_id}").json()["kind"] == "prompt"
    assert job["training_file"] == file_id
    # Fixed now: the job reads it as prompt rows.
    r = create(client, file_id, method=method("supervised"))
    assert r.status_code == 400 and "fixed since job " + job["id"] in r.json()["error"]["message"]


def test_the_list_is_newest_first_paginated_and_filtered_by_metadata(client, files):
    ids = [created(client, files["supervised"], metadata={"batch": "b", "i": str(i)})["id"] for i in range(3)]
    other = created(client, files["dpo"], method=method("dpo"), metadata={"batch": "c"})["id"]
    native = client.post("/v1/jobs", json={"type": "dpo", "base_model": "builtin:tiny-llama",
                                           "dataset_id": files["dpo"]}).json()["id"]
    reward_model = client.post("/v1/jobs", json={"type": "reward_model", "base_model": "builtin:tiny-llama",
                                                 "dataset_id": files["dpo"]}).json()["id"]
    page = client.get(URL).json()
    assert page["object"] == "list" and [j["id"] for j in page["data"]] == [native, other, *ids[::-1]]
    assert reward_model not in {j["id"] for j in page["data"]}  # not a fine-tuning method
    assert client.get(f"{URL}/{reward_model}").status_code == 404
    assert client.get(f"{URL}/{native}").json()["method"]["type"] == "dpo"

    walked, after = [], None
    while True:
        params = {"limit": 1, "metadata[batch]": "b"} | ({"after": after} if after else {})
        page = client.get(URL, params=params).json()
        walked += [j["id"] for j in page["data"]]
        if not page["has_more"]:
            break
        after = page["data"][-1]["id"]
    assert walked == ids[::-1]
    both = {"metadata[batch]": "b", "metadata[i]": "1"}
    assert [j["id"] for j in client.get(URL, params=both).json()["data"]] == [ids[1]]
    assert [j["id"] for j in client.get(URL, params={"metadata": "null"}).json()["data"]] == [native]
    assert client.get(URL, params={"after": "ftjob-nothing"}).status_code == 400


def test_events_are_newest_first_with_a_metrics_event_per_step(client, settings, files):
    job = created(client, files["supervised"])
    reporter = run(settings, job["id"])
    reporter.on_start(3)
    for step in (1, 2, 3):
        reporter.on_metrics(step, {"train/loss": 2.0 / step, "train/mean_token_accuracy": 0.25 * step,
                                   "train/num_tokens": 40.0 * step})
        reporter.flush()
    reporter.on_event("warning", "a warning")
    reporter.on_checkpoint(3, save, {"metrics": {"train/loss": 0.5}, "model": {"kind": "causal_lm"}})
    end(settings, job["id"], JobStatus.succeeded)

    whole = client.get(f"{URL}/{job['id']}/events", params={"limit": 100}).json()
    events = whole["data"]
    assert whole["has_more"] is False and len({e["id"] for e in events}) == len(events) == 9
    assert [e["created_at"] for e in events] == sorted((e["created_at"] for e in events), reverse=True)
    assert all(e["object"] == "fine_tuning.job.event" and e["id"].startswith("ftevent-") for e in events)
    assert "succeeded" in events[0]["message"] and events[-3]["data"]["status"] == "running"
    assert [e["message"] for e in events[-2:]] == [
        f"Validated training file {files['supervised']}: 4 chat rows", f"Created fine-tuning job: {job['id']}"]
    metrics = [e for e in events if e["type"] == "metrics"]
    assert [e["data"]["step"] for e in metrics] == [3, 2, 1]
    assert metrics[0]["data"]["train_loss"] == pytest.approx(2 / 3) and metrics[0]["data"]["total_steps"] == 3
    assert metrics[0]["data"]["train_mean_token_accuracy"] == 0.75 and "Step 3/3" in metrics[0]["message"]
    assert next(e for e in events if e["message"] == "a warning")["level"] == "warn"

    walked, after = [], None
    while True:
        page = client.get(f"{URL}/{job['id']}/events", params={"limit": 2} | ({"after": after} if after else {}))
        walked += page.json()["data"]
        if not page.json()["has_more"]:
            break
        after = walked[-1]["id"]
    assert walked == events
    for bad in ("ftevent-x1", "ftevent-m999999", "nothing"):
        assert client.get(f"{URL}/{job['id']}/events", params={"after": bad}).status_code == 400

    done = client.get(f"{URL}/{job['id']}").json()
    assert done["trained_tokens"] == 120 and done["status"] == "succeeded" and done["estimated_finish"] is None
    assert done["fine_tuned_model"] == f"ft:builtin:tiny-llama:test::{job['id']}"


def test_checkpoints_are_named_as_models_with_openais_metrics(client, settings, files):
    job = created(client, files["supervised"], suffix="s")
    reporter = run(settings, job["id"])
    for step in (1, 2, 3):
        metrics = {"train/loss": 1.0 / step, "train/mean_token_accuracy": 0.5, "eval/loss": 2.0 / step}
        reporter.on_metrics(step, metrics)
        reporter.on_checkpoint(step, save, {"metrics": metrics, "model": {"kind": "causal_lm"}})
    page = client.get(f"{URL}/{job['id']}/checkpoints", params={"limit": 2}).json()
    assert page["has_more"] is True and [c["step_number"] for c in page["data"]] == [3, 2]
    newest = page["data"][0]
    assert newest["object"] == "fine_tuning.job.checkpoint" and newest["fine_tuning_job_id"] == job["id"]
    assert newest["fine_tuned_model_checkpoint"] == f"ft:builtin:tiny-llama:test:s:{job['id']}:ckpt-step-3"
    assert newest["metrics"] == {"step": 3.0, "train_loss": pytest.approx(1 / 3), "train_mean_token_accuracy": 0.5,
                                 "valid_loss": pytest.approx(2 / 3), "full_valid_loss": pytest.approx(2 / 3),
                                 "valid_mean_token_accuracy": None, "full_valid_mean_token_accuracy": None}
    rest = client.get(f"{URL}/{job['id']}/checkpoints", params={"after": page["data"][-1]["id"]}).json()
    assert [c["step_number"] for c in rest["data"]] == [1] and rest["has_more"] is False

    # Its checkpoint's name is a base model, and the new model is named after it.
    end(settings, job["id"], JobStatus.succeeded)
    name = client.get(f"{URL}/{job['id']}").json()["fine_tuned_model"]
    again = created(client, client.get(f"{URL}/{job['id']}").json()["training_file"], model=name, suffix="more")
    assert again["model"] == name
    step = newest["fine_tuned_model_checkpoint"]
    assert created(client, again["training_file"], model=step)["model"] == step


@pytest.mark.parametrize(("native", "shown"), [
    ("queued", "queued"), ("running", "running"), ("cancelling", "running"), ("pausing", "running"),
    ("paused", "paused"), ("succeeded", "succeeded"), ("failed", "failed"), ("cancelled", "cancelled"),
])
def test_status_mapping(client, settings, files, native, shown):
    job = created(client, files["supervised"])
    error = {"type": "user_error", "message": "bad row", "param": "dataset_id"} if native == "failed" else None
    with session_scope(settings.database_url) as session:
        session.execute(update(Job).where(Job.id == job["id"]).values(status=native, error=error))
    seen = client.get(f"{URL}/{job['id']}").json()
    assert seen["status"] == shown
    assert (seen["fine_tuned_model"] is not None) == (native == "succeeded")
    expected = {"code": "user_error", "message": "bad row", "param": "training_file"} if error else None
    assert seen["error"] == expected


def test_estimated_finish_is_the_jobs_own_in_unix_seconds_and_gone_once_it_ends(client, settings, files):
    job = created(client, files["supervised"])
    assert client.get(f"{URL}/{job['id']}").json()["estimated_finish"] is None  # queued
    finish = datetime(2030, 1, 1, 12, 30, 15, tzinfo=UTC)
    with session_scope(settings.database_url) as session:  # what the running worker measured (worker.pace)
        session.execute(update(Job).where(Job.id == job["id"]).values(status="running", estimated_finish=finish,
                                                                      steps_per_second=0.5))
    assert client.get(f"{URL}/{job['id']}").json()["estimated_finish"] == int(finish.timestamp())
    assert client.get(URL).json()["data"][0]["estimated_finish"] == int(finish.timestamp())
    end(settings, job["id"], JobStatus.succeeded)
    assert client.get(f"{URL}/{job['id']}").json()["estimated_finish"] is None


def test_cancel_pause_and_resume_drive_the_native_job(client, settings, files):
    job = created(client, files["supervised"])
    paused = client.post(f"{URL}/{job['id']}/pause")
    assert paused.status_code == 200 and paused.json()["status"] == "paused"
    assert client.post(f"{URL}/{job['id']}/resume").json()["status"] == "queued"
    cancelled = client.post(f"{URL}/{job['id']}/cancel").json()
    assert cancelled["status"] == "cancelled" and cancelled["finished_at"] is not None
    r = client.post(f"{URL}/{job['id']}/cancel")
    assert r.status_code == 409
    assert client.post(f"{URL}/{job['id']}/resume").status_code == 409
    running = created(client, files["supervised"])
    run(settings, running["id"])
    assert client.post(f"{URL}/{running['id']}/pause").json()["status"] == "running"  # pausing: until its step ends
    assert client.get(f"/v1/jobs/{running['id']}").json()["status"] == "pausing"
    assert client.get(f"{URL}/ftjob-0123456789abcdef01234567").status_code == 404
    assert client.post(f"{URL}/ftjob-0123456789abcdef01234567/cancel").status_code == 404


def test_an_idempotency_key_returns_the_first_job(client, files):
    body = {"model": "builtin:tiny-llama", "training_file": files["supervised"], "suffix": "once"}
    first = client.post(URL, json=body, headers={"Idempotency-Key": "k1"}).json()
    again = client.post(URL, json=body, headers={"Idempotency-Key": "k1"}).json()
    assert again["id"] == first["id"] and again["id"].startswith("ftjob-")
    r = client.post(URL, json=body | {"suffix": "twice"}, headers={"Idempotency-Key": "k1"})
    assert r.status_code == 409 and r.json()["error"]["param"] == "Idempotency-Key"
