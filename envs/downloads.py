"""What a client knows about its own past downloads when it sends a request.

A phone measures how long each response took to download and sends the smoothed history
with its next request (``client_dl_ms``/``client_dlvar_ms``, :func:`modi.runtime.features.
client_dl_update`'s estimators, and ``client_dl_mismatch``, :func:`modi.runtime.features.
client_mismatch_update`: each download against the upload time of the same request).
:class:`ClientDownloads` simulates that per (stream, client) without future information
(DESIGN.md §1): a request sent (captured) at ``t`` carries the downloads of the client's
earlier responses that had *certainly* arrived by ``t``.

"Certainly": when a response arrives depends on the model the policy chooses, but the stream
is drawn ahead of the policy (common random numbers). So a response counts as known at an
upper bound of its arrival that holds whichever model runs: capture + upload + the slowest
model's execution for that request's noise (× its load-spike factor) + the longest queue wait
possible (capacity − 1 runs of the slowest execution seen so far) + its download. The client
may know its download earlier in reality; here it learns it no earlier than it surely could
(conservative, never clairvoyant). A client's downloads are folded in the order they become
known, ties after a read at the same instant.

The recurrences are linear given the mean, so each client's sequence is one
:func:`scipy.signal.lfilter` call (scipy: the well-kept implementation of a linear recurrence,
~50x a Python loop).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from scipy.signal import lfilter

from modi.runtime.features import CLIENT_DL_GAIN, CLIENT_DLVAR_GAIN, CLIENT_MISMATCH_GAIN
from modi.runtime.features import mismatch as pair_mismatch

F64 = NDArray[np.float64]

_B_M = np.array([CLIENT_DL_GAIN])
_A_M = np.array([1.0, -(1.0 - CLIENT_DL_GAIN)])
_B_V = np.array([CLIENT_DLVAR_GAIN])
_A_V = np.array([1.0, -(1.0 - CLIENT_DLVAR_GAIN)])
_B_X = np.array([CLIENT_MISMATCH_GAIN])
_A_X = np.array([1.0, -(1.0 - CLIENT_MISMATCH_GAIN)])


def fold(dl: float, dlvar: float, downloads: F64) -> tuple[F64, F64]:
    """The client's ``(client_dl_ms, client_dlvar_ms)`` after each of ``downloads`` in turn,
    starting from ``(dl, dlvar)`` (NaN: no download yet). Same recurrences as
    :func:`modi.runtime.features.client_dl_update` (equal up to rounding; a test checks)."""
    d = np.asarray(downloads, dtype=np.float64)
    n = d.size
    m = np.empty(n)
    v = np.empty(n)
    if n == 0:
        return m, v
    start = 0
    if np.isnan(dl):
        dl, dlvar = float(d[0]), 0.5 * float(d[0])
        m[0], v[0] = dl, dlvar
        start = 1
    if start < n:
        rest = d[start:]
        m[start:], _ = lfilter(_B_M, _A_M, rest, zi=[(1.0 - CLIENT_DL_GAIN) * dl])
        prev = np.empty(rest.size)
        prev[0] = dl
        prev[1:] = m[start : n - 1]
        dev = np.abs(prev - rest)
        v[start:], _ = lfilter(_B_V, _A_V, dev, zi=[(1.0 - CLIENT_DLVAR_GAIN) * dlvar])
    return m, v


def fold_mismatch(start: float, values: F64) -> F64:
    """The client's ``client_dl_mismatch`` after each of ``values`` (``|ln(download /
    upload)|`` per answer) in turn, starting from ``start`` (NaN: none yet). Same recurrence as
    :func:`modi.runtime.features.client_mismatch_update` (equal up to rounding; a test checks)."""
    x = np.asarray(values, dtype=np.float64)
    out = np.empty(x.size)
    if x.size == 0:
        return out
    i = 0
    if np.isnan(start):
        start = float(x[0])
        out[0] = start
        i = 1
    if i < x.size:
        out[i:], _ = lfilter(_B_X, _A_X, x[i:], zi=[(1.0 - CLIENT_MISMATCH_GAIN) * start])
    return out


class ClientDownloads:
    """Per (stream, client) download history, computed one block of requests at a time.

    Args:
        num_envs: streams.
        num_clients: clients per stream.
    """

    def __init__(self, num_envs: int, num_clients: int) -> None:
        self.num_envs = num_envs
        self.num_clients = num_clients
        self.dl = np.full((num_envs, num_clients), np.nan)
        self.dlvar = np.full((num_envs, num_clients), np.nan)
        self.mismatch = np.full((num_envs, num_clients), np.nan)
        # responses not yet surely arrived at the end of the last block:
        # (known_ms, download, |ln(download / upload)|)
        self._carry: list[list[tuple[F64, F64, F64]]] = [
            [(np.empty(0), np.empty(0), np.empty(0)) for _ in range(num_clients)]
            for _ in range(num_envs)
        ]

    def reset(self) -> None:
        """Forget every client's history and every response in flight."""
        self.dl[:] = np.nan
        self.dlvar[:] = np.nan
        self.mismatch[:] = np.nan
        for row in self._carry:
            for c in range(self.num_clients):
                row[c] = (np.empty(0), np.empty(0), np.empty(0))

    def block(
        self,
        send_ms: F64,
        client: NDArray[np.integer],
        known_ms: F64,
        download_ms: F64,
        horizon_ms: F64,
        upload_ms: F64 | None = None,
    ) -> tuple[F64, F64, F64]:
        """The history each request of a block carries, ``(client_dl_ms, client_dlvar_ms,
        client_dl_mismatch)`` shaped ``(B, N)`` like the inputs.

        ``send_ms``: when each request is sent (captured); ``known_ms``: when its response has
        surely arrived; ``download_ms``: its download; ``horizon_ms`` ``(N,)``: no request of a
        later block is sent before it (the stream clock at the block's last capture);
        ``upload_ms``: each request's upload time (its ``t_input_ms``; ``None``: the mismatch
        stays unknown).
        """
        b, n = np.shape(client)
        out_m = np.full((b, n), np.nan)
        out_v = np.full((b, n), np.nan)
        out_x = np.full((b, n), np.nan)
        mis = (
            np.full((b, n), np.nan) if upload_ms is None else pair_mismatch(download_ms, upload_ms)
        )
        for s in range(n):
            cl = np.asarray(client[:, s])
            order = np.argsort(cl, kind="stable")
            bounds = np.searchsorted(cl[order], np.arange(self.num_clients + 1))
            for c in range(self.num_clients):
                rows = order[bounds[c] : bounds[c + 1]]
                ck, cd, cx = self._carry[s][c]
                k = np.concatenate([ck, known_ms[rows, s]])
                d = np.concatenate([cd, download_ms[rows, s]])
                xs = np.concatenate([cx, mis[rows, s]])
                srt = np.argsort(k, kind="stable")
                k, d, xs = k[srt], d[srt], xs[srt]
                cut = int(np.searchsorted(k, horizon_ms[s], side="right"))
                self._carry[s][c] = (k[cut:], d[cut:], xs[cut:])
                m0, v0 = float(self.dl[s, c]), float(self.dlvar[s, c])
                x0 = float(self.mismatch[s, c])
                m, v = fold(m0, v0, d[:cut])
                x = fold_mismatch(x0, xs[:cut])
                if rows.size:
                    # folds strictly before each send (a response arriving at the send
                    # instant is not yet read)
                    j = np.searchsorted(k[:cut], send_ms[rows, s], side="left")
                    mm = np.concatenate([[m0], m])
                    vv = np.concatenate([[v0], v])
                    out_m[rows, s] = mm[j]
                    out_v[rows, s] = vv[j]
                    out_x[rows, s] = np.concatenate([[x0], x])[j]
                if cut:
                    self.dl[s, c], self.dlvar[s, c] = m[-1], v[-1]
                    self.mismatch[s, c] = x[-1]
        return out_m, out_v, out_x
