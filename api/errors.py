"""Domain errors and their one mapping to HTTP responses with the error envelope.

Every error body is `{"error": {"type", "message", "param", "details": [...]}}`.
"""

from collections.abc import Iterable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
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
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message, self.param, self.details, self.headers = message, param, details or [], headers


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
    """Map domain errors, validation errors, HTTP errors and database outages to the envelope."""

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(error_body(exc.type, exc.message, exc.param, exc.details),
                            status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        details = [{"field": _param(e), "message": e["msg"]} for e in exc.errors()]
        first = details[0] if details else {"field": None, "message": "invalid request"}
        message = f"{first['field']}: {first['message']}" if first["field"] else first["message"]
        return JSONResponse(error_body("invalid_request_error", message, first["field"] or None, details),
                            status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        type_ = {400: "invalid_request_error", 404: "not_found_error",
                 405: "invalid_request_error"}.get(exc.status_code, "http_error")
        return JSONResponse(error_body(type_, str(exc.detail)), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(OperationalError)
    async def _db_down(_request: Request, exc: OperationalError) -> JSONResponse:
        # A lock wait that timed out (SQLite's one writer, a Postgres lock_timeout) is a busy database, not a lost one.
        orig = exc.orig
        busy = "locked" in str(orig) or getattr(orig, "sqlstate", None) == "55P03"
        message = ("the database is busy (a lock was not granted in time); retry later" if busy
                   else "the database is unreachable; retry later")
        return JSONResponse(error_body("service_unavailable", message),
                            status_code=503, headers={"Retry-After": "1" if busy else "5"})

    @app.exception_handler(PoolTimeout)
    async def _db_busy(_request: Request, _exc: PoolTimeout) -> JSONResponse:
        # Every pooled connection stayed in use for DB_POOL_TIMEOUT_SECONDS: overload, not a bug.
        return JSONResponse(error_body("service_unavailable", "the database is busy; retry later"),
                            status_code=503, headers={"Retry-After": "1"})
