"""Datasets: upload (every row validated while streaming, all rows stored or none), listing, deletion.

An upload never holds the database's write lock for long (SQLite has one for the whole file): the
dataset row is committed first as `uploading`, which every reader treats as absent, rows follow in
short transactions of INSERT_BATCH rows, and the last one turns it `ready`. Any failure deletes what
was written, again in short transactions; what a stopped API process leaves behind is deleted by
`purge_stale_uploads` before the next upload.
"""

import hashlib
import json
import logging
from collections.abc import Iterable
from datetime import timedelta
from pathlib import PurePath
from typing import BinaryIO

from sqlalchemy import delete, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.errors import Conflict, InvalidRequest, ServiceUnavailable, TooLarge
from api.ingest import RowIssue, UnsupportedFormat, iter_rows
from api.services.paging import ascending_page, newest_first_page
from core.models import ACTIVE_STATUSES, Dataset, DatasetRow, Job, utcnow

log = logging.getLogger(__name__)

UPLOADING, READY = "uploading", "ready"
INSERT_BATCH = 500  # rows per INSERT and per committed transaction of an upload
DISCARD_BATCH = 5000  # rows per transaction when a dataset's rows are deleted
MAX_REPORTED_ISSUES = 50
MAX_NAME_CHARS = 256  # the width of datasets.name: a name taken from a longer file name is cut to it


def _digest(file: BinaryIO) -> tuple[int, str]:
    digest, size = hashlib.sha256(), 0
    file.seek(0)
    while chunk := file.read(1 << 20):
        digest.update(chunk)
        size += len(chunk)
    file.seek(0)
    return size, digest.hexdigest()


def _replay(session: Session, project_id: str, key: str, request_hash: str) -> Dataset | None:
    """The dataset an earlier upload with this Idempotency-Key made, if any."""
    existing = session.scalar(select(Dataset).where(Dataset.project_id == project_id,
                                                    Dataset.idempotency_key == key))
    if existing is None:
        return None
    if existing.request_hash != request_hash:
        raise Conflict("this Idempotency-Key was used with a different upload", param="Idempotency-Key")
    if existing.status != READY:
        raise Conflict("an upload with this Idempotency-Key is still in progress; retry when it has finished",
                       param="Idempotency-Key")
    return existing


def create(*, session: Session, project_id: str, file: BinaryIO, filename: str, name: str | None, kind: str,
           idempotency_key: str | None = None, max_rows: int = 5_000_000,
           max_row_bytes: int = 8 * 1024**2, stale_upload_seconds: float = 600.0) -> tuple[Dataset, bool]:
    """Validate an uploaded file and store all of its rows or none, in short transactions.

    `filename` and `name` are checked by the caller (length, characters no backend stores).

    Returns the dataset and whether it is new (a repeated Idempotency-Key returns the first one).
    """
    purge_stale_uploads(session=session, older_than=timedelta(seconds=stale_upload_seconds))
    size, sha256 = _digest(file)
    request_hash = hashlib.sha256(json.dumps([sha256, filename, name, kind]).encode()).hexdigest()
    if idempotency_key and (existing := _replay(session, project_id, idempotency_key, request_hash)):
        return existing, False
    suffix = PurePath(filename).suffix.lower().lstrip(".")
    dataset = Dataset(project_id=project_id, name=name or filename[:MAX_NAME_CHARS], kind=kind, filename=filename,
                      format=suffix, size_bytes=size, sha256=sha256, idempotency_key=idempotency_key,
                      request_hash=request_hash, status=UPLOADING, updated_at=utcnow())
    session.add(dataset)
    try:
        session.commit()
    except IntegrityError:  # the same Idempotency-Key committed by a concurrent request
        session.rollback()
        return create(session=session, project_id=project_id, file=file, filename=filename, name=name,
                      kind=kind, idempotency_key=idempotency_key, max_rows=max_rows, max_row_bytes=max_row_bytes,
                      stale_upload_seconds=stale_upload_seconds)
    try:
        try:
            rows = iter_rows(file, filename, kind, max_line_bytes=max_row_bytes)
        except UnsupportedFormat as exc:
            raise InvalidRequest(str(exc), param="file") from exc
        _write_rows(session, dataset, rows, max_rows)
    except BaseException:  # bad rows, too many, an unreadable file, a lost connection: nothing stays
        session.rollback()
        try:
            _discard(session, dataset.id)
        except Exception:  # the database went away too; the next upload's purge removes it
            log.exception("could not delete the staged dataset %s", dataset.id)
        raise
    session.refresh(dataset)
    return dataset, True


def _write_rows(session: Session, dataset: Dataset, rows: Iterable[tuple[int, dict | RowIssue]],
                max_rows: int) -> None:
    """Commit the rows batch by batch; the last commit makes the dataset `ready`."""
    issues: list[RowIssue] = []
    batch: list[dict] = []
    count = 0
    for line, row in rows:
        if isinstance(row, RowIssue):
            issues.append(row)
            if len(issues) >= MAX_REPORTED_ISSUES:
                break
            continue
        if issues:
            continue  # keep scanning for more problems, but nothing will be stored
        batch.append({"dataset_id": dataset.id, "idx": count, "line": line, "data": row})
        count += 1
        if count > max_rows:
            raise TooLarge(f"the file has more than {max_rows:,} rows, the limit (MAX_DATASET_ROWS)", param="file")
        if len(batch) >= INSERT_BATCH:
            _commit_batch(session, dataset.id, batch)
            batch.clear()
    if issues:
        first = issues[0]
        where = f"line {first.line}" + (f", field {first.field!r}" if first.field else "")
        raise InvalidRequest(
            f"{len(issues)}{'+' if len(issues) >= MAX_REPORTED_ISSUES else ''} invalid row(s); "
            f"nothing was stored. First: {where}: {first.message}",
            param="file",
            details=[{"line": i.line, "field": i.field, "message": i.message} for i in issues],
        )
    if count == 0:
        raise InvalidRequest("the file holds no rows", param="file")
    # Created when it became visible, so it lists above everything that was there before it.
    _commit_batch(session, dataset.id, batch, status=READY, row_count=count, created_at=utcnow())


def _commit_batch(session: Session, dataset_id: str, batch: list[dict], **values: object) -> None:
    """Insert a batch of rows and renew the dataset's `updated_at` (and set `values`) in one transaction."""
    touched = session.execute(update(Dataset).where(Dataset.id == dataset_id, Dataset.status == UPLOADING)
                              .values(updated_at=utcnow(), **values)).rowcount
    if touched != 1:  # deleted as stale: no batch was written for longer than STALE_UPLOAD_SECONDS
        session.rollback()
        raise ServiceUnavailable("the upload stalled and was abandoned (STALE_UPLOAD_SECONDS); retry it")
    if batch:
        session.execute(insert(DatasetRow), batch)
    session.commit()


def _discard(session: Session, dataset_id: str) -> None:
    """Delete a dataset's rows in short transactions, then the dataset."""
    top = session.scalar(select(func.max(DatasetRow.idx)).where(DatasetRow.dataset_id == dataset_id))
    for start in range(0, -1 if top is None else top + 1, DISCARD_BATCH):
        session.execute(delete(DatasetRow).where(DatasetRow.dataset_id == dataset_id, DatasetRow.idx >= start,
                                                 DatasetRow.idx < start + DISCARD_BATCH))
        session.commit()
    # Rows a stalled upload wrote after `top` was read go with the dataset (ON DELETE CASCADE).
    session.execute(delete(Dataset).where(Dataset.id == dataset_id))
    session.commit()


def purge_stale_uploads(*, session: Session, older_than: timedelta) -> int:
    """Delete datasets left `uploading` (by a stopped API process) with no progress for `older_than`."""
    cutoff = utcnow() - older_than
    stale = session.scalars(select(Dataset.id).where(
        Dataset.status == UPLOADING, or_(Dataset.updated_at < cutoff, Dataset.updated_at.is_(None)))).all()
    for dataset_id in stale:
        log.warning("deleting dataset %s: its upload made no progress for %s", dataset_id, older_than)
        _discard(session, dataset_id)
    return len(stale)


def list_page(*, session: Session, project_id: str, limit: int, after: str | None) -> tuple[list[Dataset], bool]:
    """The project's datasets, newest first."""
    stmt = select(Dataset).where(Dataset.project_id == project_id, Dataset.status == READY)
    return newest_first_page(session, stmt, Dataset, project_id=project_id, limit=limit, after=after)


def rows_page(*, session: Session, dataset: Dataset, limit: int, after: str | None) -> tuple[list[DatasetRow], bool]:
    """Rows of a dataset in file order; `after` is a row idx."""
    stmt = select(DatasetRow).where(DatasetRow.dataset_id == dataset.id)
    return ascending_page(session, stmt, DatasetRow.idx, limit=limit, after=after)


def remove(*, session: Session, dataset: Dataset) -> None:
    """Delete a dataset and its rows, unless an active job still needs it."""
    active = session.scalar(
        select(Job.id).where(
            (Job.dataset_id == dataset.id) | (Job.eval_dataset_id == dataset.id) | (Job.ptx_dataset_id == dataset.id),
            Job.status.in_([s.value for s in ACTIVE_STATUSES]),
        ).limit(1)
    )
    if active:
        raise Conflict(f"dataset {dataset.id} is used by active job {active}", param="dataset_id")
    # Hidden first, as an upload in progress is, so the rows can go in short transactions; if the process
    # stops part-way, the stale dataset is finished off by `purge_stale_uploads`.
    dataset.status, dataset.updated_at = UPLOADING, utcnow()
    session.commit()
    _discard(session, dataset.id)
