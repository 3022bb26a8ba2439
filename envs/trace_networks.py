"""Trace-driven networks: upload and download times replayed from measured link traces.

Each client of each stream is assigned one trace (or one uplink/downlink pair) at
:meth:`reset <MahimahiNetwork.reset>`, and a random start offset into it, so the clients of a
stream see different parts of the recordings while each client's link stays coherent in time.
A request captured at ``t`` (its stream's clock, ``ctx.time_ms``):

- starts its upload at trace time ``offset + t``:
  ``T_input = RTT(t) / 2 + uplink.transfer_time_ms(offset + t, payload_bytes)``;
- starts its download when the upload has arrived, ``offset + t + T_input + download_delay_ms``:
  ``T_output = RTT(t') / 2 + downlink.transfer_time_ms(that time, response_bytes)`` with
  ``t' = t + T_input + download_delay_ms``.

``RTT`` is ``rtt_ms`` or, with ``rtt_cv > 0``, a log-normal process around it per client
(:class:`RttProcess`: the Ookla speed tests' RTT spread for the radio type, time-correlated).

Approximations (documented, deliberate): the execution time on the server is not known when
the network is sampled (the network must not depend on the model the policy picks), so the
download is assumed to start ``download_delay_ms`` (default 0) after the upload ends; the link
is idle for every request (no queueing behind the client's earlier requests); propagation is
``RTT / 2`` each way on top of the trace's delivery time. Traces loop forever
(:mod:`modi.envs.traces`).

All trace files are read and validated in ``__init__``: a missing, empty or malformed trace, or
one that never delivers anything, raises :class:`~modi.envs.traces.TraceError` naming the
setting, the file and the line before any request is simulated.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from modi.envs.links import LogNormal, checked_number
from modi.envs.networks import F64, BlockContext, NetworkError
from modi.envs.traces import (
    BYTES_PER_MS_PER_MBPS,
    MahimahiTrace,
    Trace,
    TraceError,
    TraceSpec,
    load_traces,
)

log = logging.getLogger(__name__)


def _spec(value: object, field: str) -> TraceSpec:
    """A trace spec from a config value: a path, or a list of paths (e.g. a ListConfig)."""
    if isinstance(value, (str, Path)):
        return value
    try:
        items = [str(v) for v in value]  # type: ignore[attr-defined]
    except TypeError:
        raise NetworkError(
            f"{field} must be a path, a glob pattern or a list of them, got {value!r}"
        ) from None
    return items


@contextmanager
def _naming(field: str) -> Iterator[None]:
    """Prefix a TraceError raised inside with the setting that named the file."""
    try:
        yield
    except TraceError as exc:
        raise TraceError(f"{field}: {exc}") from exc


def _group_transfer(
    traces: Sequence[Trace], ids: NDArray[np.integer], start_ms: F64, nbytes: F64
) -> F64:
    """``traces[ids[i]].transfer_time_ms(start_ms[i], nbytes[i])`` for flat arrays, one call
    per trace used (requests grouped with a stable sort, keeping each stream's time order)."""
    if len(traces) == 1:
        return traces[0].transfer_time_ms(start_ms, nbytes)
    order = np.argsort(ids, kind="stable")
    edges = np.concatenate(([0], np.cumsum(np.bincount(ids, minlength=len(traces)))))
    s_sorted = start_ms[order]
    b_sorted = nbytes[order]
    out_sorted = np.empty_like(s_sorted)
    for i in np.flatnonzero(np.diff(edges)).tolist():
        lo, hi = edges[i], edges[i + 1]
        out_sorted[lo:hi] = traces[i].transfer_time_ms(s_sorted[lo:hi], b_sorted[lo:hi])
    out = np.empty_like(out_sorted)
    out[order] = out_sorted
    return out


MIN_SEGMENT_MS = 1000.0
"""Shortest trace segment (ms) a ``network.segment`` may leave of any trace."""

Segment = tuple[float, float]


def _parse_segment(value: object) -> Segment | None:
    """``network.segment`` as ``(a, b)`` with ``0 <= a < b <= 1``, or None."""
    if value is None:
        return None
    try:
        items = list(value)  # type: ignore[call-overload]
    except TypeError:
        items = []
    if len(items) != 2:
        raise NetworkError(
            f"network.segment must be null or two fractions [a, b] of each trace's period "
            f"with 0 <= a < b <= 1, got {value!r}"
        )
    a = checked_number(items[0], "network.segment[0]", positive=False)
    b = checked_number(items[1], "network.segment[1]", positive=False)
    if not 0.0 <= a < b <= 1.0:
        raise NetworkError(
            f"network.segment must be two fractions [a, b] of each trace's period with "
            f"0 <= a < b <= 1, got {[a, b]}"
        )
    return a, b


def _segment_traces(
    traces: Sequence[Trace], segment: Segment, field: str
) -> tuple[list[Trace], F64]:
    """Each trace cut to the fractions ``segment`` of its period (a loop of its own), and the
    trace time (ms) at which each cut starts."""
    a, b = segment
    out: list[Trace] = []
    starts = np.zeros(len(traces))
    for i, tr in enumerate(traces):
        length = (b - a) * tr.period_ms
        if length < MIN_SEGMENT_MS:
            raise NetworkError(
                f"network.segment {list(segment)} leaves {length:.1f} ms of {field} trace "
                f"{tr.path} (period {tr.period_ms:.1f} ms); a segment must span at least "
                f"{MIN_SEGMENT_MS:.0f} ms of every trace"
            )
        try:
            out.append(tr.segment(a * tr.period_ms, b * tr.period_ms))
        except TraceError as exc:
            raise NetworkError(f"network.segment {list(segment)}: {field}: {exc}") from exc
        # Mahimahi segments start at whole milliseconds
        starts[i] = round(a * tr.period_ms) if isinstance(tr, MahimahiTrace) else a * tr.period_ms
    return out, starts


def _child_rng(rng: np.random.Generator) -> np.random.Generator:
    """An independent generator derived from ``rng`` without drawing from its stream (so
    turning a feature on leaves every other draw of the stream as it was); a generator
    without a seed sequence gives one draw instead."""
    try:
        return rng.spawn(1)[0]
    except (TypeError, ValueError):
        return np.random.default_rng(rng.integers(0, 2**63))


def _group_cumulative(traces: Sequence[Trace], ids: NDArray[np.integer], time_ms: F64) -> F64:
    """``traces[ids[i]].cumulative_bytes(time_ms[i])`` for flat arrays, one call per trace."""
    if len(traces) == 1:
        return traces[0].cumulative_bytes(time_ms)
    out = np.empty_like(time_ms)
    for i in np.unique(ids).tolist():
        sel = ids == i
        out[sel] = traces[i].cumulative_bytes(time_ms[sel])
    return out


RTT_COMPONENTS = 32
"""Sinusoids per client in the spectral representation of the time-varying RTT."""

_RTT_CHUNK = 16_384  # requests per evaluation chunk (bounds the (requests, components) temps)


class RttProcess:
    """A time-varying round-trip time per (stream, client): log-normal marginal, log-space
    correlation ``exp(-|Δt| / correlation_ms)`` (the Ornstein-Uhlenbeck process's law).

    ``RTT(t) = exp(mu + sigma z(t))`` with ``mu, sigma`` of :class:`~modi.envs.links.LogNormal`
    ``(mean_ms, cv)`` and ``z`` a stationary unit-variance Gaussian process with the OU's
    exponential covariance, in its spectral (random Fourier) representation:
    ``z(t) = sqrt(2 / M) sum_m cos(w_m t + phi_m)`` with ``w_m`` drawn from the OU's (Cauchy)
    spectral density and ``phi_m`` uniform; ``E[z(t) z(t + Δt)] = exp(-|Δt| / tau)`` exactly,
    and with ``M =`` :data:`RTT_COMPONENTS` the marginal is Gaussian to within a kurtosis of
    ``-1.5 / M``. Each client's path is drawn once per :meth:`reset` and is a function of
    time, so the RTT can be read at any moment (an upload, a download, a decision) without
    ordering constraints, and a perfect estimator's ``RTT now`` is exact.
    """

    def __init__(self, mean_ms: float, cv: float, correlation_ms: float) -> None:
        self.marginal = LogNormal(mean_ms, cv)
        self.correlation_ms = correlation_ms
        self._freq = np.zeros((0, RTT_COMPONENTS))
        self._phase = np.zeros((0, RTT_COMPONENTS))

    def reset(self, rng: np.random.Generator, num_paths: int) -> None:
        """Draw ``num_paths`` independent paths (one per flat (stream, client) key)."""
        shape = (num_paths, RTT_COMPONENTS)
        u = rng.random(shape)
        # Cauchy(0, 1 / tau) angular frequencies: the spectral density of exp(-|Δt| / tau);
        # kept in cycles per ms, phases in cycles
        self._freq = np.tan(np.pi * (u - 0.5)) / (2.0 * np.pi * self.correlation_ms)
        self._phase = rng.random(shape)

    def rtt_ms(self, key: NDArray[np.integer], time_ms: F64) -> F64:
        """RTT (ms) of path ``key[i]`` at stream time ``time_ms[i]`` (flat arrays)."""
        m = self.marginal
        out = np.empty(time_ms.shape)
        scale = math.sqrt(2.0 / RTT_COMPONENTS)
        two_pi = np.float32(2.0 * np.pi)
        for lo in range(0, time_ms.size, _RTT_CHUNK):
            hi = lo + _RTT_CHUNK
            k = key[lo:hi]
            cycles = self._freq[k] * time_ms[lo:hi, None]  # float64: exact phase at any time
            cycles += self._phase[k]
            cycles -= np.rint(cycles)  # in [-0.5, 0.5]: float32 from here on (SIMD cos)
            angle = cycles.astype(np.float32)
            angle *= two_pi
            z = np.cos(angle).sum(axis=1, dtype=np.float64) * scale
            out[lo:hi] = np.exp(m.mu + m.sigma * z)
        return out


class _TraceNetwork:
    """Shared machinery: per-client trace assignment, offsets and the vectorised sample.

    With ``segment=(a, b)`` every trace is replaced by the part of its period between the
    fractions ``a`` and ``b``, looped on its own (the traces' ``segment`` method):
    offsets are uniform within the segment and a transfer that runs past its end continues at
    its start, so a split reads no trace data outside its range.
    """

    def __init__(
        self,
        name: str,
        uplink: Sequence[Trace],
        downlink: Sequence[Trace],
        paired: bool,
        rtt_ms: float,
        download_delay_ms: float,
        random_offset: bool,
        uplink_scale: float = 1.0,
        segment: Segment | Sequence[float] | None = None,
        rtt_cv: float = 0.0,
        rtt_correlation_ms: float = 8000.0,
    ) -> None:
        self.name = name
        self.rtt_ms = checked_number(rtt_ms, "network.rtt_ms", positive=True)
        """The mean round-trip time (ms); the RTT itself when ``rtt_cv`` is 0."""
        self.rtt_cv = checked_number(rtt_cv, "network.rtt_cv", positive=False)
        self.rtt_correlation_ms = checked_number(
            rtt_correlation_ms, "network.rtt_correlation_ms", positive=True, allow_inf=True
        )
        self.rtt_process: RttProcess | None = (
            RttProcess(self.rtt_ms, self.rtt_cv, self.rtt_correlation_ms)
            if self.rtt_cv > 0
            else None
        )
        """The time-varying RTT (None: a constant ``rtt_ms``)."""
        self.download_delay_ms = checked_number(
            download_delay_ms, "network.download_delay_ms", positive=False
        )
        self.uplink_scale = checked_number(uplink_scale, "network.uplink_scale", positive=True)
        self.random_offset = bool(random_offset)
        self.segment = _parse_segment(segment)
        """``(a, b)``: the fractions of each trace's period in use; None: all of it."""
        self.source_uplink_traces = list(uplink)
        """The uplink traces as loaded (whole periods)."""
        self.source_downlink_traces = list(downlink)
        """The downlink traces as loaded (whole periods)."""
        self.uplink_segment_start_ms = np.zeros(len(self.source_uplink_traces))
        """Per uplink trace: the trace time (ms) at which its segment starts (0 without one)."""
        self.downlink_segment_start_ms = np.zeros(len(self.source_downlink_traces))
        """Per downlink trace: the trace time (ms) at which its segment starts."""
        if self.segment is None:
            self.uplink_traces = list(uplink)
            self.downlink_traces = list(downlink)
        else:
            self.uplink_traces, self.uplink_segment_start_ms = _segment_traces(
                uplink, self.segment, "uplink"
            )
            if len(uplink) == len(downlink) and all(
                u is d for u, d in zip(uplink, downlink, strict=True)
            ):  # one set of traces for both directions (ThroughputNetwork)
                self.downlink_traces = list(self.uplink_traces)
                self.downlink_segment_start_ms = self.uplink_segment_start_ms
            else:
                self.downlink_traces, self.downlink_segment_start_ms = _segment_traces(
                    downlink, self.segment, "downlink"
                )
            log.info(
                "%s: using the segment [%g, %g) of every trace's period",
                name,
                self.segment[0],
                self.segment[1],
            )
        self.paired = paired
        assert not paired or len(self.uplink_traces) == len(self.downlink_traces)
        self._up_period = np.array([t.period_ms for t in self.uplink_traces], dtype=np.float64)
        self._down_period = np.array([t.period_ms for t in self.downlink_traces], dtype=np.float64)
        self.uplink_index = np.zeros((0, 0), dtype=np.int64)
        self.downlink_index = np.zeros((0, 0), dtype=np.int64)
        self.offset_ms = np.zeros((0, 0))

    def reset(self, rng: np.random.Generator, num_envs: int, num_clients: int) -> None:
        """Assign every (stream, client) a trace (pair) and a start offset.

        The offset is uniform over the assigned trace's period (the longer one of a pair), or
        0 when ``random_offset`` is off. Sets :attr:`uplink_index`, :attr:`downlink_index` and
        :attr:`offset_ms`, all shaped ``(num_envs, num_clients)``. With a :attr:`segment`,
        periods and offsets are those of the segment (offset 0 = the segment's start; the
        offset in the whole trace is :attr:`start_offset_ms`).
        """
        if num_envs < 1 or num_clients < 1:
            raise NetworkError(
                f"num_envs and num_clients must be >= 1, got {num_envs} and {num_clients}"
            )
        shape = (num_envs, num_clients)
        up = rng.integers(0, len(self.uplink_traces), size=shape)
        down = up if self.paired else rng.integers(0, len(self.downlink_traces), size=shape)
        u = rng.random(shape)  # drawn even without random offsets: same stream either way
        period = np.maximum(self._up_period[up], self._down_period[down])
        self.uplink_index = up
        self.downlink_index = down
        self.offset_ms = u * period if self.random_offset else np.zeros(shape)
        if self.rtt_process is not None:
            self.rtt_process.reset(_child_rng(rng), num_envs * num_clients)
        # small integer ids sort fast (radix sort) when requests are grouped by trace
        self._up_key = up.astype(np.int16 if len(self.uplink_traces) < 2**15 else np.int64)
        self._down_key = down.astype(np.int16 if len(self.downlink_traces) < 2**15 else np.int64)

    @property
    def start_offset_ms(self) -> F64:
        """Each (stream, client)'s start offset in its (uplink) trace as loaded, ms: within
        ``[a * P, b * P)`` with a :attr:`segment` ``(a, b)``, ``P`` the trace's period."""
        return np.asarray(self.uplink_segment_start_ms[self.uplink_index] + self.offset_ms)

    def latent_state(
        self,
        env_index: NDArray[np.intp],
        client: NDArray[np.intp],
        time_ms: NDArray[np.float64],
        window_ms: float = 1000.0,
    ) -> dict[str, NDArray[np.float64]]:
        """What a perfect estimator of the link's *present* condition knows, per request.

        For requests of stream ``env_index`` from ``client`` at stream clock ``time_ms`` (e.g.
        the decision time at the server), all broadcast to one shape, using each client's
        trace, offset and segment exactly as :meth:`sample` does (call after :meth:`reset`):

        - ``"rtt_ms"``: the round-trip time at ``time_ms``;
        - ``"downlink_mbps"``: the throughput the downlink trace delivered over the last
          ``window_ms`` of trace time before ``time_ms`` (Mbit/s);
        - ``"uplink_mbps"``: likewise for the uplink (times ``uplink_scale``).

        Only trace time up to ``time_ms`` is read: nothing of the trace ahead.
        """
        window = checked_number(window_ms, "window_ms", positive=True)
        env, cl, t = np.broadcast_arrays(
            np.asarray(env_index), np.asarray(client), np.asarray(time_ms, dtype=np.float64)
        )
        num_envs, num_clients = self.offset_ms.shape
        if num_envs == 0:
            raise NetworkError(f"{self.name}: call reset(rng, num_envs, num_clients) first")
        if env.size and (env.min() < 0 or env.max() >= num_envs):
            raise NetworkError(
                f"{self.name}: env_index must be in [0, {num_envs}), got [{env.min()}, {env.max()}]"
            )
        if cl.size and (cl.min() < 0 or cl.max() >= num_clients):
            raise NetworkError(
                f"{self.name}: client ids must be in [0, {num_clients}), got "
                f"[{cl.min()}, {cl.max()}]"
            )
        if not np.all(np.isfinite(t)) or np.any(t < 0):
            raise NetworkError(f"{self.name}: time_ms must be finite and >= 0")
        shape = t.shape
        key = (env.astype(np.int64) * num_clients + cl).ravel()
        now = self.offset_ms.ravel()[key] + t.ravel()
        then = now - window
        up_ids = self._up_key.ravel()[key]
        down_ids = up_ids if self.paired else self._down_key.ravel()[key]
        up_bytes = _group_cumulative(self.uplink_traces, up_ids, now) - _group_cumulative(
            self.uplink_traces, up_ids, then
        )
        down_bytes = _group_cumulative(self.downlink_traces, down_ids, now) - _group_cumulative(
            self.downlink_traces, down_ids, then
        )
        per_mbps = window * BYTES_PER_MS_PER_MBPS
        return {
            "rtt_ms": self._rtt_ms(key, t.ravel()).reshape(shape),
            "downlink_mbps": (down_bytes / per_mbps).reshape(shape),
            "uplink_mbps": (up_bytes / per_mbps * self.uplink_scale).reshape(shape),
        }

    def _rtt_ms(self, key: NDArray[np.int64], time_ms: F64) -> F64:
        """The round-trip time (ms) of flat (stream, client) ``key`` at stream clock ``time_ms``."""
        if self.rtt_process is None:
            return np.full(time_ms.shape, self.rtt_ms)
        return self.rtt_process.rtt_ms(key, time_ms)

    def sample(self, rng: np.random.Generator, ctx: BlockContext) -> tuple[F64, F64]:
        """``(T_input, T_output)`` in ms for a block, each shaped like ``ctx.client``."""
        client = np.asarray(ctx.client)
        b, n = client.shape
        num_envs, num_clients = self.offset_ms.shape
        if n != num_envs:
            raise NetworkError(
                f"{self.name}: block has {n} streams but reset() was called for {num_envs}; "
                "call reset(rng, num_envs, num_clients) first"
            )
        if b and (client.min() < 0 or client.max() >= num_clients):
            raise NetworkError(
                f"{self.name}: client ids must be in [0, {num_clients}), got "
                f"[{client.min()}, {client.max()}]"
            )
        # work stream-major (N, B): each stream's requests are consecutive and time-ordered,
        # which keeps the traces' binary searches cache-friendly
        key = (client.T + (np.arange(n) * num_clients)[:, None]).ravel()
        t = np.asarray(ctx.time_ms, dtype=np.float64).T.ravel()
        payload = np.broadcast_to(np.asarray(ctx.payload_bytes, dtype=np.float64), (b, n))
        response = np.broadcast_to(np.asarray(ctx.response_bytes, dtype=np.float64), (b, n))
        start = self.offset_ms.ravel()[key] + t
        up_ids = self._up_key.ravel()[key]
        up_time = _group_transfer(
            self.uplink_traces, up_ids, start, payload.T.ravel() / self.uplink_scale
        )
        down_ids = up_ids if self.paired else self._down_key.ravel()[key]
        if self.rtt_process is None:
            half = 0.5 * self.rtt_ms
            t_in = half + up_time
            up_rtt = np.full(t.shape, self.rtt_ms)
        else:  # the upload sees the RTT at its start, the download at its own
            up_rtt = self.rtt_process.rtt_ms(key, t)
            t_in = 0.5 * up_rtt + up_time
        t_out = _group_transfer(
            self.downlink_traces,
            down_ids,
            start + t_in + self.download_delay_ms,
            response.T.ravel(),
        )
        if self.rtt_process is None:
            t_out = half + t_out
        else:
            t_out += 0.5 * self.rtt_process.rtt_ms(key, t + t_in + self.download_delay_ms)
        #: The round trip each request's upload saw (at its start), ``(B, N)``.
        self.upload_rtt_ms = np.ascontiguousarray(up_rtt.reshape(n, b).T)
        return (
            np.ascontiguousarray(t_in.reshape(n, b).T),
            np.ascontiguousarray(t_out.reshape(n, b).T),
        )


_DIRECTION_SUFFIX = {"network.uplink": ".up", "network.downlink": ".down"}


def _keep_direction(traces: list[Trace], field: str) -> list[Trace]:
    """From a set holding both ``.up`` and ``.down`` files (a folder of Mahimahi pairs given
    for both directions), the files of ``field``'s direction; a file with neither suffix in
    such a set is refused, since its direction cannot be told."""
    suffixes = {t.path.suffix for t in traces}
    if not {".up", ".down"} <= suffixes:
        return traces
    other = [str(t.path) for t in traces if t.path.suffix not in (".up", ".down")]
    if other:
        folder = traces[0].path.parent
        raise NetworkError(
            f"{field}: the files hold both .up and .down traces, and {len(other)} with neither "
            f"suffix ({', '.join(other)}), so the direction of each is unclear; name them with "
            f"globs, e.g. network.uplink='{folder}/*.up' network.downlink='{folder}/*.down'"
        )
    want = _DIRECTION_SUFFIX[field]
    kept = [t for t in traces if t.path.suffix == want]
    log.info(
        "%s: %d files hold both .up and .down traces; using the %d '*%s' ones",
        field,
        len(traces),
        len(kept),
        want,
    )
    return kept


def _pair_by_stem(up: list[Trace], down: list[Trace]) -> tuple[list[Trace], list[Trace], bool]:
    """Pair uplink and downlink traces by file stem (``X.up`` with ``X.down``) where possible.

    One file on each side: that pair. Several: the stems found on both sides, each a pair
    (files without a partner are left out, with a warning); no stem in common: uplink and
    downlink are drawn independently for each client.
    """
    if len(up) == 1 and len(down) == 1:
        return up, down, True
    down_by_stem: dict[str, Trace] = {}
    for tr in down:
        down_by_stem.setdefault(tr.path.stem, tr)
    pairs = []
    used_down: set[str] = set()
    for tr in up:
        stem = tr.path.stem
        if stem in down_by_stem and stem not in used_down:
            pairs.append((tr, down_by_stem[stem]))
            used_down.add(stem)
    if not pairs:
        log.info(
            "no uplink/downlink file stems in common (%d up, %d down): each client draws its "
            "uplink and downlink traces independently",
            len(up),
            len(down),
        )
        return up, down, False
    paired_paths = {p.path for pair in pairs for p in pair}
    unused = [str(t.path) for t in [*up, *down] if t.path not in paired_paths]
    if unused:
        log.warning(
            "%d trace file(s) have no uplink/downlink partner with the same stem and are not "
            "used: %s",
            len(unused),
            ", ".join(unused),
        )
    return [p[0] for p in pairs], [p[1] for p in pairs], True


class MahimahiNetwork(_TraceNetwork):
    """Upload and download times replayed from Mahimahi packet-delivery traces.

    Each line of a Mahimahi trace is a millisecond at which one 1500-byte packet can be
    delivered (:class:`~modi.envs.traces.MahimahiTrace`). See the module docstring for the
    timing of a request.

    Args:
        uplink: uplink trace(s): a file, a directory, a glob pattern or a list of them.
        downlink: downlink trace(s), same forms.
        rtt_ms: round-trip propagation delay (ms), > 0, its mean if ``rtt_cv`` > 0; half is
            added to each direction (Mahimahi's ``mm-delay``, which the traces do not contain).
        download_delay_ms: assumed gap (ms) between the end of the upload and the start of the
            download (the server's execution time is unknown when the network is sampled), >= 0.
        random_offset: start each client at a uniform random point of its trace (default);
            False starts every client at trace time 0, like ``mm-link``.
        name: label used in logs and results.
        segment: ``[a, b]``, fractions ``0 <= a < b <= 1`` of each trace's period: only that
            part of every trace is used, looped on its own (train/validation/test splits of
            one long trace); None (default): whole traces. Config key ``network.segment``.
        rtt_cv: coefficient of variation of a time-varying RTT (log-normal around the mean
            ``rtt_ms``, :class:`RttProcess`), >= 0; 0 (default): the RTT is ``rtt_ms``.
        rtt_correlation_ms: correlation time (ms) of the time-varying RTT, > 0.

    With several files on each side, uplink and downlink files are paired by stem
    (``ATT-LTE-driving.up`` with ``ATT-LTE-driving.down``) and each client gets one pair (one
    offset, used in both directions, so a pair recorded together stays aligned); with no stem in
    common each client draws its uplink and downlink independently. One folder of ``.up`` and
    ``.down`` files for both (``network.uplink=DIR network.downlink=DIR``) pairs ``X.up`` with
    ``X.down``; if it also holds files with neither suffix it is refused (use the globs
    ``DIR/*.up`` and ``DIR/*.down``).
    """

    def __init__(
        self,
        uplink: TraceSpec,
        downlink: TraceSpec,
        rtt_ms: float,
        download_delay_ms: float = 0.0,
        random_offset: bool = True,
        name: str = "mahimahi",
        segment: Segment | Sequence[float] | None = None,
        rtt_cv: float = 0.0,
        rtt_correlation_ms: float = 8000.0,
    ) -> None:
        with _naming("network.uplink"):
            ups: list[Trace] = list(load_traces(_spec(uplink, "network.uplink"), "mahimahi"))
        with _naming("network.downlink"):
            downs: list[Trace] = list(load_traces(_spec(downlink, "network.downlink"), "mahimahi"))
        ups = _keep_direction(ups, "network.uplink")
        downs = _keep_direction(downs, "network.downlink")
        up, down, paired = _pair_by_stem(ups, downs)
        super().__init__(
            name,
            up,
            down,
            paired,
            rtt_ms,
            download_delay_ms,
            random_offset,
            segment=segment,
            rtt_cv=rtt_cv,
            rtt_correlation_ms=rtt_correlation_ms,
        )
        log.info(
            "%s: %d uplink / %d downlink Mahimahi traces (%s), rtt %.1f ms",
            name,
            len(up),
            len(down),
            "paired" if paired else "independent",
            self.rtt_ms,
        )

    def __repr__(self) -> str:
        return (
            f"MahimahiNetwork(name={self.name!r}, uplink={[t.name for t in self.uplink_traces]}, "
            f"downlink={[t.name for t in self.downlink_traces]}, rtt_ms={self.rtt_ms})"
        )


class ThroughputNetwork(_TraceNetwork):
    """Upload and download times replayed from throughput traces (``time_s  Mbit/s``).

    A throughput trace (Pensieve's Norway HSDPA / FCC, Lumos5G) has one series, measured in the
    downlink. The download uses it as it is; the upload uses the *same* series, at the same
    trace time, scaled by ``uplink_scale`` (1: the uplink is as fast as the downlink). So both
    directions of a client see the same fades, the uplink at a fraction of the rate.

    Args:
        path: the trace(s): a file, a directory, a glob pattern or a list of them. Each client
            gets one trace.
        rtt_ms: round-trip propagation delay (ms), > 0, its mean if ``rtt_cv`` > 0; half is
            added to each direction.
        uplink_scale: uplink throughput as a fraction of the trace's throughput, > 0.
        download_delay_ms: assumed gap (ms) between the end of the upload and the start of the
            download, >= 0 (see :class:`MahimahiNetwork`).
        random_offset: start each client at a uniform random point of its trace (default).
        name: label used in logs and results.
        segment: ``[a, b]``, fractions ``0 <= a < b <= 1`` of each trace's period: only that
            part of every trace is used, looped on its own (train/validation/test splits of
            one long trace); None (default): whole traces. Config key ``network.segment``.
        rtt_cv: coefficient of variation of a time-varying RTT (log-normal around the mean
            ``rtt_ms``, :class:`RttProcess`), >= 0; 0 (default): the RTT is ``rtt_ms``.
        rtt_correlation_ms: correlation time (ms) of the time-varying RTT, > 0.
    """

    def __init__(
        self,
        path: TraceSpec,
        rtt_ms: float,
        uplink_scale: float = 1.0,
        download_delay_ms: float = 0.0,
        random_offset: bool = True,
        name: str = "throughput",
        segment: Segment | Sequence[float] | None = None,
        rtt_cv: float = 0.0,
        rtt_correlation_ms: float = 8000.0,
    ) -> None:
        with _naming("network.path"):
            traces = load_traces(_spec(path, "network.path"), "throughput")
        self.traces = traces
        """The loaded traces (uplink and downlink use the same ones)."""
        super().__init__(
            name,
            traces,
            traces,
            True,
            rtt_ms,
            download_delay_ms,
            random_offset,
            uplink_scale=uplink_scale,
            segment=segment,
            rtt_cv=rtt_cv,
            rtt_correlation_ms=rtt_correlation_ms,
        )
        log.info(
            "%s: %d throughput traces, uplink at %.3g x, rtt %.1f ms (cv %.3g)",
            name,
            len(traces),
            self.uplink_scale,
            self.rtt_ms,
            self.rtt_cv,
        )

    def __repr__(self) -> str:
        return (
            f"ThroughputNetwork(name={self.name!r}, traces={len(self.downlink_traces)}, "
            f"uplink_scale={self.uplink_scale}, rtt_ms={self.rtt_ms}, rtt_cv={self.rtt_cv})"
        )


__all__ = ["MahimahiNetwork", "ThroughputNetwork"]
