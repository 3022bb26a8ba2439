"""``modi/ModelSelection-v0``: the server's decision (ModiPick's problem)."""

from __future__ import annotations

import operator
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from numpy.typing import NDArray

from modi.envs.catalog import load_preset
from modi.envs.networks import NetworkModel
from modi.envs.pools import ModelPool
from modi.envs.simulator import ModelSelectionSim, StepOutcome
from modi.envs.vector import StreamVectorEnv
from modi.runtime.features import MODEL_FEATURES, REQUEST_FEATURES

DEFAULT_EPISODE_REQUESTS = 1000


def build_sim(
    pool: str | ModelPool = "modipick_table2",
    network: str | NetworkModel = "campus",
    num_envs: int = 1,
    **kwargs: Any,
) -> ModelSelectionSim:
    """A :class:`ModelSelectionSim` from preset names or objects."""
    pool_obj = load_preset("pool", pool) if isinstance(pool, str) else pool
    net_obj = load_preset("network", network) if isinstance(network, str) else network
    if not isinstance(pool_obj, ModelPool):
        raise TypeError(f"pool must be a preset name or a ModelPool, got {type(pool).__name__}")
    return ModelSelectionSim(pool_obj, net_obj, num_envs=num_envs, **kwargs)


def _spaces(sim: ModelSelectionSim) -> tuple[Any, Any]:
    obs = spaces.Box(-np.inf, np.inf, shape=(sim.obs_dim,), dtype=np.float32)
    return obs, spaces.Discrete(sim.num_models)


def outcome_info(o: StepOutcome, i: int) -> dict[str, Any]:
    """The info dict of stream ``i`` after a step (latency breakdown in ms)."""
    return {
        "model": int(o.model[i]),
        "sla_ms": float(o.sla_ms[i]),
        "t_input_ms": float(o.t_input_ms[i]),
        "queue_ms": float(o.queue_ms[i]),
        "exec_ms": float(o.exec_ms[i]),
        "t_output_ms": float(o.t_output_ms[i]),
        "e2e_ms": float(o.e2e_ms[i]),
        "met": bool(o.met[i]),
        "accuracy": float(o.accuracy[i]),
        "dropped": bool(o.dropped[i]),
        "slowdown": float(o.slowdown[i]),
    }


def _table(rows: tuple[tuple[str, str, str], ...]) -> str:
    return "\n".join(f"    | {i} | {n} | {u} | {d} |" for i, (n, u, d) in enumerate(rows))


class ModelSelectionEnv(gym.Env[NDArray[np.float32], np.int64]):
    """Choose the server model for each arriving inference request.

        ## Description
        A stream of image-classification requests from mobile clients reaches an inference server
        that hosts a pool of ``K`` models (ModiPick §3). For each request the server knows the SLA,
        how long the upload took and its model profiles, and must pick the model that answers
        correctly most often *within the SLA*. One step = one request.

        By default the server is the papers' idealised one: constant speed, no queue, Poisson
        arrivals. Options make it real (see Arguments): load spikes from co-located tenants
        (``spikes``: execution slows down by a factor during spike episodes), a finite FIFO
        queue (``queue_capacity``, ``workers``: a request waits behind earlier ones, so a slow
        model now delays later requests, and one that finds the queue full is dropped), and
        real arrival times (``arrivals``, e.g. the Azure LLM inference trace). With spikes or a
        queue on, requests are stepped in the order they reach the server.

        ## Action Space
        ``Discrete(K)``: index of the model in the pool (pool order, see ``env.unwrapped.pool``).

        ## Observation Space
        ``Box(-inf, inf, (R + 4K,), float32)``, built by :func:`modi.runtime.features.encode`
        (the same code the serving runtime uses). Request block, indices 0..R-1:

        | index | name | unit | meaning |
        |---|---|---|---|
    {request_table}

        then one row of 4 per model (model ``k`` at ``R + 4k``):

        | offset | name | unit | meaning |
        |---|---|---|---|
    {model_table}

        Never in an observation: the download time ``T_output`` and the realised execution time of
        this request (they lie in the future when the decision is made), nor future spikes.
        ``queue_len`` and ``slowdown`` are what the server sees when the request arrives: the
        requests in its system (waiting or executing), and an EWMA of realised / profiled mean
        execution time over executions completed by then; they are the constants 0 and 1 unless
        ``spikes`` or ``queue_capacity`` is set. With those set, the μ/σ profiles also learn an
        execution time only once it has completed. ``budget_ms`` is ModiPick's ``T_U`` and does
        not subtract the queue wait.

        ## Rewards
        The chosen model's top-1 accuracy (fraction) if ``e2e <= SLA``, else ``-miss_penalty``
        (0 by default): the mean reward is the *effective accuracy*. A request dropped by a full
        queue is a miss whatever the action.

        ## Starting State
        Profiles start at the pool's measured μ/σ; every client's network history is empty; the
        server's queue is empty and its observed slowdown 1; the spike process starts in its
        stationary distribution.

        ## Episode End
        Never terminates (a request stream); the registered id truncates after
        ``max_episode_steps`` (1000) requests.

        ## Info
        ``model, sla_ms, t_input_ms, queue_ms, exec_ms, t_output_ms, e2e_ms, met, accuracy,
        dropped, slowdown`` of the request just served (``e2e = t_input + queue + exec +
        t_output``; ``slowdown`` is the spike factor it executed under). A dropped request has
        ``exec_ms = 0``, ``accuracy = 0``, ``met = False`` and ``e2e = t_input + t_output`` (the
        rejection's round trip).

        ## Arguments
        ``pool`` (preset name or :class:`~modi.envs.pools.ModelPool`, default ``modipick_table2``),
        ``network`` (preset name or network model, default ``campus``), and every argument of
        :class:`~modi.envs.simulator.ModelSelectionSim` (``sla_ms``, ``sla_range_ms``,
        ``miss_penalty``, ``profile_alpha``, ``reprofile_every``, ...), among them the server
        options: ``spikes={{"mean_interval_s": 30, "mean_duration_s": 5, "slowdown": [2, 4]}}``
        (``None``: off), ``queue_capacity`` (``None``: no queue) and ``workers`` (default 1),
        ``arrivals`` (``"poisson"`` at ``arrival_rate_hz``, or ``{{"trace": PATH, "rate_hz":
        R}}``).

        ## Version History
        * v0: initial version (feature schema ``modi.model_selection`` v1).
    """

    metadata: dict[str, Any] = {"render_modes": []}  # noqa: RUF012 - gymnasium API

    def __init__(
        self,
        pool: str | ModelPool = "modipick_table2",
        network: str | NetworkModel = "campus",
        **kwargs: Any,
    ) -> None:
        self.sim = build_sim(pool, network, num_envs=1, **kwargs)
        self.pool = self.sim.pool
        self.observation_space, self.action_space = _spaces(self.sim)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[NDArray[np.float32], dict[str, Any]]:
        """Start a new stream; the same seed replays the same requests."""
        super().reset(seed=seed)
        sim_seed = int(self.np_random.integers(2**63)) if seed is None else seed
        obs = self.sim.reset(sim_seed)
        return obs[0].copy(), {}

    def step(
        self, action: np.int64 | int
    ) -> tuple[NDArray[np.float32], float, bool, bool, dict[str, Any]]:
        """Serve the current request with model ``action``."""
        try:
            a = operator.index(action)
        except TypeError:
            raise ValueError(f"action must be an integer model index, got {action!r}") from None
        reward, info = self.sim.step_single(a)
        return self.sim.obs[0].copy(), reward, False, False, info


ModelSelectionEnv.__doc__ = (ModelSelectionEnv.__doc__ or "").format(
    request_table=_table(REQUEST_FEATURES), model_table=_table(MODEL_FEATURES)
)


class ModelSelectionVectorEnv(StreamVectorEnv):
    """``num_envs`` request streams of :class:`ModelSelectionEnv`, batched natively in numpy.

    Reached with ``gymnasium.make_vec("modi/ModelSelection-v0", num_envs=N)``. Each stream is
    truncated every ``max_episode_steps`` requests (same-step autoreset: the server's learned
    state is reset; the final observation is in ``infos["final_obs"]``). Infos hold arrays of
    the latency breakdown of the requests just served.
    """

    def __init__(
        self,
        num_envs: int = 1,
        pool: str | ModelPool = "modipick_table2",
        network: str | NetworkModel = "campus",
        max_episode_steps: int = DEFAULT_EPISODE_REQUESTS,
        **kwargs: Any,
    ) -> None:
        self.sim = build_sim(pool, network, num_envs=num_envs, **kwargs)
        self.pool = self.sim.pool
        self._init_streams(num_envs, max_episode_steps)
        self.single_observation_space, self.single_action_space = _spaces(self.sim)
        self.observation_space = spaces.Box(
            -np.inf, np.inf, shape=(num_envs, self.sim.obs_dim), dtype=np.float32
        )
        self.action_space = spaces.MultiDiscrete(np.full(num_envs, self.sim.num_models))

    def step(
        self, actions: NDArray[np.int64]
    ) -> tuple[
        NDArray[np.float32],
        NDArray[np.float64],
        NDArray[np.bool_],
        NDArray[np.bool_],
        dict[str, Any],
    ]:
        """Serve the current request of every stream."""
        o = self.sim.step(actions)
        infos: dict[str, Any] = {
            "model": o.model,
            "sla_ms": o.sla_ms,
            "t_input_ms": o.t_input_ms,
            "queue_ms": o.queue_ms,
            "exec_ms": o.exec_ms,
            "t_output_ms": o.t_output_ms,
            "e2e_ms": o.e2e_ms,
            "met": o.met,
            "accuracy": o.accuracy,
            "dropped": o.dropped,
            "slowdown": o.slowdown,
        }
        return self._finish_step(o.reward, infos)
