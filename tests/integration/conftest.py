"""Fixtures shared by the integration tests."""

import pytest

from core.db import session_scope
from core.lifecycle import Lease, claim_job
from tests.support import jsonl, preference_rows, upload


@pytest.fixture
def claimed_job(client, settings) -> Lease:
    """A DPO job of the client's project, on a small uploaded dataset, claimed by worker "w1"."""
    dataset_id = upload(client, jsonl(preference_rows(4))).json()["id"]
    job_id = client.post("/v1/jobs", json={"type": "dpo", "base_model": "builtin:tiny-llama",
                                           "dataset_id": dataset_id}).json()["id"]
    with session_scope(settings.database_url) as session:
        return claim_job(session, job_id, "w1")
