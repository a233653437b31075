"""The whole service as a user meets it: uvicorn and a Celery worker as real processes.

Both deployments: embedded (SQLite + kombu's SQLAlchemy transport) and Postgres + Redis. A DPO job
on builtin:tiny-llama is followed over Server-Sent Events to its end; its checkpoint is downloaded,
verified and loaded with transformers; failures and cancellation go through the same processes.
"""

import hashlib
import io
import tarfile
import threading

import httpx
import pytest

from tests.e2e.e2e_support import create_dataset, stream_until_done, wait_for
from tests.metrics_support import Scrape, scrape

pytestmark = pytest.mark.e2e
HYPERPARAMETERS = {"learning_rate": 3e-3, "max_steps": 30, "batch_size": 8, "checkpoint_every": 10}


def test_dpo_job_trains_streams_and_its_checkpoint_loads(service, tmp_path):
    before = scrape(service)
    dataset_id = create_dataset(service)
    r = service.post("/v1/jobs", json={"type": "dpo", "base_model": "builtin:tiny-llama", "seed": 0,
                                       "dataset_id": dataset_id, "hyperparameters": HYPERPARAMETERS})
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]

    with MetricsWatch(service, job_id) as watch:
        frames = stream_until_done(service, job_id)
    statuses = [f["data"]["status"] for f in frames if f["event"] == "status"]
    assert statuses == ["running", "succeeded"], frames[-1]
    assert frames[-1]["event"] == "status"
    metrics = [f["data"] for f in frames if f["event"] == "metrics"]
    assert [m["step"] for m in metrics] == list(range(1, 31))
    first, last = metrics[0]["values"], metrics[-1]["values"]
    assert first["train/loss"] == pytest.approx(0.693, abs=0.05)  # log 2: policy == reference
    assert last["train/loss"] < 0.2 and last["train/loss"] < first["train/loss"] - 0.4
    assert all(m["values"]["rewards/accuracies"] > 0.9 for m in metrics[-5:])
    assert [f["data"]["step"] for f in frames if f["event"] == "checkpoint"] == [10, 20, 30]

    job = service.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "succeeded" and job["error"] is None
    assert job["current_step"] == job["total_steps"] == 30
    assert len(service.get(f"/v1/jobs/{job_id}/metrics", params={"limit": 1000}).json()["data"]) == 30
    ckpts = service.get(f"/v1/jobs/{job_id}/checkpoints").json()["data"]
    assert [(c["step"], c["is_final"]) for c in ckpts] == [(10, False), (20, False), (30, True)]
    final = ckpts[-1]
    assert final["metrics"]["train/loss"] == pytest.approx(last["train/loss"])

    archive = service.get(f"/v1/checkpoints/{final['id']}/download").content
    assert hashlib.sha256(archive).hexdigest() == final["sha256"] and len(archive) == final["size_bytes"]
    tarfile.open(fileobj=io.BytesIO(archive)).extractall(tmp_path, filter="data")

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tmp_path / final["id"]).eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / final["id"])
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    with torch.no_grad():
        ids = tokenizer(final["probe"]["text"], return_tensors="pt")["input_ids"]
        logits = model(input_ids=ids).logits[0, -1, : len(final["probe"]["logits"])]
    torch.testing.assert_close(logits, torch.tensor(final["probe"]["logits"]), rtol=0, atol=1e-5)

    # /metrics moved with the job: the database's gauges (read by the API process, which never sees the
    # worker) and the request counters of the routes used, by template.
    after = scrape(service)
    dpo = {"type": "dpo"}
    assert after["rlhf_jobs", dpo | {"status": "succeeded"}] - before["rlhf_jobs", dpo | {"status": "succeeded"}] == 1
    assert after["rlhf_jobs", dpo | {"status": "running"}] == 0 and after["rlhf_queue_depth", {}] == 0
    assert after["rlhf_checkpoints", dpo] - before["rlhf_checkpoints", dpo] == 3
    assert after["rlhf_checkpoint_bytes", dpo] - before["rlhf_checkpoint_bytes", dpo] == sum(
        c["size_bytes"] for c in ckpts)
    for method, route, status in [("POST", "/v1/datasets", "201"), ("POST", "/v1/jobs", "201"),
                                  ("GET", "/v1/jobs/{job_id}/stream", "200"),
                                  ("GET", "/v1/checkpoints/{checkpoint_id}/download", "200")]:
        labels = {"method": method, "route": route, "status": status}
        assert after[REQUESTS, labels] - before[REQUESTS, labels] == 1, labels
    # While it ran: its step gauge, and its pace once the worker measured one (a short run may end first).
    assert not watch.failures and watch.steps and max(watch.steps) <= 30
    assert all(v > 0 for v in watch.steps_per_second), watch.steps_per_second


REQUESTS = "rlhf_http_requests_total"


class MetricsWatch:
    """Scrape /metrics on a thread while a job runs; keep its step and steps/s samples."""

    def __init__(self, service: httpx.Client, job_id: str) -> None:
        self.url, self.job_id = service.base_url.join("/metrics"), job_id
        self.steps: list[float] = []
        self.steps_per_second: list[float] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        labels = {"job_id": self.job_id, "type": "dpo"}
        while not self._stop.wait(0.5):
            r = httpx.get(self.url, timeout=30)  # a connection of its own, apart from the test's client
            if r.status_code != 200:
                self.failures.append(r.text)
                continue
            sample = Scrape(r.text)
            if labels in sample.series("rlhf_job_current_step"):
                self.steps.append(sample["rlhf_job_current_step", labels])
            if labels in sample.series("rlhf_job_steps_per_second"):
                self.steps_per_second.append(sample["rlhf_job_steps_per_second", labels])

    def __enter__(self) -> "MetricsWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def test_unknown_model_fails_as_a_user_error(service):
    dataset_id = create_dataset(service)
    job_id = service.post("/v1/jobs", json={"type": "dpo", "base_model": "nobody/no-such-model",
                                            "dataset_id": dataset_id}).json()["id"]
    frames = stream_until_done(service, job_id)
    assert frames[-1]["data"]["status"] == "failed"
    error = service.get(f"/v1/jobs/{job_id}").json()["error"]
    assert error["type"] == "user_error" and error["param"] == "base_model"
    assert "nobody/no-such-model" in error["message"]


def test_running_job_is_cancelled_and_keeps_its_checkpoint(service):
    dataset_id = create_dataset(service)
    job_id = service.post("/v1/jobs", json={
        "type": "dpo", "base_model": "builtin:tiny-llama", "dataset_id": dataset_id,
        "hyperparameters": {"max_steps": 100000, "checkpoint_every": 100000}}).json()["id"]
    wait_for(service, job_id, lambda j: j["current_step"] >= 2, "step 2")
    assert service.post(f"/v1/jobs/{job_id}/cancel").json()["status"] == "cancelling"
    job = wait_for(service, job_id, lambda j: j["status"] not in ("running", "cancelling"), "an end")
    assert job["status"] == "cancelled"
    ckpts = service.get(f"/v1/jobs/{job_id}/checkpoints").json()["data"]
    assert len(ckpts) == 1 and ckpts[0]["step"] >= 2 and ckpts[0]["is_final"]
    assert service.post(f"/v1/jobs/{job_id}/cancel").status_code == 409
