"""The server's request handling, independent of any web framework: validation, decoding,
selection (with exploration and a shadow challenger), execution, the decision log, metrics and
health. ``modi-serve`` (FastAPI/uvicorn) is a thin shell around :class:`InferenceServer`; any
other server (e.g. a Ray Serve deployment) can embed it the same way::

    server = InferenceServer(ServeConfig(pool_dir=..., pool_yaml=..., selector=...))
    body = await read_body(chunks, content_length, server.cfg.max_body_bytes,
                           server.cfg.body_timeout_s)
    answer = await server.infer(query_params, content_type, body,   # HTTPProblem for 4xx
                                headers=headers, tcp_rtt=lambda: read_tcp_rtt(sock))
    text = server.metrics.render(); health = server.health()

The client's download history (feature schema v3: ``client_dl_ms``, ``client_dlvar_ms``, its
smoothed download time of its previous answers and their mean deviation; v4:
``client_dl_mismatch``, its smoothed ``|ln(download / upload)|`` of them, each download against
the upload time of the same request) always comes from the request, as query fields or the
``X-Modi-Client-Dl-Ms``/``X-Modi-Client-Dlvar-Ms``/``X-Modi-Client-Dl-Mismatch`` headers: the
server cannot see when its answer reaches the client. Absent (a client's first request): unknown,
which scorers impute (never a fallback). Requests with and without it are counted
(:class:`DownloadHistoryCounts`).

Nothing here fails a request for the server's own bookkeeping: decision-log writes happen in a
background thread (:mod:`modi.serving.logwriter`) and the shadow selector runs there too, on
batches of logged decisions, off the request path.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from numpy.typing import NDArray

from modi.experiments.imaging import PIXELS_CONTENT_TYPE, ImageError, parse_pixels, to_model_input
from modi.experiments.zoo import ZooEntry, read_manifest
from modi.runtime import PoolProfile, Request, Selector
from modi.runtime import features as F
from modi.runtime.metadata import pool_hash
from modi.runtime.requests import InvalidRequest, RequestLimits, parse_request
from modi.runtime.selector import Decision, SelectorLoadError
from modi.serving.errors import HTTPProblem, ServerConfigError, clean, file_label, show
from modi.serving.images import FORMATS, DecodeLimits, ImageRefused, decode
from modi.serving.logwriter import DecisionLogWriter
from modi.serving.metrics import SELECTOR_KINDS, ServingMetrics
from modi.serving.policy import (
    MODIPICK_INFO,
    NONE,
    Exploration,
    Scorer,
    draw,
    epsilon_probabilities,
    file_version,
    modipick_probabilities,
    one_hot,
    selector_info,
    softmax_probabilities,
)
from modi.serving.tcpinfo import (
    RTT_MODES,
    RTTVAR_HEADER,
    SRTT_HEADER,
    RttSources,
    tcp_info_supported,
)

log = logging.getLogger(__name__)

#: Query fields of ``POST /v1/infer``.
INFER_FIELDS = frozenset(
    {"sla_ms", "upload_ms", "capture_ts_ms", "elapsed_ms", "client_id", "label", "shape",
     "srtt_ms", "rttvar_ms", "prev_download_ms", "client_dl_ms", "client_dlvar_ms",
     "client_dl_mismatch"}
)  # fmt: skip
#: Headers that may carry the client's download history instead of its query fields.
CLIENT_DL_HEADER = "x-modi-client-dl-ms"
CLIENT_DLVAR_HEADER = "x-modi-client-dlvar-ms"
CLIENT_MISMATCH_HEADER = "x-modi-client-dl-mismatch"
#: Request features of the client's download history (always sent by the client).
DOWNLOAD_FEATURES: tuple[str, str] = ("client_dl_ms", "client_dlvar_ms")
#: Content types ``POST /v1/infer`` accepts.
CONTENT_TYPES: tuple[str, ...] = (*FORMATS, PIXELS_CONTENT_TYPE)
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
#: Largest class label accepted (a label is an index into a model's classes).
MAX_LABEL = 1_000_000
SCHEMA = f"{F.SCHEMA_NAME} v{F.SCHEMA_VERSION}"
T = TypeVar("T")


@dataclass
class ServeConfig:
    """Settings of one server.

    Attributes:
        pool_dir: folder of the ONNX models and their ``manifest.json`` (the only place model
            files are read from).
        pool_yaml: pool YAML from ``modi-profile`` (ids, accuracy, measured μ/σ); ``None``: the
            manifest's accuracies and a fresh 20-run profile.
        selector: selector ``.onnx`` or ``models:/name@alias`` (``None``: ModiPick serves).
        allow_fallback: start on ModiPick when the selector cannot be loaded (otherwise the
            server refuses to start).
        selector_dir: folder the admin reload may load names from (default: the selector's).
        admin_token: token of the admin endpoint (``None``: the endpoint is disabled).
        decision_log: JSON-lines decision log (``None``: none).
        explore: exploration of the learned selector: ``none``, ``epsilon:E``, ``softmax:T``.
        outcome_hold_s: keep each decision-log record up to this long for the client's
            measured end-to-end latency (``POST /v1/outcome``); 0: the record's latency is the
            server's (capture to the answer leaving the server, no download).
        shadow: challenger selector asked on every request and logged, never served (needs
            ``decision_log``).
        max_body_bytes: largest request body.
        body_timeout_s: deadline for receiving a request's body (slow uploads get 408).
        max_decodes: image decodes at once (more wait).
        decode_limits: pixel bounds of decoded images.
        threads: onnxruntime intra-op threads per model execution.
        exec_slots: model executions at once (more wait in the queue the selector sees).
        threshold_ms / shield / profile_alpha / seed: the selector's settings (``shield``:
            whatever :class:`~modi.runtime.Selector` accepts).
        rtt_source: where the ``srtt_ms``/``rttvar_ms`` features come from
            (:data:`modi.serving.tcpinfo.RTT_MODES`): ``auto`` (the socket's ``TCP_INFO``, else
            the request's ``X-Modi-Srtt-Ms`` header or ``srtt_ms`` field, else unknown),
            ``socket``, ``request`` (behind a proxy) or ``none``.
    """

    pool_dir: Path
    pool_yaml: Path | None = None
    selector: str | os.PathLike[str] | None = None
    allow_fallback: bool = False
    selector_dir: Path | None = None
    admin_token: str | None = None
    decision_log: Path | None = None
    explore: str = "none"
    outcome_hold_s: float = 0.0
    shadow: str | os.PathLike[str] | None = None
    max_body_bytes: int = 8 * 1024 * 1024
    body_timeout_s: float = 10.0
    max_decodes: int = 2
    decode_limits: DecodeLimits = field(default_factory=DecodeLimits)
    threads: int = 1
    exec_slots: int = 1
    threshold_ms: float = 10.0
    shield: bool | str = True
    profile_alpha: float = 0.1
    seed: int | None = 0
    rtt_source: str = "auto"


@dataclass
class HostedModel:
    """A loaded pool model."""

    entry: ZooEntry
    session: Any
    input_name: str


@dataclass
class Choice:
    """One request's decision as served and logged.

    ``decision`` is the selector's; ``action``/``model_id`` what is served (exploration may
    differ from the greedy choice); ``probabilities`` the logging policy's vector (``None``
    when not logging).
    """

    decision: Decision
    action: int
    model_id: str
    probabilities: list[float] | None
    features: list[float | None] | None
    select_ms: float
    explored: bool = False


class DownloadHistoryCounts:
    """Requests that carried the client's download history (``client_dl_ms``) and those that
    did not (a client's first request, or a client that does not measure it), thread-safe."""

    def __init__(self) -> None:
        self._counts = {"carried": 0, "none": 0}
        self._lock = threading.Lock()

    @property
    def counts(self) -> dict[str, int]:
        """``{"carried": n, "none": m}`` so far."""
        with self._lock:
            return dict(self._counts)

    def count(self, carried: bool) -> None:
        """Count one request."""
        with self._lock:
            self._counts["carried" if carried else "none"] += 1


def fallback_cause(reason: str) -> str:
    """A fallback reason's cause (the text before the first colon), for metric labels."""
    return reason.split(":", 1)[0].strip() or "unknown"


def _loaded_path(sel: Selector) -> Path | None:
    """The file the selector serves (resolved for MLflow URIs), if any."""
    m = getattr(sel, "_model", None)
    p = getattr(m, "path", None)
    return Path(p) if p is not None else None


def _info_of(sel: Selector, source: Any, exploration: Exploration) -> dict[str, Any]:
    if not sel.learned:
        return dict(MODIPICK_INFO)
    path = _loaded_path(sel)
    name = str(source) if str(source).startswith("models:/") else file_label(source)
    try:
        version = file_version(path) if path is not None else f"uri:{source}"
    except OSError:
        version = f"uri:{source}"
    return selector_info(name, version, exploration)


# ---------------------------------------------------------------- the shadow challenger
class Shadow:
    """A challenger selector asked on every logged decision, off the request path: the log's
    writer thread hands it each batch of records and it decides on the *same* observations the
    champion saw (``Selector.select_features``), filling each record's ``shadow`` field."""

    def __init__(self, source: str | os.PathLike[str], pool: PoolProfile, cfg: ServeConfig,
                 metrics_ref: Callable[[], ServingMetrics | None]) -> None:  # fmt: skip
        try:
            self.selector = Selector.load(
                source, pool, strict=True, threshold_ms=cfg.threshold_ms, shield=cfg.shield,
                profile_alpha=cfg.profile_alpha, seed=cfg.seed,
            )  # fmt: skip
        except SelectorLoadError as e:
            raise ServerConfigError(f"--shadow {file_label(source)}: {clean(str(e))}") from None
        if not hasattr(self.selector, "select_features"):
            raise ServerConfigError("--shadow needs Selector.select_features (modi.runtime)")
        self.info = _info_of(self.selector, source, NONE)
        self.k = pool.num_models
        self.threshold_ms = cfg.threshold_ms
        self._metrics = metrics_ref
        self.decisions = 0  # shadow decisions so far
        self.busy_s = 0.0  # time spent in fill (the writer thread's, never a request's)

    def fill(self, batch: list[dict[str, Any]]) -> None:
        """Set ``shadow`` on every record of ``batch`` that carries features (one batched
        decision for the whole batch)."""
        rows = [r for r in batch if r.get("features") is not None]
        if not rows:
            return
        n = len(rows)
        x = np.asarray([r["features"] for r in rows], dtype=np.float32)  # null: NaN
        hist = x[:, F.SELF_IMPUTED_COLUMNS]  # null there: the encoded "no history yet"
        x[:, F.SELF_IMPUTED_COLUMNS] = np.where(np.isnan(hist), F.UNKNOWN_HISTORY, hist)
        t0 = time.perf_counter()
        ds = self.selector.select_features(x)
        idx = np.asarray(ds.index)
        prob = np.zeros((n, self.k))
        prob[np.arange(n), idx] = 1.0
        fb = np.flatnonzero(~np.asarray(ds.learned, dtype=bool))
        if fb.size:
            prob[fb] = modipick_probabilities(x[fb], self.k, self.threshold_ms)
        per_ms = (time.perf_counter() - t0) * 1e3 / n
        ids = self.selector.pool.ids
        info = self.info
        agree = 0
        for r, a, p in zip(rows, idx.tolist(), prob.tolist(), strict=True):
            r["shadow"] = {"selector": info, "action": a, "model_id": ids[a], "probabilities": p}
            agree += a == r["action"]
        m = self._metrics()
        if m is not None:
            m.shadow.labels(agree="true").inc(agree)
            m.shadow.labels(agree="false").inc(n - agree)
            m.shadow_ms.observe(per_ms)
            m.shadow_batches.inc()
        self.decisions += n
        self.busy_s += time.perf_counter() - t0


# ---------------------------------------------------------------- the server
class InferenceServer:
    """The pool, the selector, exploration, the shadow, metrics and the decision log;
    framework-independent so tests and other servers can drive it."""

    def __init__(self, cfg: ServeConfig) -> None:
        self.cfg = cfg
        if cfg.shadow is not None and cfg.decision_log is None:
            raise ServerConfigError("--shadow needs --decision-log (the shadow's choices are "
                                    "only logged)")  # fmt: skip
        if cfg.max_decodes < 1 or cfg.exec_slots < 1:
            raise ServerConfigError("max_decodes and exec_slots must be >= 1")
        if not (math.isfinite(cfg.outcome_hold_s) and 0 <= cfg.outcome_hold_s <= 600):
            raise ServerConfigError(
                f"outcome_hold_s must be in [0, 600] s, got {cfg.outcome_hold_s}"
            )
        if not (math.isfinite(cfg.body_timeout_s) and cfg.body_timeout_s > 0):
            raise ServerConfigError(f"body_timeout_s must be > 0, got {cfg.body_timeout_s}")
        try:
            self.exploration = Exploration.parse(cfg.explore)
        except ValueError as e:
            raise ServerConfigError(str(e)) from None
        if cfg.rtt_source not in RTT_MODES:
            raise ServerConfigError(
                f"rtt_source must be one of {list(RTT_MODES)}, got {show(str(cfg.rtt_source))}"
            )
        self.rtt = RttSources(cfg.rtt_source)
        self.downloads = DownloadHistoryCounts()
        self.pool_dir = Path(cfg.pool_dir).resolve()
        if not (self.pool_dir / "manifest.json").is_file():
            raise ServerConfigError(f"--pool-dir {cfg.pool_dir}: no manifest.json in it")
        entries = {e.id: e for e in read_manifest(self.pool_dir)}
        pool = self._pool_profile(entries)
        self.models: dict[str, HostedModel] = {mid: self._open(entries[mid]) for mid in pool.ids}
        if cfg.pool_yaml is None:
            pool = self._measure(pool)
        self.pool = pool
        self.k = pool.num_models
        self.pool_hash = pool_hash(list(pool.ids))
        self.limits = RequestLimits()
        try:
            self.selector = Selector.load(
                cfg.selector, pool, strict=cfg.selector is not None and not cfg.allow_fallback,
                threshold_ms=cfg.threshold_ms, shield=cfg.shield,
                profile_alpha=cfg.profile_alpha, seed=cfg.seed,
            )  # fmt: skip
        except SelectorLoadError as e:
            raise ServerConfigError(
                f"--selector {file_label(cfg.selector or '')}: {clean(str(e))} (start with "
                "--allow-fallback to serve ModiPick instead)"
            ) from None
        sel_dir = cfg.selector_dir or (
            Path(cfg.selector).parent
            if cfg.selector is not None and not str(cfg.selector).startswith("models:/")
            else None
        )
        self.selector_dir = Path(sel_dir).resolve() if sel_dir is not None else None
        self._selector_source: Any = cfg.selector
        self._scorer: Scorer | None = None
        self._sel_info: dict[str, Any] = {}
        self._refresh_selector_info()
        self.metrics: ServingMetrics | None = None
        self.shadow = (
            Shadow(cfg.shadow, pool, cfg, lambda: self.metrics) if cfg.shadow is not None else None
        )
        self.metrics = ServingMetrics(self._live_counters, self._live_gauges)
        self._rng = np.random.default_rng(cfg.seed)
        self._decision_counters: dict[tuple[str, str], Any] = {}
        self._waiting = 0
        self._decoding = 0
        self._state_lock = threading.Lock()
        self._sems: dict[tuple[int, str], asyncio.Semaphore] = {}
        # Decodes run on their own few threads (fewer malloc arenas holding freed pixels).
        self._decoder = ThreadPoolExecutor(cfg.max_decodes, thread_name_prefix="modi-decode")
        self.log: DecisionLogWriter | None = None
        if cfg.decision_log is not None:
            hook = self.shadow.fill if self.shadow is not None else None
            self.log = DecisionLogWriter(cfg.decision_log, on_batch=hook,
                                         hold_s=cfg.outcome_hold_s)  # fmt: skip
        log.info("serving %d models from %s; selector %s; exploration %s%s", self.k,
                 self.pool_dir.name, self.selector_label, self.exploration.kind,
                 f"; shadow {self.shadow.info['name']}" if self.shadow else "")  # fmt: skip
        log.info("connection RTT (srtt_ms/rttvar_ms) from %s; the selector %s", self.rtt.describe(),
                 "reads it" if self.reads_rtt else "does not read it")  # fmt: skip
        if self.reads_rtt and (
            cfg.rtt_source == "none" or (cfg.rtt_source == "socket" and not tcp_info_supported())
        ):
            log.warning("the selector reads the connection's RTT but --rtt-source %s never gives "
                        "it: every request falls back to ModiPick", cfg.rtt_source)  # fmt: skip
        log.info("client download history (client_dl_ms/client_dlvar_ms) from the request's "
                 "fields or headers; the selector %s",
                 "reads it" if self.reads_download else "does not read it")  # fmt: skip

    # -------------------------------------------------------------- loading
    def _pool_profile(self, entries: Mapping[str, ZooEntry]) -> PoolProfile:
        cfg = self.cfg
        if cfg.pool_yaml is None:
            ids = list(entries)
            return PoolProfile.from_lists(
                ids, [entries[i].accuracy for i in ids], [1.0] * len(ids), [0.0] * len(ids),
                name=self.pool_dir.name,
            )  # fmt: skip
        pool = _read_pool_yaml(Path(cfg.pool_yaml))
        unknown = [i for i in pool.ids if i not in entries]
        if unknown:
            raise ServerConfigError(
                f"{file_label(cfg.pool_yaml)} names models {unknown} that "
                f"{self.pool_dir.name}/manifest.json lacks"
            )
        return pool

    def _open(self, entry: ZooEntry) -> HostedModel:
        """Open a model file strictly inside the pool folder."""
        from modi.experiments.profile import open_session

        if not SAFE_NAME.match(entry.file) or not entry.file.endswith(".onnx"):
            raise ServerConfigError(f"model {entry.id!r}: file name {entry.file!r} is not allowed")
        path = (self.pool_dir / entry.file).resolve()
        if path.parent != self.pool_dir or not path.is_file():
            raise ServerConfigError(f"model {entry.id!r}: {path} is not a file in {self.pool_dir}")
        try:
            sess = open_session(path, self.cfg.threads)
        except Exception as e:
            raise ServerConfigError(f"model {entry.id!r}: {path.name} does not load: {e}") from None
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

    def _refresh_selector_info(self) -> None:
        sel = self.selector
        self._sel_info = _info_of(sel, self._selector_source, self.exploration)
        self._scorer = None
        if self.exploration.kind == "softmax" and sel.learned:
            path = _loaded_path(sel)
            if path is not None:
                self._scorer = Scorer(path, self.k)

    @property
    def reads_rtt(self) -> bool:
        """Whether the served selector reads ``srtt_ms``/``rttvar_ms`` (its training ranges
        name them: a request without them then gets the fallback with the reason)."""
        meta = self.selector.metadata if self.selector.learned else None
        ranges = getattr(meta, "training_ranges", None)
        return ranges is not None and any(
            ranges.get(n) is not None for n in ("srtt_ms", "rttvar_ms")
        )

    @property
    def reads_download(self) -> bool:
        """Whether the served selector's training ranges name the client's download history
        (``client_dl_ms``/``client_dlvar_ms``: a finite value outside them fires the shield;
        an unknown one never does)."""
        meta = self.selector.metadata if self.selector.learned else None
        ranges = getattr(meta, "training_ranges", None)
        return ranges is not None and any(ranges.get(n) is not None for n in DOWNLOAD_FEATURES)

    @property
    def selector_label(self) -> str:
        """The served selector without its folder: ``learned: name (sha256:..)`` or
        ``fallback: why``."""
        if self.selector.learned:
            return f"learned: {self._sel_info['name']} ({self._sel_info['version'][:19]})"
        return "fallback: " + clean(self.selector.status.split(": ", 1)[-1])

    # -------------------------------------------------------------- validation
    def parse_infer(
        self,
        params: Mapping[str, str],
        content_type: str,
        body: bytes,
        now_ms: float,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[Request, np.ndarray | bytes, dict[str, Any]]:
        """Validate an inference request; raise :class:`HTTPProblem` naming the problem.

        Returns the selector's :class:`Request` (without the connection's RTT: see
        :meth:`connection_rtt`), the body (pixels or undecoded bytes) and extras
        (``elapsed_ms``, ``label``, ``preprocessed``, ``content_type``, ``rtt_header`` and
        ``rtt_field``: the ``(srtt_ms, rttvar_ms)`` a proxy's headers / the client's fields
        carry, ``None`` where absent, and ``prev_download_ms``). The request carries the
        client's download history (``client_dl_ms``/``client_dlvar_ms``/``client_dl_mismatch``,
        from its fields or :data:`CLIENT_DL_HEADER`/:data:`CLIENT_DLVAR_HEADER`/
        :data:`CLIENT_MISMATCH_HEADER`; ``None`` where absent).
        """
        unknown = sorted(set(params) - INFER_FIELDS)
        if unknown:
            names = [show(u, 30) for u in unknown[:5]]
            raise HTTPProblem(400, f"unknown fields [{', '.join(names)}]; allowed: "
                              f"{sorted(INFER_FIELDS)}")  # fmt: skip
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
        if client is not None and not SAFE_NAME.match(client):
            raise HTTPProblem(400, "client_id must be 1-128 characters of [A-Za-z0-9_.-]")
        lim = self.limits.max_rtt_ms
        hdr = headers or {}
        extras: dict[str, Any] = {
            "elapsed_ms": elapsed, "label": None,
            "rtt_field": (_rtt(params, "srtt_ms", lim), _rtt(params, "rttvar_ms", lim)),
            "rtt_header": (_rtt(hdr, SRTT_HEADER, lim), _rtt(hdr, RTTVAR_HEADER, lim)),
            "prev_download_ms": _number(params, "prev_download_ms", required=False),
        }  # fmt: skip
        prev = extras["prev_download_ms"]
        if prev is not None and prev > self.limits.max_sla_ms:
            raise HTTPProblem(
                400, f"prev_download_ms must be <= {self.limits.max_sla_ms:g}, got {prev:g}"
            )
        if "label" in params:
            raw = params["label"]
            if not (raw.isascii() and raw.isdigit() and len(raw) <= 7 and int(raw) <= MAX_LABEL):
                raise HTTPProblem(
                    400, f"label must be an integer in [0, {MAX_LABEL}], got {show(raw)}"
                )
            extras["label"] = int(raw)
        if not body:
            raise HTTPProblem(400, "empty body: send an image or preprocessed pixels")
        dl_lim = self.limits.max_download_ms
        req = Request(
            sla_ms=sla, elapsed_ms=elapsed, upload_ms=upload, payload_bytes=float(len(body)),
            client_id=client,
            client_dl_ms=_download(params, hdr, "client_dl_ms", CLIENT_DL_HEADER, dl_lim),
            client_dlvar_ms=_download(params, hdr, "client_dlvar_ms", CLIENT_DLVAR_HEADER, dl_lim),
            client_dl_mismatch=_download(params, hdr, "client_dl_mismatch", CLIENT_MISMATCH_HEADER,
                                         self.limits.max_dl_mismatch, unit=""),
        )  # fmt: skip
        try:
            parse_request(req, self.limits)
        except InvalidRequest as e:
            raise HTTPProblem(400, f"implausible request: {e}") from None
        ctype = content_type.split(";", 1)[0].strip().lower()
        extras["content_type"] = ctype
        payload: np.ndarray | bytes
        if ctype == PIXELS_CONTENT_TYPE:
            shape_txt = params.get("shape")
            if shape_txt is None:
                raise HTTPProblem(400, f"{PIXELS_CONTENT_TYPE} needs shape=HxWx3")
            try:
                parts = shape_txt.lower().split("x")
                if len(parts) != 3 or not all(p.isdigit() and len(p) <= 6 for p in parts):
                    raise ImageError(f"shape must be HxWx3, got {show(shape_txt)}")
                payload = parse_pixels(body, [int(s) for s in parts])
            except ImageError as e:
                raise HTTPProblem(400, f"bad preprocessed pixels: {e}") from None
            extras["preprocessed"] = True
        elif ctype in FORMATS:
            if "shape" in params:
                raise HTTPProblem(400, "shape is only for application/x-modi-pixels bodies")
            payload = body
            extras["preprocessed"] = False
        else:
            raise HTTPProblem(
                415, f"content type {show(ctype or '(none)')} is not served; send one of "
                f"{list(CONTENT_TYPES)}",
            )  # fmt: skip
        return req, payload, extras

    # -------------------------------------------------------------- steps
    def decode(self, payload: np.ndarray | bytes, content_type: str) -> np.ndarray:
        """Pixels of the payload (decoding an encoded image of the declared type);
        :class:`HTTPProblem` 400/413/415 if refused."""
        if isinstance(payload, np.ndarray):
            return payload
        assert self.metrics is not None
        t0 = time.perf_counter()
        try:
            px = decode(payload, content_type, self.cfg.decode_limits)
        except ImageRefused as e:
            self.metrics.refused_images.labels(reason=e.reason).inc()
            raise HTTPProblem(e.status, str(e)) from None
        self.metrics.decode_ms.observe((time.perf_counter() - t0) * 1e3)
        return px

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

    def decide(self, req: Request) -> Choice:
        """The served choice for ``req``: the selector's decision, exploration, and (when
        logging) the features and the logging policy's probabilities. Never raises for a
        request :meth:`parse_infer` accepted."""
        t0 = time.perf_counter()
        logging_on = self.log is not None
        expl = self.exploration
        feats: NDArray[np.float32] | None = None
        if logging_on or expl.kind == "softmax":
            try:
                feats = self.selector.features(req)
            except ValueError:
                feats = None
        d = self.selector.select(req)
        action = d.index
        probs: NDArray[np.float64] | None = None
        if d.learned and expl.kind == "epsilon" and expl.epsilon:
            probs = epsilon_probabilities(self.k, d.index, expl.epsilon)
            action = draw(probs, float(self._rng.random()))
        elif (
            d.learned and expl.kind == "softmax" and self._scorer is not None and feats is not None
        ):
            try:
                probs = softmax_probabilities(self._scorer.scores(feats), expl.temperature or 1.0)
                action = draw(probs, float(self._rng.random()))
            except Exception as e:  # the scorer must never fail a request
                log.warning("softmax scores failed: %s: %s", type(e).__name__, e)
                probs = None
        if probs is None and logging_on:
            if d.learned or feats is None:
                probs = one_hot(self.k, d.index)
            else:
                probs = modipick_probabilities(feats, self.k, self.cfg.threshold_ms)
                if not probs[d.index] > 0:  # the rule's choice outside its own support
                    log.warning("ModiPick chose %s outside its probabilities; logged one-hot",
                                d.model_id)  # fmt: skip
                    probs = one_hot(self.k, d.index)
        sel_ms = (time.perf_counter() - t0) * 1e3
        m = self.metrics
        assert m is not None
        m.select_ms.observe(sel_ms)
        mid = self.pool.ids[action]
        key = (mid, d.source)
        child = self._decision_counters.get(key)
        if child is None:
            child = self._decision_counters[key] = m.decisions.labels(model=mid, source=d.source)
        child.inc()
        if not d.learned:
            m.fallbacks.labels(cause=fallback_cause(d.reason)).inc()
        if action != d.index:
            m.explored.inc()
        return Choice(
            d, action, mid, None if probs is None else probs.tolist(),
            None if feats is None else _json_features(feats), sel_ms, action != d.index,
        )  # fmt: skip

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
        assert self.metrics is not None
        self.metrics.exec_ms.labels(model=model_id).observe(exec_ms)
        return int(np.argmax(logits)), (t1 - t0) * 1e3, exec_ms

    def _sem(self, name: str, n: int) -> asyncio.Semaphore:
        """An asyncio semaphore of this event loop (created lazily inside it)."""
        key = (id(asyncio.get_running_loop()), name)
        s = self._sems.get(key)
        if s is None:
            s = self._sems[key] = asyncio.Semaphore(n)
        return s

    # -------------------------------------------------------------- one request
    def connection_rtt(
        self, extras: Mapping[str, Any], tcp_rtt: Callable[[], tuple[float, float] | None] | None
    ) -> tuple[float | None, float | None, str]:
        """``(srtt_ms, rttvar_ms, source)`` of a request under ``rtt_source`` (``None``:
        unknown): ``tcp_rtt`` reads the connection's socket (``None``: no socket, e.g. another
        ASGI server or a test client), ``extras`` carry the request's header and fields."""
        tcp = None
        if tcp_rtt is not None and self.rtt.mode in ("auto", "socket"):
            try:
                tcp = tcp_rtt()
            except Exception as e:  # the socket must never fail a request
                log.debug("TCP_INFO read failed: %s: %s", type(e).__name__, e)
            if tcp is not None and not all(0.0 <= v <= self.limits.max_rtt_ms for v in tcp):
                tcp = None
        return self.rtt.choose(tcp, extras["rtt_header"], extras["rtt_field"])

    async def infer(
        self,
        params: Mapping[str, str],
        content_type: str,
        body: bytes,
        *,
        t_arrive: float | None = None,
        now_ms: float | None = None,
        request_id: str | None = None,
        headers: Mapping[str, str] | None = None,
        tcp_rtt: Callable[[], tuple[float, float] | None] | None = None,
    ) -> dict[str, Any]:
        """Serve one inference request end to end; the answer's JSON object. Raises
        :class:`HTTPProblem` for a request it refuses (and counts every outcome).

        ``headers``: the request's headers (lower-case names; the RTT headers a proxy sets);
        ``tcp_rtt``: reads the connection's ``(srtt_ms, rttvar_ms)`` from its socket
        (:func:`modi.serving.tcpinfo.read_tcp_rtt`), called when the decision is made."""
        assert self.metrics is not None
        try:
            out = await self._infer(
                params, content_type, body, t_arrive, now_ms, request_id, headers, tcp_rtt
            )
        except HTTPProblem as e:
            self.metrics.requests.labels(code=str(e.status)).inc()
            raise
        except Exception:
            self.metrics.requests.labels(code="500").inc()
            raise
        self.metrics.requests.labels(code="200").inc()
        return out

    async def _infer(
        self,
        params: Mapping[str, str],
        content_type: str,
        body: bytes,
        t_arrive: float | None,
        now_ms: float | None,
        request_id: str | None,
        headers: Mapping[str, str] | None = None,
        tcp_rtt: Callable[[], tuple[float, float] | None] | None = None,
    ) -> dict[str, Any]:
        t_arrive = time.perf_counter() if t_arrive is None else t_arrive
        now_ms = time.time() * 1e3 if now_ms is None else now_ms
        rid = request_id if request_id and SAFE_NAME.match(request_id) else uuid.uuid4().hex
        req, payload, extras = self.parse_infer(params, content_type, body, now_ms, headers)
        loop = asyncio.get_running_loop()
        t_dec = time.perf_counter()
        if isinstance(payload, np.ndarray):
            pixels = payload
        else:
            async with self._sem("decode", self.cfg.max_decodes):
                with self._state_lock:
                    self._decoding += 1
                try:
                    pixels = await loop.run_in_executor(
                        self._decoder, self.decode, payload, extras["content_type"]
                    )
                finally:
                    with self._state_lock:
                        self._decoding -= 1
        big = not extras["preprocessed"] and pixels.size >= TRIM_PIXELS
        del payload, body
        decode_ms = (time.perf_counter() - t_dec) * 1e3
        self.enter_queue()
        t_q = time.perf_counter()
        queued = True
        try:
            async with self._sem("exec", self.cfg.exec_slots):
                self.leave_queue()
                queued = False
                queue_ms = (time.perf_counter() - t_q) * 1e3
                # Elapsed time as the selector sees it: on arrival plus what the server spent
                # decoding and queueing before this decision.
                elapsed = extras["elapsed_ms"] + (time.perf_counter() - t_arrive) * 1e3
                srtt, rttvar, rtt_src = self.connection_rtt(extras, tcp_rtt)
                req = replace(req, elapsed_ms=elapsed, srtt_ms=srtt, rttvar_ms=rttvar)
                self.downloads.count(req.client_dl_ms is not None)
                choice = self.decide(req)
                cls, pre_ms, exec_ms = await loop.run_in_executor(
                    None, self.execute, choice.model_id, pixels
                )
        finally:
            if queued:  # cancelled while waiting for a slot
                self.leave_queue()
        server_ms = (time.perf_counter() - t_arrive) * 1e3
        if big:
            del pixels
            with self._state_lock:
                idle = self._decoding == 0
            if idle:  # hand the freed pixels back to the system, off the request path
                self._decoder.submit(release_memory)
        m = self.metrics
        assert m is not None
        m.queue_ms.observe(queue_ms)
        m.preprocess_ms.observe(decode_ms + pre_ms)
        m.server_ms.observe(server_ms)
        label = extras["label"]
        correct = None if label is None else bool(cls == label)
        d = choice.decision
        accuracy = float(self.pool.accuracy[choice.action])
        out = {
            "request_id": rid,
            "model_id": choice.model_id,
            "source": d.source,
            "reason": d.reason,
            "explored": choice.explored,
            "class_index": cls,
            "correct": correct,
            "accuracy": accuracy,
            "elapsed_ms_at_selection": elapsed,
            "srtt_ms": srtt,
            "rttvar_ms": rttvar,
            "rtt_source": rtt_src,
            "client_dl_ms": req.client_dl_ms,
            "client_dlvar_ms": req.client_dlvar_ms,
            "client_dl_mismatch": req.client_dl_mismatch,
            "timings_ms": {
                "decode": decode_ms, "queue": queue_ms, "select": choice.select_ms,
                "preprocess": pre_ms, "exec": exec_ms, "server": server_ms,
            },
        }  # fmt: skip
        if self.log is not None:
            latency = extras["elapsed_ms"] + server_ms
            rec = self.decision_record(choice, req.sla_ms, rid, now_ms / 1e3, latency, correct)
            rec["connection"] = {
                "rtt_source": rtt_src, "srtt_ms": srtt, "rttvar_ms": rttvar,
                "prev_download_ms": extras["prev_download_ms"],
                "client_dl_ms": req.client_dl_ms, "client_dlvar_ms": req.client_dlvar_ms,
                "client_dl_mismatch": req.client_dl_mismatch,
            }  # fmt: skip
            self.log.submit(rec, meta=req.sla_ms)
        return out

    def decision_record(
        self,
        choice: Choice,
        sla_ms: float,
        request_id: str,
        ts: float,
        latency_ms: float | None,
        correct: bool | None,
    ) -> dict[str, Any]:
        """The decision-log record of one served request (the agreed format, ``shadow`` left
        for the log's writer thread to fill). ``latency_ms`` is the time from capture to the
        answer leaving the server (the download of the answer is not observed); ``met`` is
        ``latency_ms <= sla_ms``. Unknown optional features (``srtt_ms``/``rttvar_ms``,
        ``client_dl_ms``/``client_dlvar_ms``/``client_dl_mismatch``) are ``null``; :meth:`infer`
        adds ``connection``: the RTT's source, the client's download history as it sent it and its
        ``prev_download_ms`` (the last download it measured: not a feature)."""
        d = choice.decision
        return {
            "v": 1, "ts": ts, "request_id": request_id, "schema": SCHEMA,
            "pool": list(self.pool.ids), "pool_hash": self.pool_hash,
            "selector": self._sel_info if self.selector.learned else MODIPICK_INFO,
            "features": choice.features, "action": choice.action, "model_id": choice.model_id,
            "probabilities": choice.probabilities, "source": d.source, "reason": d.reason,
            "outcome": {
                "latency_ms": latency_ms,
                "met": None if latency_ms is None else bool(latency_ms <= sla_ms),
                "accuracy": float(self.pool.accuracy[choice.action]), "correct": correct,
            },
            "shadow": None,
        }  # fmt: skip

    def report_outcome(self, params: Mapping[str, str]) -> bool:
        """``POST /v1/outcome?request_id=..&e2e_ms=..``: the client's measured end-to-end
        latency of a served request (capture to the answer's arrival, download included)
        replaces the server's in its held decision-log record. Returns whether a held record
        was updated; :class:`HTTPProblem` 400 for bad fields."""
        unknown = sorted(set(params) - {"request_id", "e2e_ms"})
        if unknown:
            raise HTTPProblem(400, f"unknown fields {[show(u, 30) for u in unknown[:5]]}; "
                              "allowed: ['e2e_ms', 'request_id']")  # fmt: skip
        rid = params.get("request_id")
        if rid is None or not SAFE_NAME.match(rid):
            raise HTTPProblem(400, "request_id must be 1-128 characters of [A-Za-z0-9_.-]")
        e2e = _required(params, "e2e_ms")
        if e2e > self.limits.max_sla_ms:
            raise HTTPProblem(400, f"e2e_ms must be <= {self.limits.max_sla_ms:g}, got {e2e:g}")
        if self.log is None:
            return False

        def change(rec: dict[str, Any], sla_ms: Any) -> None:
            rec["outcome"]["latency_ms"] = e2e
            rec["outcome"]["met"] = bool(e2e <= float(sla_ms))

        return self.log.update(rid, change)

    # -------------------------------------------------------------- admin and status
    def reload(self, name: str | None) -> tuple[bool, str]:
        """Reload the selector from ``name`` in the selector folder (``None``: the configured
        source again, e.g. ``models:/name@champion`` after promotion). Returns
        ``(swapped, message)``; refusal keeps the current one serving."""
        assert self.metrics is not None
        source: Any
        if name is None:
            if self.cfg.selector is None:
                return False, "no selector file is configured: name one in the body"
            source = self.cfg.selector
        else:
            if self.selector_dir is None:
                return False, "no selector folder is configured (start with --selector-dir)"
            if not SAFE_NAME.match(name) or not name.endswith(".onnx"):
                return (
                    False,
                    f"selector name {show(name)} must be a plain file name ending in .onnx",
                )
            path = (self.selector_dir / name).resolve()
            if path.parent != self.selector_dir:
                return False, f"{show(name)} is not inside the selector folder"
            source = path
        ok = self.selector.reload(source)
        self.metrics.reloads.labels(result="loaded" if ok else "refused").inc()
        label = source if str(source).startswith("models:/") else file_label(source)
        if ok:
            self._selector_source = source
            self._refresh_selector_info()
            return True, f"loaded {label}"
        return False, clean(f"refused {label}: {self.selector.last_error}; still "
                            f"{self.selector_label}")  # fmt: skip

    def models_doc(self) -> dict[str, Any]:
        """What ``GET /v1/models`` returns."""
        mu, sigma = self.selector.profiles
        out = []
        for i, mid in enumerate(self.pool.ids):
            e = self.models[mid].entry
            out.append(
                {
                    "id": mid, "input": list(e.input), "color": e.color,
                    "accuracy": float(self.pool.accuracy[i]),
                    "accuracy_source": e.accuracy_source, "mean_ms": float(mu[i]),
                    "std_ms": float(sigma[i]), "labels": e.labels,
                }
            )  # fmt: skip
        return {"pool": self.pool.name, "models": out, "selector": self.selector_label}

    def health(self) -> dict[str, Any]:
        """What ``GET /healthz`` returns: ``status`` ``"ok"`` or ``"degraded"`` (the decision
        log failing or dropping records), the selector by name and version (never its path)."""
        problems: list[str] = []
        doc: dict[str, Any] = {
            "models": len(self.models),
            "selector": self.selector_label,
            "selector_version": self._sel_info.get("version"),
            "exploration": self.exploration.kind,
            "shadow": None if self.shadow is None else self.shadow.info["name"],
            "rtt": {
                "mode": self.rtt.mode, "tcp_info": tcp_info_supported(),
                "selector_reads_it": self.reads_rtt, "sources": self.rtt.counts,
            },
            "download_history": {
                "selector_reads_it": self.reads_download, "requests": self.downloads.counts,
            },
        }  # fmt: skip
        if self.log is not None:
            s = self.log.stats
            doc["decision_log"] = {
                "file": file_label(self.log.path), "written": s.written, "errors": s.errors,
                "dropped": s.dropped, "pending": self.log.pending,
                "last_error": clean(s.last_error) or None,
            }  # fmt: skip
            if not self.log.healthy():
                problems.append(f"decision log: {s.errors} write errors, {s.dropped} dropped")
        doc["status"] = "degraded" if problems else "ok"
        doc["ok"] = not problems
        doc["problems"] = problems
        return doc

    def _live_counters(self) -> dict[str, tuple[str, str, Mapping[str, float]]]:
        counts = self.selector.counts
        kinds = {k: float(counts.get(k, 0)) for k in SELECTOR_KINDS}
        kinds.update({k: float(v) for k, v in counts.items() if k not in kinds})
        out: dict[str, tuple[str, str, Mapping[str, float]]] = {
            "modi_selector_decisions": (
                "The selector's decisions by kind (learned, shield firings, fallbacks by cause)",
                "kind", kinds,
            ),
            "modi_rtt_source": (
                "Decisions by the source of their connection RTT features (srtt_ms, rttvar_ms): "
                "tcp_info (the socket), header (a proxy), field (the client), none (unknown)",
                "source", {k: float(v) for k, v in self.rtt.counts.items()},
            ),
            "modi_download_history": (
                "Decisions by whether the request carried the client's download history "
                "(client_dl_ms, client_dlvar_ms): carried, none (a client's first request)",
                "history", {k: float(v) for k, v in self.downloads.counts.items()},
            ),
        }  # fmt: skip
        if self.log is not None:
            s = self.log.stats
            out["modi_decision_log_records"] = ("Decision-log records written", "", {"": s.written})
            out["modi_decision_log_write_errors"] = (
                "Decision-log writes that failed (the request was served)",
                "",
                {"": s.errors},
            )
            out["modi_decision_log_dropped"] = (
                "Decision-log records dropped (queue full)",
                "",
                {"": s.dropped},
            )
            out["modi_decision_log_reopened"] = (
                "Decision-log reopenings after a rotation",
                "",
                {"": s.reopened},
            )
        return out

    def _live_gauges(self) -> dict[str, tuple[str, float]]:
        with self._state_lock:
            waiting, decoding = self._waiting, self._decoding
        g = {
            "modi_queue_length": ("Requests waiting for an execution slot",
                                  float(max(waiting - self.cfg.exec_slots, 0))),
            "modi_decodes_in_flight": ("Image decodes running", float(decoding)),
            "modi_selector_learned": ("1 if a learned selector is loaded",
                                      float(self.selector.learned)),
            "modi_degraded": ("1 while /healthz reports degraded",
                              float(self.log is not None and not self.log.healthy())),
        }  # fmt: skip
        if self.log is not None:
            g["modi_decision_log_pending"] = (
                "Decision-log records queued",
                float(self.log.pending),
            )
        return g

    def close(self) -> None:
        """Write the queued decisions and close the decision log (later decisions are counted
        as dropped); the decode threads are renewed."""
        if self.log is not None:
            self.log.close()
        self._decoder.shutdown(wait=False)
        self._decoder = ThreadPoolExecutor(self.cfg.max_decodes, thread_name_prefix="modi-decode")


# ---------------------------------------------------------------- helpers
#: After a decode of at least this many values (H*W*3) with no other decode running, freed
#: memory is handed back to the system (glibc keeps it in its arenas otherwise).
TRIM_PIXELS = 3_000_000


def release_memory() -> None:
    """Return freed heap memory to the system (glibc's ``malloc_trim``; a no-op elsewhere)."""
    global _TRIM
    if _TRIM is None:
        try:
            import ctypes
            import ctypes.util

            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _TRIM = libc.malloc_trim
        except (OSError, AttributeError):
            _TRIM = False
    if _TRIM:
        _TRIM(0)


_TRIM: Any = None


async def read_body(
    chunks: AsyncIterator[bytes], declared: str | None, limit: int, timeout_s: float
) -> bytes:
    """The request body, at most ``limit`` bytes, received within ``timeout_s`` seconds:
    :class:`HTTPProblem` 413 (too large, also when declared so), 400 (a bad content-length) or
    408 (too slow: the connection is closed)."""
    if declared is not None:
        if not (declared.isascii() and declared.isdigit() and len(declared) <= 18):
            raise HTTPProblem(400, f"content-length {show(declared)} is not a number")
        n = int(declared)
        if n > limit:
            raise HTTPProblem(413, f"body of {n} bytes is over the {limit}-byte limit")

    async def collect() -> bytes:
        parts, size = [], 0
        async for chunk in chunks:
            size += len(chunk)
            if size > limit:
                raise HTTPProblem(413, f"body is over the {limit}-byte limit")
            parts.append(chunk)
        return b"".join(parts)

    try:
        return await asyncio.wait_for(collect(), timeout_s)
    except asyncio.TimeoutError:
        raise HTTPProblem(
            408,
            f"request body not received within {timeout_s:g} s",
            headers={"connection": "close"},
        ) from None


def _read_pool_yaml(path: Path) -> PoolProfile:
    """The pool YAML written by ``modi-profile`` (ids, accuracy, μ/σ), without the simulator."""
    import yaml

    if not path.is_file():
        raise ServerConfigError(f"--pool {path.name}: no such file")
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ServerConfigError(f"--pool {path.name}: not valid YAML: {err}") from None
    if not isinstance(doc, Mapping) or not isinstance(doc.get("models"), list):
        raise ServerConfigError(f"--pool {path.name}: expected a mapping with a 'models' list")
    ids, acc, mu, sd = [], [], [], []
    for i, e in enumerate(doc["models"]):
        where = f"--pool {path.name}, models[{i}]"
        if not isinstance(e, Mapping) or not isinstance(e.get("id", e.get("name")), str):
            raise ServerConfigError(f"{where}: needs a string 'id'")
        try:
            a = float(e["top1_accuracy"]) / 100.0 if "top1_accuracy" in e else float(e["accuracy"])
            m, s = float(e["mean_ms"]), float(e["std_ms"])
        except (KeyError, TypeError, ValueError) as err:
            raise ServerConfigError(
                f"{where}: needs numbers 'accuracy' (or 'top1_accuracy'), 'mean_ms', 'std_ms' "
                f"({type(err).__name__}: {err})"
            ) from None
        ids.append(str(e.get("id", e.get("name"))))
        acc.append(a)
        mu.append(m)
        sd.append(s)
    try:
        return PoolProfile.from_lists(ids, acc, mu, sd, name=path.stem)
    except ValueError as e:
        raise ServerConfigError(f"--pool {path.name}: {e}") from None


def _json_features(feats: NDArray[np.floating]) -> list[float | None]:
    """A feature vector for the JSON decision log: unknown optional columns (NaN, and the
    download history's encoded "none yet") as ``null``, which the log's reader reads back as
    the same encoding (:func:`modi.runtime.decision_log.json_features`)."""
    out: list[float | None] = feats.tolist()
    for c in F.OPTIONAL_COLUMNS:
        v = out[c]
        if v is not None and (math.isnan(v) or (c in F.SELF_IMPUTED_COLUMNS and v < 0.0)):
            out[c] = None
    return out


def _rtt(params: Mapping[str, str], name: str, limit: float) -> float | None:
    """An optional RTT field or header (ms): ``None`` when absent; :class:`HTTPProblem` 400
    naming it when not a number in ``[0, limit]``."""
    x = _number(params, name, required=False)
    if x is not None and x > limit:
        raise HTTPProblem(400, f"{name} = {x:g} ms exceeds {limit:g} ms: not plausible")
    return x


def _download(
    params: Mapping[str, str],
    headers: Mapping[str, str],
    name: str,
    header: str,
    limit: float,
    unit: str = " ms",
) -> float | None:
    """One value of the client's download history (in ``unit``) from its query field or its
    header (``None`` when neither); :class:`HTTPProblem` 400 naming it when both are given or it
    is not a number in ``[0, limit]``."""
    x = _number(params, name, required=False)
    h = _number(headers, header, required=False)
    if x is not None and h is not None:
        raise HTTPProblem(400, f"give {name} as a field or as the {header} header, not both")
    x = x if h is None else h
    src = name if h is None else header
    if x is not None and x > limit:
        raise HTTPProblem(400, f"{src} = {x:g}{unit} exceeds {limit:g}{unit}: not plausible")
    return x


def _required(params: Mapping[str, str], name: str, positive: bool = False) -> float:
    x = _number(params, name, True, positive)
    assert x is not None
    return x


def _number(params: Mapping[str, str], name: str, required: bool,
            positive: bool = False) -> float | None:  # fmt: skip
    raw = params.get(name)
    if raw is None:
        if required:
            raise HTTPProblem(400, f"missing field {name!r}")
        return None
    try:
        x = float(raw)
    except ValueError:
        raise HTTPProblem(400, f"{name} must be a number, got {show(raw)}") from None
    if math.isnan(x):
        raise HTTPProblem(400, f"{name} is NaN")
    if math.isinf(x):
        raise HTTPProblem(400, f"{name} is infinite")
    if x < 0 or (positive and x == 0):
        raise HTTPProblem(400, f"{name} must be {'> 0' if positive else '>= 0'}, got {x:g}")
    return x
