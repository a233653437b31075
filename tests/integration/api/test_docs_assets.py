"""/docs and /redoc refer only to assets the service itself serves, so they render without internet."""

from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from tests.support import embedded_settings

CONTENT_TYPES = {".js": ("text/javascript", "application/javascript"), ".css": ("text/css",), ".png": ("image/png",)}
# Hosts FastAPI's default pages load from; none may appear anywhere in a page the service returns.
FOREIGN_HOSTS = ("cdn.jsdelivr.net", "unpkg.com", "fonts.googleapis.com", "fonts.gstatic.com", "fastapi.tiangolo.com")


class AssetRefs(HTMLParser):
    """The URLs a page loads: script src, link href, img src."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        wanted = {"script": "src", "link": "href", "img": "src"}.get(tag)
        self.urls += [value for name, value in attrs if name == wanted and value]


def asset_urls(html: str) -> list[str]:
    parser = AssetRefs()
    parser.feed(html)
    return parser.urls


@pytest.fixture(scope="module")
def docs_client(tmp_path_factory):
    """A client of the app on the embedded backend: the docs do not depend on the database."""
    app = create_app(embedded_settings(tmp_path_factory.mktemp("docs")))
    with TestClient(app) as client:
        yield client


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_every_asset_of_the_page_is_served_by_the_service(docs_client, page):
    r = docs_client.get(page)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    for host in FOREIGN_HOSTS:
        assert host not in r.text
    urls = asset_urls(r.text)
    # Swagger UI: its CSS, favicon and bundle; ReDoc: its favicon and standalone bundle.
    assert len(urls) == (3 if page == "/docs" else 2), urls
    for url in urls:
        absolute = urljoin(str(r.url), url)
        assert urlsplit(absolute).netloc == "testserver", url  # relative or same origin
        asset = docs_client.get(absolute)
        assert asset.status_code == 200, url
        suffix = url[url.rfind("."):]
        assert asset.headers["content-type"].split(";")[0] in CONTENT_TYPES[suffix], (url, asset.headers)
        assert len(asset.content) > 1000
    if page == "/redoc":  # the bundle's one image from a CDN, its sidebar's Redocly logo, is replaced
        bundle = docs_client.get("/docs-assets/redoc.standalone.js").text
        assert "cdn.redoc.ly" not in bundle and "API docs by Redocly" in bundle


def test_swagger_ui_loads_the_openapi_document_with_its_bearer_scheme_and_the_oauth2_redirect_page(docs_client):
    html = docs_client.get("/docs").text
    assert "url: '/openapi.json'" in html
    assert "oauth2RedirectUrl: window.location.origin + '/docs/oauth2-redirect'" in html
    schema = docs_client.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["HTTPBearer"] == {
        "type": "http", "scheme": "bearer",
        "description": "An API key of your project: `Authorization: Bearer rlhf_...`"}
    assert "/v1/jobs" in schema["paths"] and "/docs" not in schema["paths"]
    redirect = docs_client.get("/docs/oauth2-redirect")
    assert redirect.status_code == 200 and "window.opener.swaggerUIRedirectOauth2" in redirect.text


def test_behind_a_proxy_prefix_the_pages_refer_to_assets_under_it(docs_client):
    html = TestClient(docs_client.app, root_path="/rlhf").get("/docs").text
    assert asset_urls(html) == ["/rlhf/docs-assets/swagger-ui.css", "/rlhf/docs-assets/favicon.png",
                                "/rlhf/docs-assets/swagger-ui-bundle.js"]
    assert "url: '/rlhf/openapi.json'" in html
