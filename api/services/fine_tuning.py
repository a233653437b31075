"""Fine-tuning jobs the OpenAI way: an adapter that creates, lists and controls native jobs.

A fine-tuning job is a job: `POST /v1/fine_tuning/jobs` maps OpenAI's request onto a native job body
(`api.services.fine_tuning_methods`) and calls `api.services.jobs.create` with an id `ftjob-<hex>`;
every other call reads or drives the same rows as /v1/jobs. Jobs whose type maps to a method (sft,
dpo, grpo) show in both APIs, whichever created them.
"""

import logging
import secrets
from collections.abc import Mapping
from typing import Any

from celery import Celery
from pydantic import TypeAdapter, ValidationError
from sqlalchemy import Text, cast, or_, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from api.errors import ApiError, InvalidRequest, param_of
from api.schemas import JobCreate
from api.schemas_fine_tuning import FineTuningJobCreate
from api.services import fine_tuning_files as files
from api.services import jobs as native
from api.services.fine_tuning_methods import TYPE_OF_METHOD, method_available, openai_param, to_native
from api.services.paging import newest_first_page
from core import model_names
from core.models import Checkpoint, Dataset, Job, JobEvent, Project
from core.projects import project_checkpoint
from core.settings import Settings
from trainers.spec.errors import UserError
from trainers.spec.openai_graders import translate

log = logging.getLogger(__name__)
JOB_CREATE: TypeAdapter[Any] = TypeAdapter(JobCreate)
GRADER = "method.reinforcement.grader"


def new_job_id() -> str:
    """An id as OpenAI's: `ftjob-` and 24 hex digits."""
    return f"ftjob-{secrets.token_hex(12)}"


def _method(body: FineTuningJobCreate) -> tuple[str, Any, dict[str, Any] | None, str]:
    """The method, its hyperparameters (OpenAI's), its grader and where the hyperparameters were given."""
    if body.integrations:
        raise InvalidRequest(
            "integrations are not supported (Weights & Biases is not reached from this server): follow a job "
            "with GET /v1/fine_tuning/jobs/{id}/events, or its metrics live with GET /v1/jobs/{id}/stream",
            param="integrations")
    if body.method is None:
        return "supervised", body.hyperparameters, None, "hyperparameters"
    method = body.method.type
    if body.hyperparameters is not None and body.hyperparameters.model_fields_set:
        raise InvalidRequest(f"hyperparameters: give them in method.{method}.hyperparameters (the top-level "
                             "hyperparameters are the deprecated form of the supervised method's)",
                             param="hyperparameters")
    for other in TYPE_OF_METHOD:
        if other != method and getattr(body.method, other) is not None:
            raise InvalidRequest(f"method.{other} is given, but method.type is {method!r}", param=f"method.{other}")
    config = getattr(body.method, method)
    if method == "reinforcement" and config is None:
        raise InvalidRequest("the reinforcement method needs a grader", param=GRADER)
    grader = config.grader if method == "reinforcement" else None
    return method, config.hyperparameters if config else None, grader, f"method.{method}.hyperparameters"


def _reward(session: Session, project: Project, grader: dict[str, Any], registry: Mapping[str, Any]) -> Any:
    """The native reward spec of an OpenAI grader; a score_model grader may name a reward-model checkpoint."""

    def reward_model(name: str) -> str | None:
        checkpoint = _named_checkpoint(session, project, name)
        if checkpoint is None or (checkpoint.model_info or {}).get("kind") != "reward_model":
            return None
        return checkpoint.id

    try:
        return translate(grader, resolve_reward_model=reward_model, registry=registry, param=GRADER)
    except UserError as exc:
        raise InvalidRequest(exc.message, param=exc.param or GRADER) from exc


def _named_checkpoint(session: Session, project: Project, name: str) -> Checkpoint | None:
    """The checkpoint `name` names: checkpoint:<id>, a checkpoint id, or a fine-tuned model's name."""
    if name.startswith("ft:"):
        return model_names.fine_tuned_checkpoint(session, project.id, name)
    checkpoint_id = name.removeprefix("checkpoint:")
    return project_checkpoint(session, project.id, checkpoint_id) if len(checkpoint_id) <= 40 else None


def _openai_param(param: str | None, prefix: str) -> str | None:
    """Where OpenAI's request has the native body's `param`."""
    if param is None:
        return None
    if param.startswith("hyperparameters"):
        return openai_param(param, prefix)
    if param.startswith("reward"):
        return GRADER + param.removeprefix("reward")
    names = {"base_model": "model", "dataset_id": "training_file", "eval_dataset_id": "validation_file"}
    return names.get(param, param)


def _refused(exc: ApiError, prefix: str) -> ApiError:
    """The native refusal `exc`, its param (and the param quoted in its message) named as OpenAI's request."""
    param = _openai_param(exc.param, prefix)
    message = exc.message
    if exc.param and param != exc.param and message.startswith(exc.param):
        message = param + message[len(exc.param):]
    exc.message, exc.param = message, param
    return exc


def create(*, session: Session, celery: Celery, settings: Settings, project: Project, body: FineTuningJobCreate,
           registry: Mapping[str, Any], idempotency_key: str | None) -> Job:
    """Map OpenAI's request onto a native job of the method's type and create it."""
    method, hyperparameters, grader, prefix = _method(body)
    if not method_available(method):
        raise InvalidRequest(f"the {method} method is not available on this server", param="method.type")
    job_type = TYPE_OF_METHOD[method]
    spec: dict[str, Any] = {"type": job_type, "hyperparameters": to_native(method, hyperparameters, prefix)}
    if grader is not None:
        spec["reward"] = _reward(session, project, grader, registry)
    training = files.for_job(session=session, project_id=project.id, file_id=body.training_file,
                             job_type=job_type, param="training_file")
    validation = None
    if body.validation_file is not None:
        validation = files.for_job(session=session, project_id=project.id, file_id=body.validation_file,
                                   job_type=job_type, param="validation_file")
    # A fine-tuned model's name (ft:...) stays the base model's name: the new model is named after it.
    spec |= {"base_model": body.model, "dataset_id": training.id,
             "eval_dataset_id": validation.id if validation else None, "seed": body.seed,
             "metadata": body.metadata}
    try:
        native_body = JOB_CREATE.validate_python(spec)
    except ValidationError as exc:
        error = exc.errors()[0]
        param = _openai_param(param_of(tuple(error["loc"]), error["type"]), prefix)
        raise InvalidRequest(f"{param}: {error['msg']}", param=param) from exc
    try:
        job, new = native.create(session=session, celery=celery, settings=settings, project_id=project.id,
                                 body=native_body, idempotency_key=idempotency_key, registry=registry,
                                 job_id=new_job_id(), suffix=body.suffix)
    except ApiError as exc:
        raise _refused(exc, prefix) from exc.__cause__
    if new:
        _record_creation(session, job, training, validation)
    return job


def _record_creation(session: Session, job: Job, training: Dataset, validation: Dataset | None) -> None:
    """The events OpenAI's jobs open with: the job created, and the files it reads, checked."""
    files_checked = f"Validated training file {training.id}: {training.row_count} {training.kind} rows"
    if validation is not None:
        files_checked += f"; validation file {validation.id}: {validation.row_count} rows"
    # Dated at the job's creation, which they describe, so they list before whatever the run says.
    for message in (f"Created fine-tuning job: {job.id}", files_checked):
        session.add(JobEvent(job_id=job.id, type="event", level="info", message=message, created_at=job.created_at))
    try:
        session.commit()
    except SQLAlchemyError:  # the job stands without them
        session.rollback()
        log.warning("could not record the creation events of %s", job.id, exc_info=True)


def _metadata_filter(stmt: Any, metadata: Mapping[str, str] | None) -> Any:
    if metadata is None:  # a job created without metadata stores JSON null (or SQL NULL)
        return stmt.where(or_(Job.metadata_.is_(None), cast(Job.metadata_, Text) == "null"))
    for key, value in metadata.items():
        stmt = stmt.where(Job.metadata_[key].as_string() == value)
    return stmt


def list_page(*, session: Session, project_id: str, limit: int, after: str | None,
              metadata: Mapping[str, str] | None | bool) -> tuple[list[Job], bool]:
    """The project's jobs of a fine-tuning method's type, newest first; `metadata` filters by pairs, None
    selects jobs without metadata, False filters nothing."""
    stmt = select(Job).where(Job.project_id == project_id, Job.type.in_(list(TYPE_OF_METHOD.values())))
    if metadata is not False:
        stmt = _metadata_filter(stmt, metadata)  # type: ignore[arg-type]
    return newest_first_page(session, stmt, Job, project_id=project_id, limit=limit, after=after)


def is_fine_tuning_job(job: Job) -> bool:
    """Whether the job shows in this API: its type maps to a method."""
    return job.type in TYPE_OF_METHOD.values()
