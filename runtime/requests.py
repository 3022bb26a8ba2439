"""Requests as the serving runtime receives them, and their validation at the boundary.

A :class:`Request` carries what the server knows when a request arrives (DESIGN.md §1): the SLA,
the time elapsed since capture, the measured upload time, the payload size, and optionally the
client's id (for its network history), the server's queue length / slowdown (otherwise the
selector uses what the server last set), the connection's smoothed RTT / RTT variation as the
server's TCP stack reports them (``srtt_ms``/``rttvar_ms``; absent: unknown, NaN in the
features, which a policy that reads them answers with its fallback and the reason) and the
client's own download history (``client_dl_ms``/``client_dlvar_ms``: its smoothed download
time of its previous answers and their mean deviation; ``client_dl_mismatch``: its smoothed
``|ln(download / upload)|`` of them, each answer's download against the upload time of the
same request; all sent with the next request; absent: none yet,
:data:`~modi.runtime.features.UNKNOWN_HISTORY` in the features, which scorers impute themselves:
never a fallback).
:class:`RequestBatch` is the columnar form for :meth:`modi.runtime.Selector.select_batch`.
Values outside :class:`RequestLimits` (NaN, inf, negative, absurd) make the request invalid; the
selector then answers with the ModiPick rule and says which field was wrong.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

#: Bytes per KB in the ``payload_kb`` feature (the simulator's convention: 1 KB = 1000 bytes).
BYTES_PER_KB = 1000.0

#: Fields every request must carry.
REQUIRED_FIELDS = ("sla_ms", "elapsed_ms", "upload_ms", "payload_bytes")
#: Fields a request may carry.
OPTIONAL_FIELDS = (
    "client_id", "queue_len", "slowdown", "srtt_ms", "rttvar_ms", "client_dl_ms",
    "client_dlvar_ms", "client_dl_mismatch",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Request:
    """One inference request as the server sees it on arrival.

    Attributes:
        sla_ms: end-to-end latency SLA (ms, > 0).
        elapsed_ms: time since capture on the device when the request reached the server (ms).
        upload_ms: measured upload time of this request, ``T_input`` (ms).
        payload_bytes: uploaded payload size (bytes).
        client_id: the device/client, for its upload-time history; ``None``: no history.
        queue_len: requests ahead in the server queue; ``None``: the selector's current value.
        slowdown: observed / profiled execution time; ``None``: the selector's current value.
        srtt_ms: the connection's smoothed RTT when the request arrived (ms; e.g. Linux
            ``TCP_INFO`` ``tcpi_rtt``); ``None``: unknown (NaN in the features).
        rttvar_ms: the connection's RTT variation (ms; ``tcpi_rttvar``); ``None``: unknown.
        client_dl_ms: the client's smoothed download time of its previous answers, as it
            measured them (ms; :func:`modi.runtime.features.client_dl_update`); ``None``: no
            history yet (a client's first request).
        client_dlvar_ms: the mean deviation of those download times (ms); ``None``: unknown.
        client_dl_mismatch: the client's smoothed ``|ln(download / upload)|`` of its previous
            answers, each download against the upload time of the same request
            (:func:`modi.runtime.features.client_mismatch_update`); ``None``: none yet.
    """

    sla_ms: float
    elapsed_ms: float
    upload_ms: float
    payload_bytes: float
    client_id: Hashable | None = None
    queue_len: float | None = None
    slowdown: float | None = None
    srtt_ms: float | None = None
    rttvar_ms: float | None = None
    client_dl_ms: float | None = None
    client_dlvar_ms: float | None = None
    client_dl_mismatch: float | None = None


@dataclass(frozen=True)
class RequestLimits:
    """Largest values a request may carry before it counts as absurd (ms, bytes, requests)."""

    max_sla_ms: float = 600_000.0
    max_elapsed_ms: float = 600_000.0
    max_upload_ms: float = 600_000.0
    max_payload_bytes: float = 1e9
    max_queue_len: float = 1e6
    max_slowdown: float = 1e3
    max_rtt_ms: float = 60_000.0
    #: Of ``client_dl_ms``/``client_dlvar_ms`` (a download as long as the longest upload).
    max_download_ms: float = 600_000.0
    #: Of ``client_dl_mismatch`` (``ln`` of the longest download over the shortest upload).
    max_dl_mismatch: float = 20.0


class InvalidRequest(ValueError):
    """A request field is missing, not a number or out of range; the message names it."""


def _as_float(value: Any, name: str) -> float:
    t = type(value)
    if t is float:
        return float(value)
    if value is None:
        raise InvalidRequest(f"missing field {name!r}")
    if t is not int and (
        isinstance(value, bool) or not isinstance(value, (numbers.Real, np.integer, np.floating))
    ):
        raise InvalidRequest(f"{name} must be a number, got {type(value).__name__} {_show(value)}")
    try:
        return float(value)
    except OverflowError:
        raise InvalidRequest(f"{name} is too large for a float") from None
    except Exception as e:  # a numbers.Real subclass whose __float__ fails
        raise InvalidRequest(
            f"{name} cannot be read as a number ({type(e).__name__}: {_show(e)})"
        ) from None


def _show(value: Any, width: int = 60) -> str:
    """``repr(value)`` cut to ``width`` characters, or a placeholder when repr itself fails
    (e.g. an int of more digits than Python prints)."""
    try:
        text = repr(value)
    except Exception:
        return f"<unprintable {type(value).__name__}>"
    return text if len(text) <= width else text[: width - 3] + "..."


def _optional_ms(value: Any, name: str, upper: float, limit_name: str) -> float:
    """An optional duration field (ms): NaN (unknown) when absent, else a number in
    ``[0, upper]``."""
    if value is None:
        return math.nan
    x = value if type(value) is float else _as_float(value, name)
    if not 0.0 <= x <= upper:
        _check(x, name, upper, limit_name, False)
    return x


def _check(x: float, name: str, upper: float, limit_name: str, strictly_positive: bool) -> None:
    """Raise :class:`InvalidRequest` with the precise reason ``x`` is out of range."""
    if math.isnan(x):
        raise InvalidRequest(f"{name} is NaN")
    if math.isinf(x):
        raise InvalidRequest(f"{name} is infinite ({x})")
    if strictly_positive and x <= 0.0:
        raise InvalidRequest(f"{name} must be > 0, got {x}")
    if x < 0.0:
        raise InvalidRequest(f"{name} must be >= 0, got {x}")
    if x > upper:
        raise InvalidRequest(
            f"{name} = {x} exceeds the limit {upper} (RequestLimits.{limit_name}): not plausible"
        )


def _get(request: Any, name: str) -> Any:
    if isinstance(request, Mapping):
        return request.get(name)
    return getattr(request, name, None)


ParsedRequest = tuple[
    float,
    float,
    float,
    float,
    Hashable | None,
    float | None,
    float | None,
    float,
    float,
    float,
    float,
    float,
]


def parse_request(request: Request | Mapping[str, Any], limits: RequestLimits) -> ParsedRequest:
    """Validate one request; return ``(sla, elapsed, upload, payload_kb, client, queue,
    slowdown, srtt, rttvar, client_dl, client_dlvar, client_dl_mismatch)`` with
    ``client``/``queue``/``slowdown`` ``None`` when absent and the last five NaN when absent
    (unknown). Raises
    :class:`InvalidRequest`, also for a hostile object that breaks reading it (a mapping whose
    ``get`` raises, ...)."""
    try:
        return _parse_request(request, limits)
    except InvalidRequest:
        raise
    except Exception as e:
        raise InvalidRequest(f"unreadable request ({type(e).__name__}: {_show(e)})") from None


def _parse_request(request: Any, limits: RequestLimits) -> ParsedRequest:
    sla_v: Any
    el_v: Any
    up_v: Any
    pay_v: Any
    client: Any
    q_v: Any
    s_v: Any
    rtt_v: Any
    var_v: Any
    dl_v: Any
    dlvar_v: Any
    mis_v: Any
    if isinstance(request, Request):
        sla_v, el_v, up_v, pay_v = (
            request.sla_ms,
            request.elapsed_ms,
            request.upload_ms,
            request.payload_bytes,
        )
        client, q_v, s_v = request.client_id, request.queue_len, request.slowdown
        rtt_v, var_v = request.srtt_ms, request.rttvar_ms
        dl_v, dlvar_v = request.client_dl_ms, request.client_dlvar_ms
        mis_v = request.client_dl_mismatch
    elif isinstance(request, Mapping):
        sla_v, el_v, up_v, pay_v = (request.get(f) for f in REQUIRED_FIELDS)
        client, q_v, s_v, rtt_v, var_v, dl_v, dlvar_v, mis_v = (
            request.get(f) for f in OPTIONAL_FIELDS
        )
    else:
        raise InvalidRequest(
            f"a request must be a modi.runtime.Request or a mapping with fields "
            f"{list(REQUIRED_FIELDS)}, got {type(request).__name__}"
        )
    if type(sla_v) is float and type(el_v) is float and type(up_v) is float:
        sla, elapsed, upload = sla_v, el_v, up_v  # the common case, without calls
    else:
        sla = _as_float(sla_v, "sla_ms")
        elapsed = _as_float(el_v, "elapsed_ms")
        upload = _as_float(up_v, "upload_ms")
    payload = pay_v if type(pay_v) is float else _as_float(pay_v, "payload_bytes")
    lim = limits
    # One chained comparison per field (NaN fails every comparison); details only on failure.
    if not (
        0.0 < sla <= lim.max_sla_ms
        and 0.0 <= elapsed <= lim.max_elapsed_ms
        and 0.0 <= upload <= lim.max_upload_ms
        and 0.0 <= payload <= lim.max_payload_bytes
    ):
        _check(sla, "sla_ms", lim.max_sla_ms, "max_sla_ms", True)
        _check(elapsed, "elapsed_ms", lim.max_elapsed_ms, "max_elapsed_ms", False)
        _check(upload, "upload_ms", lim.max_upload_ms, "max_upload_ms", False)
        _check(payload, "payload_bytes", lim.max_payload_bytes, "max_payload_bytes", False)
    queue: float | None = None
    slowdown: float | None = None
    if q_v is not None:
        queue = _as_float(q_v, "queue_len")
        if not 0.0 <= queue <= lim.max_queue_len:
            _check(queue, "queue_len", lim.max_queue_len, "max_queue_len", False)
    if s_v is not None:
        slowdown = _as_float(s_v, "slowdown")
        if not 0.0 < slowdown <= lim.max_slowdown:
            _check(slowdown, "slowdown", lim.max_slowdown, "max_slowdown", True)
    srtt = _optional_ms(rtt_v, "srtt_ms", lim.max_rtt_ms, "max_rtt_ms")
    rttvar = _optional_ms(var_v, "rttvar_ms", lim.max_rtt_ms, "max_rtt_ms")
    dl = _optional_ms(dl_v, "client_dl_ms", lim.max_download_ms, "max_download_ms")
    dlvar = _optional_ms(dlvar_v, "client_dlvar_ms", lim.max_download_ms, "max_download_ms")
    mis = _optional_ms(mis_v, "client_dl_mismatch", lim.max_dl_mismatch, "max_dl_mismatch")
    if client is not None:
        try:
            hash(client)
        except Exception:  # unhashable, or a __hash__ that fails
            raise InvalidRequest(
                f"client_id must be hashable (a string or an integer), got {type(client).__name__}"
            ) from None
    return (
        sla, elapsed, upload, payload / BYTES_PER_KB, client, queue, slowdown, srtt, rttvar, dl,
        dlvar, mis,
    )  # fmt: skip


def _column(values: ArrayLike | None, name: str, n: int | None) -> NDArray[np.float64] | None:
    if values is None:
        return None
    try:
        a = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"RequestBatch.{name} must be numbers, got {values!r:.80}") from None
    a = a.reshape(-1) if a.ndim == 0 else a
    if a.ndim != 1 or (n is not None and a.shape[0] != n):
        raise ValueError(
            f"RequestBatch.{name} must be one number per request (shape ({n},)), got shape "
            f"{a.shape}"
        )
    return a


def _optional(col: NDArray[np.float64] | None, i: int) -> float | None:
    if col is None or math.isnan(col[i]):
        return None
    return float(col[i])


class RequestBatch:
    """Columnar requests for :meth:`~modi.runtime.Selector.select_batch`: one array of ``N``
    values per field (see :class:`Request`); ``client_id`` is a sequence of ``N`` ids (``None``
    entries: no history) or ``None``; ``queue_len``/``slowdown`` ``None`` (or NaN entries) use
    the selector's current values; ``srtt_ms``/``rttvar_ms`` and ``client_dl_ms``/
    ``client_dlvar_ms``/``client_dl_mismatch`` ``None`` (or NaN entries): unknown.
    Raises ``ValueError`` at construction if the columns do not line up (a programming error,
    caught before serving)."""

    __slots__ = (
        "client_dl_mismatch",
        "client_dl_ms",
        "client_dlvar_ms",
        "client_id",
        "elapsed_ms",
        "payload_bytes",
        "queue_len",
        "rttvar_ms",
        "sla_ms",
        "slowdown",
        "srtt_ms",
        "upload_ms",
    )

    def __init__(
        self,
        sla_ms: ArrayLike,
        elapsed_ms: ArrayLike,
        upload_ms: ArrayLike,
        payload_bytes: ArrayLike,
        client_id: Sequence[Hashable | None] | None = None,
        queue_len: ArrayLike | None = None,
        slowdown: ArrayLike | None = None,
        srtt_ms: ArrayLike | None = None,
        rttvar_ms: ArrayLike | None = None,
        client_dl_ms: ArrayLike | None = None,
        client_dlvar_ms: ArrayLike | None = None,
        client_dl_mismatch: ArrayLike | None = None,
    ) -> None:
        sla = _column(sla_ms, "sla_ms", None)
        assert sla is not None
        n = sla.shape[0]
        self.sla_ms: NDArray[np.float64] = sla
        self.elapsed_ms = _column(elapsed_ms, "elapsed_ms", n)
        self.upload_ms = _column(upload_ms, "upload_ms", n)
        self.payload_bytes = _column(payload_bytes, "payload_bytes", n)
        for name in ("elapsed_ms", "upload_ms", "payload_bytes"):
            if getattr(self, name) is None:
                raise ValueError(f"RequestBatch.{name} is required")
        if client_id is not None and len(client_id) != n:
            raise ValueError(f"RequestBatch.client_id must hold {n} ids, got {len(client_id)}")
        self.client_id = None if client_id is None else list(client_id)
        if self.client_id is not None:
            try:
                set(self.client_id)
            except TypeError:
                raise ValueError(
                    "RequestBatch.client_id entries must be hashable (strings or integers)"
                ) from None
        self.queue_len = _column(queue_len, "queue_len", n)
        self.slowdown = _column(slowdown, "slowdown", n)
        self.srtt_ms = _column(srtt_ms, "srtt_ms", n)
        self.rttvar_ms = _column(rttvar_ms, "rttvar_ms", n)
        self.client_dl_ms = _column(client_dl_ms, "client_dl_ms", n)
        self.client_dlvar_ms = _column(client_dlvar_ms, "client_dlvar_ms", n)
        self.client_dl_mismatch = _column(client_dl_mismatch, "client_dl_mismatch", n)

    def __len__(self) -> int:
        return int(self.sla_ms.shape[0])

    @classmethod
    def from_requests(cls, requests: Sequence[Request | Mapping[str, Any]]) -> RequestBatch:
        """Columns from a sequence of requests (missing or non-numeric values become NaN, so
        those rows are rejected with a reason by the selector)."""

        def col(name: str) -> list[float]:
            out = []
            for r in requests:
                v = _get(r, name)
                try:
                    out.append(float("nan") if v is None or isinstance(v, bool) else float(v))
                except (TypeError, ValueError):
                    out.append(float("nan"))
            return out

        def opt(name: str) -> list[float] | None:
            vals = [_get(r, name) for r in requests]
            if all(v is None for v in vals):
                return None
            return [float("nan") if v is None else v for v in vals]

        clients = [_get(r, "client_id") for r in requests]
        return cls(
            col("sla_ms"),
            col("elapsed_ms"),
            col("upload_ms"),
            col("payload_bytes"),
            None if all(c is None for c in clients) else clients,
            opt("queue_len"),
            opt("slowdown"),
            opt("srtt_ms"),
            opt("rttvar_ms"),
            opt("client_dl_ms"),
            opt("client_dlvar_ms"),
            opt("client_dl_mismatch"),
        )

    def row(self, i: int) -> Request:
        """Request ``i`` as a :class:`Request`."""
        return Request(
            float(self.sla_ms[i]),
            float(self.elapsed_ms[i]),  # type: ignore[index]
            float(self.upload_ms[i]),  # type: ignore[index]
            float(self.payload_bytes[i]),  # type: ignore[index]
            None if self.client_id is None else self.client_id[i],
            _optional(self.queue_len, i),
            _optional(self.slowdown, i),
            _optional(self.srtt_ms, i),
            _optional(self.rttvar_ms, i),
            _optional(self.client_dl_ms, i),
            _optional(self.client_dlvar_ms, i),
            _optional(self.client_dl_mismatch, i),
        )

    def valid_rows(self, limits: RequestLimits) -> NDArray[np.bool_]:
        """Mask of rows whose numeric fields are in range (vectorised :func:`parse_request`)."""
        lim = limits
        e, u, p = self.elapsed_ms, self.upload_ms, self.payload_bytes
        assert e is not None and u is not None and p is not None
        ok = (self.sla_ms > 0.0) & (self.sla_ms <= lim.max_sla_ms)
        ok &= (e >= 0.0) & (e <= lim.max_elapsed_ms)
        ok &= (u >= 0.0) & (u <= lim.max_upload_ms)
        ok &= (p >= 0.0) & (p <= lim.max_payload_bytes)
        if self.queue_len is not None:
            q = self.queue_len
            ok &= ((q >= 0.0) & (q <= lim.max_queue_len)) | np.isnan(q)
        if self.slowdown is not None:
            s = self.slowdown
            ok &= ((s > 0.0) & (s <= lim.max_slowdown)) | np.isnan(s)
        for col in (self.srtt_ms, self.rttvar_ms):  # NaN: unknown (allowed)
            if col is not None:
                ok &= ((col >= 0.0) & (col <= lim.max_rtt_ms)) | np.isnan(col)
        for col in (self.client_dl_ms, self.client_dlvar_ms):  # NaN: no history (allowed)
            if col is not None:
                ok &= ((col >= 0.0) & (col <= lim.max_download_ms)) | np.isnan(col)
        mis = self.client_dl_mismatch
        if mis is not None:
            ok &= ((mis >= 0.0) & (mis <= lim.max_dl_mismatch)) | np.isnan(mis)
        return np.asarray(ok, dtype=np.bool_)
