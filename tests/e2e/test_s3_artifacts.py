"""The embedded deployment with its checkpoints in S3-compatible object storage: a DPO job's checkpoint
goes to the bucket, downloads through the API and loads with transformers."""

import hashlib

import pytest

from tests.e2e.e2e_support import assert_download_reproduces_probe, create_dataset, deployment, stream_until_done

pytestmark = pytest.mark.e2e


def train(client, base_model: str, dataset_id: str) -> dict:
    """Run a short DPO job to its end; its final checkpoint."""
    r = client.post("/v1/jobs", json={"type": "dpo", "base_model": base_model, "seed": 0, "dataset_id": dataset_id,
                                      "hyperparameters": {"max_steps": 4, "batch_size": 4, "checkpoint_every": 4}})
    assert r.status_code == 201, r.text
    frames = stream_until_done(client, r.json()["id"])
    assert [f["data"]["status"] for f in frames if f["event"] == "status"] == ["running", "succeeded"]
    return client.get(f"/v1/jobs/{r.json()['id']}/checkpoints").json()["data"][-1]


def test_dpo_checkpoint_in_object_storage_downloads_loads_and_trains_on(request, tmp_path, s3_overrides):
    env = {name.upper(): value for name, value in s3_overrides.items()}
    with deployment(request, tmp_path / "service", backend="embedded", **env) as dep:
        dataset_id = create_dataset(dep.client)
        final = train(dep.client, "builtin:tiny-llama", dataset_id)
        archive = dep.client.get(f"/v1/checkpoints/{final['id']}/download").content
        train(dep.client, f"checkpoint:{final['id']}", dataset_id)  # the worker fetches it from the bucket
        artifacts = dep.settings.artifacts_dir
        assert not (artifacts / "jobs").exists()  # checkpoints are in the bucket only
        assert [p.name.endswith("%2Fmodel") for p in (artifacts / "cache").iterdir()] == [True]

    assert hashlib.sha256(archive).hexdigest() == final["sha256"] and len(archive) == final["size_bytes"]
    assert_download_reproduces_probe(archive, final, tmp_path)
