"""The transition table and the compare-and-set move, on a real SQLite database."""

import pytest

from core.db import session_scope
from core.lifecycle import ALLOWED_MOVES, LEASED_STATUSES, InvalidTransition, transition
from core.models import ACTIVE_STATUSES, TERMINAL_STATUSES, Job, JobEvent, JobStatus, Project
from tests.support import embedded_settings


def test_table_shape():
    assert set(ALLOWED_MOVES) == set(JobStatus)
    for status in TERMINAL_STATUSES:
        assert ALLOWED_MOVES[status] == frozenset()
    assert ALLOWED_MOVES[JobStatus.queued] == {JobStatus.running, JobStatus.cancelled, JobStatus.failed,
                                               JobStatus.paused}


S = JobStatus
PAUSE_MOVES = [
    (S.running, S.pausing, True),  # a pause request to a running job
    (S.queued, S.paused, True),  # nothing to stop
    (S.pausing, S.paused, True),  # the run stopped with a checkpoint (or its worker was lost)
    (S.pausing, S.succeeded, True), (S.pausing, S.failed, True),  # it ended before it noticed
    (S.pausing, S.cancelling, True),  # a cancel overrides a pause not yet done
    (S.paused, S.queued, True),  # a resume
    (S.paused, S.cancelled, True),  # a cancel: nothing runs, so at once
    (S.paused, S.running, False),  # a resume goes through the queue, never straight to a worker
    (S.paused, S.pausing, False), (S.paused, S.failed, False), (S.paused, S.succeeded, False),
    (S.pausing, S.queued, False), (S.pausing, S.running, False), (S.pausing, S.cancelled, False),
    (S.cancelling, S.pausing, False), (S.cancelling, S.paused, False),  # a cancel is not turned into a pause
    (S.queued, S.pausing, False), (S.running, S.paused, False),
    (S.succeeded, S.paused, False), (S.failed, S.pausing, False), (S.cancelled, S.paused, False),
]


@pytest.mark.parametrize(("source", "target", "allowed"), PAUSE_MOVES)
def test_pause_moves(source, target, allowed):
    assert (target in ALLOWED_MOVES[source]) == allowed


def test_paused_is_neither_terminal_nor_leased():
    assert S.paused not in TERMINAL_STATUSES and S.pausing not in TERMINAL_STATUSES
    assert S.pausing.value in LEASED_STATUSES and S.paused.value not in LEASED_STATUSES
    assert {S.pausing, S.paused} <= ACTIVE_STATUSES  # their datasets stay protected


@pytest.mark.parametrize("source", list(JobStatus))
@pytest.mark.parametrize("target", list(JobStatus))
def test_every_move_follows_the_table(tmp_path, source, target):
    settings = embedded_settings(tmp_path)
    with session_scope(settings.database_url) as session:
        session.add(Project(id="proj_1", name="p"))
        session.flush()
        session.add(Job(id="job_1", project_id="proj_1", type="dpo", base_model="m", dataset_id="d", hyperparameters={},
                        status=source.value))
    with session_scope(settings.database_url) as session:
        if target in ALLOWED_MOVES[source]:
            transition(session, "job_1", target, message="why")
        else:
            with pytest.raises(InvalidTransition) as info:
                transition(session, "job_1", target)
            assert info.value.current == source.value
    with session_scope(settings.database_url) as session:
        job = session.get(Job, "job_1")
        events = session.query(JobEvent).all()
        if target in ALLOWED_MOVES[source]:
            assert job.status == target.value
            assert [(e.type, e.data["previous"], e.data["status"]) for e in events] == [
                ("status", source.value, target.value)]
            assert (job.finished_at is not None) == (target in TERMINAL_STATUSES)
        else:
            assert job.status == source.value and events == []


def test_failure_records_its_error(tmp_path):
    settings = embedded_settings(tmp_path)
    with session_scope(settings.database_url) as session:
        session.add(Project(id="proj_1", name="p"))
        session.flush()
        session.add(Job(id="job_1", project_id="proj_1", type="dpo", base_model="m", dataset_id="d",
                        hyperparameters={}))
    error = {"type": "user_error", "message": "no such model"}
    with session_scope(settings.database_url) as session:
        transition(session, "job_1", JobStatus.failed, error=error)
    with session_scope(settings.database_url) as session:
        assert session.get(Job, "job_1").error == error
        assert session.query(JobEvent).one().level == "error"
