"""The dashboard at `/ui` and its files, and the API docs' renderer, all served from the
package: no CDN, no request leaves the gateway's origin (docs/dashboard.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from litestar import Response, Router, get
from litestar.datastructures import CacheControlHeader
from litestar.openapi.plugins import RedocRenderPlugin
from litestar.static_files import create_static_files_router

UI_DIR = Path(__file__).resolve().parent.parent / "ui"
STATIC = "/ui/static"
REDOC_JS = f"{STATIC}/vendor/redoc/redoc.standalone.js"
FAVICON = f"{STATIC}/favicon.svg"

# The page may talk to its own origin only (HTTP and WebSocket), run only its own scripts, and
# be framed by no one: a stray external reference fails in the browser instead of leaking.
_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
# Redoc styles itself and starts from inline code, and runs its search in a worker made from a
# blob: the same rule otherwise, so the API docs cannot fetch from a CDN either.
_DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:; connect-src 'self'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
_PAGE_HEADERS = {
    "content-security-policy": _CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-cache",
}


def _index() -> bytes:
    return (UI_DIR / "index.html").read_bytes()


@get(["/ui", "/ui/"], include_in_schema=False, sync_to_thread=False)
def dashboard() -> Response[bytes]:
    """The dashboard page."""
    return Response(_index(), media_type="text/html; charset=utf-8", headers=_PAGE_HEADERS)


def ui_handlers() -> list[Any]:
    """The page and its static files (scripts, styles, the vendored Redoc)."""
    static = create_static_files_router(
        path=STATIC,
        directories=[UI_DIR / "static"],
        name="ui-static",
        cache_control=CacheControlHeader(no_cache=True),
        include_in_schema=False,
    )
    return [dashboard, static]


def redoc_plugin() -> RedocRenderPlugin:
    """Redoc at `/openapi`, from the copy vendored in this package, without Google Fonts."""
    return RedocRenderPlugin(
        js_url=REDOC_JS,
        google_fonts=False,
        favicon=f"<link rel='icon' type='image/svg+xml' href='{FAVICON}'>",
        path="/",
    )


def _docs_policy(response: Response[Any]) -> Response[Any]:
    if str(response.media_type).startswith("text/html"):
        response.headers["content-security-policy"] = _DOCS_CSP
    return response


def openapi_router(path: str) -> Router:
    """The router Litestar serves the API docs on, with the docs' content security policy."""
    return Router(path, route_handlers=[], include_in_schema=False, after_request=_docs_policy)
