"""Schemathesis against the service's own OpenAPI schema: no 5xx, every response matches its schema.

Examples are bounded so the suite stays fast. The app runs in-process on the embedded deployment,
authenticated as a project; well-formed (positive) and malformed (negative) requests are both sent.
"""

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from api.main import create_app
from core.settings import Settings
from support import embedded_settings, new_project_key

# Schema-valid requests the service refuses on purpose (a cursor naming nothing, a file without a
# known suffix, an unknown dataset id) are business rules, not schema gaps: that one check is off.
EXCLUDED = [positive_data_acceptance]


def cases() -> list[tuple[str, GenerationMode]]:
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(Settings(database_url="sqlite://")))
    out = []
    for result in schema.get_all_operations():
        operation = result.ok()
        out.append((operation.label, GenerationMode.POSITIVE))
        if operation.definition.raw.get("parameters") or operation.definition.raw.get("requestBody"):
            out.append((operation.label, GenerationMode.NEGATIVE))  # nothing to get wrong otherwise
    return out


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    deployment = embedded_settings(tmp_path_factory.mktemp("fuzz"))
    headers = {"Authorization": f"Bearer {new_project_key(deployment)}"}
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(deployment))
    # A body over MAX_JSON_BODY_BYTES is refused with 413 before it is parsed: a rejection too.
    schema.config.checks.negative_data_rejection.expected_statuses.append("413")
    return schema, headers


@pytest.mark.parametrize(("label", "mode"), cases(), ids=lambda v: v if isinstance(v, str) else v.value)
def test_no_server_errors_and_responses_match_the_schema(api, label, mode):
    schema, headers = api
    method, path = label.split(" ", 1)
    operation = schema[path][method]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
              database=None)
    def run(case):
        case.call_and_validate(headers=headers, excluded_checks=EXCLUDED)

    run()
