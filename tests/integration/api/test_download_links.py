"""Checkpoint download links on both backends: a link made with the API key downloads, without it, exactly
what GET /v1/checkpoints/{id}/download streams (also merged), as often as asked until it expires; then, or
for an unknown token or another project's checkpoint, 404.

Checkpoints are written by the worker's own reporter, with a small stand-in model directory.
"""

import hashlib
import io
import tarfile
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from core.artifacts import ArtifactStore, tar_digest
from core.db import session_scope
from core.lifecycle import Lease
from core.models import Checkpoint, DownloadToken
from tests.support import new_project_key
from worker.reporting import JobReporter

GONE = "this download link is unknown or has expired"


def save_model(marker: str):
    def save(directory):
        (directory / "model").mkdir()
        (directory / "model" / "config.json").write_text(f'{{"marker": "{marker}"}}')
        (directory / "model" / "weights.bin").write_bytes(marker.encode() * 4096)
    return save


@pytest.fixture
def checkpoints(settings, claimed_job) -> dict[str, dict]:
    """Two checkpoints of the client's job: `full` (a whole model) and `lora` (an adapter), as the API shows them."""
    rep = JobReporter(url=settings.database_url, lease=Lease(claimed_job.job_id, 1, "w1"),
                      store=ArtifactStore(settings.artifacts_dir))
    rep.on_metrics(1, {"train/loss": 0.5})
    rep.on_checkpoint(1, save_model("full"), {"model": {"kind": "causal_lm", "adapter": False}})
    rep.on_metrics(2, {"train/loss": 0.4})
    rep.on_checkpoint(2, save_model("adapter"), {"model": {"kind": "causal_lm", "adapter": True}})
    full, lora = checkpoint_rows(settings, claimed_job.job_id)
    return {"full": full, "lora": lora}


def checkpoint_rows(settings, job_id) -> list[dict]:
    """The job's checkpoints by step: id, sha256, and where the store keeps them."""
    with session_scope(settings.database_url) as session:
        rows = session.scalars(select(Checkpoint).where(Checkpoint.job_id == job_id).order_by(Checkpoint.step)).all()
        return [{"id": c.id, "sha256": c.sha256, "artifact_key": c.artifact_key} for c in rows]


def anonymous(client) -> TestClient:
    """A client of the same app that sends no API key."""
    return TestClient(client.app)


def make_link(client, checkpoint_id: str, **params) -> dict:
    r = client.post(f"/v1/checkpoints/{checkpoint_id}/download_link", params=params)
    assert r.status_code == 201, r.text
    return r.json()


def test_a_link_downloads_the_archive_without_a_key_until_it_expires(client, settings, checkpoints):
    ckpt = checkpoints["full"]
    link = make_link(client, ckpt["id"])
    token = link["url"].removeprefix("/v1/downloads/")
    assert link["url"] == f"/v1/downloads/{token}" and len(token) == 43  # 32 random bytes, url-safe base64
    assert link["checkpoint_id"] == ckpt["id"] and link["merged"] is False
    lifetime = datetime.fromisoformat(link["expires_at"]) - datetime.now(UTC)
    assert timedelta(seconds=settings.download_link_seconds - 60) < lifetime <= timedelta(
        seconds=settings.download_link_seconds)

    keyless = anonymous(client)
    direct = client.get(f"/v1/checkpoints/{ckpt['id']}/download")
    for _ in range(2):  # a browser may fetch a link again (a retried or restarted download)
        r = keyless.get(link["url"])
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "application/x-tar"
        assert r.headers["content-disposition"] == f'attachment; filename="{ckpt["id"]}.tar"'
        assert r.content == direct.content and hashlib.sha256(r.content).hexdigest() == ckpt["sha256"]
        assert int(r.headers["content-length"]) == len(r.content)

    # Only the token's sha256 is stored.
    with session_scope(settings.database_url) as session:
        row = session.get(DownloadToken, hashlib.sha256(token.encode()).hexdigest())
        assert row is not None and row.checkpoint_id == ckpt["id"] and row.merged is False
        session.execute(update(DownloadToken).values(expires_at=datetime.now(UTC) - timedelta(seconds=1)))

    r = keyless.get(link["url"])
    assert r.status_code == 404 and r.json()["error"]["param"] == "token"
    assert r.json()["error"]["message"].startswith(GONE)
    with session_scope(settings.database_url) as session:  # the expired link is gone
        assert session.scalars(select(DownloadToken)).all() == []


def test_making_a_link_deletes_the_expired_ones(client, settings, checkpoints):
    old = make_link(client, checkpoints["full"]["id"])
    with session_scope(settings.database_url) as session:
        session.execute(update(DownloadToken).values(expires_at=datetime.now(UTC) - timedelta(seconds=1)))
    new = make_link(client, checkpoints["full"]["id"])
    with session_scope(settings.database_url) as session:
        hashes = session.scalars(select(DownloadToken.token_hash)).all()
    token = new["url"].rsplit("/", 1)[1]
    assert hashes == [hashlib.sha256(token.encode()).hexdigest()]
    assert anonymous(client).get(old["url"]).status_code == 404


def test_a_merged_link_gives_what_a_merged_download_gives(client, settings, checkpoints):
    # The merged model of the adapter, as a first merged download would leave it (made here without the
    # model process: a merge is tested in test_api_scoring.py).
    lora = checkpoints["lora"]
    store = ArtifactStore(settings.artifacts_dir)
    staging = store.staging_dir()
    save_model("merged")(staging)
    staging = staging / "model"
    size, sha256 = tar_digest(staging, f"{lora['id']}-merged")
    store.commit(staging, f"{lora['artifact_key']}/merged")
    with session_scope(settings.database_url) as session:
        session.execute(update(Checkpoint).where(Checkpoint.id == lora["id"])
                        .values(merged_size_bytes=size, merged_sha256=sha256))

    keyless = anonymous(client)
    merged_link = make_link(client, lora["id"], merged="true")
    assert merged_link["merged"] is True
    r = keyless.get(merged_link["url"])
    assert r.status_code == 200, r.text
    assert r.content == client.get(f"/v1/checkpoints/{lora['id']}/download", params={"merged": "true"}).content
    assert hashlib.sha256(r.content).hexdigest() == sha256
    assert r.headers["content-disposition"] == f'attachment; filename="{lora["id"]}-merged.tar"'
    assert b'"marker": "merged"' in tarfile.open(fileobj=io.BytesIO(r.content)).extractfile(
        f"{lora['id']}-merged/config.json").read()

    adapter = keyless.get(make_link(client, lora["id"])["url"])  # merged=false: the adapter itself
    assert hashlib.sha256(adapter.content).hexdigest() == lora["sha256"]
    # A whole model has nothing to merge: its merged link gives the model.
    full = checkpoints["full"]
    r = keyless.get(make_link(client, full["id"], merged="true")["url"])
    assert hashlib.sha256(r.content).hexdigest() == full["sha256"]


def test_links_need_the_key_and_stay_within_the_project(client, settings, checkpoints, app_client_factory):
    ckpt = checkpoints["full"]["id"]
    r = anonymous(client).post(f"/v1/checkpoints/{ckpt}/download_link")
    assert r.status_code == 401
    with app_client_factory(new_project_key(settings, "other")) as other:
        r = other.post(f"/v1/checkpoints/{ckpt}/download_link")
        assert r.status_code == 404 and r.json()["error"]["param"] == "checkpoint_id"
    for token in ("unknown", "x" * 43, "a%00b"):
        r = anonymous(client).get(f"/v1/downloads/{token}")
        assert r.status_code == 404 and r.json()["error"]["message"].startswith(GONE)
    schema = client.get("/openapi.json").json()["paths"]
    assert "security" not in schema["/v1/downloads/{token}"]["get"]  # the token is the credential
    assert schema["/v1/checkpoints/{checkpoint_id}/download_link"]["post"]["security"] == [{"HTTPBearer": []}]
