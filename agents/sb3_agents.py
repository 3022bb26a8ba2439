"""Stable-Baselines3 agents (PPO, DQN, A2C) with pool-agnostic policies.

Three pieces:

* :class:`SimVecEnv` — an SB3 :class:`~stable_baselines3.common.vec_env.VecEnv` over the natively
  batched :class:`~modi.envs.simulator.ModelSelectionSim` (one numpy step for all streams; SB3
  does not accept a Gymnasium ``VectorEnv``). The request stream is endless: every
  ``episode_requests`` steps the adapter reports a *truncation* (``TimeLimit.truncated`` and
  ``terminal_observation`` in the infos, so SB3 bootstraps instead of treating it as a terminal
  state) purely for SB3's bookkeeping; the streams and the server's learned profiles go on.
* Pool-agnostic policies: the flat observation is split into the request block and the ``K``
  model rows (:func:`~modi.agents.scorers.split_obs`), every (request, model) pair becomes the
  pair features of :class:`~modi.agents.scorers.PairFeatures`, standardised by buffers fitted
  once on a warm-up batch and saved with the weights, and one *shared* MLP gives one number per
  model: a logit (PPO/A2C actor, ``Categorical`` over the models) or a Q-value (DQN). The PPO/A2C
  critic pools per-model embeddings (mean and max over the models). Nothing depends on ``K``:
  the same weights serve a pool of any size.
* :class:`PPOAgent`, :class:`DQNAgent`, :class:`A2CAgent` —
  :class:`~modi.agents.bandits.LearnedPolicy` subclasses: ``fit`` trains on a simulator,
  ``select`` is the deterministic argmax of :meth:`~_SB3Agent.scorer` (identical to
  ``model.predict(obs, deterministic=True)``), ``selector_module`` exports to ONNX, ``save``
  writes one file and :func:`load_sb3` reads it back.

Why the discount defaults to 0: without a server queue a choice does not change later requests
(the arrivals, SLAs and networks are drawn independently of the policy; only the server's
profile EWMA of the chosen model moves), so the problem is a contextual bandit and the best
policy maximises the immediate expected reward. A discount > 0 would only add the variance of
bootstrapped values to the gradient. With ``queue_capacity`` set, a slow model delays later
requests: then raise ``gamma`` (e.g. 0.5–0.9) so the agent sees that cost.
"""

from __future__ import annotations

import io
import itertools
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from gymnasium import spaces
from numpy.typing import NDArray
from stable_baselines3 import A2C, DQN, PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.type_aliases import Schedule
from stable_baselines3.common.utils import LinearSchedule
from stable_baselines3.common.vec_env import VecEnv
from stable_baselines3.common.vec_env.base_vec_env import VecEnvIndices, VecEnvStepReturn
from stable_baselines3.dqn.policies import DQNPolicy, QNetwork
from torch import nn
from tqdm.auto import tqdm

from modi.agents.bandits import LearnedPolicy
from modi.agents.scorers import NUM_PAIR_FEATURES, PairFeatures, split_obs
from modi.agents.training import TrainingHistory
from modi.runtime import features as F
from modi.runtime.metadata import RangeRecorder

if TYPE_CHECKING:
    from modi.envs.simulator import ModelSelectionSim

log = logging.getLogger(__name__)

#: Kinds this module saves and loads.
SB3_KINDS = ("ppo", "dqn", "a2c")
_ACTIVATIONS: dict[str, type[nn.Module]] = {"tanh": nn.Tanh, "relu": nn.ReLU}


# ---------------------------------------------------------------------------------- the adapter
class SimVecEnv(VecEnv):
    """SB3 ``VecEnv`` over a :class:`~modi.envs.simulator.ModelSelectionSim` (all its streams).

    Args:
        sim: the batched simulator; its ``num_envs`` streams are SB3's environments.
        episode_requests: report a truncation every this many requests (SB3 bookkeeping only:
            the stream and the server state go on, the ``terminal_observation`` is the next
            request, which is also the observation returned).
        recorder: folds every observation handed to SB3 into these training ranges.

    Observations are ``float32`` ``(num_envs, R + P*K)``, rewards ``float32``, actions model
    indices. The adapter also sums reward, SLA attainment and effective accuracy of the
    requests it served (:meth:`pop_stats`), which is what the training curve reports.
    """

    def __init__(
        self,
        sim: ModelSelectionSim,
        episode_requests: int = 1000,
        recorder: RangeRecorder | None = None,
    ) -> None:
        if episode_requests < 1:
            raise ValueError(f"episode_requests must be >= 1, got {episode_requests}")
        self.sim = sim
        self.recorder = recorder
        self.episode_requests = int(episode_requests)
        obs_space = spaces.Box(-np.inf, np.inf, shape=(sim.obs_dim,), dtype=np.float32)
        super().__init__(sim.num_envs, obs_space, spaces.Discrete(sim.num_models))
        self._actions: NDArray[np.intp] | None = None
        self._elapsed = 0
        self._ep_return = np.zeros(sim.num_envs)
        self._t0 = time.perf_counter()
        self._sums = np.zeros(3)  # reward, met, effective accuracy
        self._count = 0

    # -- VecEnv API ---------------------------------------------------------------------------
    def reset(self) -> NDArray[np.float32]:
        """Restart every stream from the seed set by :meth:`seed` (random if none)."""
        seed = self._seeds[0]
        if seed is None:
            seed = int(np.random.default_rng().integers(2**63))
        obs = self.sim.reset(int(seed))
        self._reset_seeds()
        self._reset_options()
        self._elapsed = 0
        self._ep_return[:] = 0.0
        if self.recorder is not None:
            self.recorder.update(obs)
        return obs.copy()

    def step_async(self, actions: NDArray[Any]) -> None:
        """Remember the actions (one model index per stream)."""
        self._actions = np.asarray(actions).reshape(-1).astype(np.intp, copy=False)

    def step_wait(self) -> VecEnvStepReturn:
        """Serve every stream's current request with the remembered actions."""
        if self._actions is None:
            raise RuntimeError("step_wait() called without step_async(actions)")
        o = self.sim.step(self._actions)
        self._actions = None
        obs = self.sim.obs.copy()
        if self.recorder is not None:
            self.recorder.update(obs)
        reward = o.reward.astype(np.float32)
        self._ep_return += o.reward
        self._sums += (
            float(o.reward.sum()),
            float(o.met.sum()),
            float((o.accuracy * o.met).sum()),
        )
        self._count += self.num_envs
        self._elapsed += 1
        infos: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
        if self._elapsed >= self.episode_requests:
            dones = np.ones(self.num_envs, dtype=bool)
            t = round(time.perf_counter() - self._t0, 6)
            for i, info in enumerate(infos):
                info["terminal_observation"] = obs[i]
                info["TimeLimit.truncated"] = True
                info["episode"] = {"r": float(self._ep_return[i]), "l": self._elapsed, "t": t}
            self._elapsed = 0
            self._ep_return[:] = 0.0
        else:
            dones = np.zeros(self.num_envs, dtype=bool)
        return obs, reward, dones, infos

    def close(self) -> None:
        """Nothing to release."""

    def _count_indices(self, indices: VecEnvIndices) -> int:
        if indices is None:
            return self.num_envs
        if isinstance(indices, int):
            return 1
        return len(list(indices))

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        """An attribute of the (shared) simulator, once per stream."""
        value = None if attr_name == "render_mode" else getattr(self.sim, attr_name)
        return [value] * self._count_indices(indices)

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        """Set an attribute of the simulator (all streams share it)."""
        if self._count_indices(indices) != self.num_envs:
            raise ValueError("the streams share one simulator: set attributes on all of them")
        setattr(self.sim, attr_name, value)

    def env_method(
        self,
        method_name: str,
        *method_args: Any,
        indices: VecEnvIndices = None,
        **method_kwargs: Any,
    ) -> list[Any]:
        """Not supported: the streams are one batched simulator; call ``adapter.sim`` directly."""
        raise NotImplementedError(
            f"env_method({method_name!r}): the streams share one batched simulator; "
            "call the method on SimVecEnv.sim instead"
        )

    def env_is_wrapped(self, wrapper_class: type[Any], indices: VecEnvIndices = None) -> list[bool]:
        """No stream is wrapped."""
        return [False] * self._count_indices(indices)

    # -- statistics ---------------------------------------------------------------------------
    @property
    def stats_count(self) -> int:
        """Requests served since the last :meth:`pop_stats`."""
        return self._count

    def pop_stats(self) -> dict[str, float]:
        """Mean reward, attainment and effective accuracy since the last call; then reset."""
        c = max(1, self._count)
        row = {
            "reward": float(self._sums[0] / c),
            "attainment": float(self._sums[1] / c),
            "effective_accuracy": float(self._sums[2] / c),
        }
        self._sums[:] = 0.0
        self._count = 0
        return row


# ------------------------------------------------------------------------- pool-agnostic nets
def _mlp(in_dim: int, arch: Sequence[int], activation: type[nn.Module]) -> tuple[nn.Module, int]:
    """Hidden layers ``in_dim -> arch[0] -> ...`` with ``activation``; returns (module, out)."""
    mods: list[nn.Module] = []
    dims = [in_dim, *arch]
    for a, b in itertools.pairwise(dims):
        lin = nn.Linear(a, b)
        nn.init.orthogonal_(lin.weight, gain=float(np.sqrt(2)))
        nn.init.zeros_(lin.bias)
        mods += [lin, activation()]
    return nn.Sequential(*mods), dims[-1]


def _head(in_dim: int, out_dim: int, gain: float) -> nn.Linear:
    lin = nn.Linear(in_dim, out_dim)
    nn.init.orthogonal_(lin.weight, gain=gain)
    nn.init.zeros_(lin.bias)
    return lin


class PairEncoder(nn.Module):
    """Pair features ``(N, K, F)`` standardised with buffers that are part of the saved policy.

    The buffers are fitted once (:meth:`fit`) on a warm-up batch and then frozen; a feature that
    was constant in that batch (e.g. the queue length without a server queue) keeps its natural
    scale (std 1) instead of being blown up.
    """

    def __init__(self) -> None:
        super().__init__()
        self.pairs = PairFeatures()
        self.register_buffer("norm_mean", torch.zeros(NUM_PAIR_FEATURES))
        self.register_buffer("norm_std", torch.ones(NUM_PAIR_FEATURES))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    def forward(self, request: torch.Tensor, models: torch.Tensor) -> torch.Tensor:
        """Standardised pair features."""
        return (self.pairs(request, models) - self.norm_mean) / self.norm_std

    @torch.no_grad()
    def fit(self, request: torch.Tensor, models: torch.Tensor) -> None:
        """Set mean/std from a batch of observations (over every (request, model) pair)."""
        f = self.pairs(request, models).reshape(-1, NUM_PAIR_FEATURES)
        std = f.std(0)
        self.norm_mean.copy_(f.mean(0))  # type: ignore[operator]
        self.norm_std.copy_(torch.where(std < 1e-3, torch.ones_like(std), std))  # type: ignore[operator]
        self.fitted.fill_(True)  # type: ignore[operator]


class PerModelScorer(nn.Module):
    """``(request (N, R), models (N, K, P)) -> (N, K)``: one shared MLP applied to every model.

    The deterministic decision of every agent here is the argmax of this module's output
    (actor logits for PPO/A2C, Q-values for DQN). Plain tensor ops only: it exports to ONNX
    with dynamic batch and model dimensions.
    """

    def __init__(
        self, arch: Sequence[int], activation: type[nn.Module], out_gain: float = 1.0
    ) -> None:
        super().__init__()
        self.encoder = PairEncoder()
        self.trunk, width = _mlp(NUM_PAIR_FEATURES, arch, activation)
        self.head = _head(width, 1, out_gain)

    def embed(self, request: torch.Tensor, models: torch.Tensor) -> torch.Tensor:
        """Per-model embeddings ``(N, K, H)``."""
        return self.trunk(self.encoder(request, models))

    def forward(self, request: torch.Tensor, models: torch.Tensor) -> torch.Tensor:
        """Scores ``(N, K)``."""
        return self.head(self.embed(request, models)).squeeze(-1)


class PooledCritic(nn.Module):
    """State value ``(N, 1)`` from per-model embeddings pooled over the models (mean and max)."""

    def __init__(self, arch: Sequence[int], activation: type[nn.Module]) -> None:
        super().__init__()
        self.encoder = PairEncoder()
        self.trunk, width = _mlp(NUM_PAIR_FEATURES, arch, activation)
        self.head = _head(2 * width, 1, 1.0)

    def forward(self, request: torch.Tensor, models: torch.Tensor) -> torch.Tensor:
        """Values ``(N, 1)``."""
        e = self.trunk(self.encoder(request, models))
        return self.head(torch.cat([e.mean(dim=1), e.amax(dim=1)], dim=-1))


class FlatScorer(nn.Module):
    """Flat observations ``(N, R + P*K) -> (N, K)`` through a :class:`PerModelScorer`."""

    def __init__(self, scorer: PerModelScorer) -> None:
        super().__init__()
        self.scorer = scorer

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """Scores ``(N, K)``."""
        return self.scorer(*split_obs(obs))


class ActorCriticNet(nn.Module):
    """Replaces SB3's ``MlpExtractor``: latent_pi *is* the per-model logits ``(N, K)`` and
    latent_vf the value ``(N, 1)`` (the policy's ``action_net``/``value_net`` are identities)."""

    latent_dim_pi = 1  # only read by SB3 to size the (discarded) default heads
    latent_dim_vf = 1

    def __init__(
        self, pi_arch: Sequence[int], vf_arch: Sequence[int], activation: type[nn.Module]
    ) -> None:
        super().__init__()
        self.actor = PerModelScorer(pi_arch, activation, out_gain=0.01)
        self.critic = PooledCritic(vf_arch, activation)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits (N, K), value (N, 1))``."""
        return self.forward_actor(features), self.forward_critic(features)

    def forward_actor(self, features: torch.Tensor) -> torch.Tensor:
        """Per-model logits."""
        return self.actor(*split_obs(features))

    def forward_critic(self, features: torch.Tensor) -> torch.Tensor:
        """State value."""
        return self.critic(*split_obs(features))


def _check_spaces(observation_space: spaces.Space[Any], action_space: spaces.Space[Any]) -> None:
    if not isinstance(action_space, spaces.Discrete):
        raise ValueError(f"pool-agnostic policies need a Discrete action space, got {action_space}")
    k = int(action_space.n)
    shape = observation_space.shape
    if shape is None or len(shape) != 1 or shape[0] != F.obs_dim(k):
        raise ValueError(
            f"observation space {shape} does not fit {k} models: expected ({F.obs_dim(k)},) "
            f"= R + P*K with R={F.R}, P={F.P}"
        )


class PoolAgnosticActorCriticPolicy(ActorCriticPolicy):
    """PPO/A2C policy: ``Categorical`` over shared per-model logits, pooled critic.

    ``net_arch`` is the hidden sizes of the per-model MLPs: a list (actor and critic alike) or
    ``{"pi": [...], "vf": [...]}``. Weights are initialised here (orthogonal; small actor head),
    so SB3's ``ortho_init`` is turned off.
    """

    def __init__(
        self,
        observation_space: spaces.Space[Any],
        action_space: spaces.Space[Any],
        lr_schedule: Schedule,
        *args: Any,
        **kwargs: Any,
    ) -> None:
        _check_spaces(observation_space, action_space)
        kwargs["ortho_init"] = False
        super().__init__(observation_space, action_space, lr_schedule, *args, **kwargs)

    def _build_mlp_extractor(self) -> None:
        arch: Any = self.net_arch
        if isinstance(arch, dict):
            pi, vf = list(arch.get("pi", [])), list(arch.get("vf", []))
        else:
            pi = vf = list(arch)
        self.mlp_extractor = ActorCriticNet(pi, vf, self.activation_fn)  # type: ignore[assignment]

    def _build(self, lr_schedule: Schedule) -> None:
        super()._build(lr_schedule)
        self.action_net = nn.Identity()
        self.value_net = nn.Identity()  # type: ignore[assignment]
        self.optimizer = self.optimizer_class(  # type: ignore[call-arg]
            self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs
        )

    def scorer(self) -> PerModelScorer:
        """The actor: ``(request, models) -> logits (N, K)``."""
        net = self.mlp_extractor
        assert isinstance(net, ActorCriticNet)
        return net.actor


class PoolAgnosticQNetwork(QNetwork):
    """DQN Q-network: one Q-value per model from a shared per-model MLP."""

    def __init__(
        self,
        observation_space: spaces.Space[Any],
        action_space: spaces.Discrete,
        features_extractor: Any,
        features_dim: int,
        net_arch: list[int] | None = None,
        activation_fn: type[nn.Module] = nn.ReLU,
        normalize_images: bool = True,
    ) -> None:
        _check_spaces(observation_space, action_space)
        arch = [64, 64] if net_arch is None else list(net_arch)
        super().__init__(
            observation_space,
            action_space,
            features_extractor,
            features_dim,
            arch,
            activation_fn,
            normalize_images,
        )
        self.q_net = FlatScorer(PerModelScorer(arch, activation_fn))  # type: ignore[assignment]


class PoolAgnosticDQNPolicy(DQNPolicy):
    """DQN policy whose online and target networks are :class:`PoolAgnosticQNetwork`."""

    def make_q_net(self) -> PoolAgnosticQNetwork:
        """A pool-agnostic Q-network."""
        net_args = self._update_features_extractor(self.net_args, features_extractor=None)
        return PoolAgnosticQNetwork(**net_args).to(self.device)

    def scorer(self) -> PerModelScorer:
        """The online Q-network: ``(request, models) -> Q-values (N, K)``."""
        flat = self.q_net.q_net
        assert isinstance(flat, FlatScorer)
        return flat.scorer


# ----------------------------------------------------------------------------------- training
class _ProgressCallback(BaseCallback):
    """Progress bar, training curve and the user's ``callback(requests_seen, row)``."""

    def __init__(
        self,
        venv: SimVecEnv,
        total: int,
        log_every: int,
        desc: str,
        progress: bool,
        user_callback: Callable[[int, dict[str, float]], None] | None,
    ) -> None:
        super().__init__()
        self.venv = venv
        self.total = total
        self.log_every = log_every
        self.desc = desc
        self.show = progress
        self.user_callback = user_callback
        self.history = TrainingHistory()
        self.seen = 0
        self.bar: Any = None
        self.t0 = time.perf_counter()

    def _on_training_start(self) -> None:
        self.t0 = time.perf_counter()
        self.venv.pop_stats()
        self.bar = tqdm(total=self.total, desc=self.desc, disable=not self.show, unit="req")

    def _on_step(self) -> bool:
        n = self.venv.num_envs
        self.seen += n
        self.bar.update(n)
        if self.venv.stats_count >= self.log_every:
            self._log_row()
        return True

    def _log_row(self) -> None:
        row = self.venv.pop_stats()
        h = self.history
        h.requests.append(self.seen)
        h.reward.append(row["reward"])
        h.attainment.append(row["attainment"])
        h.effective_accuracy.append(row["effective_accuracy"])
        h.seconds.append(time.perf_counter() - self.t0)
        self.bar.set_postfix(eff_acc=f"{row['effective_accuracy']:.3f}")
        if self.user_callback is not None:
            self.user_callback(self.seen, row)

    def _on_training_end(self) -> None:
        if self.venv.stats_count > 0:
            self._log_row()
        self.bar.close()


def _positive_int(kind: str, name: str, v: Any, minimum: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < minimum:
        raise ValueError(f"{kind}.{name} must be an integer >= {minimum}, got {v!r}")
    return int(v)


def _in_range(kind: str, name: str, v: Any, lo: float, hi: float, lo_open: bool = False) -> float:
    ok = isinstance(v, (int, float, np.floating)) and not isinstance(v, bool)
    if ok:
        x = float(v)
        ok = (lo < x if lo_open else lo <= x) and x <= hi
    if not ok:
        lb = "(" if lo_open else "["
        raise ValueError(f"{kind}.{name} must be a number in {lb}{lo}, {hi}], got {v!r}")
    return float(v)


class _SB3Agent(LearnedPolicy):
    """Shared machinery of the SB3 agents (see the module docstring)."""

    algo: ClassVar[type[BaseAlgorithm]]

    def __init__(
        self,
        hparams: dict[str, Any],
        miss_penalty: float,
        seed: int | None,
    ) -> None:
        super().__init__(miss_penalty, seed)
        k = self.kind
        _in_range(k, "learning_rate", hparams["learning_rate"], 0.0, 1.0, lo_open=True)
        _in_range(k, "gamma", hparams["gamma"], 0.0, 1.0)
        arch = hparams["net_arch"]
        if isinstance(arch, (str, bytes)) or not isinstance(arch, Sequence) or not arch:
            raise ValueError(f"{k}.net_arch must be a non-empty list of layer widths, got {arch!r}")
        hparams["net_arch"] = [_positive_int(k, "net_arch", w) for w in arch]
        if hparams["activation"] not in _ACTIVATIONS:
            act = hparams["activation"]
            raise ValueError(f"{k}.activation must be one of {sorted(_ACTIVATIONS)}, got {act!r}")
        if hparams["lr_schedule"] not in ("constant", "linear"):
            raise ValueError(
                f"{k}.lr_schedule must be 'constant' or 'linear', got {hparams['lr_schedule']!r}"
            )
        _positive_int(k, "episode_requests", hparams["episode_requests"])
        _positive_int(k, "warmup_requests", hparams["warmup_requests"])
        _positive_int(k, "log_every", hparams["log_every"])
        if hparams["torch_threads"] is not None:
            _positive_int(k, "torch_threads", hparams["torch_threads"])
        self.hparams = hparams
        self.seed = seed
        self.model: BaseAlgorithm | None = None

    # -- SB3 model ----------------------------------------------------------------------------
    def _learning_rate(self) -> float | Schedule:
        lr = float(self.hparams["learning_rate"])
        if self.hparams["lr_schedule"] == "linear":
            return LinearSchedule(lr, 0.1 * lr, 1.0)
        return lr

    def _policy_kwargs(self) -> dict[str, Any]:
        return {
            "net_arch": list(self.hparams["net_arch"]),
            "activation_fn": _ACTIVATIONS[self.hparams["activation"]],
        }

    def _make_model(self, venv: SimVecEnv, seed: int) -> BaseAlgorithm:
        raise NotImplementedError

    def _ensure_model(self, venv: SimVecEnv, seed: int) -> bool:
        """Build (or re-target) the SB3 model for ``venv``; True if it starts from scratch."""
        old = self.model
        if (
            old is not None
            and old.n_envs == venv.num_envs
            and old.observation_space == venv.observation_space
            and old.action_space == venv.action_space
        ):
            old.set_env(venv)
            old.set_random_seed(seed)
            return False
        model = self._make_model(venv, seed)
        if old is not None:  # another pool or stream count: same weights, new SB3 shell
            model.policy.load_state_dict(old.policy.state_dict())
        self.model = model
        return old is None

    def _policy(self) -> ActorCriticPolicy | DQNPolicy:
        if self.model is None:
            raise RuntimeError(
                f"{self.name} has no trained policy yet: call fit(sim, ...) or load_sb3(path)"
            )
        return self.model.policy  # type: ignore[return-value]

    @torch.no_grad()
    def _fit_normalisation(self, sim: ModelSelectionSim, seed: int) -> None:
        """Fit the pair-feature standardisation of every encoder on a warm-up batch drawn with
        uniformly random choices (a stream seeded apart from the training stream)."""
        encoders = [m for m in self._policy().modules() if isinstance(m, PairEncoder)]
        if all(bool(e.fitted) for e in encoders):
            return
        n = sim.num_envs
        steps = max(1, -(-int(self.hparams["warmup_requests"]) // n))
        rng = np.random.default_rng(seed)
        obs = [sim.reset(int(rng.integers(2**63))).copy()]
        for _ in range(steps - 1):
            sim.step(rng.integers(0, sim.num_models, size=n))
            obs.append(sim.obs.copy())
        batch = np.concatenate(obs)
        self.record_observations(batch)
        req, models = split_obs(torch.from_numpy(batch))
        for e in encoders:
            e.fit(req, models)

    def fit(
        self,
        sim: ModelSelectionSim,
        total_requests: int,
        seed: int,
        progress: bool = True,
        callback: Callable[[int, dict[str, float]], None] | None = None,
    ) -> TrainingHistory:
        """Train on ``total_requests`` requests of ``sim`` (all its streams together).

        A second call continues training (on another pool too: the weights do not depend on
        ``K``). SB3 collects whole rollouts, so it may serve a little more than asked.
        """
        if total_requests < 1:
            raise ValueError(f"total_requests must be >= 1, got {total_requests}")
        venv = SimVecEnv(sim, int(self.hparams["episode_requests"]), self.ranges)
        fresh = self._ensure_model(venv, seed)
        self._fit_normalisation(sim, seed + 1)
        if isinstance(self.model, DQN):  # the target network starts from the fitted buffers
            self.model.q_net_target.load_state_dict(self.model.q_net.state_dict())
        cb = _ProgressCallback(
            venv,
            total_requests,
            int(self.hparams["log_every"]),
            f"train {self.name}",
            progress,
            callback,
        )
        assert self.model is not None
        threads = torch.get_num_threads()
        if self.hparams["torch_threads"] is not None:
            torch.set_num_threads(int(self.hparams["torch_threads"]))
        try:
            self.model.learn(total_requests, callback=cb, reset_num_timesteps=fresh)
        finally:
            torch.set_num_threads(threads)
        self._policy().set_training_mode(False)
        h = cb.history
        log.info(
            "trained %s on %d requests in %.1f s",
            self.name,
            cb.seen,
            h.seconds[-1] if h.seconds else 0,
        )
        return h

    # -- decisions ----------------------------------------------------------------------------
    def scorer(self) -> torch.nn.Module:
        """``(request (N, R), models (N, K, P)) -> scores (N, K)``; argmax = the decision."""
        pol = self._policy()
        assert isinstance(pol, (PoolAgnosticActorCriticPolicy, PoolAgnosticDQNPolicy))
        return pol.scorer().eval()

    def explore(self, obs: NDArray[np.float32]) -> NDArray[np.intp]:
        """A stochastic choice as while training (policy sample / ε-greedy)."""
        assert self.model is not None
        a, _ = self.model.predict(np.atleast_2d(obs), deterministic=False)
        return np.asarray(a, dtype=np.intp)

    def observe(self, obs: Any, actions: Any, met: Any) -> None:
        """SB3 agents learn only through :meth:`fit`."""
        raise NotImplementedError(f"{self.name} learns through fit(), not observe()")

    # -- persistence --------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Hyper-parameters and the SB3 model (its zip file, as bytes)."""
        buf = io.BytesIO()
        if self.model is not None:
            self.model.save(buf)
        return {
            "hparams": dict(self.hparams),
            "miss_penalty": self.miss_penalty,
            "seed": self.seed,
            "sb3_zip": buf.getvalue() if self.model is not None else None,
        }


class PPOAgent(_SB3Agent):
    """PPO with the pool-agnostic actor-critic (:class:`PoolAgnosticActorCriticPolicy`).

    Args:
        learning_rate: Adam step size (decayed to 10 % with ``lr_schedule="linear"``).
        n_steps: steps per stream per rollout (a rollout is ``n_steps * num_envs`` requests).
        batch_size: minibatch size (requests).
        n_epochs: passes over each rollout.
        gamma: discount; 0 because the problem is a contextual bandit (module docstring).
        gae_lambda: GAE λ (irrelevant at ``gamma=0``).
        clip_range: PPO ratio clip.
        ent_coef: entropy bonus.
        vf_coef: value-loss weight.
        max_grad_norm: gradient clipping.
        net_arch: hidden widths of the shared per-model MLPs (actor and critic).
        activation: ``"relu"`` or ``"tanh"`` (``tanh`` learns no better here and costs ~25x
            more than ``relu`` in this CPU build of torch: it dominated the training time).
        lr_schedule: ``"constant"`` or ``"linear"``.
        episode_requests: truncation period of the adapter (:class:`SimVecEnv`).
        warmup_requests: requests used to fit the feature standardisation.
        log_every: requests per training-curve row / callback call.
        torch_threads: torch intra-op threads while training (restored after ``fit``); ``None``
            leaves torch's setting. The per-model matrices are small: one thread is as fast
            on an idle machine and several times faster on a busy one (2 threads on a loaded
            2-core VM trained 5-10x slower).
        miss_penalty, seed: as :class:`~modi.agents.bandits.LearnedPolicy`.
    """

    name = "ppo"
    kind = "ppo"
    algo = PPO

    def __init__(
        self,
        learning_rate: float = 1e-3,
        n_steps: int = 32,
        batch_size: int = 512,
        n_epochs: int = 4,
        gamma: float = 0.0,
        gae_lambda: float = 0.95,
        clip_range: float = 0.2,
        ent_coef: float = 0.0,
        vf_coef: float = 0.5,
        max_grad_norm: float = 0.5,
        net_arch: Sequence[int] = (64, 64),
        activation: str = "relu",
        lr_schedule: str = "linear",
        episode_requests: int = 1000,
        warmup_requests: int = 4096,
        log_every: int = 20_000,
        torch_threads: int | None = 1,
        miss_penalty: float = 0.0,
        seed: int | None = None,
    ) -> None:
        k = self.kind
        hp: dict[str, Any] = {
            "learning_rate": learning_rate,
            "n_steps": _positive_int(k, "n_steps", n_steps),
            "batch_size": _positive_int(k, "batch_size", batch_size, 2),
            "n_epochs": _positive_int(k, "n_epochs", n_epochs),
            "gamma": gamma,
            "gae_lambda": _in_range(k, "gae_lambda", gae_lambda, 0.0, 1.0),
            "clip_range": _in_range(k, "clip_range", clip_range, 0.0, 1.0, lo_open=True),
            "ent_coef": _in_range(k, "ent_coef", ent_coef, 0.0, 1.0),
            "vf_coef": _in_range(k, "vf_coef", vf_coef, 0.0, 10.0),
            "max_grad_norm": _in_range(k, "max_grad_norm", max_grad_norm, 0.0, 1e6, lo_open=True),
            "net_arch": net_arch,
            "activation": activation,
            "lr_schedule": lr_schedule,
            "episode_requests": episode_requests,
            "warmup_requests": warmup_requests,
            "log_every": log_every,
            "torch_threads": torch_threads,
        }
        super().__init__(hp, miss_penalty, seed)

    def _make_model(self, venv: SimVecEnv, seed: int) -> BaseAlgorithm:
        h = self.hparams
        return PPO(
            PoolAgnosticActorCriticPolicy,
            venv,
            learning_rate=self._learning_rate(),
            n_steps=int(h["n_steps"]),
            batch_size=min(int(h["batch_size"]), int(h["n_steps"]) * venv.num_envs),
            n_epochs=int(h["n_epochs"]),
            gamma=float(h["gamma"]),
            gae_lambda=float(h["gae_lambda"]),
            clip_range=float(h["clip_range"]),
            ent_coef=float(h["ent_coef"]),
            vf_coef=float(h["vf_coef"]),
            max_grad_norm=float(h["max_grad_norm"]),
            policy_kwargs=self._policy_kwargs(),
            seed=seed,
            device="cpu",
            verbose=0,
        )


class A2CAgent(_SB3Agent):
    """A2C with the pool-agnostic actor-critic (:class:`PoolAgnosticActorCriticPolicy`).

    Args:
        learning_rate: step size (Adam by default; RMSprop with ``use_rms_prop=True``).
        n_steps: steps per stream per update (an update sees ``n_steps * num_envs`` requests).
        gamma, gae_lambda, ent_coef, vf_coef, max_grad_norm: as :class:`PPOAgent`.
        use_rms_prop: RMSprop (SB3's default for A2C; learned slower here) instead of Adam.
        normalize_advantage: standardise advantages per update.
        net_arch, activation, lr_schedule, episode_requests, warmup_requests, log_every,
        torch_threads, miss_penalty, seed: as :class:`PPOAgent`.
    """

    name = "a2c"
    kind = "a2c"
    algo = A2C

    def __init__(
        self,
        learning_rate: float = 3e-3,
        n_steps: int = 8,
        gamma: float = 0.0,
        gae_lambda: float = 1.0,
        ent_coef: float = 0.0,
        vf_coef: float = 0.5,
        max_grad_norm: float = 0.5,
        use_rms_prop: bool = False,
        normalize_advantage: bool = True,
        net_arch: Sequence[int] = (64, 64),
        activation: str = "relu",
        lr_schedule: str = "linear",
        episode_requests: int = 1000,
        warmup_requests: int = 4096,
        log_every: int = 20_000,
        torch_threads: int | None = 1,
        miss_penalty: float = 0.0,
        seed: int | None = None,
    ) -> None:
        k = self.kind
        for name, v in (
            ("use_rms_prop", use_rms_prop),
            ("normalize_advantage", normalize_advantage),
        ):
            if not isinstance(v, bool):
                raise ValueError(f"{k}.{name} must be true or false, got {v!r}")
        hp: dict[str, Any] = {
            "learning_rate": learning_rate,
            "n_steps": _positive_int(k, "n_steps", n_steps),
            "gamma": gamma,
            "gae_lambda": _in_range(k, "gae_lambda", gae_lambda, 0.0, 1.0),
            "ent_coef": _in_range(k, "ent_coef", ent_coef, 0.0, 1.0),
            "vf_coef": _in_range(k, "vf_coef", vf_coef, 0.0, 10.0),
            "max_grad_norm": _in_range(k, "max_grad_norm", max_grad_norm, 0.0, 1e6, lo_open=True),
            "use_rms_prop": use_rms_prop,
            "normalize_advantage": normalize_advantage,
            "net_arch": net_arch,
            "activation": activation,
            "lr_schedule": lr_schedule,
            "episode_requests": episode_requests,
            "warmup_requests": warmup_requests,
            "log_every": log_every,
            "torch_threads": torch_threads,
        }
        super().__init__(hp, miss_penalty, seed)

    def _make_model(self, venv: SimVecEnv, seed: int) -> BaseAlgorithm:
        h = self.hparams
        return A2C(
            PoolAgnosticActorCriticPolicy,
            venv,
            learning_rate=self._learning_rate(),
            n_steps=int(h["n_steps"]),
            gamma=float(h["gamma"]),
            gae_lambda=float(h["gae_lambda"]),
            ent_coef=float(h["ent_coef"]),
            vf_coef=float(h["vf_coef"]),
            max_grad_norm=float(h["max_grad_norm"]),
            use_rms_prop=bool(h["use_rms_prop"]),
            normalize_advantage=bool(h["normalize_advantage"]),
            policy_kwargs=self._policy_kwargs(),
            seed=seed,
            device="cpu",
            verbose=0,
        )


class DQNAgent(_SB3Agent):
    """DQN with per-model Q-values from a shared MLP (:class:`PoolAgnosticDQNPolicy`).

    Args:
        learning_rate: Adam step size.
        buffer_size: replay buffer capacity (requests).
        learning_starts: requests collected before the first update.
        batch_size: minibatch size.
        train_freq: vector steps (``num_envs`` requests each) between updates.
        gradient_steps: gradient steps per update.
        target_update_interval: requests between target-network syncs (irrelevant at
            ``gamma=0``, where the target is the reward).
        exploration_fraction: share of training over which ε decays.
        exploration_initial_eps, exploration_final_eps: ε-greedy schedule.
        gamma: discount (0: the Q-value is the expected reward, a bandit; module docstring).
        max_grad_norm: gradient clipping.
        net_arch, activation, lr_schedule, episode_requests, warmup_requests, log_every,
        torch_threads, miss_penalty, seed: as :class:`PPOAgent`.
    """

    name = "dqn"
    kind = "dqn"
    algo = DQN

    def __init__(
        self,
        learning_rate: float = 3e-3,
        buffer_size: int = 200_000,
        learning_starts: int = 4096,
        batch_size: int = 1024,
        train_freq: int = 1,
        gradient_steps: int = 1,
        target_update_interval: int = 10_000,
        exploration_fraction: float = 0.3,
        exploration_initial_eps: float = 0.3,
        exploration_final_eps: float = 0.02,
        gamma: float = 0.0,
        max_grad_norm: float = 10.0,
        net_arch: Sequence[int] = (64, 64),
        activation: str = "relu",
        lr_schedule: str = "linear",
        episode_requests: int = 1000,
        warmup_requests: int = 4096,
        log_every: int = 20_000,
        torch_threads: int | None = 1,
        miss_penalty: float = 0.0,
        seed: int | None = None,
    ) -> None:
        k = self.kind
        hp: dict[str, Any] = {
            "learning_rate": learning_rate,
            "buffer_size": _positive_int(k, "buffer_size", buffer_size),
            "learning_starts": _positive_int(k, "learning_starts", learning_starts, 0),
            "batch_size": _positive_int(k, "batch_size", batch_size),
            "train_freq": _positive_int(k, "train_freq", train_freq),
            "gradient_steps": _positive_int(k, "gradient_steps", gradient_steps),
            "target_update_interval": _positive_int(
                k, "target_update_interval", target_update_interval
            ),
            "exploration_fraction": _in_range(
                k, "exploration_fraction", exploration_fraction, 0.0, 1.0
            ),
            "exploration_initial_eps": _in_range(
                k, "exploration_initial_eps", exploration_initial_eps, 0.0, 1.0
            ),
            "exploration_final_eps": _in_range(
                k, "exploration_final_eps", exploration_final_eps, 0.0, 1.0
            ),
            "gamma": gamma,
            "max_grad_norm": _in_range(k, "max_grad_norm", max_grad_norm, 0.0, 1e6, lo_open=True),
            "net_arch": net_arch,
            "activation": activation,
            "lr_schedule": lr_schedule,
            "episode_requests": episode_requests,
            "warmup_requests": warmup_requests,
            "log_every": log_every,
            "torch_threads": torch_threads,
        }
        if hp["exploration_final_eps"] > hp["exploration_initial_eps"]:
            raise ValueError(
                f"{k}.exploration_final_eps must be <= exploration_initial_eps, got "
                f"{exploration_final_eps} > {exploration_initial_eps}"
            )
        super().__init__(hp, miss_penalty, seed)

    def _make_model(self, venv: SimVecEnv, seed: int) -> BaseAlgorithm:
        h = self.hparams
        return DQN(
            PoolAgnosticDQNPolicy,
            venv,
            learning_rate=self._learning_rate(),
            buffer_size=int(h["buffer_size"]),
            learning_starts=int(h["learning_starts"]),
            batch_size=int(h["batch_size"]),
            train_freq=int(h["train_freq"]),
            gradient_steps=int(h["gradient_steps"]),
            target_update_interval=max(int(h["target_update_interval"]), venv.num_envs),
            exploration_fraction=float(h["exploration_fraction"]),
            exploration_initial_eps=float(h["exploration_initial_eps"]),
            exploration_final_eps=float(h["exploration_final_eps"]),
            gamma=float(h["gamma"]),
            max_grad_norm=float(h["max_grad_norm"]),
            policy_kwargs=self._policy_kwargs(),
            seed=seed,
            device="cpu",
            verbose=0,
        )


SB3_AGENTS: dict[str, type[_SB3Agent]] = {"ppo": PPOAgent, "dqn": DQNAgent, "a2c": A2CAgent}


def load_sb3(path_or_state: str | Path | dict[str, Any]) -> _SB3Agent:
    """Rebuild an agent written by ``save`` (a path, or the dict ``torch.load`` returned)."""
    if isinstance(path_or_state, dict):
        st, where = path_or_state, "state"
    else:
        p = Path(path_or_state)
        if not p.is_file():
            raise FileNotFoundError(f"saved policy {p} does not exist")
        try:
            st = torch.load(p, weights_only=False)
        except Exception as e:  # any unpickling failure means a bad file
            raise ValueError(f"{p} is not a saved modi policy: {e}") from None
        where = str(p)
    kind = st.get("kind") if isinstance(st, dict) else None
    if kind not in SB3_AGENTS:
        raise ValueError(f"{where}: unknown policy kind {kind!r}; expected one of {SB3_KINDS}")
    cls = SB3_AGENTS[kind]
    agent = cls(**st["hparams"], miss_penalty=st["miss_penalty"], seed=st.get("seed"))
    agent.name = str(st.get("name", kind))
    if st.get("sb3_zip") is not None:
        agent.model = cls.algo.load(io.BytesIO(st["sb3_zip"]), device="cpu")
        agent._policy().set_training_mode(False)
    agent._restore_ranges(st)
    return agent
