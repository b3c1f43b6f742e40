"""The team server's ASGI app (FastAPI): ``/healthz``, ``/login``, ``/logout`` and ``/api/v1``.

Requests never drive an execution themselves: an answer, a retry, a resume or a replay records
what it must and hands the driving to a background task (or to the stack's orchestrator, which
starts a job elsewhere), so a request returns in store time whatever the flow does next.

The API, for its clients (the CLI, ``KitaruClient()``, workers, the web UI):

- JSON everywhere; every error, the framework's own included, is
  ``{"error": {"type": "KitaruStateError", "message": ...}}`` (a request that does not fit its
  endpoint adds ``"detail"``: where and what, never the value sent) with 400 (a bad request),
  404 (no such id or endpoint), 409 (the state does not allow it), 413 (a body over
  ``KITARU_SERVER_MAX_BODY`` bytes), 422 (a value does not fit), 401 (no or a bad key), 403 (the
  key lacks the scope, or a cookie request lacks its CSRF token), 500 (a bug: logged, no trace
  in the answer).
- Lists are pages, newest first: ``?limit=`` (at most 500) and ``?cursor=`` (the previous page's
  ``next_cursor``; None on the last page).
- Logs are server-sent events (``text/event-stream``): ``event: log`` with the entry as JSON and
  its journal position as ``id`` (``Last-Event-ID`` or ``?after=`` continues), then ``event: end``
  when the execution is not running any more (with ``?follow=true``) or at once (without).
"""

from __future__ import annotations

import base64
import functools
import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict
from typing import Annotated, Any

import anyio
from fastapi import Body, Depends, FastAPI, Form, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from kitaru.errors import (
    KitaruConfigError,
    KitaruError,
    KitaruNotFoundError,
    KitaruStoreError,
    KitaruUsageError,
)
from kitaru.remote import _wire
from kitaru.server import _auth
from kitaru.server._state import ServerState, clip
from kitaru.store import ArtifactRecord, ExecutionRecord, TagMove, TagRequest

__all__ = ["build_app"]

log = logging.getLogger("kitaru.server")

#: Serializers whose bytes are JSON, so a preview shows them without running any code.
_JSON_SERIALIZERS = frozenset({"json", "pydantic", "dataclass"})
_PREVIEW_LIMIT = 1 << 20


class _Refused(Exception):
    """An authentication (401) or authorization (403) refusal."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _TooLarge(HTTPException):
    """A request body over the server's limit (413); raised while the body is read, so FastAPI
    passes it on as it is (any other error reading a body becomes its 400)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, _too_large(limit))


def _too_large(limit: int) -> str:
    return (
        f"the request body is larger than this server takes ({limit} bytes). Send less (a large "
        "value belongs in an artifact), or raise KITARU_SERVER_MAX_BODY where the server starts."
    )


def _error(
    status: int, type_: str, message: str, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    if status == 401:
        headers = {**(headers or {}), "WWW-Authenticate": "Bearer"}
    body = {"error": {"type": type_, "message": message, **extra}}
    return JSONResponse(body, status_code=status, headers=headers)


#: Why a body that is valid JSON cannot be read: nested past the parser's depth (about 1,000).
_TOO_DEEP = "the body is JSON nested too deeply to read (keep it within a few hundred levels)"

#: The largest deployment version a request may name: the stores keep versions as 32-bit
#: integers (PostgreSQL's INTEGER), and a larger number failed the query (a 500) instead of
#: matching nothing.
_MAX_VERSION = 2**31 - 1

#: A store's failure, as a client other than a worker sees it (the details go to the log).
_STORE_FAILED = (
    "the server's state store failed on this request (its log has the details). Retry; if it "
    "keeps failing, tell whoever runs the server."
)

#: An unexpected failure, as the client sees it (the trace goes to the server's log only).
_INTERNAL = (
    "the server failed on this request (a bug; its log has the details). Retry, and report it "
    "with the server's log if it happens again."
)


#: The answer endpoint's path (``scope["path"]`` is percent-decoded, as the router sees it). An
#: id with a NUL (no store keeps one) is left to the route, which refuses it: the match that
#: is made anyway checks it, at no cost of its own.
_ANSWER_PATH = re.compile(r"/api/v1/executions/([^/\x00]+)/waits/([^/\x00]+)")


class _Front:
    """The outermost app of our own: counts the HTTP requests whose response has not started,
    so the drivers let a burst be answered before they take the loop (see
    ``ServerState._requests_answered``), and answers the hottest request itself.

    That request is ``POST /api/v1/executions/{id}/waits/{name}`` with a bearer key allowed to
    answer and a ``{"value": ...}`` body: a burst of people (or a workflow engine) answering at
    once. Through FastAPI's routing, exception and exit-stack layers it cost about as much again
    as the answer itself; here it is read, checked and answered directly. Anything else about it
    (no key, a wrong one, a session cookie, a body that is not ``{"value": ...}``) goes on to the
    FastAPI route, with the body already read handed on, so every refusal is the one the route
    gives and is documented once, in the OpenAPI schema."""

    def __init__(self, app: Any, server: ServerState) -> None:
        self.app = app
        self.server = server
        self.max_body = server.max_body

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        server = self.server
        server.request_started()
        pending = True

        async def started(message: Any) -> None:
            nonlocal pending
            if pending and message["type"] == "http.response.start":
                pending = False
                server.request_answered()
            await send(message)

        try:
            match = _ANSWER_PATH.fullmatch(scope["path"]) if scope["method"] == "POST" else None
            if match is None or scope.get("root_path"):
                await self.app(scope, _limited(receive, self.max_body), started)
            else:
                await self._answer(scope, receive, started, match[1], match[2])
        finally:
            if pending:
                server.request_answered()

    async def _answer(self, scope: Any, receive: Any, send: Any, exec_id: str, name: str) -> None:
        header = next((v for k, v in scope["headers"] if k == b"authorization"), None)
        if header is None:  # a session, or no credentials: the route decides
            await self.app(scope, _limited(receive, self.max_body), send)
            return
        chunks = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away before sending its answer
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:  # the route's limit, checked as the body arrives
                await _send_json(send, 413, _usage_error(_too_large(self.max_body)))
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        who = await _bearer(self.server, header.decode("latin-1"))
        value: Any = _NO_VALUE
        if who is not None and who.allows("answer"):
            try:
                data = json.loads(body)
            except (ValueError, RecursionError):  # not JSON, or nested past the parser's depth
                data = None
            if isinstance(data, dict):
                value = data.get("value", _NO_VALUE)
        if value is _NO_VALUE:
            await self.app(scope, _replaying(body, receive), send)
            return
        try:
            await self.server.answer(exec_id, name, value)
        except KitaruError as exc:
            await _send_json(send, _wire.status_of(exc), _client_error(exc, scope["path"]))
            return
        except Exception:  # what the routes' error layer would do: log the trace, answer in JSON
            log.exception("answering wait %r of execution %r failed", name, exec_id)
            await _send_json(send, 500, {"error": {"type": "InternalError", "message": _INTERNAL}})
            return
        await _send_json(send, 202, {"id": exec_id, "wait": name, "accepted": True})


class _ServerApp(FastAPI):
    """FastAPI behind ``_Front``: the answers the front handles skip FastAPI's own per-request
    work too (its telemetry check, Starlette's scope setup, the error, telemetry and body-limit
    middleware); everything else, lifespan included, goes on to FastAPI as before (an unexpected
    error in the front is still a 500, from uvicorn)."""

    def __init__(self, server: ServerState, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.kitaru_server = server
        self._front = _Front(super().__call__, server)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self._front(scope, receive, send)


_NO_VALUE: Any = object()


def _client_error(exc: KitaruError, path: str) -> dict[str, Any]:
    """The JSON of ``exc`` for the client of ``path``. A store's own failure names its database
    (host, port, name, user) or files: the server's business, not every key holder's, so it is
    logged and the client is pointed at the log; a worker's store call keeps the message (it
    acts on it, and holds a runner key, not a person's)."""
    if type(exc) is KitaruStoreError and not path.startswith("/api/v1/store/"):
        log.warning("%s: %s", path, exc)
        return {"error": {"type": "KitaruStoreError", "message": _STORE_FAILED}}
    return _wire.error_to_json(exc)


def _usage_error(message: str) -> dict[str, Any]:
    return {"error": {"type": "KitaruUsageError", "message": message}}


def _limited(receive: Any, limit: int) -> Any:
    """``receive`` refusing a body (_TooLarge) once more than ``limit`` bytes of it came."""
    seen = 0

    async def limited() -> Any:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise _TooLarge(limit)
        return message

    return limited


def _replaying(body: bytes, receive: Any) -> Any:
    """``receive`` with the request body, already read, given again first."""
    given = False

    async def replay() -> Any:
        nonlocal given
        if given:
            return await receive()
        given = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


async def _send_json(send: Any, status: int, content: Any) -> None:
    """What ``JSONResponse(content, status_code=status)`` sends, byte for byte."""
    body = json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()
    headers = [(b"content-length", str(len(body)).encode()), (b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _bearer(server: ServerState, header: str) -> _auth.Principal | None:
    """Who an ``Authorization`` header names, if it is a bearer key that is valid; else None."""
    scheme, _, key = header.partition(" ")
    key = key.strip()
    key_id = _auth.parse_key(key) if scheme.lower() == "bearer" else None
    record = await server.key(key_id) if key_id else None
    if record is None or not _auth.verify_key(key, record):
        return None
    return _auth.Principal(record.id, record.name, frozenset(record.scopes), "bearer")


def _embedded(body: bytes, field: str) -> Any:
    """The one field of a JSON object body, or the 422 FastAPI would give (``Body(embed=True)``)."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:
        deep = isinstance(exc, RecursionError)
        raise RequestValidationError(
            [{"type": "json_invalid", "loc": ("body", 0), "input": {},
              "msg": _TOO_DEEP if deep else "JSON decode error",
              "ctx": {"error": "nested too deeply" if deep else str(exc)}}]
        ) from None  # fmt: skip
    if not isinstance(data, dict) or field not in data:
        raise RequestValidationError(
            [{"type": "missing", "loc": ("body", field), "msg": "Field required", "input": None}]
        )
    return data[field]


def _http_refusal(request: Request, exc: HTTPException) -> tuple[str, str]:
    """The error type and message of a refusal the framework raised (or ``_TooLarge``)."""
    what = f"{request.method} {clip(request.url.path)}"
    if isinstance(exc, _TooLarge):
        return "KitaruUsageError", str(exc.detail)
    if exc.status_code == 404:
        return "KitaruNotFoundError", (
            f"this server has no endpoint {what}. The API is listed at /docs (OpenAPI: /openapi.json)."
        )
    if exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow", "")
        return "KitaruUsageError", (
            f"{what} is not allowed (this path takes {allowed or 'other methods'}). "
            "The API is listed at /docs."
        )
    if exc.status_code == 400:
        return "KitaruUsageError", (
            f"the body of {what} could not be read ({exc.detail}): send a JSON object with "
            "`Content-Type: application/json` (nested at most a few hundred levels), or the form "
            "the endpoint documents at /docs."
        )
    kind = "KitaruUsageError" if exc.status_code < 500 else "KitaruError"
    return kind, f"{what}: {exc.detail}"


def _invalid_message(request: Request, problems: list[dict[str, Any]]) -> str:
    """What is wrong with a request that does not fit its endpoint, part by part."""
    where = {"query": "query parameter", "path": "path part", "body": "body field", "header": "header"}
    parts = []
    for p in problems:
        loc = [str(x) for x in p["loc"]]
        if p["type"] == "json_invalid":
            parts.append(_TOO_DEEP if p["msg"] == _TOO_DEEP else "the body is not valid JSON")
        elif len(loc) >= 2 and loc[0] in where:
            parts.append(f"{where[loc[0]]} {'.'.join(loc[1:])!r}: {p['msg']}")
        else:
            parts.append(f"{'.'.join(loc) or 'the request'}: {p['msg']}")
    message = f"{request.method} {clip(request.url.path)} does not fit: {'; '.join(parts)}."
    content_type = request.headers.get("content-type", "")
    if any(p["loc"][:1] == ["body"] for p in problems) and "json" not in content_type:
        message += " Send the body as JSON with `Content-Type: application/json`."
    return message + " The endpoint is described at /docs."


def _no_nul(request: Request) -> None:
    """Refuse an id or a filter holding a NUL character: no store keeps one, and PostgreSQL
    refuses a query with it as a database failure (503) instead of "no such execution"."""
    if any("\x00" in v for v in request.path_params.values()):
        raise KitaruNotFoundError(
            f"{request.method} {clip(request.url.path)}: no execution, wait, artifact or other "
            "record has a NUL character in its name or id. Check the id (`kitaru executions list`)."
        )
    if any("\x00" in v for v in request.query_params.values()):
        raise KitaruUsageError(
            f"a query parameter of {request.method} {clip(request.url.path)} holds a NUL character, "
            "which no name or id has. Remove it."
        )


def _over_https(request: Request) -> bool:
    """Whether the browser reached the server over HTTPS, itself or through a proxy that ends
    TLS (the usual ingress: the server sees http). The proxy's word is taken without trusting
    the proxy: a false "https" only marks the client's own cookie Secure, which costs it its
    own login over plain http, and nobody else anything."""
    if request.url.scheme == "https":
        return True
    proto = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    forwarded = request.headers.get("forwarded", "").split(",")[0].lower().replace(" ", "")
    return proto == "https" or "proto=https" in forwarded.split(";")


def _position(text: str) -> int:
    """A ``Last-Event-ID``: a journal position this stream sent (a whole number), or a 400."""
    text = text.strip()
    # isascii: str.isdigit holds for "²", which int() refuses; the length keeps int() off
    # numbers longer than Python converts (it refuses over 4,300 digits) or any position has.
    if not (text.isascii() and text.isdigit() and len(text) <= 20):
        raise KitaruUsageError(
            f"Last-Event-ID {clip(text)} is not a position of this log stream (the `id:` of an "
            "event it sent, a whole number). Send one of those, or none to start from the beginning."
        )
    return int(text)


@functools.cache
def _rpc_signature(operation: str) -> tuple[frozenset[str], frozenset[str], dict[str, Any]]:
    """The keyword arguments of a store operation (all of them, the required ones) and, for each
    plain-JSON one, a strict check of its type; read from the store contracts, so a method an
    implementation adds or a parameter only it has is not reachable this way."""
    import inspect
    import typing
    from collections.abc import Iterable, Sequence

    from pydantic import TypeAdapter

    from kitaru.remote._store_rpc import OPERATIONS
    from kitaru.store import CatalogStore, SecretStore, StateStore

    kinds = OPERATIONS[operation][0]
    method = next(
        getattr(c, operation) for c in (StateStore, CatalogStore, SecretStore) if hasattr(c, operation)
    )
    hints = typing.get_type_hints(method)
    params = [p for p in inspect.signature(method).parameters.values() if p.name != "self"]
    checks = {}
    for p in params:
        if p.name in kinds:
            continue  # records and bytes: the RPC module decodes them, with its own refusals
        hint = hints.get(p.name, Any)
        if typing.get_origin(hint) in (Iterable, Sequence):
            # What JSON sends; checked as an Iterable, pydantic would check lazily (not at all).
            hint = list[typing.get_args(hint)[0]]  # type: ignore[misc]
        checks[p.name] = (hint, TypeAdapter(hint))
    required = frozenset(p.name for p in params if p.default is inspect.Parameter.empty)
    return frozenset(p.name for p in params), required, checks


def _check_arguments(operation: str, arguments: dict[str, Any]) -> None:
    """Refuse (400) store-operation arguments the contract does not take, or of another type,
    before the store sees them (a store given a list for an id fails in its driver: a 503
    naming the database file, or a TypeError: a 500). Messages name parameters, never values."""
    from pydantic import ValidationError

    from kitaru.remote._store_rpc import OPERATIONS

    if operation not in OPERATIONS:
        return  # the RPC module refuses it, listing the operations there are
    names, required, checks = _rpc_signature(operation)
    fix = f"Send the keyword arguments kitaru.store's {operation}() takes ({', '.join(sorted(names))})."
    unknown = sorted(set(arguments) - names)
    missing = sorted(required - set(arguments))
    if unknown or missing:
        parts = [f"it takes no {', '.join(map(repr, unknown))}"] if unknown else []
        parts += [f"it needs {', '.join(map(repr, missing))}"] if missing else []
        raise KitaruUsageError(
            f"bad arguments for the state-store operation {operation!r}: {'; '.join(parts)}. {fix}"
        )
    for name, value in arguments.items():
        check = checks.get(name)
        if check is None:
            continue
        try:
            check[1].validate_python(value, strict=True)
        except ValidationError:
            hint = getattr(check[0], "__name__", None) or str(check[0]).replace("typing.", "")
            raise KitaruUsageError(
                f"bad arguments for the state-store operation {operation!r}: {name!r} must be "
                f"{hint} (JSON). {fix}"
            ) from None


def build_app(server: ServerState) -> FastAPI:
    """The app over ``server`` (its runtime, orchestrator, background tasks and loops)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with server.running():
            yield

    app = _ServerApp(
        server,
        title="kitaru team server",
        version="1",
        description="Executions, waits, artifacts, logs, deployments and the state-store operations "
        "workers need. "
        "Every endpoint but /healthz takes `Authorization: Bearer <key>` or a login session.",
        lifespan=lifespan,
        # /docs is served from this origin (kitaru/server/_docs.py), not from a CDN; no ReDoc.
        docs_url=None,
        redoc_url=None,
    )

    @app.exception_handler(KitaruError)
    async def kitaru_error(request: Request, exc: KitaruError) -> JSONResponse:
        return JSONResponse(_client_error(exc, request.url.path), status_code=_wire.status_of(exc))

    @app.exception_handler(_Refused)
    async def refused(request: Request, exc: _Refused) -> JSONResponse:
        return _error(exc.status, "Unauthorized" if exc.status == 401 else "Forbidden", str(exc))

    # The framework's own refusals (no such route, a body it cannot read, parameters that do not
    # fit) in the same shape as ours, so a client reads one shape; never with the value sent
    # (it may be a key or a secret), only where it was and what is wrong with it.

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        headers = dict(exc.headers) if exc.headers else None
        return _error(exc.status_code, *_http_refusal(request, exc), headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
            for e in exc.errors()
        ]
        return _error(422, "KitaruUsageError", _invalid_message(request, problems), detail=problems)

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        # Starlette's error layer logs the trace after this answer; the client gets no trace.
        return _error(500, "InternalError", _INTERNAL)

    # -- authentication --------------------------------------------------------------------

    async def principal(request: Request) -> _auth.Principal:
        header = request.headers.get("authorization")
        if header is not None:
            who = await _bearer(server, header)
            if who is None:
                raise _Refused(
                    401,
                    "the API key is not valid (unknown, revoked or mistyped). "
                    "Create one with `kitaru server keys create NAME --scope read`.",
                )
            return who
        cookie = request.cookies.get(_auth.SESSION_COOKIE)
        if cookie:
            key_id = _auth.session_key_id(cookie)
            record = await server.key(key_id) if key_id else None
            nonce = _auth.verify_session(cookie, record)
            if record is not None and nonce is not None and not server.session_ended(nonce):
                return _auth.Principal(record.id, record.name, frozenset(record.scopes), "session", nonce)
        raise _Refused(
            401,
            "this endpoint needs an API key: send `Authorization: Bearer <key>` "
            "(`kitaru login URL --key KEY` sets it up for the CLI) or log in at /login.",
        )

    def require(scope: str) -> Callable[[Request], Awaitable[_auth.Principal]]:
        async def check(request: Request) -> _auth.Principal:
            who = await principal(request)
            if not who.allows(scope):
                raise _Refused(
                    403,
                    f"the key {who.name!r} lacks the {scope!r} scope this needs "
                    f"(it has: {', '.join(sorted(who.scopes))}). Use a key with "
                    f"`--scope {scope}`.",
                )
            _no_nul(request)
            if who.via == "session" and request.method not in ("GET", "HEAD", "OPTIONS"):
                await _check_csrf(request, who)
            return who

        return check

    async def _check_csrf(request: Request, who: _auth.Principal) -> None:
        presented = request.headers.get("x-csrf-token")
        if presented is None and request.headers.get("content-type", "").startswith(
            ("application/x-www-form-urlencoded", "multipart/form-data")
        ):
            form = await request.form()
            value = form.get("csrf_token")
            presented = value if isinstance(value, str) else None
        record = await server.key(who.key_id)
        if record is None or who.nonce is None or not _auth.check_csrf(record, who.nonce, presented):
            raise _Refused(
                403,
                "this request came with a session cookie but without its CSRF token "
                "(header X-CSRF-Token or form field csrf_token; GET /api/v1/session "
                "gives it). Reload the page and submit again.",
            )

    read = Depends(require("read"))
    answer = Depends(require("answer"))
    invoke = Depends(require("invoke"))
    runner = Depends(require("runner"))
    admin = Depends(require("admin"))

    # -- answering a wait: first in the route table, which is tried in order -----------------
    # A bearer-key answer with a well-formed body never gets here: ``_Front`` answers it. This
    # route answers the rest (a session with its CSRF token) and gives every refusal; it reads
    # the request itself rather than through FastAPI's dependency and body machinery, so it
    # refuses a bad body exactly as the front lets it through. The OpenAPI schema says what
    # FastAPI would infer.
    answer_scope = require("answer")

    @app.post(
        "/api/v1/executions/{exec_id}/waits/{name}",
        status_code=202,
        tags=["waits"],
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "properties": {"value": {"title": "Value"}},
                            "required": ["value"],
                        }
                    }
                },
            },
            "parameters": [
                {"name": n, "in": "path", "required": True, "schema": {"type": "string", "title": n.title()}}
                for n in ("exec_id", "name")
            ],
        },
    )
    async def answer_wait(request: Request) -> Response:
        """Answer wait ``name`` with ``{"value": ...}``. The value is checked against the wait's
        JSON Schema (422 with the reason; the wait stays open); a good answer is recorded and the
        execution resumed through the stack's orchestrator, in the background."""
        body = await request.body()  # read first: a session's CSRF check may parse it as a form
        await answer_scope(request)
        exec_id, name = request.path_params["exec_id"], request.path_params["name"]
        value = _embedded(body, "value")
        await server.answer(exec_id, name, value)
        return JSONResponse({"id": exec_id, "wait": name, "accepted": True}, status_code=202)

    # -- health, login ---------------------------------------------------------------------

    @app.get("/healthz", tags=["server"])
    async def healthz() -> dict[str, Any]:
        """Whether the server answers (no key needed); says nothing about executions."""
        return {"ok": True, "background_role": server.leader}

    @app.post("/login", tags=["session"])
    async def login(request: Request, key: str = Form(...)) -> JSONResponse:
        """Trade an API key (form field ``key``) for a session cookie (HttpOnly, SameSite=Strict);
        returns the session's CSRF token, which every changing request of the session carries."""
        key_id = _auth.parse_key(key.strip())
        record = await server.key(key_id) if key_id else None
        if record is None or not _auth.verify_key(key.strip(), record):
            raise _Refused(401, "that API key is not valid (unknown, revoked or mistyped).")
        cookie = _auth.session_cookie(record)
        nonce = _auth.verify_session(cookie, record)
        assert nonce is not None
        response = JSONResponse(
            {"name": record.name, "scopes": record.scopes, "csrf_token": _auth.csrf_token(record, nonce)}
        )
        response.set_cookie(
            _auth.SESSION_COOKIE,
            cookie,
            max_age=int(_auth.SESSION_TTL),
            httponly=True,
            samesite="strict",
            secure=_over_https(request),
            path="/",
        )
        return response

    @app.post("/logout", tags=["session"])
    async def logout(request: Request) -> JSONResponse:
        """End the browser session: every server process refuses its cookie from now on (a copy
        kept elsewhere included; other replicas within a second), and the browser drops it.
        Revoking the key ends every session of the key on every replica."""
        cookie = request.cookies.get(_auth.SESSION_COOKIE)
        key_id = _auth.session_key_id(cookie) if cookie else None
        if cookie and key_id:
            record = await server.key(key_id)
            nonce = _auth.verify_session(cookie, record)
            if nonce is not None:  # only a session that is one: nobody fills the list with noise
                await server.end_session(nonce, float(cookie.split(".")[1]))
        response = JSONResponse({"ok": True})
        response.delete_cookie(_auth.SESSION_COOKIE, path="/")
        return response

    @app.get("/api/v1/session", tags=["session"])
    async def session(who: _auth.Principal = read) -> dict[str, Any]:
        """Who is asking, with which scopes; for a session, its CSRF token."""
        token = None
        if who.via == "session" and who.nonce is not None:
            record = await server.key(who.key_id)
            token = _auth.csrf_token(record, who.nonce) if record is not None else None
        return {"name": who.name, "scopes": sorted(who.scopes), "via": who.via, "csrf_token": token}

    # -- executions ------------------------------------------------------------------------

    @app.get("/api/v1/executions", tags=["executions"])
    async def list_executions(
        flow: str | None = None,
        status: str | None = None,
        version: Annotated[int | None, Query(le=_MAX_VERSION)] = None,
        limit: int = Query(50, ge=1, le=500),
        cursor: str | None = None,
        _: _auth.Principal = read,
    ) -> dict[str, Any]:
        """Executions, newest first, one page at a time (summaries without checkpoints);
        ``version``: only those of that deployment version."""
        from kitaru.client import _status_filter

        status = _status_filter(status)  # a typo would match nothing: refused, naming the statuses
        records = await server.astate.list_executions(
            flow=flow, status=status, limit=limit + 1, version=version, before=cursor
        )
        more = len(records) > limit
        records = records[:limit]
        return {
            "items": [server.summary(r) for r in records],
            "next_cursor": records[-1].id if more and records else None,
        }

    @app.get("/api/v1/executions/{exec_id}", tags=["executions"])
    async def get_execution(exec_id: str, _: _auth.Principal = read) -> dict[str, Any]:
        """An execution with its checkpoints, waits and metadata."""
        view: dict[str, Any] = (await server.execution(exec_id)).to_dict()
        return view

    @app.post("/api/v1/executions/{exec_id}/cancel", tags=["executions"])
    async def cancel(exec_id: str, _: _auth.Principal = invoke) -> dict[str, Any]:
        """Cancel a running or waiting execution (final), through the stack's orchestrator."""
        await server.record(exec_id)
        await server.orchestrator.cancel(exec_id)
        view: dict[str, Any] = (await server.execution(exec_id)).to_dict()
        return view

    @app.post("/api/v1/executions/{exec_id}/retry", status_code=202, tags=["executions"])
    async def retry(exec_id: str, _: _auth.Principal = invoke) -> dict[str, Any]:
        """Continue a failed execution in place (in the background); 202 once it is handed over."""
        return await server.take_over(exec_id, {"failed"})

    @app.post("/api/v1/executions/{exec_id}/resume", status_code=202, tags=["executions"])
    async def resume(exec_id: str, _: _auth.Principal = invoke) -> dict[str, Any]:
        """Drive an interrupted or waiting execution on from its journal (in the background)."""
        return await server.take_over(exec_id, {"running", "waiting"})

    @app.post("/api/v1/executions/{exec_id}/replay", status_code=202, tags=["executions"])
    async def replay(
        exec_id: str,
        from_: Annotated[str, Body(alias="from")],
        overrides: Annotated[dict[str, Any] | None, Body()] = None,
        args: Annotated[dict[str, Any] | None, Body()] = None,
        _: _auth.Principal = invoke,
    ) -> dict[str, Any]:
        """A new execution re-running ``exec_id`` from call ``from`` with ``overrides`` (call id
        to value) and ``args`` (changed inputs), all checked before anything is written; it is
        driven in the background. Returns the new execution's id."""
        record = await server.replay(exec_id, from_, overrides, args)
        return {"id": record.id, "replay_of": exec_id, "status": record.status}

    @app.get("/api/v1/executions/{a}/diff/{b}", tags=["executions"])
    async def diff(a: str, b: str, _: _auth.Principal = read) -> dict[str, Any]:
        """Compare two executions input by input, checkpoint by checkpoint, wait by wait."""
        from kitaru.diff import diff_executions

        await server.record(a)
        await server.record(b)
        result = await anyio.to_thread.run_sync(diff_executions, server.runtime, a, b)
        return result.to_dict()

    # -- waits -----------------------------------------------------------------------------

    @app.post("/api/v1/executions/{exec_id}/waits/{name}/abort", status_code=202, tags=["waits"])
    async def abort_wait(
        exec_id: str,
        name: str,
        reason: Annotated[str | None, Body(embed=True)] = None,
        _: _auth.Principal = answer,
    ) -> dict[str, Any]:
        """Abort wait ``name`` instead of answering it (``{"reason": ...}`` optional): the flow's
        ``wait()`` raises ``KitaruWaitAborted``. Recorded once, like an answer (an answered wait
        cannot be aborted, nor an aborted one answered); the flow moves on in the background."""
        await server.answer(exec_id, name, None, abort={"aborted": True, "reason": reason})
        return {"id": exec_id, "wait": name, "aborted": True}

    @app.get("/api/v1/waits", tags=["waits"])
    async def pending_waits(flow: str | None = None, _: _auth.Principal = read) -> dict[str, Any]:
        """Every open wait of every waiting execution (of ``flow``), oldest first: what people owe
        an answer, with the question and the JSON Schema an answer must match."""
        from kitaru._exec_stats import pending_waits as _pending

        found = await anyio.to_thread.run_sync(lambda: _pending(server.runtime.state, flow=flow))
        return {"items": [w.to_dict() for w in found]}

    @app.get("/api/v1/stats", tags=["executions"])
    async def stats(
        flow: str | None = None, since: float | None = None, _: _auth.Principal = read
    ) -> dict[str, Any]:
        """Per flow, over the executions created since ``since`` (Unix time): counts by status,
        duration p50/p95, model tokens and cost (what ``kitaru executions stats`` shows)."""
        from kitaru._exec_stats import execution_stats

        result = await anyio.to_thread.run_sync(
            lambda: execution_stats(server.runtime.state, flow=flow, since=since)
        )
        return result.to_dict()

    # -- artifacts -------------------------------------------------------------------------

    @app.get("/api/v1/artifacts", tags=["artifacts"])
    async def find_artifacts(
        tag: str, limit: int = Query(100, ge=1, le=500), _: _auth.Principal = read
    ) -> dict[str, Any]:
        """Artifacts of any execution saved with ``tag`` (``kitaru.save(..., tags=[...])``),
        newest first (metadata only)."""
        found = await _catalog().find_artifacts(tag=tag, limit=limit)
        return {"items": [_wire.artifact_to_json(a, with_bytes=False) for a in found]}

    def _catalog() -> Any:
        from kitaru.store import CatalogStore

        if not isinstance(server.astate, CatalogStore):
            raise KitaruUsageError("this server's state store cannot find artifacts by tag.")
        return server.astate

    @app.get("/api/v1/executions/{exec_id}/artifacts", tags=["artifacts"])
    async def list_artifacts(
        exec_id: str, name: str | None = None, type: str | None = None, _: _auth.Principal = read
    ) -> dict[str, Any]:
        """The execution's artifacts (metadata only), in journal order."""
        await server.record(exec_id)
        found = await server.astate.list_artifacts(exec_id, name=name, type=type)
        return {"items": [_wire.artifact_to_json(a, with_bytes=False) for a in found]}

    async def _artifact(exec_id: str, artifact_id: str) -> ArtifactRecord:
        record = await server.astate.get_artifact(artifact_id)
        # An artifact is reached through an execution that references it (its own, or a replay
        # reusing its original's outputs); any other pairing is refused as if it did not exist.
        if record is None or (
            record.exec_id != exec_id
            and all(a.id != artifact_id for a in await server.astate.list_artifacts(exec_id))
        ):
            raise KitaruNotFoundError(f"execution {clip(exec_id)} has no artifact {clip(artifact_id)}.")
        return record

    @app.get("/api/v1/executions/{exec_id}/artifacts/{artifact_id}", tags=["artifacts"])
    async def get_artifact(exec_id: str, artifact_id: str, _: _auth.Principal = read) -> dict[str, Any]:
        """One artifact's metadata."""
        return _wire.artifact_to_json(await _artifact(exec_id, artifact_id), with_bytes=False)

    @app.get("/api/v1/executions/{exec_id}/artifacts/{artifact_id}/content", tags=["artifacts"])
    async def artifact_content(exec_id: str, artifact_id: str, _: _auth.Principal = read) -> Response:
        """The stored bytes, streamed and verified against the recorded sha256 on the way (a
        mismatch cuts the stream short: check the ``X-Kitaru-Content-Hash`` header too)."""
        record = await _artifact(exec_id, artifact_id)
        chunks = server.runtime.aartifact_chunks(record)
        first = await anext(chunks, b"")  # a missing blob fails here, as a proper error response

        async def body() -> AsyncIterator[bytes]:
            yield first
            async for chunk in chunks:
                yield chunk

        return StreamingResponse(
            body(),
            media_type="application/json"
            if record.serializer in _JSON_SERIALIZERS
            else "application/octet-stream",
            headers={
                "X-Kitaru-Content-Hash": record.content_hash,
                "Content-Length": str(record.size),
                # A flow's bytes may be HTML or script: opened in a browser tab (the UI's download
                # link carries the session cookie) they are saved, never sniffed or run here.
                "Content-Disposition": "attachment",
                "X-Content-Type-Options": "nosniff",
                "Content-Security-Policy": "default-src 'none'; sandbox",
            },
        )

    @app.get("/api/v1/executions/{exec_id}/artifacts/{artifact_id}/preview", tags=["artifacts"])
    async def artifact_preview(exec_id: str, artifact_id: str, _: _auth.Principal = read) -> dict[str, Any]:
        """A preview that never unpickles: JSON-stored values (``kind: json``) come back parsed,
        anything else is described (``kind: binary``)."""
        record = await _artifact(exec_id, artifact_id)
        meta = {"id": record.id, "data_type": record.data_type, "size": record.size}
        if record.serializer in _JSON_SERIALIZERS and record.size <= _PREVIEW_LIMIT:
            try:
                return {
                    **meta,
                    "kind": "json",
                    "value": json.loads(await server.runtime.aartifact_bytes(record)),
                }
            except ValueError:
                pass
        return {**meta, "kind": "binary", "value": None}

    # -- logs ------------------------------------------------------------------------------

    @app.get("/api/v1/executions/{exec_id}/logs", tags=["logs"])
    async def logs(
        request: Request,
        exec_id: str,
        after: int = 0,
        follow: bool = False,
        who: _auth.Principal = read,
    ) -> StreamingResponse:
        """What the execution printed and logged, as server-sent events (see the module doc). A
        followed stream closes when its key is revoked or its session ends (a reconnect is
        refused like any request of theirs)."""
        await server.record(exec_id)
        last = request.headers.get("last-event-id")
        start = after if last is None else _position(last)

        async def events() -> AsyncIterator[bytes]:
            seen = start
            while True:
                # Only what came after the last record sent: a follower of a long run must not
                # read its whole journal every poll.
                journal = await server.astate.read_journal(exec_id, after=seen)
                for r in journal:
                    if r.kind == "output" and (r.id or 0) > seen:
                        seen = r.id or seen
                        entry = {
                            "call_id": r.call_id,
                            "stream": (r.data or {}).get("stream", "stdout"),
                            "text": (r.data or {}).get("text", ""),
                            "ts": r.ts,
                            "seq": r.id,
                        }
                        yield f"event: log\nid: {r.id}\ndata: {json.dumps(entry)}\n\n".encode()
                record = await server.astate.get_execution(exec_id)
                if not follow or record is None or record.status != "running":
                    status = record.status if record else "gone"
                    yield f"event: end\ndata: {json.dumps({'status': status})}\n\n".encode()
                    return
                if await request.is_disconnected():
                    return
                await anyio.sleep(server.log_poll)
                if not await server.still_allowed(who.key_id, who.nonce if who.via == "session" else None):
                    return  # authorized once is not authorized for the execution's whole run

        return StreamingResponse(
            events(), media_type="text/event-stream", headers={"Cache-Control": "no-store"}
        )

    # -- deployments (reads: `read`; moving tags: `admin`; invoking: `invoke`) ---------------
    # The checks and messages are those of `KitaruClient().deployments` (kitaru.deployments), so
    # `kitaru deployments ...` says the same whether it runs locally or through this server.

    def _moved(move: TagMove) -> dict[str, Any]:
        return asdict(move)

    def _mover(who: _auth.Principal) -> str:
        return f"{who.name} (key {who.key_id}, via the server)"

    @app.get("/api/v1/deployments", tags=["deployments"])
    async def list_deployments(flow: str | None = None, _: _auth.Principal = read) -> dict[str, Any]:
        """Deployed versions (of ``flow``, or of every flow; by flow, then number), each with the
        tags pointing at it, and the tags with their weights."""
        from kitaru.deployments import alist

        versions = await alist(server.astate, flow)
        tags = await server.astate.list_tags(flow)
        return {"versions": [v.to_dict() for v in versions], "tags": [asdict(t) for t in tags]}

    @app.get("/api/v1/deployments/{flow}/versions/{version}", tags=["deployments"])
    async def get_deployment_version(
        flow: str, version: Annotated[int, Path(le=_MAX_VERSION)], _: _auth.Principal = read
    ) -> dict[str, Any]:
        """Version ``version`` of ``flow``: its code (archive, target), image, stack, lock, tags."""
        from kitaru.deployments import aget

        found: dict[str, Any] = (await aget(server.astate, f"{flow}:{version}")).to_dict()
        return found

    @app.get("/api/v1/deployments/{flow}/tags/{tag}", tags=["deployments"])
    async def get_deployment_tag(flow: str, tag: str, _: _auth.Principal = read) -> dict[str, Any]:
        """The version tag ``tag`` of ``flow`` points at."""
        from kitaru.deployments import aget

        found: dict[str, Any] = (await aget(server.astate, f"{flow}@{tag}")).to_dict()
        return found

    @app.get("/api/v1/deployments/{flow}/history", tags=["deployments"])
    async def deployment_history(
        flow: str, tag: str | None = None, _: _auth.Principal = read
    ) -> dict[str, Any]:
        """Every move of the flow's tags (of ``tag`` only, when given), oldest first."""
        from kitaru.deployments import ahistory

        return {"items": [_moved(m) for m in await ahistory(server.astate, flow, tag)]}

    @app.put("/api/v1/deployments/{flow}/tags/{tag}", tags=["deployments"])
    async def tag_version(
        flow: str,
        tag: str,
        version: Annotated[int, Body(le=_MAX_VERSION)],
        weight: Annotated[int | None, Body()] = None,
        who: _auth.Principal = admin,
    ) -> dict[str, Any]:
        """Point ``tag`` at ``version`` (``weight`` 0-100: a canary), atomically, recorded in the
        history. A missing version or a bad weight changes nothing."""
        from kitaru.deployments import amove

        request = TagRequest(tag, "set", version, weight=weight)
        return _moved(await amove(server.astate, flow, request, who=_mover(who)))

    @app.delete("/api/v1/deployments/{flow}/tags/{tag}", tags=["deployments"])
    async def untag_version(flow: str, tag: str, who: _auth.Principal = admin) -> dict[str, Any]:
        """Remove ``tag`` (never ``default``), recorded in the history."""
        from kitaru.deployments import amove

        return _moved(await amove(server.astate, flow, TagRequest(tag, "remove"), who=_mover(who)))

    @app.post("/api/v1/deployments/{flow}/promote", tags=["deployments"])
    async def promote(
        flow: str, tag: Annotated[str, Body(embed=True)], who: _auth.Principal = admin
    ) -> dict[str, Any]:
        """Move ``default`` to the version ``tag`` points at (``{"tag": "canary"}``)."""
        from kitaru.deployments import DEFAULT_TAG, amove

        request = TagRequest(DEFAULT_TAG, "promote", source=tag)
        return _moved(await amove(server.astate, flow, request, who=_mover(who)))

    @app.post("/api/v1/deployments/{flow}/rollback", tags=["deployments"])
    async def rollback(
        flow: str,
        to: Annotated[int | None, Body(embed=True, le=_MAX_VERSION)] = None,
        who: _auth.Principal = admin,
    ) -> dict[str, Any]:
        """Move ``default`` back: to version ``to``, or (without it) to the version it pointed at
        before its last move."""
        from kitaru.deployments import DEFAULT_TAG, amove

        request = TagRequest(DEFAULT_TAG, "rollback", version=to)
        return _moved(await amove(server.astate, flow, request, who=_mover(who)))

    @app.post("/api/v1/deployments/{flow}/invoke", status_code=202, tags=["deployments"])
    async def invoke_deployment(
        flow: str,
        tag: Annotated[str, Body()] = "default",
        args: Annotated[dict[str, Any] | None, Body()] = None,
        execution_id: Annotated[str | None, Body()] = None,
        _: _auth.Principal = invoke,
    ) -> dict[str, Any]:
        """Start an execution of the version ``flow@tag`` points at (``default`` routes canaries
        by weight, sticky per ``execution_id``) with ``args`` (the flow's arguments by name). It
        is created here (an unknown flow or tag, or arguments that do not fit, create nothing)
        and driven in the background or by the stack's orchestrator; 202 with its id. The same
        ``execution_id`` again returns that execution (``created``: false)."""
        if execution_id is not None and "\x00" in execution_id:
            raise KitaruUsageError(
                "execution_id holds a NUL character, which no execution id may (PostgreSQL cannot "
                "store it). Use letters, digits and punctuation."
            )
        record, created = await server.invoke(flow, tag, args or {}, execution_id)
        return {
            "id": record.id,
            "status": record.status,
            "created": created,
            "deployment": record.metadata.get("deployment"),
        }

    # -- the checkpoint cache (`kitaru cache` after a login): entries for `read`, clearing for `admin`

    def _cache() -> Any:
        from kitaru.store import CatalogStore

        if not isinstance(server.astate, CatalogStore):
            raise KitaruConfigError(
                "this server's state store keeps no checkpoint cache (only SQLite, PostgreSQL and "
                "memory state stores do); start the server on one of them "
                "(`kitaru server start --state ...`)."
            )
        return server.astate

    @app.get("/api/v1/cache", tags=["cache"])
    async def list_cache(flow: str | None = None, _: _auth.Principal = read) -> dict[str, Any]:
        """The checkpoint cache's entries, oldest first (every flow's, or ``flow``'s)."""
        return {"items": [asdict(e) for e in await _cache().list_cache_entries(flow)]}

    @app.delete("/api/v1/cache", tags=["cache"])
    async def clear_cache(flow: str | None = None, _: _auth.Principal = admin) -> dict[str, Any]:
        """Forget cached checkpoint outputs (every flow's, or ``flow``'s); the artifacts stay."""
        return {"removed": await _cache().clear_cache(flow)}

    # -- secrets: names for `read`; values (ciphertext) and changes for `admin` ---------------
    # The server only ever holds ciphertext: `kitaru secrets set` encrypts with the caller's
    # KITARU_SECRETS_KEY before the request, `get` decrypts after it. Nothing here can reveal a value.

    def _secrets() -> Any:
        from kitaru.store import SecretStore

        if not isinstance(server.astate, SecretStore):
            raise KitaruConfigError(
                "this server's state store does not keep secrets (only SQLite, PostgreSQL and memory "
                "state stores do); start the server on one of them (`kitaru server start --state ...`)."
            )
        return server.astate

    def _secret_info(record: Any) -> dict[str, Any]:
        return {"name": record.name, "created_at": record.created_at, "updated_at": record.updated_at}

    def _no_secret(name: str) -> KitaruNotFoundError:
        return KitaruNotFoundError(
            f"no secret {name!r} on this server. Create it with `kitaru secrets set {name}`; list them "
            "with `kitaru secrets list`."
        )

    @app.get("/api/v1/secrets", tags=["secrets"])
    async def list_secrets(_: _auth.Principal = read) -> dict[str, Any]:
        """Every secret's name and times, by name (never a value)."""
        return {"items": [_secret_info(r) for r in await _secrets().list_secrets()]}

    @app.get("/api/v1/secrets/{name}", tags=["secrets"])
    async def get_secret(name: str, _: _auth.Principal = admin) -> dict[str, Any]:
        """The secret's ciphertext (base64), which only a holder of the key decrypts."""
        record = await _secrets().get_secret(name)
        if record is None:
            raise _no_secret(name)
        return {**_secret_info(record), "ciphertext": base64.b64encode(record.ciphertext).decode("ascii")}

    @app.put("/api/v1/secrets/{name}", tags=["secrets"])
    async def put_secret(
        name: str, ciphertext: Annotated[str, Body(embed=True)], _: _auth.Principal = admin
    ) -> dict[str, Any]:
        """Create or replace the secret with ``{"ciphertext": base64}`` (encrypted by the caller)."""
        from kitaru.secrets import _check_name

        _check_name(name)
        try:
            blob = base64.b64decode(ciphertext, validate=True)
        except ValueError:
            raise KitaruUsageError(f"secret {name!r}: the ciphertext must be base64.") from None
        return _secret_info(await _secrets().put_secret(name, blob))

    @app.delete("/api/v1/secrets/{name}", tags=["secrets"])
    async def delete_secret(name: str, _: _auth.Principal = admin) -> dict[str, Any]:
        """Remove the secret (404 when there is none)."""
        if not await _secrets().delete_secret(name):
            raise _no_secret(name)
        return {"name": name, "deleted": True}

    # -- the state-store operations of workers (scope `runner`) -----------------------------

    @app.post("/api/v1/store/{operation}", tags=["store"])
    async def store_operation(
        operation: str, arguments: Annotated[dict[str, Any], Body()], who: _auth.Principal = runner
    ) -> dict[str, Any]:
        """One StateStore operation (``commit``, ``acquire_lease``... see kitaru.store.StateStore),
        its keyword arguments as JSON; what a worker with a ``runner`` key does instead of
        connecting to the database. The CatalogStore and SecretStore operations come the same way
        (secrets as ciphertext); setting or deleting a secret needs ``admin`` too."""
        from kitaru.remote._store_rpc import ADMIN_OPERATIONS, call

        if operation in ADMIN_OPERATIONS and not who.allows("admin"):
            raise _Refused(
                403,
                f"the key {who.name!r} may not {operation.replace('_', ' ')}: changing secrets needs "
                "the 'admin' scope. Use a key with `--scope admin`.",
            )

        _check_arguments(operation, arguments)
        return {"result": await call(server.astate, operation, arguments)}

    # -- the API's docs page, from this origin (kitaru/server/_docs.py) --------------------
    from kitaru.server._docs import mount_docs

    mount_docs(app)

    # -- the web UI (kitaru/server/ui: pages, assets, the lineage graph), mounted last -------
    from kitaru.server.ui import mount as mount_ui

    mount_ui(app, server, require)
    return app


def execution_summary(record: ExecutionRecord) -> dict[str, Any]:
    data = asdict(record)
    data.pop("lease_owner")  # where a runner runs is the operator's business, not the viewer's
    data["metadata"] = {k: v for k, v in record.metadata.items() if k != "inflight"}
    return data
