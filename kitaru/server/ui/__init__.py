"""The team server's web UI: plain HTML, CSS and JavaScript served by the same app, no build step.

Pages (``/ui/``, ``/ui/executions/<id>``, ``/ui/diff``, ``/ui/deployments``,
``/ui/deployments/<flow>``, ``/ui/login``) are one static shell,
``static/index.html``, whose script (``static/app.js``) reads the path and draws the page from
``/api/v1``. The shell and its assets carry no data, so they are served without a key (the login
page must be reachable); every piece of data comes from an endpoint that needs a key or the
session cookie, and every changing request carries the session's CSRF token.

Besides the shell, the UI adds one read endpoint the API does not have yet, the lineage graph
of an execution (``GET /ui/data/executions/{exec_id}/graph``, scope ``read``), built by
:func:`kitaru.lineage.build_graph` from the journal; the browser draws it as SVG.

The pages are strict about what they run: a Content-Security-Policy allows scripts, styles and
connections from this origin only (no inline script), and images from this origin or blobs the
page made itself (previews of image artifacts, fetched as bytes and never decoded server-side).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from importlib import resources
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastapi import FastAPI

    from kitaru.server._state import ServerState

__all__ = ["CSP", "mount"]

#: What a page may load and run: its own origin's script, style and API; images it made itself.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' blob: data:; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",  # frame-ancestors, for browsers that predate it
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
#: The files under static/ and how they are served (nothing else under the package is reachable).
_ASSETS = {
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
    "index.html": "text/html; charset=utf-8",
}


def _asset(name: str) -> bytes:
    return resources.files(__name__).joinpath("static", name).read_bytes()


def mount(app: FastAPI, server: ServerState, require: Callable[[str], Callable[..., Awaitable[Any]]]) -> None:
    """Add the UI's routes to ``app``; ``require(scope)`` is the app's own authentication check."""
    import anyio
    from fastapi import Depends
    from fastapi.responses import RedirectResponse, Response

    from kitaru.errors import KitaruNotFoundError
    from kitaru.server._state import clip

    read = Depends(require("read"))
    # Read once: the assets ship inside the package and do not change while the server runs.
    assets = {name: _asset(name) for name in _ASSETS}

    def shell() -> Response:
        return Response(assets["index.html"], media_type=_ASSETS["index.html"], headers=_HEADERS)

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse("/ui/", status_code=307)

    @app.get("/ui", include_in_schema=False)
    async def ui_root() -> RedirectResponse:
        return RedirectResponse("/ui/", status_code=307)

    @app.get("/ui/static/{name}", include_in_schema=False)
    async def static(name: str) -> Response:
        if name not in assets:
            raise KitaruNotFoundError(f"the web UI has no file {clip(name)}.")
        return Response(assets[name], media_type=_ASSETS[name], headers=_HEADERS)

    @app.get("/ui/data/executions/{exec_id}/graph", tags=["ui"])
    async def graph(exec_id: str, _: Any = read) -> dict[str, Any]:
        """The execution's lineage: nodes (inputs, checkpoint calls, waits, the result, other
        executions' artifacts) and edges (an artifact of one fed the other), for drawing."""
        from kitaru.lineage import build_graph

        await server.record(exec_id)  # 404 for an unknown id, like the rest of the API
        lineage = await anyio.to_thread.run_sync(build_graph, server.runtime.state, exec_id)
        result: dict[str, Any] = lineage.to_dict()
        return result

    # Every other path under /ui/ is a page of the one-page app: the script reads the path.
    @app.get("/ui/{page:path}", include_in_schema=False)
    async def page(page: str) -> Response:
        return shell()
