"""Files of the OpenAI-compatible layer: a file is a dataset.

An upload goes through the same validation and storage as `POST /v1/datasets` (every row checked, all
stored or none), under an id `file-<hex>`; its kind is told from its first decodable row
(`trainers.spec.formats.detect_kind`). The rows are stored normalised, which is not what was sent
(OpenAI's preference and reinforcement rows are rewritten, some keys dropped), so the uploaded bytes
are also kept as they came in the artifact store, under `files/<id>`: `GET /v1/files/{id}/content`
returns them. They are written before any row, so a dataset never exists without them; a dataset
uploaded through the native API has no such copy, and its content is its stored rows as JSONL.
"""

import json
import logging
import secrets
import shutil
from collections.abc import Iterator
from contextlib import closing
from typing import Any, BinaryIO, Literal

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from api.deps import is_id_shaped
from api.errors import Conflict, InvalidRequest, NotFound, ServiceUnavailable
from api.ingest import RowIssue, UnsupportedFormat, decoded_records
from api.services import datasets
from api.services.paging import newest_first_page
from api.storable import text_problem
from core.artifacts import Store
from core.db import session_factory
from core.models import Dataset, DatasetRow
from trainers.spec.formats import DatasetKind, detect_kind

log = logging.getLogger(__name__)

FILE_PREFIX = "file-"
PURPOSE = "fine-tune"
# OpenAI's other purposes, named in the refusal so a client sees the value is known but not served here.
OTHER_PURPOSES = ("fine-tune-results", "assistants", "assistants_output", "batch", "batch_output", "vision",
                  "user_data", "evals")
ORIGINAL = "upload"  # the name of the uploaded bytes inside the file's artifact key
MAX_FILENAME_CHARS = 512
ROWS_PER_READ = 1000  # rows per query while a native dataset's content is streamed
SKIP_INVALID_HINT = " (skip_invalid=true stores the valid ones)"


def new_file_id() -> str:
    """A file id as OpenAI's look: `file-` and 24 hex digits."""
    return f"{FILE_PREFIX}{secrets.token_hex(12)}"


def original_key(file_id: str) -> str:
    return f"files/{file_id}"


def check_purpose(purpose: str) -> None:
    """400 naming `purpose` unless it is `fine-tune`, the only purpose this service stores files for."""
    if purpose == PURPOSE:
        return
    shown = repr(purpose[:64]) if not text_problem(purpose) else "this purpose"
    known = f"{shown} is an OpenAI purpose this service does not serve" if purpose in OTHER_PURPOSES else (
        f"{shown} is not a file purpose")
    raise InvalidRequest(f"purpose: {known}; files here are training data, purpose 'fine-tune'",
                         param="purpose", code="invalid_value")


def check_filename(filename: str) -> None:
    problem = text_problem(filename) or (
        f"is longer than {MAX_FILENAME_CHARS} characters" if len(filename) > MAX_FILENAME_CHARS else None)
    if problem:
        raise InvalidRequest(f"file: the file name {problem}", param="file")


def detect(*, file: BinaryIO, filename: str, max_row_bytes: int) -> DatasetKind:
    """The dataset kind of the file's first decodable row; 400 naming that row's line if it tells none."""
    try:
        records = decoded_records(file, filename, max_line_bytes=max_row_bytes)
    except UnsupportedFormat as exc:
        raise InvalidRequest(f"file: {exc}", param="file") from exc
    first_issue: RowIssue | None = None
    try:
        with closing(records):
            for line, record in records:
                if isinstance(record, RowIssue):  # reported in full when the rows are validated
                    first_issue = first_issue or record
                    if record.fatal:
                        break
                    continue
                kind = detect_kind(record)
                if kind is None:
                    raise _undetected(line, record)
                return kind
    finally:
        file.seek(0)
    if first_issue is not None:
        where = f"line {first_issue.line}" + (f", field {first_issue.field!r}" if first_issue.field else "")
        raise InvalidRequest(f"file: no row could be read; first: {where}: {first_issue.message}", param="file",
                             details=[{"line": first_issue.line, "field": first_issue.field,
                                       "message": first_issue.message}])
    raise InvalidRequest("file: the file holds no rows", param="file")


def _undetected(line: int, record: object) -> InvalidRequest:
    got = (f"keys {', '.join(repr(k[:64]) for k in list(record)[:8])}" if isinstance(record, dict)
           else f"a JSON {type(record).__name__}")
    message = (f"line {line}: cannot tell what training data this row is (got {got}). Expected "
               '{"messages": [..., assistant message]} or {"prompt", "completion"} for supervised fine-tuning; '
               '{"input": {"messages": [...]}, "preferred_output": [...], "non_preferred_output": [...]} or '
               '{"prompt", "chosen", "rejected"} for DPO; {"messages": [..., user message], ...} or {"prompt", ...} '
               "for reinforcement")
    return InvalidRequest(f"file: {message}", param="file",
                          details=[{"line": line, "field": None, "message": message}])


def create(*, session: Session, store: Store, project_id: str, file: BinaryIO, filename: str, purpose: str,
           idempotency_key: str | None = None, max_rows: int = 5_000_000, max_row_bytes: int = 8 * 1024**2,
           stale_upload_seconds: float = 600.0) -> tuple[Dataset, bool]:
    """Store an uploaded training file as a dataset of the kind its rows show, and keep its bytes as uploaded.

    Returns the dataset and whether it is new (a repeated Idempotency-Key returns the first one).
    """
    check_purpose(purpose)
    check_filename(filename)
    kind = detect(file=file, filename=filename, max_row_bytes=max_row_bytes)
    file_id = new_file_id()
    _keep_original(store, file_id, file)
    try:
        dataset, created = datasets.create(
            session=session, project_id=project_id, file=file, filename=filename, name=None, kind=kind,
            idempotency_key=idempotency_key, max_rows=max_rows, max_row_bytes=max_row_bytes,
            stale_upload_seconds=stale_upload_seconds, dataset_id=file_id)
    except InvalidRequest as exc:
        drop_original(store, file_id)
        # The native API's hint names a form field this route does not have.
        exc.message = exc.message.replace(SKIP_INVALID_HINT, "")
        raise
    except BaseException:
        drop_original(store, file_id)
        raise
    if not created:  # a replayed upload: the first one's copy is the one kept
        drop_original(store, file_id)
    return dataset, created


def _keep_original(store: Store, file_id: str, file: BinaryIO) -> None:
    """Copy the uploaded bytes to the artifact store; 503 (and nothing stored) if it cannot take them."""
    staging = None
    try:
        staging = store.staging_dir()
        file.seek(0)
        with (staging / ORIGINAL).open("wb") as out:
            while chunk := file.read(1 << 20):
                out.write(chunk)
        store.commit(staging, original_key(file_id))
    except Exception as exc:
        log.exception("could not keep the uploaded bytes of %s", file_id)
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        raise ServiceUnavailable("the artifact store could not keep the file; nothing was stored, retry later",
                                 param="file") from exc
    finally:
        file.seek(0)


def drop_original(store: Store, file_id: str) -> None:
    """Delete a file's uploaded bytes, if it has any (a dataset uploaded through /v1/datasets has none)."""
    try:
        store.delete(original_key(file_id))
    except Exception:  # an orphaned copy costs space, never correctness: no dataset names it
        log.exception("could not delete the uploaded bytes of %s", file_id)


def get_file(*, session: Session, project_id: str, file_id: str, param: str = "file_id") -> Dataset:
    """The project's file (any of its datasets); 404 naming `param` (e.g. `training_file`) otherwise."""
    dataset = session.get(Dataset, file_id) if is_id_shaped(file_id) else None
    if dataset is None or dataset.project_id != project_id or dataset.status != datasets.READY:
        raise NotFound(f"no file with id {file_id[:64]!r}", param=param)
    return dataset


def file_object(dataset: Dataset) -> dict[str, Any]:
    """OpenAI's File object of a dataset."""
    return {"id": dataset.id, "object": "file", "bytes": dataset.size_bytes,
            "created_at": int(dataset.created_at.timestamp()), "filename": dataset.filename, "purpose": PURPOSE,
            "status": "processed", "status_details": None, "expires_at": None, "kind": dataset.kind,
            "row_count": dataset.row_count}


def list_page(*, session: Session, project_id: str, limit: int, after: str | None,
              order: Literal["asc", "desc"] = "desc", purpose: str | None = None) -> tuple[list[Dataset], bool]:
    """The project's files by creation time (`after` is the id of the last file seen)."""
    if purpose is not None and purpose != PURPOSE:
        return [], False  # every file here is a fine-tuning file
    stmt = select(Dataset).where(Dataset.project_id == project_id, Dataset.status == datasets.READY)
    if order == "desc":
        return newest_first_page(session, stmt, Dataset, project_id=project_id, limit=limit, after=after)
    if after is not None:
        anchor = session.get(Dataset, after) if is_id_shaped(after) else None
        if anchor is None or anchor.project_id != project_id or anchor.status != datasets.READY:
            raise InvalidRequest(f"cursor {after[:64]!r} names no file of this list", param="after")
        stmt = stmt.where(or_(Dataset.created_at > anchor.created_at,
                              and_(Dataset.created_at == anchor.created_at, Dataset.id > anchor.id)))
    rows = list(session.scalars(stmt.order_by(Dataset.created_at, Dataset.id).limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def remove(*, session: Session, store: Store, dataset: Dataset) -> None:
    """Delete a file (its rows and its uploaded bytes); 409 while an active job uses it."""
    try:
        datasets.remove(session=session, dataset=dataset)
    except Conflict as exc:
        raise Conflict(exc.message.replace(f"dataset {dataset.id}", f"file {dataset.id}", 1),
                       param="file_id") from exc
    drop_original(store, dataset.id)


def content(*, store: Store, database_url: str, dataset: Dataset) -> tuple[Iterator[bytes], bool]:
    """The file's bytes as uploaded, or for a dataset uploaded through the native API its stored rows as JSONL;
    and whether they are the uploaded bytes."""
    try:
        return store.read_file(original_key(dataset.id), ORIGINAL), True
    except FileNotFoundError:
        return _rows_as_jsonl(database_url, dataset.id), False


def _rows_as_jsonl(database_url: str, dataset_id: str) -> Iterator[bytes]:
    """The rows in file order, one JSON object a line, read in short sessions (none held while the client reads)."""
    after = -1
    while True:
        with session_factory(database_url)() as session:
            rows = session.execute(select(DatasetRow.idx, DatasetRow.data)
                                   .where(DatasetRow.dataset_id == dataset_id, DatasetRow.idx > after)
                                   .order_by(DatasetRow.idx).limit(ROWS_PER_READ)).all()
        if not rows:
            return
        yield "".join(json.dumps(data, ensure_ascii=False) + "\n" for _, data in rows).encode()
        after = rows[-1].idx
