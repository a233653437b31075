"""Uploads write rows in short transactions into a hidden dataset: other writers go on, readers see all or nothing."""

import io
import threading
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from api.errors import InvalidRequest, TooLarge
from api.services import datasets as service
from core.db import session_factory, session_scope
from core.models import Dataset, DatasetRow, Job, utcnow
from tests.support import jsonl, preference_rows, project_of, upload

ROWS = preference_rows(2 * service.INSERT_BATCH + 10)
CONTENT = jsonl(ROWS)
PAUSE_AT = 2 * service.INSERT_BATCH + 5  # a line read after two batches were committed


class PausingFile(io.BytesIO):
    """An upload that stops at one line until told to go on (or fails there), as a slow client's would."""

    def __init__(self, content: bytes, pause_at: int, fail: bool = False) -> None:
        super().__init__(content)
        self.pause_at, self.fail, self.lines = pause_at, fail, 0
        self.paused, self.resume = threading.Event(), threading.Event()

    def readline(self, size: int = -1) -> bytes:
        self.lines += 1
        if self.lines == self.pause_at:
            if self.fail:
                raise OSError("the client went away")
            self.paused.set()
            assert self.resume.wait(120), "the test never resumed the upload"
        return super().readline(size)


def _counts(settings) -> tuple[int, int]:
    with session_scope(settings.database_url) as session:
        return (session.scalar(select(func.count()).select_from(Dataset)),
                session.scalar(select(func.count()).select_from(DatasetRow)))


def _create(settings, project_id: str, file, **kwargs):
    session = session_factory(settings.database_url)()
    try:
        return service.create(session=session, project_id=project_id, file=file, filename="big.jsonl",
                              name="big", kind="preference", **kwargs)
    finally:
        session.close()


def test_writers_go_on_and_readers_see_nothing_while_an_upload_is_in_progress(client, settings, project_key):
    project_id = project_of(settings, project_key)
    paused_file = PausingFile(CONTENT, PAUSE_AT)
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(
        out=_create(settings, project_id, paused_file, idempotency_key="k1")))
    thread.start()
    try:
        assert paused_file.paused.wait(60), "the upload never reached its pause"
        with session_scope(settings.database_url) as session:
            staged = session.scalar(select(Dataset).where(Dataset.status == "uploading"))
            assert staged is not None, "the dataset row was not committed before its rows"
            # Two batches are committed already: the upload holds no transaction while it reads the file.
            assert session.scalar(select(func.count()).where(DatasetRow.dataset_id == staged.id)) == 2 * len(
                ROWS[:service.INSERT_BATCH])
        # Other writers complete now, not after the whole file: another upload, a job's heartbeat.
        other = upload(client, jsonl(ROWS[:3]), name="small")
        assert other.status_code == 201, other.text
        with session_scope(settings.database_url) as session:
            job = Job(type="dpo", base_model="builtin:tiny-llama", dataset_id=other.json()["id"],
                      hyperparameters={}, project_id=project_id)
            session.add(job)
        with session_scope(settings.database_url) as session:
            beat = session.execute(update(Job).where(Job.id == job.id).values(heartbeat_at=utcnow())).rowcount
        assert beat == 1
        # Readers treat the staged dataset as absent.
        assert [d["name"] for d in client.get("/v1/datasets").json()["data"]] == ["small"]
        for path in (f"/v1/datasets/{staged.id}", f"/v1/datasets/{staged.id}/rows"):
            assert client.get(path).status_code == 404
        assert client.delete(f"/v1/datasets/{staged.id}").status_code == 404
        r = client.post("/v1/jobs", json={"type": "dpo", "base_model": "builtin:tiny-llama",
                                          "dataset_id": staged.id})
        assert r.status_code == 404 and r.json()["error"]["param"] == "dataset_id"
        # The same Idempotency-Key again while the first upload runs: a conflict, not a second dataset.
        r = client.post("/v1/datasets", files={"file": ("big.jsonl", CONTENT)},
                        data={"kind": "preference", "name": "big"}, headers={"Idempotency-Key": "k1"})
        assert r.status_code == 409, r.text
        assert r.json()["error"]["param"] == "Idempotency-Key" and "in progress" in r.json()["error"]["message"]
    finally:
        paused_file.resume.set()
        thread.join(120)
    dataset, created = result["out"]
    assert created and dataset.status == "ready" and dataset.row_count == len(ROWS)
    assert client.get(f"/v1/datasets/{dataset.id}").json()["row_count"] == len(ROWS)
    assert [d["name"] for d in client.get("/v1/datasets").json()["data"]] == ["big", "small"]
    rows = client.get(f"/v1/datasets/{dataset.id}/rows", params={"limit": 1, "after": len(ROWS) - 2}).json()
    assert rows["data"][0]["data"] == ROWS[-1]
    again = client.post("/v1/datasets", files={"file": ("big.jsonl", CONTENT)},
                        data={"kind": "preference", "name": "big"}, headers={"Idempotency-Key": "k1"})
    assert again.status_code == 200 and again.json()["id"] == dataset.id


@pytest.mark.parametrize("failure", ["bad_row", "too_many_rows", "client_gone"])
def test_a_failed_upload_leaves_no_rows_and_no_dataset(settings, project_key, failure):
    project_id = project_of(settings, project_key)
    kwargs: dict = {}
    if failure == "bad_row":
        file = io.BytesIO(CONTENT + b'{"prompt": "p"}\n')
        expected = InvalidRequest
    elif failure == "too_many_rows":
        file, kwargs, expected = io.BytesIO(CONTENT), {"max_rows": len(ROWS) - 1}, TooLarge
    else:
        file, expected = PausingFile(CONTENT, PAUSE_AT, fail=True), OSError
    with pytest.raises(expected):
        _create(settings, project_id, file, **kwargs)
    assert _counts(settings) == (0, 0)


def test_stale_uploads_are_deleted_before_the_next_upload(client, settings, project_key):
    project_id = project_of(settings, project_key)
    long_ago = utcnow() - timedelta(seconds=settings.stale_upload_seconds + 60)
    with session_scope(settings.database_url) as session:
        for name, updated_at in (("crashed", long_ago), ("running", utcnow())):
            staged = Dataset(project_id=project_id, name=name, kind="preference", filename="f.jsonl",
                             format="jsonl", sha256="0" * 64, status="uploading", updated_at=updated_at,
                             idempotency_key=f"key-{name}", request_hash="0" * 64)
            session.add(staged)
            session.flush()
            session.add_all(DatasetRow(dataset_id=staged.id, idx=i, line=i + 1, data=row)
                            for i, row in enumerate(ROWS[:7]))
    r = client.post("/v1/datasets", files={"file": ("d.jsonl", jsonl(ROWS[:2]))}, data={"kind": "preference"},
                    headers={"Idempotency-Key": "key-crashed"})
    assert r.status_code == 201, r.text  # the crashed upload's key is free again
    with session_scope(settings.database_url) as session:
        left = session.execute(select(Dataset.name, Dataset.status).order_by(Dataset.name)).all()
        assert [tuple(row) for row in left] == [("d.jsonl", "ready"), ("running", "uploading")]
        assert session.scalar(select(func.count()).select_from(DatasetRow)) == 7 + 2
    r = client.post("/v1/datasets", files={"file": ("d.jsonl", jsonl(ROWS[:2]))}, data={"kind": "preference"},
                    headers={"Idempotency-Key": "key-running"})
    assert r.status_code == 409 and r.json()["error"]["param"] == "Idempotency-Key"


def test_delete_removes_every_row_of_a_dataset_larger_than_a_batch(client, settings, monkeypatch):
    monkeypatch.setattr(service, "DISCARD_BATCH", 7)
    ds = upload(client, jsonl(ROWS[:30])).json()["id"]
    assert client.delete(f"/v1/datasets/{ds}").status_code == 204
    assert client.get(f"/v1/datasets/{ds}").status_code == 404
    assert _counts(settings) == (0, 0)
