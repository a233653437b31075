"""The OpenAI-style names of fine-tuned models and their checkpoints, written and read in one place.

A job's fine-tuned model is `ft:<base>:<project>:<suffix>:<job id>` (the suffix may be empty) and
a checkpoint of it `ft:<base>:<project>:<suffix>:<job id>:ckpt-step-<step>`, as OpenAI names them.
The base model may itself contain colons (`builtin:tiny-llama`), so a name is read from its end:
the job id is the last part, or the one before `ckpt-step-N`. A name only resolves when it is the
one this job would be given now (`parse` finds the candidate, the caller compares), so a forged or
stale name never reaches another project's job.

It lives in core because a fine-tuned model's name is also a `base_model` (`core.model_refs`), which
the worker resolves to the checkpoint behind it.
"""

import re
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.models import Checkpoint, Job, JobStatus, Project

# Jobs created through the native API are `job_…`, fine-tuning jobs created the OpenAI way `ftjob-…`.
JOB_ID_PREFIXES = ("job_", "ftjob-")
_CHECKPOINT_PART = re.compile(r"ckpt-step-(\d+)")
_SLUG_DROP = re.compile(r"[^a-z0-9-]+")


def project_slug(project_name: str) -> str:
    """The project's name as it appears in model names: lower case, letters, digits and dashes."""
    return _SLUG_DROP.sub("-", project_name.lower()).strip("-") or "project"


def fine_tuned_model(job: Job, project_name: str) -> str:
    """The name of `job`'s fine-tuned model (whether or not it has been trained yet)."""
    return f"ft:{job.base_model}:{project_slug(project_name)}:{job.suffix or ''}:{job.id}"


def checkpoint_model(job: Job, project_name: str, step: int) -> str:
    """The name of `job`'s checkpoint at `step`."""
    return f"{fine_tuned_model(job, project_name)}:ckpt-step-{step}"


@dataclass(frozen=True)
class ParsedName:
    """What a model name points at: a job, and a step when it names one of its checkpoints."""

    job_id: str
    step: int | None


def parse(name: str) -> ParsedName | None:
    """The job (and checkpoint step) `name` claims to be, or None when it is not a fine-tuned model's name."""
    if not name.startswith("ft:"):
        return None
    parts = name.split(":")
    step = None
    if (match := _CHECKPOINT_PART.fullmatch(parts[-1])) is not None:
        step, parts = int(match.group(1)), parts[:-1]
    if len(parts) < 5 or not parts[-1].startswith(JOB_ID_PREFIXES):
        return None
    return ParsedName(job_id=parts[-1], step=step)


def fine_tuned_checkpoint(session: Session, project_id: str, name: str) -> Checkpoint | None:
    """The checkpoint a fine-tuned model's `name` stands for (its job's last checkpoint once the job has
    succeeded, or the checkpoint `ckpt-step-N` names), or None when the name is not exactly what this
    project's job is called now, or its model was deleted."""
    parsed = parse(name)
    if parsed is None or len(parsed.job_id) > 40:
        return None
    job = session.get(Job, parsed.job_id)
    if job is None or job.project_id != project_id or job.model_deleted_at is not None:
        return None
    project_name = session.scalar(select(Project.name).where(Project.id == project_id)) or ""
    stmt = select(Checkpoint).where(Checkpoint.job_id == job.id)
    if parsed.step is None:
        if job.status != JobStatus.succeeded or name != fine_tuned_model(job, project_name):
            return None
        stmt = stmt.order_by(Checkpoint.step.desc()).limit(1)
    else:
        if name != checkpoint_model(job, project_name, parsed.step):
            return None
        stmt = stmt.where(Checkpoint.step == parsed.step)
    return session.scalar(stmt)
