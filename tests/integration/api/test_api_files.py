"""/v1/files: OpenAI's file objects over datasets, kinds told from the rows, bytes kept as uploaded."""

import json
import time

import pytest

from api.services.files import original_key
from core.artifacts import open_store
from tests.support import csv_file, jsonl, new_project_key, preference_rows, upload

CHAT = [{"messages": [{"role": "system", "content": "Shout."}, {"role": "user", "content": f"word {i}"},
                      {"role": "assistant", "content": f"WORD {i}", "weight": 1}]} for i in range(3)]
OPENAI_PREFERENCE = [{"input": {"messages": [{"role": "user", "content": f"q{i}"}], "tools": []},
                      "preferred_output": [{"role": "assistant", "content": "yes!"}],
                      "non_preferred_output": [{"role": "assistant", "content": "no."}]} for i in range(3)]
REINFORCEMENT = [{"messages": [{"role": "developer", "content": "Answer with a number."},
                               {"role": "user", "content": f"{i} + {i}?"}], "answer": str(2 * i)} for i in range(3)]


def send(client, content: bytes, *, filename: str = "train.jsonl", purpose: str | None = "fine-tune", **kwargs):
    data = {"purpose": purpose} if purpose is not None else {}
    return client.post("/v1/files", files={"file": (filename, content)}, data=data, **kwargs)


def created(client, rows: list, **kwargs) -> dict:
    r = send(client, jsonl(rows), **kwargs)
    assert r.status_code == 200, r.text
    return r.json()


def openai_error(r, status: int) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def test_upload_answers_a_file_object_and_the_file_is_a_dataset(client):
    content = jsonl(CHAT)
    before = int(time.time())
    r = send(client, content)
    assert r.status_code == 200
    file = r.json()
    assert file["id"].startswith("file-") and len(file["id"]) == len("file-") + 24
    assert file == {"id": file["id"], "object": "file", "bytes": len(content), "created_at": file["created_at"],
                    "filename": "train.jsonl", "purpose": "fine-tune", "status": "processed", "status_details": None,
                    "expires_at": None, "kind": "chat", "row_count": 3}
    assert before - 1 <= file["created_at"] <= int(time.time()) + 1
    dataset = client.get(f"/v1/datasets/{file['id']}").json()
    assert (dataset["kind"], dataset["row_count"], dataset["filename"]) == ("chat", 3, "train.jsonl")
    assert client.get(f"/v1/files/{file['id']}").json() == file


@pytest.mark.parametrize("rows,kind", [
    (CHAT, "chat"),
    ([{"prompt": "2+2=", "completion": "4"}] * 2, "chat"),
    (OPENAI_PREFERENCE, "preference"),
    (preference_rows(3), "preference"),
    (REINFORCEMENT, "prompt"),
    ([{"prompt": "Say a number.", "answer": "4"}], "prompt"),
])
def test_the_kind_is_told_from_the_rows(client, rows, kind):
    file = created(client, rows)
    assert (file["kind"], file["row_count"]) == (kind, len(rows))
    stored = client.get(f"/v1/datasets/{file['id']}/rows").json()["data"]
    assert len(stored) == len(rows)
    if kind == "prompt" and "messages" in rows[0]:  # OpenAI's reinforcement row, read as a prompt row
        assert stored[0]["data"]["prompt"][-1] == {"role": "user", "content": "0 + 0?"}
        assert stored[0]["data"]["answer"] == "0"


def test_other_formats_are_accepted_as_datasets_accept_them(client):
    r = send(client, csv_file([{"prompt": "2+2=", "completion": "4"}] * 2), filename="t.csv")
    assert r.status_code == 200
    file = r.json()
    assert (file["kind"], file["row_count"], file["filename"]) == ("chat", 2, "t.csv")
    r = send(client, json.dumps(preference_rows(2)).encode(), filename="t.json")
    assert (r.status_code, r.json()["kind"]) == (200, "preference")


def test_a_bad_row_refuses_the_file_naming_line_and_field(client, settings):
    rows = [*CHAT[:2], {"messages": [{"role": "user", "content": "hi"}, {"role": "wizard", "content": "x"}]}]
    error = openai_error(send(client, jsonl(rows)), 400)
    assert error["type"] == "invalid_request_error" and error["param"] == "file" and error["code"] == "invalid_value"
    assert "line 3" in error["message"] and "messages[1].role" in error["message"]
    assert "skip_invalid" not in error["message"]  # a field of the native upload, not of this one
    assert client.get("/v1/files").json()["data"] == []
    assert client.get("/v1/datasets").json()["data"] == []
    kept = settings.artifacts_dir / "files"  # the uploaded bytes, copied before the rows, are removed again
    assert not kept.exists() or not any(kept.iterdir())


def test_rows_of_another_kind_than_the_first_are_refused(client):
    # The first row is supervised, the second a reinforcement prompt: validated as chat, line 2 is wrong.
    error = openai_error(send(client, jsonl([CHAT[0], REINFORCEMENT[0]])), 400)
    assert "line 2" in error["message"] and error["param"] == "file"


def test_a_first_row_of_no_known_kind_is_refused_naming_line_1(client):
    error = openai_error(send(client, jsonl([{"question": "2+2", "reply": "4"}, *CHAT])), 400)
    assert error["message"].startswith("file: line 1: cannot tell what training data this row is")
    assert "'question'" in error["message"] and error["param"] == "file"
    error = openai_error(send(client, jsonl([["not", "an", "object"]])), 400)
    assert "line 1" in error["message"]


def test_the_kind_comes_from_the_first_decodable_row(client):
    # Line 1 is not JSON: the kind comes from line 2, and validation then names line 1.
    error = openai_error(send(client, b"{oops\n" + jsonl(CHAT)), 400)
    assert "line 1" in error["message"] and "invalid JSON" in error["message"]
    error = openai_error(send(client, b"{oops\n[1\n"), 400)
    assert error["message"].startswith("file: no row could be read; first: line 1")
    error = openai_error(send(client, b"\n\n"), 400)
    assert error["message"] == "file: the file holds no rows"


@pytest.mark.parametrize("purpose", ["assistants", "batch", "fine-tune-results", "vision", "user_data", "evals",
                                     "finetune"])
def test_purposes_other_than_fine_tune_are_refused(client, purpose):
    error = openai_error(send(client, jsonl(CHAT), purpose=purpose), 400)
    assert (error["param"], error["code"], error["type"]) == ("purpose", "invalid_value", "invalid_request_error")
    assert "'fine-tune'" in error["message"]
    assert client.get("/v1/files").json()["data"] == []


def test_missing_fields_are_missing_required_parameters(client):
    error = openai_error(send(client, jsonl(CHAT), purpose=None), 400)
    assert (error["param"], error["code"]) == ("purpose", "missing_required_parameter")
    error = openai_error(client.post("/v1/files", data={"purpose": "fine-tune"}), 400)
    assert (error["param"], error["code"]) == ("file", "missing_required_parameter")
    error = openai_error(send(client, jsonl(CHAT), filename="train.txt"), 400)
    assert error["param"] == "file" and "unsupported file type '.txt'" in error["message"]


def test_list_pages_in_both_orders_with_openai_cursors(client):
    ids = [created(client, CHAT)["id"] for _ in range(3)]  # oldest first
    page = client.get("/v1/files").json()
    assert page["object"] == "list" and not page["has_more"]
    assert [f["id"] for f in page["data"]] == ids[::-1]
    assert (page["first_id"], page["last_id"]) == (ids[2], ids[0])
    first = client.get("/v1/files", params={"limit": 2}).json()
    assert [f["id"] for f in first["data"]] == [ids[2], ids[1]] and first["has_more"]
    assert (first["first_id"], first["last_id"]) == (ids[2], ids[1])
    rest = client.get("/v1/files", params={"limit": 2, "after": first["last_id"]}).json()
    assert [f["id"] for f in rest["data"]] == [ids[0]] and not rest["has_more"]
    asc = client.get("/v1/files", params={"order": "asc", "limit": 2}).json()
    assert [f["id"] for f in asc["data"]] == ids[:2] and asc["has_more"]
    asc = client.get("/v1/files", params={"order": "asc", "after": asc["last_id"]}).json()
    assert [f["id"] for f in asc["data"]] == ids[2:] and not asc["has_more"]
    assert len(client.get("/v1/files", params={"purpose": "fine-tune"}).json()["data"]) == 3
    empty = client.get("/v1/files", params={"purpose": "batch"}).json()
    assert empty == {"object": "list", "data": [], "has_more": False, "first_id": None, "last_id": None}


def test_list_refuses_bad_parameters_in_openai_shape(client):
    assert openai_error(client.get("/v1/files", params={"after": "file-nothing"}), 400)["param"] == "after"
    assert openai_error(client.get("/v1/files", params={"limit": 0}), 400)["param"] == "limit"
    assert openai_error(client.get("/v1/files", params={"order": "up"}), 400)["param"] == "order"
    assert openai_error(client.get("/v1/files", params={"after": "a\x00"}), 400)["param"] == "after"


def test_native_datasets_are_files_too(client):
    dataset = upload(client, jsonl(preference_rows(2))).json()
    file = client.get(f"/v1/files/{dataset['id']}").json()
    assert (file["id"], file["kind"], file["bytes"]) == (dataset["id"], "preference", dataset["size_bytes"])
    assert [f["id"] for f in client.get("/v1/files").json()["data"]] == [dataset["id"]]
    # No uploaded bytes are kept for them: the content is the stored rows, one JSON object a line.
    r = client.get(f"/v1/files/{dataset['id']}/content")
    assert r.status_code == 200
    assert [json.loads(line) for line in r.content.decode().splitlines()] == preference_rows(2)


def test_content_is_the_bytes_as_uploaded(client):
    # Normalisation rewrites these rows (OpenAI's preference keys, the developer role, tools dropped);
    # the content is still what was sent, byte for byte.
    content = (json.dumps(OPENAI_PREFERENCE[0], indent=None, separators=(",", ":")) + "\r\n"
               + json.dumps(OPENAI_PREFERENCE[1], ensure_ascii=False) + "\n\n").encode()
    file = send(client, content).json()
    r = client.get(f"/v1/files/{file['id']}/content")
    assert r.status_code == 200 and r.content == content
    assert r.headers["content-type"] == "application/octet-stream"
    assert int(r.headers["content-length"]) == len(content) == file["bytes"]


def test_missing_and_foreign_files_are_404(client, app_client_factory, settings):
    error = openai_error(client.get("/v1/files/file-0123456789abcdef01234567"), 404)
    assert error == {"message": "no file with id 'file-0123456789abcdef01234567'", "type": "invalid_request_error",
                     "param": "file_id", "code": "not_found"}
    mine = created(client, CHAT)["id"]
    with app_client_factory(new_project_key(settings, "other")) as other:
        for r in (other.get(f"/v1/files/{mine}"), other.get(f"/v1/files/{mine}/content"),
                  other.delete(f"/v1/files/{mine}")):
            assert openai_error(r, 404)["param"] == "file_id"
        assert other.get("/v1/files").json()["data"] == []
    assert client.get(f"/v1/files/{mine}").status_code == 200


def test_delete_then_404_and_the_bytes_are_gone(client, settings):
    file = created(client, CHAT)
    store = open_store(settings)
    assert store.exists(original_key(file["id"]))
    r = client.delete(f"/v1/files/{file['id']}")
    assert r.status_code == 200 and r.json() == {"id": file["id"], "object": "file", "deleted": True}
    assert not store.exists(original_key(file["id"]))
    for r in (client.get(f"/v1/files/{file['id']}"), client.get(f"/v1/files/{file['id']}/content"),
              client.delete(f"/v1/files/{file['id']}"), client.get(f"/v1/datasets/{file['id']}")):
        assert r.status_code == 404
    assert client.get("/v1/files").json()["data"] == []


def test_delete_is_refused_while_an_active_job_uses_the_file(client):
    file = created(client, OPENAI_PREFERENCE)
    job = client.post("/v1/jobs", json={"type": "dpo", "base_model": "builtin:tiny-llama", "dataset_id": file["id"]})
    assert job.status_code == 201, job.text
    error = openai_error(client.delete(f"/v1/files/{file['id']}"), 409)
    assert (error["param"], error["code"]) == ("file_id", "conflict")
    assert error["message"] == f"file {file['id']} is used by active job {job.json()['id']}"
    assert client.get(f"/v1/files/{file['id']}").status_code == 200


def test_a_replayed_upload_answers_the_first_file(client, settings):
    first = created(client, CHAT, headers={"Idempotency-Key": "k1"})
    again = created(client, CHAT, headers={"Idempotency-Key": "k1"})
    assert again == first
    assert [f["id"] for f in client.get("/v1/files").json()["data"]] == [first["id"]]
    assert sorted(p.name for p in (settings.artifacts_dir / "files").iterdir()) == [first["id"]]


def test_errors_outside_routes_are_in_openai_shape(client):
    r = client.get("/v1/files", headers={"Authorization": "Bearer rlhf_wrong"})
    error = openai_error(r, 401)
    assert (error["type"], error["code"]) == ("invalid_request_error", "invalid_api_key")
    assert openai_error(client.get("/v1/files", headers={"Authorization": ""}), 401)["code"] == "invalid_api_key"
    assert openai_error(client.put("/v1/files"), 405)["code"] == "method_not_allowed"
    # The native API keeps its envelope and statuses.
    r = client.get("/v1/datasets", params={"limit": 0})
    assert r.status_code == 422 and set(r.json()["error"]) == {"type", "message", "param", "details"}


def test_an_upload_over_the_limit_is_a_413_in_openai_shape(settings, project_key):
    from fastapi.testclient import TestClient

    from api.main import create_app

    small = settings.model_copy(update={"max_upload_bytes": 200})
    with TestClient(create_app(small), headers={"Authorization": f"Bearer {project_key}"}) as client:
        error = openai_error(send(client, jsonl(CHAT * 5)), 413)
        assert (error["param"], error["code"]) == ("file", "request_too_large")
        assert client.get("/v1/files").json()["data"] == []


def test_deleting_a_file_as_a_dataset_deletes_its_bytes_too(client, settings):
    file = created(client, CHAT)
    assert client.delete(f"/v1/datasets/{file['id']}").status_code == 204
    assert not open_store(settings).exists(original_key(file["id"]))
    assert client.get(f"/v1/files/{file['id']}/content").status_code == 404


def test_no_file_is_stored_when_its_bytes_cannot_be_kept(settings, project_key, tmp_path):
    from fastapi.testclient import TestClient

    from api.main import create_app

    blocked = tmp_path / "not-a-directory"
    blocked.write_text("")  # the artifact store cannot make its staging directory under a file
    with TestClient(create_app(settings.model_copy(update={"artifacts_dir": blocked})),
                    headers={"Authorization": f"Bearer {project_key}"}) as client:
        error = openai_error(send(client, jsonl(CHAT)), 503)
        assert (error["type"], error["code"], error["param"]) == ("server_error", "service_unavailable", "file")
        assert client.get("/v1/files").json()["data"] == []
