"""
The operator's page (docs/admin.md, "The operator's page"): four files
shipped in the package (C{refresherd/ui/}), served as they are by the admin
listener with a strict Content-Security-Policy.  The page holds no secret:
it asks for the admin token in the browser, and every figure it shows comes
from the admin API's JSON routes.
"""

from __future__ import annotations

from importlib.resources import files

import attrs

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
"""No inline script or style, nothing from another origin, never framed."""

HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"Content-Security-Policy", CSP.encode("ascii")),
    (b"X-Content-Type-Options", b"nosniff"),
    (b"Referrer-Policy", b"no-referrer"),
    (b"Cache-Control", b"no-store"),
)
"""The headers of every answer of the page's routes (errors included)."""

KINDS = {
    "html": b"text/html; charset=utf-8",
    "css": b"text/css; charset=utf-8",
    "js": b"text/javascript; charset=utf-8",
    "svg": b"image/svg+xml",
}


FILES = ("page.css", "page.js", "icon.svg")
"""What the page loads (C{GET /ui/{name}}); nothing else is served."""


@attrs.frozen
class Asset:
    content_type: bytes
    body: bytes


@attrs.frozen
class PageFiles:
    """The page (C{GET /}) and the files it loads by name (C{GET /ui/{name}})."""

    index: Asset
    files: dict[str, Asset]


def load_page() -> PageFiles:
    """
    The page's files, read once from the package: a fixed table, so that no
    name a request gives is ever a path.
    """
    folder = files("refresherd") / "ui"

    def read(name: str) -> Asset:
        return Asset(KINDS[name.rpartition(".")[2]], (folder / name).read_bytes())

    return PageFiles(read("index.html"), {name: read(name) for name in FILES})
