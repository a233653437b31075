"""The API docs, Swagger UI at /docs and ReDoc at /redoc, served from files this service ships.

FastAPI's default pages load their JavaScript and CSS from a CDN and ReDoc's fonts from Google Fonts, so on
a machine without internet (an air-gapped GPU cluster is the usual case) they are blank. The fastapi-offline
package ships swagger-ui-dist's bundle and stylesheet and ReDoc's standalone bundle; they are served here
under `ASSETS_URL`, and no page refers to another host. ReDoc's bundle itself loads one image from its CDN
(the logo of the "API docs by Redocly" link in its sidebar): the copy served here shows an empty image instead.
"""

from functools import cache
from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles

ASSETS_URL = "/docs-assets"
ASSETS_DIR = Path(str(files("fastapi_offline") / "static"))
DOCS_URL = "/docs"
REDOC_URL = "/redoc"
REDOC_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"
EMPTY_SVG = "data:image/svg+xml,%3Csvg xmlns=%27http://www.w3.org/2000/svg%27/%3E"


def install_docs(app: FastAPI) -> None:
    """Serve /docs (with its OAuth2 redirect page), /redoc and their assets on `app`, which was built with
    `docs_url=None, redoc_url=None`."""

    @app.get(f"{ASSETS_URL}/redoc.standalone.js", include_in_schema=False)
    async def redoc_bundle() -> Response:
        # Registered before the mount below, which would otherwise serve the file as shipped.
        return Response(redoc_bundle_offline(), media_type="text/javascript")

    app.mount(ASSETS_URL, StaticFiles(directory=ASSETS_DIR), name="docs-assets")
    redirect_url = app.swagger_ui_oauth2_redirect_url or f"{DOCS_URL}/oauth2-redirect"

    @app.get(DOCS_URL, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = root_path(request)
        return get_swagger_ui_html(
            openapi_url=root + app.openapi_url, title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
            oauth2_redirect_url=root + redirect_url, init_oauth=app.swagger_ui_init_oauth,
            swagger_ui_parameters=app.swagger_ui_parameters,
        )

    @app.get(redirect_url, include_in_schema=False)
    async def swagger_ui_oauth2_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get(REDOC_URL, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = root_path(request)
        # with_google_fonts=False: ReDoc falls back to the system fonts instead of asking Google Fonts.
        return get_redoc_html(
            openapi_url=root + app.openapi_url, title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{ASSETS_URL}/favicon.png", with_google_fonts=False,
        )


def root_path(request: Request) -> str:
    """The prefix a proxy serves the app under (`--root-path`), so asset URLs work behind it too."""
    return request.scope.get("root_path", "").rstrip("/")


@cache
def redoc_bundle_offline() -> bytes:
    """ReDoc's standalone bundle with its CDN logo replaced by an empty inline image."""
    return (ASSETS_DIR / "redoc.standalone.js").read_bytes().replace(REDOC_LOGO.encode(), EMPTY_SVG.encode())
