"""Link models: upload and download times from a round-trip time and two bandwidths.

A request's upload takes ``T_input = RTT/2 + payload / uplink bandwidth`` and its response's
download ``T_output = RTT/2 + response / downlink bandwidth``. The three link quantities are
log-normal and time-correlated per client: each follows a stationary Ornstein-Uhlenbeck process
in log space, sampled at that client's request times, so two requests of the same client ``Δt``
milliseconds apart have log-space correlation ``exp(-Δt / correlation_ms)``. Every client of
every stream has its own independent processes; they persist across blocks and are restarted by
:meth:`LinkModel.reset`.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike

from modi.envs.networks import F64, BlockContext, NetworkError
from modi.envs.traces import BYTES_PER_MS_PER_MBPS

log = logging.getLogger(__name__)

SPEEDTEST_COLUMNS = {
    "rtt": "latency_ms",
    "uplink": "uplink_Mbps",
    "downlink": "downlink_Mbps",
}
"""Columns of the Ookla speed-test CSV that :meth:`LinkModel.from_speedtest` fits."""

_Z_IQR = 2.0 * 0.6744897501960817  # interquartile range of a standard normal
FitMethod = Literal["quantile", "mle"]


def checked_number(value: object, field: str, *, positive: bool, allow_inf: bool = False) -> float:
    """``value`` as a float, > 0 (``positive``) or >= 0, finite unless ``allow_inf`` (then
    ``+inf`` passes); a :class:`NetworkError` naming ``field`` otherwise."""
    if isinstance(value, bool):
        raise NetworkError(f"{field} must be a number, got {value!r}")
    try:
        x = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise NetworkError(f"{field} must be a number, got {value!r}") from None
    if math.isnan(x) or (math.isinf(x) and not (allow_inf and x > 0)):
        raise NetworkError(f"{field} must be a finite number, got {value!r}")
    if positive and x <= 0:
        raise NetworkError(f"{field} must be > 0, got {value!r}")
    if x < 0:
        raise NetworkError(f"{field} must be >= 0, got {value!r}")
    return x


@dataclass(frozen=True)
class LogNormal:
    """A log-normal marginal given by its mean and coefficient of variation (std / mean).

    ``X = exp(mu + sigma * Z)`` with ``Z ~ N(0, 1)``, ``sigma² = ln(1 + cv²)`` and
    ``mu = ln(mean) - sigma² / 2``. ``1 / X`` is log-normal with the same ``cv``.
    """

    mean: float
    cv: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.mean) and self.mean > 0):
            raise ValueError(f"log-normal mean must be finite and > 0, got {self.mean!r}")
        if not (math.isfinite(self.cv) and self.cv >= 0):
            raise ValueError(f"log-normal cv must be finite and >= 0, got {self.cv!r}")

    @classmethod
    def from_median(cls, median: float, sigma: float) -> LogNormal:
        """The log-normal with median ``exp(mu)`` and log-space standard deviation ``sigma``."""
        return cls(median * math.exp(sigma * sigma / 2.0), math.sqrt(math.expm1(sigma * sigma)))

    @property
    def sigma(self) -> float:
        """Standard deviation of ``ln X``."""
        return math.sqrt(math.log1p(self.cv * self.cv))

    @property
    def mu(self) -> float:
        """Mean of ``ln X``."""
        return math.log(self.mean) - self.sigma**2 / 2.0

    @property
    def median(self) -> float:
        """Median ``exp(mu)``."""
        return math.exp(self.mu)

    @property
    def mean_inverse(self) -> float:
        """``E[1 / X] = (1 + cv²) / mean``."""
        return (1.0 + self.cv * self.cv) / self.mean


def fit_lognormal(values: ArrayLike, method: FitMethod = "quantile") -> LogNormal:
    """Fit a log-normal to positive ``values``.

    ``"quantile"`` (robust): the median is the sample median and ``sigma`` the interquartile
    range of ``ln x`` divided by that of a standard normal (1.349). ``"mle"``: ``mu`` and
    ``sigma`` are the mean and (population) standard deviation of ``ln x``.
    """
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or x.size < 2:
        raise ValueError(f"need at least 2 values to fit a log-normal, got {x.size}")
    if not np.all(np.isfinite(x)) or np.any(x <= 0):
        raise ValueError("log-normal fit needs finite values > 0")
    logs = np.log(x)
    if method == "quantile":
        q25, q50, q75 = np.quantile(logs, [0.25, 0.5, 0.75])
        return LogNormal.from_median(math.exp(q50), float(q75 - q25) / _Z_IQR)
    if method == "mle":
        return LogNormal.from_median(math.exp(float(logs.mean())), float(logs.std()))
    raise ValueError(f"unknown fit method {method!r}; expected 'quantile' or 'mle'")


def _as_filter(value: str | Sequence[str] | None, field: str) -> frozenset[str] | None:
    """A row filter: one string, several, or None (keep all)."""
    if value is None:
        return None
    items = [value] if isinstance(value, str) else list(value)
    if not items or not all(isinstance(v, str) for v in items):
        raise NetworkError(
            f"{field} must be a string or a non-empty list of strings, got {value!r}"
        )
    return frozenset(items)


def read_speedtest(
    path: str | Path,
    radio_type: str | Sequence[str] | None = None,
    carrier: str | Sequence[str] | None = None,
    connection_mode: str | Sequence[str] | None = None,
) -> dict[str, F64]:
    """Read the Ookla speed-test CSV (``sigcomm21-5g-speedtest``) and return the columns of
    :data:`SPEEDTEST_COLUMNS` (keys ``rtt``, ``uplink``, ``downlink``) for the selected rows.

    Filters keep rows whose ``radio_type`` / ``carrier`` / ``connection_mode`` is one of the
    given values. Raises :class:`NetworkError` naming the file, line and column of bad input.
    """
    p = Path(path).expanduser()
    filters = {
        "radio_type": _as_filter(radio_type, "radio_type"),
        "carrier": _as_filter(carrier, "carrier"),
        "connection_mode": _as_filter(connection_mode, "connection_mode"),
    }
    if not p.is_file():
        raise NetworkError(f"{p}: no such speed-test CSV file")
    columns: dict[str, list[float]] = {key: [] for key in SPEEDTEST_COLUMNS}
    seen: dict[str, set[str]] = {name: set() for name in filters}
    try:
        with p.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            header = reader.fieldnames or []
            needed = [*SPEEDTEST_COLUMNS.values()]
            needed += [name for name, f in filters.items() if f is not None]
            missing = [c for c in needed if c not in header]
            if missing:
                raise NetworkError(
                    f"{p}: missing column(s) {missing}; found columns {list(header)}"
                )
            for row in reader:
                for name, wanted in filters.items():
                    if wanted is not None:
                        seen[name].add(row[name])
                if any(w is not None and row[n] not in w for n, w in filters.items()):
                    continue
                for key, col in SPEEDTEST_COLUMNS.items():
                    raw = row[col]
                    try:
                        v = float(raw)
                    except (TypeError, ValueError):
                        v = math.nan
                    if not (math.isfinite(v) and v > 0):
                        raise NetworkError(
                            f"{p}: line {reader.line_num}: column {col!r} must be a number > 0, "
                            f"got {raw!r}"
                        )
                    columns[key].append(v)
    except UnicodeDecodeError as exc:
        raise NetworkError(f"{p}: not a UTF-8 CSV file ({exc.reason})") from exc
    except csv.Error as exc:
        raise NetworkError(f"{p}: malformed CSV ({exc})") from exc
    n = len(columns["rtt"])
    if n < 2:
        chosen = {k: sorted(v) for k, v in filters.items() if v is not None}
        available = {k: sorted(seen[k]) for k in chosen}
        raise NetworkError(
            f"{p}: {n} rows match {chosen or 'no filter'}; need at least 2 to fit a link "
            f"(values present: {available})"
        )
    return {k: np.asarray(v, dtype=np.float64) for k, v in columns.items()}


class LinkModel:
    """A link with log-normal, time-correlated RTT and up/down bandwidths per client.

    ``T_input = RTT/2 + payload_bytes / (125 * uplink_Mbps)`` and
    ``T_output = RTT/2 + response_bytes / (125 * downlink_Mbps)`` (ms), with one RTT per request
    used in both directions. The three quantities are independent of each other; each follows a
    log-space Ornstein-Uhlenbeck process per (stream, client): at a client's request ``k``,
    ``z_k = rho z_{k-1} + sqrt(1 - rho²) eps_k`` with ``rho = exp(-Δt / correlation_ms)``, ``Δt``
    the time since that client's previous request and ``eps_k ~ N(0, 1)``; a client's first
    request draws from the stationary law. So every request's marginal is exactly the log-normal
    given by the mean and CV below, whatever the request pattern.

    Args:
        rtt_ms: mean round-trip time (ms), > 0.
        uplink_mbps: mean uplink bandwidth (Mbit/s), > 0.
        downlink_mbps: mean downlink bandwidth (Mbit/s), > 0.
        rtt_cv: coefficient of variation (std / mean) of the RTT, >= 0 (0: constant).
        uplink_cv: CV of the uplink bandwidth, >= 0. The bandwidth term of the upload time,
            ``payload / bandwidth``, has the same CV and mean ``payload * (1 + cv²) / mean``.
        downlink_cv: CV of the downlink bandwidth, >= 0.
        correlation_ms: correlation time ``tau`` (ms) of all three processes, >= 0; ``0`` draws
            every request independently, ``inf`` keeps each client's first draw forever.
        name: label used in logs and results.

    Attributes ``rtt``, ``uplink`` and ``downlink`` hold the marginals as :class:`LogNormal`.
    ``sample`` is vectorised over streams; the recursion runs over the ``B`` rows of a block.
    """

    def __init__(
        self,
        rtt_ms: float,
        uplink_mbps: float,
        downlink_mbps: float,
        rtt_cv: float = 0.0,
        uplink_cv: float = 0.0,
        downlink_cv: float = 0.0,
        correlation_ms: float = 5000.0,
        name: str = "link",
    ) -> None:
        self.name = name
        self.rtt = LogNormal(
            checked_number(rtt_ms, "network.rtt_ms", positive=True),
            checked_number(rtt_cv, "network.rtt_cv", positive=False),
        )
        self.uplink = LogNormal(
            checked_number(uplink_mbps, "network.uplink_mbps", positive=True),
            checked_number(uplink_cv, "network.uplink_cv", positive=False),
        )
        self.downlink = LogNormal(
            checked_number(downlink_mbps, "network.downlink_mbps", positive=True),
            checked_number(downlink_cv, "network.downlink_cv", positive=False),
        )
        self.correlation_ms = checked_number(
            correlation_ms, "network.correlation_ms", positive=False, allow_inf=True
        )
        quantities = (self.rtt, self.uplink, self.downlink)
        self._active = [q for q, d in enumerate(quantities) if d.cv > 0]
        sign = np.array([1.0, -1.0, -1.0])  # log RTT, log(1 / uplink), log(1 / downlink)
        self._log_loc = sign * np.array([d.mu for d in quantities])
        self._log_scale = sign * np.array([d.sigma for d in quantities])
        self._num_envs = 0
        self._num_clients = 0
        self._base = np.zeros((1, 0), dtype=np.int64)
        self._last_ms = np.zeros(0)
        self._z = np.zeros((0, len(self._active)))

    @classmethod
    def from_speedtest(
        cls,
        path: str | Path,
        radio_type: str | Sequence[str] | None = None,
        carrier: str | Sequence[str] | None = None,
        connection_mode: str | Sequence[str] | None = None,
        correlation_ms: float = 8000.0,
        method: FitMethod = "quantile",
        name: str = "link_5g",
    ) -> LinkModel:
        """A link whose RTT (``latency_ms``), uplink (``uplink_Mbps``) and downlink
        (``downlink_Mbps``) marginals are log-normals fitted to Ookla speed tests.

        Args:
            path: the speed-test CSV, e.g.
                ``shared/data/sigcomm21-5g-speedtest/dataset_speedtest_ookla.shared.csv``.
            radio_type: keep only these radio types (e.g. ``5G-NSA-Low-Band``); None: all rows.
            carrier: keep only these carriers (``Verizon``, ``TMobile``); None: all.
            connection_mode: keep only ``single`` or ``multi`` TCP-connection tests; None: all.
            correlation_ms: correlation time (the speed tests are independent snapshots and
                say nothing about it).
            method: ``"quantile"`` (median + interquartile range of the logs, robust to the
                capped, skewed speed-test distributions) or ``"mle"``; see :func:`fit_lognormal`.
            name: label of the link.
        """
        cols = read_speedtest(path, radio_type, carrier, connection_mode)
        if method not in ("quantile", "mle"):
            raise NetworkError(f"network.method must be 'quantile' or 'mle', got {method!r}")
        fits = {k: fit_lognormal(v, method) for k, v in cols.items()}
        log.info(
            "%s: fitted %d speed tests (%s): median RTT %.1f ms, uplink %.1f, downlink %.1f Mbit/s",
            name,
            cols["rtt"].size,
            path,
            fits["rtt"].median,
            fits["uplink"].median,
            fits["downlink"].median,
        )
        return cls(
            rtt_ms=fits["rtt"].mean,
            uplink_mbps=fits["uplink"].mean,
            downlink_mbps=fits["downlink"].mean,
            rtt_cv=fits["rtt"].cv,
            uplink_cv=fits["uplink"].cv,
            downlink_cv=fits["downlink"].cv,
            correlation_ms=correlation_ms,
            name=name,
        )

    def __repr__(self) -> str:
        return (
            f"LinkModel(name={self.name!r}, rtt={self.rtt}, uplink_mbps={self.uplink}, "
            f"downlink_mbps={self.downlink}, correlation_ms={self.correlation_ms})"
        )

    def upload_moments(self, payload_bytes: float) -> tuple[float, float]:
        """Exact mean and standard deviation (ms) of ``T_input`` for a payload."""
        bw_mean = payload_bytes / BYTES_PER_MS_PER_MBPS * self.uplink.mean_inverse
        var = (self.rtt.mean * self.rtt.cv / 2.0) ** 2 + (bw_mean * self.uplink.cv) ** 2
        return self.rtt.mean / 2.0 + bw_mean, math.sqrt(var)

    def expected_inverse_uplink(self, last_mbps: ArrayLike, age_ms: ArrayLike) -> F64:
        """``E[1 / uplink]`` (per Mbit/s) of a request ``age_ms`` after the same client's
        uplink was measured at ``last_mbps``: the log-space OU process gives
        ``ln B | ln b ~ N(mu + rho (ln b - mu), sigma² (1 - rho²))`` with
        ``rho = exp(-age / correlation_ms)``, so
        ``E[1/B] = exp(-(mu + rho (ln b - mu)) + sigma² (1 - rho²) / 2)``."""
        b = np.maximum(np.asarray(last_mbps, dtype=np.float64), 1e-12)
        age = np.maximum(np.asarray(age_ms, dtype=np.float64), 0.0)
        up = self.uplink
        if self.correlation_ms == 0.0:
            rho = np.zeros_like(age)
        else:
            with np.errstate(invalid="ignore"):
                rho = np.exp(-age / self.correlation_ms)
            rho = np.where(np.isnan(rho), 1.0, rho)  # inf correlation time and age 0
        mean = up.mu + rho * (np.log(b) - up.mu)
        return np.asarray(np.exp(-mean + up.sigma**2 * (1.0 - rho**2) / 2.0), dtype=np.float64)

    def reset(self, rng: np.random.Generator, num_envs: int, num_clients: int) -> None:
        """Forget every client's history: its next request draws from the stationary law."""
        if num_envs < 1 or num_clients < 1:
            raise NetworkError(
                f"num_envs and num_clients must be >= 1, got {num_envs} and {num_clients}"
            )
        self._num_envs = num_envs
        self._num_clients = num_clients
        self._base = (np.arange(num_envs, dtype=np.int64) * num_clients)[None, :]
        self._last_ms = np.full(num_envs * num_clients, -np.inf)
        self._z = np.zeros((num_envs * num_clients, len(self._active)))

    def _latent(self, rng: np.random.Generator, ctx: BlockContext) -> F64:
        """Standard-normal OU states ``(B, N, P)`` of the requests, one column per quantity
        with a positive CV (:attr:`_active`, in the order RTT, uplink, downlink)."""
        client = np.asarray(ctx.client)
        b, n = client.shape
        if n != self._num_envs:
            raise NetworkError(
                f"{self.name}: block has {n} streams but reset() was called for "
                f"{self._num_envs}; call reset(rng, num_envs, num_clients) first"
            )
        if b and (client.min() < 0 or client.max() >= self._num_clients):
            raise NetworkError(
                f"{self.name}: client ids must be in [0, {self._num_clients}), got "
                f"[{client.min()}, {client.max()}]"
            )
        p = len(self._active)
        eps = rng.standard_normal((b, n, p))
        if self.correlation_ms == 0.0 or p == 0:
            return eps
        time_ms = np.asarray(ctx.time_ms, dtype=np.float64)
        key = client + self._base
        # time of each client's previous request: a scan over rows, vectorised over streams
        # (each row holds one request per stream, so its keys are distinct)
        last = self._last_ms
        prev = np.empty((b, n))
        for j in range(b):
            k = key[j]
            prev[j] = last[k]
            last[k] = time_ms[j]
        first = np.isneginf(prev)
        with np.errstate(invalid="ignore"):
            x = (time_ms - prev) / self.correlation_ms
        x[first] = np.inf  # a client's first request: rho = 0, a stationary draw
        np.maximum(x, 0.0, out=x)  # requests of one client at the same time: rho = 1
        rho = np.exp(-x)
        noise = eps * np.sqrt(-np.expm1(-2.0 * x))[..., None]  # sqrt(1 - rho²) eps
        z = np.empty((b, n, p))
        state = self._z
        for j in range(b):
            k = key[j]
            zj = rho[j, :, None] * state[k] + noise[j]
            state[k] = zj
            z[j] = zj
        return z

    def sample(self, rng: np.random.Generator, ctx: BlockContext) -> tuple[F64, F64]:
        """``(T_input, T_output)`` in ms for a block, each shaped like ``ctx.client``."""
        z = self._latent(rng, ctx)
        # log of (RTT, 1 / uplink, 1 / downlink): one exp for the three quantities
        logs = np.empty((*z.shape[:2], 3))
        logs[...] = self._log_loc
        if self._active:
            logs[..., self._active] += self._log_scale[self._active] * z
        vals = np.exp(logs)
        half_rtt = 0.5 * vals[..., 0]
        payload = np.asarray(ctx.payload_bytes, dtype=np.float64) / BYTES_PER_MS_PER_MBPS
        response = np.asarray(ctx.response_bytes, dtype=np.float64) / BYTES_PER_MS_PER_MBPS
        t_in = half_rtt + payload * vals[..., 1]
        t_out = half_rtt + response * vals[..., 2]
        #: The round trip of each request's upload (one RTT per request, both directions).
        self.upload_rtt_ms = vals[..., 0].copy()
        return t_in, t_out
