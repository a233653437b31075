"""The dashboard at /ui: one HTML page and its static files (ES modules, CSS, vendored uPlot), shipped in the
package, loading nothing from another host.

The page calls the API from the browser with the key the user signs in with; these routes only serve files,
each with a Content-Security-Policy that allows this server alone, and stay out of the OpenAPI schema.
"""

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, RedirectResponse, Response

from api.docs import root_path
from api.errors import NotFound

STATIC_DIR = Path(__file__).parent / "static"
# No inline script or style, no other origin: the page's own files and its calls to this API.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
           "Cache-Control": "no-cache"}  # revalidated each time: an upgraded server's page is never stale
MEDIA_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml",
               ".png": "image/png", ".txt": "text/plain", ".md": "text/plain"}

router = APIRouter(prefix="/ui", include_in_schema=False)


@router.get("")
def ui_root(request: Request) -> RedirectResponse:
    # The page loads its files by relative URLs, which resolve under /ui/ only.
    return RedirectResponse(f"{root_path(request)}/ui/", headers=HEADERS)


@router.api_route("/", methods=["GET", "HEAD"])
def ui_page() -> FileResponse:
    """The dashboard's single page; its views are chosen by the URL's #fragment."""
    return _file(STATIC_DIR / "index.html")


@router.api_route("/static/{path:path}", methods=["GET", "HEAD"])
def ui_static(path: str, request: Request) -> Response:
    """A file of the dashboard (JavaScript module, stylesheet, vendored library)."""
    try:
        target = (STATIC_DIR / path).resolve()
    except (OSError, ValueError):  # a NUL, a loop of links: names no file
        target = STATIC_DIR
    if not target.is_relative_to(STATIC_DIR.resolve()) or not target.is_file() or target.suffix not in MEDIA_TYPES:
        raise NotFound(f"no dashboard file {path[:200]!r}")
    response = _file(target)
    if request.headers.get("if-none-match") == response.headers["etag"]:
        return Response(status_code=304, headers={**HEADERS, "ETag": response.headers["etag"]})
    return response


def _file(path: Path) -> FileResponse:
    # With the stat given, the ETag is set now (not when sent), for the If-None-Match check above.
    return FileResponse(path, media_type=MEDIA_TYPES[path.suffix], headers=HEADERS, stat_result=path.stat())
