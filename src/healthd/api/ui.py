"""The status page: ``GET /`` for a browser, and the few files it is made of (``/ui/...``).

The files ship in the package (``healthd/api/page/``) and are served as they are: no build
step, nothing fetched from elsewhere. They hold no data; the page reads the same JSON API as
any client, with the token in ``Authorization`` where one is needed, so they are open on every
listener (a browser cannot send a bearer token when it loads a page).
"""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import PurePath

from healthd.api.messages import HttpError, Response

PAGE = "index.html"
_TYPES = {
    ".js": "text/javascript; charset=utf-8",  # ES modules: app.js imports the others
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
_FILES = resources.files("healthd.api").joinpath("page")
# Name under /ui/ -> content type: the page's files, listed once from the package. Only
# these names are served; a requested path is never joined to a directory.
ASSETS = {
    entry.name: _TYPES[PurePath(entry.name).suffix]
    for entry in _FILES.iterdir()
    if PurePath(entry.name).suffix in _TYPES
}
ASSET_PATHS = frozenset(f"/ui/{name}" for name in ASSETS)
# The page runs only its own script and style, talks only to this daemon, and is not framed
# (a framed page could be clicked through to "pause" by another site).
_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = [
    ("Content-Security-Policy", _POLICY),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
]


@functools.cache
def _read(name: str) -> bytes:
    return _FILES.joinpath(name).read_bytes()


def wants_page(accept: str) -> bool:
    """A browser navigating asks for text/html; curl and API clients (``*/*`` or JSON) get
    the JSON index they always had."""
    return "text/html" in accept.lower()


def page() -> Response:
    return Response(200, _read(PAGE), "text/html; charset=utf-8", list(SECURITY_HEADERS))


def asset(path: str) -> Response:
    name = path.removeprefix("/ui/")
    content_type = ASSETS.get(name)
    if content_type is None:
        raise HttpError(404, f"no such file {path!r}")
    return Response(200, _read(name), content_type, list(SECURITY_HEADERS))
