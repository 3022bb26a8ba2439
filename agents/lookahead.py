"""A lookahead reference for the loaded server: a rollout planner that knows the arrival process
and the server's state now, but not the future noise.

Under load the per-request oracle is not a bound: a slow model now delays every request behind
it, so the best choice for one request is not the best for the stream. The rollout planner
(one step of policy improvement over one or several base policies, Bertsekas' rollout
algorithm) scores each candidate model ``m`` of the current request as

    Q(m) = A_m · P(met | m, latent state now)
           + max over bases b of  E[ Σ_{h=1}^{H-1} reward_h | m now, b later ]

* the first term is the informed ceiling's (:class:`~modi.agents.references.InformedCeiling`):
  the present link and server state are known, the execution noise still to come is not;
* the second is a Monte-Carlo estimate over ``samples`` simulated futures: copies of the
  simulator (``copy.deepcopy``) in which everything that has not happened yet is redrawn from
  fresh generators: the current request's execution noise, the next ``H`` requests (arrival
  gaps from the same arrival process at a random position of its trace, clients, SLAs, links
  from the network's stationary law, execution noise), the remaining length of the present
  load-spike episode and the spikes after it. The queue, the completions pending, the learned
  profiles and the observed slowdown are the server's true state now. The same futures serve
  every candidate (common random numbers), so the comparison between candidates is sharp.

It is a *reference*, like the informed ceiling: it sees the simulator's latent state, which no
deployed selector can, and it improves on each of its base policies in expectation (up to
Monte-Carlo error and the horizon's truncation), but it is not a bound either: a longer horizon,
more samples or a better base policy can do better. With several bases (e.g. the informed
ceiling and the learned selector) it is at least as good as the best of them in expectation:
a reference that a learned policy can be measured against even where it beats every rule. It is
slow (``candidates × bases × samples × H`` simulator steps per decision), so reports evaluate
it on fewer requests and say so.

It reads private parts of :class:`~modi.envs.simulator.ModelSelectionSim` (its drawn-ahead
block of requests and its generators) on a *copy*; the simulator it plans for is never
modified.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from modi.agents.protocol import Actions, InformedPolicy, Obs, Policy
from modi.agents.references import InformedCeiling
from modi.runtime.features import ACC, ObsLayout

log = logging.getLogger(__name__)

F64 = NDArray[np.float64]

#: Per-request block arrays that are noise to be redrawn even for the current request.
_NOISE_BLOCKS = frozenset({"_blk_z", "_blk_u"})


def pareto_models(mu_ms: F64, accuracy: F64) -> NDArray[np.intp]:
    """Models not dominated by another (as fast or faster and at least as accurate, one of the
    two strictly): a dominated model is never worth its time, now or for the queue."""
    mu = np.asarray(mu_ms, dtype=np.float64)
    acc = np.asarray(accuracy, dtype=np.float64)
    keep = []
    for k in range(mu.size):
        dominated = np.any((mu <= mu[k]) & (acc >= acc[k]) & ((mu < mu[k]) | (acc > acc[k])))
        if not dominated:
            keep.append(k)
    return np.asarray(keep, dtype=np.intp)


def future_copy(sim: Any, rng: np.random.Generator, horizon: int) -> Any:
    """A copy of ``sim`` at its current request in which everything still to come is redrawn.

    Future requests are those captured after a window before the current request's capture that
    reach the server after it (requests still uploading now are part of the future).
    The copy keeps the server's state now (queue, pending completions, profiles, observed
    slowdown), the current request (its SLA, upload, arrival and download, which fix its own
    outcome and its place in the queue) and the current spike factor; it redraws the current
    request's execution noise, the next ``horizon`` requests (from the copy's reseeded
    generators: the arrival process restarted at a random position, the network from its
    stationary law) and the spike timeline after now (by memorylessness, the present episode's
    remaining length is redrawn too). ``sim`` itself is not touched.
    """
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1, got {horizon}")
    c = copy.deepcopy(sim)
    i = int(c._cursor)
    old_len = int(c.block_len)
    saved = {
        k: np.array(v[i], copy=True)
        for k, v in vars(c).items()
        if k.startswith("_blk_")
        and k not in _NOISE_BLOCKS
        and isinstance(v, np.ndarray)
        and v.ndim >= 1
        and v.shape[0] == old_len
    }
    # fresh generators for everything the copy draws from now on
    for k, v in list(vars(c).items()):
        if k.endswith("_rng") and isinstance(v, np.random.Generator):
            setattr(c, k, np.random.default_rng(int(rng.integers(2**63))))
    n = int(c.num_envs)
    now_capture = np.asarray(saved["_blk_time"], dtype=np.float64)
    arrive_now = np.asarray(saved.get("_blk_arrive", now_capture), dtype=np.float64)
    # Requests captured before the current one may still be uploading: draw captures from a
    # window before it (long enough for almost every upload) and keep those that reach the
    # server after it, so the near future is not thinned.
    t_in = np.asarray(getattr(c, "_blk_tin", np.zeros(1)), dtype=np.float64)
    window = float(np.quantile(t_in, 0.999)) if t_in.size else 0.0
    rate = float(getattr(c.arrivals, "rate_hz", 0.0) or 0.0)
    extra = int(np.ceil(3.0 * rate * window / 1000.0)) + 8 if window > 0 else 0
    c._clock_ms = np.maximum(now_capture - window, 0.0)  # a trace's time starts at 0
    c.arrivals.reset(c._rng, n)
    c.network.reset(c._rng, n, c.num_clients)
    if getattr(c, "spikes", None) is not None and "_blk_slow" in saved:
        sp = c.spikes
        f_now = np.asarray(saved["_blk_slow"], dtype=np.float64)
        spike = f_now > 1.0
        mean = np.where(spike, sp._dur_ms, sp._int_ms)
        sp._rng = np.random.default_rng(int(rng.integers(2**63)))
        sp._ends = (arrive_now + sp._rng.exponential(1.0, n) * mean)[:, None]
        sp._factor = f_now[:, None].copy()
        sp._spike = spike[:, None].copy()
    if getattr(c, "server", None) is not None and "_blk_admit" in saved:
        c._admit_carry = np.asarray(saved["_blk_admit"], dtype=np.float64).copy()
    c.block_len = horizon + 1 + extra
    c._new_block()  # row 0 becomes the current request, the rows after it the future
    if extra:
        # per stream: the requests arriving after the current one first (in arrival order),
        # rotated by one so that row 0 (overwritten below) is a discarded one
        later = np.asarray(c._blk_arrive) > arrive_now[None, :]
        order = np.roll(np.argsort(~later, axis=0, kind="stable"), 1, axis=0)
        for k, v in list(vars(c).items()):
            if (
                k.startswith("_blk_")
                and isinstance(v, np.ndarray)
                and v.ndim >= 2
                and v.shape[:2] == (c.block_len, n)
            ):
                idx = order.reshape(order.shape + (1,) * (v.ndim - 2))
                setattr(c, k, np.take_along_axis(v, idx, axis=0))
    for k, v in saved.items():
        arr = getattr(c, k, None)
        if isinstance(arr, np.ndarray) and arr.shape[0] == c.block_len:
            arr[0] = v
    if getattr(c, "server", None) is not None and "_blk_admit" in saved:
        arrive = np.array(c._blk_arrive, dtype=np.float64, copy=True)
        arrive[0] = saved["_blk_admit"]
        c._blk_admit = np.maximum.accumulate(arrive, axis=0)
        c._admit_carry = c._blk_admit[-1].copy()
    if n == 1:  # the scalar fast path reads Python lists of the block
        for name, src in (
            ("_l_sla", "_blk_sla"),
            ("_l_tin", "_blk_tin"),
            ("_l_tout", "_blk_tout"),
            ("_l_z", "_blk_z"),
            ("_l_budget", "_blk_budget"),
            ("_l_arrive", "_blk_arrive"),
            ("_l_admit", "_blk_admit"),
            ("_l_slow", "_blk_slow"),
        ):
            arr = getattr(c, src, None)
            if isinstance(arr, np.ndarray) and hasattr(c, name):
                setattr(c, name, np.asarray(arr)[:, 0].tolist())
    c._cursor = 0
    return c


class RolloutLookahead:
    """The rollout planner (module docstring) over one or several base policies.

    Args:
        base: the policy serving the simulated future requests, or a sequence of them (each
            candidate's future is then the best over the bases): rules or learned selectors
            (``select``) or informed references (``select_informed``, e.g. the informed
            ceiling); none may learn across calls.
        horizon: requests simulated per candidate (the current one included).
        samples: simulated futures averaged per decision.
        candidates: ``"pareto"`` (models not dominated in profiled μ and accuracy; default) or
            ``"all"``.
        seed: default seed of the futures (``reset`` seeds override it).
    """

    name = "lookahead"

    def __init__(
        self,
        base: Policy | InformedPolicy | Sequence[Policy | InformedPolicy],
        horizon: int = 20,
        samples: int = 2,
        candidates: str = "pareto",
        seed: int = 0,
    ) -> None:
        if isinstance(horizon, bool) or not isinstance(horizon, (int, np.integer)) or horizon < 1:
            raise ValueError(f"lookahead.horizon must be an integer >= 1, got {horizon!r}")
        if isinstance(samples, bool) or not isinstance(samples, (int, np.integer)) or samples < 1:
            raise ValueError(f"lookahead.samples must be an integer >= 1, got {samples!r}")
        if candidates not in ("pareto", "all"):
            raise ValueError(f"lookahead.candidates must be 'pareto' or 'all', got {candidates!r}")
        bases = list(base) if isinstance(base, (list, tuple)) else [base]
        if not bases:
            raise ValueError("lookahead.base must name at least one policy")
        for b in bases:
            if not isinstance(b, InformedPolicy) and not callable(getattr(b, "select", None)):
                raise ValueError(f"lookahead.base must be policies with select(obs), got {b!r}")
        self.bases: list[Any] = bases
        self.horizon = int(horizon)
        self.samples = int(samples)
        self.candidates = candidates
        self._rng = np.random.default_rng(seed)
        self._ceiling = InformedCeiling()

    def reset(self, num_envs: int, seed: Any = None) -> None:
        """Reseed the simulated futures (and the base policies)."""
        self._rng = np.random.default_rng(seed)
        for i, b in enumerate(self.bases):
            b.reset(num_envs, None if seed is None else int(seed) + 1 + i)

    def select(self, obs: Obs) -> Actions:
        """The planner needs the simulator."""
        raise TypeError("the lookahead reference needs the simulator: call select_informed")

    def _candidates(self, sim: Any) -> NDArray[np.intp]:
        mu, _ = sim.true_profiles()
        if self.candidates == "all":
            return np.arange(mu.size, dtype=np.intp)
        return pareto_models(mu, np.asarray(sim.accuracy, dtype=np.float64))

    @staticmethod
    def _base_actions(base: Any, sim: Any) -> Actions:
        if isinstance(base, InformedPolicy):
            return np.asarray(base.select_informed(sim.obs, sim), dtype=np.intp)
        return np.asarray(base.select(sim.obs), dtype=np.intp)

    def values(self, obs: Obs, sim: Any) -> tuple[NDArray[np.intp], F64]:
        """The candidates and their estimated values ``Q`` per stream, ``(N, C)``."""
        obs = np.atleast_2d(obs)
        layout = ObsLayout.from_obs_dim(obs.shape[1])
        acc = layout.models(obs)[:, :, ACC].astype(np.float64)
        cands = self._candidates(sim)
        now = (acc * self._ceiling.p_met(obs, sim))[:, cands]
        if self.horizon == 1:
            return cands, now
        n = obs.shape[0]
        future = np.zeros((len(self.bases), n, cands.size))
        for _ in range(self.samples):
            root = future_copy(sim, self._rng, self.horizon)
            for j, k in enumerate(cands):
                first = copy.deepcopy(root)
                first.step(np.full(n, k, dtype=np.intp))
                for b, base in enumerate(self.bases):
                    c = copy.deepcopy(first) if b < len(self.bases) - 1 else first
                    total = np.zeros(n)
                    for _h in range(self.horizon - 1):
                        o = c.step(self._base_actions(base, c))
                        total += o.reward
                    future[b, :, j] += total
        return cands, now + future.max(axis=0) / self.samples

    def select_informed(self, obs: Obs, sim: Any) -> Actions:
        """The candidate of highest estimated value; ties → the faster one."""
        cands, q = self.values(obs, sim)
        mu, _ = sim.true_profiles()
        best = q.max(axis=1, keepdims=True)
        tie = np.where(q >= best - 1e-12, mu[cands][None, :], np.inf)
        return np.asarray(cands[tie.argmin(axis=1)], dtype=np.intp)

    def __repr__(self) -> str:
        return (
            f"RolloutLookahead(base={[getattr(b, 'name', b) for b in self.bases]!r}, "
            f"horizon={self.horizon}, samples={self.samples}, candidates={self.candidates!r})"
        )
