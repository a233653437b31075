"""Test data and small protocol helpers shared by the integration and end-to-end tests."""

import json
import random
from typing import Any


def preference_rows(n: int, seed: int = 0) -> list[dict[str, str]]:
    """Pairs with a learnable preference: the chosen answer is always the cheerful one."""
    rng = random.Random(seed)
    topics = ["the sky", "rain", "a cat", "tea", "music", "a river", "snow", "bread", "a book", "the sea"]
    rows = []
    for i in range(n):
        topic = rng.choice(topics)
        rows.append({"prompt": f"Q{i}: tell me about {topic}.",
                     "chosen": f"I love {topic}! Yes!", "rejected": f"no. {topic} is dull."})
    return rows


def jsonl(rows: list[Any]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def upload(client, content: bytes, *, filename: str = "data.jsonl", kind: str = "preference",
           name: str | None = None):
    data = {"kind": kind} | ({"name": name} if name else {})
    return client.post("/v1/datasets", files={"file": (filename, content)}, data=data)


def parse_sse(text: str) -> list[dict[str, Any]]:
    """Frames of an SSE body as dicts with id, event and decoded data (comments and retry dropped)."""
    frames = []
    for block in text.split("\n\n"):
        frame: dict[str, Any] = {}
        for line in block.splitlines():
            if line.startswith(":") or ":" not in line:
                continue
            key, _, value = line.partition(":")
            frame[key] = value.removeprefix(" ")
        if "data" in frame:
            frame["data"] = json.loads(frame["data"])
            frames.append(frame)
    return frames
