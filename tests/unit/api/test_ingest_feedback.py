"""Feedback files (KTO) in every upload format: labels as booleans, columns checked, a column_map applied."""

from __future__ import annotations

import csv
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from api.ingest import CANONICAL_KEYS, RowIssue, UnsupportedFormat, iter_rows

ROWS = [
    {"prompt": "2+2=", "completion": "4", "label": True},
    {"prompt": "2+2=", "completion": "5", "label": False},
]


def read(data: bytes, filename: str, **options) -> list[tuple[int, object]]:
    return list(iter_rows(io.BytesIO(data), filename, "feedback", **options))


def csv_bytes(header: list[str], records: list[list[object]]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    writer.writerows(records)
    return out.getvalue().encode()


def test_jsonl_csv_and_parquet_give_the_same_rows() -> None:
    jsonl = "".join(json.dumps(r) + "\n" for r in ROWS).encode()
    text = csv_bytes(["prompt", "completion", "label"], [["2+2=", "4", "true"], ["2+2=", "5", "false"]])
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist([{**r, "label": int(r["label"])} for r in ROWS]), sink)  # 0/1 integers
    for data, name in ((jsonl, "a.jsonl"), (text, "a.csv"), (sink.getvalue(), "a.parquet")):
        assert [row for _, row in read(data, name)] == ROWS


def test_bad_label_is_a_row_issue_naming_its_line_and_field() -> None:
    text = csv_bytes(["prompt", "completion", "label"], [["q", "a", "true"], ["q", "b", "maybe"]])
    (_, good), (_, bad) = read(text, "a.csv")
    assert good["label"] is True
    assert isinstance(bad, RowIssue) and (bad.line, bad.field) == (3, "label") and "'maybe'" in bad.message


def test_a_csv_without_a_label_column_is_refused() -> None:
    with pytest.raises(UnsupportedFormat, match="label"):
        read(csv_bytes(["prompt", "completion"], [["q", "a"]]), "a.csv")


def test_column_map_fills_the_feedback_keys() -> None:
    assert CANONICAL_KEYS["feedback"] == ("prompt", "completion", "label")
    text = csv_bytes(["question", "answer", "thumbs_up"], [["q", "a", "1"]])
    [(_, row)] = read(text, "a.csv", column_map={"prompt": "question", "completion": "answer", "label": "thumbs_up"})
    assert row == {"prompt": "q", "completion": "a", "label": True}
