"""Network traces: Mahimahi packet-delivery traces and throughput time series.

Two kinds of measured link-capacity traces drive the simulated uplink/downlink:

- :class:`MahimahiTrace`: one integer millisecond timestamp per line, each an opportunity to
  deliver one 1500-byte packet (the format of the Mahimahi ``mm-link`` emulator).
- :class:`ThroughputTrace`: ``time_s  Mbit/s`` samples (Pensieve "cooked" traces, Lumos5G),
  throughput piecewise constant between samples.

Both loop forever and answer one question, vectorised over requests: starting at ``start_ms``,
how many milliseconds does it take to deliver ``nbytes``? Every bad input raises
:class:`TraceError` naming the file (and line) before anything is simulated.
"""

from __future__ import annotations

import glob
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeAlias, overload

import numpy as np
from numpy.typing import ArrayLike, NDArray

log = logging.getLogger(__name__)

F64 = NDArray[np.float64]
I64 = NDArray[np.int64]

MTU_BYTES = 1500
"""Bytes per Mahimahi delivery opportunity (one MTU-sized packet)."""

BYTES_PER_MS_PER_MBPS = 125.0
"""1 Mbit/s = 1e6 bit/s / 8 / 1000 = 125 bytes per millisecond."""

DEFAULT_STEP_S = 1.0
"""Length of the last sample of a throughput trace that has no positive time step."""

TraceKind: TypeAlias = Literal["mahimahi", "throughput"]
TraceSpec: TypeAlias = str | Path | Sequence[str | Path]

_GLOB_CHARS = frozenset("*?[")
_SKIPPED_PREFIXES = ("README", "MANIFEST", ".")
_LINE_PREVIEW = 80


class TraceError(ValueError):
    """A trace file or a request to a trace is invalid; the message names the file."""


# --------------------------------------------------------------------------- reading helpers


def _read_text(path: Path) -> str:
    """Return the file's text, or raise TraceError for missing, unreadable or empty files."""
    if not path.exists():
        raise TraceError(f"{path}: no such trace file")
    if not path.is_file():
        raise TraceError(f"{path}: not a regular file; expected a trace file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise TraceError(f"{path}: not a UTF-8/ASCII text file ({exc.reason})") from exc
    except OSError as exc:
        raise TraceError(f"{path}: cannot read trace file ({exc.strerror})") from exc
    if not text:
        raise TraceError(f"{path}: empty file (0 bytes); expected one sample per line")
    return text


def _n_lines(text: str) -> int:
    """Number of lines as :meth:`str.splitlines` would count them for ``\\n`` line ends."""
    return text.count("\n") + (0 if text.endswith("\n") else 1)


def _preview(line: str) -> str:
    """A line shortened for an error message."""
    line = line.strip()
    return line if len(line) <= _LINE_PREVIEW else line[:_LINE_PREVIEW] + "..."


def _where(lines: I64 | None, index: int) -> str:
    """'line N' for entry ``index`` (line numbers known) or 'entry N' (arrays given directly)."""
    if lines is None:
        return f"entry {index}"
    return f"line {int(lines[index])}"


def _parse_mahimahi(path: Path, text: str) -> tuple[I64, I64]:
    """Parse one integer per line; return values and their 1-based line numbers."""
    tokens = text.split()
    if len(tokens) == _n_lines(text):  # fast path: one token on every line, no blank lines
        try:
            values = np.array(tokens, dtype=np.int64)
        except (ValueError, OverflowError):
            pass  # the slow pass below finds and reports the offending line
        else:
            return values, np.arange(1, len(values) + 1, dtype=np.int64)
    out: list[int] = []
    lines: list[int] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue  # blank lines are ignored
        if len(parts) != 1:
            raise TraceError(
                f"{path}: line {lineno}: expected one integer millisecond timestamp, "
                f"got {_preview(line)!r}"
            )
        try:
            value = int(parts[0])
        except ValueError:
            raise TraceError(
                f"{path}: line {lineno}: expected an integer millisecond timestamp, "
                f"got {_preview(line)!r}"
            ) from None
        if not -(2**62) < value < 2**62:
            raise TraceError(f"{path}: line {lineno}: timestamp {value} ms is out of range")
        out.append(value)
        lines.append(lineno)
    return np.array(out, dtype=np.int64), np.array(lines, dtype=np.int64)


def _parse_throughput(path: Path, text: str) -> tuple[F64, F64, I64]:
    """Parse ``time_s  Mbit/s`` lines; return times, rates and their 1-based line numbers."""
    rows = [line.split() for line in text.splitlines()]
    try:  # fast path: exactly two numeric tokens on every line, no blank lines
        table = np.array(rows, dtype=np.float64)
    except ValueError:
        pass  # ragged (blank or malformed lines) or non-numeric: slow pass reports it
    else:
        if table.ndim == 2 and table.shape[1] == 2:
            lines = np.arange(1, table.shape[0] + 1, dtype=np.int64)
            return table[:, 0].copy(), table[:, 1].copy(), lines
    times: list[float] = []
    rates: list[float] = []
    linenos: list[int] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue  # blank lines are ignored
        if len(parts) != 2:
            raise TraceError(
                f"{path}: line {lineno}: expected two numbers 'time_s throughput_Mbit/s', "
                f"got {_preview(line)!r}"
            )
        try:
            t, r = float(parts[0]), float(parts[1])
        except ValueError:
            raise TraceError(
                f"{path}: line {lineno}: expected two numbers 'time_s throughput_Mbit/s', "
                f"got {_preview(line)!r}"
            ) from None
        times.append(t)
        rates.append(r)
        linenos.append(lineno)
    return (
        np.array(times, dtype=np.float64),
        np.array(rates, dtype=np.float64),
        np.array(linenos, dtype=np.int64),
    )


def _check_mahimahi(path: Path, opp: I64, lines: I64 | None) -> None:
    """Raise TraceError unless ``opp`` is a non-empty, non-negative, non-decreasing 1-D array."""
    if opp.ndim != 1 or opp.size == 0:
        raise TraceError(
            f"{path}: Mahimahi trace has zero delivery opportunities; "
            "expected one integer millisecond timestamp per line"
        )
    neg = np.flatnonzero(opp < 0)
    if neg.size:
        i = int(neg[0])
        raise TraceError(
            f"{path}: {_where(lines, i)}: negative timestamp {int(opp[i])} ms; "
            "expected non-negative integer milliseconds"
        )
    dec = np.flatnonzero(np.diff(opp) < 0)
    if dec.size:
        i = int(dec[0]) + 1
        raise TraceError(
            f"{path}: {_where(lines, i)}: timestamp {int(opp[i])} ms is smaller than the "
            f"previous one ({int(opp[i - 1])} ms); Mahimahi timestamps must be non-decreasing"
        )


def _check_throughput(path: Path, times: F64, mbps: F64, lines: I64 | None) -> None:
    """Raise TraceError unless the samples are finite, time-ordered and non-negative."""
    if times.ndim != 1 or times.shape != mbps.shape:
        raise TraceError(f"{path}: times and throughputs must be 1-D arrays of the same length")
    if times.size == 0:
        raise TraceError(
            f"{path}: throughput trace has no samples; expected lines 'time_s throughput_Mbit/s'"
        )
    bad = np.flatnonzero(~(np.isfinite(times) & np.isfinite(mbps)))
    if bad.size:
        i = int(bad[0])
        raise TraceError(
            f"{path}: {_where(lines, i)}: non-finite value (time {times[i]!r} s, "
            f"throughput {mbps[i]!r} Mbit/s); expected finite numbers"
        )
    neg_t = np.flatnonzero(times < 0)
    if neg_t.size:
        i = int(neg_t[0])
        raise TraceError(
            f"{path}: {_where(lines, i)}: negative timestamp {times[i]!r} s; "
            "expected non-negative seconds"
        )
    dec = np.flatnonzero(np.diff(times) < 0)
    if dec.size:
        i = int(dec[0]) + 1
        raise TraceError(
            f"{path}: {_where(lines, i)}: timestamp {times[i]!r} s is smaller than the previous "
            f"one ({times[i - 1]!r} s); expected non-decreasing timestamps"
        )
    neg = np.flatnonzero(mbps < 0)
    if neg.size:
        i = int(neg[0])
        raise TraceError(
            f"{path}: {_where(lines, i)}: negative throughput {mbps[i]!r} Mbit/s; "
            "expected throughput >= 0"
        )
    if not np.any(mbps > 0):
        raise TraceError(
            f"{path}: throughput is zero for the whole trace ({times.size} samples); "
            "expected some positive throughput"
        )


def _request_arrays(path: Path, start_ms: ArrayLike, nbytes: ArrayLike) -> tuple[F64, F64]:
    """Broadcast and check a batch of (start, size) requests."""
    start = np.asarray(start_ms, dtype=np.float64)
    size = np.asarray(nbytes, dtype=np.float64)
    try:
        start, size = np.broadcast_arrays(start, size)
    except ValueError as exc:
        raise TraceError(
            f"{path}: start_ms shape {start.shape} and nbytes shape {size.shape} do not broadcast"
        ) from exc
    if not np.all(np.isfinite(start)) or np.any(start < 0):
        raise TraceError(f"{path}: start_ms must be finite and >= 0 (trace time starts at 0)")
    if not np.all(np.isfinite(size)) or np.any(size < 0):
        raise TraceError(f"{path}: nbytes must be finite and >= 0")
    return start, size


def _frozen(a: NDArray[np.generic]) -> NDArray[np.generic]:
    """A read-only copy of ``a``."""
    out = np.array(a, copy=True)
    out.setflags(write=False)
    return out


# --------------------------------------------------------------------------- Mahimahi


@dataclass(frozen=True, eq=False)
class MahimahiTrace:
    """A Mahimahi packet-delivery trace that loops forever.

    Each entry of ``opportunities_ms`` is a moment at which one 1500-byte packet may be
    delivered; repeated timestamps are several packets in the same millisecond. As in
    Mahimahi's ``mm-link``, the trace starts at time 0 and repeats with period = the last
    timestamp: in loop ``k >= 0`` the opportunities are at ``k * period_ms + opportunities_ms``
    (so a timestamp 0 coincides with the previous loop's last timestamp and both are usable).
    ``mm-link`` rejects a trace whose timestamps are all 0; here its period is 1 ms instead (a
    fixed rate of ``len(opportunities_ms)`` packets per ms), with a warning.
    """

    path: Path
    opportunities_ms: I64
    loop_ms: int | None = None
    """Loop length (ms) when it is not the last timestamp (a :meth:`segment`); must be >= it."""
    period_ms: int = field(init=False)

    def __post_init__(self) -> None:
        path = Path(self.path)
        opp = np.asarray(self.opportunities_ms)
        if opp.ndim == 1 and opp.size and not np.issubdtype(opp.dtype, np.integer):
            raise TraceError(f"{path}: opportunities_ms must be integers (milliseconds)")
        opp = opp.astype(np.int64)
        _check_mahimahi(path, opp, None)
        last = int(opp[-1])
        if self.loop_ms is not None:
            if int(self.loop_ms) != self.loop_ms or self.loop_ms < max(last, 1):
                raise TraceError(
                    f"{path}: loop_ms must be an integer >= the last timestamp ({last} ms) and "
                    f">= 1, got {self.loop_ms!r}"
                )
            object.__setattr__(self, "path", path)
            object.__setattr__(self, "opportunities_ms", _frozen(opp))
            object.__setattr__(self, "period_ms", int(self.loop_ms))
            return
        if last == 0:
            log.warning(
                "%s: all %d timestamps are 0 (mm-link rejects this); looping it with a 1 ms "
                "period, i.e. a fixed %d packets per ms",
                path,
                opp.size,
                opp.size,
            )
        object.__setattr__(self, "path", path)
        object.__setattr__(self, "opportunities_ms", _frozen(opp))
        object.__setattr__(self, "period_ms", max(last, 1))

    @classmethod
    def load(cls, path: str | Path) -> MahimahiTrace:
        """Read and validate a Mahimahi trace file."""
        p = Path(path).expanduser()
        text = _read_text(p)
        values, lines = _parse_mahimahi(p, text)
        _check_mahimahi(p, values, lines)
        trace = cls(p, values)
        log.debug(
            "loaded Mahimahi trace %s: %d opportunities, period %d ms, %.3f Mbit/s",
            p,
            values.size,
            trace.period_ms,
            trace.mean_throughput_mbps,
        )
        return trace

    @property
    def name(self) -> str:
        """The file name."""
        return self.path.name

    @property
    def mean_throughput_mbps(self) -> float:
        """Mean capacity over one period: opportunities x 1500 B x 8 / period, in Mbit/s."""
        return self.opportunities_ms.size * MTU_BYTES * 8 / self.period_ms / 1000.0

    def transfer_time_ms(self, start_ms: ArrayLike, nbytes: ArrayLike) -> F64:
        """Milliseconds from ``start_ms`` until ``nbytes`` have been delivered (vectorised).

        The payload needs ``max(1, ceil(nbytes / 1500))`` packets; they use consecutive
        opportunities from the first one at time >= ``start_ms`` (looping the trace as often
        as needed); the transfer completes at the last packet's opportunity. ``start_ms`` must
        be >= 0; the link is assumed idle (no queue from earlier requests).
        """
        start, size = _request_arrays(self.path, start_ms, nbytes)
        opp = self.opportunities_ms
        n = opp.size
        period = self.period_ms
        loop = np.floor(start / period)
        # opportunities are integers: the first one at time >= phase is the first >= ceil(phase)
        phase = np.ceil(start - loop * period).astype(np.int64)
        # global index of the first usable opportunity = opportunities before `start`
        first = np.searchsorted(opp, phase, side="left")  # == n: first one of the next loop
        # at phase 0 of loop k >= 1, loop k-1's opportunities at exactly `period` are usable
        at_period = n - int(np.searchsorted(opp, period, side="left"))
        first = first - np.where((phase == 0) & (loop >= 1), at_period, 0)
        packets = np.maximum(np.ceil(size / MTU_BYTES), 1.0).astype(np.int64)
        last = loop.astype(np.int64) * n + first + packets - 1  # global opportunity index
        q, r = np.divmod(last, n)
        done = q * period + opp[r]
        return np.maximum(done.astype(np.float64) - start, 0.0)

    def cumulative_bytes(self, time_ms: ArrayLike) -> F64:
        """Bytes the looped trace can deliver up to ``time_ms`` (inclusive), counted from the
        start of loop 0 (any real time; negative times count back through earlier loops), so
        ``cumulative_bytes(t1) - cumulative_bytes(t0)`` is the capacity of ``(t0, t1]``."""
        t = np.asarray(time_ms, dtype=np.float64)
        opp = self.opportunities_ms
        period = self.period_ms
        loop = np.floor(t / period)
        phase = t - loop * period
        count = loop * opp.size + np.searchsorted(opp, phase, side="right")
        return np.asarray(count * float(MTU_BYTES), dtype=np.float64)

    def segment(self, start_ms: float, end_ms: float) -> MahimahiTrace:
        """The part of one loop between ``start_ms`` and ``end_ms`` as a trace of its own, which
        loops over that part only (period ``end - start``).

        Both ends are rounded to whole milliseconds (the trace's resolution). The segment holds
        the opportunities at times in ``(start, end]`` of one loop (Mahimahi's convention: an
        opportunity at the loop end is the loop's last; one at 0 counts as the previous loop's
        end), so adjacent segments share none. Raises :class:`TraceError` for bounds outside
        ``[0, period_ms]``, an empty range, or a range without any opportunity.
        """
        s0, s1 = round(float(start_ms)), round(float(end_ms))
        if not 0 <= s0 < s1 <= self.period_ms:
            raise TraceError(
                f"{self.path}: segment [{start_ms}, {end_ms}) ms (rounded to [{s0}, {s1})) must "
                f"lie within one loop [0, {self.period_ms}] ms and be non-empty"
            )
        opp = np.sort(np.where(self.opportunities_ms == 0, self.period_ms, self.opportunities_ms))
        inside = opp[(opp > s0) & (opp <= s1)] - s0
        if inside.size == 0:
            raise TraceError(
                f"{self.path}: segment [{s0}, {s1}) ms holds no delivery opportunity; "
                "expected a range in which the trace delivers something"
            )
        return MahimahiTrace(self.path, inside, loop_ms=s1 - s0)


# --------------------------------------------------------------------------- throughput


@dataclass(frozen=True, eq=False)
class ThroughputTrace:
    """A throughput time series (``time_s  Mbit/s``) that loops forever.

    Throughput is piecewise constant: sample ``i`` holds from ``times_s[i]`` to
    ``times_s[i + 1]``; the last sample lasts one median positive time step (``step_s``,
    :data:`DEFAULT_STEP_S` for a single-sample trace). Trace time 0 is the first sample (a
    file starting at 1.0 s or later is shifted), and the trace repeats with period
    ``period_s = times_s[-1] - times_s[0] + step_s``. Repeated timestamps are allowed; the
    earlier sample then lasts zero seconds and carries no weight.
    """

    path: Path
    times_s: F64
    mbps: F64
    step_s: float = field(init=False)
    period_s: float = field(init=False)
    _bounds_ms: F64 = field(init=False, repr=False)
    _cum_bytes: F64 = field(init=False, repr=False)
    _rate: F64 = field(init=False, repr=False)

    def __post_init__(self) -> None:
        path = Path(self.path)
        times = np.asarray(self.times_s, dtype=np.float64)
        mbps = np.asarray(self.mbps, dtype=np.float64)
        _check_throughput(path, times, mbps, None)
        dt = np.diff(times)
        positive = dt[dt > 0]
        step = float(np.median(positive)) if positive.size else DEFAULT_STEP_S
        bounds = np.append(times - times[0], times[-1] - times[0] + step) * 1000.0
        rate = mbps * BYTES_PER_MS_PER_MBPS
        cum = np.concatenate(([0.0], np.cumsum(rate * np.diff(bounds))))
        if not cum[-1] > 0:
            raise TraceError(
                f"{path}: throughput is zero over the whole trace length "
                "(positive samples only at repeated timestamps); expected some positive "
                "throughput"
            )
        n_dup = int(np.count_nonzero(dt == 0))
        if n_dup:
            log.info("%s: %d repeated timestamps; those samples last 0 s", path, n_dup)
        object.__setattr__(self, "path", path)
        object.__setattr__(self, "times_s", _frozen(times))
        object.__setattr__(self, "mbps", _frozen(mbps))
        object.__setattr__(self, "step_s", step)
        object.__setattr__(self, "period_s", float(bounds[-1] / 1000.0))
        object.__setattr__(self, "_bounds_ms", _frozen(bounds))
        object.__setattr__(self, "_cum_bytes", _frozen(cum))
        object.__setattr__(self, "_rate", _frozen(rate))

    @classmethod
    def load(cls, path: str | Path) -> ThroughputTrace:
        """Read and validate a ``time_s  Mbit/s`` throughput trace file."""
        p = Path(path).expanduser()
        text = _read_text(p)
        times, mbps, lines = _parse_throughput(p, text)
        _check_throughput(p, times, mbps, lines)
        trace = cls(p, times, mbps)
        log.debug(
            "loaded throughput trace %s: %d samples, period %.1f s, %.3f Mbit/s",
            p,
            times.size,
            trace.period_s,
            trace.mean_throughput_mbps,
        )
        return trace

    @property
    def name(self) -> str:
        """The file name."""
        return self.path.name

    @property
    def period_ms(self) -> float:
        """Loop period in milliseconds."""
        return float(self._bounds_ms[-1])

    @property
    def mean_throughput_mbps(self) -> float:
        """Time-weighted mean throughput over one period, in Mbit/s."""
        return float(self._cum_bytes[-1] / self._bounds_ms[-1] / BYTES_PER_MS_PER_MBPS)

    @property
    def sample_mean_mbps(self) -> float:
        """Unweighted mean of the samples (how the datasets' READMEs summarise a file)."""
        return float(np.mean(self.mbps))

    def transfer_time_ms(self, start_ms: ArrayLike, nbytes: ArrayLike) -> F64:
        """Milliseconds from ``start_ms`` until ``nbytes`` have been delivered (vectorised).

        Integrates the piecewise-constant throughput exactly from ``start_ms`` (>= 0), looping
        the trace as often as needed; a zero payload takes 0 ms. Completion is the earliest
        moment the delivered bytes reach ``nbytes``.
        """
        start, size = _request_arrays(self.path, start_ms, nbytes)
        bounds, cum, rate = self._bounds_ms, self._cum_bytes, self._rate
        n = rate.size
        period = bounds[-1]
        per_loop = cum[-1]
        loop = np.floor(start / period)
        phase = np.clip(start - loop * period, 0.0, period)
        # bytes delivered from the start of the loop until `phase`
        seg = np.clip(np.searchsorted(bounds, phase, side="right") - 1, 0, n - 1)
        before = cum[seg] + rate[seg] * (phase - bounds[seg])
        # find loop m >= 0 and rest in (0, per_loop] with before + size = m * per_loop + rest
        target = before + size
        m = np.maximum(np.ceil(target / per_loop) - 1.0, 0.0)
        rest = target - m * per_loop
        over = rest > per_loop
        m = np.where(over, m + 1.0, m)
        rest = np.where(over, rest - per_loop, rest)
        under = (rest <= 0) & (m > 0)
        m = np.where(under, m - 1.0, m)
        rest = np.where(under, rest + per_loop, rest)
        # segment j with cum[j] < rest <= cum[j + 1]: it has positive rate and length
        j_left = np.searchsorted(cum, rest, side="left")
        # a payload too small to change `before` in float64 completes when bytes next flow:
        # the segment j with cum[j] <= before < cum[j + 1] (after looping if at the loop end)
        absorbed = target <= before
        m_abs = np.floor(before / per_loop)
        rest_abs = before - m_abs * per_loop
        j_right = np.searchsorted(cum, rest_abs, side="right")
        m = np.where(absorbed, m_abs, m)
        rest = np.where(absorbed, rest_abs, rest)
        j = np.clip(np.where(absorbed, j_right, j_left), 1, n) - 1
        r = rate[j]
        into = np.divide(rest - cum[j], r, out=np.zeros_like(rest), where=r > 0)
        t_done = np.clip(bounds[j] + into, bounds[j], bounds[j + 1])
        out = m * period + (t_done - phase)
        return np.where(size > 0, np.maximum(out, 0.0), 0.0)

    def cumulative_bytes(self, time_ms: ArrayLike) -> F64:
        """Bytes delivered from the start of loop 0 until ``time_ms`` (any real time; negative
        times count back through earlier loops), so ``cumulative_bytes(t1) -
        cumulative_bytes(t0)`` is what the trace delivers between ``t0`` and ``t1``."""
        t = np.asarray(time_ms, dtype=np.float64)
        bounds, cum, rate = self._bounds_ms, self._cum_bytes, self._rate
        period = bounds[-1]
        loop = np.floor(t / period)
        phase = np.clip(t - loop * period, 0.0, period)
        seg = np.clip(np.searchsorted(bounds, phase, side="right") - 1, 0, rate.size - 1)
        within = cum[seg] + rate[seg] * (phase - bounds[seg])
        return np.asarray(loop * cum[-1] + within, dtype=np.float64)

    def segment(self, start_ms: float, end_ms: float) -> ThroughputTrace:
        """The part of one loop between ``start_ms`` and ``end_ms`` as a trace of its own: its
        time 0 is ``start_ms`` and it loops over that part only (period ``end - start``).

        Raises :class:`TraceError` for bounds outside ``[0, period_ms]``, an empty range, or a
        range in which the throughput is zero throughout.
        """
        s0, s1 = float(start_ms), float(end_ms)
        bounds = self._bounds_ms
        if not (np.isfinite(s0) and np.isfinite(s1) and 0.0 <= s0 < s1 <= bounds[-1]):
            raise TraceError(
                f"{self.path}: segment [{start_ms}, {end_ms}) ms must lie within one loop "
                f"[0, {bounds[-1]}] ms and be non-empty"
            )
        lo = np.clip(bounds[:-1], s0, s1)
        hi = np.clip(bounds[1:], s0, s1)
        keep = hi > lo
        new_bounds = np.append(lo[keep], hi[keep][-1]) - s0
        mbps = self.mbps[keep]
        if not np.any(mbps * np.diff(new_bounds) > 0):
            raise TraceError(
                f"{self.path}: throughput is zero throughout the segment [{s0}, {s1}) ms; "
                "expected a range in which the trace delivers something"
            )
        return ThroughputTrace._from_bounds(self.path, new_bounds, mbps)

    @classmethod
    def _from_bounds(cls, path: Path, bounds_ms: F64, mbps: F64) -> ThroughputTrace:
        """A trace with the given sample boundaries (ms, from 0, one more than ``mbps``)."""
        trace = object.__new__(cls)
        rate = mbps * BYTES_PER_MS_PER_MBPS
        cum = np.concatenate(([0.0], np.cumsum(rate * np.diff(bounds_ms))))
        object.__setattr__(trace, "path", path)
        object.__setattr__(trace, "times_s", _frozen(bounds_ms[:-1] / 1000.0))
        object.__setattr__(trace, "mbps", _frozen(mbps))
        object.__setattr__(trace, "step_s", float(bounds_ms[-1] - bounds_ms[-2]) / 1000.0)
        object.__setattr__(trace, "period_s", float(bounds_ms[-1] / 1000.0))
        object.__setattr__(trace, "_bounds_ms", _frozen(bounds_ms))
        object.__setattr__(trace, "_cum_bytes", _frozen(cum))
        object.__setattr__(trace, "_rate", _frozen(rate))
        return trace


# --------------------------------------------------------------------------- loading sets

Trace: TypeAlias = MahimahiTrace | ThroughputTrace


def _skipped(name: str) -> bool:
    """Whether a directory/glob entry is documentation or hidden rather than a trace."""
    return name.startswith(_SKIPPED_PREFIXES)


def _resolve_one(spec: str | Path) -> list[Path]:
    """Files named by one spec: a file, a directory or a glob pattern."""
    p = Path(spec).expanduser()
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.is_file() and not _skipped(f.name))
        if not files:
            raise TraceError(f"{p}: directory contains no trace files")
        return files
    if p.exists():
        return [p]
    text = str(spec)
    if _GLOB_CHARS.intersection(text):
        pattern = str(Path(text).expanduser())
        matches = sorted(
            Path(m) for m in glob.glob(pattern, recursive=True) if not _skipped(Path(m).name)
        )
        files = [f for f in matches if f.is_file()]
        if not files:
            raise TraceError(f"no trace files match the pattern {text!r}")
        return files
    raise TraceError(f"{p}: no such trace file or directory")


def resolve_trace_paths(spec: TraceSpec) -> list[Path]:
    """Expand a file, directory, glob pattern or a sequence of them into trace file paths.

    A directory gives its regular files, sorted, skipping ``README*``, ``MANIFEST*`` and
    hidden files (as does a glob pattern); a file named explicitly is always kept.
    """
    if isinstance(spec, (str, Path)):
        return _resolve_one(spec)
    if not spec:
        raise TraceError("empty sequence of trace files; expected at least one path or pattern")
    out: list[Path] = []
    for item in spec:
        out.extend(_resolve_one(item))
    return out


@overload
def load_traces(spec: TraceSpec, kind: Literal["mahimahi"]) -> list[MahimahiTrace]: ...


@overload
def load_traces(spec: TraceSpec, kind: Literal["throughput"]) -> list[ThroughputTrace]: ...


def load_traces(spec: TraceSpec, kind: TraceKind) -> list[MahimahiTrace] | list[ThroughputTrace]:
    """Load every trace named by ``spec`` (see :func:`resolve_trace_paths`)."""
    if kind not in ("mahimahi", "throughput"):
        raise TraceError(f"unknown trace kind {kind!r}; expected 'mahimahi' or 'throughput'")
    paths = resolve_trace_paths(spec)
    if kind == "mahimahi":
        mm = [MahimahiTrace.load(p) for p in paths]
        log.info("loaded %d Mahimahi traces from %s", len(mm), spec)
        return mm
    tp = [ThroughputTrace.load(p) for p in paths]
    log.info("loaded %d throughput traces from %s", len(tp), spec)
    return tp
