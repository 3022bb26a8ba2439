"""The informed ceiling: the best any policy could do knowing the present, not the future.

The clairvoyant oracle (:class:`~modi.agents.baselines.Oracle`) knows each request's realised
download and execution time; no policy can learn that. The *informed ceiling* knows what a
perfect estimator of the present would: the simulator's latent state at decision time — this
request's link state and the server's state (queue wait, load-spike factor) — but not the noise
still to come, and picks the model with the highest expected effective accuracy by the
simulator's own laws::

    argmax_m  A_m · P(exec_m · slowdown + T_output ≤ SLA − T_input − wait | latent state)

with ``exec_m`` drawn from the server's *true* execution-time law (Gaussian μ, σ, or the
measured samples). It is an upper bound on any policy that sees the observation (it knows
more), and much tighter than the oracle. What it knows of the download, per network:

* the papers' Gaussian network: ``T_output = T_input`` (one draw used both ways) — exact;
* link models (:class:`~modi.envs.links.LinkModel`): the download is ``RTT/2 + response /
  downlink bandwidth`` at the link's present state, a deterministic function of it — exact;
* trace-driven networks: the trace *is* the future, so the latent state is the link's recent
  past — the RTT now and the throughput delivered over the last second
  (``network.latent_state``); the download's law given it is the empirical distribution of
  downloads with similar recent throughput on the same network (fitted once, on a separate
  draw of the network's own streams);
* any other network: the realised download (then the reference is clairvoyant about the
  download, and says so in the log).
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import numpy as np
from numpy.typing import NDArray

from modi.agents.protocol import Actions, Obs
from modi.envs.networks import BlockContext, GaussianOneWay
from modi.runtime.features import ACC, ObsLayout

log = logging.getLogger(__name__)

F64 = NDArray[np.float64]


def _norm_cdf(x: F64) -> F64:
    from scipy.special import ndtr

    return np.asarray(ndtr(x), dtype=np.float64)


class _TraceDownloadLaw:
    """``T_output − RTT/2`` given the downlink throughput of the last second, by quantile bins."""

    def __init__(self, network: Any, sim: Any, bins: int, samples: int, seed: int) -> None:
        net = copy.deepcopy(network)
        rng = np.random.default_rng(seed)
        n_env, n_cli, rows = 64, max(1, int(sim.num_clients)), 256
        net.reset(rng, n_env, n_cli)
        gaps = rng.exponential(1000.0 / float(sim.arrival_rate_hz), size=(rows, n_env))
        time_ms = np.cumsum(gaps, axis=0)
        client = rng.integers(0, n_cli, size=(rows, n_env))
        ctx = BlockContext(
            client=client,
            time_ms=time_ms,
            payload_bytes=np.full((rows, n_env), sim.payload_kb * 1000.0),
            response_bytes=np.full((rows, n_env), sim.response_kb * 1000.0),
        )
        t_in, t_out = net.sample(rng, ctx)
        env = np.broadcast_to(np.arange(n_env), (rows, n_env))
        lat = net.latent_state(env.ravel(), client.ravel(), (time_ms + t_in).ravel())
        x = np.asarray(lat["downlink_mbps"], dtype=np.float64)
        resid = np.asarray(t_out, dtype=np.float64).ravel() - 0.5 * np.asarray(lat["rtt_ms"])
        self.edges = np.unique(np.quantile(x, np.linspace(0, 1, bins + 1)[1:-1]))
        idx = np.searchsorted(self.edges, x, side="right")
        table = []
        for b in range(self.edges.size + 1):
            r = np.sort(resid[idx == b])
            if r.size == 0:
                r = np.sort(resid)
            pick = np.linspace(0, r.size - 1, min(samples, r.size)).round().astype(np.intp)
            table.append(r[pick])
        width = max(t.size for t in table)
        # equal-length rows (quantile resampling) so a batch is one gather
        self.table = np.stack(
            [np.quantile(t, np.linspace(0, 1, width)) if t.size != width else t for t in table]
        )

    def samples(self, rtt_ms: F64, downlink_mbps: F64) -> F64:
        """Download samples ``(N, S)`` for requests with this present link state."""
        idx = np.searchsorted(self.edges, downlink_mbps, side="right")
        return rtt_ms[:, None] * 0.5 + self.table[idx]


def _block_latent(sim: Any) -> dict[str, F64]:
    """The latent link state at decision time of every request of the simulator's current
    block ``(B, N)`` in one call (the network does not depend on the policy, so the states of
    the block's requests are fixed when the block is drawn; each is of its own request's
    past)."""
    client = np.asarray(sim._blk_client)
    b, n = client.shape
    env = np.broadcast_to(np.arange(n), (b, n))
    when = np.asarray(sim._blk_time, dtype=np.float64) + np.asarray(sim._blk_tin)
    lat = sim.network.latent_state(env.ravel(), client.ravel(), when.ravel())
    return {k: np.asarray(v, dtype=np.float64).reshape(b, n) for k, v in lat.items()}


class InformedCeiling:
    """Highest expected effective accuracy given the latent state at decision time.

    Args:
        bins: quantile bins of recent throughput for the trace-driven download law.
        samples: download samples per bin.
        fit_seed: seed of the separate draw the trace download law is fitted on.
    """

    name = "informed_ceiling"

    def __init__(self, bins: int = 10, samples: int = 64, fit_seed: int = 987_654) -> None:
        if bins < 1 or samples < 1:
            raise ValueError(
                f"informed_ceiling: bins and samples must be >= 1, got {bins}, {samples}"
            )
        self.bins = int(bins)
        self.samples = int(samples)
        self.fit_seed = int(fit_seed)
        self._law: _TraceDownloadLaw | None = None
        self._law_for: int | None = None
        self._warned = False
        self._block: dict[str, F64] = {}
        self._block_of: Any = None
        #: How the download was known on the last call ("exact", "trace_law", "realised").
        self.download_knowledge = ""

    def reset(self, num_envs: int, seed: Any = None) -> None:
        """Nothing to reset (deterministic)."""

    def select(self, obs: Obs) -> Actions:
        """The ceiling needs the simulator's latent state."""
        raise TypeError("the informed ceiling needs the simulator: call select_informed(obs, sim)")

    def _download(self, sim: Any, state: dict[str, NDArray[Any]]) -> F64:
        net = sim.network
        from modi.envs.links import LinkModel

        if isinstance(net, GaussianOneWay):
            self.download_knowledge = "exact"
            return state["t_input_ms"][:, None]
        if isinstance(net, LinkModel):
            self.download_knowledge = "exact"
            return state["t_output_ms"][:, None]
        if hasattr(net, "latent_state"):
            if self._law is None or self._law_for != id(net):
                self._law = _TraceDownloadLaw(net, sim, self.bins, self.samples, self.fit_seed)
                self._law_for = id(net)
            self.download_knowledge = "trace_law"
            if self._block_of is not sim._blk_client:  # a new block: its states in one call
                self._block = _block_latent(sim)
                self._block_of = sim._blk_client
            row = sim._cursor
            return self._law.samples(self._block["rtt_ms"][row], self._block["downlink_mbps"][row])
        if not self._warned:
            log.warning(
                "informed_ceiling: network %r has no law of its download given its present "
                "state; using the realised download (clairvoyant about the download)",
                getattr(net, "name", type(net).__name__),
            )
            self._warned = True
        self.download_knowledge = "realised"
        return state["t_output_ms"][:, None]

    def p_met(self, obs: Obs, sim: Any) -> F64:
        """``P(met)`` of every model for the current requests, ``(N, K)``."""
        state = sim.current_state()
        sla = sim.current_sla_ms()
        mu, sd = sim.true_profiles()
        slow = state["slowdown"][:, None, None]
        left = (sla - state["t_input_ms"] - state["wait_ms"])[:, None, None]
        d = self._download(sim, state)[:, None, :]  # (N, 1, S)
        room = left - d  # time the execution may take, (N, 1, S)
        m = mu[None, :, None] * slow
        s = sd[None, :, None] * slow
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            z = (room - m) / s  # a tiny sigma overflows to +-inf: P(met) 1 or 0, as it should
        p = np.where(s > 0, _norm_cdf(np.where(s > 0, z, 0.0)), (m <= room).astype(np.float64))
        for k, samples in getattr(sim, "_empirical", []):
            ex = samples[None, None, :]  # empirical law: P(sample * slow <= room)
            r = (room[:, 0, :] / state["slowdown"][:, None])[:, :, None]
            p[:, k, :] = (ex <= r).mean(axis=2)
        p_met = p.mean(axis=2)
        p_met[state["dropped"]] = 0.0
        return p_met

    def select_informed(self, obs: Obs, sim: Any, p_met: F64 | None = None) -> Actions:
        """The model with the highest expected effective accuracy; ties → the faster one.
        ``p_met``: :meth:`p_met` of these requests, when the caller has it already."""
        obs = np.atleast_2d(obs)
        layout = ObsLayout.from_obs_dim(obs.shape[1])
        acc = layout.models(obs)[:, :, ACC].astype(np.float64)
        p = self.p_met(obs, sim) if p_met is None else p_met
        value = acc * p
        mu, _ = sim.true_profiles()
        best = value.max(axis=1, keepdims=True)
        tie = np.where(value >= best - 1e-12, mu[None, :], np.inf)
        return np.asarray(tie.argmin(axis=1), dtype=np.intp)

    def __repr__(self) -> str:
        return f"InformedCeiling(bins={self.bins}, samples={self.samples})"
