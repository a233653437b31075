"""Preference exports uploaded as they come (hh-rlhf, UltraFeedback, OpenAI) are stored as canonical rows."""



from tests.support import csv_file, jsonl, parquet_file, upload


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


HH_PROMPT = "\n\nHuman: Can you help me bake bread?\n\nAssistant: Sure. What kind?\n\nHuman: Sourdough.\n\nAssistant:"
HH_PLAIN = {"chosen": HH_PROMPT + " Start with a starter.", "rejected": HH_PROMPT + " Buy some."}
HH_MESSAGES = [user("Can you help me bake bread?"), assistant("Sure. What kind?"), user("Sourdough.")]
HH_CONVERSATIONS = [
    {"chosen": [*HH_MESSAGES, assistant(f"Start with a starter, {i}.")], "rejected": [*HH_MESSAGES, assistant("No.")]}
    for i in range(2)
]
UF = {
    "prompt": "Name a prime.",
    "chosen": [user("Name a prime."), assistant("7")],
    "rejected": [user("Name a prime."), assistant("8")],
    "score_chosen": 8.5,
}
OPENAI = {
    "input": {"messages": [user("Name a prime.")]},
    "preferred_output": [assistant("7")],
    "non_preferred_output": [assistant("8")],
}

CANONICAL = {
    "hh-plain": [{"prompt": HH_PROMPT, "chosen": " Start with a starter.", "rejected": " Buy some."}],
    "hh-conversations": [
        {"prompt": HH_MESSAGES, "chosen": [assistant(f"Start with a starter, {i}.")], "rejected": [assistant("No.")]}
        for i in range(2)
    ],
    "ultrafeedback": [
        {"prompt": [user("Name a prime.")], "chosen": [assistant("7")], "rejected": [assistant("8")],
         "score_chosen": 8.5}
    ],
    "openai": [{"prompt": [user("Name a prime.")], "chosen": [assistant("7")], "rejected": [assistant("8")]}],
}




def _stored(client, content: bytes, filename: str, name: str) -> list[dict]:
    response = upload(client, content, filename=filename, name=name)
    assert response.status_code == 201, response.text
    body = response.json()
    rows = client.get(f"/v1/datasets/{body['id']}/rows").json()["data"]
    assert body["row_count"] == len(rows)
    return [row["data"] for row in rows]


def test_real_exports_upload_as_they_come(client):
    uploads = {
        "hh-plain": [HH_PLAIN],
        "hh-conversations": HH_CONVERSATIONS,
        "ultrafeedback": [UF],
        "openai": [OPENAI],
    }
    for name, rows in uploads.items():
        assert _stored(client, jsonl(rows), "data.jsonl", name) == CANONICAL[name], name
    parquet = _stored(client, parquet_file(HH_CONVERSATIONS), "data.parquet", "hh-conversations parquet")
    assert parquet == CANONICAL["hh-conversations"]
    assert _stored(client, csv_file([HH_PLAIN]), "data.csv", "hh-plain csv") == CANONICAL["hh-plain"]

    # hh-rlhf holds dialogues whose last turn has no reply: the line and the empty side are named.
    bad = upload(client, jsonl([HH_PLAIN, {"chosen": HH_PROMPT + " Knead.", "rejected": HH_PROMPT + " "}]))
    assert bad.status_code == 422
    detail = bad.json()["error"]["details"][0]
    assert detail["line"] == 2 and detail["field"] == "rejected"
    assert "no response after the prompt" in detail["message"]
