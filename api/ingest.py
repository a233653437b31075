"""Streaming readers for uploaded dataset files (.jsonl, .json, .csv, .parquet).

Every reader holds at most one record (plus a read buffer) in memory, so an upload of any size is
validated in constant memory. Each row is normalised with ``trainers.spec.formats.normalize_row``; a bad
row becomes a ``RowIssue`` instead of an exception, so the caller can report many at once. Values no
backend stores as they are (``api.ingest_values``: integers past 64 bits, non-finite numbers, NUL or
unpaired surrogates in strings) are row issues too, named by their field path.

Bad bytes or a bad value spoil only their own record. Damage to the file's structure part-way
(a .json array that breaks or is truncated, CSV quoting the reader rejects, an unreadable Parquet
page) ends the stream with one final, ``fatal`` RowIssue: the record boundaries after it cannot be trusted.
A ``column_map`` (canonical key -> the file's column) renames columns of each record before validation.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq

from api.ingest_values import decoder, loads, unstorable
from trainers.spec.formats import DatasetKind, RowError, normalize_row

SUPPORTED_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
MAX_LINE_BYTES = 8 * 1024 * 1024
CHUNK_SIZE = 64 * 1024
PARQUET_BATCH_ROWS = 1024

_REQUIRED_COLUMNS: dict[str, tuple[tuple[str, ...], ...]] = {
    # Preference files may use either the chosen/rejected (with or without prompt) or the OpenAI column set.
    "preference": (("chosen", "rejected"), ("input", "preferred_output", "non_preferred_output")),
    "prompt": (("prompt",), ("messages",)),
    "text": (("text",),),
    "chat": (("messages",), ("prompt", "completion")),
    "feedback": (("prompt", "completion", "label"),),
}
# The keys a column_map may fill, per kind: the canonical keys trainers read (a reward model's optional margin).
CANONICAL_KEYS: dict[str, tuple[str, ...]] = {
    "preference": ("prompt", "chosen", "rejected", "margin"),
    "prompt": ("prompt", "messages"),
    "text": ("text",),
    "chat": ("messages", "prompt", "completion"),
    "feedback": ("prompt", "completion", "label"),
}
_WHITESPACE = re.compile(r"[ \t\n\r]*")
_INVALID_UTF8 = re.compile("[\udc80-\udcff]")  # bytes decoded with errors="surrogateescape"


@dataclass(frozen=True)
class RowIssue:
    """A problem with one record of an uploaded file.

    ``line`` is 1-based: the physical line for .jsonl, the record's first line for .csv (the header
    is line 1), the element's index for a .json array, the row's index for .parquet. ``fatal``: the
    file's structure breaks here, so nothing after it was read.
    """

    line: int
    field: str | None
    message: str
    fatal: bool = False


class UnsupportedFormat(ValueError):
    """The file's suffix is unknown, or its content is not of the claimed type at all."""


def iter_rows(
    file: BinaryIO,
    filename: str,
    kind: DatasetKind,
    *,
    column_map: Mapping[str, str] | None = None,
    max_line_bytes: int = MAX_LINE_BYTES,
    chunk_size: int = CHUNK_SIZE,
) -> Iterator[tuple[int, dict | RowIssue]]:
    """Stream the canonical rows of an uploaded dataset file, in file order.

    The file's start is read before this returns, so a file that is not of its claimed type at all
    raises here rather than during iteration.

    Args:
        file: the uploaded file, opened in binary mode (seekable for .parquet).
        filename: the client's file name; its suffix (case-insensitive) picks the format.
        kind: the dataset kind every row must match.
        column_map: canonical key -> the file's column holding it (checked by the caller: keys of
            ``CANONICAL_KEYS[kind]``, distinct columns); a record lacking a mapped column is a RowIssue.
        max_line_bytes: longest accepted .jsonl line in bytes, or .json array element in characters;
            a longer record becomes a RowIssue, so memory stays bounded by about this size.
        chunk_size: bytes read at a time from .json files.

    Returns:
        An iterator of ``(line, row)`` pairs: ``row`` is the canonical dict of a good row or a
        ``RowIssue`` for a bad one. Bad rows never raise.

    Raises:
        UnsupportedFormat: unknown suffix; a .json file that is not a top-level array; a .csv file
            without a header or missing a required (or mapped) column; an unreadable .parquet file
            or one missing a required (or mapped) column.
    """
    suffix = "." + filename.rsplit(".", 1)[-1].lower() if "." in filename else ""
    if suffix == ".jsonl":
        records = _jsonl_records(file, max_line_bytes)
    elif suffix == ".json":
        records = _JsonArray(file, chunk_size, max_line_bytes).records()
    elif suffix == ".csv":
        records = _csv_records(file, kind, column_map or {})
    elif suffix == ".parquet":
        records = _parquet_records(file, kind, column_map or {})
    else:
        shown = repr(suffix) if suffix else "(no suffix)"
        expected = ", ".join(SUPPORTED_SUFFIXES)
        raise UnsupportedFormat(f"unsupported file type {shown}; expected one of {expected}")
    return _normalized(records, kind, column_map or {})


def decoded_records(
    file: BinaryIO, filename: str, *, max_line_bytes: int = MAX_LINE_BYTES, chunk_size: int = CHUNK_SIZE
) -> Iterator[tuple[int, object]]:
    """Stream the decoded records of an uploaded file, not validated as any kind (to tell its kind from a row).

    A record that cannot be decoded is a ``RowIssue``; the arguments and errors are those of ``iter_rows``.
    Close the iterator when done with it early: a .csv reader detaches from ``file`` when closed.
    """
    suffix = "." + filename.rsplit(".", 1)[-1].lower() if "." in filename else ""
    if suffix == ".jsonl":
        return _jsonl_records(file, max_line_bytes)
    if suffix == ".json":
        return _JsonArray(file, chunk_size, max_line_bytes).records()
    if suffix == ".csv":
        return _csv_records(file, None, {})
    if suffix == ".parquet":
        return _parquet_records(file, None, {})
    shown = repr(suffix) if suffix else "(no suffix)"
    raise UnsupportedFormat(f"unsupported file type {shown}; expected one of {', '.join(SUPPORTED_SUFFIXES)}")


def _normalized(
    records: Iterable[tuple[int, object]], kind: DatasetKind, column_map: Mapping[str, str]
) -> Iterator[tuple[int, dict | RowIssue]]:
    """Turn decoded records into canonical rows, and row errors into RowIssues."""
    for line, obj in records:
        if isinstance(obj, RowIssue):
            yield line, obj
            continue
        problem = unstorable(obj)
        if problem is not None:
            yield line, RowIssue(line, *problem)
            continue
        try:
            yield line, normalize_row(kind, _mapped(obj, column_map) if column_map else obj)
        except RowError as err:
            yield line, RowIssue(line, err.field, err.message)


def _jsonl_records(file: BinaryIO, max_line_bytes: int) -> Iterator[tuple[int, object]]:
    """Decode one JSON value per line, reading at most ``max_line_bytes + 1`` bytes at a time."""
    line = 0
    while raw := file.readline(max_line_bytes + 1):
        line += 1
        if len(raw) > max_line_bytes and not raw.endswith(b"\n"):
            _skip_rest_of_line(file)
            yield line, RowIssue(line, None, f"line is longer than {max_line_bytes} bytes")
            continue
        try:
            # A byte-order mark is common in files saved by Windows editors.
            text = raw.decode("utf-8-sig" if line == 1 else "utf-8")
        except UnicodeDecodeError as err:
            yield line, RowIssue(line, None, f"invalid UTF-8 at byte {err.start + 1} of the line")
            continue
        if not text.strip():
            continue
        try:
            yield line, loads(text)
        except json.JSONDecodeError as err:
            yield line, RowIssue(line, None, f"invalid JSON: {err.msg} at column {err.colno}")
        except RecursionError:
            yield line, RowIssue(line, None, "invalid JSON: nested too deeply")


def _skip_rest_of_line(file: BinaryIO) -> None:
    """Consume the remainder of an oversized line in bounded reads."""
    while rest := file.readline(CHUNK_SIZE):
        if rest.endswith(b"\n"):
            return


class _JsonArray:
    """Incremental reader of a top-level JSON array: ``raw_decode`` over a sliding text buffer."""

    def __init__(self, file: BinaryIO, chunk_size: int, max_element_chars: int) -> None:
        self._file = file
        self._chunk_size = chunk_size
        self._max_element_chars = max_element_chars
        # surrogateescape turns invalid bytes into lone surrogates, so a bad byte spoils one element
        # (found by _INVALID_UTF8) instead of the rest of the file.
        self._decoder = codecs.getincrementaldecoder("utf-8-sig")(errors="surrogateescape")
        self._json = decoder()
        self._buf = ""
        self._pos = 0
        self._consumed = 0  # characters dropped from the front of the buffer
        self._eof = False
        first = self._next_char()
        if first != "[":
            found = "an empty file" if first is None else repr(first)
            raise UnsupportedFormat(f"a .json dataset must be a top-level JSON array, found {found}")
        self._pos += 1

    def records(self) -> Iterator[tuple[int, object]]:
        """Yield ``(index, value)`` per element, ending with a RowIssue where the document breaks."""
        if self._next_char() == "]":
            self._pos += 1
            yield from self._trailing(1)
            return
        index = 0
        while True:
            index += 1
            value, resumable = self._element(index)
            yield index, value if resumable else replace(value, fatal=True)
            if not resumable:
                return
            separator = self._next_char()
            if separator == ",":
                self._pos += 1
            elif separator == "]":
                self._pos += 1
                yield from self._trailing(index + 1)
                return
            else:
                found = "end of file" if separator is None else repr(separator)
                message = f"invalid JSON: expected ',' or ']' after element {index}, found {found}"
                yield index + 1, RowIssue(index + 1, None, message, fatal=True)
                return

    def _element(self, index: int) -> tuple[object, bool]:
        """Decode the element at the cursor; also say whether reading can go on after it."""
        self._next_char()  # raw_decode does not skip leading whitespace
        start = self._pos
        while True:
            try:
                value, end = self._json.raw_decode(self._buf, start)
                # A number at the end of the buffer may continue in the next chunk.
                if end < len(self._buf) or self._eof:
                    self._pos = end
                    return self._checked(index, value, start, end), True
            except json.JSONDecodeError as err:
                if self._eof:
                    where = f"character {self._consumed + err.pos + 1} of the file"
                    return RowIssue(index, None, f"invalid JSON: {err.msg} at {where}"), False
            except RecursionError:
                return RowIssue(index, None, "invalid JSON: nested too deeply"), False
            if len(self._buf) - start > self._max_element_chars:
                return self._too_long(index), False
            # Grow reads with the pending element so re-decoding a large element stays linear.
            self._fill(max(self._chunk_size, len(self._buf) - start))
            start = self._pos

    def _checked(self, index: int, value: object, start: int, end: int) -> object:
        """Turn a decoded element that is too long or held invalid UTF-8 into a RowIssue."""
        if end - start > self._max_element_chars:
            return self._too_long(index)
        if _INVALID_UTF8.search(self._buf, start, end):
            return RowIssue(index, None, "invalid UTF-8 in this element")
        return value

    def _too_long(self, index: int) -> RowIssue:
        """The RowIssue for an element over the size limit."""
        return RowIssue(index, None, f"array element is longer than {self._max_element_chars} characters")

    def _next_char(self) -> str | None:
        """Skip whitespace and return the next character without consuming it (None at the end)."""
        while True:
            self._pos = _WHITESPACE.match(self._buf, self._pos).end()
            if self._pos < len(self._buf):
                return self._buf[self._pos]
            if self._eof:
                return None
            self._fill(self._chunk_size)

    def _trailing(self, line: int) -> Iterator[tuple[int, object]]:
        """Report anything but whitespace after the closing bracket."""
        if self._next_char() is not None:
            yield line, RowIssue(line, None, "invalid JSON: unexpected data after the closing ']'", fatal=True)

    def _fill(self, size: int) -> None:
        """Drop consumed text and append up to ``size`` more bytes of decoded input."""
        chunk = self._file.read(size)
        self._eof = not chunk
        self._consumed += self._pos
        self._buf = self._buf[self._pos :] + self._decoder.decode(chunk, final=self._eof)
        self._pos = 0


def _csv_records(
    file: BinaryIO, kind: DatasetKind | None, column_map: Mapping[str, str]
) -> Iterator[tuple[int, object]]:
    """Check the header of a CSV file, then return an iterator of its decoded records."""
    records = _csv_stream(file, kind, column_map)
    # Run the generator up to its header check now, so a bad header raises from iter_rows and the
    # generator's cleanup (which detaches the text wrapper) is armed before anything else happens.
    next(records)
    return records


def _csv_stream(
    file: BinaryIO, kind: DatasetKind | None, column_map: Mapping[str, str]
) -> Iterator[tuple[int, object]]:
    """Yield a placeholder once the header is accepted, then each CSV record as a dict."""
    # surrogateescape: an invalid byte spoils its own record (found by _INVALID_UTF8), not the file.
    text = io.TextIOWrapper(file, encoding="utf-8-sig", errors="surrogateescape", newline="")
    try:
        # csv.reader rather than DictReader: DictReader skips blank rows internally, which would
        # hide the line a record starts on.
        reader = csv.reader(text)
        try:
            header = next(reader)
        except StopIteration:
            raise UnsupportedFormat("empty CSV file: expected a header row") from None
        except csv.Error as err:
            raise UnsupportedFormat(f"unreadable CSV header: {err}") from err
        if any(_INVALID_UTF8.search(name) for name in header):
            raise UnsupportedFormat("the CSV header is not valid UTF-8")
        columns = [name.strip() for name in header]
        named = [name for name in columns if name]  # trailing empty columns are ignored
        duplicates = sorted({name for name in named if named.count(name) > 1})
        if duplicates:
            raise UnsupportedFormat(f"duplicate CSV column {duplicates[0]!r}")
        _check_columns(named, kind, column_map, "CSV header")
        yield 0, None
        while True:
            start = reader.line_num + 1
            try:
                cells = next(reader)
            except StopIteration:
                return
            except csv.Error as err:
                yield start, RowIssue(start, None, f"unreadable CSV: {err}", fatal=True)
                return
            if not cells:
                continue
            if any(_INVALID_UTF8.search(cell) for cell in cells):
                yield start, RowIssue(start, None, "invalid UTF-8 in this record")
                continue
            if any(cell.strip() for cell in cells[len(columns) :]):
                message = f"record has {len(cells)} values but the header has {len(columns)} columns"
                yield start, RowIssue(start, None, message)
                continue
            # Missing trailing cells leave their keys absent, so normalisation names the field.
            yield start, {name: _decode_cell(cell) for name, cell in zip(columns, cells, strict=False) if name}
    finally:
        # Detach so the wrapper does not close the caller's file when it is garbage-collected.
        text.detach()


def _decode_cell(cell: str) -> object:
    """Decode a JSON-encoded list or object cell (conversational rows); leave other text alone."""
    if cell.lstrip()[:1] not in ("[", "{"):
        return cell
    try:
        return loads(cell)
    except (json.JSONDecodeError, RecursionError):
        # Text such as "[INST] ..." is a legitimate plain prompt.
        return cell


def _parquet_records(
    file: BinaryIO, kind: DatasetKind | None, column_map: Mapping[str, str]
) -> Iterator[tuple[int, object]]:
    """Open a Parquet file and check its columns, then return a generator of its rows."""
    try:
        parquet = pq.ParquetFile(file)
    except (pa.ArrowException, OSError) as err:
        raise UnsupportedFormat(f"unreadable Parquet file: {err}") from err
    _check_columns(parquet.schema_arrow.names, kind, column_map, "Parquet file")
    return _parquet_rows(parquet)


def _parquet_rows(parquet: pq.ParquetFile) -> Iterator[tuple[int, object]]:
    """Yield each Parquet row as a dict, one record batch in memory at a time."""
    index = 0
    try:
        for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS):
            for row in batch.to_pylist():
                index += 1
                yield index, row
    except (pa.ArrowException, OSError) as err:
        yield index + 1, RowIssue(index + 1, None, f"unreadable Parquet data: {err}", fatal=True)


def _check_columns(names: list[str], kind: DatasetKind | None, column_map: Mapping[str, str], where: str) -> None:
    """Require one of the kind's column sets (after the column map), naming what is missing from the closest one.

    No kind (records read before the kind is known) requires nothing."""
    if kind is None:
        return
    if column_map:
        try:
            names = list(_mapped(dict.fromkeys(names), column_map))
        except RowError as err:
            raise UnsupportedFormat(f"{where}: {err.message}") from None
    present = set(names)
    options = _REQUIRED_COLUMNS[kind]
    if any(present.issuperset(option) for option in options):
        return
    closest = max(options, key=lambda option: len(present.intersection(option)))
    missing = [name for name in closest if name not in present]
    needs = ", ".join(closest)
    raise UnsupportedFormat(f"{where} is missing required column {missing[0]!r} (needs {needs})")


def _mapped(record: object, column_map: Mapping[str, str]) -> object:
    """The record with its mapped columns renamed (in file order); RowError if one is missing or would clash."""
    if not isinstance(record, dict):
        return record  # normalisation names the problem
    for key, column in column_map.items():
        if column not in record:
            raise RowError(f"missing column {column!r}, which column_map maps to {key!r}", field=column)
    canonical = {column: key for key, column in column_map.items()}
    for key, column in column_map.items():
        # Renaming onto a column that stays would silently drop one of the two values.
        if key in record and key not in canonical:
            raise RowError(f"has both {key!r} and {column!r}, which column_map maps to {key!r}; drop one", field=key)
    return {canonical.get(name, name): value for name, value in record.items()}
