"""The server side of a request stream: load spikes and a finite-capacity FIFO queue.

Two pieces, each vectorised over ``N`` independent streams (one server per stream):

- :class:`SpikeProcess`: co-located tenants that slow execution down now and then (ModiPick
  §3.2: "performance interference of co-located tenants"). A two-state continuous-time Markov
  process per stream: *normal* periods last ``Exp(mean_interval_s)``, *spikes* last
  ``Exp(mean_duration_s)``, and every execution that arrives during a spike takes ``factor``
  times longer, ``factor`` fixed or drawn uniformly per spike. It is drawn ahead from its own
  generator and is independent of the policy, so every policy sees the same spikes for the same
  seed (common random numbers).
- :class:`ServerBank`: what each server does with the requests it is given: an optional FIFO
  queue with ``workers`` parallel workers and room for ``capacity`` requests in the system
  (waiting or executing; a request that finds it full is rejected), and what the server can
  *observe*: how many requests are in the system when one arrives, and which executions have
  completed by then (their times feed the profile tracker and the observed-slowdown EWMA). An
  execution is never observed before it completes.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from modi.runtime.features import SLOWDOWN_ALPHA

F64 = NDArray[np.float64]
IntP = NDArray[np.intp]

#: Called with ``(rows, models, exec_ms)`` for executions that have just been observed complete.
CompletionHook = Callable[[IntP, IntP, F64], None]


class ServerConfigError(ValueError):
    """A server argument (spikes, queue) is out of range; the message names it."""


def _positive(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ServerConfigError(f"{name} must be a number > 0, got {value!r}")
    x = float(value)
    if not (math.isfinite(x) and x > 0):
        raise ServerConfigError(f"{name} must be a finite number > 0, got {value!r}")
    return x


@dataclass(frozen=True)
class SpikeConfig:
    """Parameters of the load-spike process (see :class:`SpikeProcess`).

    Attributes:
        mean_interval_s: mean length of a normal period between two spikes (s).
        mean_duration_s: mean length of a spike (s).
        slowdown: ``(low, high)``: each spike multiplies execution times by a factor drawn
            uniformly in it (``low == high``: a fixed factor); ``1 <= low <= high``.
    """

    mean_interval_s: float
    mean_duration_s: float
    slowdown: tuple[float, float]

    #: Keys accepted by :meth:`parse`.
    KEYS = ("mean_interval_s", "mean_duration_s", "slowdown")

    @classmethod
    def parse(cls, spec: Mapping[str, Any] | SpikeConfig | None) -> SpikeConfig | None:
        """A config from ``None`` (no spikes), a mapping with :attr:`KEYS` or a config.

        ``slowdown`` is a number (fixed factor) or two numbers ``[low, high]`` (uniform).
        """
        if spec is None or isinstance(spec, SpikeConfig):
            return spec
        if not isinstance(spec, Mapping):
            raise ServerConfigError(
                f"spikes must be a mapping with keys {list(cls.KEYS)} or None, got {spec!r}"
            )
        unknown = sorted(set(spec) - set(cls.KEYS))
        missing = [k for k in cls.KEYS if k not in spec]
        if unknown or missing:
            raise ServerConfigError(
                f"spikes: unknown keys {unknown}, missing keys {missing}; "
                f"expected exactly {list(cls.KEYS)}"
            )
        interval = _positive(spec["mean_interval_s"], "spikes.mean_interval_s")
        duration = _positive(spec["mean_duration_s"], "spikes.mean_duration_s")
        s = spec["slowdown"]
        if isinstance(s, (list, tuple)) and len(s) == 2:
            lo = _positive(s[0], "spikes.slowdown[0]")
            hi = _positive(s[1], "spikes.slowdown[1]")
        elif isinstance(s, (list, tuple)):
            raise ServerConfigError(
                f"spikes.slowdown must be a number or two numbers [low, high], got {s!r}"
            )
        else:
            lo = hi = _positive(s, "spikes.slowdown")
        if not 1.0 <= lo <= hi:
            raise ServerConfigError(
                f"spikes.slowdown must satisfy 1 <= low <= high (a slowdown), got {s!r}"
            )
        return cls(interval, duration, (lo, hi))

    @property
    def spike_fraction(self) -> float:
        """Long-run fraction of time spent in spikes."""
        return self.mean_duration_s / (self.mean_interval_s + self.mean_duration_s)


class SpikeProcess:
    """Per-stream slowdown factor as a function of time (two-state Markov-modulated).

    Each stream's timeline is a sequence of episodes, alternately normal (factor 1) and spike
    (factor drawn per spike). The process starts in its stationary distribution at time 0 (a
    spike with probability :attr:`SpikeConfig.spike_fraction`; by memorylessness the first
    episode's remaining length has the same law as a whole one). Episodes are generated as
    queries need them: per stream, the episodes up to the one that covers the latest query are
    kept; episodes drawn beyond it are discarded and drawn afresh later (they are independent
    of everything before, so the law is unchanged), and episodes that end before the caller's
    floor are forgotten, so memory stays bounded on streams of any length.

    Args:
        config: the parameters.
        num_envs: number of streams ``N``.
    """

    def __init__(self, config: SpikeConfig, num_envs: int) -> None:
        self.config = config
        self.num_envs = num_envs
        self._int_ms = config.mean_interval_s * 1000.0
        self._dur_ms = config.mean_duration_s * 1000.0
        self._rng = np.random.default_rng()
        # Per row: episode ends (non-decreasing; the last may repeat as padding), factors and
        # states (True: spike).
        self._ends = np.zeros((num_envs, 1))
        self._factor = np.ones((num_envs, 1))
        self._spike = np.zeros((num_envs, 1), dtype=np.bool_)
        self._rows = np.arange(num_envs)

    def reset(self, rng: np.random.Generator) -> None:
        """Start every stream's timeline afresh at time 0, drawing from ``rng``."""
        self._rng = rng
        n = self.num_envs
        spike = rng.random(n) < self.config.spike_fraction
        mean = np.where(spike, self._dur_ms, self._int_ms)
        self._ends = (rng.exponential(1.0, n) * mean)[:, None]
        self._factor = np.where(spike, self._draw_factors(n), 1.0)[:, None]
        self._spike = spike[:, None]

    def _draw_factors(self, size: int | tuple[int, ...]) -> F64:
        lo, hi = self.config.slowdown
        if lo == hi:
            return np.full(size, lo)
        return self._rng.uniform(lo, hi, size)

    def _extend(self, horizon: F64) -> None:
        """Append episodes until every row's timeline reaches ``horizon`` ``(N,)``, then drop
        each row's episodes that start after it."""
        cycle = self._int_ms + self._dur_ms
        while True:
            gap = horizon - self._ends[:, -1]
            if not (gap > 0).any():
                break
            m = int(min(max(4, 2 * math.ceil(float(gap.max()) / cycle) + 2), 4096))
            n = self.num_envs
            # Next states alternate, starting with the opposite of each row's last state.
            flip = (np.arange(m) % 2 == 0)[None, :]
            spike = self._spike[:, -1:] ^ flip
            dur = self._rng.exponential(1.0, (n, m)) * np.where(spike, self._dur_ms, self._int_ms)
            fac = np.where(spike, self._draw_factors((n, m)), 1.0)
            ends = self._ends[:, -1:] + np.cumsum(dur, axis=1)
            self._ends = np.concatenate([self._ends, ends], axis=1)
            self._factor = np.concatenate([self._factor, fac], axis=1)
            self._spike = np.concatenate([self._spike, spike], axis=1)
        last = (self._ends < horizon[:, None]).sum(axis=1)  # the episode covering the horizon
        self._keep(np.zeros(self.num_envs, dtype=np.intp), last)

    def _keep(self, first: IntP, last: IntP) -> None:
        """Keep episodes ``first..last`` of each row (padding by repeating the last)."""
        width = int((last - first).max()) + 1
        cols = np.minimum(first[:, None] + np.arange(width)[None, :], last[:, None])
        self._ends = np.take_along_axis(self._ends, cols, axis=1)
        self._factor = np.take_along_axis(self._factor, cols, axis=1)
        self._spike = np.take_along_axis(self._spike, cols, axis=1)

    def factors_at(self, t_ms: F64, floor_ms: F64) -> F64:
        """Slowdown factor of every stream at times ``t_ms`` ``(B, N)``.

        ``floor_ms`` ``(N,)`` promises that later calls only ask about times ``>= floor_ms``
        (episodes ending before it are dropped). Queries must be ``>=`` the previous floor.
        """
        t = np.asarray(t_ms, dtype=np.float64)
        if t.ndim != 2 or t.shape[1] != self.num_envs:
            raise ValueError(f"t_ms must have shape (B, {self.num_envs}), got {t.shape}")
        self._extend(t.max(axis=0))
        ends = self._ends
        n, e = ends.shape
        # One flat searchsorted over all rows: shift each row into its own disjoint range.
        base = np.minimum(ends[:, 0], t.min(axis=0))
        rel_e = ends - base[:, None]
        rel_t = t - base[None, :]
        span = float(max(rel_e.max(), rel_t.max())) + 1.0
        off = np.arange(n) * span
        keys = (rel_e + off[:, None]).ravel()
        idx = np.searchsorted(keys, (rel_t + off[None, :]).ravel(), side="left")
        idx = idx.reshape(t.shape) - (np.arange(n) * e)[None, :]
        np.clip(idx, 0, e - 1, out=idx)
        out = self._factor[self._rows[None, :], idx]
        # Forget episodes that end at or before the floor (keeping at least the last one).
        floor = np.asarray(floor_ms, dtype=np.float64)
        last = np.full(n, e - 1, dtype=np.intp)
        first = np.minimum((ends <= floor[:, None]).sum(axis=1), last)
        self._keep(first, last)
        return out


class ServerBank:
    """``N`` inference servers, one per stream, stepped together in numpy.

    Requests of a stream reach its server in step order. For each one, :meth:`arrive` is called
    with its arrival time (when the upload finished) and its *admission* time (the arrival
    time, or later if it arrives before a request stepped earlier; see below).
    The server then folds every execution completed by the admission time into what it has
    observed, counts the requests in the system, rejects the request if the system is full,
    and fixes when it will start. :meth:`serve` then runs it with the chosen model.

    Without a queue (``capacity=None``) every request starts on arrival (unlimited parallel
    executions, the papers' setting): ``queue_len`` and ``wait_ms`` stay 0, nothing is dropped.

    With a queue: FIFO in step order with ``workers`` workers and at most ``capacity`` requests
    in the system. A request admitted at time ``t`` starts at ``max(t, earliest free worker)``.
    Admission times must be non-decreasing (the simulator uses ``admit_t = max(arrive_t,
    admit_{t-1})``): a request stepped after one that arrived later is served after it, as if
    it had arrived with it; its wait counts from its own arrival.

    Args:
        num_envs: number of servers ``N``.
        profiled_mu_ms: the profiled mean execution time per model ``(K,)``; observed slowdown
            is realised execution time over this.
        capacity: the queue's capacity (requests in the system), or ``None`` for no queue.
        workers: parallel workers per server (with a queue).
        alpha: EWMA weight of the observed slowdown.
    """

    def __init__(
        self,
        num_envs: int,
        profiled_mu_ms: F64,
        capacity: int | None = None,
        workers: int = 1,
        alpha: float = SLOWDOWN_ALPHA,
    ) -> None:
        if capacity is not None and capacity < workers:
            raise ServerConfigError(
                f"queue_capacity ({capacity}) must be >= workers ({workers}): the capacity "
                "counts executing requests too"
            )
        self.num_envs = num_envs
        self.capacity = capacity
        self.workers = workers
        self.alpha = float(alpha)
        self._inv_mu = 1.0 / np.asarray(profiled_mu_ms, dtype=np.float64)
        self._rows = np.arange(num_envs)
        width = capacity if capacity is not None and capacity <= 64 else 8
        self._width0 = width
        self.reset()

    def reset(self) -> None:
        """Empty every server and forget what it observed."""
        n, w = self.num_envs, self._width0
        self._done = np.full((n, w), np.inf)
        self._model = np.zeros((n, w), dtype=np.intp)
        self._exec = np.zeros((n, w))
        self._count = np.zeros(n, dtype=np.int64)
        self._free = np.full((n, self.workers), -np.inf)
        #: EWMA of realised / profiled execution time over observed completions.
        self.slowdown = np.ones(n)
        #: Requests in the system (waiting or executing) when the current request arrived.
        self.queue_len = np.zeros(n, dtype=np.int64)
        #: Whether the current request is rejected (the system was full).
        self.dropped = np.zeros(n, dtype=np.bool_)
        #: How long the current request waits before it starts (0 without a queue or if dropped).
        self.wait_ms = np.zeros(n)
        self._start = np.zeros(n)
        self._worker = np.zeros(n, dtype=np.intp)

    def forget(self, rows: NDArray[np.bool_]) -> None:
        """Reset the observed slowdown of the given servers (their queues go on)."""
        self.slowdown[rows] = 1.0

    @property
    def in_system(self) -> NDArray[np.int64]:
        """Requests started and not yet observed complete, per server."""
        return self._count.copy()

    def arrive(self, arrive_ms: F64, admit_ms: F64, on_complete: CompletionHook) -> None:
        """The current request of every stream reaches its server (see the class docstring).

        Sets :attr:`queue_len`, :attr:`dropped` and :attr:`wait_ms` for it.
        """
        self._observe_until(admit_ms, on_complete)
        if self.capacity is None:
            self._start = np.asarray(arrive_ms, dtype=np.float64)
            return
        rows = self._rows
        self.queue_len = self._count.copy()
        self.dropped = self._count >= self.capacity
        w = self._free.argmin(axis=1) if self.workers > 1 else np.zeros(self.num_envs, np.intp)
        self._worker = w
        start = np.maximum(admit_ms, self._free[rows, w])
        self._start = start
        self.wait_ms = np.where(self.dropped, 0.0, start - arrive_ms)

    def serve(self, models: IntP, exec_ms: F64) -> None:
        """Run the current requests (those not dropped) with ``models``, taking ``exec_ms``."""
        done = self._start + exec_ms
        if self.capacity is None:
            rows = self._rows
        else:
            rows = np.flatnonzero(~self.dropped)
            if rows.size == 0:
                return
            self._free[rows, self._worker[rows]] = done[rows]
        if self._count[rows].max() >= self._done.shape[1]:
            self._grow()
        slot = np.isinf(self._done[rows]).argmax(axis=1)
        self._done[rows, slot] = done[rows]
        self._model[rows, slot] = models[rows]
        self._exec[rows, slot] = exec_ms[rows]
        self._count[rows] += 1

    def _grow(self) -> None:
        n, w = self._done.shape
        self._done = np.concatenate([self._done, np.full((n, w), np.inf)], axis=1)
        self._model = np.concatenate([self._model, np.zeros((n, w), dtype=np.intp)], axis=1)
        self._exec = np.concatenate([self._exec, np.zeros((n, w))], axis=1)

    def _observe_until(self, t_ms: F64, on_complete: CompletionHook) -> None:
        """Fold completions with ``done <= t_ms`` into the observations, in completion order.

        Each server's completions are taken in order of completion time (ties: in slot order);
        round ``j`` folds the ``j``-th completion of every server that has one.
        """
        done = self._done
        mask = done <= np.asarray(t_ms)[:, None]
        cnt = mask.sum(axis=1)
        kmax = int(cnt.max())
        if kmax == 0:
            return
        if kmax == 1:
            rows = np.flatnonzero(cnt)
            order = mask[rows].argmax(axis=1)[:, None]
        else:
            rows = np.flatnonzero(cnt)
            keyed = np.where(mask[rows], done[rows], np.inf)
            order = np.argsort(keyed, axis=1, kind="stable")[:, :kmax]
        c = cnt[rows]
        a = self.alpha
        for j in range(kmax):
            sel = c > j
            r = rows[sel] if j else rows
            jr = order[sel, j] if j else order[:, 0]
            models = self._model[r, jr]
            ex = self._exec[r, jr]
            on_complete(r, models, ex)
            s = self.slowdown[r]
            self.slowdown[r] = s + a * (ex * self._inv_mu[models] - s)
        done[mask] = np.inf
        self._count -= cnt


class ScalarServer:
    """:class:`ServerBank` for a single stream, in plain Python (the ``gym.make`` fast path).

    Same semantics and the same floating-point arithmetic, so a stream gives identical results
    through either class; state is a heap of pending completions instead of padded arrays.
    The ``on_complete`` hook is called once per completion with plain ``(model, exec_ms)``.
    """

    def __init__(
        self,
        profiled_mu_ms: F64,
        capacity: int | None = None,
        workers: int = 1,
        alpha: float = SLOWDOWN_ALPHA,
    ) -> None:
        if capacity is not None and capacity < workers:
            raise ServerConfigError(
                f"queue_capacity ({capacity}) must be >= workers ({workers}): the capacity "
                "counts executing requests too"
            )
        self.num_envs = 1
        self.capacity = capacity
        self.workers = workers
        self.alpha = float(alpha)
        self._inv_mu = (1.0 / np.asarray(profiled_mu_ms, dtype=np.float64)).tolist()
        self.reset()

    def reset(self) -> None:
        """Empty the server and forget what it observed."""
        self._heap: list[tuple[float, int, int, float]] = []
        self._seq = 0
        self._free = [-math.inf] * self.workers
        self.slowdown = 1.0
        self.queue_len = 0
        self.dropped = False
        self.wait_ms = 0.0
        self._start = 0.0
        self._worker = 0

    def forget(self, rows: NDArray[np.bool_]) -> None:
        """Reset the observed slowdown if ``rows[0]``."""
        if bool(rows[0]):
            self.slowdown = 1.0

    @property
    def in_system(self) -> int:
        """Requests started and not yet observed complete."""
        return len(self._heap)

    def arrive(
        self, arrive_ms: float, admit_ms: float, on_complete: Callable[[int, float], None]
    ) -> None:
        """See :meth:`ServerBank.arrive`."""
        heap = self._heap
        a = self.alpha
        while heap and heap[0][0] <= admit_ms:
            _, _, k, ex = heapq.heappop(heap)
            on_complete(k, ex)
            s = self.slowdown
            self.slowdown = s + a * (ex * self._inv_mu[k] - s)
        if self.capacity is None:
            self._start = arrive_ms
            return
        self.queue_len = len(heap)
        self.dropped = self.queue_len >= self.capacity
        free = self._free
        w = free.index(min(free)) if self.workers > 1 else 0
        self._worker = w
        start = admit_ms if admit_ms >= free[w] else free[w]
        self._start = start
        self.wait_ms = 0.0 if self.dropped else start - arrive_ms

    def serve(self, model: int, exec_ms: float) -> None:
        """Run the current request (unless dropped) with ``model``, taking ``exec_ms``."""
        if self.dropped:
            return
        done = self._start + exec_ms
        if self.capacity is not None:
            self._free[self._worker] = done
        # The sequence number keeps completions at equal times in start order, like argmin.
        heapq.heappush(self._heap, (done, self._seq, model, exec_ms))
        self._seq += 1
