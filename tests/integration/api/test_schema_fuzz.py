"""Schemathesis against the service's own OpenAPI schema, on both deployments: no 5xx, every response
matches its schema.

Two kinds of cases. Requests generated from the schema, well-formed (positive) and malformed
(negative), bounded so the suite stays fast. And a sweep that puts values no column can hold (NUL
characters, lone surrogates, integers beyond 64 bits, cursors beyond a column's range, very long
names) into every parameter, body field, body key and form field of every operation, one place at a
time, starting from a request that would succeed, with real ids, so each value reaches the code
behind the validation it passes.
"""

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from pydantic import SecretStr
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.python.asgi import ASGIClient
from schemathesis.specs.openapi.checks import positive_data_acceptance, response_schema_conformance

from api.main import create_app
from core.settings import Settings
from tests.support import BACKENDS, embedded_settings, jsonl, new_project_key, postgres_deployments, preference_rows

# Schema-valid requests the service refuses on purpose (a cursor naming nothing, a file without a
# known suffix, an unknown dataset id) are business rules, not schema gaps: that one check is off.
EXCLUDED = [positive_data_acceptance]
ADMIN_KEY = "adm-fz8Qw3Lp0Xv7Rt2Ks9Nb4Hc6"


def cases() -> list[tuple[str, GenerationMode]]:
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(Settings(database_url="sqlite://")))
    out = []
    for result in schema.get_all_operations():
        operation = result.ok()
        out.append((operation.label, GenerationMode.POSITIVE))
        if operation.definition.raw.get("parameters") or operation.definition.raw.get("requestBody"):
            out.append((operation.label, GenerationMode.NEGATIVE))  # nothing to get wrong otherwise
    return out


@dataclass
class Deployment:
    schema: Any
    headers: dict[str, str]  # a project's key
    admin_headers: dict[str, str]
    ids: dict[str, str]  # real ids by path parameter name
    client: ASGIClient  # one in-process client for the sweep (a new one per request costs more than the request)

    def headers_for(self, path: str) -> dict[str, str]:
        return self.admin_headers if path.startswith("/v1/admin") else self.headers


@pytest.fixture(scope="module", params=BACKENDS)
def api(request, tmp_path_factory) -> Iterator[Deployment]:
    root = tmp_path_factory.mktemp("fuzz")
    # Chat completions without max_tokens stay short, so no request of the sweep outlives its read timeout.
    admin = {"admin_api_key": SecretStr(ADMIN_KEY), "chat_default_max_tokens": 4}
    if request.param == "embedded":
        yield from make_deployment(embedded_settings(root, **admin))
        return
    with postgres_deployments(request.getfixturevalue("pg_template"), root) as make:
        yield from make_deployment(make(**admin))


def make_deployment(deployment: Settings) -> Iterator[Deployment]:
    key = new_project_key(deployment)
    headers, admin_headers = {"Authorization": f"Bearer {key}"}, {"Authorization": f"Bearer {ADMIN_KEY}"}
    app = create_app(deployment)
    with TestClient(app, headers=headers) as client:
        dataset = client.post("/v1/datasets", files={"file": ("d.jsonl", jsonl(preference_rows(3)))},
                              data={"kind": "preference"}).json()["id"]
        job = client.post("/v1/jobs", json={"type": "dpo", "base_model": "builtin:tiny-llama",
                                            "dataset_id": dataset}).json()["id"]
        client.post(f"/v1/jobs/{job}/cancel")  # a finished job's stream closes, so the sweep can read it
        project = client.get("/v1/admin/projects", headers=admin_headers).json()["data"][0]["id"]
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    # A body over MAX_JSON_BODY_BYTES is refused with 413 before it is parsed: a rejection too.
    schema.config.checks.negative_data_rejection.expected_statuses.append("413")
    # Unknown query parameters are ignored, as by most HTTP APIs: no request is invalid for having one.
    schema.config.generation.allow_extra_parameters = False
    with ASGIClient(app) as sweep_client:
        yield Deployment(schema, headers, admin_headers,
                         {"dataset_id": dataset, "job_id": job, "project_id": project}, sweep_client)


@pytest.mark.parametrize(("label", "mode"), cases(), ids=lambda v: v if isinstance(v, str) else v.value)
def test_no_server_errors_and_responses_match_the_schema(api, label, mode):
    method, path = label.split(" ", 1)
    operation = api.schema[path][method]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
              database=None)
    def run(case):
        case.call_and_validate(headers=api.headers_for(path), excluded_checks=EXCLUDED)

    run()


class Raw:
    """A JSON number written as given: json.dumps cannot write these (too many digits, or infinite)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return f"Raw({self.text[:24]}...)"


# Values that are never storable: each must be refused with a 4xx wherever it is put.
UNSTORABLE_TEXT = ["nul\x00nul", "\x00"]
UNSTORABLE_JSON = ["lone \ud800 surrogate", "\udfff", 2**64, -(2**63) - 1, Raw("9" * 5000), Raw("1e999")]
# Values that may be fine in one place and wrong in another: never a 5xx.
ODD_TEXT = ["x" * 5000, "3000000000", "-3000000000", "9223372036854775808", "100000000000000000000",
            "-100000000000000000000", "9" * 5000, "a b;c'<>\\", "\u00e9\u200b\U0001f600"]
ODD_JSON = [2**31, -(2**31) - 1, 2**63 - 1, 1e308, -0.0, [], {}, None, True]

BODIES = {  # a request that succeeds, for each operation with a JSON body
    "POST /v1/jobs": lambda ids: {"type": "dpo", "base_model": "builtin:tiny-llama", "dataset_id": ids["dataset_id"],
                                  "name": "n", "seed": 1, "metadata": {"team": "nlp"},
                                  "hyperparameters": {"beta": 0.1, "max_steps": 2}},
    "POST /v1/checkpoints/{checkpoint_id}/score": lambda ids: {"texts": ["a"]},
    "POST /v1/graders/run": lambda ids: {
        "reward": {"type": "string_check", "name": "answer", "operation": "contains",
                   "input": "{{sample.output_text}}", "reference": "{{item.answer}}"},
        "completion": "The answer is 4.", "item": {"answer": "4"}},
    "POST /v1/chat/completions": lambda ids: {"model": "builtin:tiny-llama", "max_tokens": 1, "seed": 1,
                                              "messages": [{"role": "user", "content": "hi"}]},
    "POST /v1/fine_tuning/jobs": lambda ids: {
        "model": "builtin:tiny-llama", "training_file": ids["dataset_id"], "suffix": "s", "seed": 1,
        "metadata": {"team": "nlp"}, "method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.1}}}},
    "POST /v1/admin/projects": lambda ids: {"name": "p"},
    "POST /v1/admin/projects/{project_id}/keys": lambda ids: {"name": "k"},
}
UPLOADS = {  # the form of an upload that succeeds, for each multipart operation
    "POST /v1/datasets": {"kind": "preference", "name": "n", "filename": "d.jsonl"},
    "POST /v1/files": {"purpose": "fine-tune", "filename": "d.jsonl"},
}


def to_json(value: Any) -> bytes:
    raws: list[str] = []

    def mark(v: Any) -> Any:
        if isinstance(v, Raw):
            raws.append(v.text)
            return f"@raw{len(raws) - 1}@"
        if isinstance(v, dict):
            return {k: mark(x) for k, x in v.items()}
        if isinstance(v, list):
            return [mark(x) for x in v]
        return v

    text = json.dumps(mark(value))  # ASCII: lone surrogates travel as \ud800 escapes, as a client would send them
    for i, raw in enumerate(raws):
        text = text.replace(f'"@raw{i}@"', raw)
    return text.encode()


def json_places(value: Any, at: tuple = ()) -> Iterator[tuple[tuple, bool]]:
    """(path, is_key) of every key and value inside a JSON document."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield (*at, k), True
            yield from json_places(v, (*at, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from json_places(v, (*at, i))
    else:
        yield at, False


def replaced(document: Any, path: tuple, is_key: bool, new: Any) -> Any:
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(document, list):
        return [replaced(v, rest, is_key, new) if i == head else v for i, v in enumerate(document)]
    if is_key and not rest:
        if not isinstance(new, str):
            return document  # keys are text
        return {(new if k == head else k): v for k, v in document.items()}
    return {k: (replaced(v, rest, is_key, new) if k == head else v) for k, v in document.items()}


def sendable(value: Any, where: str) -> bool:
    """Whether a client can put `value` there at all (headers carry latin-1, URLs UTF-8)."""
    if where == "body":
        return True
    if not isinstance(value, str):
        return False
    try:
        value.encode("latin-1" if where == "header" else "utf-8")
    except UnicodeEncodeError:
        return False
    return True


def sweep(api: Deployment, label: str) -> Iterator[tuple[str, Any, bool, dict[str, Any]]]:
    """(place, value, must be refused, request) for each hostile value at each place of one operation."""
    method, path = label.split(" ", 1)
    operation = api.schema[path][method]
    params = {p.name: p.location for p in operation.iter_parameters() if p.name != "Authorization"}
    path_values = {name: api.ids.get(name, "x_0") for name, where in params.items() if where == "path"}
    body = BODIES[label](api.ids) if label in BODIES else None
    assert operation.body.items == [] or body is not None or label in UPLOADS, f"no baseline body for {label}"
    form = UPLOADS.get(label, {})
    every = [(v, True) for v in UNSTORABLE_TEXT] + [(v, False) for v in ODD_TEXT]
    json_every = every + [(v, True) for v in UNSTORABLE_JSON] + [(v, False) for v in ODD_JSON]

    def request(**changes: Any) -> dict[str, Any]:
        out = {"path_parameters": dict(path_values), "query": {}, "headers": {}, "body": body, "form": dict(form)}
        for part, (name, value) in changes.items():
            out[part] = value if name is None else {**out[part], name: value}
        return out

    for name, where in params.items():
        part = {"path": "path_parameters", "query": "query", "header": "headers"}[where]
        for value, unstorable in every:
            if sendable(value, where):
                yield f"{where} {name}", value, unstorable, request(**{part: (name, value)})
    if body is not None:
        for place, is_key in json_places(body):
            for value, unstorable in json_every:
                if not is_key or isinstance(value, str):
                    where = f"body {'key' if is_key else 'value'} {place}"
                    yield where, value, unstorable, request(body=(None, replaced(body, place, is_key, value)))
    if label in UPLOADS:
        for name in form:
            for value, unstorable in every:
                yield f"form {name}", value, unstorable, request(form=(name, value))


def send(api: Deployment, label: str, request: dict[str, Any]):
    method, path = label.split(" ", 1)
    operation = api.schema[path][method]
    case = operation.Case(path_parameters=request["path_parameters"], query=request["query"],
                          headers=request["headers"])
    headers = api.headers_for(path)
    extra: dict[str, Any] = {}
    if request["body"] is not None:
        headers = {**headers, "Content-Type": "application/json"}
        extra["data"] = to_json(request["body"])
    elif label in UPLOADS:
        form = dict(request["form"])
        extra["files"] = {"file": (form.pop("filename"), jsonl(preference_rows(2)))}
        extra["data"] = form
    response = case.call(session=api.client, headers=headers, **extra)
    case.validate_response(response, checks=[not_a_server_error, response_schema_conformance], headers=headers)
    return response


@pytest.mark.parametrize("label", sorted({label for label, _ in cases()}))
def test_unstorable_and_odd_values_everywhere(api, label):
    for place, value, unstorable, request in sweep(api, label):
        response = send(api, label, request)
        if unstorable:
            assert 400 <= response.status_code < 500, (place, value, response.status_code, response.text[:300])
