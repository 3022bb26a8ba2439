"""``modi-serve``: the reference inference server: a pool of real ONNX models behind a learned
selector, as a FastAPI app run by uvicorn (a thin shell around :mod:`modi.serving`).

Endpoints (the OpenAPI schema at ``/openapi.json`` documents each completely):

* ``POST /v1/infer?sla_ms=..&upload_ms=..[&capture_ts_ms=..|&elapsed_ms=..][&client_id=..]``
  ``[&label=..][&shape=HxWx3][&srtt_ms=..&rttvar_ms=..][&prev_download_ms=..]``
  ``[&client_dl_ms=..&client_dlvar_ms=..&client_dl_mismatch=..]`` (the client's download
  history): the body is an
  encoded image (``image/jpeg``, ``image/png``,
  ``image/webp``, ``image/bmp``; decoded as the declared format only) or device-preprocessed
  pixels (``application/x-modi-pixels``: raw ``uint8`` RGB, ``shape`` given). The selector
  picks the model; the answer names it, the class, the connection's RTT as the selector saw it
  (and its source) and the server's timings.
* ``POST /v1/outcome?request_id=..&e2e_ms=..``: the client's measured end-to-end latency of
  a served request; with ``--outcome-hold-s`` its decision-log record (held that long) takes
  it as ``latency_ms`` (and ``met``) instead of the server's own view, which cannot include the
  answer's download.
* ``GET /v1/models``: the pool (ids, inputs, accuracy and its source, current μ/σ profiles).
* ``GET /healthz``: ``status`` ``ok`` or ``degraded`` (the decision log failing), the selector
  by name and version.
* ``GET /metrics``: Prometheus metrics (``prometheus_client``).
* ``POST /v1/admin/reload`` (``Authorization: Bearer <token>``; body ``{"selector": NAME}``
  optional): reload the selector (a file name inside the selector folder, or the configured
  source again, e.g. ``models:/modi-selector@champion`` after ``modi-promote``); a file the
  selector refuses leaves the old one serving (HTTP 409).

The connection's RTT (the ``srtt_ms``/``rttvar_ms`` features, ``--rtt-source``): uvicorn runs
with a protocol (:func:`header_deadline_protocol`) that hands each request's socket to the app
(``scope["extensions"]["modi.socket"]``), read with Linux ``TCP_INFO`` when the decision is
made; without it (another platform or ASGI server, a Unix socket) the ``X-Modi-Srtt-Ms`` /
``X-Modi-Rttvar-Ms`` headers a proxy sets, else the client's ``srtt_ms``/``rttvar_ms`` fields,
else unknown. Behind a proxy the socket sees the proxy: use ``--rtt-source request``. The
source of each decision is counted (``/metrics`` ``modi_rtt_source``, ``/healthz`` ``rtt``).

Timeouts: a request body must arrive within ``--body-timeout-s`` (default 10 s) or the answer is
408 and the connection is closed; a request's headers must arrive within
``--header-timeout-s`` (default 10 s) of the connection opening or of the previous answer, or the
connection is closed (:func:`header_deadline_protocol`: uvicorn itself has no such deadline);
idle keep-alive connections close after 5 s; at most ``--limit-concurrency`` connections are
served at once (more get 503).

Usage::

    MODI_ADMIN_TOKEN=secret modi-serve --pool-dir serving_pool/imagenet \\
        --pool imagenet_pool.yaml --selector selector.onnx --decision-log decisions.jsonl \\
        [--explore epsilon:0.1] [--shadow challenger.onnx]
"""

from __future__ import annotations

import argparse
import contextlib
import hmac
import json
import logging
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

try:
    from fastapi import FastAPI
    from fastapi import Request as HTTPRequest
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response
    from pydantic import BaseModel, Field
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException as StarletteHTTPException
except ImportError as _e:  # pragma: no cover - depends on the install
    raise ImportError(
        f"modi-serve needs FastAPI and uvicorn ({_e}): pip install 'modi[server]'"
    ) from _e

from modi.serving import (
    CONTENT_TYPES,
    HTTPProblem,
    InferenceServer,
    ServeConfig,
    ServerConfigError,
    read_body,
)
from modi.serving.core import CLIENT_DL_HEADER, CLIENT_DLVAR_HEADER, CLIENT_MISMATCH_HEADER
from modi.serving.errors import clean
from modi.serving.images import DecodeLimits
from modi.serving.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from modi.serving.tcpinfo import RTT_MODES, RTTVAR_HEADER, SRTT_HEADER, read_tcp_rtt

__all__ = ["InferenceServer", "ServeConfig", "ServerConfigError", "create_app", "main"]

log = logging.getLogger(__name__)
#: Deepest JSON nesting accepted on the admin endpoint.
MAX_JSON_DEPTH = 8
#: The ASGI scope extension under which :func:`header_deadline_protocol` passes the request's
#: socket (an asyncio ``TransportSocket``) to the app.
SOCKET_EXTENSION = "modi.socket"


# ---------------------------------------------------------------- the documented shapes
class ErrorAnswer(BaseModel):
    """Every 4xx/5xx answer."""

    error: str = Field(description="what is wrong, naming the field")
    status: int = Field(description="the HTTP status again")


class Timings(BaseModel):
    """Server-side timings of one request (ms)."""

    decode: float
    queue: float
    select: float
    preprocess: float
    exec: float
    server: float


class InferAnswer(BaseModel):
    """The answer to ``POST /v1/infer``."""

    request_id: str = Field(description="id of the request's decision-log record")
    model_id: str = Field(description="the pool model that answered")
    source: str = Field(description="'learned' (the selector) or 'fallback' (ModiPick)")
    reason: str = Field(description="why a fallback was used (empty for learned choices)")
    explored: bool = Field(description="exploration served another model than the greedy one")
    class_index: int = Field(description="the predicted class")
    correct: bool | None = Field(description="class_index == label (null without a label)")
    accuracy: float = Field(description="the served model's expected accuracy (fraction)")
    elapsed_ms_at_selection: float = Field(description="elapsed time the selector saw (ms)")
    srtt_ms: float | None = Field(
        description="the connection's smoothed RTT the selector saw (ms; null: unknown)"
    )
    rttvar_ms: float | None = Field(
        description="the connection's RTT variation the selector saw (ms; null: unknown)"
    )
    rtt_source: str = Field(
        description="where the RTT came from: tcp_info (the server's socket), header (a proxy's "
        "X-Modi-Srtt-Ms), field (the client's srtt_ms), none (unknown)"
    )
    client_dl_ms: float | None = Field(
        description="the client's download history the selector saw (ms; null: none sent)"
    )
    client_dlvar_ms: float | None = Field(
        description="its mean deviation the selector saw (ms; null: none sent)"
    )
    client_dl_mismatch: float | None = Field(
        description="the client's smoothed |ln(download / upload)| the selector saw (null: none "
        "sent)"
    )
    timings_ms: Timings


class OutcomeAnswer(BaseModel):
    """The answer to ``POST /v1/outcome``."""

    recorded: bool = Field(
        description="a held decision-log record took the latency (false: "
        "no record held for this request: not logging, or written already)"
    )


class ReloadBody(BaseModel):
    """Body of ``POST /v1/admin/reload`` (empty: reload the configured source)."""

    model_config = {"extra": "forbid"}
    selector: str | None = Field(None, description="a .onnx file name in the selector folder")


class ReloadAnswer(BaseModel):
    """A successful reload."""

    reloaded: bool
    message: str
    selector: str


def _err(text: str) -> dict[str, Any]:
    return {"model": ErrorAnswer, "description": text}


_NUM = {"type": "number", "minimum": 0, "maximum": 600000}
_RTT = {"type": "number", "minimum": 0, "maximum": 60000}
INFER_PARAMETERS: list[dict[str, Any]] = [
    {"name": "sla_ms", "in": "query", "required": True,
     "description": "the request's latency objective (ms, capture to answer)",
     "schema": {"type": "number", "exclusiveMinimum": 0, "maximum": 600000}},
    {"name": "upload_ms", "in": "query", "required": False,
     "description": "measured upload time of this request (ms; default 0)", "schema": _NUM},
    {"name": "elapsed_ms", "in": "query", "required": False,
     "description": "time since capture on arrival (ms; or give capture_ts_ms)",
     "schema": _NUM},
    {"name": "capture_ts_ms", "in": "query", "required": False,
     "description": "capture time (Unix epoch, ms; not with elapsed_ms; clocks must agree)",
     "schema": {"type": "number", "minimum": 0}},
    {"name": "client_id", "in": "query", "required": False,
     "description": "the client (its upload history is a feature)",
     "schema": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.\\-]{0,127}$"}},
    {"name": "label", "in": "query", "required": False,
     "description": "true class, logged as the outcome",
     "schema": {"type": "integer", "minimum": 0, "maximum": 1000000}},
    {"name": "shape", "in": "query", "required": False,
     "description": "HxWx3 of an application/x-modi-pixels body",
     "schema": {"type": "string", "pattern": "^[0-9]{1,6}x[0-9]{1,6}x3$"}},
    {"name": "srtt_ms", "in": "query", "required": False,
     "description": "the connection's smoothed RTT as the client measures it (ms; used when the "
     "server cannot read its socket's TCP_INFO)", "schema": _RTT},
    {"name": "rttvar_ms", "in": "query", "required": False,
     "description": "the connection's RTT variation (ms; with srtt_ms)", "schema": _RTT},
    {"name": "prev_download_ms", "in": "query", "required": False,
     "description": "the client's measured download time of its previous answer (ms; logged, "
     "not a feature)", "schema": _NUM},
    {"name": "client_dl_ms", "in": "query", "required": False,
     "description": "the client's smoothed download time of its previous answers as it measured "
     "them (ms; EWMA of modi.runtime.features.client_dl_update; omit before the first answer: "
     "unknown, which the selector imputes)", "schema": _NUM},
    {"name": "client_dlvar_ms", "in": "query", "required": False,
     "description": "the mean deviation of those download times (ms; with client_dl_ms)",
     "schema": _NUM},
    {"name": "client_dl_mismatch", "in": "query", "required": False,
     "description": "the client's smoothed |ln(download / upload)| of its previous answers, each "
     "download against the upload_ms it sent with the same request (modi.runtime.features."
     "client_mismatch_update; omit before the first answer)", "schema": _NUM},
    {"name": CLIENT_DL_HEADER, "in": "header", "required": False,
     "description": "client_dl_ms as a header instead of the field (not both)", "schema": _NUM},
    {"name": CLIENT_DLVAR_HEADER, "in": "header", "required": False,
     "description": "client_dlvar_ms as a header instead of the field (not both)",
     "schema": _NUM},
    {"name": CLIENT_MISMATCH_HEADER, "in": "header", "required": False,
     "description": "client_dl_mismatch as a header instead of the field (not both)",
     "schema": _NUM},
    {"name": SRTT_HEADER, "in": "header", "required": False,
     "description": "the client connection's smoothed RTT as a proxy in front measures it (ms; "
     "preferred to the srtt_ms field)", "schema": _RTT},
    {"name": RTTVAR_HEADER, "in": "header", "required": False,
     "description": "the client connection's RTT variation (ms; with the srtt header)",
     "schema": _RTT},
]  # fmt: skip
OUTCOME_PARAMETERS: list[dict[str, Any]] = [
    {"name": "request_id", "in": "query", "required": True,
     "description": "the request_id of the /v1/infer answer",
     "schema": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.\\-]{0,127}$"}},
    {"name": "e2e_ms", "in": "query", "required": True,
     "description": "capture to the answer's arrival on the client (ms)",
     "schema": {"type": "number", "minimum": 0, "maximum": 600000}},
]  # fmt: skip
INFER_BODY: dict[str, Any] = {
    "required": True,
    "description": "an encoded image of the declared type, or raw uint8 RGB pixels",
    "content": {ct: {"schema": {"type": "string", "format": "binary"}} for ct in CONTENT_TYPES},
}


# ---------------------------------------------------------------- the app
def create_app(cfg: ServeConfig | InferenceServer) -> FastAPI:
    """The FastAPI app serving ``cfg`` (a config, or a ready :class:`InferenceServer`)."""
    server = cfg if isinstance(cfg, InferenceServer) else InferenceServer(cfg)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        server.close()  # shutdown: write the queued decisions

    app = FastAPI(
        lifespan=lifespan,
        title="modi reference server",
        version="2",
        description="Model selection for mobile inference: a learned selector picks the pool "
        "model for each request's SLA.",
    )
    app.state.server = server

    def problem(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse(
            {"error": clean(message), "status": status}, status_code=status, headers=headers
        )

    @app.exception_handler(HTTPProblem)
    async def _on_problem(_: HTTPRequest, exc: HTTPProblem) -> JSONResponse:
        return problem(exc.status, exc.message, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _on_http(_: HTTPRequest, exc: StarletteHTTPException) -> JSONResponse:
        return problem(exc.status_code, str(exc.detail), dict(exc.headers or {}))

    @app.exception_handler(RequestValidationError)
    async def _on_validation(_: HTTPRequest, exc: RequestValidationError) -> JSONResponse:
        parts = [
            f"{'.'.join(str(x) for x in e.get('loc', ()))}: {e.get('msg', '')}"
            for e in exc.errors()[:3]
        ]
        return problem(400, "invalid request: " + "; ".join(parts))

    @app.exception_handler(Exception)
    async def _on_error(_: HTTPRequest, exc: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return problem(500, f"internal error ({type(exc).__name__})")

    async def body_of(request: HTTPRequest) -> bytes:
        cfg = server.cfg
        try:
            return await read_body(
                request.stream(), request.headers.get("content-length"), cfg.max_body_bytes,
                cfg.body_timeout_s,
            )  # fmt: skip
        except HTTPProblem as e:
            if e.status == 408 and server.metrics is not None:
                server.metrics.body_timeouts.inc()
            raise

    infer_errors = {
        400: _err("bad input: the message names the field"),
        408: _err("the body did not arrive within the deadline"),
        413: _err("body or decoded image too large"),
        415: _err("content type not served, or the body is not the declared format"),
        500: _err("internal error"),
    }

    @app.post(
        "/v1/infer",
        response_model=InferAnswer,
        responses=infer_errors,  # type: ignore[arg-type]
        openapi_extra={"parameters": INFER_PARAMETERS, "requestBody": INFER_BODY},
        summary="Serve one inference request",
    )
    async def infer(request: HTTPRequest) -> JSONResponse:
        t_arrive = time.perf_counter()
        now_ms = time.time() * 1e3
        params: dict[str, str] = {}
        for k, v in request.query_params.multi_items():
            if k in params:
                raise HTTPProblem(400, f"field {k[:40]!r} is given twice")
            params[k] = v
        try:
            body = await body_of(request)
        except HTTPProblem as e:
            assert server.metrics is not None
            server.metrics.requests.labels(code=str(e.status)).inc()
            raise
        sock = request.scope.get("extensions", {}).get(SOCKET_EXTENSION)
        out = await server.infer(
            params, request.headers.get("content-type", ""), body, t_arrive=t_arrive,
            now_ms=now_ms, request_id=request.headers.get("x-request-id"),
            headers=request.headers,
            tcp_rtt=None if sock is None else (lambda: read_tcp_rtt(sock)),
        )  # fmt: skip
        return JSONResponse(out)

    @app.post(
        "/v1/outcome",
        response_model=OutcomeAnswer,
        responses={400: _err("bad field")},
        openapi_extra={"parameters": OUTCOME_PARAMETERS},
        summary="The client's measured end-to-end latency of a served request",
    )
    async def outcome(request: HTTPRequest) -> JSONResponse:
        params: dict[str, str] = {}
        for k, v in request.query_params.multi_items():
            if k in params:
                raise HTTPProblem(400, f"field {k[:40]!r} is given twice")
            params[k] = v
        return JSONResponse({"recorded": server.report_outcome(params)})

    @app.get("/v1/models", summary="The pool and its current profiles")
    async def models() -> dict[str, Any]:
        return server.models_doc()

    @app.get("/healthz", summary="Liveness; 'degraded' while the decision log fails")
    async def healthz() -> dict[str, Any]:
        return server.health()

    @app.get(
        "/metrics",
        summary="Prometheus metrics",
        response_class=Response,
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
    )
    async def metrics() -> Response:
        assert server.metrics is not None
        return Response(server.metrics.render(), media_type=METRICS_CONTENT_TYPE)

    @app.post(
        "/v1/admin/reload",
        response_model=ReloadAnswer,
        responses={
            400: _err("bad body"),
            401: _err("no token"),
            403: _err("wrong token or disabled"),
            408: _err("slow body"),
            409: _err("the selector refused the file; the old one serves"),
            413: _err("body too large"),
        },
        openapi_extra={
            "requestBody": {
                "required": False,
                "content": {"application/json": {"schema": ReloadBody.model_json_schema()}},
            },
            "security": [{"bearer": []}],
        },
        summary="Reload the selector (admin token)",
    )
    async def reload(request: HTTPRequest) -> JSONResponse:
        token = server.cfg.admin_token
        if not token:
            return problem(403, "the admin endpoint is disabled (no admin token configured)")
        auth = request.headers.get("authorization", "")
        if not auth:
            return problem(401, "missing admin token: send 'Authorization: Bearer <token>'")
        given = auth[7:] if auth.lower().startswith("bearer ") else ""
        if not hmac.compare_digest(given.encode(), token.encode()):
            return problem(403, "wrong admin token")
        body = await body_of(request)
        name = None
        if body.strip():
            doc, err = _parse_json(body)
            if err:
                return problem(400, err)
            if not isinstance(doc, dict):
                return problem(400, 'body must be a JSON object like {"selector": "x.onnx"}')
            extra = sorted(str(k)[:40] for k in set(doc) - {"selector"})
            if extra:
                return problem(400, f"unknown fields {extra[:5]}; allowed: ['selector']")
            name = doc.get("selector")
            if name is not None and not isinstance(name, str):
                return problem(400, "selector must be a file name (string)")
        ok, msg = await run_in_threadpool(server.reload, name)
        if not ok:
            return problem(409, msg)
        return JSONResponse({"reloaded": True, "message": msg, "selector": server.selector_label})

    base_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = base_openapi()
            doc.setdefault("components", {}).setdefault("securitySchemes", {})["bearer"] = {
                "type": "http", "scheme": "bearer",
            }  # fmt: skip
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _parse_json(body: bytes) -> tuple[Any, str]:
    """``(document, "")`` or ``(None, why)`` for a body that is not JSON or nests deeper than
    :data:`MAX_JSON_DEPTH` (checked before parsing: no recursion limit is ever reached)."""
    depth = deepest = 0
    in_str = esc = False
    for b in body:
        if in_str:
            if esc:
                esc = False
            elif b == 0x5C:
                esc = True
            elif b == 0x22:
                in_str = False
        elif b == 0x22:
            in_str = True
        elif b in (0x5B, 0x7B):
            depth += 1
            deepest = max(deepest, depth)
            if deepest > MAX_JSON_DEPTH:
                return None, f"body nests deeper than {MAX_JSON_DEPTH} levels"
        elif b in (0x5D, 0x7D):
            depth -= 1
    try:
        return json.loads(body), ""
    except (ValueError, RecursionError) as e:
        return None, f"body is not JSON: {type(e).__name__}: {str(e)[:80]}"


# ---------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    """The ``modi-serve`` argument parser."""
    p = argparse.ArgumentParser(
        prog="modi-serve",
        description="Serve a pool of ONNX models behind a learned selector (FastAPI + uvicorn): "
        "POST /v1/infer, GET /v1/models, /healthz, /metrics, POST /v1/admin/reload.",
        epilog="The admin token is read from the environment variable named by "
        "--admin-token-env (unset: the admin endpoint is disabled). A selector that cannot be "
        "loaded stops the start-up unless --allow-fallback is given.",
    )
    p.add_argument("--pool-dir", type=Path, required=True,
                   help="folder of the pool's ONNX models and their manifest.json")  # fmt: skip
    p.add_argument("--pool", type=Path, default=None,
                   help="pool YAML written by modi-profile (default: profile the models at "
                   "start-up)")  # fmt: skip
    p.add_argument(
        "--selector",
        default=None,
        help="selector .onnx file or models:/NAME@ALIAS (default: the ModiPick rule)",
    )
    p.add_argument("--allow-fallback", action="store_true",
                   help="start on ModiPick when the selector cannot be loaded")  # fmt: skip
    p.add_argument("--selector-dir", type=Path, default=None,
                   help="folder admin reloads may load file names from (default: the "
                   "selector's folder)")  # fmt: skip
    p.add_argument("--admin-token-env", default="MODI_ADMIN_TOKEN",
                   help="environment variable holding the admin token")  # fmt: skip
    p.add_argument(
        "--decision-log",
        type=Path,
        default=None,
        help="JSON-lines decision log for off-policy evaluation (modi-ope)",
    )
    p.add_argument(
        "--outcome-hold-s",
        type=float,
        default=0.0,
        help="hold each decision-log record this long for the client's measured "
        "end-to-end latency (POST /v1/outcome; modi-client --report-outcomes)",
    )
    p.add_argument("--explore", default="none",
                   help="exploration of the learned selector, logged as probabilities: none, "
                   "epsilon:E (E in [0, 1]) or softmax:T (T > 0)")  # fmt: skip
    p.add_argument(
        "--shadow",
        default=None,
        help="challenger selector .onnx asked on every request and logged in the "
        "record's 'shadow' field, never served (needs --decision-log)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=8000, help="port to listen on")
    p.add_argument("--threads", type=int, default=1,
                   help="onnxruntime intra-op threads per model execution")  # fmt: skip
    p.add_argument("--exec-slots", type=int, default=1, help="model executions at once")
    p.add_argument("--max-decodes", type=int, default=2,
                   help="image decodes at once (bounds the memory of decoding)")  # fmt: skip
    p.add_argument("--max-body-mb", type=float, default=8.0, help="largest request body (MiB)")
    p.add_argument(
        "--body-timeout-s",
        type=float,
        default=10.0,
        help="deadline for receiving a request body (slower uploads get 408)",
    )
    p.add_argument(
        "--header-timeout-s",
        type=float,
        default=10.0,
        help="deadline for a request's headers (slower clients are disconnected)",
    )
    p.add_argument("--limit-concurrency", type=int, default=256,
                   help="connections served at once (more get 503)")  # fmt: skip
    p.add_argument("--threshold-ms", type=float, default=10.0,
                   help="ModiPick's T_threshold (the fallback rule)")  # fmt: skip
    p.add_argument(
        "--rtt-source",
        choices=RTT_MODES,
        default="auto",
        help="where the connection's RTT features (srtt_ms, rttvar_ms) come from: auto (the "
        "socket's TCP_INFO on Linux, else the request's X-Modi-Srtt-Ms header or srtt_ms field, "
        "else unknown), socket, request (behind a proxy) or none",
    )
    p.add_argument(
        "--no-shield",
        action="store_true",
        help="serve the learned choice even where the shield would override it",
    )
    return p


def header_deadline_protocol(timeout_s: float) -> type:
    """uvicorn's h11 protocol with a deadline for request *headers* (slowloris): a connection
    whose next request's headers have not all arrived ``timeout_s`` seconds after it opened
    (or after the previous answer) is closed. The body deadline is the app's
    (``--body-timeout-s``).

    It also hands each request's socket to the app as ``scope["extensions"]["modi.socket"]``
    (:data:`SOCKET_EXTENSION`; uvicorn's scope carries no socket), where ``/v1/infer`` reads
    the connection's RTT (:func:`modi.serving.tcpinfo.read_tcp_rtt`)."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderDeadlineH11Protocol(H11Protocol):
        header_timeout_s = float(timeout_s)
        _header_timer: Any = None

        def _arm(self) -> None:
            self._disarm()
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._expired)

        def _disarm(self) -> None:
            timer = getattr(self, "_header_timer", None)
            if timer is not None:
                timer.cancel()
            self._header_timer = None

        def _expired(self) -> None:
            self._header_timer = None
            if not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def handle_events(self) -> None:
            before = self.cycle
            super().handle_events()
            if self.cycle is not before:  # a request's headers are complete
                self._disarm()
                # the app's task is created but has not run yet: its scope can still gain
                # the socket (a TransportSocket: getsockopt only)
                sock = self.transport.get_extra_info("socket")
                if sock is not None and self.cycle is not None:
                    ext = self.cycle.scope.setdefault("extensions", {})
                    ext[SOCKET_EXTENSION] = sock

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()

    return HeaderDeadlineH11Protocol


def main(argv: list[str] | None = None) -> None:
    """Command line entry point; a configuration error is one line on stderr (exit 2)."""
    p = build_parser()
    a = p.parse_args(argv)
    if not a.header_timeout_s > 0:
        p.error(f"--header-timeout-s must be > 0, got {a.header_timeout_s}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    cfg = ServeConfig(
        pool_dir=a.pool_dir, pool_yaml=a.pool, selector=a.selector,
        allow_fallback=a.allow_fallback, selector_dir=a.selector_dir,
        admin_token=os.environ.get(a.admin_token_env) or None, decision_log=a.decision_log,
        explore=a.explore, outcome_hold_s=a.outcome_hold_s, shadow=a.shadow,
        max_body_bytes=int(a.max_body_mb * 1024 * 1024),
        body_timeout_s=a.body_timeout_s, max_decodes=a.max_decodes,
        decode_limits=DecodeLimits(), threads=a.threads, exec_slots=a.exec_slots,
        threshold_ms=a.threshold_ms, shield=not a.no_shield, rtt_source=a.rtt_source,
    )  # fmt: skip
    try:
        app = create_app(cfg)
    except (ServerConfigError, ValueError, OSError) as e:
        print(f"modi-serve: error: {clean(str(e), 1000)}", file=sys.stderr)
        raise SystemExit(2) from None
    import uvicorn

    uvicorn.run(
        app, host=a.host, port=a.port, log_level="warning", access_log=False,
        timeout_keep_alive=5, limit_concurrency=a.limit_concurrency,
        http=header_deadline_protocol(a.header_timeout_s),
    )  # fmt: skip


if __name__ == "__main__":
    main()
