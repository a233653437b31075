"""How a run ends, as what the job records: its new status, the event's message and the `error` the API shows.

Every ending is mapped here: the trainer's result (completed, or stopped at a cancel or pause
request), an exception of the run, a training process that died, a lease that expired. Whose fault
a failure is goes into `error.type`: `user_error` (the model reference, the data or the spec;
`error.param` names the field when there is one) or `internal_error` (the service's side,
resources included). The runner, the task and the reaper
record what these functions return and never build an error themselves.
"""

import re
import sys
from typing import Any, NamedTuple

from core.model_refs import ModelRefError, ResolvedModel
from core.models import JobStatus
from trainers.spec.errors import ModelNotFoundError, NumericalError, UserError
from trainers.spec.results import RunResult

ERROR_MESSAGE_LIMIT = 2000  # characters of an unforeseen exception's message kept in the job
# torchrun's summary when a rank fails: the first rank that did, and how (a negative code is a signal).
TORCHRUN_ROOT_CAUSE = re.compile(r"Root Cause \(first observed failure\):.*?rank\s*:\s*(\d+).*?"
                                 r"exitcode\s*:\s*(-?\d+)\s*\(pid: \d+\)[ \t]*(\(\w+\))?", re.DOTALL)


class Outcome(NamedTuple):
    """What a job records when a run ends (or is taken from it)."""

    status: JobStatus
    message: str  # the status event's message
    error: dict[str, Any] | None = None  # the job's `error`: {"type", "message"[, "param"]}


def user_failure(message: str, param: str | None = None) -> Outcome:
    """The job failed because of something the user supplied; `param` names the field at fault."""
    return Outcome(JobStatus.failed, message, {"type": "user_error", "message": message, "param": param})


def internal_failure(message: str, *, hint: str = "") -> Outcome:
    """The job failed on the service's side; `hint` (what to change) is added to the error's message only."""
    return Outcome(JobStatus.failed, message, {"type": "internal_error", "message": message + hint})


def finished(result: RunResult, asked: JobStatus = JobStatus.cancelling,
             checkpoint: tuple[str, int] | None = None) -> Outcome:
    """The trainer returned: it completed, or stopped with a checkpoint at the request its job is `asked`.

    Args:
        result: what the trainer returned.
        asked: the job's status when the run ended: `pausing` ends a stopped run paused, else cancelled.
        checkpoint: (id, step) of the job's latest checkpoint, which a paused job resumes from.
    """
    if result.status == "completed":
        return Outcome(JobStatus.succeeded, f"finished at step {result.step}")
    if asked == JobStatus.pausing:
        return paused(result.step, checkpoint)
    return Outcome(JobStatus.cancelled, f"stopped at step {result.step}; checkpoint kept")


def paused(step: int, checkpoint: tuple[str, int] | None) -> Outcome:
    """A pause request stopped the run at `step`; a resume continues from `checkpoint` (id, step), if any."""
    if checkpoint is None:
        return Outcome(JobStatus.paused, f"paused at step {step}, before any checkpoint; a resume starts "
                                         "from the beginning")
    checkpoint_id, checkpoint_step = checkpoint
    return Outcome(JobStatus.paused, f"paused at step {step}; checkpoint {checkpoint_id} of step "
                                     f"{checkpoint_step} kept, a resume continues from it")


def cancelled_before_start() -> Outcome:
    """A cancel request arrived between the claim and the start of training."""
    return Outcome(JobStatus.cancelled, "cancelled before training started")


def stopped_before_start(asked: JobStatus, checkpoint: tuple[str, int] | None) -> Outcome:
    """A cancel or pause request (the job is `asked`) arrived between the claim and the start of training.

    A paused job's latest checkpoint is that of an earlier run, if any (`checkpoint`: id, step).
    """
    if asked == JobStatus.pausing:
        return paused(checkpoint[1] if checkpoint else 0, checkpoint)
    return cancelled_before_start()


def of_exception(exc: BaseException, model: ResolvedModel | None = None) -> Outcome:
    """The failure an exception of a run stands for.

    Args:
        exc: what the run raised: a model reference that did not resolve, a trainer's `UserError`
            or `NumericalError`, torch's out-of-memory error, or anything unforeseen (ours).
        model: the resolved base model; messages name it as the user wrote it, not where it is kept.
    """
    if isinstance(exc, ModelRefError):
        return user_failure(str(exc), "base_model")
    if isinstance(exc, UserError):
        message = str(exc)
        if model is not None and model.location != model.ref:
            message = message.replace(model.location, model.ref)
        return user_failure(message, exc.param or ("base_model" if isinstance(exc, ModelNotFoundError) else None))
    if isinstance(exc, NumericalError):
        return user_failure(f"training diverged: {exc}; lower the learning_rate, or check the base model's weights")
    if is_out_of_memory(exc):
        return internal_failure(f"out of memory: {exc}".splitlines()[0],
                                hint=" (resources: use a smaller batch_size or max_length, LoRA, or a larger GPU)")
    return internal_failure(f"internal error: {type(exc).__name__}: {exc}"[:ERROR_MESSAGE_LIMIT])


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether `exc` is torch's out-of-memory error (torch is not imported for the question: without it, it is not)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(exc, torch.OutOfMemoryError)


def exit_message(code: int, stderr_tail: str) -> str:
    """How a training process that exited with `code` without recording an outcome is reported.

    The last line of its standard error says why; for the ranks of a job of several processes,
    torchrun's summary ends it instead, and the rank that failed first, with its exit code, does.
    """
    if root_cause := TORCHRUN_ROOT_CAUSE.search(stderr_tail):
        rank, rank_code, signal_name = root_cause.groups()
        return (f"the training process exited with code {code}: rank {rank} exited with code {rank_code}"
                + (f" {signal_name}" if signal_name else ""))
    last_line = stderr_tail.strip().splitlines()[-1] if stderr_tail.strip() else ""
    return f"the training process exited with code {code}" + (f": {last_line}" if last_line else "")


def lease_expired(status: str, attempts: int, *, max_attempts: int, lease_seconds: float) -> Outcome:
    """A job whose worker stopped renewing its lease: requeued to resume, failed after its last attempt,
    cancelled if it was being cancelled, or paused if it was being paused.

    `attempts` counts the runs a lost worker may end the job after: its runs, less those it was
    resumed after a pause (a pause is no failure)."""
    lost = f"its worker stopped renewing the lease for over {lease_seconds:g} s"
    if status == JobStatus.cancelling:
        return Outcome(JobStatus.cancelled, f"{lost} while cancelling; last checkpoint kept")
    if status == JobStatus.pausing:
        return Outcome(JobStatus.paused, f"{lost} while pausing; last checkpoint kept, a resume continues from it")
    if attempts >= max_attempts:
        return internal_failure(f"{lost}, on {attempts} of {max_attempts} attempts; giving up")
    return Outcome(JobStatus.queued, f"{lost}; requeued to resume from its last checkpoint")
