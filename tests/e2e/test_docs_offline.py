"""/docs and /redoc render in a real headless Chromium with every host but the API server blocked.

The browser is Debian's `chromium` driven by Playwright (tests/e2e/browser_support.py).
"""

from urllib.parse import urlsplit

import pytest

from tests.e2e.browser_support import chromium, offline_context, same_origin
from tests.e2e.e2e_support import Deployment
from tests.support import embedded_settings

VIEWPORT = {"width": 1280, "height": 900}  # the size of docs/swagger-offline.png
# The server is reached by a name, as on a real deployment: Swagger UI never asks its online validator about a
# spec on localhost, so a test on 127.0.0.1 could miss that request.
HOST = "docs.test"
WAIT_MS = 60_000  # a 2-core machine shared with a whole test suite


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    """The API process alone on the embedded backend: the docs need no worker."""
    root = tmp_path_factory.mktemp("docs-offline")
    dep = Deployment(embedded_settings(root), root)
    try:
        dep.start_api()
        yield dep
    finally:
        dep.stop()


@pytest.fixture(scope="module")
def browser():
    with chromium(HOST) as browser:
        yield browser


@pytest.fixture
def offline_page(api, browser):
    """A page whose requests to any origin but the API server's are aborted; yields (page, origin, requests)."""
    origin = f"http://{HOST}:{api.port}"
    context = offline_context(browser, origin, viewport=VIEWPORT)
    page = context.new_page()
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    yield page, origin, requests
    context.close()


def test_swagger_ui_renders_the_operations_and_authorizes_with_the_network_blocked(api, offline_page, tmp_path):
    page, origin, requests = offline_page
    page.goto(f"{origin}/docs")
    create_job = page.locator("#operations-jobs-create_job_v1_jobs_post")
    create_job.wait_for(timeout=WAIT_MS)
    assert create_job.locator(".opblock-summary-method").inner_text() == "POST"
    assert create_job.locator(".opblock-summary-path").get_attribute("data-path") == "/v1/jobs"
    assert page.locator(".opblock").count() >= 20
    assert "rlhf-service" in page.locator(".information-container .title").inner_text()
    screenshot = tmp_path / "swagger-offline.png"
    page.screenshot(path=screenshot)
    assert screenshot.stat().st_size > 10_000

    # The Authorize button takes a project key, and "Try it out" then sends it as a bearer token.
    key = api.client.headers["Authorization"].removeprefix("Bearer ")
    page.locator(".auth-wrapper button.authorize").click()
    page.locator(".modal-ux input[type=text], .modal-ux input[type=password]").first.fill(key)
    page.locator(".modal-ux .auth-btn-wrapper button.authorize").click()
    page.locator(".modal-ux .auth-btn-wrapper button.btn-done").click()
    list_jobs = page.locator("#operations-jobs-list_jobs_v1_jobs_get")
    list_jobs.locator(".opblock-summary").click()
    list_jobs.locator("button.try-out__btn").click()
    with page.expect_response(lambda r: urlsplit(r.url).path == "/v1/jobs", timeout=WAIT_MS) as sent:
        list_jobs.locator("button.execute").click()
    assert sent.value.request.headers["authorization"] == f"Bearer {key}"
    assert sent.value.status == 200
    shown_status = list_jobs.locator(".live-responses-table tr.response td.response-col_status").first
    shown_status.wait_for(timeout=WAIT_MS)
    assert shown_status.inner_text().strip() == "200"

    assert [url for url in requests if not same_origin(url, origin)] == []
    assert f"{origin}/docs-assets/swagger-ui-bundle.js" in requests and f"{origin}/openapi.json" in requests


def test_redoc_renders_the_operations_with_the_network_blocked(offline_page):
    page, origin, requests = offline_page
    page.goto(f"{origin}/redoc")
    create_job = page.locator("[data-section-id='tag/jobs/operation/create_job_v1_jobs_post']")
    create_job.wait_for(timeout=WAIT_MS)
    assert "Create Job" in create_job.locator("h2").first.inner_text()
    assert [url for url in requests if not same_origin(url, origin)] == []
    assert f"{origin}/docs-assets/redoc.standalone.js" in requests
