"""The OpenAI-compatible routes answer errors in OpenAI's shape and statuses; every other route keeps the envelope."""

from typing import Annotated

import pytest
from fastapi import FastAPI, Query
from fastapi.testclient import TestClient

from api.errors import (
    Conflict,
    InvalidRequest,
    NotFound,
    ServiceUnavailable,
    TooLarge,
    Unauthenticated,
    error_content,
    install_error_handlers,
    speaks_openai,
    validation_code,
)

RAISED = {"invalid": InvalidRequest("purpose: must be 'fine-tune'", param="purpose",
                                    details=[{"field": "purpose", "message": "must be 'fine-tune'"}]),
          "unauthenticated": Unauthenticated("no key"),
          "not-found": NotFound("no file with id 'file-x'", param="file_id"),
          "conflict": Conflict("in use", param="file_id"),
          "too-large": TooLarge("too big", param="file"),
          "unavailable": ServiceUnavailable("retry later"),
          "coded": InvalidRequest("model: no such model", param="model", code="model_not_found")}


def _app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)
    for prefix in ("/v1/files", "/v1/fine_tuning/jobs", "/v1/models", "/v1/chat/completions", "/v1/datasets"):
        @app.get(f"{prefix}/raise/{{what}}")
        def raise_(what: str) -> None:
            raise RAISED[what]

        @app.get(f"{prefix}/validate")
        def validate(limit: Annotated[int, Query(ge=1)], order: Annotated[str, Query()] = "desc") -> None:
            return None

    return app


@pytest.fixture(scope="module")
def client():
    with TestClient(_app()) as client:
        yield client


@pytest.mark.parametrize("path,expected", [
    ("/v1/files", True), ("/v1/files/file-1/content", True), ("/v1/fine_tuning/jobs", True),
    ("/v1/models/ft:x", True), ("/v1/chat/completions", True),
    ("/v1/datasets", False), ("/v1/jobs", False), ("/v1/filesystem", False), ("/v1/modelsx", False),
    ("/healthz", False),
])
def test_the_path_alone_decides_the_shape(path, expected):
    assert speaks_openai(path) is expected


@pytest.mark.parametrize("what,status,code,param", [
    ("invalid", 400, "invalid_value", "purpose"),
    ("unauthenticated", 401, "invalid_api_key", None),
    ("not-found", 404, "not_found", "file_id"),
    ("conflict", 409, "conflict", "file_id"),
    ("too-large", 413, "request_too_large", "file"),
    ("coded", 400, "model_not_found", "model"),
])
def test_openai_routes_answer_in_openai_shape(client, what, status, code, param):
    for prefix in ("/v1/files", "/v1/fine_tuning/jobs", "/v1/models", "/v1/chat/completions"):
        r = client.get(f"{prefix}/raise/{what}")
        assert r.status_code == status
        assert r.json() == {"error": {"message": RAISED[what].message, "type": "invalid_request_error",
                                      "param": param, "code": code}}


def test_openai_server_errors_are_server_errors(client):
    r = client.get("/v1/files/raise/unavailable")
    assert r.status_code == 503
    assert r.json()["error"] == {"message": "retry later", "type": "server_error", "param": None,
                                 "code": "service_unavailable"}


def test_openai_keeps_headers(client):
    r = client.get("/v1/models/raise/unauthenticated")
    assert r.headers["WWW-Authenticate"] == "Bearer"


def test_openai_request_validation_is_a_400_naming_the_parameter(client):
    r = client.get("/v1/files/validate")
    assert r.status_code == 400
    assert r.json()["error"] == {"message": "limit: Field required", "type": "invalid_request_error",
                                 "param": "limit", "code": "missing_required_parameter"}
    r = client.get("/v1/files/validate", params={"limit": 0})
    assert r.status_code == 400
    error = r.json()["error"]
    assert (error["param"], error["code"], error["type"]) == ("limit", "invalid_value", "invalid_request_error")
    r = client.get("/v1/fine_tuning/jobs/validate", params={"limit": "many"})
    assert (r.status_code, r.json()["error"]["code"]) == (400, "invalid_type")


def test_openai_unknown_route_is_a_404_in_openai_shape(client):
    r = client.get("/v1/files/raise/x/y")
    assert r.status_code == 404
    assert r.json() == {"error": {"message": "Not Found", "type": "invalid_request_error", "param": None,
                                  "code": "not_found"}}


def test_native_routes_keep_their_envelope_and_statuses(client):
    r = client.get("/v1/datasets/raise/invalid")
    assert r.status_code == 422
    assert r.json() == {"error": {"type": "invalid_request_error", "message": "purpose: must be 'fine-tune'",
                                  "param": "purpose", "details": [{"field": "purpose",
                                                                    "message": "must be 'fine-tune'"}]}}
    r = client.get("/v1/datasets/raise/not-found")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error" and "code" not in r.json()["error"]
    r = client.get("/v1/datasets/validate")
    assert r.status_code == 422
    assert r.json()["error"] == {"type": "invalid_request_error", "message": "limit: Field required",
                                 "param": "limit", "details": [{"field": "limit", "message": "Field required"}]}


def test_error_content_for_middleware():
    assert error_content("/v1/files", 413, "request_too_large", "too big", "file") == (
        413, {"error": {"message": "too big", "type": "invalid_request_error", "param": "file",
                        "code": "request_too_large"}})
    assert error_content("/v1/datasets", 413, "request_too_large", "too big", "file") == (
        413, {"error": {"type": "request_too_large", "message": "too big", "param": "file", "details": []}})


@pytest.mark.parametrize("error_type,code", [
    ("missing", "missing_required_parameter"), ("extra_forbidden", "unknown_parameter"),
    ("string_type", "invalid_type"), ("int_parsing", "invalid_type"), ("greater_than_equal", "invalid_value"),
    ("literal_error", "invalid_value"),
])
def test_validation_codes(error_type, code):
    assert validation_code(error_type) == code


def test_the_openapi_document_shows_openai_errors_on_openai_routes():
    from api.schemas import error_responses

    app = FastAPI()
    install_error_handlers(app)

    @app.get("/v1/models/{model}", responses=error_responses(401, 404, 422))
    def model(model: str, limit: int = 1) -> None:
        return None

    @app.get("/v1/datasets/{dataset_id}", responses=error_responses(401, 404, 422))
    def dataset(dataset_id: str) -> None:
        return None

    schema = app.openapi()
    openai_ref = {"$ref": "#/components/schemas/OpenAIErrorResponse"}
    responses = schema["paths"]["/v1/models/{model}"]["get"]["responses"]
    assert sorted(responses) == ["200", "400", "401", "404"]  # 422 is a 400 there
    assert all(responses[s]["content"]["application/json"]["schema"] == openai_ref for s in ("400", "401", "404"))
    native = schema["paths"]["/v1/datasets/{dataset_id}"]["get"]["responses"]
    assert sorted(native) == ["200", "401", "404", "422"]
    assert native["404"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorResponse"}
    body = schema["components"]["schemas"]["OpenAIErrorBody"]
    assert sorted(body["properties"]) == ["code", "message", "param", "type"]
    assert app.openapi() is schema
