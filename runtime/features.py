"""The single source of truth for observation vectors.

Both the simulators (:mod:`modi.envs`) and the serving runtime (:class:`modi.runtime.Selector`)
build their feature vectors with :func:`encode`, so training and serving cannot drift.

An observation is one flat ``float32`` vector per request: a *request block* of
:data:`REQUEST_FEATURES` followed by a *model block* of ``K`` rows of :data:`MODEL_FEATURES`
(one row per model of the pool, in pool order). A pool-agnostic selector scores each
``(request block, model row)`` pair with shared weights; :class:`ObsLayout` splits a batch of
observations into those two parts.

Every value is known to the server when the request arrives (DESIGN.md §1): the SLA, the time
elapsed since capture, the measured upload time, the payload, the client's past network
measurements, the server's queue and recent slowdown, and the *profiled* (not realised) model
execution times. The download time and the realised execution time are never features.

A request's SLA and elapsed time are counted as if its upload had started at capture: the time
since capture that is not the upload (``elapsed - t_input`` where positive: preprocessing or
queueing on the phone before it, decoding at the server after it) is taken off both, which
leaves ``remaining_ms`` and ``budget_ms`` as they are; ``elapsed_ms`` is then ``t_input_ms``
(so encoding an encoded request again changes nothing: :func:`upload_relative`). The server's
choice depends on the time left, not on where the rest went, and a selector trained where
nothing precedes the upload (``ModelSelection-v0``, where ``elapsed = t_input``) then sees a
request behind a preprocessing phone as the request it is: a tighter SLA, not a combination of
SLA and elapsed time it never saw.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import ClassVar, TypeVar

import numpy as np
from numpy.typing import ArrayLike, NDArray

SCHEMA_NAME = "modi.model_selection"
#: Version 2 (issue 13) appended ``srtt_ms`` and ``rttvar_ms`` to the request block; version 3
#: appended ``client_dl_ms`` and ``client_dlvar_ms`` (the client's own measurement of its past
#: downloads); version 4 ``client_dl_mismatch`` (how far each of the client's downloads was
#: from its own request's upload). Selectors exported for an older version are refused with the
#: reason (:mod:`modi.runtime.metadata`).
SCHEMA_VERSION = 4

#: Request block columns: (name, unit, description).
REQUEST_FEATURES: tuple[tuple[str, str, str], ...] = (
    (
        "sla_ms",
        "ms",
        "end-to-end latency SLA of the request, less the time since capture that is not its "
        "upload (elapsed - t_input where positive: preprocessing or queueing on the phone, "
        "decoding at the server)",
    ),
    (
        "elapsed_ms",
        "ms",
        "time since capture when the request reached the server, less what sla_ms leaves out "
        "(so t_input_ms where more time had passed)",
    ),
    ("t_input_ms", "ms", "measured upload time of this request"),
    ("remaining_ms", "ms", "sla_ms - elapsed_ms"),
    ("budget_ms", "ms", "ModiPick's hard limit T_U = sla - elapsed - t_input (download ~ upload)"),
    ("payload_kb", "KB", "uploaded payload size"),
    ("client_net_mean_ms", "ms", "EWMA of this client's previous upload times"),
    ("client_net_std_ms", "ms", "EW standard deviation of this client's previous upload times"),
    ("queue_len", "requests", "requests at the server (waiting or executing) on arrival"),
    ("slowdown", "ratio", "EWMA of completed requests' realised / profiled execution time"),
    (
        "srtt_ms",
        "ms",
        "the connection's smoothed RTT when the request arrived, as the server's TCP stack "
        "reports it (Linux TCP_INFO tcpi_rtt; RFC 6298 EWMA); NaN: unavailable",
    ),
    ("rttvar_ms", "ms", "the connection's RTT variation (TCP_INFO tcpi_rttvar); NaN: unavailable"),
    (
        "client_dl_ms",
        "ms",
        "the client's smoothed download time of its previous responses, as it measured them and "
        "sent them with this request (EWMA, gain CLIENT_DL_GAIN); -1: none received yet",
    ),
    (
        "client_dlvar_ms",
        "ms",
        "the mean deviation of those download times (EWMA, gain CLIENT_DLVAR_GAIN); -1: none",
    ),
    (
        "client_dl_mismatch",
        "ln ratio",
        "the client's smoothed |ln(download / upload)| of its previous requests, each download "
        "paired with the upload time of the same request (its t_input_ms, which the client "
        "sends as upload_ms; EWMA, gain CLIENT_MISMATCH_GAIN): 0 where each download takes as "
        "long as its upload; -1: none received yet",
    ),
)
#: Model block columns, one row per model: (name, unit, description).
MODEL_FEATURES: tuple[tuple[str, str, str], ...] = (
    ("mu_ms", "ms", "profiled mean execution time (EWMA)"),
    ("sigma_ms", "ms", "profiled standard deviation of execution time (EWMA)"),
    ("accuracy", "fraction", "top-1 accuracy of the model"),
    ("slack_ms", "ms", "budget_ms - (mu_ms + sigma_ms): headroom under the hard limit"),
)

#: Request columns a request may leave unknown (NaN): the connection's RTT estimates, which a
#: server reads from its TCP stack where the platform exposes them (Linux ``TCP_INFO``), and
#: the client's download history (none before its first response arrives).
OPTIONAL_COLUMNS: tuple[int, ...] = (10, 11, 12, 13, 14)
#: Optional columns a scorer handles itself when unknown (a client's first request has no
#: download history): a NaN there never makes a selector fall back. The encoders write an
#: unknown value there as :data:`UNKNOWN_HISTORY` (-1, not NaN: a Gymnasium observation must
#: compare equal to itself), and scorers read any value below 0, NaN included, as unknown.
SELF_IMPUTED_COLUMNS: tuple[int, ...] = (12, 13, 14)
#: The encoded "no download history yet" of :data:`SELF_IMPUTED_COLUMNS`.
UNKNOWN_HISTORY = -1.0

#: EWMA weight of a client's upload-time history (``client_net_mean_ms``/``client_net_std_ms``).
CLIENT_NET_ALPHA = 0.2
#: Gains of the client's download-time history (``client_dl_ms``/``client_dlvar_ms``), RFC
#: 6298's estimators over the client's measured downloads, in the order they arrived: per
#: download ``d``, ``dlvar <- dlvar + G_V (|dl - d| - dlvar)`` then ``dl <- dl + G (d - dl)``;
#: the first sets ``dl = d``, ``dlvar = d / 2`` (:func:`client_dl_update`).
CLIENT_DL_GAIN = 0.25
CLIENT_DLVAR_GAIN = 0.25
#: Gain of ``client_dl_mismatch``'s EWMA: per answer with download ``d`` of a request whose
#: upload took ``u``, ``m <- m + G (|ln(d / u)| - m)``, the first sets ``m = |ln(d / u)|``
#: (:func:`client_mismatch_update`).
CLIENT_MISMATCH_GAIN = 0.25
#: Times below this (ms) count as this in ``client_dl_mismatch``'s ratio (no log of 0).
MISMATCH_FLOOR_MS = 0.01
#: EWMA weight of the server's ``slowdown`` (realised / profiled execution time).
SLOWDOWN_ALPHA = 0.2

R = len(REQUEST_FEATURES)
P = len(MODEL_FEATURES)

# Column indices (request block).
(SLA, ELAPSED, T_INPUT, REMAINING, BUDGET, PAYLOAD, NET_MEAN, NET_STD, QUEUE, SLOWDOWN, SRTT,
 RTTVAR, CLIENT_DL, CLIENT_DLVAR, CLIENT_MISMATCH) = range(R)  # fmt: skip
# Column indices (model block).
MU, SIGMA, ACC, SLACK = range(P)


def client_dl_update(dl_ms: float, dlvar_ms: float, download_ms: float) -> tuple[float, float]:
    """Fold one measured download into a client's ``(client_dl_ms, client_dlvar_ms)`` (NaN:
    no download yet). The one definition the simulator and clients (``modi-client``) share."""
    if math.isnan(dl_ms):
        return download_ms, 0.5 * download_ms
    var = dlvar_ms + CLIENT_DLVAR_GAIN * (abs(dl_ms - download_ms) - dlvar_ms)
    return dl_ms + CLIENT_DL_GAIN * (download_ms - dl_ms), var


def mismatch(download_ms: ArrayLike, upload_ms: ArrayLike) -> NDArray[np.float64]:
    """``|ln(download / upload)|`` of answers (each time floored at :data:`MISMATCH_FLOOR_MS`):
    what one answer adds to ``client_dl_mismatch``."""
    d = np.maximum(np.asarray(download_ms, dtype=np.float64), MISMATCH_FLOOR_MS)
    u = np.maximum(np.asarray(upload_ms, dtype=np.float64), MISMATCH_FLOOR_MS)
    return np.asarray(np.abs(np.log(d / u)))


def client_mismatch_update(mismatch_ms: float, download_ms: float, upload_ms: float) -> float:
    """Fold one answer into a client's ``client_dl_mismatch`` (NaN: none yet): its download
    and the upload time of the same request (its ``t_input_ms``, sent as ``upload_ms``)."""
    x = math.fabs(math.log(max(download_ms, MISMATCH_FLOOR_MS) / max(upload_ms, MISMATCH_FLOOR_MS)))
    if math.isnan(mismatch_ms):
        return x
    return mismatch_ms + CLIENT_MISMATCH_GAIN * (x - mismatch_ms)


def client_history_update(
    dl_ms: ArrayLike,
    dlvar_ms: ArrayLike,
    mismatch_ms: ArrayLike,
    download_ms: ArrayLike,
    upload_ms: ArrayLike,
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """:func:`client_dl_update` and :func:`client_mismatch_update` for arrays of clients, one
    answer each: ``(client_dl_ms, client_dlvar_ms, client_dl_mismatch)`` after folding each
    client's ``download_ms`` (and its request's ``upload_ms``). Same recurrences (a test
    checks them against the scalar ones)."""
    m0 = np.asarray(dl_ms, dtype=np.float64)
    v0 = np.asarray(dlvar_ms, dtype=np.float64)
    x0 = np.asarray(mismatch_ms, dtype=np.float64)
    d = np.asarray(download_ms, dtype=np.float64)
    x = mismatch(d, upload_ms)
    new_m, new_x = np.isnan(m0), np.isnan(x0)
    var = np.where(new_m, 0.5 * d, v0 + CLIENT_DLVAR_GAIN * (np.abs(m0 - d) - v0))
    mean = np.where(new_m, d, m0 + CLIENT_DL_GAIN * (d - m0))
    mis = np.where(new_x, x, x0 + CLIENT_MISMATCH_GAIN * (x - x0))
    return mean, var, mis


def upload_history_update(
    mean_ms: ArrayLike, var_ms: ArrayLike, upload_ms: ArrayLike
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """The server's upload-time history of clients after one upload each (NaN mean: a client's
    first): the EWMA (weight :data:`CLIENT_NET_ALPHA`) of
    :class:`~modi.runtime.clients.ClientNetworkHistory`, for arrays; ``(mean, var)``, whose
    ``mean`` and ``sqrt(var)`` are the next request's ``client_net_mean_ms``/``_std_ms``."""
    m = np.asarray(mean_ms, dtype=np.float64)
    v = np.asarray(var_ms, dtype=np.float64)
    x = np.asarray(upload_ms, dtype=np.float64)
    a = CLIENT_NET_ALPHA
    first = np.isnan(m)
    d = np.where(first, 0.0, x - m)
    return np.where(first, x, m + a * d), np.where(first, 0.0, (1 - a) * (v + a * d * d))


def obs_dim(num_models: int) -> int:
    """Length of the observation vector for a pool of ``num_models`` models."""
    if num_models < 1:
        raise ValueError(f"num_models must be >= 1, got {num_models}")
    return R + P * num_models


_Layout = TypeVar("_Layout", bound="ObsLayout")


@dataclass(frozen=True)
class ObsLayout:
    """Splits flat observations into the request block and the per-model block.

    Other schemas (e.g. :mod:`modi.runtime.device_features`) subclass it and set the class
    attributes ``request_dim``, ``row_dim`` and ``schema``.
    """

    num_models: int
    request_dim: ClassVar[int] = R
    row_dim: ClassVar[int] = P
    schema: ClassVar[str] = f"{SCHEMA_NAME} v{SCHEMA_VERSION}"

    @classmethod
    def from_obs_dim(cls: type[_Layout], dim: int) -> _Layout:
        """Infer the pool size from an observation length; refuse a length that fits no pool."""
        r, p = cls.request_dim, cls.row_dim
        k, rem = divmod(dim - r, p)
        if dim <= r or rem:
            raise ValueError(
                f"observation length {dim} does not match schema {cls.schema}: "
                f"expected {r} + {p} * K for some K >= 1"
            )
        return cls(k)

    @property
    def dim(self) -> int:
        """Observation length."""
        return self.request_dim + self.row_dim * self.num_models

    def request(self, obs: NDArray[np.floating]) -> NDArray[np.floating]:
        """Request block, shape ``(N, R)`` (a view)."""
        return obs[..., : self.request_dim]

    def models(self, obs: NDArray[np.floating]) -> NDArray[np.floating]:
        """Model block, shape ``(N, K, P)`` (a view)."""
        return obs[..., self.request_dim :].reshape(*obs.shape[:-1], self.num_models, self.row_dim)


def encode_requests(
    sla_ms: ArrayLike,
    elapsed_ms: ArrayLike,
    t_input_ms: ArrayLike,
    payload_kb: ArrayLike,
    net_mean_ms: ArrayLike,
    net_std_ms: ArrayLike,
    queue_len: ArrayLike,
    slowdown: ArrayLike,
    srtt_ms: ArrayLike = np.nan,
    rttvar_ms: ArrayLike = np.nan,
    client_dl_ms: ArrayLike = np.nan,
    client_dlvar_ms: ArrayLike = np.nan,
    client_dl_mismatch: ArrayLike = np.nan,
) -> NDArray[np.float32]:
    """Request blocks for arrays of requests of any shape ``S``: returns ``S + (R,)`` float32.

    ``srtt_ms``/``rttvar_ms`` default to NaN (unknown): a selector that reads them then falls
    back to its rule with the reason (its calibrated shield refuses a NaN).
    ``client_dl_ms``/``client_dlvar_ms``/``client_dl_mismatch`` default to NaN too (no download
    history), written as
    :data:`UNKNOWN_HISTORY`, which scorers impute (:data:`SELF_IMPUTED_COLUMNS`)."""
    sla = np.asarray(sla_ms, dtype=np.float64)
    elapsed = np.asarray(elapsed_ms, dtype=np.float64)
    t_in = np.asarray(t_input_ms, dtype=np.float64)
    shape = np.broadcast_shapes(sla.shape, elapsed.shape, t_in.shape)
    out = np.empty((*shape, R), dtype=np.float32)
    remaining = sla - elapsed
    # counted from the upload's start (see REQUEST_FEATURES; pack_request's arithmetic)
    other = elapsed - t_in
    out[..., SLA] = sla - np.where(other > 0.0, other, 0.0)
    out[..., ELAPSED] = np.where(other > 0.0, t_in, elapsed)
    out[..., T_INPUT] = t_in
    out[..., REMAINING] = remaining
    out[..., BUDGET] = remaining - t_in
    out[..., PAYLOAD] = payload_kb
    out[..., NET_MEAN] = net_mean_ms
    out[..., NET_STD] = net_std_ms
    out[..., QUEUE] = queue_len
    out[..., SLOWDOWN] = slowdown
    out[..., SRTT] = srtt_ms
    out[..., RTTVAR] = rttvar_ms
    out[..., CLIENT_DL] = client_dl_ms
    out[..., CLIENT_DLVAR] = client_dlvar_ms
    out[..., CLIENT_MISMATCH] = client_dl_mismatch
    hist = out[..., CLIENT_DL:]
    hist[np.isnan(hist)] = UNKNOWN_HISTORY
    return out


def upload_relative(req: NDArray[np.floating]) -> NDArray[np.floating]:
    """Request blocks ``(..., R)`` (or whole observations) with the SLA and elapsed time counted
    as :func:`encode_requests` counts them (the time that is not the upload taken off both), in
    place: a block already encoded so is left as it is; one written before the encoders did this
    (a decision log's features) is converted."""
    sla, elapsed, t_in = req[..., SLA], req[..., ELAPSED], req[..., T_INPUT]
    other = elapsed - t_in
    later = other > 0.0
    sla[later] = sla[later] - other[later]
    elapsed[later] = t_in[later]
    return req


#: ``pack_into`` of one request block as ``R`` native float32 (the column order of
#: :data:`REQUEST_FEATURES`).
_PACK_REQUEST = struct.Struct(f"={R}f").pack_into
assert (SLA, ELAPSED, T_INPUT, REMAINING, BUDGET) == (0, 1, 2, 3, 4)
assert (PAYLOAD, NET_MEAN, NET_STD, QUEUE, SLOWDOWN, SRTT, RTTVAR) == (5, 6, 7, 8, 9, 10, 11)
assert OPTIONAL_COLUMNS == (SRTT, RTTVAR, CLIENT_DL, CLIENT_DLVAR, CLIENT_MISMATCH)
assert SELF_IMPUTED_COLUMNS == (CLIENT_DL, CLIENT_DLVAR, CLIENT_MISMATCH) == tuple(range(12, R))


def pack_request(
    buffer: memoryview,
    sla_ms: float,
    elapsed_ms: float,
    t_input_ms: float,
    payload_kb: float,
    net_mean_ms: float,
    net_std_ms: float,
    queue_len: float,
    slowdown: float,
    srtt_ms: float = math.nan,
    rttvar_ms: float = math.nan,
    client_dl_ms: float = math.nan,
    client_dlvar_ms: float = math.nan,
    client_dl_mismatch: float = math.nan,
) -> None:
    """Scalar fast path of :func:`encode_requests` for one request: its block written into a
    writable buffer of at least ``R`` native float32 (e.g. ``row.data`` of a C-contiguous
    float32 row) in one C call; the same values bit for bit (a test checks), also where a value
    is beyond float32's range (stored as inf, as numpy does)."""
    remaining = sla_ms - elapsed_ms
    budget = remaining - t_input_ms
    other = elapsed_ms - t_input_ms  # the time that is not the upload (encode_requests)
    if other > 0.0:
        sla_ms = sla_ms - other
        elapsed_ms = t_input_ms
    if client_dl_ms != client_dl_ms:  # NaN: no history (UNKNOWN_HISTORY)
        client_dl_ms = UNKNOWN_HISTORY
    if client_dlvar_ms != client_dlvar_ms:
        client_dlvar_ms = UNKNOWN_HISTORY
    if client_dl_mismatch != client_dl_mismatch:
        client_dl_mismatch = UNKNOWN_HISTORY
    try:
        _PACK_REQUEST(buffer, 0, sla_ms, elapsed_ms, t_input_ms, remaining, budget, payload_kb,
                      net_mean_ms, net_std_ms, queue_len, slowdown, srtt_ms, rttvar_ms,
                      client_dl_ms, client_dlvar_ms, client_dl_mismatch)  # fmt: skip
    except (OverflowError, struct.error):  # beyond float32: numpy's cast stores inf
        values = [sla_ms, elapsed_ms, t_input_ms, remaining, budget, payload_kb, net_mean_ms,
                  net_std_ms, queue_len, slowdown, srtt_ms, rttvar_ms, client_dl_ms,
                  client_dlvar_ms, client_dl_mismatch]  # fmt: skip
        with np.errstate(over="ignore", invalid="ignore"):
            np.frombuffer(buffer, dtype=np.float32, count=R)[:] = np.array(values, np.float64)


def model_slack(
    budget_ms: ArrayLike,
    mu_ms: ArrayLike,
    sigma_ms: ArrayLike,
    out: NDArray[np.floating] | None = None,
) -> NDArray[np.floating]:
    """The ``slack_ms`` column: ``budget - (mu + sigma)`` in float64; budget ``(N,)``, profiles
    ``(N, K)`` or ``(K,)``. ``out`` (e.g. a float32 column of a model block) receives the values
    rounded to its dtype, as an assignment of the float64 result would."""
    b = np.asarray(budget_ms, dtype=np.float64)
    musig = np.asarray(mu_ms, dtype=np.float64) + np.asarray(sigma_ms, dtype=np.float64)
    if out is None:
        return b.reshape(*b.shape, 1) - musig
    return np.subtract(b.reshape(*b.shape, 1), musig, out=out, casting="same_kind")


def encode(
    sla_ms: ArrayLike,
    elapsed_ms: ArrayLike,
    t_input_ms: ArrayLike,
    payload_kb: ArrayLike,
    net_mean_ms: ArrayLike,
    net_std_ms: ArrayLike,
    queue_len: ArrayLike,
    slowdown: ArrayLike,
    mu_ms: ArrayLike,
    sigma_ms: ArrayLike,
    accuracy: ArrayLike,
    srtt_ms: ArrayLike = np.nan,
    rttvar_ms: ArrayLike = np.nan,
    client_dl_ms: ArrayLike = np.nan,
    client_dlvar_ms: ArrayLike = np.nan,
    client_dl_mismatch: ArrayLike = np.nan,
) -> NDArray[np.float32]:
    """Build a batch of observations.

    Request arguments have shape ``(N,)`` (or are scalars); model arguments have shape
    ``(N, K)`` or ``(K,)`` (one profile shared by the batch). Returns ``(N, R + P*K)`` float32.
    """
    req, models = encode_blocks(
        sla_ms, elapsed_ms, t_input_ms, payload_kb, net_mean_ms, net_std_ms, queue_len, slowdown,
        mu_ms, sigma_ms, accuracy, srtt_ms, rttvar_ms, client_dl_ms, client_dlvar_ms,
        client_dl_mismatch,
    )  # fmt: skip
    return np.concatenate([req, models.reshape(req.shape[0], -1)], axis=1)


def encode_blocks(
    sla_ms: ArrayLike,
    elapsed_ms: ArrayLike,
    t_input_ms: ArrayLike,
    payload_kb: ArrayLike,
    net_mean_ms: ArrayLike,
    net_std_ms: ArrayLike,
    queue_len: ArrayLike,
    slowdown: ArrayLike,
    mu_ms: ArrayLike,
    sigma_ms: ArrayLike,
    accuracy: ArrayLike,
    srtt_ms: ArrayLike = np.nan,
    rttvar_ms: ArrayLike = np.nan,
    client_dl_ms: ArrayLike = np.nan,
    client_dlvar_ms: ArrayLike = np.nan,
    client_dl_mismatch: ArrayLike = np.nan,
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """:func:`encode`'s two blocks as separate C-contiguous arrays, request ``(N, R)`` and
    models ``(N, K, P)`` (the inputs of an exported selector); the same values bit for bit."""
    req = np.atleast_2d(
        encode_requests(
            sla_ms,
            elapsed_ms,
            t_input_ms,
            payload_kb,
            net_mean_ms,
            net_std_ms,
            queue_len,
            slowdown,
            srtt_ms,
            rttvar_ms,
            client_dl_ms,
            client_dlvar_ms,
            client_dl_mismatch,
        )
    )
    n = req.shape[0]
    models = np.empty((n, np.shape(mu_ms)[-1], P), dtype=np.float32)
    _write_models(models, req[:, BUDGET], mu_ms, sigma_ms, accuracy)
    return req, models


def _write_models(
    models: NDArray[np.float32],
    budget_ms: NDArray[np.float32],
    mu_ms: ArrayLike,
    sigma_ms: ArrayLike,
    accuracy: ArrayLike,
) -> None:
    """Fill a model block ``(N, K, P)`` in place from the float32 budgets ``(N,)``."""
    mu = np.asarray(mu_ms, dtype=np.float64)
    sigma = np.asarray(sigma_ms, dtype=np.float64)
    if mu.ndim == 1 and sigma.ndim == 1 and np.ndim(accuracy) <= 1 and models.shape[0] > 1:
        # One profile for the whole batch: write the first request's rows, copy them down
        # (the slack column is overwritten below).
        first = models[0]
        first[:, MU] = mu
        first[:, SIGMA] = sigma
        first[:, ACC] = accuracy
        models[1:] = first
    else:
        models[:, :, MU] = mu
        models[:, :, SIGMA] = sigma
        models[:, :, ACC] = accuracy
    model_slack(budget_ms, mu, sigma, out=models[:, :, SLACK])
