"""Arrival processes: when each request of a stream is captured (its ``T_start``).

An arrival process hands the simulator the inter-arrival gaps of a block of requests, shape
``(B, N)``: ``B`` consecutive requests of ``N`` independent streams. It is action-independent,
so every policy evaluated with the same seed sees the same arrivals (common random numbers).

- :class:`PoissonArrivals`: exponential gaps at a mean rate (the simulator's default).
- :class:`TraceArrivals`: the gaps between the real timestamps of a request trace (e.g. the
  Azure LLM inference trace in ``shared/data/azure-llm-inference-2023``), optionally rescaled to
  a target mean rate; each stream starts at a random position of the trace and wraps around.

:func:`make_arrivals` turns a config value (``"poisson"``, ``{"trace": PATH, "rate_hz": ...}``,
or a process object) into a process. Bad trace files raise :class:`ArrivalError` naming the
file and line when the process is built, before anything is simulated.
"""

from __future__ import annotations

import csv
import datetime as dt
import functools
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

F64 = NDArray[np.float64]

#: Name of the timestamp column a trace must have (matched case-insensitively).
TIMESTAMP_COLUMN = "TIMESTAMP"


class ArrivalError(ValueError):
    """An arrival process is misconfigured or its trace is unreadable; the message says where."""


@runtime_checkable
class ArrivalProcess(Protocol):
    """Inter-arrival gaps for blocks of requests."""

    name: str

    @property
    def rate_hz(self) -> float:
        """Mean arrival rate per stream (requests per second)."""
        ...

    def reset(self, rng: np.random.Generator, num_envs: int) -> None:
        """Start ``num_envs`` new streams (e.g. pick each stream's starting offset)."""

    def gaps_ms(self, rng: np.random.Generator, block_len: int, num_envs: int) -> F64:
        """The next ``block_len`` inter-arrival gaps of every stream, ``(block_len, num_envs)``."""
        ...


class PoissonArrivals:
    """Poisson arrivals: independent exponential gaps with mean ``1000 / rate_hz`` ms."""

    name = "poisson"

    def __init__(self, rate_hz: float) -> None:
        if not (isinstance(rate_hz, (int, float)) and math.isfinite(rate_hz) and rate_hz > 0):
            raise ArrivalError(f"arrivals.rate_hz must be a finite number > 0, got {rate_hz!r}")
        self._rate_hz = float(rate_hz)

    @property
    def rate_hz(self) -> float:
        """Mean arrival rate per stream."""
        return self._rate_hz

    def reset(self, rng: np.random.Generator, num_envs: int) -> None:
        """Nothing to do: Poisson arrivals have no state."""

    def gaps_ms(self, rng: np.random.Generator, block_len: int, num_envs: int) -> F64:
        """Exponential gaps, drawn from ``rng``."""
        return rng.exponential(1000.0 / self._rate_hz, size=(block_len, num_envs))

    def __repr__(self) -> str:
        return f"PoissonArrivals(rate_hz={self._rate_hz})"


class TraceArrivals:
    """Replays the inter-arrival gaps of a request trace (a CSV with a ``TIMESTAMP`` column).

    Timestamps are either datetimes (``YYYY-MM-DD HH:MM:SS[.fffffff]``, the Azure traces'
    format, without time zone) or numbers of seconds. Rows must be in
    time order (equal timestamps are allowed: simultaneous arrivals). The trace's ``M`` rows give
    ``M - 1`` gaps; a stream that reaches the end wraps around to the start, with one gap of the
    trace's mean between the last and the first request.

    Args:
        path: the CSV file.
        rate_hz: if given, every gap is scaled by ``native_rate / rate_hz`` so the mean rate is
            ``rate_hz`` (burstiness, i.e. the shape of the gap sequence, is kept); if ``None``,
            the trace is replayed at its own rate.
        random_offset: start each stream at a uniformly random position of the trace (drawn
            from the stream generator at reset); if ``False`` every stream starts at the first
            row.
    """

    def __init__(
        self, path: str | Path, rate_hz: float | None = None, random_offset: bool = True
    ) -> None:
        self.path = Path(path).expanduser()
        base = _load_trace_gaps(self.path)
        mean_gap = float(base.mean())
        if mean_gap <= 0:
            raise ArrivalError(
                f"{self.path}: all {base.size + 1} timestamps are equal; a trace needs time to pass"
            )
        #: The trace's own mean arrival rate.
        self.native_rate_hz = 1000.0 / mean_gap
        if rate_hz is not None and not (
            isinstance(rate_hz, (int, float)) and math.isfinite(rate_hz) and rate_hz > 0
        ):
            raise ArrivalError(f"arrivals.rate_hz must be a finite number > 0, got {rate_hz!r}")
        self._rate_hz = self.native_rate_hz if rate_hz is None else float(rate_hz)
        scale = self.native_rate_hz / self._rate_hz
        # The cycle of gaps, with the wrap-around gap (the mean) closing it.
        self.gaps_cycle_ms = np.append(base, mean_gap) * scale
        self.random_offset = bool(random_offset)
        self.name = f"trace:{self.path.name}"
        self._pos = np.zeros(1, dtype=np.int64)

    @property
    def rate_hz(self) -> float:
        """Mean arrival rate per stream after rescaling."""
        return self._rate_hz

    def reset(self, rng: np.random.Generator, num_envs: int) -> None:
        """Pick each stream's starting position in the trace."""
        size = self.gaps_cycle_ms.size
        if self.random_offset:
            self._pos = rng.integers(0, size, size=num_envs)
        else:
            self._pos = np.zeros(num_envs, dtype=np.int64)

    def gaps_ms(self, rng: np.random.Generator, block_len: int, num_envs: int) -> F64:
        """The next gaps of every stream's trace position (no randomness)."""
        if self._pos.size != num_envs:
            raise ArrivalError(
                f"{self.name}: reset for {self._pos.size} streams, asked for {num_envs}"
            )
        size = self.gaps_cycle_ms.size
        idx = (self._pos[None, :] + np.arange(block_len)[:, None]) % size
        self._pos = (self._pos + block_len) % size
        return self.gaps_cycle_ms[idx]

    def __repr__(self) -> str:
        return f"TraceArrivals({str(self.path)!r}, rate_hz={self._rate_hz:.4g})"


def make_arrivals(spec: Any, default_rate_hz: float) -> ArrivalProcess:
    """An arrival process from a config value.

    ``spec`` is one of:

    - ``"poisson"`` (or ``None``): Poisson at ``default_rate_hz``;
    - ``{"poisson": {"rate_hz": R}}`` or ``{"kind": "poisson", "rate_hz": R}``;
    - ``{"trace": PATH, "rate_hz": R | None, "random_offset": bool}``: see
      :class:`TraceArrivals` (``rate_hz`` absent or ``None``: the trace's own rate);
    - an object satisfying :class:`ArrivalProcess`.
    """
    if spec is None or spec == "poisson":
        return PoissonArrivals(default_rate_hz)
    if isinstance(spec, ArrivalProcess):
        return spec
    if isinstance(spec, Mapping):
        d = dict(spec)
        kind = d.pop("kind", None)
        if kind is None and "poisson" in d and len(d) == 1:
            inner = d.pop("poisson") or {}
            if not isinstance(inner, Mapping):
                raise ArrivalError(f"arrivals.poisson must be a mapping, got {inner!r}")
            kind, d = "poisson", dict(inner)
        elif kind is None and "trace" in d:
            kind = "trace"
        if kind == "poisson":
            _no_extra(d, {"rate_hz"})
            return PoissonArrivals(d.get("rate_hz", default_rate_hz))
        if kind == "trace":
            path = d.pop("trace", None) if "trace" in d else d.pop("path", None)
            if not isinstance(path, (str, Path)) or not str(path):
                raise ArrivalError(f"arrivals.trace must be a file path, got {path!r}")
            _no_extra(d, {"rate_hz", "random_offset"})
            return TraceArrivals(
                path, rate_hz=d.get("rate_hz"), random_offset=d.get("random_offset", True)
            )
        raise ArrivalError(
            f"arrivals must be 'poisson', {{'trace': PATH, 'rate_hz': ...}} or "
            f"{{'kind': 'poisson', 'rate_hz': ...}}, got {spec!r}"
        )
    raise ArrivalError(
        f"arrivals must be 'poisson', a mapping like {{'trace': PATH, 'rate_hz': 20}} or an "
        f"ArrivalProcess, got {spec!r}"
    )


def _no_extra(d: dict[str, Any], allowed: set[str]) -> None:
    extra = sorted(set(d) - allowed - {"trace", "path"})
    if extra:
        raise ArrivalError(f"arrivals: unknown keys {extra}; allowed: {sorted(allowed)}")


# --------------------------------------------------------------------------- trace reading


def _load_trace_gaps(path: Path) -> F64:
    """Inter-arrival gaps (ms) of a trace file; cached per (file, size, mtime)."""
    if not path.exists():
        raise ArrivalError(f"{path}: no such arrival trace file")
    if not path.is_file():
        raise ArrivalError(f"{path}: not a regular file; expected a CSV arrival trace")
    st = path.stat()
    gaps = _parse_cached(str(path.resolve()), st.st_size, st.st_mtime_ns)
    return gaps.copy()


@functools.lru_cache(maxsize=8)
def _parse_cached(path_str: str, size: int, mtime_ns: int) -> F64:
    return _parse_trace(Path(path_str))


def _parse_trace(path: Path) -> F64:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ArrivalError(f"{path}: not a UTF-8 text file ({exc.reason})") from exc
    except OSError as exc:
        raise ArrivalError(f"{path}: cannot read arrival trace ({exc.strerror})") from exc
    reader = csv.reader(text.splitlines())
    header = next(reader, None)
    if not header:
        raise ArrivalError(f"{path}: empty file; expected a CSV with a {TIMESTAMP_COLUMN} column")
    names = [h.strip().upper() for h in header]
    if TIMESTAMP_COLUMN not in names:
        raise ArrivalError(f"{path}, line 1: no {TIMESTAMP_COLUMN} column in the header {header!r}")
    col = names.index(TIMESTAMP_COLUMN)
    times: list[float] = []
    first: dt.datetime | None = None
    kind: str | None = None
    prev = -math.inf
    for lineno, row in enumerate(reader, start=2):
        if not row or all(not c.strip() for c in row):
            continue
        if col >= len(row):
            raise ArrivalError(f"{path}, line {lineno}: no {TIMESTAMP_COLUMN} value in {row!r}")
        raw = row[col].strip()
        value, this_kind, first = _parse_timestamp(raw, first)
        if value is None:
            raise ArrivalError(
                f"{path}, line {lineno}: cannot parse timestamp {raw!r}; expected "
                "'YYYY-MM-DD HH:MM:SS[.fff]' or a number of seconds"
            )
        if kind is None:
            kind = this_kind
        elif this_kind != kind:
            raise ArrivalError(
                f"{path}, line {lineno}: timestamp {raw!r} mixes {this_kind} with the {kind} "
                "timestamps of earlier rows"
            )
        if value < prev:
            raise ArrivalError(
                f"{path}, line {lineno}: timestamp {raw!r} is earlier than the previous row's; "
                "rows must be in time order"
            )
        prev = value
        times.append(value)
    if len(times) < 2:
        raise ArrivalError(
            f"{path}: {len(times)} timestamp(s); an arrival trace needs at least 2 rows"
        )
    return np.diff(np.asarray(times)) * 1000.0


def _parse_timestamp(
    raw: str, first: dt.datetime | None
) -> tuple[float | None, str, dt.datetime | None]:
    """``(seconds, kind, first_datetime)``; seconds is ``None`` when ``raw`` is unparsable.

    Datetimes (any number of fractional digits) are measured in seconds from the first
    datetime of the file, without time zones; numbers are taken as seconds.
    """
    try:
        x = float(raw)
    except ValueError:
        pass
    else:
        return (x if math.isfinite(x) else None), "numeric", first
    m = _DATETIME.match(raw)
    if m is None:
        return None, "datetime", first
    try:
        y, mo, day, h, mi, sec = (int(g) for g in m.groups()[:6])
        d = dt.datetime(y, mo, day, h, mi, sec)
    except ValueError:  # e.g. month 13
        return None, "datetime", first
    frac = float("0." + m.group(7)) if m.group(7) else 0.0
    if first is None:
        first = d
    return (d - first).total_seconds() + frac, "datetime", first


_DATETIME = re.compile(r"^(\d{4})-(\d{2})-(\d{2})[ T](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?$")
