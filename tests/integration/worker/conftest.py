"""What the worker's integration tests share: a queued DPO job, and a run's lease and reporter on it."""

import pytest

from core.artifacts import ArtifactStore
from core.db import session_scope
from core.lifecycle import Lease, claim_job
from tests.support import jsonl, preference_rows, upload
from worker.reporting import JobReporter


@pytest.fixture
def job_id(client) -> str:
    """A queued DPO job on a four-pair dataset."""
    ds = upload(client, jsonl(preference_rows(4))).json()["id"]
    return client.post("/v1/jobs", json={"type": "dpo", "base_model": "builtin:tiny-llama",
                                         "dataset_id": ds}).json()["id"]


@pytest.fixture
def claim(settings):
    """Claim a job as a worker would: `claim(job_id, worker_id="w1") -> Lease`."""
    def claim(job_id: str, worker_id: str = "w1") -> Lease:
        with session_scope(settings.database_url) as session:
            return claim_job(session, job_id, worker_id)
    return claim


@pytest.fixture
def reporter(settings):
    """The reporter a run writes through under its lease: `reporter(lease) -> JobReporter`."""
    store = ArtifactStore(settings.artifacts_dir)
    return lambda lease: JobReporter(url=settings.database_url, lease=lease, store=store)
