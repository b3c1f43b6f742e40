"""The API's docs page (``/docs``): Swagger UI over ``/openapi.json``, served by the server itself.

FastAPI's own page loads Swagger UI from a CDN. On a network without internet (where team
servers often run) that page stays blank, and a script fetched from a third party would run in
the origin that holds the UI's session cookie and can read its CSRF token. Here the page, its
start-up script and Swagger UI's files (the ``swagger-ui-bundle`` package, in the ``server``
extra) all come from this origin, under a policy that allows nothing else.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastapi import FastAPI

__all__ = ["DOCS_CSP", "mount_docs"]

#: Scripts and the API from this origin only. Swagger UI sets style attributes on its elements,
#: which a policy without 'unsafe-inline' for styles would strip; no script may be inline.
DOCS_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
_HEADERS = {
    "Content-Security-Policy": DOCS_CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

_PAGE = b"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>kitaru team server API</title>
<link rel="stylesheet" href="/docs/static/swagger-ui.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="/docs/static/swagger-ui-bundle.js"></script>
<script src="/docs/static/start.js"></script>
</body>
</html>
"""

# A separate file, not an inline script, so the policy can refuse every inline script.
_START = b"""window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  presets: [SwaggerUIBundle.presets.apis],
  layout: "BaseLayout",
});
"""

#: The files of the bundle the page uses, and their types (nothing else in it is reachable).
_BUNDLED = {
    "swagger-ui.css": "text/css; charset=utf-8",
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
}


def mount_docs(app: FastAPI) -> None:
    """Add ``/docs`` and its files to ``app`` (built with ``docs_url=None``)."""
    from fastapi.responses import Response

    from kitaru.errors import KitaruNotFoundError
    from kitaru.server._state import clip

    files: dict[str, bytes] = {}

    def bundled(name: str) -> bytes:
        # Read on first use and kept: the files ship in a package and do not change while the
        # server runs; a server nobody asks for docs never reads them.
        if name not in files:
            try:
                from swagger_ui_bundle import swagger_ui_path
            except ImportError:
                from kitaru._install import install_hint

                raise KitaruNotFoundError(
                    "the API docs page needs the swagger-ui-bundle package, part of the server "
                    f"extra: {install_hint('server')}. The schema itself is at /openapi.json."
                ) from None
            files[name] = swagger_ui_path.joinpath(name).read_bytes()
        return files[name]

    @app.get("/docs", include_in_schema=False)
    async def docs() -> Response:
        return Response(_PAGE, media_type="text/html; charset=utf-8", headers=_HEADERS)

    @app.get("/docs/static/{name}", include_in_schema=False)
    async def docs_file(name: str) -> Response:
        if name == "start.js":
            return Response(_START, media_type="text/javascript; charset=utf-8", headers=_HEADERS)
        if name not in _BUNDLED:
            raise KitaruNotFoundError(f"the docs page has no file {clip(name)}.")
        return Response(bundled(name), media_type=_BUNDLED[name], headers=_HEADERS)
