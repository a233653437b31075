"""What a job's `base_model` names, and where to load it from."""

from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from sqlalchemy.orm import Session

from core.artifacts import Store, open_store
from core.model_names import fine_tuned_checkpoint
from core.models import Checkpoint
from core.projects import project_checkpoint
from core.settings import Settings

BUILTIN_PREFIX = "builtin:"
CHECKPOINT_PREFIX = "checkpoint:"
FINE_TUNED_PREFIX = "ft:"
MODEL_SUBDIR = "model"


class ModelRefError(ValueError):
    """The reference can never work: unknown checkpoint, or a path leaving the models root."""


@dataclass(frozen=True)
class ResolvedModel:
    ref: str  # what the user wrote
    location: str  # what the trainer loads: builtin name, directory, or hub id


def checkpoint_model_key(checkpoint: Checkpoint) -> str:
    return f"{checkpoint.artifact_key}/{MODEL_SUBDIR}"


def checkpoint_model_dir(store: Store, checkpoint: Checkpoint) -> Path:
    """The checkpoint's model directory on local disk (downloaded first from an object store)."""
    return store.local_dir(checkpoint_model_key(checkpoint))


def resolve_model_ref(ref: str, *, settings: Settings, session: Session, project_id: str,
                      download: bool = False) -> ResolvedModel:
    """Map `ref` to something the trainer can load, or raise ModelRefError.

    `builtin:<name>` passes through; `checkpoint:<id>` (of a job of the same project) becomes that
    checkpoint's model directory, and so does a fine-tuned model's name (`ft:...`, `core.model_names`)
    (with `download`, on local disk: an object store's files are fetched
    into the local cache; without it, the store's location of them, which checks the reference); a
    relative path that exists under `settings.models_dir` becomes that directory (symlinks may not
    lead outside the root); anything else is taken as a Hugging Face hub id.
    """
    if ref.startswith(BUILTIN_PREFIX):
        return ResolvedModel(ref, ref)
    if ref.startswith((CHECKPOINT_PREFIX, FINE_TUNED_PREFIX)):
        if ref.startswith(FINE_TUNED_PREFIX):
            ckpt = fine_tuned_checkpoint(session, project_id, ref)
            if ckpt is None:
                raise ModelRefError(f"{ref[:300]!r} is not a fine-tuned model of this project (not finished, "
                                    "deleted, or no such job)")
        else:
            ckpt_id = ref.removeprefix(CHECKPOINT_PREFIX)
            ckpt = project_checkpoint(session, project_id, ckpt_id)
            if ckpt is None:
                raise ModelRefError(f"checkpoint {ckpt_id!r} does not exist")
        store = open_store(settings)
        if download:
            return ResolvedModel(ref, str(checkpoint_model_dir(store, ckpt)))
        return ResolvedModel(ref, store.url(checkpoint_model_key(ckpt)))
    pure = PurePosixPath(ref)
    if ref.startswith(("/", "~", "\\")) or ".." in pure.parts or not ref.strip():
        raise ModelRefError(
            f"{ref!r} is not a model reference: use builtin:<name>, checkpoint:<id>, a hub id, "
            "or a directory relative to the models root"
        )
    root = Path(settings.models_dir).resolve()
    candidate = (root / pure).resolve()
    if (root / pure).exists():
        if not candidate.is_relative_to(root):
            raise ModelRefError(f"{ref!r} leads outside the models root")
        return ResolvedModel(ref, str(candidate))
    return ResolvedModel(ref, ref)
