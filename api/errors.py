"""Domain errors and their one mapping to HTTP responses with the error envelope.

The native API answers `{"error": {"type", "message", "param", "details": [...]}}`. The
OpenAI-compatible routes (OPENAI_PREFIXES) answer as OpenAI does, `{"error": {"message", "type",
"param", "code"}}`, with OpenAI's statuses (a refused value is a 400 there, not a 422), so the
`openai` SDK raises its matching exception. `error_content` decides, from the request's path alone.
"""

from collections.abc import Iterable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException


class ApiError(Exception):
    """A refused request. Each kind is a subclass that names its HTTP status and error `type` once, in
    its class line: `class NotFound(ApiError, status_code=404, type="not_found_error")`."""

    status_code = 400
    type = "invalid_request_error"

    def __init_subclass__(cls, *, status_code: int | None = None, type: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if status_code is not None:
            cls.status_code = status_code
        if type is not None:
            cls.type = type

    def __init__(self, message: str, *, param: str | None = None,
                 details: list[dict[str, Any]] | None = None,
                 headers: dict[str, str] | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message, self.param, self.details, self.headers = message, param, details or [], headers
        self.code = code  # OpenAI's machine-readable `code`; the OpenAI shape derives one when None


class Unauthenticated(ApiError, status_code=401, type="authentication_error"):
    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class InvalidRequest(ApiError, status_code=422):
    """A well-formed request whose values cannot work (the field is in `param`)."""


class TooLarge(ApiError, status_code=413, type="request_too_large"):
    """A body, file or dataset over a configured limit."""


class NotFound(ApiError, status_code=404, type="not_found_error"):
    """No such resource in the caller's project."""


class Conflict(ApiError, status_code=409, type="conflict_error"):
    """The resource's state forbids the request (an active job, a reused idempotency key)."""


class ServiceUnavailable(ApiError, status_code=503, type="service_unavailable"):
    """A dependency (database, broker, model process) cannot serve now; retry later."""


def error_body(type_: str, message: str, param: str | None = None,
               details: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"error": {"type": type_, "message": message, "param": param, "details": details or []}}


OPENAI_PREFIXES = ("/v1/files", "/v1/fine_tuning", "/v1/models", "/v1/chat")

# The `code` OpenAI gives each status when the error names none of its own.
_OPENAI_CODES = {401: "invalid_api_key", 403: "permission_denied", 404: "not_found", 405: "method_not_allowed",
                 409: "conflict", 413: "request_too_large", 429: "rate_limit_exceeded", 500: "server_error",
                 503: "service_unavailable", 504: "timeout"}


def speaks_openai(path: str) -> bool:
    """Whether the route at `path` is one of the OpenAI-compatible ones."""
    return any(path == prefix or path.startswith(prefix + "/") for prefix in OPENAI_PREFIXES)


def validation_code(error_type: str) -> str:
    """OpenAI's `code` for a pydantic error type."""
    if error_type == "missing":
        return "missing_required_parameter"
    if error_type == "extra_forbidden":
        return "unknown_parameter"
    if error_type.endswith(("_type", "_parsing")):
        return "invalid_type"
    return "invalid_value"


def error_content(path: str, status: int, type_: str, message: str, param: str | None = None,
                  details: list[dict[str, Any]] | None = None, code: str | None = None) -> tuple[int, dict[str, Any]]:
    """The status and body of an error answered at `path`: the native envelope, or OpenAI's on its routes."""
    if not speaks_openai(path):
        return status, error_body(type_, message, param, details)
    if status == 422:  # OpenAI refuses every unusable value with a 400
        status = 400
    if status >= 500:
        openai_type = "server_error"
    elif status == 429:
        openai_type = "rate_limit_error"
    else:  # OpenAI's type for 400, 401, 404 and 409 alike
        openai_type = "invalid_request_error"
    if code is None:
        code = _OPENAI_CODES.get(status, "invalid_value" if status == 400 else None)
    return status, {"error": {"message": message, "type": openai_type, "param": param, "code": code}}


class OpenAIErrorBody(BaseModel):
    message: str
    type: str = Field(description="invalid_request_error (400, 401, 404, 409, 413), rate_limit_error or server_error.")
    param: str | None = Field(description="The parameter or field at fault, when there is one.")
    code: str | None = Field(description="invalid_value, missing_required_parameter, unknown_parameter, invalid_type, "
                                         "invalid_api_key, not_found, conflict, request_too_large, ...")


class OpenAIErrorResponse(BaseModel):
    """Every error answer of the OpenAI-compatible routes: the `openai` SDK raises its exception for the status."""

    error: OpenAIErrorBody


def _document_openai_errors(app: FastAPI) -> None:
    """Make the OpenAPI document say what the OpenAI-compatible routes answer: their error statuses in
    OpenAI's shape, and 400 where the native routes answer 422, whatever their routers declare."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        schema = build()  # cached by FastAPI after the first call; the changes below are idempotent
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        if "OpenAIErrorResponse" not in components:
            document = OpenAIErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(document.pop("$defs", {}))
            components["OpenAIErrorResponse"] = document
        content = {"application/json": {"schema": {"$ref": "#/components/schemas/OpenAIErrorResponse"}}}
        for path, operations in schema.get("paths", {}).items():
            if not speaks_openai(path):
                continue
            for operation in operations.values():
                responses = operation.get("responses", {})
                if "422" in responses or "400" in responses:
                    responses.pop("422", None)
                    responses["400"] = {"description": "A missing or unusable value, or a body that could not be "
                                                       "parsed (the SDK's BadRequestError)"}
                for status, response in responses.items():
                    if status[:1] in ("4", "5"):
                        response["content"] = content
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def error_response(request: Request, status: int, type_: str, message: str, param: str | None = None,
                   details: list[dict[str, Any]] | None = None, code: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    status, body = error_content(request.url.path, status, type_, message, param, details, code)
    return JSONResponse(body, status_code=status, headers=headers)


def param_of(loc: tuple[Any, ...], error_type: str) -> str:
    """The dotted field a validation error is about, without the union tags pydantic inserts."""
    from api.schemas import JOB_TYPES
    from trainers.spec.reward_validation import error_path

    loc = tuple(p for p in loc if p not in ("body", "query", "path", "header", "form"))
    if loc and loc[0] in JOB_TYPES:
        loc = loc[1:]
    if "reward" in loc:
        at = loc.index("reward")
        prefix = field_path(loc[:at])
        return error_path(loc[at + 1:], error_type, prefix=f"{prefix}.reward" if prefix else "reward")
    if error_type in ("union_tag_invalid", "union_tag_not_found"):
        loc = (*loc, "type")
    return field_path(loc)


def _param(error: dict[str, Any]) -> str:
    return param_of(tuple(error["loc"]), error["type"])


def field_path(parts: Iterable[str | int]) -> str:
    """The dotted path of a field inside a document: `a.b[0].c` for the parts `("a", "b", 0, "c")`."""
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def install_error_handlers(app: FastAPI) -> None:
    """Map domain errors, validation errors, HTTP errors and database outages to the envelope (OpenAI's on
    its routes), and document the OpenAI-compatible routes' errors in its shape."""
    _document_openai_errors(app)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(request, exc.status_code, exc.type, exc.message, exc.param, exc.details,
                              exc.code, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        details = [{"field": _param(e), "message": e["msg"]} for e in errors]
        first = details[0] if details else {"field": None, "message": "invalid request"}
        message = f"{first['field']}: {first['message']}" if first["field"] else first["message"]
        code = validation_code(errors[0]["type"]) if errors else None
        return error_response(request, 422, "invalid_request_error", message, first["field"] or None, details, code)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        type_ = {400: "invalid_request_error", 404: "not_found_error",
                 405: "invalid_request_error"}.get(exc.status_code, "http_error")
        return error_response(request, exc.status_code, type_, str(exc.detail),
                              headers=getattr(exc, "headers", None))

    @app.exception_handler(OperationalError)
    async def _db_down(request: Request, exc: OperationalError) -> JSONResponse:
        # A lock wait that timed out (SQLite's one writer, a Postgres lock_timeout) is a busy database, not a lost one.
        orig = exc.orig
        busy = "locked" in str(orig) or getattr(orig, "sqlstate", None) == "55P03"
        message = ("the database is busy (a lock was not granted in time); retry later" if busy
                   else "the database is unreachable; retry later")
        return error_response(request, 503, "service_unavailable", message,
                              headers={"Retry-After": "1" if busy else "5"})

    @app.exception_handler(PoolTimeout)
    async def _db_busy(request: Request, _exc: PoolTimeout) -> JSONResponse:
        # Every pooled connection stayed in use for DB_POOL_TIMEOUT_SECONDS: overload, not a bug.
        return error_response(request, 503, "service_unavailable", "the database is busy; retry later",
                              headers={"Retry-After": "1"})
