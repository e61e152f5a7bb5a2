"""The dashboard at `/ui` and its files, and the API docs' renderer, all served from the
package: no CDN, no request leaves the gateway's origin (docs/dashboard.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from litestar import Response, get
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
