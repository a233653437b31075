"""A supervised fine-tuning job through the real API and worker processes: chat upload, training, download."""

import hashlib

import pytest

from tests.e2e.e2e_support import assert_download_reproduces_probe, stream_until_done
from tests.support import jsonl
from tests.unit.trainers.test_sft import ROWS

pytestmark = pytest.mark.e2e


def test_sft_job_trains_on_a_chat_dataset_and_its_checkpoint_downloads(embedded_service, tmp_path):
    service = embedded_service  # the deployments differ in nothing SFT adds; other flows cover both
    r = service.post("/v1/datasets", data={"kind": "chat", "name": "spelling"},
                     files={"file": ("chat.jsonl", jsonl(ROWS))})  # fmt: skip
    assert r.status_code == 201 and r.json()["kind"] == "chat", r.text
    r = service.post("/v1/jobs", json={
        "type": "sft", "base_model": "builtin:tiny-llama", "dataset_id": r.json()["id"],
        "eval_dataset_id": r.json()["id"],
        "hyperparameters": {"learning_rate": 3e-3, "max_steps": 12, "batch_size": 8, "checkpoint_every": 6}})
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]

    frames = stream_until_done(service, job_id)
    assert [f["data"]["status"] for f in frames if f["event"] == "status"] == ["running", "succeeded"], frames[-1]
    metrics = [f["data"]["values"] for f in frames if f["event"] == "metrics"]
    assert len(metrics) == 12
    assert metrics[-1]["train/loss"] < metrics[0]["train/loss"] - 1.0
    assert metrics[-1]["train/num_tokens"] > metrics[0]["train/num_tokens"] > 0
    assert {"train/mean_token_accuracy", "eval/loss", "eval/mean_token_accuracy"} <= set(metrics[-1])

    checkpoints = service.get(f"/v1/jobs/{job_id}/checkpoints").json()["data"]
    assert [(c["step"], c["is_final"]) for c in checkpoints] == [(6, False), (12, True)]
    final = checkpoints[-1]
    assert final["model"]["kind"] == "causal_lm" and final["model"]["adapter"] is False
    archive = service.get(f"/v1/checkpoints/{final['id']}/download").content
    assert hashlib.sha256(archive).hexdigest() == final["sha256"]
    assert_download_reproduces_probe(archive, final, tmp_path)

    # A chat dataset is no preference dataset, and the reverse.
    preference = service.post("/v1/datasets", data={"kind": "preference"}, files={"file": ("p.jsonl", jsonl(
        [{"prompt": "p", "chosen": "a", "rejected": "b"}]))}).json()["id"]  # fmt: skip
    r = service.post("/v1/jobs", json={"type": "sft", "base_model": "builtin:tiny-llama", "dataset_id": preference})
    assert r.status_code == 422 and r.json()["error"]["param"] == "dataset_id", r.text
