"""Scoring and adapter merging with checkpoints kept in object storage: the API's model process reads
them from a local cache filled from the bucket, and a merged model goes back to the bucket."""

import hashlib
import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from core.artifacts import open_store
from core.db import session_scope
from core.models import Checkpoint
from tests.integration.api.test_api_scoring import PAIRS, trainers_cli
from tests.support import embedded_settings, jsonl, new_project_key, preference_rows, upload
from trainers.data.synthetic import uppercase_preference_rows

pytestmark = [pytest.mark.e2e, pytest.mark.trains]  # starts the model process; trains two tiny models


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """Model directories of a reward model and of a LoRA DPO adapter, each after one step."""
    root = tmp_path_factory.mktemp("models")
    (root / "rows.jsonl").write_bytes(jsonl(uppercase_preference_rows(8)))
    for name, extra in [("reward_model", []), ("dpo", ["--lora", '{"r": 4}'])]:
        trainers_cli(name, "--data", root / "rows.jsonl", "--base-model", "builtin:tiny-llama", *extra,
                     "--output", root / name, "--max-steps", 1, "--batch-size", 8)  # fmt: skip
    return root / "reward_model" / "checkpoint-1" / "model", root / "dpo" / "checkpoint-1" / "model"


def test_scores_and_a_merged_download_come_from_the_bucket(tmp_path, s3_overrides, trained):
    reward_model_dir, adapter_dir = trained
    cli_scores = json.loads(trainers_cli("score", "--model-dir", reward_model_dir, stdin=json.dumps(PAIRS)))
    settings = embedded_settings(tmp_path, **s3_overrides)
    client = TestClient(create_app(settings), headers={"Authorization": f"Bearer {new_project_key(settings)}"})
    dataset = upload(client, jsonl(preference_rows(4))).json()["id"]
    job = client.post("/v1/jobs", json={"type": "reward_model", "base_model": "builtin:tiny-llama",
                                        "dataset_id": dataset}).json()["id"]  # fmt: skip
    store = open_store(settings)
    with session_scope(settings.database_url) as session:
        for step, directory in enumerate([reward_model_dir, adapter_dir], start=1):
            staging = store.staging_dir()
            shutil.copytree(directory, staging / "model")
            store.commit(staging, f"{job}/step-{step}")
            session.add(Checkpoint(job_id=job, step=step, artifact_key=f"{job}/step-{step}", size_bytes=1,
                                   sha256="0" * 64, metrics={},
                                   model_info=json.loads((directory / "rlhf_service.json").read_text())))
    reward, lora = (c["id"] for c in client.get(f"/v1/jobs/{job}/checkpoints").json()["data"])
    assert not (settings.artifacts_dir / job).exists()

    with client:
        assert client.post(f"/v1/checkpoints/{reward}/score", json={"pairs": PAIRS}).json()["data"] == cli_scores
        r = client.get(f"/v1/checkpoints/{lora}/download", params={"merged": "true"})
        assert r.status_code == 200, r.text
        again = client.get(f"/v1/checkpoints/{lora}/download", params={"merged": "true"})
    merged_sha256 = client.get(f"/v1/checkpoints/{lora}").json()["merged_sha256"]
    assert hashlib.sha256(r.content).hexdigest() == merged_sha256 and again.content == r.content
    names = {n.split("/", 1)[1] for n in tarfile.open(fileobj=io.BytesIO(r.content)).getnames() if "/" in n}
    assert "model.safetensors" in names and "adapter_config.json" not in names
    assert store.exists(f"{job}/step-2/merged") and not (settings.artifacts_dir / job).exists()
    assert sorted(p.name for p in (settings.artifacts_dir / "cache").iterdir()) == sorted(
        f"{job}%2Fstep-{step}%2Fmodel" for step in (1, 2))
