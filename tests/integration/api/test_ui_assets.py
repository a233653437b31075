"""The dashboard at /ui: its page and every file it loads are served by the service itself, each with a
Content-Security-Policy allowing this server alone; no shipped file refers to another host (outside licence
comments); the page has no inline script or style for that policy to block; /ui stays out of the OpenAPI schema.
"""

import posixpath
import re
from html.parser import HTMLParser
from pathlib import Path

from fastapi.testclient import TestClient

from api.ui import CSP, STATIC_DIR

CONTENT_TYPES = {".js": "text/javascript", ".css": "text/css", ".html": "text/html"}
URL = re.compile(r"https?://", re.IGNORECASE)
LICENCE_COMMENT = re.compile(r"/\*!.*?\*/", re.DOTALL)  # a minifier keeps these: the vendor's notice
IMPORT = re.compile(r"""^\s*import\s[^;]*?from\s+["'](\.[^"']+)["'];""", re.MULTILINE)


class PageRefs(HTMLParser):
    """What the page loads (script src, link href) and anything a strict CSP would block."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.inline: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "script":
            self._in_script = "src" not in values
            self.urls += [values["src"]] if "src" in values else []
        if tag == "link" and values.get("href") and not values["href"].startswith("data:"):
            self.urls.append(values["href"])
        if tag == "style":
            self.inline.append("<style>")
        self.inline += [f"{tag} {name}" for name, _ in attrs if name == "style" or name.startswith("on")]

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline.append(f"inline script {data.strip()[:40]!r}")

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False


def test_the_page_and_everything_it_loads_come_from_the_service_with_a_strict_policy(client):
    redirect = client.get("/ui", follow_redirects=False)
    assert redirect.status_code == 307 and redirect.headers["location"] == "/ui/"
    page = client.get("/ui/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert policy == CSP and "default-src 'self'" in policy and "unsafe" not in policy and "*" not in policy
    refs = PageRefs()
    refs.feed(page.text)
    assert refs.inline == []
    assert set(refs.urls) == {"static/vendor/uplot/uPlot.min.css", "static/css/app.css",
                              "static/vendor/uplot/uPlot.iife.min.js", "static/js/main.js"}

    # Every module the page's entry point imports, and theirs, is there.
    pending, served = ["static/js/main.js", *refs.urls], set()
    while pending:
        path = pending.pop()
        if path in served:
            continue
        r = client.get(f"/ui/{path}")
        assert r.status_code == 200, path
        assert r.headers["content-type"].split(";")[0] == CONTENT_TYPES[Path(path).suffix], path
        assert r.headers["content-security-policy"] == CSP and r.headers["x-content-type-options"] == "nosniff"
        served.add(path)
        if path.endswith(".js"):
            pending += [posixpath.normpath(posixpath.join(posixpath.dirname(path), target))
                        for target in IMPORT.findall(r.text)]
    shipped_js = {f"static/{p.relative_to(STATIC_DIR)}" for p in STATIC_DIR.rglob("*.js")}
    assert shipped_js <= served  # no module is shipped that the page cannot reach, none is missing

    etag = client.get("/ui/static/js/main.js").headers["etag"]
    assert client.get("/ui/static/js/main.js", headers={"If-None-Match": etag}).status_code == 304


def test_no_shipped_file_refers_to_another_host():
    checked = 0
    for path in STATIC_DIR.rglob("*"):
        if not path.is_file() or path.name == "LICENSE":
            continue
        text = LICENCE_COMMENT.sub("", path.read_text(encoding="utf-8"))
        assert URL.findall(text) == [], f"{path.relative_to(STATIC_DIR)} names a URL of another host"
        checked += 1
    assert checked >= 15


def test_only_the_dashboards_files_are_served_and_none_is_in_the_schema(client):
    for path in ("/ui/static/../__init__.py", "/ui/static/%2e%2e/__init__.py", "/ui/static/js",
                 "/ui/static/vendor/uplot/LICENSE", "/ui/static/nope.js", "/ui/static/x%00.js"):
        r = client.get(path)
        assert r.status_code == 404, path
    assert not [p for p in client.get("/openapi.json").json()["paths"] if p.startswith("/ui")]


def test_behind_a_proxy_prefix_the_redirect_keeps_it(client):
    r = TestClient(client.app, root_path="/rlhf").get("/ui", follow_redirects=False)
    assert r.headers["location"] == "/rlhf/ui/"


def test_head_requests_answer_like_gets_without_a_body(client):
    # `curl -I`, link checkers and proxies' health checks ask with HEAD.
    for path in ("/ui/", "/ui/static/js/main.js"):
        get, head = client.get(path), client.head(path)
        assert head.status_code == 200, path
        assert head.content == b""
        assert head.headers["content-type"] == get.headers["content-type"]
        assert head.headers["content-security-policy"] == get.headers["content-security-policy"]
