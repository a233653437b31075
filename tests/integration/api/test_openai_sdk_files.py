"""The official `openai` SDK against the app (in process, through its own HTTP client): files, and the
exceptions it raises from our errors."""

import json

import openai
import pytest
from fastapi.testclient import TestClient

from api.main import create_app

ROWS = [{"messages": [{"role": "user", "content": f"Shout: {w}"}, {"role": "assistant", "content": w.upper()}]}
        for w in ("apple", "river", "stone")]


@pytest.fixture
def http(settings):
    """The app's HTTP transport, without a key of its own: the SDK sends its own."""
    with TestClient(create_app(settings)) as http:
        yield http


def sdk(http: TestClient, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{http.base_url}/v1", api_key=key, http_client=http, max_retries=0)


def test_files_through_the_sdk(http, project_key, tmp_path):
    client = sdk(http, project_key)
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in ROWS))

    with path.open("rb") as f:
        file = client.files.create(file=f, purpose="fine-tune")
    assert isinstance(file, openai.types.FileObject)
    assert (file.object, file.purpose, file.status, file.filename, file.bytes) == (
        "file", "fine-tune", "processed", "chat.jsonl", path.stat().st_size)
    second = client.files.create(file=path, purpose="fine-tune")

    listed = client.files.list()
    assert [f.id for f in listed.data] == [second.id, file.id]
    page = client.files.list(limit=1, order="asc")
    assert [f.id for f in page.data] == [file.id] and page.has_more
    assert [f.id for f in page.get_next_page().data] == [second.id]
    assert [f.id for f in client.files.list(limit=1)] == [second.id, file.id]  # auto-paging follows `after`
    assert client.files.list(purpose="batch").data == []

    assert client.files.retrieve(file.id) == file
    assert client.files.content(file.id).content == path.read_bytes()

    deleted = client.files.delete(file.id)
    assert (deleted.id, deleted.deleted, deleted.object) == (file.id, True, "file")
    with pytest.raises(openai.NotFoundError) as err:
        client.files.retrieve(file.id)
    assert (err.value.status_code, err.value.param, err.value.code) == (404, "file_id", "not_found")


def test_the_sdk_raises_its_exceptions_with_param_and_code(http, project_key, tmp_path):
    client = sdk(http, project_key)
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in ROWS))

    with pytest.raises(openai.NotFoundError) as err:
        client.files.content("file-0123456789abcdef01234567")
    assert err.value.param == "file_id"
    with pytest.raises(openai.BadRequestError) as err:
        client.files.create(file=path, purpose="assistants")
    assert (err.value.param, err.value.code, err.value.type) == ("purpose", "invalid_value", "invalid_request_error")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(ROWS[0]) + "\n" + json.dumps({"messages": "hi"}) + "\n")
    with pytest.raises(openai.BadRequestError) as err:
        client.files.create(file=bad, purpose="fine-tune")
    assert err.value.param == "file" and "line 2" in err.value.message
    with pytest.raises(openai.BadRequestError) as err:
        client.files.list(limit=0)
    assert (err.value.param, err.value.code) == ("limit", "invalid_value")
    with pytest.raises(openai.AuthenticationError) as err:
        sdk(http, "rlhf_wrong").files.list()
    assert err.value.code == "invalid_api_key"
    assert client.files.list().data == []
