"""The batched request-stream simulator behind ``modi/ModelSelection-v0``.

``N`` independent streams advance in lock-step, one request each per step, entirely in numpy.
Everything that does not depend on the policy's choices (SLAs, clients, network times, the
server's execution noise) is drawn ahead in blocks from the stream generator, so the same seed
gives every policy exactly the same request stream (common random numbers). What the policy
changes (which model runs, and so the profiles the server learns) is simulated per step.

Timeline of one request (DESIGN.md §1): captured at ``T_start`` (the arrival process); uploaded
in ``T_input``; arrives at the server at ``T_start + T_input`` (``elapsed = T_input``), where the
observation is built and the model chosen; waits in the server's queue for ``queue`` (0 without
a queue); executes in ``exec`` (slowed down during load spikes); the answer comes back in
``T_output``. ``e2e = T_input + queue + exec + T_output``; ``met = e2e <= SLA``.

The server side (load spikes, the queue, what the server observes) is in
:mod:`modi.envs.servers`; the arrival processes are in :mod:`modi.envs.arrivals`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from modi.envs.arrivals import ArrivalError, ArrivalProcess, make_arrivals
from modi.envs.downloads import ClientDownloads
from modi.envs.networks import BlockContext, NetworkModel
from modi.envs.pools import ModelPool
from modi.envs.rtt import SmoothedRtt
from modi.envs.servers import (
    ScalarServer,
    ServerBank,
    ServerConfigError,
    SpikeConfig,
    SpikeProcess,
)
from modi.runtime.features import (
    ACC,
    BUDGET,
    CLIENT_NET_ALPHA,
    MU,
    QUEUE,
    SIGMA,
    SLACK,
    SLOWDOWN,
    P,
    R,
    encode_requests,
    model_slack,
    obs_dim,
    upload_history_update,
)
from modi.runtime.profiles import ProfileTracker

log = logging.getLogger(__name__)

F64 = NDArray[np.float64]

#: Smallest execution time a draw can produce (a Gaussian tail cannot go below it).
MIN_EXEC_MS = 1e-3
#: Per-stream block memory target (floats) used to pick the block length.
_BLOCK_FLOATS = 1 << 20


class SimulationError(ValueError):
    """A simulator argument is out of range; the message names it."""


@dataclass
class StepOutcome:
    """What happened to the requests of one step (arrays of shape ``(N,)``).

    ``queue_ms`` is the wait in the server's queue (0 without one); ``slowdown`` the load-spike
    factor this execution ran under (1 without spikes); ``dropped`` marks requests the full
    queue rejected: nothing ran (``exec_ms`` 0, ``accuracy`` 0), ``e2e_ms`` is the round trip of
    the rejection (``t_input + t_output``), ``met`` is false and the reward ``-miss_penalty``.
    """

    model: NDArray[np.intp]
    sla_ms: F64
    t_input_ms: F64
    queue_ms: F64
    exec_ms: F64
    t_output_ms: F64
    e2e_ms: F64
    met: NDArray[np.bool_]
    accuracy: F64
    reward: F64
    dropped: NDArray[np.bool_]
    slowdown: F64


class ModelSelectionSim:
    """``N`` streams of requests reaching a server that must pick a model for each.

    Args:
        pool: the models and their *profiled* execution times (what the server believes).
        network: a :class:`~modi.envs.networks.NetworkModel`.
        num_envs: number of independent streams ``N``.
        sla_ms: a fixed SLA per stream (a number, or ``N`` numbers).
        sla_range_ms: if given, ``(low, high)``: each request's SLA is uniform in it instead.
        num_clients: clients per stream; each request comes from one, uniformly.
        payload_kb: upload payload per request (the paper's 330 KB image by default).
        response_kb: response size.
        arrival_rate_hz: mean Poisson arrival rate per stream (the time axis of traces); used
            by ``arrivals="poisson"``.
        miss_penalty: subtracted from the reward of a request that misses its SLA.
        profile_alpha: EWMA weight of the server's profile tracker.
        reprofile_every: every this many requests, models not run within that many requests
            are re-profiled with one execution (ModiPick's re-evaluation); 0 turns it off.
        true_pool: the execution-time distributions the server actually has (defaults to
            ``pool``; differ it to model stale or wrong profiles).
        arrivals: when requests are captured: ``"poisson"`` (at ``arrival_rate_hz``, the
            default), ``{"trace": PATH, "rate_hz": R}`` (replay the inter-arrival gaps of a
            CSV with a ``TIMESTAMP`` column, e.g. the Azure LLM inference trace, rescaled to
            mean rate ``R``, or at the trace's own rate if ``rate_hz`` is absent/null; each
            stream starts at a random row and wraps), or an
            :class:`~modi.envs.arrivals.ArrivalProcess`.
        spikes: load spikes from co-located tenants, or ``None`` (off): a mapping
            ``{"mean_interval_s": a, "mean_duration_s": b, "slowdown": f}``; per stream, normal
            periods last ``Exp(a)`` seconds and spikes ``Exp(b)``; a request whose upload
            finishes during a spike executes ``f`` times longer (``f`` a number, or
            ``[low, high]``: uniform per spike, ``1 <= low``). See
            :class:`~modi.envs.servers.SpikeProcess`.
        queue_capacity: ``None`` (default): no queue, every request starts executing when it
            arrives (the papers' setting). An integer ``C``: each stream's server is a FIFO
            queue holding at most ``C`` requests (waiting or executing); a request that finds
            ``C`` there is dropped (not met, reward ``-miss_penalty``). Waiting times then
            depend on earlier choices: a slower model delays every later request.
        workers: parallel workers per server when there is a queue (``<= queue_capacity``).

    Server model (``spikes`` or ``queue_capacity`` set). Each stream's requests are stepped in
    the order they reach the server (capture time + upload), not the order they were captured,
    so the FIFO queue serves them in true arrival order. The reordering happens within the
    blocks of :attr:`block_len` requests drawn ahead; the rare request overtaken across a block
    boundary is admitted right after the request it overtook (its wait counts from its own
    arrival). The requests are those drawn without the server model (but their execution
    noise is drawn in step order), and the clients' upload histories follow the server's
    (arrival) order. What the server
    observes follows what it could see at the request's arrival, never the future: ``queue_len``
    is the number of requests in the system (waiting or executing) when the request arrives;
    ``slowdown`` is an EWMA (weight :data:`~modi.runtime.features.SLOWDOWN_ALPHA`) of realised /
    profiled mean execution time over the executions *completed* by then; the μ/σ profiles
    likewise learn an execution time only once it has completed. Without the server model the
    two columns are the constants 0 and 1, and profiles learn each execution time at once (the
    papers' simulator). ``budget_ms`` stays ModiPick's ``T_U = SLA - elapsed - T_input``: it
    ignores the queue, which is exactly what the queue-aware features are for.

    Randomness: requests (arrivals, SLAs, clients, networks, execution noise) come from one
    generator, re-profiling from a second, the spike timeline from a third and the RTT
    measurement noise of ``srtt_ms``/``rttvar_ms`` (:mod:`modi.envs.rtt`) from a fourth, all
    spawned from the ``reset`` seed; so the same seed gives every policy the same requests *and* the
    same spikes, and switching spikes or the queue on keeps the requests (in arrival order).
    """

    def __init__(
        self,
        pool: ModelPool,
        network: NetworkModel,
        num_envs: int = 1,
        sla_ms: float | Sequence[float] = 150.0,
        sla_range_ms: tuple[float, float] | None = None,
        num_clients: int = 8,
        payload_kb: float = 330.0,
        response_kb: float = 1.0,
        arrival_rate_hz: float = 20.0,
        miss_penalty: float = 0.0,
        profile_alpha: float = 0.1,
        reprofile_every: int = 200,
        true_pool: ModelPool | None = None,
        arrivals: str | Mapping[str, Any] | ArrivalProcess | None = "poisson",
        spikes: Mapping[str, Any] | SpikeConfig | None = None,
        queue_capacity: int | None = None,
        workers: int = 1,
    ) -> None:
        if num_envs < 1:
            raise SimulationError(f"num_envs must be >= 1, got {num_envs}")
        sla = np.atleast_1d(np.asarray(sla_ms, dtype=np.float64))
        if sla.ndim != 1 or sla.size not in (1, num_envs):
            raise SimulationError(f"sla_ms must be one number or {num_envs} numbers, got {sla_ms}")
        if not np.all(np.isfinite(sla)) or np.any(sla <= 0):
            raise SimulationError(f"sla_ms must be > 0, got {sla.tolist()}")
        if sla_range_ms is not None:
            lo, hi = (float(x) for x in sla_range_ms)
            if not 0 < lo <= hi:
                raise SimulationError(
                    f"sla_range_ms must satisfy 0 < low <= high, got {sla_range_ms}"
                )
        if num_clients < 1:
            raise SimulationError(f"num_clients must be >= 1, got {num_clients}")
        if payload_kb <= 0 or response_kb <= 0:
            raise SimulationError(
                f"payload_kb and response_kb must be > 0, got {payload_kb} and {response_kb}"
            )
        if arrival_rate_hz <= 0:
            raise SimulationError(f"arrival_rate_hz must be > 0, got {arrival_rate_hz}")
        if reprofile_every < 0:
            raise SimulationError(f"reprofile_every must be >= 0, got {reprofile_every}")
        true_pool = pool if true_pool is None else true_pool
        if len(true_pool) != len(pool):
            raise SimulationError("true_pool must have the same models as pool")
        if queue_capacity is not None and (
            isinstance(queue_capacity, bool)
            or not isinstance(queue_capacity, (int, np.integer))
            or queue_capacity < 1
        ):
            raise SimulationError(
                f"queue_capacity must be None (no queue) or an integer >= 1, got {queue_capacity!r}"
            )
        if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
            raise SimulationError(f"workers must be an integer >= 1, got {workers!r}")
        if queue_capacity is None and workers != 1:
            raise SimulationError(
                f"workers={workers} needs a queue: set queue_capacity (workers only apply to "
                "the FIFO queue; without one every request executes at once)"
            )
        try:
            spike_cfg = SpikeConfig.parse(spikes)
            self.arrivals: ArrivalProcess = make_arrivals(arrivals, arrival_rate_hz)
            #: The servers (``None`` in the papers' setting); plain Python for one stream.
            self.server: ServerBank | ScalarServer | None = None
            cap = None if queue_capacity is None else int(queue_capacity)
            if spike_cfg is not None or cap is not None:
                if num_envs == 1:
                    self.server = ScalarServer(pool.mean_ms, cap, int(workers))
                else:
                    self.server = ServerBank(num_envs, pool.mean_ms, cap, int(workers))
        except (ServerConfigError, ArrivalError) as e:
            raise SimulationError(str(e)) from None

        self.pool = pool
        self.network = network
        self.num_envs = num_envs
        self.num_models = len(pool)
        self.obs_dim = obs_dim(self.num_models)
        self.sla_ms = np.broadcast_to(sla, (num_envs,)).copy()
        self.sla_range_ms = sla_range_ms
        self.num_clients = num_clients
        self.payload_kb = float(payload_kb)
        self.response_kb = float(response_kb)
        self.arrival_rate_hz = float(arrival_rate_hz)
        self.miss_penalty = float(miss_penalty)
        self.reprofile_every = int(reprofile_every)
        self.queue_capacity = None if queue_capacity is None else int(queue_capacity)
        self.workers = int(workers)
        self.spikes = None if spike_cfg is None else SpikeProcess(spike_cfg, num_envs)
        #: Whether the server model (spikes and/or queue) is on; off is the papers' setting.
        self.server_on = self.server is not None

        self.accuracy = pool.accuracy
        self._true_mu = true_pool.mean_ms
        self._true_sigma = true_pool.std_ms
        self._empirical = [
            (k, np.sort(np.asarray(m.samples_ms)))
            for k, m in enumerate(true_pool.models)
            if m.samples_ms is not None
        ]
        self._empirical_idx = {k for k, _ in self._empirical}
        self._l_true_mu = self._true_mu.tolist()
        self._l_true_sigma = self._true_sigma.tolist()
        self._l_acc = self.accuracy.tolist()
        self.tracker = ProfileTracker(pool.mean_ms, pool.std_ms, num_envs, profile_alpha)
        self.block_len = (
            512 if num_envs == 1 else int(np.clip(_BLOCK_FLOATS // (num_envs * 8), 16, 4096))
        )
        self._rows = np.arange(num_envs)
        self.obs = np.zeros((num_envs, self.obs_dim), dtype=np.float32)
        self._rng = np.random.default_rng()
        self._profile_rng = np.random.default_rng()
        self._server_rng = np.random.default_rng()
        self._admit_carry = np.full(num_envs, -np.inf)
        self._blk_slow: F64 | None = None
        self._touched: list[int] = []  # models whose profile changed this step (one stream)
        self.step_count = 0
        self._cursor = 0
        self._clock_ms = np.zeros(num_envs)
        self._net_mean = np.full((num_envs, num_clients), np.nan)
        self._net_var = np.zeros((num_envs, num_clients))
        #: The server's TCP view of each (stream, client) connection's RTT.
        self._srtt = SmoothedRtt(num_envs, num_clients)
        #: Each client's measured download history (``client_dl_ms``/``client_dlvar_ms``/
        #: ``client_dl_mismatch``).
        self._downloads = ClientDownloads(num_envs, num_clients)
        self._slowest_ms = np.zeros(num_envs)
        self._warned_rtt = False
        self._rtt_rng = np.random.default_rng()

    # ------------------------------------------------------------------ stream generation
    def _new_block(self) -> None:
        """Draw the next ``block_len`` requests of every stream (action-independent).

        Everything a request carries that does not depend on the policy is drawn here,
        including its request features (the client's network history is a property of the
        stream), so the per-step work is only what the policy's choice changes.
        """
        rng = self._rng
        b, n = self.block_len, self.num_envs
        gaps = self.arrivals.gaps_ms(rng, b, n)
        time_ms = self._clock_ms + np.cumsum(gaps, axis=0)
        self._clock_ms = time_ms[-1].copy()
        client = rng.integers(0, self.num_clients, size=(b, n))
        if self.sla_range_ms is not None:
            sla = rng.uniform(self.sla_range_ms[0], self.sla_range_ms[1], size=(b, n))
        else:
            sla = np.broadcast_to(self.sla_ms, (b, n))
        ctx = BlockContext(
            client=client,
            time_ms=time_ms,
            payload_bytes=np.full((b, n), self.payload_kb * 1000.0),
            response_bytes=np.full((b, n), self.response_kb * 1000.0),
        )
        t_in, t_out = self.network.sample(rng, ctx)
        t_in = np.asarray(t_in, dtype=np.float64)
        t_out = np.asarray(t_out, dtype=np.float64)
        up_rtt = getattr(self.network, "upload_rtt_ms", None)
        if up_rtt is None and not self._warned_rtt:
            self._warned_rtt = True
            log.warning(
                "network %r sets no upload_rtt_ms (see modi.envs.networks.NetworkModel): "
                "srtt_ms/rttvar_ms are unknown (NaN), and a policy that reads them (the default "
                "neural bandit, SB3 agents) cannot learn or decide on this network",
                getattr(self.network, "name", type(self.network).__name__),
            )
        up_rtt = (
            np.full(t_in.shape, np.nan)
            if up_rtt is None or np.shape(up_rtt) != t_in.shape
            else np.asarray(up_rtt, dtype=np.float64)
        )
        if self.server is not None:
            # The server meets requests in the order their uploads finish: step in that order.
            order = np.argsort(time_ms + t_in, axis=0, kind="stable")
            time_ms = np.take_along_axis(time_ms, order, axis=0)
            client = np.take_along_axis(client, order, axis=0)
            sla = np.take_along_axis(np.asarray(sla), order, axis=0)
            t_in = np.take_along_axis(t_in, order, axis=0)
            t_out = np.take_along_axis(t_out, order, axis=0)
            up_rtt = np.take_along_axis(up_rtt, order, axis=0)
        self._blk_z = rng.standard_normal((b, n))
        self._blk_u = rng.random((b, n)) if self._empirical else None
        net_mean, net_std = self._client_history(client, t_in)
        # the connection's smoothed RTT as TCP reports it on arrival (its own generator, so
        # the requests are those drawn before the feature existed)
        srtt, rttvar = self._srtt.update(self._rtt_rng, client, up_rtt, t_in)
        self._blk_sla = np.ascontiguousarray(sla)
        self._blk_client = client
        self._blk_time = time_ms
        self._blk_tin = t_in
        self._blk_tout = t_out
        self._cursor = 0
        if self.server is not None:
            # Arrival at the server (sorted within the block), and admission time: the same
            # except for a request overtaken across a block boundary, admitted after it.
            arrive = time_ms + t_in
            admit = np.maximum.accumulate(np.vstack([self._admit_carry[None, :], arrive]), axis=0)
            self._blk_arrive = arrive
            self._blk_admit = admit[1:]
            self._admit_carry = admit[-1].copy()
            if self.spikes is not None:
                # Factor at each request's arrival; later blocks arrive after this block's
                # last capture.
                self._blk_slow = self.spikes.factors_at(arrive, time_ms.max(axis=0))
            if self.num_envs == 1:
                self._l_arrive = arrive[:, 0].tolist()
                self._l_admit = self._blk_admit[:, 0].tolist()
                if self._blk_slow is not None:
                    self._l_slow = self._blk_slow[:, 0].tolist()
        # The client's download history: responses count once they surely arrived.
        # The client pairs each download with the same request's upload (client_dl_mismatch).
        dl, dlvar, dl_mis = self._downloads.block(
            time_ms,
            client,
            self._response_known_ms(time_ms, t_in, t_out),
            t_out,
            self._clock_ms,
            upload_ms=t_in,
        )
        # Request features; queue length and slowdown are filled per step by the server.
        self._blk_req = encode_requests(
            sla, t_in, t_in, self.payload_kb, net_mean, net_std, 0.0, 1.0, srtt, rttvar, dl, dlvar,
            dl_mis,
        )  # fmt: skip
        self._blk_budget = self._blk_req[..., BUDGET].astype(np.float64)
        if self.num_envs == 1:  # Python lists for the scalar fast path of a single stream
            self._l_sla = self._blk_sla[:, 0].tolist()
            self._l_tin = t_in[:, 0].tolist()
            self._l_tout = self._blk_tout[:, 0].tolist()
            self._l_z = self._blk_z[:, 0].tolist()
            self._l_budget = self._blk_budget[:, 0].tolist()

    def _response_known_ms(self, time_ms: F64, t_in: F64, t_out: F64) -> F64:
        """When each response of the block has surely reached its client, whichever model
        runs (:mod:`modi.envs.downloads`): capture + upload + the slowest execution for the
        request's noise (and spike factor) + the longest possible queue wait + download."""
        z = self._blk_z[..., None]
        ex = self._true_mu + self._true_sigma * z
        if self._blk_u is not None:
            for k, samples in self._empirical:
                q = (self._blk_u * samples.size).astype(np.intp)
                ex[..., k] = samples[np.minimum(q, samples.size - 1)]
        slowest = np.maximum(ex.max(axis=-1), MIN_EXEC_MS)
        if self._blk_slow is not None:
            slowest = slowest * self._blk_slow
        known = time_ms + t_in + slowest + t_out
        if self.queue_capacity is not None:
            self._slowest_ms = np.maximum(self._slowest_ms, slowest.max(axis=0))
            known = known + (self.queue_capacity - 1) * self._slowest_ms
        return known

    def _client_history(self, client: NDArray[np.int64], t_in: F64) -> tuple[F64, F64]:
        """EWMA mean/std of each request's client's *previous* upload times (a scan over the
        block). A client with no history yet reports this request's upload time and 0."""
        b, n = client.shape
        if n == 1:
            return self._client_history_scalar(client[:, 0].tolist(), t_in[:, 0].tolist())
        mean_out = np.empty((b, n))
        var_out = np.empty((b, n))
        rows = self._rows
        nm, nv = self._net_mean, self._net_var
        for j in range(b):
            c = client[j]
            x = t_in[j]
            m = nm[rows, c]
            v = nv[rows, c]
            mean_out[j] = np.where(np.isnan(m), x, m)
            var_out[j] = v
            nm[rows, c], nv[rows, c] = upload_history_update(m, v, x)
        return mean_out, np.sqrt(var_out)

    def _client_history_scalar(self, client: list[int], t_in: list[float]) -> tuple[F64, F64]:
        """:meth:`_client_history` for a single stream, in plain Python (same arithmetic)."""
        nm = self._net_mean[0].tolist()
        nv = self._net_var[0].tolist()
        a = CLIENT_NET_ALPHA
        mean_out = []
        var_out = []
        for c, x in zip(client, t_in, strict=True):
            m = nm[c]
            v = nv[c]
            if m != m:  # NaN: first request of this client
                mean_out.append(x)
                var_out.append(v)
                nm[c] = x
                nv[c] = 0.0
            else:
                mean_out.append(m)
                var_out.append(v)
                d = x - m
                nm[c] = m + a * d
                nv[c] = (1 - a) * (v + a * d * d)
        self._net_mean[0] = nm
        self._net_var[0] = nv
        return np.array(mean_out)[:, None], np.sqrt(np.array(var_out))[:, None]

    # ------------------------------------------------------------------ public API
    def reset(self, seed: int | Sequence[int] | None = None) -> NDArray[np.float32]:
        """Start all streams afresh from ``seed``; return the first observations ``(N, D)``.

        ``seed`` is an integer or a sequence of integers (a stream key such as
        :func:`modi.experiments.splits.stream_key` builds: the stream is then a function of
        what the key names, whatever else is simulated)."""
        ss = np.random.SeedSequence(seed if seed is None or isinstance(seed, int) else list(seed))
        stream_ss, profile_ss, server_ss, rtt_ss = ss.spawn(4)
        self._rng = np.random.default_rng(stream_ss)
        self._profile_rng = np.random.default_rng(profile_ss)
        self._server_rng = np.random.default_rng(server_ss)
        self._rtt_rng = np.random.default_rng(rtt_ss)
        self._srtt.reset()
        self._downloads.reset()
        self._slowest_ms = np.zeros(self.num_envs)
        self.network.reset(self._rng, self.num_envs, self.num_clients)
        self.arrivals.reset(self._rng, self.num_envs)
        if self.server is not None:
            self.server.reset()
            self._admit_carry = np.full(self.num_envs, -np.inf)
        if self.spikes is not None:
            self.spikes.reset(self._server_rng)
        self.tracker.reset()
        self._net_mean[:] = np.nan
        self._net_var[:] = 0.0
        self._clock_ms = np.zeros(self.num_envs)
        self.step_count = 0
        self._new_block()
        self._arrive()
        self._encode()
        return self.obs

    def reset_state(self, rows: NDArray[np.bool_]) -> None:
        """Forget what the server learned for the given streams (the stream itself goes on).

        Used at episode boundaries; the current observation is re-encoded.
        """
        self.tracker.reset(rows)
        if self.server is not None:
            self.server.forget(rows)
        self._encode()

    def current_exec_ms(self) -> F64:
        """Realised execution time of every model for the current requests, ``(N, K)``.

        Includes the load-spike factor. Privileged: only the clairvoyant oracle and tests may
        look; never an observation.
        """
        ex = self._base_exec_ms()
        if self._blk_slow is not None:
            ex *= self._blk_slow[self._cursor][:, None]
        return ex

    def _base_exec_ms(self) -> F64:
        """Execution times of every model for the current requests before spikes, ``(N, K)``."""
        i = self._cursor
        ex = self._true_mu + self._true_sigma * self._blk_z[i][:, None]
        if self._blk_u is not None:
            for k, samples in self._empirical:
                q = (self._blk_u[i] * samples.size).astype(np.intp)
                ex[:, k] = samples[np.minimum(q, samples.size - 1)]
        return np.maximum(ex, MIN_EXEC_MS)

    def current_state(self) -> dict[str, NDArray[Any]]:
        """The latent state of the current requests at decision time, each ``(N,)``.

        ``t_input_ms`` (observed), ``wait_ms`` (the queue wait the server's state fixes before
        the choice; 0 without a queue), ``slowdown`` (the load-spike factor in force; 1 without
        spikes), ``dropped``, ``client`` and ``decision_ms`` (the stream clock at arrival,
        capture + upload), plus ``t_output_ms``: the download this request will take.
        Privileged (the informed ceiling and tests only): ``t_output_ms`` is the realised
        download; a reference that may only know the link's present state must use it only
        where the network makes the download a function of that state.
        """
        i = self._cursor
        srv = self.server
        n = self.num_envs
        wait = np.zeros(n) if srv is None else np.atleast_1d(np.asarray(srv.wait_ms, dtype=float))
        dropped = (
            np.zeros(n, dtype=np.bool_) if srv is None else np.atleast_1d(np.asarray(srv.dropped))
        )
        slow = np.ones(n) if self._blk_slow is None else np.asarray(self._blk_slow[i], dtype=float)
        t_in = np.asarray(self._blk_tin[i], dtype=np.float64)
        return {
            "t_input_ms": t_in,
            "t_output_ms": np.asarray(self._blk_tout[i], dtype=np.float64),
            "wait_ms": wait.astype(np.float64),
            "slowdown": slow,
            "dropped": dropped,
            "client": np.asarray(self._blk_client[i]),
            "decision_ms": np.asarray(self._blk_time[i], dtype=np.float64) + t_in,
        }

    def true_profiles(self) -> tuple[F64, F64]:
        """The execution-time law the server really has: ``(mean_ms, std_ms)`` per model
        (before load spikes). Privileged (references and tests)."""
        return self._true_mu.copy(), self._true_sigma.copy()

    def current_sla_ms(self) -> F64:
        """Exact (float64) SLA of the current requests, ``(N,)``; the observation holds it
        rounded to float32. The SLA is known at decision time, so this is not privileged."""
        return np.asarray(self._blk_sla[self._cursor], dtype=np.float64)

    def current_e2e_ms(self) -> F64:
        """Realised end-to-end latency of every model for the current requests, ``(N, K)``.

        With a queue this includes the current request's wait (fixed by the earlier requests,
        whatever is chosen now); a request the full queue will drop gets ``inf`` for every
        model. Privileged (see :meth:`current_exec_ms`).
        """
        i = self._cursor
        srv = self.server
        if srv is None:
            # Same order of additions as step(): (t_in + 0) + exec + t_out, bit for bit.
            return self._blk_tin[i][:, None] + self.current_exec_ms() + self._blk_tout[i][:, None]
        e2e = (self._blk_tin[i] + srv.wait_ms)[:, None] + self.current_exec_ms()
        e2e += self._blk_tout[i][:, None]
        e2e[np.atleast_1d(srv.dropped)] = np.inf
        return e2e

    def step(self, actions: NDArray[np.integer]) -> StepOutcome:
        """Serve the current request of every stream with ``actions`` (model indices).

        Advances to the next request, whose observation is then in :attr:`obs`.
        """
        a = np.asarray(actions)
        if a.shape != (self.num_envs,):
            a = a.reshape(-1)
            if a.shape != (self.num_envs,):
                raise SimulationError(
                    f"expected {self.num_envs} actions, got array of shape {np.shape(actions)}"
                )
        if a.dtype.kind not in "iu":
            if not np.all(np.mod(a, 1) == 0):
                raise SimulationError(f"actions must be model indices (integers), got {a}")
            a = a.astype(np.intp)
        if a.min() < 0 or a.max() >= self.num_models:
            raise SimulationError(
                f"actions must be model indices in [0, {self.num_models}), got {a.tolist()}"
            )
        if isinstance(self.server, ScalarServer):  # one stream with a server: the scalar path
            return self._outcome_from_info(self.step_single(int(a[0])))
        i = self._cursor
        rows = self._rows
        sla = self._blk_sla[i]
        t_in = self._blk_tin[i]
        t_out = self._blk_tout[i]
        exec_ms = self._true_mu[a] + self._true_sigma[a] * self._blk_z[i]
        if self._blk_u is not None:
            for k, samples in self._empirical:
                sel = a == k
                if sel.any():
                    q = (self._blk_u[i][sel] * samples.size).astype(np.intp)
                    exec_ms[sel] = samples[np.minimum(q, samples.size - 1)]
        exec_ms = np.maximum(exec_ms, MIN_EXEC_MS)
        srv = self.server
        if srv is None:
            queue_ms = np.zeros(self.num_envs)
            e2e = t_in + queue_ms + exec_ms + t_out
            met = e2e <= sla
            acc = self.accuracy[a]
            dropped = np.zeros(self.num_envs, dtype=np.bool_)
            slowdown = np.ones(self.num_envs)
        else:
            slowdown = (
                np.ones(self.num_envs) if self._blk_slow is None else self._blk_slow[i].copy()
            )
            exec_ms *= slowdown
            assert isinstance(srv, ServerBank)
            dropped = srv.dropped.copy()
            queue_ms = srv.wait_ms.copy()
            e2e = t_in + queue_ms + exec_ms + t_out
            met = e2e <= sla
            acc = self.accuracy[a]
            if dropped.any():
                exec_ms[dropped] = 0.0
                e2e[dropped] = (t_in + t_out)[dropped]
                met[dropped] = False
                acc = np.where(dropped, 0.0, acc)
        reward = np.where(met, acc, -self.miss_penalty)

        self.step_count += 1
        if srv is None:
            self.tracker.update(rows, a, exec_ms, self.step_count)
        else:  # the profiles learn this execution when it completes (see _arrive)
            srv.serve(a, exec_ms)
        if self.reprofile_every and self.step_count % self.reprofile_every == 0:
            self._reprofile(None if self._blk_slow is None else self._blk_slow[i])

        out = StepOutcome(
            a, sla, t_in, queue_ms, exec_ms, t_out, e2e, met, acc, reward, dropped, slowdown
        )
        self._cursor += 1
        if self._cursor == self.block_len:
            self._new_block()
        self._arrive()
        self._encode()
        return out

    def step_single(self, action: int) -> tuple[float, dict[str, float | int | bool]]:
        """Scalar fast path of :meth:`step` for one stream (``num_envs == 1``).

        Same arithmetic as :meth:`step` on Python floats, updating the observation in place;
        returns ``(reward, info)``. A test checks both paths agree exactly.
        """
        a = action
        if not 0 <= a < self.num_models:
            raise SimulationError(
                f"action must be a model index in [0, {self.num_models}), got {a}"
            )
        if self.server is not None:
            return self._step_single_server(a)
        i = self._cursor
        sla = self._l_sla[i]
        t_in = self._l_tin[i]
        t_out = self._l_tout[i]
        if self._blk_u is not None and a in self._empirical_idx:
            ex = float(self.current_exec_ms()[0, a])
        else:
            ex = self._l_true_mu[a] + self._l_true_sigma[a] * self._l_z[i]
            if ex < MIN_EXEC_MS:
                ex = MIN_EXEC_MS
        e2e = t_in + 0.0 + ex + t_out
        met = e2e <= sla
        acc = self._l_acc[a]
        reward = acc if met else -self.miss_penalty

        self.step_count += 1
        tr = self.tracker
        al = tr.alpha
        mu_row, var_row, sig_row = tr.mu[0], tr.var[0], tr.sigma[0]
        mu = float(mu_row[a])
        d = ex - mu
        nmu = mu + al * d
        nvar = (1.0 - al) * (float(var_row[a]) + al * d * d)
        nsig = math.sqrt(nvar)
        mu_row[a] = nmu
        var_row[a] = nvar
        sig_row[a] = nsig
        tr.last_update[0, a] = self.step_count
        self._cursor += 1
        if (self.reprofile_every and self.step_count % self.reprofile_every == 0) or (
            self._cursor == self.block_len
        ):
            if self.reprofile_every and self.step_count % self.reprofile_every == 0:
                self._reprofile()
            if self._cursor == self.block_len:
                self._new_block()
            self._encode()
        else:
            obs = self.obs[0]
            obs[:R] = self._blk_req[self._cursor, 0]
            base = R + P * a
            obs[base + MU] = nmu
            obs[base + SIGMA] = nsig
            musig = self._musig
            musig[a] = nmu + nsig
            np.subtract(self._l_budget[self._cursor], musig, out=self._slack_view)
        info = {
            "model": a,
            "sla_ms": sla,
            "t_input_ms": t_in,
            "queue_ms": 0.0,
            "exec_ms": ex,
            "t_output_ms": t_out,
            "e2e_ms": e2e,
            "met": met,
            "accuracy": acc,
            "dropped": False,
            "slowdown": 1.0,
        }
        return reward, info

    def _step_single_server(self, a: int) -> tuple[float, dict[str, float | int | bool]]:
        """:meth:`step_single` with the server model on (one stream, plain Python).

        The only implementation of a single stream with a server: :meth:`step` calls it too.
        Same order of operations and arithmetic as the batched path of :meth:`step`.
        """
        srv = self.server
        assert isinstance(srv, ScalarServer)
        i = self._cursor
        sla = self._l_sla[i]
        t_in = self._l_tin[i]
        t_out = self._l_tout[i]
        if self._blk_u is not None and a in self._empirical_idx:
            ex = float(self._base_exec_ms()[0, a])
        else:
            ex = self._l_true_mu[a] + self._l_true_sigma[a] * self._l_z[i]
            if ex < MIN_EXEC_MS:
                ex = MIN_EXEC_MS
        f = self._l_slow[i] if self.spikes is not None else 1.0
        ex = ex * f
        dropped = srv.dropped
        wait = srv.wait_ms
        if dropped:
            ex = 0.0
            e2e = t_in + t_out
            met = False
            acc = 0.0
        else:
            e2e = t_in + wait + ex + t_out
            met = e2e <= sla
            acc = self._l_acc[a]
        reward = acc if met else -self.miss_penalty

        self.step_count += 1
        srv.serve(a, ex)
        reprofile = bool(self.reprofile_every) and self.step_count % self.reprofile_every == 0
        if reprofile:
            self._reprofile(None if self._blk_slow is None else self._blk_slow[i])
        self._cursor += 1
        new_block = self._cursor == self.block_len
        if new_block:
            self._new_block()
        self._touched.clear()
        self._arrive()
        if reprofile or new_block:
            self._encode()
        else:  # update the observation in place: request block, and the models just learned
            c = self._cursor
            obs = self.obs[0]
            obs[:R] = self._blk_req[c, 0]
            obs[QUEUE] = srv.queue_len
            obs[SLOWDOWN] = srv.slowdown
            if self._touched:
                mu_row, sig_row = self.tracker.mu[0], self.tracker.sigma[0]
                musig = self._musig
                for k in self._touched:
                    base = R + P * k
                    obs[base + MU] = mu_row[k]
                    obs[base + SIGMA] = sig_row[k]
                    musig[k] = mu_row[k] + sig_row[k]
            np.subtract(self._l_budget[c], self._musig, out=self._slack_view)
        info: dict[str, float | int | bool] = {
            "model": a,
            "sla_ms": sla,
            "t_input_ms": t_in,
            "queue_ms": wait,
            "exec_ms": ex,
            "t_output_ms": t_out,
            "e2e_ms": e2e,
            "met": met,
            "accuracy": acc,
            "dropped": dropped,
            "slowdown": f,
        }
        return reward, info

    def _outcome_from_info(self, r: tuple[float, dict[str, float | int | bool]]) -> StepOutcome:
        """A one-stream :class:`StepOutcome` from :meth:`step_single`'s ``(reward, info)``."""
        reward, info = r

        def arr(key: str) -> F64:
            return np.array([info[key]], dtype=np.float64)

        return StepOutcome(
            np.array([info["model"]], dtype=np.intp),
            arr("sla_ms"),
            arr("t_input_ms"),
            arr("queue_ms"),
            arr("exec_ms"),
            arr("t_output_ms"),
            arr("e2e_ms"),
            np.array([info["met"]], dtype=np.bool_),
            arr("accuracy"),
            np.array([reward], dtype=np.float64),
            np.array([info["dropped"]], dtype=np.bool_),
            arr("slowdown"),
        )

    # ------------------------------------------------------------------ internals
    def _reprofile(self, slowdown: F64 | None = None) -> None:
        """One execution of every stale model (under the current spike factor, if any)."""
        stale = self.tracker.stale(self.step_count, self.reprofile_every)
        r, k = np.nonzero(stale)
        if r.size:
            z = self._profile_rng.standard_normal(r.size)
            ex = np.maximum(self._true_mu[k] + self._true_sigma[k] * z, MIN_EXEC_MS)
            if slowdown is not None:
                ex = ex * slowdown[r]
            self.tracker.update(r, k, ex, self.step_count)

    def _on_complete(self, rows: NDArray[np.intp], models: NDArray[np.intp], ex: F64) -> None:
        self.tracker.update(rows, models, ex, self.step_count)

    def _on_complete1(self, k: int, ex: float) -> None:
        """:meth:`_on_complete` for one stream (the arithmetic of ``ProfileTracker.update``)."""
        tr = self.tracker
        al = tr.alpha
        mu = float(tr.mu[0, k])
        d = ex - mu
        nvar = (1.0 - al) * (float(tr.var[0, k]) + al * d * d)
        tr.mu[0, k] = mu + al * d
        tr.var[0, k] = nvar
        tr.sigma[0, k] = math.sqrt(nvar)
        tr.last_update[0, k] = self.step_count
        self._touched.append(k)

    def _arrive(self) -> None:
        """The current request reaches its server: fold in completions, queue, admission."""
        srv = self.server
        if srv is None:
            return
        i = self._cursor
        if isinstance(srv, ScalarServer):
            srv.arrive(self._l_arrive[i], self._l_admit[i], self._on_complete1)
        else:
            srv.arrive(self._blk_arrive[i], self._blk_admit[i], self._on_complete)

    def _encode(self) -> None:
        i = self._cursor
        obs = self.obs
        obs[:, :R] = self._blk_req[i]
        models = obs[:, R:].reshape(self.num_envs, self.num_models, P)
        mu, sigma = self.tracker.mu, self.tracker.sigma
        models[:, :, MU] = mu
        models[:, :, SIGMA] = sigma
        models[:, :, ACC] = self.accuracy
        models[:, :, SLACK] = model_slack(self._blk_budget[i], mu, sigma)
        if self.server is not None:
            obs[:, QUEUE] = self.server.queue_len
            obs[:, SLOWDOWN] = self.server.slowdown
        if self.num_envs == 1:
            self._musig = mu[0] + sigma[0]
            self._slack_view = self.obs[0, R + SLACK :: P]
