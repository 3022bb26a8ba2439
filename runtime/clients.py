"""Per-client upload-time history: the ``client_net_mean_ms`` / ``client_net_std_ms`` features.

Same arithmetic as the simulator (``ModelSelectionSim._client_history``), so a served request
gets the feature values it would have had in training: a request reports the EWMA mean and
standard deviation of its client's *previous* upload times (weight :data:`CLIENT_NET_ALPHA`);
a client's first request reports its own upload time and 0; then the history folds the new
upload time in::

    d = x - m;  m += alpha * d;  v = (1 - alpha) * (v + alpha * d**2)

Clients live in slots of two numpy arrays (a dict maps ids to slots) so a batch is processed
vectorised: requests of distinct clients in one pass, a client that appears several times in a
batch in order (one pass per repetition). The least recently seen quarter of the slots is
forgotten when ``max_clients`` is reached.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from itertools import repeat

import numpy as np
from numpy.typing import NDArray

from modi.runtime.features import CLIENT_NET_ALPHA

__all__ = ["CLIENT_NET_ALPHA", "ClientNetworkHistory"]


class ClientNetworkHistory:
    """EWMA mean/variance of each client's upload times. Not thread-safe: the selector locks."""

    def __init__(self, alpha: float = CLIENT_NET_ALPHA, max_clients: int = 100_000) -> None:
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        if max_clients < 1:
            raise ValueError(f"max_clients must be >= 1, got {max_clients}")
        self.alpha = float(alpha)
        self.max_clients = int(max_clients)
        self.clear()

    def __len__(self) -> int:
        return len(self._slot)

    def __contains__(self, client: Hashable) -> bool:
        return client in self._slot

    def clear(self) -> None:
        """Forget every client."""
        cap = min(1024, self.max_clients)
        self._slot: dict[Hashable, int] = {}
        self._mean = np.full(cap, np.nan)
        self._var = np.zeros(cap)
        self._seen = np.zeros(cap, dtype=np.int64)
        self._free: list[int] = list(range(cap - 1, -1, -1))
        self._tick = 0

    def peek(self, client: Hashable | None, upload_ms: float) -> tuple[float, float]:
        """The features :meth:`update_one` would report, without recording anything."""
        s = None if client is None else self._slot.get(client)
        if s is None or math.isnan(self._mean[s]):
            return upload_ms, 0.0
        return float(self._mean[s]), math.sqrt(float(self._var[s]))

    # ------------------------------------------------------------------ slots
    def _grow_or_evict(self) -> None:
        cap = self._mean.size
        if cap < self.max_clients:
            new = min(2 * cap, self.max_clients)
        else:
            # Forget the least recently seen quarter (never a client of the current call).
            old = np.flatnonzero(self._seen < self._tick)
            if old.size:
                n = max(1, cap // 4)
                victims = old[np.argsort(self._seen[old], kind="stable")[:n]]
                gone = set(victims.tolist())
                self._slot = {c: s for c, s in self._slot.items() if s not in gone}
                self._mean[victims] = np.nan
                self._var[victims] = 0.0
                self._free.extend(sorted(gone, reverse=True))
                return
            new = 2 * cap  # one batch holds more distinct clients than max_clients
        self._mean = np.concatenate([self._mean, np.full(new - cap, np.nan)])
        self._var = np.concatenate([self._var, np.zeros(new - cap)])
        self._seen = np.concatenate([self._seen, np.zeros(new - cap, dtype=np.int64)])
        self._free.extend(range(new - 1, cap - 1, -1))

    def _slot_of(self, client: Hashable) -> int:
        s = self._slot.get(client)
        if s is None:
            if not self._free:
                self._grow_or_evict()
            s = self._free.pop()
            self._slot[client] = s
        self._seen[s] = self._tick
        return s

    # ------------------------------------------------------------------ updates
    def update_one(self, client: Hashable | None, upload_ms: float) -> tuple[float, float]:
        """Features ``(mean, std)`` for one request, then fold its upload time in."""
        if client is None:
            return upload_ms, 0.0
        self._tick += 1
        s = self._slot_of(client)
        m = float(self._mean[s])
        v = float(self._var[s])
        if m != m:  # NaN: first request of this client
            self._mean[s] = upload_ms
            self._var[s] = 0.0
            return upload_ms, math.sqrt(v)
        a = self.alpha
        d = upload_ms - m
        self._mean[s] = m + a * d
        self._var[s] = (1 - a) * (v + a * d * d)
        return m, math.sqrt(v)

    def update(
        self, clients: Sequence[Hashable | None] | None, upload_ms: NDArray[np.float64]
    ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Features ``(mean, std)`` for a batch of requests in order, folding each in."""
        x = np.asarray(upload_ms, dtype=np.float64)
        mean_out = x.copy()
        var_out = np.zeros_like(x)
        if clients is None or x.size == 0:
            return mean_out, var_out
        self._tick += 1
        tick = self._tick
        get = self._slot.get
        # -1: not seen yet (None is never a key), then -2 for a missing client id.
        slots = np.fromiter(map(get, clients, repeat(-1)), dtype=np.intp, count=len(clients))
        unknown = slots < 0
        if unknown.any():
            self._seen[slots[~unknown]] = tick  # before any eviction below
            for i in np.flatnonzero(unknown).tolist():  # new clients (maybe repeated)
                c = clients[i]
                slots[i] = -2 if c is None else self._slot_of(c)
            rows = np.flatnonzero(slots >= 0)
        else:
            self._seen[slots] = tick
            rows = np.arange(slots.size)
        # A client's first request in the batch in one vectorised pass; its later ones (rare)
        # one by one, in order, on the state the earlier ones left.
        s_rows = slots[rows]
        order = np.argsort(s_rows, kind="stable")
        ss = s_rows[order]
        repeated = ss[1:] == ss[:-1]
        later: list[int] = []
        if repeated.any():
            again = np.sort(order[1:][repeated])  # positions in rows, chronological
            later = rows[again].tolist()
            first = np.ones(rows.size, dtype=np.bool_)
            first[again] = False
            rows = rows[first]
        a = self.alpha
        nm, nv = self._mean, self._var
        s = slots[rows]
        xi = x[rows]
        m = nm[s]
        v = nv[s]
        new = np.isnan(m)
        mean_out[rows] = np.where(new, xi, m)
        var_out[rows] = v
        d = np.where(new, 0.0, xi - m)
        nm[s] = np.where(new, xi, m + a * d)
        nv[s] = np.where(new, 0.0, (1 - a) * (v + a * d * d))
        for i in later:  # the arithmetic of update_one
            k = int(slots[i])
            xk = float(x[i])
            mk = float(nm[k])
            vk = float(nv[k])
            var_out[i] = vk
            if mk != mk:  # NaN (the earlier upload was NaN): start afresh, as the pass above does
                mean_out[i] = xk
                nm[k] = xk
                nv[k] = 0.0
                continue
            mean_out[i] = mk
            dk = xk - mk
            nm[k] = mk + a * dk
            nv[k] = (1 - a) * (vk + a * dk * dk)
        return mean_out, np.sqrt(var_out)
