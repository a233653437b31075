"""Dataset upload (validate every row while streaming; store all rows or none), listing, deletion."""

import hashlib
import json
from pathlib import PurePath
from typing import BinaryIO

from sqlalchemy import delete, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.errors import Conflict, InvalidRequest, TooLarge
from api.ingest import RowIssue, UnsupportedFormat, iter_rows
from api.services.paging import ascending_page, newest_first_page
from core.models import ACTIVE_STATUSES, Dataset, DatasetRow, Job

INSERT_BATCH = 500
MAX_REPORTED_ISSUES = 50


def _digest(file: BinaryIO) -> tuple[int, str]:
    digest, size = hashlib.sha256(), 0
    file.seek(0)
    while chunk := file.read(1 << 20):
        digest.update(chunk)
        size += len(chunk)
    file.seek(0)
    return size, digest.hexdigest()


def _json_issue(line: int, row: dict) -> RowIssue | None:
    """Rows are stored as JSON: values JSON cannot hold (timestamps, bytes, NaN) are the row's fault."""
    try:
        json.dumps(row, allow_nan=False)
    except (TypeError, ValueError) as exc:
        return RowIssue(line=line, field=None, message=f"value cannot be stored as JSON: {exc}")
    return None


def create(*, session: Session, project_id: str, file: BinaryIO, filename: str, name: str | None, kind: str,
           idempotency_key: str | None = None, max_rows: int = 5_000_000,
           max_row_bytes: int = 8 * 1024**2) -> tuple[Dataset, bool]:
    """Validate and store an uploaded file in one transaction; on any bad row nothing is stored.

    Returns the dataset and whether it is new (a repeated Idempotency-Key returns the first one).
    """
    size, sha256 = _digest(file)
    request_hash = hashlib.sha256(json.dumps([sha256, filename, name, kind]).encode()).hexdigest()
    if idempotency_key:
        existing = session.scalar(select(Dataset).where(Dataset.project_id == project_id,
                                                        Dataset.idempotency_key == idempotency_key))
        if existing is not None:
            if existing.request_hash != request_hash:
                raise Conflict("this Idempotency-Key was used with a different upload", param="Idempotency-Key")
            return existing, False
    suffix = PurePath(filename).suffix.lower().lstrip(".")
    dataset = Dataset(project_id=project_id, name=name or filename, kind=kind, filename=filename, format=suffix,
                      size_bytes=size, sha256=sha256, idempotency_key=idempotency_key, request_hash=request_hash)
    session.add(dataset)
    session.flush()
    issues: list[RowIssue] = []
    batch: list[dict] = []
    count = 0
    try:
        for line, row in iter_rows(file, filename, kind, max_line_bytes=max_row_bytes):
            if not isinstance(row, RowIssue):
                row = _json_issue(line, row) or row
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
                session.rollback()
                raise TooLarge(f"the file has more than {max_rows:,} rows, the limit (MAX_DATASET_ROWS)",
                               param="file")
            if len(batch) >= INSERT_BATCH:
                session.execute(insert(DatasetRow), batch)
                batch.clear()
    except UnsupportedFormat as exc:
        session.rollback()
        raise InvalidRequest(str(exc), param="file") from exc
    if issues:
        session.rollback()
        first = issues[0]
        where = f"line {first.line}" + (f", field {first.field!r}" if first.field else "")
        raise InvalidRequest(
            f"{len(issues)}{'+' if len(issues) >= MAX_REPORTED_ISSUES else ''} invalid row(s); "
            f"nothing was stored. First: {where}: {first.message}",
            param="file",
            details=[{"line": i.line, "field": i.field, "message": i.message} for i in issues],
        )
    if batch:
        session.execute(insert(DatasetRow), batch)
    if count == 0:
        session.rollback()
        raise InvalidRequest("the file holds no rows", param="file")
    dataset.row_count = count
    try:
        session.commit()
    except IntegrityError:  # the same Idempotency-Key committed by a concurrent request
        session.rollback()
        return create(session=session, project_id=project_id, file=file, filename=filename, name=name,
                      kind=kind, idempotency_key=idempotency_key)
    return dataset, True


def list_page(*, session: Session, project_id: str, limit: int, after: str | None) -> tuple[list[Dataset], bool]:
    """The project's datasets, newest first."""
    stmt = select(Dataset).where(Dataset.project_id == project_id)
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
    session.execute(delete(DatasetRow).where(DatasetRow.dataset_id == dataset.id))
    session.delete(dataset)
    session.commit()
