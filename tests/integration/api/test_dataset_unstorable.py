"""Values and names no backend can store consistently are a 422 naming line, field and problem; nothing is stored."""

import json

import pytest
from sqlalchemy import func, select

from core.db import session_scope
from core.models import Dataset, DatasetRow
from tests.support import jsonl, preference_rows, upload

GOOD = preference_rows(2)
HUGE = "9" * 5000  # beyond Python's default int-digit limit for int("...")


def _nothing_stored(settings) -> bool:
    with session_scope(settings.database_url) as session:
        return (session.scalar(select(func.count()).select_from(DatasetRow)) == 0
                and session.scalar(select(func.count()).select_from(Dataset)) == 0)


def _first_detail(response) -> dict:
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["param"] == "file"
    return error["details"][0]


def _bad_row_file(fmt: str, raw_value: str) -> bytes:
    """A file whose second row has `raw_value` (JSON text) as its `chosen`."""
    bad = '{"prompt": "p", "chosen": ' + raw_value + ', "rejected": "r"}'
    if fmt == "jsonl":
        return jsonl(GOOD[:1]) + bad.encode() + b"\n" + jsonl(GOOD[1:])
    if fmt == "json":
        return ("[" + json.dumps(GOOD[0]) + ",\n" + bad + "," + json.dumps(GOOD[1]) + "]").encode()
    # CSV: conversational cells are JSON-encoded, so the value sits inside a message.
    message = '[{""role"": ""assistant"", ""content"": ' + raw_value.replace('"', '""') + "}]"
    return ("prompt,chosen,rejected\nhi,yes,no\n" + f'hi,"{message}",no\n').encode()


@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv"])
@pytest.mark.parametrize(("raw", "problem"), [
    (HUGE, "64-bit"),
    ("9223372036854775808", "64-bit"),
    ("-9223372036854775809", "64-bit"),
    ("1e999", "finite"),
    ('"a\\u0000b"', "NUL"),
    ('"a\\ud800b"', "surrogate"),
])
def test_unstorable_value_is_named(client, settings, fmt, raw, problem):
    detail = _first_detail(upload(client, _bad_row_file(fmt, raw), filename=f"d.{fmt}"))
    # Lines: the second row (CSV counts its header as line 1).
    assert detail["line"] == (3 if fmt == "csv" else 2)
    assert detail["field"] == ("chosen[0].content" if fmt == "csv" else "chosen")
    assert problem in detail["message"]
    assert _nothing_stored(settings)


def test_largest_64_bit_integers_are_stored(client):
    row = dict(GOOD[0], big=9223372036854775807, small=-9223372036854775808)
    r = upload(client, jsonl([row]), kind="prompt")
    assert r.status_code == 201, r.text
    stored = client.get(f"/v1/datasets/{r.json()['id']}/rows").json()["data"][0]["data"]
    assert stored["big"] == 9223372036854775807 and stored["small"] == -9223372036854775808


def test_nul_in_a_key_and_nested_extra_field_are_named(client, settings):
    rows = [{"prompt": "p", "meta": {"tags": ["ok", "x\u0000y"]}}, {"prompt": "p", "k\u0000": 1}]
    r = upload(client, jsonl(rows), kind="prompt")
    assert r.status_code == 422
    details = r.json()["error"]["details"]
    assert [(d["line"], d["field"]) for d in details] == [(1, "meta.tags[1]"), (2, "k\\u0000")]
    assert _nothing_stored(settings)


def test_long_file_name_is_a_422_naming_file(client, settings):
    r = upload(client, jsonl(GOOD), filename="a" * 600 + ".jsonl")
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["param"] == "file" and "512" in error["message"]
    assert _nothing_stored(settings)


def test_file_name_past_the_multipart_header_limit_is_named(client):
    r = upload(client, jsonl(GOOD), filename="a" * 5000 + ".jsonl")
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["param"] == "file" and "file name" in error["message"]


def test_file_name_of_300_characters_names_the_dataset_by_its_start(client):
    filename = "b" * 300 + ".jsonl"
    r = upload(client, jsonl(GOOD), filename=filename)
    assert r.status_code == 201, r.text
    assert r.json()["name"] == filename[:256] and r.json()["filename"] == filename


def test_long_name_is_a_422_naming_name(client, settings):
    r = upload(client, jsonl(GOOD), name="n" * 257)
    assert r.status_code == 422 and r.json()["error"]["param"] == "name"
    assert _nothing_stored(settings)


def test_nul_in_name_is_a_422(client, settings):
    r = upload(client, jsonl(GOOD), name="bad\u0000name")
    assert r.status_code == 422, r.text
    assert r.json()["error"]["param"] == "name" and "NUL" in r.json()["error"]["message"]
    assert _nothing_stored(settings)


def test_nul_in_file_name_is_a_422(client, settings):
    # Written by hand: HTTP clients percent-encode a NUL in a file name, but the wire can carry one.
    body = (b'--b\r\nContent-Disposition: form-data; name="kind"\r\n\r\npreference\r\n'
            b'--b\r\nContent-Disposition: form-data; name="file"; filename="d\x00.jsonl"\r\n\r\n'
            + jsonl(GOOD) + b"\r\n--b--\r\n")
    r = client.post("/v1/datasets", content=body, headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["param"] == "file" and "NUL" in r.json()["error"]["message"]
    assert _nothing_stored(settings)
