"""Streaming readers of uploaded dataset files."""

from __future__ import annotations

import csv
import io
import json
import tracemalloc
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from api.ingest import RowIssue, UnsupportedFormat, iter_rows

PLAIN = {"prompt": "2+2?", "chosen": "4", "rejected": "5"}
CONVERSATIONAL = {
    "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
    "chosen": [{"role": "assistant", "content": "Hello."}],
    "rejected": [{"role": "assistant", "content": "Go away, \"friend\",\nnow."}],
}
UNICODE = {"prompt": "Café, naïve — 東京?", "chosen": "Oui, 好", "rejected": "Non"}
GOOD_ROWS = [PLAIN, CONVERSATIONAL, UNICODE]


def rows(data: bytes, filename: str, kind: str = "preference", **options: int) -> list[tuple[int, object]]:
    """Read a whole in-memory file."""
    return list(iter_rows(io.BytesIO(data), filename, kind, **options))


def jsonl(*lines: object) -> bytes:
    """A .jsonl file: dicts are encoded, strings are written verbatim."""
    return "".join((ln if isinstance(ln, str) else json.dumps(ln)) + "\n" for ln in lines).encode()


def csv_bytes(header: list[str], records: list[list[object]]) -> bytes:
    """A .csv file; list and dict cells are JSON-encoded."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    for record in records:
        writer.writerow([c if isinstance(c, str) else json.dumps(c) for c in record])
    return out.getvalue().encode()


def parquet_bytes(records: list[dict]) -> bytes:
    """A .parquet file written with pyarrow."""
    out = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(records), out)
    return out.getvalue()


# --- every format yields the same canonical rows ------------------------------------------------


def test_all_formats_yield_identical_rows() -> None:
    header = ["prompt", "chosen", "rejected"]
    files = {
        "data.jsonl": jsonl(*GOOD_ROWS),
        "data.JSON": json.dumps(GOOD_ROWS, indent=2).encode(),
        "data.csv": csv_bytes(header, [[r[k] for k in header] for r in GOOD_ROWS]),
    }
    # Parquet columns have one type each, so the conversational row gets a file of its own.
    plain_parquet = rows(parquet_bytes([PLAIN, UNICODE]), "a.parquet")
    chat_parquet = rows(parquet_bytes([CONVERSATIONAL]), "b.parquet")
    results = {name: [row for _, row in rows(data, name)] for name, data in files.items()}
    results["parquet"] = [plain_parquet[0][1], chat_parquet[0][1], plain_parquet[1][1]]
    for name, got in results.items():
        assert got == GOOD_ROWS, name


def test_line_numbers_per_format() -> None:
    assert [line for line, _ in rows(jsonl(PLAIN, "", "  ", PLAIN), "d.jsonl")] == [1, 4]
    assert [line for line, _ in rows(json.dumps([PLAIN, PLAIN]).encode(), "d.json")] == [1, 2]
    # The first record spans two physical lines (its quoted cell holds a newline); blank lines count.
    records = [["p", "line one\nline two", "r"], [], list(PLAIN.values())]
    data = csv_bytes(["prompt", "chosen", "rejected"], records)
    assert [line for line, _ in rows(data, "d.csv")] == [2, 5]
    assert [line for line, _ in rows(parquet_bytes([PLAIN, PLAIN]), "d.parquet")] == [1, 2]


def test_prompt_kind_keeps_extra_columns() -> None:
    assert rows(jsonl({"prompt": "2+2?", "answer": "4"}), "p.jsonl", "prompt") == [
        (1, {"prompt": "2+2?", "answer": "4"})
    ]
    data = csv_bytes(["prompt", "answer", ""], [["2+2?", "4", ""]])  # empty trailing column ignored
    assert rows(data, "p.csv", "prompt") == [(2, {"prompt": "2+2?", "answer": "4"})]


# --- .jsonl -------------------------------------------------------------------------------------


def test_jsonl_malformed_line_is_an_issue() -> None:
    got = rows(jsonl(PLAIN, PLAIN, '{"prompt": "p", "chosen": ', PLAIN), "d.jsonl")
    assert [line for line, _ in got] == [1, 2, 3, 4]
    bad = got[2][1]
    assert isinstance(bad, RowIssue) and bad.line == 3 and bad.field is None
    assert "JSON" in bad.message
    assert got[3] == (4, PLAIN)


def test_jsonl_blank_lines_keep_numbering() -> None:
    got = rows(jsonl("", PLAIN, "", "{bad"), "d.jsonl")
    assert got[0] == (2, PLAIN)
    assert got[1][0] == 4 and isinstance(got[1][1], RowIssue) and got[1][1].line == 4


def test_jsonl_missing_field_names_it() -> None:
    got = rows(jsonl(PLAIN, {"prompt": "p", "rejected": "r"}), "d.jsonl")
    assert got[1] == (2, RowIssue(2, "chosen", got[1][1].message))


def test_jsonl_invalid_utf8_and_bom() -> None:
    data = b"\xef\xbb\xbf" + jsonl(PLAIN) + b'{"prompt": "\xff"}\n'
    got = rows(data, "d.jsonl")
    assert got[0] == (1, PLAIN)
    assert isinstance(got[1][1], RowIssue) and "UTF-8" in got[1][1].message


def test_jsonl_oversized_line_is_skipped() -> None:
    big = {"prompt": "p", "chosen": "x" * 500, "rejected": "r"}
    got = rows(jsonl(PLAIN, big, PLAIN), "d.jsonl", max_line_bytes=100)
    assert got[0] == (1, PLAIN)
    assert isinstance(got[1][1], RowIssue) and got[1][1].line == 2 and "longer than 100" in got[1][1].message
    assert got[2] == (3, PLAIN)


def test_jsonl_line_exactly_at_the_limit_is_read() -> None:
    line = json.dumps(PLAIN).encode()
    assert rows(line + b"\n" + line, "d.jsonl", max_line_bytes=len(line)) == [(1, PLAIN), (2, PLAIN)]


# --- .json --------------------------------------------------------------------------------------


def test_json_array_parses_across_tiny_chunks() -> None:
    rows_in = [PLAIN, CONVERSATIONAL, UNICODE, {"prompt": "n", "chosen": "a", "rejected": "b", "n": 12345}]
    data = json.dumps(rows_in, ensure_ascii=False).encode()
    assert [row for _, row in rows(data, "d.json", chunk_size=3)] == rows_in


def test_json_truncated_document_is_an_issue() -> None:
    data = json.dumps([PLAIN, PLAIN, PLAIN]).encode()[:-30]
    got = rows(data, "d.json", chunk_size=16)
    assert got[:2] == [(1, PLAIN), (2, PLAIN)]
    assert len(got) == 3 and isinstance(got[2][1], RowIssue) and got[2][0] == 3
    assert "JSON" in got[2][1].message


def test_json_missing_bracket_and_trailing_data() -> None:
    unclosed = rows(json.dumps([PLAIN]).encode()[:-1], "d.json")
    assert unclosed[0] == (1, PLAIN) and isinstance(unclosed[1][1], RowIssue)
    trailing = rows(json.dumps([PLAIN]).encode() + b" x", "d.json")
    assert trailing[0] == (1, PLAIN) and isinstance(trailing[1][1], RowIssue)
    assert rows(b" [ ] ", "d.json") == []


def test_json_bad_bytes_or_oversized_element_spoil_only_that_element() -> None:
    data = json.dumps([PLAIN, {**PLAIN, "chosen": "ok"}, PLAIN]).encode().replace(b'"ok"', b'"\xff"')
    got = rows(data, "d.json", chunk_size=5)
    assert got[0] == (1, PLAIN) and got[2] == (3, PLAIN)
    assert isinstance(got[1][1], RowIssue) and "UTF-8" in got[1][1].message
    big = json.dumps([PLAIN, {**PLAIN, "chosen": "x" * 500}, PLAIN]).encode()
    got = rows(big, "d.json", max_line_bytes=200)
    assert got[0] == (1, PLAIN) and got[2] == (3, PLAIN)
    assert isinstance(got[1][1], RowIssue) and "longer than 200" in got[1][1].message


def test_json_bad_element_is_named_by_index() -> None:
    got = rows(json.dumps([PLAIN, {"prompt": "p", "chosen": "c"}]).encode(), "d.json")
    assert got[1] == (2, RowIssue(2, "rejected", got[1][1].message))


@pytest.mark.parametrize("data", [b"", b'{"prompt": "p"}', b"  nope"])
def test_json_top_level_must_be_an_array(data: bytes) -> None:
    with pytest.raises(UnsupportedFormat, match="array"):
        rows(data, "d.json")


# --- .csv ---------------------------------------------------------------------------------------


def test_csv_missing_column_is_unsupported() -> None:
    with pytest.raises(UnsupportedFormat, match="'rejected'"):
        rows(csv_bytes(["prompt", "chosen"], [["p", "c"]]), "d.csv")
    with pytest.raises(UnsupportedFormat, match="header"):
        rows(b"", "d.csv")


def test_csv_decodes_json_cells_only_when_valid() -> None:
    header = ["prompt", "chosen", "rejected"]
    assert rows(csv_bytes(header, [list(CONVERSATIONAL.values())]), "d.csv") == [(2, CONVERSATIONAL)]
    # A plain prompt that merely starts with a bracket stays text.
    plain = {"prompt": "[INST] add 2+2 [/INST]", "chosen": "4", "rejected": "5"}
    assert rows(csv_bytes(header, [list(plain.values())]), "d.csv") == [(2, plain)]


def test_csv_openai_columns_and_record_issues() -> None:
    header = ["input", "preferred_output", "non_preferred_output"]
    record = [{"messages": [{"role": "user", "content": "q"}]}, [{"role": "assistant", "content": "a"}], []]
    got = rows(csv_bytes(header, [record, ["x", "y", "z", "surplus"]]), "d.csv")
    assert got[0] == (2, RowIssue(2, "non_preferred_output", got[0][1].message))
    assert got[1][0] == 3 and got[1][1].field is None and "values" in got[1][1].message


def test_csv_bom_crlf_and_invalid_utf8() -> None:
    data = b"\xef\xbb\xbfprompt,chosen,rejected\r\n2+2?,4,5\r\nx,\xff,y\r\n2+2?,4,5\r\n"
    got = rows(data, "d.csv")
    assert got[0] == (2, PLAIN) and got[2] == (4, PLAIN)
    assert got[1][0] == 3 and isinstance(got[1][1], RowIssue) and "UTF-8" in got[1][1].message


def test_csv_leaves_the_callers_file_open() -> None:
    file = io.BytesIO(csv_bytes(["prompt", "chosen", "rejected"], [list(PLAIN.values())]))
    assert list(iter_rows(file, "d.csv", "preference")) == [(2, PLAIN)]
    file.seek(0)
    iter_rows(file, "d.csv", "preference")  # header read, never iterated, then dropped
    assert not file.closed


# --- .parquet and dispatch ----------------------------------------------------------------------


def test_parquet_missing_column_and_garbage() -> None:
    with pytest.raises(UnsupportedFormat, match="'chosen'"):
        rows(parquet_bytes([{"prompt": "p", "rejected": "r"}]), "d.parquet")
    with pytest.raises(UnsupportedFormat, match="Parquet"):
        rows(b"not a parquet file", "d.parquet")


def test_parquet_null_cell_names_the_field() -> None:
    got = rows(parquet_bytes([PLAIN, {"prompt": "p", "chosen": None, "rejected": "r"}]), "d.parquet")
    assert got[0] == (1, PLAIN)
    assert got[1] == (2, RowIssue(2, "chosen", got[1][1].message))


@pytest.mark.parametrize("name", ["data.txt", "data", "data.jsonl.gz"])
def test_unknown_suffix_is_unsupported(name: str) -> None:
    with pytest.raises(UnsupportedFormat, match="unsupported file type"):
        iter_rows(io.BytesIO(b""), name, "preference")


# --- constant memory ----------------------------------------------------------------------------


def _big_file(path: Path, size: int) -> int:
    """Write a .jsonl or .json file of about ``size`` bytes and return its row count."""
    row = json.dumps({"prompt": "p" * 200, "chosen": "c" * 2000, "rejected": "r" * 2000})
    count = size // (len(row) + 1)
    if path.suffix == ".jsonl":
        path.write_text((row + "\n") * count)
    else:
        path.write_text("[" + ",\n".join([row] * count) + "]")
    return count


@pytest.mark.parametrize(("name", "size"), [("big.jsonl", 50_000_000), ("big.json", 20_000_000)])
def test_streaming_memory_stays_far_below_the_file_size(tmp_path: Path, name: str, size: int) -> None:
    path = tmp_path / name
    count = _big_file(path, size)
    seen = 0
    with path.open("rb") as file:
        tracemalloc.start()
        try:
            for _, row in iter_rows(file, name, "preference"):
                assert not isinstance(row, RowIssue)
                seen += 1
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert seen == count
    assert peak < 5_000_000, f"peak {peak} bytes for a {size}-byte file"
