"""The training and validation files of a fine-tuning job: a file is a dataset, its kind checked against the method.

An uploaded file's kind is told from its rows. Some rows fit more than one kind (a
`{"prompt", "completion"}` row is a chat row, and also a prompt row whose `completion` a grader may
read), so a file whose kind differs from the one the method needs is still usable when every row
validates as that kind: its rows are stored again in that kind's form and its kind changes, in the
transaction that creates the job. The kind is fixed once a job uses the file: a file some job has
used is never converted again, so no job's data changes under it.
"""

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from api.deps import is_id_shaped
from api.errors import InvalidRequest
from core.models import Dataset, DatasetRow, Job
from trainers.spec.config import JOB_MODELS_BY_TYPE
from trainers.spec.formats import RowError, normalize_row

BATCH = 1000
# What each kind's rows look like, for the message that refuses a file of another kind.
ROWS = {
    "chat": '{"messages": [..., {"role": "assistant", "content": ...}]} (or {"prompt", "completion"})',
    "preference": '{"input": {"messages": [...]}, "preferred_output": [{"role": "assistant", ...}], '
                  '"non_preferred_output": [...]} (or {"prompt", "chosen", "rejected"})',
    "prompt": '{"messages": [..., {"role": "user", "content": ...}], <fields the grader reads>} (or {"prompt": ...})',
    "text": '{"text": ...}',
}


def for_job(*, session: Session, project_id: str, file_id: str, job_type: str, param: str) -> Dataset:
    """The file (or dataset) `file_id` as a dataset of the kind `job_type` trains on; refusals name `param`."""
    dataset = session.get(Dataset, file_id) if is_id_shaped(file_id) else None
    # OpenAI answers a file it does not know with a 400 naming the parameter, not a 404.
    if dataset is None or dataset.project_id != project_id or dataset.status != "ready":
        raise InvalidRequest(f"{param}: no file with id {file_id[:64]!r}", param=param)
    kind = JOB_MODELS_BY_TYPE[job_type].dataset_kind
    if dataset.kind == kind:
        return dataset
    wanted = f"this method needs rows like {ROWS[kind]}"
    # Locked (on Postgres) until the job's commit, so two jobs cannot convert the file at once.
    session.execute(select(Dataset.id).where(Dataset.id == dataset.id).with_for_update())
    session.refresh(dataset)
    if dataset.kind == kind:
        return dataset
    user = session.scalar(select(Job.id).where(
        Job.project_id == project_id,
        or_(Job.dataset_id == dataset.id, Job.eval_dataset_id == dataset.id, Job.ptx_dataset_id == dataset.id),
    ).limit(1))
    if user is not None:
        raise InvalidRequest(f"{param}: file {dataset.id} holds {dataset.kind} rows (fixed since job {user} "
                             f"used it); {wanted}", param=param)
    _convert(session, dataset, kind, param, wanted)
    return dataset


def _convert(session: Session, dataset: Dataset, kind: str, param: str, wanted: str) -> None:
    """Validate every row as `kind` and store it in that form (not committed: the job's commit does)."""
    after = -1
    while True:
        rows = session.execute(select(DatasetRow.idx, DatasetRow.line, DatasetRow.data)
                               .where(DatasetRow.dataset_id == dataset.id, DatasetRow.idx > after)
                               .order_by(DatasetRow.idx).limit(BATCH)).all()
        if not rows:
            break
        for idx, line, data in rows:
            try:
                converted = normalize_row(kind, data)
            except RowError as exc:
                raise InvalidRequest(
                    f"{param}: file {dataset.id} holds {dataset.kind} rows; {wanted}. Line {line}: {exc}",
                    param=param) from exc
            if converted != data:
                session.execute(update(DatasetRow).where(DatasetRow.dataset_id == dataset.id, DatasetRow.idx == idx)
                                .values(data=converted))
        after = rows[-1][0]
    dataset.kind = kind
