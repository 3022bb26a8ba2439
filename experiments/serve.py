"""``modi-serve``: the reference inference server — a pool of real ONNX models behind a
:class:`modi.runtime.Selector`, as a small FastAPI (ASGI) app run by uvicorn.

Endpoints:

* ``POST /v1/infer?sla_ms=..&upload_ms=..[&capture_ts_ms=..|&elapsed_ms=..][&client_id=..]``
  ``[&label=..][&shape=HxWx3]``: the body is an encoded image (``image/jpeg``, ``image/png``,
  ``image/webp``, ``image/bmp``; decoded and preprocessed in the server) or device-preprocessed
  pixels (``application/x-modi-pixels``: raw ``uint8`` RGB, ``shape`` given). ``capture_ts_ms``
  is the capture time (Unix epoch, ms; the server computes the elapsed time on arrival, so client
  and server clocks must agree — on loopback they do) or the client gives ``elapsed_ms`` itself.
  ``upload_ms`` is the measured upload time, ``label`` an optional true class for the decision
  log. The selector picks the model; the answer names it, the class and the server's timings.
* ``GET /v1/models``: the pool (ids, inputs, accuracy and its source, current μ/σ profiles).
* ``GET /healthz``: liveness and the selector's status.
* ``GET /metrics``: Prometheus text: requests by status, decisions per model and source,
  fallbacks by cause, histograms of selection, queueing, execution and server time, RSS.
* ``POST /v1/admin/reload`` (``Authorization: Bearer <token>``; body ``{"selector": NAME}``
  optional): reload the selector from a file *name* inside the selector folder; a file the
  selector refuses leaves the old one serving (HTTP 409).

Every execution time is folded into the selector's profiles (``observe``, EWMA), and with
``--decision-log`` every decision is appended as one JSON line (features, chosen model, source,
propensity, outcome) for off-policy evaluation. Bad input gets a 4xx JSON ``{"error": ...}``
naming the problem. Model files come only from the pool folder (ids are checked against the
pool; no request value reaches the filesystem); nothing is unpickled.

Usage::

    MODI_ADMIN_TOKEN=secret modi-serve --pool-dir serving_pool/imagenet \\
        --pool imagenet_pool.yaml --selector selector.onnx --decision-log decisions.jsonl
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import json
import logging
import math
import os
import re
import threading
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

try:
    from fastapi import FastAPI
    from fastapi import Request as HTTPRequest
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, PlainTextResponse
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException as StarletteHTTPException
except ImportError as _e:  # pragma: no cover - depends on the install
    raise ImportError(
        f"modi-serve needs FastAPI and uvicorn ({_e}): pip install 'modi[server]'"
    ) from _e

from modi.experiments.imaging import (
    IMAGE_CONTENT_TYPES,
    PIXELS_CONTENT_TYPE,
    ImageError,
    decode_image,
    parse_pixels,
    to_model_input,
)
from modi.experiments.zoo import ZooEntry, read_manifest
from modi.runtime import PoolProfile, Request, Selector
from modi.runtime import features as F
from modi.runtime.modipick import modipick_stages

log = logging.getLogger(__name__)

INFER_FIELDS = frozenset(
    {"sla_ms", "upload_ms", "capture_ts_ms", "elapsed_ms", "client_id", "label", "shape"}
)
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
#: Histogram buckets (ms) of every latency histogram.
BUCKETS_MS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 10000)


class ServerConfigError(ValueError):
    """The server cannot start with this configuration; the message says what to fix."""


class HTTPProblem(Exception):
    """A request the server refuses: HTTP ``status`` and a message naming the problem."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class ServeConfig:
    """Settings of one server.

    Attributes:
        pool_dir: folder of the ONNX models and their ``manifest.json`` (the only place model
            files are read from).
        pool_yaml: pool YAML from ``modi-profile`` (ids, accuracy, measured μ/σ); ``None``: the
            manifest's accuracies and a fresh 20-run profile.
        selector: selector ``.onnx`` (``None``: the ModiPick rule serves every request).
        selector_dir: folder the admin reload may load names from (default: the selector's).
        admin_token: token of the admin endpoint (``None``: the endpoint is disabled).
        decision_log: JSON-lines decision log (``None``: none).
        max_body_bytes: largest request body.
        threads: onnxruntime intra-op threads per model execution.
        exec_slots: model executions at once (more wait in the queue the selector sees).
        threshold_ms / shield / profile_alpha: the selector's settings.
    """

    pool_dir: Path
    pool_yaml: Path | None = None
    selector: Path | None = None
    selector_dir: Path | None = None
    admin_token: str | None = None
    decision_log: Path | None = None
    max_body_bytes: int = 8 * 1024 * 1024
    threads: int = 1
    exec_slots: int = 1
    threshold_ms: float = 10.0
    shield: bool = True
    profile_alpha: float = 0.1
    seed: int | None = 0


@dataclass
class HostedModel:
    """A loaded pool model."""

    entry: ZooEntry
    session: Any
    input_name: str


# ---------------------------------------------------------------- metrics
class Metrics:
    """Counters and histograms rendered as Prometheus text (no client library needed)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[tuple[str, tuple[tuple[str, str], ...]], float] = defaultdict(float)
        self._hist: dict[tuple[str, tuple[tuple[str, str], ...]], list[float]] = {}
        self._help: dict[str, tuple[str, str]] = {}

    def describe(self, name: str, kind: str, text: str) -> None:
        """Register a metric's type and help text."""
        self._help[name] = (kind, text)

    def inc(self, name: str, value: float = 1.0, **labels: str) -> None:
        """Add to a counter."""
        key = (name, tuple(sorted(labels.items())))
        with self._lock:
            self._counters[key] += value

    def observe(self, name: str, value_ms: float, **labels: str) -> None:
        """Record a value in a histogram."""
        key = (name, tuple(sorted(labels.items())))
        with self._lock:
            h = self._hist.get(key)
            if h is None:
                h = self._hist[key] = [0.0] * (len(BUCKETS_MS) + 2)  # buckets.., count, sum
            for i, b in enumerate(BUCKETS_MS):
                if value_ms <= b:
                    h[i] += 1
            h[-2] += 1
            h[-1] += value_ms

    def counter(self, name: str, **labels: str) -> float:
        """Current value of a counter."""
        with self._lock:
            return self._counters.get((name, tuple(sorted(labels.items()))), 0.0)

    def render(self, gauges: Mapping[str, float]) -> str:
        """Prometheus text exposition format 0.0.4."""

        def lab(items: Sequence[tuple[str, str]], extra: str = "") -> str:
            parts = [f'{k}="{_escape(v)}"' for k, v in items]
            if extra:
                parts.append(extra)
            return "{" + ",".join(parts) + "}" if parts else ""

        lines: list[str] = []
        with self._lock:
            counters = sorted(self._counters.items())
            hists = sorted((k, list(v)) for k, v in self._hist.items())
        seen: set[str] = set()
        for (name, labels), v in counters:
            if name not in seen and name in self._help:
                seen.add(name)
                kind, text = self._help[name]
                lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
            lines.append(f"{name}{lab(labels)} {v:g}")
        for (name, labels), h in hists:
            if name not in seen and name in self._help:
                seen.add(name)
                kind, text = self._help[name]
                lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
            for b, c in zip(BUCKETS_MS, h, strict=False):
                le = 'le="' + f"{b:g}" + '"'
                lines.append(f"{name}_bucket{lab(labels, le)} {c:g}")
            inf = 'le="+Inf"'
            lines.append(f"{name}_bucket{lab(labels, inf)} {h[-2]:g}")
            lines.append(f"{name}_count{lab(labels)} {h[-2]:g}")
            lines.append(f"{name}_sum{lab(labels)} {h[-1]:.6g}")
        for name, v in gauges.items():
            lines += [f"# TYPE {name} gauge", f"{name} {v:g}"]
        return "\n".join(lines) + "\n"


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def rss_bytes() -> int:
    """Resident set size of this process (bytes; 0 where ``/proc`` is not available)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def fallback_cause(reason: str) -> str:
    """A fallback reason's cause (the text before the first colon), for metric labels."""
    return reason.split(":", 1)[0].strip() or "unknown"


# ---------------------------------------------------------------- the server state
class InferenceServer:
    """The pool, the selector, metrics and the decision log; framework-independent so tests and
    other servers can drive it. :func:`create_app` puts HTTP in front of it."""

    def __init__(self, cfg: ServeConfig) -> None:
        self.cfg = cfg
        self.pool_dir = Path(cfg.pool_dir).resolve()
        entries = {e.id: e for e in read_manifest(self.pool_dir)}
        pool = self._pool_profile(entries)
        self.models: dict[str, HostedModel] = {}
        for mid in pool.ids:
            self.models[mid] = self._open(entries[mid])
        if cfg.pool_yaml is None:
            pool = self._measure(pool)
        self.pool = pool
        self.selector = Selector.load(
            cfg.selector,
            pool,
            threshold_ms=cfg.threshold_ms,
            shield=cfg.shield,
            profile_alpha=cfg.profile_alpha,
            seed=cfg.seed,
        )
        sel_dir = cfg.selector_dir or (Path(cfg.selector).parent if cfg.selector else None)
        self.selector_dir = Path(sel_dir).resolve() if sel_dir is not None else None
        self.metrics = Metrics()
        m = self.metrics
        m.describe("modi_requests_total", "counter", "Inference requests by HTTP status")
        m.describe("modi_decisions_total", "counter", "Decisions per model and source")
        m.describe("modi_fallbacks_total", "counter", "ModiPick fallbacks by cause")
        m.describe("modi_reloads_total", "counter", "Admin selector reloads by result")
        m.describe("modi_select_ms", "histogram", "Selector decision time (ms)")
        m.describe("modi_queue_ms", "histogram", "Wait for an execution slot (ms)")
        m.describe("modi_preprocess_ms", "histogram", "Decode and preprocessing time (ms)")
        m.describe("modi_exec_ms", "histogram", "Model execution time per model (ms)")
        m.describe("modi_server_ms", "histogram", "Arrival to response in the server (ms)")
        self._waiting = 0
        self._inflight = 0
        self._state_lock = threading.Lock()
        self._log_lock = threading.Lock()
        self._log = open(cfg.decision_log, "a", buffering=1) if cfg.decision_log else None  # noqa: SIM115
        self._acc = np.asarray(pool.accuracy)
        log.info("serving %d models from %s; selector %s", len(pool.ids), self.pool_dir,
                 self.selector.status)  # fmt: skip

    # -------------------------------------------------------------- loading
    def _pool_profile(self, entries: Mapping[str, ZooEntry]) -> PoolProfile:
        cfg = self.cfg
        if cfg.pool_yaml is None:
            ids = list(entries)
            return PoolProfile.from_lists(
                ids, [entries[i].accuracy for i in ids], [1.0] * len(ids), [0.0] * len(ids),
                name=self.pool_dir.name,
            )  # fmt: skip
        from modi.envs.pools import ModelPool

        pool = ModelPool.from_config(Path(cfg.pool_yaml).stem, path=cfg.pool_yaml)
        unknown = [i for i in pool.ids if i not in entries]
        if unknown:
            raise ServerConfigError(
                f"{cfg.pool_yaml} names models {unknown} that {self.pool_dir}/manifest.json lacks"
            )
        return PoolProfile.from_pool(pool)

    def _open(self, entry: ZooEntry) -> HostedModel:
        """Open a model file strictly inside the pool folder."""
        from modi.experiments.profile import open_session

        if not _SAFE_NAME.match(entry.file) or not entry.file.endswith(".onnx"):
            raise ServerConfigError(f"model {entry.id!r}: file name {entry.file!r} is not allowed")
        path = (self.pool_dir / entry.file).resolve()
        if path.parent != self.pool_dir or not path.is_file():
            raise ServerConfigError(f"model {entry.id!r}: {path} is not a file in {self.pool_dir}")
        sess = open_session(path, self.cfg.threads)
        shape = tuple(sess.get_inputs()[0].shape[1:])
        if shape != tuple(entry.input):
            raise ServerConfigError(
                f"model {entry.id!r}: graph input {shape} differs from the manifest's {entry.input}"
            )
        return HostedModel(entry, sess, sess.get_inputs()[0].name)

    def _measure(self, pool: PoolProfile) -> PoolProfile:
        from modi.experiments.profile import time_model

        mu, sd = [], []
        for mid in pool.ids:
            t = time_model(self.models[mid].session, 20, 3)
            mu.append(float(t.mean()))
            sd.append(float(t.std(ddof=1)))
        return PoolProfile.from_lists(pool.ids, pool.accuracy, mu, sd, pool.name)

    # -------------------------------------------------------------- requests
    def parse_infer(
        self, params: Mapping[str, str], content_type: str, body: bytes, now_ms: float
    ) -> tuple[Request, np.ndarray | bytes, dict[str, Any]]:
        """Validate an inference request; raise :class:`HTTPProblem` naming the problem.

        Returns the selector's :class:`Request`, the body (pixels or undecoded bytes) and extras.
        """
        unknown = sorted(set(params) - INFER_FIELDS)
        if unknown:
            raise HTTPProblem(400, f"unknown fields {unknown}; allowed: {sorted(INFER_FIELDS)}")
        sla = _required(params, "sla_ms", positive=True)
        upload = _number(params, "upload_ms", required=False) or 0.0
        if "elapsed_ms" in params and "capture_ts_ms" in params:
            raise HTTPProblem(400, "give either elapsed_ms or capture_ts_ms, not both")
        if "capture_ts_ms" in params:
            cap = _required(params, "capture_ts_ms")
            elapsed = now_ms - cap
            if elapsed < 0:
                raise HTTPProblem(
                    400, f"capture_ts_ms is {-elapsed:.1f} ms in the future: clocks disagree"
                )
        else:
            elapsed = _number(params, "elapsed_ms", required=False) or 0.0
        client = params.get("client_id")
        if client is not None and not _SAFE_NAME.match(client):
            raise HTTPProblem(400, "client_id must be 1-128 characters of [A-Za-z0-9_.-]")
        extras: dict[str, Any] = {"sla_ms": sla, "elapsed_ms": elapsed, "upload_ms": upload}
        if "label" in params:
            try:
                extras["label"] = int(params["label"])
            except ValueError:
                raise HTTPProblem(
                    400, f"label must be an integer, got {params['label']!r}"
                ) from None
        if not body:
            raise HTTPProblem(400, "empty body: send an image or preprocessed pixels")
        ctype = content_type.split(";", 1)[0].strip().lower()
        payload: np.ndarray | bytes
        if ctype == PIXELS_CONTENT_TYPE:
            shape_txt = params.get("shape")
            if shape_txt is None:
                raise HTTPProblem(400, f"{PIXELS_CONTENT_TYPE} needs shape=HxWx3")
            try:
                shape = [int(s) for s in shape_txt.lower().split("x")]
                payload = parse_pixels(body, shape)
            except ValueError as e:
                raise HTTPProblem(400, f"bad preprocessed pixels: {e}") from None
            extras["preprocessed"] = True
        elif ctype in IMAGE_CONTENT_TYPES:
            if "shape" in params:
                raise HTTPProblem(400, "shape is only for application/x-modi-pixels bodies")
            payload = body
            extras["preprocessed"] = False
        else:
            raise HTTPProblem(
                415,
                f"content type {ctype or '(none)'!r} is not served; send one of "
                f"{[*IMAGE_CONTENT_TYPES, PIXELS_CONTENT_TYPE]}",
            )
        req = Request(
            sla_ms=sla, elapsed_ms=elapsed, upload_ms=upload, payload_bytes=float(len(body)),
            client_id=client,
        )  # fmt: skip
        return req, payload, extras

    def decode(self, payload: np.ndarray | bytes) -> np.ndarray:
        """Pixels of the payload (decoding an encoded image); :class:`HTTPProblem` 400 if bad."""
        if isinstance(payload, np.ndarray):
            return payload
        try:
            return decode_image(payload)
        except ImageError as e:
            raise HTTPProblem(400, str(e)) from None

    def enter_queue(self) -> None:
        """A request waits for an execution slot (the selector sees the queue length)."""
        with self._state_lock:
            self._waiting += 1
            q = self._waiting
        self.selector.set_load(queue_len=float(q - 1))

    def leave_queue(self) -> None:
        """A request got its slot (or gave up)."""
        with self._state_lock:
            self._waiting -= 1

    def select(self, req: Request) -> tuple[Any, float, list[float] | None]:
        """The selector's decision, its time (ms) and (when logging) the features it saw."""
        feats = None
        if self._log is not None:
            try:
                feats = self.selector.features(req).tolist()
            except ValueError:
                feats = None
        t0 = time.perf_counter()
        d = self.selector.select(req)
        sel_ms = (time.perf_counter() - t0) * 1e3
        self.metrics.observe("modi_select_ms", sel_ms)
        self.metrics.inc("modi_decisions_total", model=d.model_id, source=d.source)
        if not d.learned:
            self.metrics.inc("modi_fallbacks_total", cause=fallback_cause(d.reason))
        return d, sel_ms, feats

    def execute(self, model_id: str, pixels: np.ndarray) -> tuple[int, float, float]:
        """Preprocess for and run ``model_id``; returns ``(class, preprocess_ms, exec_ms)`` and
        folds the execution time into the selector's profile."""
        hm = self.models[model_id]
        e = hm.entry
        t0 = time.perf_counter()
        x = to_model_input(pixels, e.input, e.color, e.scale, e.mean, e.std)
        t1 = time.perf_counter()
        logits = hm.session.run(None, {hm.input_name: x})[0]
        t2 = time.perf_counter()
        exec_ms = (t2 - t1) * 1e3
        self.selector.observe(model_id, exec_ms)
        self.metrics.observe("modi_exec_ms", exec_ms, model=model_id)
        return int(np.argmax(logits)), (t1 - t0) * 1e3, exec_ms

    def propensity(self, decision: Any, feats: list[float] | None) -> float | None:
        """Probability the policy gave its choice: 1 for the deterministic learned selector,
        ModiPick's stage-three probability for a fallback (``None`` if unknown)."""
        if decision.learned:
            return 1.0
        if feats is None:
            return None
        mu, sigma = self.selector.profiles
        st = modipick_stages(
            np.array([feats[F.BUDGET]]), mu, sigma, self._acc, self.cfg.threshold_ms
        )
        return float(st.probability[0, decision.index])

    def write_log(self, record: Mapping[str, Any]) -> None:
        """Append one decision to the JSON-lines log."""
        if self._log is None:
            return
        line = json.dumps(record, separators=(",", ":"), allow_nan=False, default=_jsonable)
        with self._log_lock:
            self._log.write(line + "\n")

    def reload(self, name: str | None) -> tuple[bool, str]:
        """Reload the selector from ``name`` in the selector folder (``None``: the configured
        file again). Returns ``(swapped, message)``; refusal keeps the current one serving."""
        if name is None:
            if self.cfg.selector is None:
                return False, "no selector file is configured: name one in the body"
            path = Path(self.cfg.selector)
        else:
            if self.selector_dir is None:
                return False, "no selector folder is configured (start with --selector-dir)"
            if not _SAFE_NAME.match(name) or not name.endswith(".onnx"):
                return False, f"selector name {name!r} must be a plain file name ending in .onnx"
            path = (self.selector_dir / name).resolve()
            if path.parent != self.selector_dir:
                return False, f"{name!r} is not inside the selector folder"
        ok = self.selector.reload(path)
        self.metrics.inc("modi_reloads_total", result="loaded" if ok else "refused")
        if ok:
            return True, f"loaded {path.name}"
        return (
            False,
            f"refused {path.name}: {self.selector.last_error}; still {self.selector.status}",
        )

    def models_doc(self) -> dict[str, Any]:
        """What ``GET /v1/models`` returns."""
        mu, sigma = self.selector.profiles
        out = []
        for i, mid in enumerate(self.pool.ids):
            e = self.models[mid].entry
            out.append(
                {
                    "id": mid, "input": e.input, "color": e.color,
                    "accuracy": self.pool.accuracy[i],
                    "accuracy_source": e.accuracy_source, "mean_ms": float(mu[i]),
                    "std_ms": float(sigma[i]), "labels": e.labels,
                }
            )  # fmt: skip
        return {"pool": self.pool.name, "models": out, "selector": self.selector.status}

    def metrics_text(self) -> str:
        """The ``/metrics`` body."""
        with self._state_lock:
            waiting = self._waiting
        return self.metrics.render(
            {
                "modi_queue_length": float(max(waiting - self.cfg.exec_slots, 0)),
                "modi_selector_learned": float(self.selector.learned),
                "process_resident_memory_bytes": float(rss_bytes()),
            }
        )

    def close(self) -> None:
        """Close the decision log."""
        if self._log is not None:
            with self._log_lock:
                self._log.close()
                self._log = None


def _jsonable(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    return str(o)


def _required(params: Mapping[str, str], name: str, positive: bool = False) -> float:
    x = _number(params, name, True, positive)
    assert x is not None
    return x


def _number(
    params: Mapping[str, str], name: str, required: bool, positive: bool = False
) -> float | None:
    raw = params.get(name)
    if raw is None:
        if required:
            raise HTTPProblem(400, f"missing field {name!r}")
        return None
    try:
        x = float(raw)
    except ValueError:
        raise HTTPProblem(400, f"{name} must be a number, got {raw!r}") from None
    if math.isnan(x):
        raise HTTPProblem(400, f"{name} is NaN")
    if math.isinf(x):
        raise HTTPProblem(400, f"{name} is infinite")
    if x < 0 or (positive and x == 0):
        raise HTTPProblem(400, f"{name} must be {'> 0' if positive else '>= 0'}, got {x:g}")
    return x


# ---------------------------------------------------------------- HTTP
def create_app(cfg: ServeConfig | InferenceServer) -> FastAPI:
    """The FastAPI app serving ``cfg`` (a config, or a ready :class:`InferenceServer`)."""
    server = cfg if isinstance(cfg, InferenceServer) else InferenceServer(cfg)
    app = FastAPI(title="modi reference server", version="1")
    app.state.server = server
    lock_holder: dict[str, asyncio.Semaphore] = {}

    def sem() -> asyncio.Semaphore:
        """The execution slots (created lazily, inside the serving event loop)."""
        s = lock_holder.get("s")
        if s is None:
            s = lock_holder["s"] = asyncio.Semaphore(server.cfg.exec_slots)
        return s

    def problem(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message, "status": status}, status_code=status)

    @app.exception_handler(HTTPProblem)
    async def _on_problem(_: HTTPRequest, exc: HTTPProblem) -> JSONResponse:
        server.metrics.inc("modi_requests_total", code=str(exc.status))
        return problem(exc.status, exc.message)

    @app.exception_handler(StarletteHTTPException)
    async def _on_http(_: HTTPRequest, exc: StarletteHTTPException) -> JSONResponse:
        return problem(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def _on_validation(_: HTTPRequest, exc: RequestValidationError) -> JSONResponse:
        return problem(400, f"invalid request: {exc.errors()}")

    async def read_body(request: HTTPRequest) -> bytes:
        limit = server.cfg.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None:
            try:
                n = int(declared)
            except ValueError:
                raise HTTPProblem(400, f"content-length {declared!r} is not a number") from None
            if n > limit:
                raise HTTPProblem(413, f"body of {n} bytes is over the {limit}-byte limit")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise HTTPProblem(413, f"body is over the {limit}-byte limit")
            chunks.append(chunk)
        return b"".join(chunks)

    @app.post("/v1/infer")
    async def infer(request: HTTPRequest) -> JSONResponse:
        t_arrive = time.perf_counter()
        now_ms = time.time() * 1e3
        params: dict[str, str] = {}
        for k, v in request.query_params.multi_items():
            if k in params:
                raise HTTPProblem(400, f"field {k!r} is given twice")
            params[k] = v
        body = await read_body(request)
        req, payload, extras = server.parse_infer(
            params, request.headers.get("content-type", ""), body, now_ms
        )
        t_dec = time.perf_counter()
        pixels = await run_in_threadpool(server.decode, payload)
        decode_ms = (time.perf_counter() - t_dec) * 1e3
        server.enter_queue()
        t_q = time.perf_counter()
        queued = True
        try:
            async with sem():
                server.leave_queue()
                queued = False
                queue_ms = (time.perf_counter() - t_q) * 1e3
                # Elapsed time as the selector sees it: on arrival plus what the server spent
                # decoding and queueing before this decision.
                elapsed = extras["elapsed_ms"] + (time.perf_counter() - t_arrive) * 1e3
                req = Request(req.sla_ms, elapsed, req.upload_ms, req.payload_bytes, req.client_id)
                decision, sel_ms, feats = server.select(req)
                cls, pre_ms, exec_ms = await run_in_threadpool(
                    server.execute, decision.model_id, pixels
                )
        finally:
            if queued:  # cancelled while waiting for a slot
                server.leave_queue()
        server_ms = (time.perf_counter() - t_arrive) * 1e3
        m = server.metrics
        m.observe("modi_queue_ms", queue_ms)
        m.observe("modi_preprocess_ms", decode_ms + pre_ms)
        m.observe("modi_server_ms", server_ms)
        m.inc("modi_requests_total", code="200")
        label = extras.get("label")
        out = {
            "model_id": decision.model_id,
            "source": decision.source,
            "reason": decision.reason,
            "class_index": cls,
            "correct": None if label is None else bool(cls == label),
            "accuracy": server.pool.accuracy[decision.index],
            "elapsed_ms_at_selection": elapsed,
            "timings_ms": {
                "decode": decode_ms,
                "queue": queue_ms,
                "select": sel_ms,
                "preprocess": pre_ms,
                "exec": exec_ms,
                "server": server_ms,
            },
        }
        if server._log is not None:
            server.write_log(
                {
                    "ts": now_ms / 1e3, "client_id": req.client_id, "sla_ms": req.sla_ms,
                    "elapsed_ms": elapsed, "upload_ms": req.upload_ms,
                    "payload_bytes": req.payload_bytes, "preprocessed": extras["preprocessed"],
                    "features": feats, "model_id": decision.model_id, "index": decision.index,
                    "source": decision.source, "reason": decision.reason,
                    "propensity": server.propensity(decision, feats),
                    "outcome": {"class_index": cls, "label": label, "correct": out["correct"],
                                "exec_ms": exec_ms, "server_ms": server_ms,
                                "select_ms": sel_ms, "queue_ms": queue_ms},
                }
            )  # fmt: skip
        return JSONResponse(out)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return server.models_doc()

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"ok": True, "models": len(server.models), "selector": server.selector.status}

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(server.metrics_text(), media_type="text/plain; version=0.0.4")

    @app.post("/v1/admin/reload")
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
        body = await read_body(request)
        name = None
        if body.strip():
            try:
                doc = json.loads(body)
            except ValueError as e:
                return problem(400, f"body is not JSON: {e}")
            if not isinstance(doc, dict):
                return problem(400, 'body must be a JSON object like {"selector": "x.onnx"}')
            extra = sorted(set(doc) - {"selector"})
            if extra:
                return problem(400, f"unknown fields {extra}; allowed: ['selector']")
            name = doc.get("selector")
            if name is not None and not isinstance(name, str):
                return problem(400, "selector must be a file name (string)")
        ok, msg = await run_in_threadpool(server.reload, name)
        if not ok:
            return problem(409, msg)
        return JSONResponse({"reloaded": True, "message": msg, "selector": server.selector.status})

    return app


def main(argv: list[str] | None = None) -> None:
    """Command line entry point."""
    p = argparse.ArgumentParser(prog="modi-serve", description=__doc__.split("\n")[0])
    p.add_argument("--pool-dir", type=Path, required=True, help="folder of models + manifest")
    p.add_argument("--pool", type=Path, default=None, help="pool YAML from modi-profile")
    p.add_argument("--selector", type=Path, default=None, help="selector .onnx (default ModiPick)")
    p.add_argument("--selector-dir", type=Path, default=None, help="folder admin reloads read")
    p.add_argument(
        "--admin-token-env", default="MODI_ADMIN_TOKEN",
        help="environment variable holding the admin token (unset: admin endpoint disabled)",
    )  # fmt: skip
    p.add_argument("--decision-log", type=Path, default=None, help="JSON-lines decision log")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    p.add_argument("--exec-slots", type=int, default=1, help="model executions at once")
    p.add_argument("--max-body-mb", type=float, default=8.0)
    p.add_argument("--threshold-ms", type=float, default=10.0)
    p.add_argument("--no-shield", action="store_true")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    import uvicorn

    cfg = ServeConfig(
        pool_dir=a.pool_dir, pool_yaml=a.pool, selector=a.selector, selector_dir=a.selector_dir,
        admin_token=os.environ.get(a.admin_token_env) or None, decision_log=a.decision_log,
        max_body_bytes=int(a.max_body_mb * 1024 * 1024), threads=a.threads,
        exec_slots=a.exec_slots, threshold_ms=a.threshold_ms, shield=not a.no_shield,
    )  # fmt: skip
    try:
        app = create_app(cfg)
    except (ServerConfigError, ValueError) as e:
        p.error(str(e))
    uvicorn.run(app, host=a.host, port=a.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
