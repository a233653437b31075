"""Chat (SFT) dataset uploads, and OpenAI reinforcement rows as prompt datasets, in every file format."""

import json

from tests.support import csv_file, jsonl, parquet_file

CHATS = [
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                  {"role": "assistant", "content": "Hello.", "weight": 0},
                  {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]},
    {"messages": [{"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris."}],
     "tools": [], "source": "geo"},
]


def _upload(client, content: bytes, *, filename: str = "chat.jsonl", kind: str = "chat", **form):
    return client.post("/v1/datasets", files={"file": (filename, content)}, data={"kind": kind, **form})


def _rows(client, dataset_id: str) -> list[dict]:
    return [row["data"] for row in client.get(f"/v1/datasets/{dataset_id}/rows").json()["data"]]


def test_chat_rows_upload_in_every_format(client):
    expected = [CHATS[0], {k: v for k, v in CHATS[1].items() if k != "tools"}]
    for filename, content in {"c.jsonl": jsonl(CHATS), "c.json": json.dumps(CHATS).encode()}.items():
        r = _upload(client, content, filename=filename)
        assert r.status_code == 201, (filename, r.text)
        assert r.json()["kind"] == "chat" and r.json()["row_count"] == 2
        assert _rows(client, r.json()["id"]) == expected, filename
    # Columnar files: messages as a JSON cell (CSV) or a list of structs whose absent weight is null (Parquet).
    plain = [{"messages": row["messages"]} for row in CHATS]
    for filename, content in {"c.csv": csv_file([{"messages": json.dumps(row["messages"])} for row in plain]),
                              "c.parquet": parquet_file(plain)}.items():
        r = _upload(client, content, filename=filename)
        assert r.status_code == 201, (filename, r.text)
        assert _rows(client, r.json()["id"]) == plain, filename
    completions = [{"question": "2+2=", "answer": " 4"}]
    r = _upload(client, csv_file(completions), filename="pc.csv",
                column_map=json.dumps({"prompt": "question", "completion": "answer"}))
    assert r.status_code == 201, r.text
    assert _rows(client, r.json()["id"]) == [{"prompt": "2+2=", "completion": " 4"}]


def test_bad_chat_rows_are_named_by_line_and_field_or_skipped(client):
    rows = [CHATS[1], {"messages": [{"role": "user", "content": "q"}]},
            {"messages": [{"role": "user", "content": "q", "weight": 1}, {"role": "assistant", "content": "a"}]}]
    r = _upload(client, jsonl(rows))
    assert r.status_code == 422, r.text
    assert r.json()["error"]["details"] == [
        {"line": 2, "field": "messages", "message": "must contain at least one assistant message"},
        {"line": 3, "field": "messages[0].weight",
         "message": "is allowed on assistant messages only, not on a 'user' message"},
    ]
    r = _upload(client, jsonl(rows), skip_invalid="true")
    assert r.status_code == 201, r.text
    assert r.json()["row_count"] == 1 and r.json()["skipped"]["count"] == 2
    r = _upload(client, csv_file([{"question": "q"}]), filename="bad.csv")
    assert r.status_code == 422, r.text
    assert "missing required column 'messages'" in r.json()["error"]["message"]
    r = _upload(client, jsonl(CHATS), column_map=json.dumps({"chosen": "messages"}))
    assert r.status_code == 422 and r.json()["error"]["param"] == "column_map", r.text


def test_openai_reinforcement_rows_upload_as_prompts(client):
    rows = [{"messages": [{"role": "developer", "content": "Answer with a number."},
                          {"role": "user", "content": "2+2?"}], "reference_answer": "4"}]
    for filename, content in {"r.jsonl": jsonl(rows), "r.parquet": parquet_file(rows)}.items():
        r = _upload(client, content, filename=filename, kind="prompt")
        assert r.status_code == 201, (filename, r.text)
        assert _rows(client, r.json()["id"]) == [{
            "prompt": [{"role": "system", "content": "Answer with a number."}, {"role": "user", "content": "2+2?"}],
            "reference_answer": "4"}]
    answered = [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}]
    r = _upload(client, jsonl(answered), kind="prompt")
    assert r.status_code == 422, r.text
    assert r.json()["error"]["details"][0]["field"] == "messages[1].role"
