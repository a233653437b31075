"""Request limits enforced before FastAPI reads a request: body size (413), JSON nesting depth (422),
and values no column can hold in query parameters, headers and JSON bodies (422, api.storable).

Uploads are measured as they stream in, so a body without Content-Length cannot slip past, and a
JSON body is scanned for nesting depth before the parser runs, so no request can make it recurse
into an error.
"""

import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import error_content
from api.storable import header_problem, json_problem, query_problem
from core.settings import Settings

UPLOAD_PATHS = ("/v1/datasets", "/v1/files")


def human_bytes(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:g} {unit}" if unit == "bytes" else f"{n:.4g} {unit}"
        n /= 1024
    return f"{n} GiB"


def json_depth(body: bytes) -> int:
    """Deepest nesting of arrays and objects in a JSON text (strings are skipped)."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in body:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):  # ] }
            depth -= 1
    return deepest


class BodyLimits:
    """ASGI middleware: bounded body sizes (uploads and JSON separately), bounded JSON depth, and only
    storable text and numbers in query parameters, headers and JSON bodies."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app, self.settings = app, settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (found := query_problem(scope["query_string"])
                                        or header_problem(scope["headers"])):
            await self._refuse(scope, send, 422, found[1], found[0])
            return
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "DELETE", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        is_upload = scope["path"] in UPLOAD_PATHS
        limit, setting = ((self.settings.max_upload_bytes, "MAX_UPLOAD_BYTES") if is_upload
                          else (self.settings.max_json_body_bytes, "MAX_JSON_BODY_BYTES"))
        declared = headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            await self._refuse(scope, send, 413, f"the request body ({human_bytes(int(declared))}) is larger than "
                               f"the limit of {human_bytes(limit)} ({setting})", "file" if is_upload else None)
            return
        if is_upload:
            await self._upload(scope, receive, send, limit, setting)
            return
        body = await self._read(receive, limit)
        if body is None:
            await self._refuse(scope, send, 413, f"the request body is larger than the limit of {human_bytes(limit)} "
                               f"({setting})", None)
            return
        if "json" in headers.get("content-type", ""):
            if json_depth(body) > self.settings.max_json_depth:
                depth = self.settings.max_json_depth
                await self._refuse(scope, send, 422, f"the JSON body is nested more than {depth} levels deep", None)
                return
            if found := json_problem(body):
                await self._refuse(scope, send, 422, found[1], found[0])
                return
        await self.app(scope, _replay(body, receive), send)

    @staticmethod
    async def _read(receive: Receive, limit: int) -> bytes | None:
        chunks, size = [], 0
        while True:
            message = await receive()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)
            if not message.get("more_body"):
                return b"".join(chunks)

    async def _upload(self, scope: Scope, receive: Receive, send: Send, limit: int, setting: str) -> None:
        """Stream an upload to the app, cutting it off (as a disconnect) once it passes the limit."""
        seen, too_large = 0, False

        async def counted() -> Message:
            nonlocal seen, too_large
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                too_large = True
                return {"type": "http.disconnect"}
            return message

        async def guarded(message: Message) -> None:
            if not too_large:  # whatever the app answers to a cut-off body is replaced by our 413
                await send(message)

        try:
            await self.app(scope, counted, guarded)
        except Exception:
            if not too_large:
                raise
        if too_large:
            await self._refuse(scope, send, 413, f"the upload is larger than the limit of {human_bytes(limit)} "
                               f"({setting})", "file")

    @staticmethod
    async def _refuse(scope: Scope, send: Send, status: int, message: str, param: str | None) -> None:
        kind = "request_too_large" if status == 413 else "invalid_request_error"
        status, body = error_content(scope["path"], status, kind, message, param)
        payload = json.dumps(body).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(payload)).encode())]})
        await send({"type": "http.response.body", "body": payload})


def _replay(body: bytes, receive: Receive) -> Receive:
    """The body read already, then the client's own messages: a streamed response listens for its
    disconnect, which must come when the client goes, not as soon as the body has been read."""
    sent = False

    async def replay() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay
