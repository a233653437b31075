"""Dataset uploads with a column map (exports as they come) and with skip_invalid, on both backends."""

import json

from fastapi.testclient import TestClient

from api.main import create_app
from core.settings import Settings
from tests.support import csv_file, jsonl, parquet_file

GSM8K = [
    {"question": "Tom has 3 boxes of 6 eggs. How many eggs does he have?",
     "answer": "Each box holds 6 eggs, so 3 * 6 = <<3*6=18>>18 eggs.\n#### 18"},
    {"question": "A pen costs 2 dollars. How much do 5 pens cost?",
     "answer": "5 * 2 = <<5*2=10>>10 dollars.\n#### 10"},
    {"question": "Ann reads 7 pages a day. How many pages in a week?",
     "answer": "7 * 7 = <<7*7=49>>49 pages.\n#### 49"},
]
QUESTION_TO_PROMPT = json.dumps({"prompt": "question"})




def _upload(client, content: bytes, *, filename: str = "data.jsonl", kind: str = "prompt", headers=None, **form):
    return client.post("/v1/datasets", files={"file": (filename, content)}, data={"kind": kind, **form},
                       headers=headers or {})


def _rows(client, dataset_id: str) -> list[dict]:
    return client.get(f"/v1/datasets/{dataset_id}/rows").json()["data"]


def _hh_rows(n: int, empty: dict[int, str]) -> list[dict]:
    """Split hh-rlhf-style rows; row i (0-based) in `empty` has that response blank, as real exports do."""
    rows = []
    for i in range(n):
        row = {"prompt": f"\n\nHuman: What is {i} + 1?", "chosen": f"\n\nAssistant: It is {i + 1}.",
               "rejected": "\n\nAssistant: No idea."}
        if i in empty:
            row[empty[i]] = "  "
        rows.append(row)
    return rows


def test_gsm8k_rows_upload_as_prompts_in_every_format(client):
    files = {"gsm8k.jsonl": jsonl(GSM8K), "gsm8k.csv": csv_file(GSM8K), "gsm8k.parquet": parquet_file(GSM8K)}
    for filename, content in files.items():
        r = _upload(client, content, filename=filename, column_map=QUESTION_TO_PROMPT)
        assert r.status_code == 201, (filename, r.text)
        body = r.json()
        assert body["column_map"] == {"prompt": "question"} and body["row_count"] == 3
        assert body["skipped"] is None
        assert client.get(f"/v1/datasets/{body['id']}").json()["column_map"] == {"prompt": "question"}
        stored = [row["data"] for row in _rows(client, body["id"])]
        # Renamed, not copied: the grader's `answer` stays, `question` does not.
        assert stored == [{"prompt": row["question"], "answer": row["answer"]} for row in GSM8K], filename
        assert stored[0]["answer"].endswith("#### 18")
    r = _upload(client, jsonl([{"prompt": "hi"}]))
    assert r.status_code == 201, r.text
    assert r.json()["column_map"] is None and r.json()["skipped"] is None


def test_preference_columns_map_and_may_swap_but_not_clash(client):
    rows = [{"instruction": "Say hi.", "better": "Hi!", "worse": "No.", "source": "s1"}]
    column_map = json.dumps({"prompt": "instruction", "chosen": "better", "rejected": "worse"})
    r = _upload(client, json.dumps(rows).encode(), filename="pairs.json", kind="preference", column_map=column_map)
    assert r.status_code == 201, r.text
    assert [row["data"] for row in _rows(client, r.json()["id"])] == [
        {"prompt": "Say hi.", "chosen": "Hi!", "rejected": "No.", "source": "s1"}]
    # Swapping two columns is no clash.
    swapped = [{"prompt": "Hi!", "chosen": "Say hi.", "rejected": "No."}]
    column_map = json.dumps({"prompt": "chosen", "chosen": "prompt"})
    r = _upload(client, jsonl(swapped), kind="preference", column_map=column_map)
    assert r.status_code == 201, r.text
    assert _rows(client, r.json()["id"])[0]["data"] == {"chosen": "Hi!", "prompt": "Say hi.", "rejected": "No."}
    # Renaming onto a column the row keeps would drop one of the two values.
    both = [{"prompt": "kept?", "question": "or this?", "chosen": "a", "rejected": "b"}]
    r = _upload(client, jsonl(both), kind="preference", column_map=QUESTION_TO_PROMPT)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["details"][0]["field"] == "prompt"
    assert "has both 'prompt' and 'question'" in r.json()["error"]["message"]


def test_bad_column_maps_are_refused_naming_column_map(client):
    bad = {
        "not json": ("prompt", "{prompt: question}", "not valid JSON"),
        "a list": ("prompt", '["question"]', "JSON object"),
        "a key the kind lacks": ("prompt", '{"answer": "solution"}', "'answer' is not a canonical key"),
        "a text key on prompts": ("prompt", '{"text": "question"}', "of a prompt dataset"),
        "not a string": ("prompt", '{"prompt": 3}', "must map to a column name"),
        "an empty column": ("prompt", '{"prompt": ""}', "must map to a column name"),
        "one column twice": ("preference", '{"chosen": "answer", "rejected": "answer"}',
                             "'chosen' and 'rejected' both map from column 'answer'"),
        "a key twice": ("prompt", '{"prompt": "question", "prompt": "q"}', "'prompt' is given more than once"),
    }
    for case, (kind, column_map, expected) in bad.items():
        r = _upload(client, jsonl(GSM8K), kind=kind, column_map=column_map)
        assert r.status_code == 422, (case, r.text)
        error = r.json()["error"]
        assert error["param"] == "column_map" and error["message"].startswith("column_map: "), case
        assert expected in error["message"], (case, error["message"])
    assert client.get("/v1/datasets").json()["data"] == []


def test_a_row_lacking_the_mapped_column_is_named(client):
    rows = [GSM8K[0], {"query": "What is 2 + 2?", "answer": "#### 4"}, GSM8K[1]]
    r = _upload(client, jsonl(rows), column_map=QUESTION_TO_PROMPT)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["param"] == "file" and "line 2" in error["message"] and "'question'" in error["message"]
    assert error["details"] == [{"line": 2, "field": "question",
                                 "message": "missing column 'question', which column_map maps to 'prompt'"}]
    # A CSV or Parquet file lacks it in its header, for every row at once.
    for filename, content in {"g.csv": csv_file(rows[1:2]), "g.parquet": parquet_file(rows[1:2])}.items():
        r = _upload(client, content, filename=filename, column_map=QUESTION_TO_PROMPT)
        assert r.status_code == 422, (filename, r.text)
        assert "missing column 'question', which column_map maps to 'prompt'" in r.json()["error"]["message"]
    assert client.get("/v1/datasets").json()["data"] == []


def test_skip_invalid_stores_the_valid_rows_and_names_the_others(client):
    content = jsonl(_hh_rows(10, {3: "chosen", 7: "rejected"}))
    refused = _upload(client, content, kind="preference")
    assert refused.status_code == 422, refused.text
    assert [d["line"] for d in refused.json()["error"]["details"]] == [4, 8]
    assert "skip_invalid=true" in refused.json()["error"]["message"]
    assert client.get("/v1/datasets").json()["data"] == []

    r = _upload(client, content, kind="preference", skip_invalid="true")
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["row_count"] == 8
    expected = {"count": 2, "rows": [{"line": 4, "field": "chosen", "message": "must not be empty"},
                                     {"line": 8, "field": "rejected", "message": "must not be empty"}]}
    assert body["skipped"] == expected
    assert client.get(f"/v1/datasets/{body['id']}").json()["skipped"] == expected
    rows = _rows(client, body["id"])
    assert [row["line"] for row in rows] == [1, 2, 3, 5, 6, 7, 9, 10] and [row["idx"] for row in rows] == list(range(8))


def test_skip_invalid_counts_every_skipped_row_and_reports_the_first_50(client):
    rows = [{"prompt": f"p{i}"} if i % 3 == 0 else {"prompt": ""} for i in range(120)]
    r = _upload(client, jsonl(rows), skip_invalid="true")
    assert r.status_code == 201, r.text
    skipped = r.json()["skipped"]
    assert r.json()["row_count"] == 40 and skipped["count"] == 80 and len(skipped["rows"]) == 50
    assert skipped["rows"][0]["line"] == 2 and skipped["rows"][-1]["line"] == 75
    r = _upload(client, jsonl(GSM8K), skip_invalid="true", column_map=QUESTION_TO_PROMPT)
    assert r.status_code == 201, r.text
    assert r.json()["skipped"] == {"count": 0, "rows": []} and r.json()["row_count"] == 3


def test_skip_invalid_still_refuses_a_file_without_valid_rows_or_with_a_broken_structure(client):
    r = _upload(client, jsonl([{"prompt": ""}, {"k" * 5000: 1}]), skip_invalid="true")
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert "all 2 rows are invalid" in error["message"] and len(error["details"]) == 2
    # A message quoting a row's keys is cut short.
    assert error["details"][1]["message"].startswith("missing required key 'prompt' (got kkk")
    assert len(error["details"][1]["message"]) == 1003
    # A .json array cut short: the rows after the break were never read, so none is stored.
    truncated = json.dumps([{"prompt": "a"}, {"prompt": "b"}]).encode()[:-10]
    r = _upload(client, truncated, filename="cut.json", skip_invalid="true")
    assert r.status_code == 422, r.text
    assert "damaged at line 2" in r.json()["error"]["message"]
    assert client.get("/v1/datasets").json()["data"] == []


def test_the_map_and_skip_invalid_are_part_of_the_idempotent_request(client):
    key = {"Idempotency-Key": "gsm8k-1"}
    first = _upload(client, jsonl(GSM8K), column_map=QUESTION_TO_PROMPT, headers=key)
    assert first.status_code == 201, first.text
    again = _upload(client, jsonl(GSM8K), column_map=json.dumps({"prompt": "question"}, indent=2), headers=key)
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    for changed in ({"column_map": json.dumps({"prompt": "answer"})},
                    {"column_map": QUESTION_TO_PROMPT, "skip_invalid": "true"}):
        r = _upload(client, jsonl(GSM8K), headers=key, **changed)
        assert r.status_code == 409, (changed, r.text)


def test_swagger_documents_the_form_fields_and_the_dataset_fields():
    with TestClient(create_app(Settings(database_url="sqlite://"))) as docs:
        spec = docs.get("/openapi.json").json()
    form = spec["paths"]["/v1/datasets"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    form = spec["components"]["schemas"][form["$ref"].rsplit("/", 1)[1]]["properties"]
    assert "column_map" in form and "skip_invalid" in form and form["skip_invalid"]["default"] is False
    dataset = spec["components"]["schemas"]["DatasetPublic"]["properties"]
    assert "column_map" in dataset and "skipped" in dataset
    skipped = spec["components"]["schemas"]["SkippedRows"]["properties"]
    assert set(skipped) == {"count", "rows"} and "first 50" in skipped["rows"]["description"]
