"""The models a project can complete chats with: base models of this server, its fine-tuned models and
their checkpoints; listed, looked up by OpenAI-style name, resolved to what the model process loads, deleted.

Base models are the builtins, directories under MODELS_DIR (holding `config.json` or an adapter), and
the models in this server's Hugging Face cache. A job of the project that trains a causal LM (every
type but `reward_model`) names its model `ft:...` once it has succeeded, and each of its checkpoints
`ft:...:ckpt-step-N` as soon as it is saved (`core.model_names`). Deleting the fine-tuned model
stamps `jobs.model_deleted_at`: from then on neither it nor its checkpoints are listed or served.
"""

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.errors import ApiError, InvalidRequest, NotFound
from api.storable import text_problem
from core import model_names
from core.artifacts import Store
from core.model_refs import (
    BUILTIN_PREFIX,
    CHECKPOINT_PREFIX,
    FINE_TUNED_PREFIX,
    ModelRefError,
    checkpoint_model_dir,
    resolve_model_ref,
)
from core.models import Checkpoint, Job, JobStatus, Project, utcnow
from core.projects import project_checkpoint
from core.settings import Settings
from trainers.spec.generation import BUILTIN_MODEL_REFS

SYSTEM_OWNER = "system"
REWARD_MODEL = "reward_model"  # the one job type whose model scores text instead of generating it
MODEL_FILES = ("config.json", "adapter_config.json")  # what makes a directory under MODELS_DIR a model
MODELS_DIR_DEPTH = 2  # `name/` and `org/name/`, as hub ids are written


class NotDeletable(ApiError, status_code=403, type="permission_error"):
    """The model exists but is not one the project may delete (a base model, a checkpoint)."""


@dataclass(frozen=True)
class ServedModel:
    """A model a chat request may use: what the model process loads, and what to show as its source."""

    location: str  # builtin reference, absolute directory, or hub id
    fingerprint: str  # builtin reference, checkpoint:<id>, directory under MODELS_DIR, or hub id


def list_models(*, session: Session, settings: Settings, project: Project) -> list[dict[str, Any]]:
    """Every model the project can use: base models, then its fine-tuned models and checkpoints, oldest first."""
    return [*_base_models(settings), *_project_models(session, project)]


def get_model(*, session: Session, settings: Settings, project: Project, model: str) -> dict[str, Any]:
    """The model object of `model` (any name a chat request accepts); 404 when it is not one."""
    _check_name(model)
    if model.startswith((FINE_TUNED_PREFIX, CHECKPOINT_PREFIX)):
        job, checkpoint = _project_model(session, project, model)
        if job.type == REWARD_MODEL:
            raise _unknown(model)
        parsed = model_names.parse(model)
        if parsed is not None and parsed.step is None:
            return _model_object(model, job.finished_at, model_names.project_slug(project.name))
        return _model_object(model, checkpoint.created_at, model_names.project_slug(project.name))
    _base_location(settings, session, project, model)
    return next((m for m in _base_models(settings) if m["id"] == model), _model_object(model, None, SYSTEM_OWNER))


def delete_model(*, session: Session, settings: Settings, project: Project, model: str) -> dict[str, Any]:
    """Delete the project's fine-tuned model `model`: it and its checkpoints are no longer listed or served."""
    _check_name(model)
    parsed = model_names.parse(model)
    if parsed is None:
        if model.startswith(CHECKPOINT_PREFIX):
            _project_model(session, project, model)
            raise NotDeletable(f"{model} is a checkpoint; delete the fine-tuned model of its job instead",
                               param="model")
        _base_location(settings, session, project, model)  # 404 when it names nothing
        raise NotDeletable(f"{model} is a base model of this server; only fine-tuned models can be deleted",
                           param="model")
    job, _ = _project_model(session, project, model)
    if job.type == REWARD_MODEL:
        raise _unknown(model)
    if parsed.step is not None:
        raise NotDeletable(f"{model} is a checkpoint; deleting its fine-tuned model "
                           f"{model_names.fine_tuned_model(job, project.name)} deletes it with its checkpoints",
                           param="model")
    job.model_deleted_at = utcnow()
    session.commit()
    return {"id": model, "object": "model", "deleted": True}


def resolve(*, session: Session, settings: Settings, store: Store, project: Project, model: str) -> ServedModel:
    """What the model process loads for `model`; 404 for an unknown or deleted model, 400 for a reward model.

    A checkpoint's files are fetched to local disk first when artifacts live in an object store.
    """
    _check_name(model)
    if model.startswith((FINE_TUNED_PREFIX, CHECKPOINT_PREFIX)):
        job, checkpoint = _project_model(session, project, model)
        if job.type == REWARD_MODEL or (checkpoint.model_info or {}).get("kind") == REWARD_MODEL:
            raise InvalidRequest(f"{model} is a reward model, not a causal LM: it scores text but cannot "
                                 "complete a chat", param="model")
        return ServedModel(str(checkpoint_model_dir(store, checkpoint)), f"{CHECKPOINT_PREFIX}{checkpoint.id}")
    return ServedModel(_base_location(settings, session, project, model), model)


def _project_model(session: Session, project: Project, model: str) -> tuple[Job, Checkpoint]:
    """The job and checkpoint of a fine-tuned model's name (its job's last checkpoint), a checkpoint's name or
    `checkpoint:<id>`; 404 unless it is the project's, exactly so named now, and not deleted."""
    if model.startswith(CHECKPOINT_PREFIX):
        checkpoint = project_checkpoint(session, project.id, model.removeprefix(CHECKPOINT_PREFIX)[:64])
    else:
        checkpoint = model_names.fine_tuned_checkpoint(session, project.id, model)
    job = session.get(Job, checkpoint.job_id) if checkpoint is not None else None
    if job is None or job.model_deleted_at is not None:
        raise NotFound(f"the model {model[:300]!r} does not exist (no such checkpoint or job of this project, "
                       "its job has not succeeded yet, or its model was deleted)", param="model")
    return job, checkpoint


def _base_location(settings: Settings, session: Session, project: Project, model: str) -> str:
    """Where a base model loads from (builtin reference, directory under MODELS_DIR, cached hub id); else 404."""
    if model.startswith(BUILTIN_PREFIX):
        if model not in BUILTIN_MODEL_REFS:
            raise NotFound(f"the model {model!r} does not exist; builtin models: {', '.join(BUILTIN_MODEL_REFS)}",
                           param="model")
        return model
    try:
        location = resolve_model_ref(model, settings=settings, session=session, project_id=project.id).location
    except ModelRefError as exc:
        raise NotFound(f"the model {model[:200]!r} does not exist: {exc}", param="model") from exc
    except OSError as exc:  # a name no file system takes (a part longer than it allows): no directory
        raise _unknown(model) from exc
    if Path(location).is_absolute():
        if not any((Path(location) / name).is_file() for name in MODEL_FILES):
            raise NotFound(f"the directory {model!r} under the models root holds no model", param="model")
        return location
    if model not in {m["id"] for m in _hub_models()}:
        raise NotFound(f"the model {model[:200]!r} does not exist: it is neither a builtin model, a directory under "
                       "the models root, a fine-tuned model of this project, nor in this server's Hugging Face "
                       "cache", param="model")  # fmt: skip
    return model


def _check_name(model: str) -> None:
    """404 for a name no model can have (a NUL character or a lone surrogate, which no path or column holds)."""
    if text_problem(model) is not None:
        raise _unknown(model.encode("utf-8", "replace").decode().replace("\x00", "\\u0000"))


def _unknown(model: str) -> NotFound:
    return NotFound(f"the model {model[:200]!r} does not exist", param="model")


def _model_object(model_id: str, created: datetime | float | None, owned_by: str) -> dict[str, Any]:
    stamp = created.timestamp() if isinstance(created, datetime) else created or 0
    return {"id": model_id, "object": "model", "created": int(stamp), "owned_by": owned_by}


def _base_models(settings: Settings) -> list[dict[str, Any]]:
    builtins = [_model_object(ref, None, SYSTEM_OWNER) for ref in BUILTIN_MODEL_REFS]
    return [*builtins, *_directory_models(Path(settings.models_dir)), *_hub_models()]


def _directory_models(root: Path) -> list[dict[str, Any]]:
    """Model directories under the models root (no deeper than `MODELS_DIR_DEPTH`, none leading outside it)."""
    if not root.is_dir():
        return []
    root = root.resolve()
    found, level = [], [root]
    for _ in range(MODELS_DIR_DEPTH):
        level = sorted(d for parent in level for d in parent.iterdir()
                       if d.is_dir() and not d.name.startswith(".") and d.resolve().is_relative_to(root))
        for directory in level:
            files = [directory / name for name in MODEL_FILES if (directory / name).is_file()]
            if files:
                found.append(_model_object(directory.relative_to(root).as_posix(), files[0].stat().st_mtime,
                                           SYSTEM_OWNER))
    return sorted(found, key=lambda m: m["id"])


def _hub_models() -> list[dict[str, Any]]:
    """Models in this server's Hugging Face cache with a config in some revision (huggingface_hub's scan)."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        cache = scan_cache_dir()
    except (CacheNotFound, OSError, ValueError):  # no cache yet, or HF_HUB_CACHE names a file
        return []
    return sorted(
        (_model_object(repo.repo_id, repo.last_modified, SYSTEM_OWNER) for repo in cache.repos
         if repo.repo_type == "model" and any(f.file_name in MODEL_FILES for rev in repo.revisions for f in rev.files)),
        key=lambda m: m["id"],
    )  # fmt: skip


def _project_models(session: Session, project: Project) -> list[dict[str, Any]]:
    """The project's fine-tuned models (succeeded jobs) and every checkpoint of its causal-LM jobs."""
    owner = model_names.project_slug(project.name)
    served = (Job.project_id == project.id, Job.type != REWARD_MODEL, Job.model_deleted_at.is_(None))
    jobs = session.scalars(select(Job).where(*served).order_by(Job.created_at, Job.id)).all()
    checkpoints = session.execute(select(Checkpoint.job_id, Checkpoint.step, Checkpoint.created_at)
                                  .join(Job, Job.id == Checkpoint.job_id).where(*served)
                                  .order_by(Checkpoint.step)).all()
    steps: dict[str, list[tuple[int, datetime]]] = {}
    for job_id, step, created in checkpoints:
        steps.setdefault(job_id, []).append((step, created))
    out = []
    for job in jobs:
        if job.status == JobStatus.succeeded and steps.get(job.id):
            out.append(_model_object(model_names.fine_tuned_model(job, project.name), job.finished_at, owner))
        out += [_model_object(model_names.checkpoint_model(job, project.name, step), created, owner)
                for step, created in steps.get(job.id, [])]
    return out
