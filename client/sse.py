"""Server-Sent Events, parsed as they arrive (the job stream's frames: `id`, `event`, JSON `data`)."""

import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Frame:
    event: str
    data: Any
    id: str | None


class SSEParser:
    """Feed text as it arrives; get the frames it completes. Comments (keep-alives) and `retry` are dropped."""

    def __init__(self) -> None:
        self._buffer = ""

    def feed(self, text: str) -> list[Frame]:
        self._buffer += text.replace("\r\n", "\n")
        *blocks, self._buffer = self._buffer.split("\n\n")
        return [frame for block in blocks if (frame := parse_block(block)) is not None]


def parse_block(block: str) -> Frame | None:
    fields: dict[str, str] = {}
    data: list[str] = []
    for line in block.split("\n"):
        if not line or line.startswith(":"):
            continue
        key, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if key == "data":
            data.append(value)
        else:
            fields[key] = value
    if not data:
        return None
    text = "\n".join(data)
    try:
        payload = json.loads(text)
    except json.JSONDecodeError:
        payload = text
    return Frame(event=fields.get("event", "message"), data=payload, id=fields.get("id"))
