"""What a server's TCP stack knows about a connection's round-trip time when a request arrives.

Linux reports a connection's smoothed RTT and its variation in ``TCP_INFO`` (``tcpi_rtt``,
``tcpi_rttvar``), RFC 6298's estimators: per RTT sample ``r``,
``rttvar <- (1 - 1/4) rttvar + 1/4 |srtt - r|`` then ``srtt <- (1 - 1/8) srtt + 1/8 r``; the
first sample sets ``srtt = r``, ``rttvar = r / 2``. :class:`SmoothedRtt` simulates them per
(stream, client) connection from the RTT each request's *upload* saw (the network model's
``upload_rtt_ms``): samples taken before the request reached the server, never the download's
(DESIGN.md §1).

An upload of ``T_input`` ms spans about ``T_input / RTT`` round trips; each yields a sample with
multiplicative log-normal measurement noise (:data:`SAMPLE_NOISE`: delayed ACKs, scheduling).
The ``m`` samples of one upload (``1 <= m <=`` :data:`MAX_SAMPLES`) see nearly the same RTT, so
they are folded into one update with the compounded gains ``1 - (7/8)^m`` and ``1 - (3/4)^m``
and the noise of their weighted mean (an approximation of ``m`` sequential updates).
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

F64 = NDArray[np.float64]

#: RFC 6298's gains.
SRTT_GAIN = 1.0 / 8.0
RTTVAR_GAIN = 1.0 / 4.0
#: Log-normal sigma of one RTT sample's measurement noise.
SAMPLE_NOISE = 0.1
#: Most RTT samples one upload contributes.
MAX_SAMPLES = 16


def _folded(m: F64) -> tuple[F64, F64, F64]:
    """For ``m`` samples folded into one update: the srtt gain, the rttvar gain and the noise
    sigma of the samples' srtt-weighted mean."""
    keep = 1.0 - SRTT_GAIN
    a = keep**m
    # weights (1/8)(7/8)^(m-i), i = 1..m: sum 1 - a, sum of squares (1/64)(1 - keep^2m)/(1 - keep^2)
    sq = (SRTT_GAIN**2) * (1.0 - keep ** (2.0 * m)) / (1.0 - keep**2)
    sigma = SAMPLE_NOISE * np.sqrt(sq) / (1.0 - a)
    return 1.0 - a, 1.0 - (1.0 - RTTVAR_GAIN) ** m, sigma


def upload_samples(upload_rtt_ms: F64, t_input_ms: F64, z: F64) -> tuple[F64, F64, F64]:
    """What an upload of ``t_input_ms`` at RTT ``upload_rtt_ms`` gives the connection's
    estimators: its samples folded into one (``rtt · exp(σ z)``, ``z`` standard normals; about
    one sample per round trip, 1 to :data:`MAX_SAMPLES`) and their gains ``(sample, g_srtt,
    g_rttvar)`` for :func:`fold_sample` (:func:`_folded`)."""
    rtt = np.asarray(upload_rtt_ms, dtype=np.float64)
    t_in = np.asarray(t_input_ms, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        m = np.clip(np.floor(t_in / rtt), 1.0, float(MAX_SAMPLES))
    m = np.where(np.isfinite(m), m, 1.0)
    g_s, g_v, sigma = _folded(m)
    return rtt * np.exp(sigma * np.asarray(z, dtype=np.float64)), g_s, g_v


def fold_sample(srtt_ms: F64, rttvar_ms: F64, sample: F64, g_s: F64, g_v: F64) -> tuple[F64, F64]:
    """RFC 6298's update of connections' ``(srtt, rttvar)`` (NaN srtt: the connection's
    first) by one folded sample of :func:`upload_samples`, elementwise."""
    s = np.asarray(srtt_ms, dtype=np.float64)
    v = np.asarray(rttvar_ms, dtype=np.float64)
    first = np.isnan(s)
    v_new = np.where(first, 0.5 * sample, v + g_v * (np.abs(s - sample) - v))
    s_new = np.where(first, sample, s + g_s * (sample - s))
    return s_new, v_new


class SmoothedRtt:
    """RFC 6298 estimators per (stream, client) connection, updated by each request's upload.

    Args:
        num_envs: streams.
        num_clients: clients (connections) per stream.
    """

    def __init__(self, num_envs: int, num_clients: int) -> None:
        self.srtt = np.full((num_envs, num_clients), np.nan)
        self.rttvar = np.zeros((num_envs, num_clients))
        self._rows = np.arange(num_envs)

    def reset(self) -> None:
        """Forget every connection (the next sample is a connection's first)."""
        self.srtt[:] = np.nan
        self.rttvar[:] = 0.0

    def update(
        self,
        rng: np.random.Generator,
        client: NDArray[np.integer],
        upload_rtt_ms: F64,
        t_input_ms: F64,
    ) -> tuple[F64, F64]:
        """Fold each request's upload into its connection, in row order; return the
        ``(srtt, rttvar)`` the server reads when each request arrives, shaped like ``client``
        ``(B, N)`` (a scan over rows, vectorised over streams)."""
        shape = np.shape(upload_rtt_ms)
        sample, g_s, g_v = upload_samples(upload_rtt_ms, t_input_ms, rng.standard_normal(shape))
        b, n = np.shape(client)
        if n == 1:
            return self._update_scalar(
                np.asarray(client)[:, 0].tolist(),
                sample[:, 0].tolist(),
                g_s[:, 0].tolist(),
                g_v[:, 0].tolist(),
            )
        srtt_out = np.empty((b, n))
        var_out = np.empty((b, n))
        rows = self._rows
        s_all, v_all = self.srtt, self.rttvar
        for j in range(b):
            c = client[j]
            s, v = fold_sample(s_all[rows, c], v_all[rows, c], sample[j], g_s[j], g_v[j])
            s_all[rows, c] = s
            v_all[rows, c] = v
            srtt_out[j] = s
            var_out[j] = v
        return srtt_out, var_out

    def _update_scalar(
        self, client: list[int], sample: list[float], g_s: list[float], g_v: list[float]
    ) -> tuple[F64, F64]:
        """:meth:`update` for one stream in plain Python (same arithmetic)."""
        s_all = self.srtt[0].tolist()
        v_all = self.rttvar[0].tolist()
        s_out: list[float] = []
        v_out: list[float] = []
        for c, r, gs, gv in zip(client, sample, g_s, g_v, strict=True):
            s = s_all[c]
            if math.isnan(s):
                v = 0.5 * r
                s = r
            else:
                v = v_all[c] + gv * (abs(s - r) - v_all[c])
                s = s + gs * (r - s)
            s_all[c] = s
            v_all[c] = v
            s_out.append(s)
            v_out.append(v)
        self.srtt[0] = s_all
        self.rttvar[0] = v_all
        return np.array(s_out)[:, None], np.array(v_out)[:, None]
