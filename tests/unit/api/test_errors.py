"""Error kinds: each names its status and type once, and every one answers with the error envelope."""

from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.errors import ApiError, Conflict, InvalidRequest, NotFound, Unauthenticated, field_path, install_error_handlers
from api.services.modelops import ModelOpTimeout


def test_kinds_carry_their_status_and_type():
    assert (ApiError.status_code, ApiError.type) == (400, "invalid_request_error")
    assert (InvalidRequest.status_code, InvalidRequest.type) == (422, "invalid_request_error")  # type inherited
    assert (NotFound.status_code, NotFound.type) == (404, "not_found_error")
    assert (Unauthenticated.status_code, Unauthenticated.type) == (401, "authentication_error")
    assert (ModelOpTimeout.status_code, ModelOpTimeout.type) == (504, "timeout_error")

    class Gone(NotFound, status_code=410):
        """A subclass of a kind keeps what it does not name."""

    assert (Gone.status_code, Gone.type, NotFound.status_code) == (410, "not_found_error", 404)


def test_errors_answer_with_the_envelope():
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/conflict")
    def conflict() -> None:
        raise Conflict("in use", param="dataset_id", details=[{"field": "dataset_id", "message": "in use"}])

    @app.get("/unauthenticated")
    def unauthenticated() -> None:
        raise Unauthenticated("no key")

    with TestClient(app) as client:
        r = client.get("/conflict")
        assert r.status_code == 409 and r.json() == {"error": {
            "type": "conflict_error", "message": "in use", "param": "dataset_id",
            "details": [{"field": "dataset_id", "message": "in use"}]}}
        r = client.get("/unauthenticated")
        assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer"
        assert r.json()["error"] == {"type": "authentication_error", "message": "no key", "param": None,
                                     "details": []}


def test_field_path():
    assert field_path(["hyperparameters", "lr"]) == "hyperparameters.lr"
    assert field_path(["pairs", 2, "prompt"]) == "pairs[2].prompt"
    assert field_path([0, "a"]) == "[0].a"
    assert field_path([]) == ""
