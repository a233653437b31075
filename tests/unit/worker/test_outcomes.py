"""worker.outcomes: every way a run ends, as the status, message and error its job records."""

import pytest
import torch

from core.model_refs import ModelRefError, ResolvedModel
from core.models import JobStatus
from tests.unit.test_boundaries import imported_after
from trainers.spec.errors import ModelNotFoundError, NumericalError, UserError
from trainers.spec.results import RunResult
from worker import outcomes
from worker.outcomes import Outcome

MODEL = ResolvedModel(ref="checkpoint:ckpt_1", location="/srv/artifacts/ckpt_1/model")


def test_a_finished_run_succeeds_and_a_stopped_one_is_cancelled():
    assert outcomes.finished(RunResult("completed", 12)) == (JobStatus.succeeded, "finished at step 12", None)
    assert outcomes.finished(RunResult("stopped", 4)) == (
        JobStatus.cancelled, "stopped at step 4; checkpoint kept", None)
    assert outcomes.cancelled_before_start() == (JobStatus.cancelled, "cancelled before training started", None)


def test_a_run_stopped_while_pausing_is_paused_naming_the_checkpoint_a_resume_continues_from():
    pausing, checkpoint = JobStatus.pausing, ("ckpt_9", 4)
    assert outcomes.finished(RunResult("stopped", 4), pausing, checkpoint) == (
        JobStatus.paused, "paused at step 4; checkpoint ckpt_9 of step 4 kept, a resume continues from it", None)
    assert outcomes.finished(RunResult("stopped", 4), JobStatus.cancelling, checkpoint) == (
        JobStatus.cancelled, "stopped at step 4; checkpoint kept", None)
    assert outcomes.finished(RunResult("completed", 9), pausing, checkpoint).status == JobStatus.succeeded
    assert outcomes.finished(RunResult("stopped", 0), pausing, None) == (
        JobStatus.paused, "paused at step 0, before any checkpoint; a resume starts from the beginning", None)
    # Stopped before training started: a checkpoint of an earlier run is what a resume continues from.
    assert outcomes.stopped_before_start(pausing, ("ckpt_1", 2)) == (
        JobStatus.paused, "paused at step 2; checkpoint ckpt_1 of step 2 kept, a resume continues from it", None)
    assert outcomes.stopped_before_start(JobStatus.cancelling, ("ckpt_1", 2)) == outcomes.cancelled_before_start()


def test_user_errors_name_the_field_and_the_model_as_the_user_wrote_it():
    exc = UserError("row 3 of /srv/artifacts/ckpt_1/model has no prompt", param="dataset_id")
    message = "row 3 of checkpoint:ckpt_1 has no prompt"
    assert outcomes.of_exception(exc, MODEL) == Outcome(
        JobStatus.failed, message, {"type": "user_error", "message": message, "param": "dataset_id"})
    # Without a param, a model that cannot be loaded is the base model's fault.
    outcome = outcomes.of_exception(ModelNotFoundError("cannot load /srv/artifacts/ckpt_1/model", param=None), MODEL)
    assert outcome.error == {"type": "user_error", "message": "cannot load checkpoint:ckpt_1", "param": "base_model"}
    assert outcomes.of_exception(UserError("bad"), None).error == {"type": "user_error", "message": "bad",
                                                                   "param": None}


def test_a_model_reference_that_does_not_resolve_is_the_base_models_fault():
    outcome = outcomes.of_exception(ModelRefError("no checkpoint ckpt_x"))
    assert outcome == (JobStatus.failed, "no checkpoint ckpt_x",
                       {"type": "user_error", "message": "no checkpoint ckpt_x", "param": "base_model"})


def test_a_diverged_run_is_a_user_error_with_advice():
    outcome = outcomes.of_exception(NumericalError("loss is nan at step 3"))
    message = "training diverged: loss is nan at step 3; lower the learning_rate, or check the base model's weights"
    assert outcome == (JobStatus.failed, message, {"type": "user_error", "message": message, "param": None})


def test_out_of_memory_is_ours_and_its_error_says_what_to_change():
    outcome = outcomes.of_exception(torch.OutOfMemoryError("CUDA out of memory. Tried 2 GiB\nmore detail"))
    assert outcome.status == JobStatus.failed
    assert outcome.message == "out of memory: CUDA out of memory. Tried 2 GiB"
    assert outcome.error == {"type": "internal_error", "message": "out of memory: CUDA out of memory. Tried 2 GiB"
                             " (resources: use a smaller batch_size or max_length, LoRA, or a larger GPU)"}
    assert outcomes.is_out_of_memory(torch.OutOfMemoryError("x"))
    assert not outcomes.is_out_of_memory(MemoryError("x"))


def test_anything_unforeseen_is_an_internal_error_with_its_type_and_a_bounded_message():
    outcome = outcomes.of_exception(RuntimeError("boom"))
    assert outcome == (JobStatus.failed, "internal error: RuntimeError: boom",
                       {"type": "internal_error", "message": "internal error: RuntimeError: boom"})
    long = outcomes.of_exception(KeyError("k" * 5000))
    assert len(long.message) == outcomes.ERROR_MESSAGE_LIMIT == 2000 and long.error["message"] == long.message


def test_a_dead_training_process_is_reported_with_its_last_line():
    assert outcomes.exit_message(-9, "") == "the training process exited with code -9"
    assert outcomes.exit_message(1, "Traceback\n  ...\nSegfault here\n\n") == (
        "the training process exited with code 1: Segfault here")
    torchrun_summary = ("Root Cause (first observed failure):\n[0]:\n  time      : 2026-11-30_02:51:49\n"
                        "  host      : node-1\n  rank      : 3 (local_rank: 3)\n  exitcode  : 1 (pid: 77)\n"
                        "  error_file: <N/A>\n  traceback : To enable traceback see: ...\n" + "=" * 60 + "\n")
    assert outcomes.exit_message(1, "ValueError: boom\n" + torchrun_summary) == (
        "the training process exited with code 1: rank 3 exited with code 1")
    assert outcomes.internal_failure("the training process exited with code 1") == (
        JobStatus.failed, "the training process exited with code 1",
        {"type": "internal_error", "message": "the training process exited with code 1"})


@pytest.mark.parametrize(("status", "attempts", "expected"), [
    ("running", 1, (JobStatus.queued, "its worker stopped renewing the lease for over 30 s; requeued to resume "
                                      "from its last checkpoint", None)),
    ("running", 3, (JobStatus.failed, "its worker stopped renewing the lease for over 30 s, on 3 of 3 attempts; "
                                      "giving up",
                    {"type": "internal_error", "message": "its worker stopped renewing the lease for over 30 s, "
                                                          "on 3 of 3 attempts; giving up"})),
    ("cancelling", 3, (JobStatus.cancelled, "its worker stopped renewing the lease for over 30 s while cancelling; "
                                            "last checkpoint kept", None)),
    ("pausing", 3, (JobStatus.paused, "its worker stopped renewing the lease for over 30 s while pausing; "
                                      "last checkpoint kept, a resume continues from it", None)),
])
def test_an_expired_lease_requeues_gives_up_or_finishes_the_cancel_or_pause(status, attempts, expected):
    assert outcomes.lease_expired(status, attempts, max_attempts=3, lease_seconds=30.0) == expected


def test_the_module_does_not_import_torch():
    # worker.tasks imports it, and the Celery worker process stays free of torch.
    assert "torch" not in imported_after("worker.outcomes")
