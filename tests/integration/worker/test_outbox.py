"""Reliable enqueueing: a job moved to `queued` whose message the broker never got, or has lost, is
sent again by the workers' reaper loop; one whose message is still in the broker is left alone.

Both backends, with their real brokers; an unreachable broker is a Celery app on a closed port.
"""

import socket
import time
from datetime import timedelta

import pytest
import redis
from sqlalchemy import update

from core.db import session_scope
from core.lifecycle import transition
from core.models import Job, JobStatus, utcnow
from core.queue import make_celery, withdraw_job
from tests.support import jsonl, preference_rows, queued_messages, upload
from worker.reaper import reap_stale_jobs


@pytest.fixture
def job_id(client) -> str:
    ds = upload(client, jsonl(preference_rows(4))).json()["id"]
    return client.post("/v1/jobs", json={"type": "dpo", "base_model": "builtin:tiny-llama",
                                         "dataset_id": ds}).json()["id"]


def job(settings, job_id) -> Job:
    with session_scope(settings.database_url) as session:
        return session.get(Job, job_id)


def lose_worker(settings, job_id) -> None:
    """The job ran on a worker that died: its message was taken and its lease has run out."""
    withdraw_job(make_celery(settings), job_id)
    with session_scope(settings.database_url) as session:
        transition(session, job_id, JobStatus.running, values={
            "worker_id": "w1", "attempts": 1, "heartbeat_at": utcnow() - timedelta(seconds=settings.lease_seconds + 5)})


def unreachable_broker(settings):
    """A Celery app whose broker is a port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return make_celery(settings.model_copy(update={"celery_broker_url": f"redis://127.0.0.1:{port}/0"}))


def message_ids(settings) -> list[str]:
    return [m["id"] for m in queued_messages(settings)]


def set_enqueued_at(settings, job_id, value) -> None:
    with session_scope(settings.database_url) as session:
        session.execute(update(Job).where(Job.id == job_id).values(enqueued_at=value))


def test_a_created_job_is_marked_as_sent(settings, job_id):
    assert job(settings, job_id).enqueued_at is not None
    assert message_ids(settings) == [job_id]


def test_a_requeue_the_broker_refuses_is_sent_once_it_is_back(settings, job_id):
    lose_worker(settings, job_id)
    # the pass survives the outage, and the job keeps its outbox mark: not sent yet
    assert reap_stale_jobs(settings, unreachable_broker(settings)) == [(job_id, "queued")]
    requeued = job(settings, job_id)
    assert requeued.status == "queued" and requeued.enqueued_at is None
    assert message_ids(settings) == []
    from worker.outbox import send_unsent

    # while the broker is still away, the re-sender fails quietly and keeps the mark
    eager = settings.model_copy(update={"unsent_grace_seconds": 0})
    assert send_unsent(eager, unreachable_broker(settings)) == []
    assert job(settings, job_id).enqueued_at is None

    app = make_celery(settings)
    assert send_unsent(settings, app) == []  # still within the grace its own sender has
    assert send_unsent(eager, app) == [job_id]
    assert send_unsent(eager, app) == []  # sent exactly once
    assert message_ids(settings) == [f"{job_id}-1"]  # the id of the requeue's attempt
    assert job(settings, job_id).enqueued_at is not None


def test_a_pass_with_a_refused_send_still_handles_every_lost_job(client, settings, job_id):
    other = client.post("/v1/jobs", json={"type": "dpo", "base_model": "builtin:tiny-llama",
                                          "dataset_id": client.get(f"/v1/jobs/{job_id}").json()["dataset_id"]})
    lose_worker(settings, job_id)
    lose_worker(settings, other.json()["id"])
    done = reap_stale_jobs(settings, unreachable_broker(settings))
    assert sorted(done) == sorted([(job_id, "queued"), (other.json()["id"], "queued")])


def test_a_fresh_unsent_job_is_left_to_its_own_sender(settings, job_id):
    from worker.outbox import send_unsent

    set_enqueued_at(settings, job_id, None)  # as between the API's commit and its send
    assert send_unsent(settings, make_celery(settings)) == []
    assert message_ids(settings) == [job_id]


def test_a_queued_job_with_a_live_message_is_not_sent_again(settings, job_id):
    from worker.outbox import resend_lost

    set_enqueued_at(settings, job_id, utcnow() - timedelta(hours=1))
    assert resend_lost(settings, make_celery(settings)) == []
    assert message_ids(settings) == [job_id]
    # the message was found: the next look is a full period away
    assert job(settings, job_id).enqueued_at > utcnow() - timedelta(minutes=1)


def test_a_queued_job_whose_message_vanished_is_sent_again(settings, job_id):
    from worker.outbox import resend_lost

    app = make_celery(settings)
    withdraw_job(app, job_id)  # a broker restarted without persistence, say
    assert resend_lost(settings, app) == []  # its message was accepted too recently to look
    set_enqueued_at(settings, job_id, utcnow() - timedelta(seconds=settings.resend_after_seconds + 5))
    assert resend_lost(settings, app) == [job_id]
    assert message_ids(settings) == [job_id]
    assert resend_lost(settings, app) == []


@pytest.mark.parametrize("settings", ["postgres"], indirect=True)  # kombu's unacked hash is Redis's
def test_a_message_held_by_a_consumer_counts_only_while_it_is_fresh(settings, job_id):
    """Redis keeps a delivered, unacknowledged message in kombu's `unacked` hash: a live worker is
    about to claim the job; one delivered long ago belongs to a worker that died before claiming."""
    from worker.outbox import resend_lost

    app = make_celery(settings)
    set_enqueued_at(settings, job_id, utcnow() - timedelta(hours=1))
    with app.connection_for_read() as conn:
        consumer = conn.SimpleQueue(settings.training_queue, no_ack=False)
        delivered = consumer.get(timeout=5)
        assert delivered.headers["id"] == job_id
        assert message_ids(settings) == []
        assert resend_lost(settings, app) == []  # held by a consumer right now

        client = redis.Redis.from_url(settings.celery_broker_url)
        tag = next(t for t, raw in client.hgetall("unacked").items() if job_id in raw.decode())
        client.zadd("unacked_index", {tag: time.time() - settings.resend_after_seconds - 5})
        client.close()
        set_enqueued_at(settings, job_id, utcnow() - timedelta(hours=1))
        assert resend_lost(settings, app) == [job_id]
        assert message_ids(settings) == [job_id]
        delivered.ack()
        consumer.close()
