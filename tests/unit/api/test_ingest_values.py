"""Values no backend stores as they are become row issues naming the field, in every file format."""

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq

from api.ingest import RowIssue, iter_rows
from api.ingest_values import unstorable

PLAIN = {"prompt": "p", "chosen": "c", "rejected": "r"}


def issues(data: bytes, filename: str, kind: str = "preference", **kwargs) -> list[tuple[int, str | None, str]]:
    return [(line, row.field, row.message) for line, row in iter_rows(io.BytesIO(data), filename, kind, **kwargs)
            if isinstance(row, RowIssue)]


def test_huge_integer_split_across_tiny_json_chunks_is_one_issue():
    data = ("[" + json.dumps(PLAIN) + ', {"prompt": "p", "n": ' + "7" * 6000 + "}]").encode()
    assert issues(data, "d.json", "prompt", chunk_size=7) == [
        (2, "n", "integer of 6000 digits does not fit in a signed 64-bit integer")]


def test_nan_and_infinity_literals_are_named():
    data = b'{"prompt": "p", "score": NaN}\n{"prompt": "p", "s": [1, -Infinity]}\n'
    got = issues(data, "d.jsonl", "prompt")
    assert [(line, field) for line, field, _ in got] == [(1, "score"), (2, "s[1]")]
    assert all("not finite" in message for _, _, message in got)


def test_parquet_unsigned_integer_past_64_bits_and_nul_are_named():
    table = pa.table({"prompt": ["ok", "a\x00b", "ok"], "n": pa.array([1, 2, 2**64 - 1], pa.uint64())})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    got = issues(buf.getvalue(), "d.parquet", "prompt")
    assert [(line, field) for line, field, _ in got] == [(2, "prompt"), (3, "n")]


def test_paths_name_nested_values_and_keys_without_their_bad_characters():
    assert unstorable({"a": [{"b": "x\ud800"}]})[0] == "a[0].b"
    assert unstorable({"ok": 1, "k\x00": 1}) == (
        "k\\u0000", "key contains a NUL character (\\u0000), which cannot be stored")
    assert unstorable({"t": b"bytes"}) == ("t", "value of type bytes cannot be stored as JSON")
    assert unstorable({"n": [2**63 - 1, -(2**63), 1.5, True, None, "text"]}) is None
