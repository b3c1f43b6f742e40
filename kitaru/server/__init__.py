"""The kitaru team server: an ASGI app (FastAPI on uvicorn) over the Runner and a state store.

``kitaru server start`` runs it; :func:`create_app` builds it (for tests, or another ASGI server).
FastAPI and uvicorn come with the ``server`` extra and are imported only here. The API is
described in :mod:`kitaru.server._app` and served as OpenAPI at ``/openapi.json`` (``/docs``).
"""

from __future__ import annotations

import contextlib
import os
import socket
from typing import TYPE_CHECKING, Any

from kitaru._install import install_hint
from kitaru.errors import KitaruConfigError, KitaruMissingDependencyError

if TYPE_CHECKING:
    from fastapi import FastAPI

__all__ = ["app_from_env", "create_app", "serve"]

#: How the uvicorn workers of `kitaru server start --workers N` learn their configuration.
_ENV_STACK = "KITARU_SERVER_STACK"
_ENV_STATE = "KITARU_SERVER_STATE"
_ENV_TICK = "KITARU_SERVER_TICK"
_ENV_DRIVERS = "KITARU_SERVER_DRIVERS"
_ENV_MAX_BODY = "KITARU_SERVER_MAX_BODY"


def require_server_extra() -> None:
    """Raise KitaruMissingDependencyError naming the extra when FastAPI or uvicorn is missing."""
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise KitaruMissingDependencyError(
            f"the kitaru server needs FastAPI and uvicorn ({exc.name} is not installed). Install the "
            f"server extra: {install_hint('server')}"
        ) from None


def create_app(
    stack: str | None = None,
    state: str | None = None,
    *,
    tick: float | None = None,
    own_process: bool = False,
) -> FastAPI:
    """The app over the stack ``stack`` (default: the active one), its state store replaced by
    ``state`` (a ``sqlite:///`` or ``postgresql://`` URI) when given. ``own_process``: the app is
    all its process serves (``kitaru server start``), so it may tune the process for that."""
    require_server_extra()
    from kitaru._engine.runtime import Runtime, set_runtime
    from kitaru.local_stack import LocalOrchestrator
    from kitaru.server._app import build_app
    from kitaru.server._state import DRIVERS, MAX_BODY, ServerState
    from kitaru.stack import load_stack, orchestrator_of
    from kitaru.store import KeyStore

    drivers_text = os.environ.get(_ENV_DRIVERS, "").strip()
    if drivers_text and not (drivers_text.isdigit() and int(drivers_text) > 0):
        raise KitaruConfigError(
            f"{_ENV_DRIVERS}={drivers_text!r} is not a positive whole number (how many executions "
            f"one server process drives at once). Set it to e.g. {DRIVERS}, or unset it."
        )
    drivers = int(drivers_text or DRIVERS)
    max_body_text = os.environ.get(_ENV_MAX_BODY, "").strip()
    if max_body_text and not (max_body_text.isascii() and max_body_text.isdigit() and int(max_body_text) > 0):
        raise KitaruConfigError(
            f"{_ENV_MAX_BODY}={max_body_text!r} is not a positive whole number (the largest request "
            f"body the server reads, in bytes). Set it to e.g. {MAX_BODY}, or unset it."
        )
    max_body = int(max_body_text or MAX_BODY)
    loaded = load_stack(stack, **({"state": state} if state else {}))
    store = loaded.state_store()
    state_uri = state or str(getattr(loaded, "state_uri", ""))
    if not isinstance(store, KeyStore):
        raise KitaruConfigError(
            f"the state store {type(store).__name__} cannot back a kitaru server (it keeps no API "
            "keys): start the server with --state postgresql://... (a team) or sqlite:///... (one user)."
        )
    runtime = Runtime(store, loaded.artifact_store(), stack_name=loaded.name)
    set_runtime(runtime)  # flows the server drives, and code they import, see the same stores
    orchestrator: Any = orchestrator_of(loaded)
    if isinstance(orchestrator, LocalOrchestrator):
        orchestrator = LocalOrchestrator(stack_name=loaded.name, runtime=runtime)
    if tick is None:
        tick = float(os.environ.get(_ENV_TICK, "1.0"))
    return build_app(
        ServerState(
            runtime,
            orchestrator,
            state_uri=state_uri,
            tick=tick,
            drivers=drivers,
            own_process=own_process,
            max_body=max_body,
        )
    )


def _log_to_stderr() -> None:
    """Show the server's own events (recoveries, deadlines, drives) beside uvicorn's lines.
    Messages name executions and keys by name only, never a key itself."""
    import logging

    logger = logging.getLogger("kitaru.server")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def app_from_env() -> FastAPI:
    """The app as ``kitaru server start`` configured it (uvicorn's factory in each worker)."""
    _log_to_stderr()
    return create_app(
        os.environ.get(_ENV_STACK) or None, os.environ.get(_ENV_STATE) or None, own_process=True
    )


def serve(
    host: str = "127.0.0.1",
    port: int = 8270,
    *,
    stack: str | None = None,
    state: str | None = None,
    workers: int = 1,
    access_log: bool = False,
) -> None:
    """Run the server until interrupted (``workers`` processes share the port); ``access_log``
    logs a line per request. The server's own events (drives, recoveries, deadlines) are logged
    either way."""
    require_server_extra()
    import uvicorn

    _log_to_stderr()

    if stack:
        os.environ[_ENV_STACK] = stack
    if state:
        os.environ[_ENV_STATE] = state
    if workers > 1:
        from uvicorn.supervisors import Multiprocess

        app = "kitaru.server:app_from_env"
        config = uvicorn.Config(
            app, factory=True, host=host, port=port, workers=workers, access_log=access_log
        )
        with contextlib.suppress(KeyboardInterrupt):
            Multiprocess(config, sockets=[listening_socket(config)]).run()
    else:
        # Built here, so a stack that cannot be served fails before the port is bound.
        uvicorn.run(create_app(stack, state, own_process=True), host=host, port=port, access_log=access_log)


def listening_socket(config: Any) -> socket.socket:
    """The shared listening socket of ``--workers N``, with TCP_NODELAY set.

    Each worker rebuilds the socket from its descriptor without its protocol number, so asyncio
    does not set TCP_NODELAY on the connections it accepts; a response written in two parts then
    waits for the client's delayed ACK (40 ms on every keep-alive request). Linux copies the option
    from the listening socket to each accepted one."""
    sock: socket.socket = config.bind_socket()
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock
