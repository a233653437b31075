"""Checkpoints kept in S3-compatible object storage, on both deployments: the worker's reporter uploads
them, the API streams their download from the bucket, byte for byte the archive the local backend
makes; a checkpoint whose upload failed never appears."""

import hashlib
import os

import pytest
from sqlalchemy import func, select

from core.artifacts import S3ArtifactStore, iter_tar, open_store
from core.db import session_scope
from core.model_refs import resolve_model_ref
from core.models import Checkpoint, Job
from tests.support import BACKENDS, embedded_settings
from worker.reporting import JobReporter


@pytest.fixture(params=BACKENDS)
def settings(request, tmp_path, s3_overrides):
    """The deployment's settings with ARTIFACTS_URL naming a fresh bucket."""
    if request.param == "embedded":
        return embedded_settings(tmp_path, **s3_overrides)
    return request.getfixturevalue("postgres_settings_factory")(**s3_overrides)


def save_files(directory):
    (directory / "model" / "sub").mkdir(parents=True)
    (directory / "model" / "config.json").write_text('{"step": 2}')
    (directory / "model" / "sub" / "weights.bin").write_bytes(os.urandom(300_000))
    (directory / "trainer_state.pt").write_bytes(b"optimizer state")


def test_checkpoint_uploads_and_downloads_as_the_local_archive(client, settings, claimed_job, tmp_path):
    store = open_store(settings)
    assert isinstance(store, S3ArtifactStore)
    reporter = JobReporter(url=settings.database_url, lease=claimed_job, store=store)
    reporter.on_checkpoint(2, save_files, {"metrics": {"train/loss": 0.5}})
    ckpt = client.get(f"/v1/jobs/{claimed_job.job_id}/checkpoints").json()["data"][0]

    with session_scope(settings.database_url) as session:
        key = session.get(Checkpoint, ckpt["id"]).artifact_key
    assert key == f"jobs/{claimed_job.job_id}/attempt-{claimed_job.attempt}/checkpoint-00000002"
    assert not (settings.artifacts_dir / "jobs").exists()  # in the bucket, not on this machine's disk
    copy = store.local_dir(key)  # what a resumed run on another machine reads
    assert (copy / "trainer_state.pt").read_bytes() == b"optimizer state"

    r = client.get(f"/v1/checkpoints/{ckpt['id']}/download")
    assert r.status_code == 200 and r.headers["content-type"] == "application/x-tar"
    assert r.content == b"".join(iter_tar(copy / "model", ckpt["id"]))
    assert int(r.headers["content-length"]) == len(r.content) == ckpt["size_bytes"]
    assert r.headers["etag"] == f'"{ckpt["sha256"]}"' == f'"{hashlib.sha256(r.content).hexdigest()}"'


def test_a_checkpoint_base_model_is_fetched_to_the_local_cache(client, settings, claimed_job):
    reporter = JobReporter(url=settings.database_url, lease=claimed_job, store=open_store(settings))
    reporter.on_checkpoint(2, save_files, {})
    ckpt_id = client.get(f"/v1/jobs/{claimed_job.job_id}/checkpoints").json()["data"][0]["id"]
    with session_scope(settings.database_url) as session:
        project_id = session.get(Job, claimed_job.job_id).project_id
        checked = resolve_model_ref(f"checkpoint:{ckpt_id}", settings=settings, session=session,
                                    project_id=project_id)
        fetched = resolve_model_ref(f"checkpoint:{ckpt_id}", settings=settings, session=session,
                                    project_id=project_id, download=True)
    bucket_path = settings.artifacts_url.removeprefix("s3://")
    assert checked.location.startswith(f"s3://{bucket_path}/jobs/") and checked.location.endswith("/model")
    assert fetched.location.startswith(str((settings.artifacts_dir / "cache").resolve()))
    assert os.path.exists(os.path.join(fetched.location, "sub", "weights.bin"))


def test_a_failed_upload_records_no_checkpoint(client, settings, claimed_job):
    store = open_store(settings)
    reporter = JobReporter(url=settings.database_url, lease=claimed_job, store=store)

    def unstorable(directory):
        save_files(directory)
        (directory / "model" / os.fsdecode(b"z\xff.bin")).write_bytes(b"no object can be named so")

    with pytest.raises(UnicodeEncodeError):
        reporter.on_checkpoint(2, unstorable, {})
    with session_scope(settings.database_url) as session:
        assert session.scalar(select(func.count()).select_from(Checkpoint)) == 0
    assert client.get(f"/v1/jobs/{claimed_job.job_id}/checkpoints").json()["data"] == []
    assert store.client.list_objects_v2(Bucket=store.bucket).get("KeyCount") == 0
    assert list((settings.artifacts_dir / ".staging").iterdir()) == []
