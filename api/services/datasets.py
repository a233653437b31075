"""Datasets: upload (every row validated while streaming, all rows stored or none), listing, deletion.

An upload never holds the database's write lock for long (SQLite has one for the whole file): the
dataset row is committed first as `uploading`, which every reader treats as absent, rows follow in
short transactions of INSERT_BATCH rows, and the last one turns it `ready`. Any failure deletes what
was written, again in short transactions; what a stopped API process leaves behind is deleted by
`purge_stale_uploads` before the next upload. With `skip_invalid`, bad rows are left out and counted
instead (a file whose structure breaks, or with no valid row, is still refused whole).
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
from api.ingest import CANONICAL_KEYS, RowIssue, UnsupportedFormat, iter_rows
from api.services.paging import ascending_page, newest_first_page
from api.storable import text_problem
from core.models import ACTIVE_STATUSES, Dataset, DatasetRow, Job, utcnow

log = logging.getLogger(__name__)

UPLOADING, READY = "uploading", "ready"
INSERT_BATCH = 500  # rows per INSERT and per committed transaction of an upload
DISCARD_BATCH = 5000  # rows per transaction when a dataset's rows are deleted
MAX_REPORTED_ISSUES = 50
MAX_NAME_CHARS = 256  # the width of datasets.name: a name taken from a longer file name is cut to it
MAX_COLUMN_CHARS = 512
MAX_ISSUE_CHARS = 1000  # of a reported row issue's field and message


def parse_column_map(*, text: str | None, kind: str) -> dict[str, str] | None:
    """The `column_map` form field as canonical key -> column, or None; 422 naming `column_map` if unusable."""
    if text is None or not text.strip():
        return None
    try:
        value = json.loads(text, object_pairs_hook=_unique_keys)
    except (ValueError, RecursionError) as exc:  # ValueError: also an integer past Python's digit limit
        raise _column_map_error(f"is not valid JSON ({exc})") from None
    example = '{"prompt": "question"}'
    if not isinstance(value, dict):
        raise _column_map_error(f"must be a JSON object of canonical key -> the file's column, e.g. {example}")
    keys = CANONICAL_KEYS[kind]
    for key, column in value.items():
        if key not in keys:
            shown = "a key" if text_problem(key) else repr(key)
            raise _column_map_error(f"{shown} is not a canonical key of a {kind} dataset (expected "
                                    f"{', '.join(keys)}); columns not in the map are kept as they are")
        if not isinstance(column, str) or not column or len(column) > MAX_COLUMN_CHARS or text_problem(column):
            raise _column_map_error(f"{key!r} must map to a column name: a non-empty string of at most "
                                    f"{MAX_COLUMN_CHARS} characters, e.g. {example}")
    columns = list(value.values())
    if dupes := sorted({column for column in columns if columns.count(column) > 1}):
        mapped = [key for key, column in value.items() if column == dupes[0]]
        raise _column_map_error(f"{' and '.join(map(repr, mapped))} both map from column {dupes[0]!r}")
    return value or None


def _unique_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    """A JSON object's dict; a key given twice (which json.loads would silently resolve) is refused."""
    keys = [key for key, _ in pairs]
    if dupes := sorted({key for key in keys if keys.count(key) > 1}):
        shown = "a key" if text_problem(dupes[0]) else repr(dupes[0])
        raise _column_map_error(f"{shown} is given more than once")
    return dict(pairs)


def _column_map_error(problem: str) -> InvalidRequest:
    return InvalidRequest(f"column_map: {problem}", param="column_map")


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
           column_map: dict[str, str] | None = None, skip_invalid: bool = False,
           idempotency_key: str | None = None, max_rows: int = 5_000_000,
           max_row_bytes: int = 8 * 1024**2, stale_upload_seconds: float = 600.0,
           dataset_id: str | None = None) -> tuple[Dataset, bool]:
    """Validate an uploaded file and store all of its rows or none (or, with `skip_invalid`, its valid rows).

    `filename` and `name` are checked by the caller (length, characters no backend stores), and
    `column_map` by `parse_column_map`. `dataset_id` names the new dataset (a fresh `ds_` id by default).

    Returns the dataset and whether it is new (a repeated Idempotency-Key returns the first one).
    """
    purge_stale_uploads(session=session, older_than=timedelta(seconds=stale_upload_seconds))
    size, sha256 = _digest(file)
    request = [sha256, filename, name, kind] + ([column_map, skip_invalid] if column_map or skip_invalid else [])
    request_hash = hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()
    if idempotency_key and (existing := _replay(session, project_id, idempotency_key, request_hash)):
        return existing, False
    suffix = PurePath(filename).suffix.lower().lstrip(".")
    dataset = Dataset(project_id=project_id, name=name or filename[:MAX_NAME_CHARS], kind=kind, filename=filename,
                      format=suffix, size_bytes=size, sha256=sha256, idempotency_key=idempotency_key,
                      request_hash=request_hash, status=UPLOADING, updated_at=utcnow())
    if column_map:  # left unset otherwise, so the column holds SQL NULL rather than JSON null
        dataset.column_map = column_map
    if dataset_id:
        dataset.id = dataset_id
    session.add(dataset)
    try:
        session.commit()
    except IntegrityError:  # the same Idempotency-Key committed by a concurrent request
        session.rollback()
        return create(session=session, project_id=project_id, file=file, filename=filename, name=name,
                      kind=kind, column_map=column_map, skip_invalid=skip_invalid, idempotency_key=idempotency_key,
                      max_rows=max_rows, max_row_bytes=max_row_bytes, stale_upload_seconds=stale_upload_seconds,
                      dataset_id=dataset_id)
    try:
        try:
            rows = iter_rows(file, filename, kind, column_map=column_map, max_line_bytes=max_row_bytes)
        except UnsupportedFormat as exc:
            raise InvalidRequest(str(exc), param="file") from exc
        _write_rows(session, dataset, rows, max_rows, skip_invalid)
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
                max_rows: int, skip_invalid: bool = False) -> None:
    """Commit the rows batch by batch; the last commit makes the dataset `ready`.

    Bad rows refuse the whole file, unless `skip_invalid`: then they are counted, the first
    MAX_REPORTED_ISSUES kept for the dataset's `skipped`, and the good rows stored.
    """
    issues: list[RowIssue] = []
    batch: list[dict] = []
    count = skipped = 0
    for line, row in rows:
        if isinstance(row, RowIssue):
            if row.fatal and skip_invalid:  # the rest of the file is unread: not a row to skip
                raise _invalid([row], f"the file is damaged at line {row.line}; nothing was stored")
            skipped += 1
            if len(issues) < MAX_REPORTED_ISSUES:
                issues.append(row)
            elif not skip_invalid:
                break
            continue
        if issues and not skip_invalid:
            continue  # keep scanning for more problems, but nothing will be stored
        batch.append({"dataset_id": dataset.id, "idx": count, "line": line, "data": row})
        count += 1
        if count > max_rows:
            raise TooLarge(f"the file has more than {max_rows:,} rows, the limit (MAX_DATASET_ROWS)", param="file")
        if len(batch) >= INSERT_BATCH:
            _commit_batch(session, dataset.id, batch)
            batch.clear()
    if issues and not skip_invalid:
        more = "+" if skipped > MAX_REPORTED_ISSUES else ""
        raise _invalid(issues, f"{len(issues)}{more} invalid row(s); nothing was stored (skip_invalid=true "
                               "stores the valid ones)")
    if count == 0:
        if issues:
            raise _invalid(issues, f"all {skipped} rows are invalid; nothing was stored")
        raise InvalidRequest("the file holds no rows", param="file")
    summary = {"skipped": {"count": skipped, "rows": _details(issues)}} if skip_invalid else {}
    # Created when it became visible, so it lists above everything that was there before it.
    _commit_batch(session, dataset.id, batch, status=READY, row_count=count, created_at=utcnow(), **summary)


def _details(issues: list[RowIssue]) -> list[dict]:
    """Issues as `{line, field, message}`, each text cut short: a message may quote a row's keys, of any length."""
    return [{"line": i.line, "field": _cut(i.field), "message": _cut(i.message)} for i in issues]


def _cut(text: str | None) -> str | None:
    return text if text is None or len(text) <= MAX_ISSUE_CHARS else text[:MAX_ISSUE_CHARS] + "..."


def _invalid(issues: list[RowIssue], summary: str) -> InvalidRequest:
    """The 422 for bad rows: the summary, the first problem's place, and up to 50 `{line, field, message}`."""
    details = _details(issues)
    first = details[0]
    where = f"line {first['line']}" + (f", field {first['field']!r}" if first["field"] else "")
    return InvalidRequest(f"{summary}. First: {where}: {first['message']}", param="file", details=details)


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
