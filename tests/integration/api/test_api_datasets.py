"""Dataset endpoints on both backends: upload in every format, validation, listing, deletion."""

import json

from sqlalchemy import func, select

from core.db import session_scope
from core.models import DatasetRow, Job
from tests.support import jsonl, parquet_file, preference_rows, project_of, upload

ROWS = preference_rows(3)



def _csv(rows) -> bytes:
    lines = ["prompt,chosen,rejected"] + [f'"{r["prompt"]}","{r["chosen"]}","{r["rejected"]}"' for r in rows]
    return ("\n".join(lines) + "\n").encode()


def _stored_rows(settings) -> int:
    with session_scope(settings.database_url) as session:
        return session.scalar(select(func.count()).select_from(DatasetRow))


def test_upload_each_format_stores_the_same_rows(client):
    files = {"d.jsonl": jsonl(ROWS), "d.json": json.dumps(ROWS).encode(), "d.csv": _csv(ROWS),
             "d.parquet": parquet_file(ROWS)}
    for filename, content in files.items():
        r = upload(client, content, filename=filename, name=f"set {filename}")
        assert r.status_code == 201, r.text
        body = r.json()
        assert body["row_count"] == 3 and body["format"] == filename.rsplit(".", 1)[1]
        assert body["name"] == f"set {filename}" and body["kind"] == "preference"
        assert body["size_bytes"] == len(content) and len(body["sha256"]) == 64
        rows = client.get(f"/v1/datasets/{body['id']}/rows").json()
        assert [row["data"] for row in rows["data"]] == ROWS
        assert [row["idx"] for row in rows["data"]] == [0, 1, 2]


def test_conversational_and_openai_rows_are_normalised(client):
    conv = {"prompt": [{"role": "user", "content": "hi"}],
            "chosen": [{"role": "assistant", "content": "hello!"}],
            "rejected": [{"role": "assistant", "content": "go away"}]}
    openai = {"input": {"messages": [{"role": "user", "content": "hi"}]},
              "preferred_output": [{"role": "assistant", "content": "hello!"}],
              "non_preferred_output": [{"role": "assistant", "content": "go away"}]}
    r = upload(client, jsonl([conv, openai]))
    assert r.status_code == 201, r.text
    rows = client.get(f"/v1/datasets/{r.json()['id']}/rows").json()["data"]
    assert rows[0]["data"] == conv and rows[1]["data"] == conv


def test_malformed_line_is_named_and_nothing_is_stored(client, settings):
    content = jsonl(ROWS[:2]) + b'{"prompt": "x", "chosen": \n' + jsonl(ROWS[2:])
    r = upload(client, content)
    assert r.status_code == 422
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == "file"
    assert err["details"][0]["line"] == 3 and "line 3" in err["message"]
    assert client.get("/v1/datasets").json()["data"] == []
    assert _stored_rows(settings) == 0


def test_missing_field_is_named(client):
    bad = [ROWS[0], {"prompt": "p", "rejected": "r"}]
    r = upload(client, jsonl(bad))
    assert r.status_code == 422
    detail = r.json()["error"]["details"][0]
    assert detail == {"line": 2, "field": "chosen", "message": detail["message"]}
    assert "chosen" in detail["message"]


def test_error_report_is_capped_at_fifty_rows(client):
    r = upload(client, b"not json\n" * 80)
    assert r.status_code == 422
    assert len(r.json()["error"]["details"]) == 50


def test_unsupported_suffix_empty_file_and_bad_kind(client):
    assert upload(client, jsonl(ROWS), filename="d.txt").json()["error"]["param"] == "file"
    r = upload(client, b"\n\n")
    assert r.status_code == 422 and "no rows" in r.json()["error"]["message"]
    r = upload(client, jsonl(ROWS), kind="images")
    assert r.status_code == 422 and r.json()["error"]["param"] == "kind"


def test_prompt_dataset_keeps_extra_fields(client):
    r = upload(client, jsonl([{"prompt": "2+2?", "answer": "4"}]), kind="prompt")
    assert r.status_code == 201
    rows = client.get(f"/v1/datasets/{r.json()['id']}/rows").json()["data"]
    assert rows[0]["data"] == {"prompt": "2+2?", "answer": "4"}


def test_list_is_cursor_paginated_newest_first(client):
    ids = [upload(client, jsonl(ROWS), name=f"d{i}").json()["id"] for i in range(3)]
    page1 = client.get("/v1/datasets", params={"limit": 2}).json()
    assert [d["id"] for d in page1["data"]] == ids[::-1][:2] and page1["has_more"] is True
    page2 = client.get("/v1/datasets", params={"limit": 2, "after": page1["data"][-1]["id"]}).json()
    assert [d["id"] for d in page2["data"]] == ids[:1] and page2["has_more"] is False
    r = client.get("/v1/datasets", params={"after": "ds_missing"})
    assert r.status_code == 422 and r.json()["error"]["param"] == "after"
    assert client.get("/v1/datasets", params={"limit": 0}).json()["error"]["param"] == "limit"


def test_rows_pagination(client):
    ds = upload(client, jsonl(preference_rows(5))).json()["id"]
    page = client.get(f"/v1/datasets/{ds}/rows", params={"limit": 2, "after": 1}).json()
    assert [row["idx"] for row in page["data"]] == [2, 3] and page["has_more"] is True
    assert client.get(f"/v1/datasets/{ds}/rows", params={"after": "x"}).status_code == 422


def test_get_and_delete(client, settings):
    ds = upload(client, jsonl(ROWS)).json()["id"]
    assert client.get(f"/v1/datasets/{ds}").json()["id"] == ds
    assert client.delete(f"/v1/datasets/{ds}").status_code == 204
    r = client.get(f"/v1/datasets/{ds}")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
    assert client.delete(f"/v1/datasets/{ds}").status_code == 404
    assert _stored_rows(settings) == 0


def test_delete_refused_while_an_active_job_uses_it(client, settings, project_key):
    ds = upload(client, jsonl(ROWS)).json()["id"]
    with session_scope(settings.database_url) as session:
        session.add(Job(type="dpo", base_model="builtin:tiny-llama", dataset_id=ds, hyperparameters={},
                        project_id=project_of(settings, project_key)))
    r = client.delete(f"/v1/datasets/{ds}")
    assert r.status_code == 409 and r.json()["error"]["type"] == "conflict_error"
    assert client.get(f"/v1/datasets/{ds}").status_code == 200


def test_values_json_cannot_hold_are_row_errors(client, settings):
    import datetime
    rows = [dict(ROWS[0], when=None, score=1.0),
            dict(ROWS[1], when=datetime.datetime(2024, 1, 1), score=1.0),
            dict(ROWS[2], when=None, score=float("nan"))]
    r = upload(client, parquet_file(rows), filename="d.parquet")
    assert r.status_code == 422
    assert [d["line"] for d in r.json()["error"]["details"]] == [2, 3]
    assert _stored_rows(settings) == 0
