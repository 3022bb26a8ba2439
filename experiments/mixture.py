"""Training on a mixture of networks, round-trip times, pools and SLAs (issue 13).

A user does not know in advance which network their phones are on, nor how fast next year's
servers are; one selector should serve them all. :class:`MixtureSim` presents a stream of
*episodes* to the online trainer (:func:`modi.agents.training.train_online`): every
``chunk_requests`` requests it draws a network family (by weight), a round-trip-time scale
(log-uniform in ``rtt_scale``), a pool (a measured one or a random one spanning
``mu_ms``) and the family's SLA range (widened by the pool's time scale), builds that
episode's simulator on the *training* split (its seed and, for trace networks, the training
segment of every trace) and hands its observations on. Pool-agnostic selectors (the bandits)
do not care that the number of models changes between episodes.

The config group is ``mix`` (``conf/mix/default.yaml``; ``mix=none`` trains on the scenario
alone). A family names a scenario (``conf/scenario/<name>.yaml``: its network, pool, SLA range
and payload) or a network preset with its own ``sla_range_ms``.
"""

from __future__ import annotations

import inspect
import logging
import math
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np
import yaml
from numpy.typing import NDArray
from omegaconf import DictConfig, ListConfig, OmegaConf

from modi.envs.catalog import default_data_dir, instantiate, preset_config
from modi.envs.pools import ModelPool, ModelSpec
from modi.envs.simulator import ModelSelectionSim, SimulationError, StepOutcome
from modi.experiments.common import ConfigError

log = logging.getLogger(__name__)

#: Network constructor arguments scaled by an episode's RTT scale (the one-way delay of the
#: papers' Gaussian network is half a round trip, so it scales the same way).
RTT_KEYS = ("rtt_ms", "mean_ms", "std_ms")


@dataclass(frozen=True)
class Family:
    """One network family of the mixture: a network preset, its SLA range and payload."""

    name: str
    weight: float
    network: str
    network_args: dict[str, Any]
    sla_range_ms: tuple[float, float]
    payload_kb: float


@dataclass(frozen=True)
class RandomPools:
    """Random pools: ``models`` models with ``mu`` log-uniform in ``mu_ms``, accuracy rising
    with log ``mu`` (as in the measured pools), ``sigma = cv * mu``."""

    weight: float
    mu_ms: tuple[float, float]
    models: tuple[int, int]
    cv: tuple[float, float]

    def draw(self, rng: np.random.Generator, index: int) -> ModelPool:
        """A random pool."""
        k = int(rng.integers(self.models[0], self.models[1] + 1))
        lo, hi = np.log(self.mu_ms[0]), np.log(self.mu_ms[1])
        # a pool spans a random sub-range of at least a decade (real pools: 6-100x)
        span = rng.uniform(min(np.log(10.0), hi - lo), hi - lo)
        start = rng.uniform(lo, hi - span)
        mu = np.sort(np.exp(rng.uniform(start, start + span, k)))
        # accuracy: 0.45-0.83 rising with log mu, with noise (some slower models are worse)
        t = (np.log(mu) - start) / max(span, 1e-9)
        acc = np.clip(0.45 + 0.38 * t + rng.normal(0.0, 0.02, k), 0.3, 0.9)
        cv = np.exp(rng.uniform(np.log(self.cv[0]), np.log(self.cv[1]), k))
        specs = tuple(
            ModelSpec(f"m{i}", float(a), float(m), float(m * c))
            for i, (a, m, c) in enumerate(zip(acc, mu, cv, strict=True))
        )
        return ModelPool(f"random{index}", specs)


@dataclass(frozen=True)
class MixtureSpec:
    """A parsed ``mix`` config."""

    families: tuple[Family, ...]
    rtt_scale: tuple[float, float]
    measured_pools: tuple[str, ...]
    measured_weight: float
    random_pools: RandomPools | None
    chunk_requests: int

    @classmethod
    def from_cfg(cls, node: Any) -> MixtureSpec | None:
        """Parse ``cfg.mix`` (``None`` or no families: no mixture). Raises
        :class:`~modi.experiments.common.ConfigError` naming the field."""
        if node is None:
            return None
        d = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node
        if not isinstance(d, dict):
            raise ConfigError(f"mix must be a mapping, got {node!r}")
        fams = d.get("families")
        if not fams:
            return None
        if not isinstance(fams, dict):
            raise ConfigError("mix.families must be a mapping of family name -> settings")
        families = tuple(_family(str(k), v) for k, v in fams.items())
        if not any(f.weight > 0 for f in families):
            raise ConfigError(
                "mix.families: every weight is 0; give at least one family a weight > 0 "
                "(or mix=none to train on the scenario alone)"
            )
        scale = _pair(d.get("rtt_scale", [1.0, 1.0]), "mix.rtt_scale", positive=True)
        pools = d.get("pools") or {}
        measured = pools.get("measured") or {}
        names = tuple(str(x) for x in (measured.get("names") or ()))
        m_weight = _weight(measured.get("weight", 1.0 if names else 0.0), "mix.pools.measured")
        rnd = pools.get("random")
        random_pools = None
        if rnd:
            mu = _pair(rnd.get("mu_ms"), "mix.pools.random.mu_ms", positive=True)
            models = _pair(rnd.get("models", [4, 12]), "mix.pools.random.models", positive=True)
            if models[0] < 1 or int(models[0]) != models[0] or int(models[1]) != models[1]:
                raise ConfigError(f"mix.pools.random.models must be integers >= 1, got {models}")
            cv = _pair(rnd.get("cv", [0.005, 0.05]), "mix.pools.random.cv", positive=True)
            random_pools = RandomPools(
                _weight(rnd.get("weight", 1.0), "mix.pools.random"),
                mu,
                (int(models[0]), int(models[1])),
                cv,
            )
        total = m_weight * bool(names) + (random_pools.weight if random_pools else 0.0)
        if total <= 0:
            raise ConfigError(
                "mix.pools: no pool has a weight > 0 (mix.pools.measured.names with a weight, "
                "or mix.pools.random)"
            )
        chunk = d.get("chunk_requests", 6400)
        if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
            raise ConfigError(f"mix.chunk_requests must be an integer >= 1, got {chunk!r}")
        return cls(families, scale, names, m_weight, random_pools, chunk)


def _weight(v: Any, key: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
        raise ConfigError(f"{key}.weight must be a finite number >= 0, got {v!r}")
    return float(v)


def _pair(v: Any, key: str, positive: bool) -> tuple[float, float]:
    if not isinstance(v, (list, tuple, ListConfig)) or len(v) != 2:
        raise ConfigError(f"{key} must be [min, max], got {v!r}")
    a, b = v
    for x in (a, b):
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
            raise ConfigError(f"{key} must be two finite numbers, got {v!r}")
    if positive and (a <= 0 or b <= 0):
        raise ConfigError(f"{key} must be > 0, got {v!r}")
    if a > b:
        raise ConfigError(f"{key}: min {a} > max {b}; expected [min, max] with min <= max")
    return float(a), float(b)


def _scenario(name: str) -> dict[str, Any]:
    f = resources.files("modi.conf") / "scenario" / f"{name}.yaml"
    if not f.is_file():
        raise ConfigError(f"mix: unknown scenario {name!r} (conf/scenario/{name}.yaml)")
    doc = yaml.safe_load(f.read_text())
    return doc if isinstance(doc, dict) else {}


def _family(name: str, v: Any) -> Family:
    if not isinstance(v, dict):
        raise ConfigError(f"mix.families.{name} must be a mapping, got {v!r}")
    weight = _weight(v.get("weight", 1.0), f"mix.families.{name}")
    network = v.get("network")
    sla = v.get("sla_range_ms")
    payload = v.get("payload_kb")
    if v.get("scenario"):
        sc = _scenario(str(v["scenario"]))
        for entry in sc.get("defaults") or []:
            if isinstance(entry, dict) and "override /network" in entry and network is None:
                network = entry["override /network"]
        inline = sc.get("network")
        if isinstance(inline, dict):  # the scenario overrides fields of its network preset
            v = {**v, "network_args": {**inline, **(v.get("network_args") or {})}}
        sla = sla if sla is not None else sc.get("sla_range_ms")
        payload = payload if payload is not None else (sc.get("sim") or {}).get("payload_kb")
    if not network:
        raise ConfigError(f"mix.families.{name}: give a scenario or a network preset name")
    lo, hi = _pair(sla if sla is not None else [50, 400], f"mix.families.{name}.sla_range_ms",
                   positive=True)  # fmt: skip
    args = v.get("network_args") or {}
    if not isinstance(args, dict):
        raise ConfigError(f"mix.families.{name}.network_args must be a mapping")
    data = str(default_data_dir())
    args = {k: x.replace("${data_dir}", data) if isinstance(x, str) else x for k, x in args.items()}
    return Family(name, weight, str(network), dict(args), (lo, hi), float(payload or 330.0))


class MixtureSim:
    """Episodes of ``chunk_requests`` requests, each from a freshly drawn (family, RTT scale,
    pool) on the training split; the interface :func:`~modi.agents.training.train_online`
    uses (``num_envs``, ``reset``, ``step``, ``obs``).

    Args:
        spec: the mixture.
        num_envs: parallel streams per episode.
        sim_args: the remaining :class:`~modi.envs.simulator.ModelSelectionSim` arguments
            (``cfg.sim`` without ``payload_kb``, which each family sets).
        segment: the training split's segment of every trace (``None``: whole traces).
    """

    def __init__(
        self,
        spec: MixtureSpec,
        num_envs: int,
        sim_args: dict[str, Any],
        segment: tuple[float, float] | None = None,
    ) -> None:
        self.spec = spec
        self.num_envs = int(num_envs)
        self.sim_args = {k: v for k, v in sim_args.items() if k != "payload_kb"}
        self.segment = segment
        self._measured = {n: instantiate(preset_config("pool", n)) for n in spec.measured_pools}
        self._networks: dict[tuple[str, float], Any] = {}
        w = np.array([f.weight for f in spec.families])
        self._family_p = w / w.sum()
        self._rng = np.random.default_rng(0)
        self._seed: list[int] = [0]
        self._episode = 0
        self._left = 0
        self._sim: ModelSelectionSim | None = None
        #: ``(family, rtt scale, pool name)`` of every episode so far.
        self.episodes: list[tuple[str, float, str]] = []
        # fail early on a family whose network cannot be built
        for f in spec.families:
            if f.weight > 0:
                self._network(f, 1.0)

    # the RTT scale is drawn from a few log-spaced values, so trace networks are loaded once each
    _SCALE_STEPS = 5

    def _scales(self) -> NDArray[np.float64]:
        lo, hi = self.spec.rtt_scale
        return np.exp(np.linspace(np.log(lo), np.log(hi), self._SCALE_STEPS))

    def _network(self, fam: Family, scale: float) -> Any:
        key = (fam.name, round(scale, 6))
        net = self._networks.get(key)
        if net is None:
            cfg = preset_config("network", fam.network)
            cfg.update(fam.network_args)
            for k in RTT_KEYS:
                if k in cfg and cfg[k] is not None:
                    v = cfg[k]
                    cfg[k] = [x * scale for x in v] if isinstance(v, list) else float(v) * scale
            target = _target(cfg)
            if self.segment is not None and "segment" in inspect.signature(target).parameters:
                cfg["segment"] = list(self.segment)
            try:
                net = instantiate(cfg)
            except Exception as e:
                raise ConfigError(f"mix.families.{fam.name}: network {fam.network!r}: {e}") from e
            self._networks[key] = net
        return net

    def _pool(self) -> tuple[ModelPool, str]:
        spec = self.spec
        rnd = spec.random_pools
        w_m = spec.measured_weight if spec.measured_pools else 0.0
        w_r = rnd.weight if rnd is not None else 0.0
        if rnd is not None and self._rng.random() < w_r / (w_m + w_r):
            pool = rnd.draw(self._rng, self._episode)
            return pool, "random"
        name = spec.measured_pools[int(self._rng.integers(len(spec.measured_pools)))]
        return self._measured[name], name

    def _next_episode(self) -> None:
        spec = self.spec
        fam = spec.families[int(self._rng.choice(len(spec.families), p=self._family_p))]
        scale = float(self._rng.choice(self._scales()))
        pool, pool_name = self._pool()
        lo, hi = fam.sla_range_ms
        # a pool on another time scale needs SLAs on that scale: widen by its median model
        extra = max(0.0, float(np.median(pool.mean_ms)) - 50.0)
        try:
            self._sim = ModelSelectionSim(
                pool,
                self._network(fam, scale),
                num_envs=self.num_envs,
                sla_range_ms=(lo, hi + extra),
                payload_kb=fam.payload_kb,
                **self.sim_args,
            )
        except (TypeError, SimulationError) as e:
            raise ConfigError(f"sim (mixture family {fam.name}): {e}") from None
        self._sim.reset([*self._seed, self._episode])
        self.episodes.append((fam.name, scale, pool_name))
        self._episode += 1
        self._left = max(1, spec.chunk_requests // self.num_envs)

    @property
    def obs(self) -> NDArray[np.float32]:
        """The current observations ``(num_envs, R + P*K)`` (``K`` of this episode's pool)."""
        assert self._sim is not None, "call reset() first"
        return self._sim.obs

    def reset(self, seed: int | list[int] | None = None) -> NDArray[np.float32]:
        """Start the episode sequence afresh from ``seed``; the first episode's observations."""
        key = [0] if seed is None else ([seed] if isinstance(seed, int) else list(seed))
        self._seed = key
        self._rng = np.random.default_rng([*key, 0xC0FFEE])
        self._episode = 0
        self.episodes = []
        self._next_episode()
        return self.obs

    def step(self, actions: NDArray[np.integer]) -> StepOutcome:
        """Step the current episode; start the next one when this one is over (the outcome is
        the finished step's, :attr:`obs` the next decision's)."""
        assert self._sim is not None, "call reset() first"
        out = self._sim.step(actions)
        self._left -= 1
        if self._left <= 0:
            self._next_episode()
        return out


def _target(cfg: dict[str, Any]) -> Any:
    from hydra.utils import get_object

    return get_object(str(cfg["_target_"]))
