"""Property tests of the simulator's invariants on small random pools, networks and SLAs.

Each example builds a :class:`ModelSelectionSim` from a drawn :class:`SimSpec`. The block length
(how many requests are drawn ahead) is drawn small so that block rollovers happen inside short
runs; it changes how the stream is laid out in memory, not the rules.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modi.agents.baselines import POLICY_NAMES, make_policy
from modi.agents.evaluation import rollout
from modi.envs.networks import BlockContext, GaussianOneWay, truncated_normal
from modi.envs.pools import ModelPool, ModelSpec
from modi.envs.simulator import CLIENT_NET_ALPHA, ModelSelectionSim, StepOutcome
from modi.runtime.features import (
    CLIENT_DL,
    CLIENT_DLVAR,
    CLIENT_MISMATCH,
    QUEUE,
    RTTVAR,
    SLOWDOWN,
    SRTT,
    encode,
)
from modi.runtime.profiles import ProfileTracker

PROPERTY_SETTINGS = settings(deadline=None, max_examples=50)


@dataclass
class SimSpec:
    """Everything needed to build one small simulator (a readable hypothesis example)."""

    models: list[tuple[float, float, float]]  # (accuracy, mean_ms, std_ms)
    net_mean_ms: float
    net_std_ms: float
    num_envs: int
    sla: dict[str, Any]
    block_len: int
    seed: int
    steps: int
    extra: dict[str, Any] = field(default_factory=dict)

    def pool(self, scale_model: int | None = None) -> ModelPool:
        specs = []
        for i, (acc, mean, std) in enumerate(self.models):
            if i == scale_model:
                mean, std = 3.0 * mean + 7.0, 2.0 * std + 1.0
            specs.append(ModelSpec(f"m{i}", acc, mean, std))
        return ModelPool("hypothesis", tuple(specs))

    def build(self, network: Any = None, **overrides: Any) -> ModelSelectionSim:
        net = network or GaussianOneWay(self.net_mean_ms, self.net_std_ms)
        kwargs = {**self.sla, **self.extra, **overrides}
        sim = ModelSelectionSim(self.pool(), net, num_envs=self.num_envs, **kwargs)
        sim.block_len = self.block_len
        return sim

    def actions(self) -> np.ndarray:
        rng = np.random.default_rng(self.seed + 1)
        return rng.integers(0, len(self.models), size=(self.steps, self.num_envs))


@st.composite
def sim_specs(draw: st.DrawFn, max_models: int = 4, max_envs: int = 3) -> SimSpec:
    k = draw(st.integers(1, max_models))
    models = [
        (
            # float32-exact: observations carry accuracy as float32, and two accuracies that
            # only differ below float32 resolution would tie for the oracle.
            draw(st.floats(0.0, 1.0, width=32)),
            draw(st.floats(0.5, 150.0)),
            draw(st.floats(0.0, 40.0)),
        )
        for _ in range(k)
    ]
    n = draw(st.integers(1, max_envs))
    if draw(st.booleans()):
        sla: dict[str, Any] = {
            "sla_ms": draw(st.lists(st.floats(1.0, 500.0), min_size=n, max_size=n))
        }
    else:
        lo = draw(st.floats(1.0, 300.0))
        sla = {"sla_range_ms": (lo, lo + draw(st.floats(0.0, 300.0)))}
    extra = {
        "miss_penalty": draw(st.floats(0.0, 1.0)),
        "num_clients": draw(st.integers(1, 4)),
        "reprofile_every": draw(st.sampled_from([0, 3, 17])),
        "profile_alpha": draw(st.floats(0.05, 1.0)),
    }
    return SimSpec(
        models=models,
        net_mean_ms=draw(st.floats(1.0, 150.0)),
        net_std_ms=draw(st.floats(0.0, 80.0)),
        num_envs=n,
        sla=sla,
        block_len=draw(st.sampled_from([3, 16, 64])),
        seed=draw(st.integers(0, 2**32 - 1)),
        steps=draw(st.integers(1, 40)),
        extra=extra,
    )


def _serve(sim: ModelSelectionSim, seed: int, actions: np.ndarray) -> list[StepOutcome]:
    sim.reset(seed)
    return [sim.step(a) for a in actions]


def _stack(outcomes: list[StepOutcome], name: str) -> np.ndarray:
    return np.stack([getattr(o, name) for o in outcomes])


# --------------------------------------------------------------------------- outcome arithmetic
@PROPERTY_SETTINGS
@given(spec=sim_specs())
def test_latency_components_add_up_and_reward_follows_the_sla(spec: SimSpec) -> None:
    sim = spec.build()
    actions = spec.actions()
    penalty = spec.extra["miss_penalty"]
    for a, o in zip(actions, _serve(sim, spec.seed, actions), strict=True):
        np.testing.assert_array_equal(o.model, a)
        assert np.all(o.t_input_ms > 0) and np.all(o.t_output_ms > 0)
        assert np.all(o.exec_ms > 0) and np.all(o.queue_ms >= 0)
        np.testing.assert_allclose(
            o.e2e_ms, o.t_input_ms + o.queue_ms + o.exec_ms + o.t_output_ms, rtol=1e-12
        )
        np.testing.assert_array_equal(o.met, o.e2e_ms <= o.sla_ms)
        np.testing.assert_array_equal(o.accuracy, sim.pool.accuracy[a])
        np.testing.assert_array_equal(o.reward, np.where(o.met, o.accuracy, -penalty))
        if "sla_range_ms" in spec.sla:
            lo, hi = spec.sla["sla_range_ms"]
            assert np.all((o.sla_ms >= lo) & (o.sla_ms <= hi))
        else:
            np.testing.assert_array_equal(o.sla_ms, spec.sla["sla_ms"])


@PROPERTY_SETTINGS
@given(spec=sim_specs(max_envs=1))
def test_single_stream_fast_path_obeys_the_same_rules(spec: SimSpec) -> None:
    sim = spec.build()
    sim.reset(spec.seed)
    penalty = spec.extra["miss_penalty"]
    for a in spec.actions()[:, 0].tolist():
        reward, info = sim.step_single(a)
        assert info["model"] == a
        assert info["e2e_ms"] == pytest.approx(
            info["t_input_ms"] + info["queue_ms"] + info["exec_ms"] + info["t_output_ms"],
            rel=1e-12,
        )
        assert info["met"] == (info["e2e_ms"] <= info["sla_ms"])
        assert info["accuracy"] == sim.pool.accuracy[a]
        assert reward == (info["accuracy"] if info["met"] else -penalty)


# --------------------------------------------------------------------------- common random numbers
@PROPERTY_SETTINGS
@given(spec=sim_specs())
def test_request_stream_does_not_depend_on_the_actions(spec: SimSpec) -> None:
    """Same seed ⇒ same SLAs, uploads, downloads and execution noise, whatever is chosen."""
    sim = spec.build()
    a1 = spec.actions()
    a2 = np.zeros_like(a1)
    first = _serve(sim, spec.seed, a1)
    second = _serve(sim, spec.seed, a2)
    for name in ("sla_ms", "t_input_ms", "t_output_ms"):
        np.testing.assert_array_equal(_stack(first, name), _stack(second, name), err_msg=name)
    same = a1 == a2
    np.testing.assert_array_equal(_stack(first, "exec_ms")[same], _stack(second, "exec_ms")[same])


@PROPERTY_SETTINGS
@given(spec=sim_specs(max_models=3, max_envs=2))
def test_every_policy_faces_the_same_stream_and_the_oracle_bounds_them(spec: SimSpec) -> None:
    sim = spec.build()
    pool = sim.pool
    runs = {
        name: rollout(make_policy(name, profile_mu_ms=pool.mean_ms), sim, spec.steps, spec.seed)
        for name in POLICY_NAMES
    }
    oracle = runs["oracle"]
    oracle_eff = oracle.accuracy * oracle.met
    for name, r in runs.items():
        np.testing.assert_array_equal(r.sla_ms, oracle.sla_ms, err_msg=f"{name}: SLAs differ")
        np.testing.assert_array_equal(r.t_input_ms, oracle.t_input_ms, err_msg=f"{name}: T_input")
        same = r.model == oracle.model
        np.testing.assert_array_equal(r.exec_ms[same], oracle.exec_ms[same])
        eff = r.accuracy * r.met
        worse = np.argwhere(eff > oracle_eff)
        assert worse.size == 0, f"{name} beat the oracle at (step, stream) {worse[:3].tolist()}"
        assert r.summary()["effective_accuracy"] <= oracle.summary()["effective_accuracy"]
        # Anything that meets the SLA, the oracle meets too.
        assert np.all(oracle.met | ~r.met)


# --------------------------------------------------------------------------- honest observations
def _client_history_mirror(t_inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """EWMA mean/std of the *previous* uploads of a single client, per stream: ``(T, N)``."""
    mean = np.empty_like(t_inputs)
    std = np.empty_like(t_inputs)
    m = np.full(t_inputs.shape[1], np.nan)
    v = np.zeros(t_inputs.shape[1])
    a = CLIENT_NET_ALPHA
    for t, x in enumerate(t_inputs):
        first = np.isnan(m)
        mean[t] = np.where(first, x, m)
        std[t] = np.sqrt(v)
        d = np.where(first, 0.0, x - m)
        m = np.where(first, x, m + a * d)
        v = np.where(first, 0.0, (1 - a) * (v + a * d * d))
    return mean, std


@PROPERTY_SETTINGS
@given(spec=sim_specs(), fast_path=st.booleans())
def test_observation_is_encode_of_what_the_server_knows(spec: SimSpec, fast_path: bool) -> None:
    """Rebuild every observation from known quantities only: the request's SLA and upload time
    (reported after the step), the previous uploads of the client and the execution times of
    *earlier* requests. The download time and the current execution never enter."""
    fast_path = fast_path and spec.num_envs == 1
    # One client per stream so its network history is the stream's past uploads; no hidden
    # re-profiling draws so the profiles follow from the reported execution times.
    sim = spec.build(num_clients=1, reprofile_every=0)
    alpha = spec.extra["profile_alpha"]
    mirror = ProfileTracker(sim.pool.mean_ms, sim.pool.std_ms, spec.num_envs, alpha)
    rows = np.arange(spec.num_envs)
    sim.reset(spec.seed)
    observed, outcomes, profiles = [], [], []
    for a in spec.actions():
        observed.append(sim.obs.copy())
        profiles.append((mirror.mu.copy(), mirror.sigma.copy()))
        if fast_path:
            _, info = sim.step_single(int(a[0]))
            o = {k: np.array([v]) for k, v in info.items()}
        else:
            step = sim.step(a)
            o = {k: getattr(step, k) for k in ("sla_ms", "t_input_ms", "exec_ms")}
        outcomes.append(o)
        mirror.update(rows, a, o["exec_ms"], sim.step_count)
    t_in = np.stack([o["t_input_ms"] for o in outcomes])
    net_mean, net_std = _client_history_mirror(t_in)
    for t, obs in enumerate(observed):
        mu, sigma = profiles[t]
        expected = encode(
            outcomes[t]["sla_ms"],
            t_in[t],  # elapsed at arrival = upload time
            t_in[t],
            sim.payload_kb,
            net_mean[t],
            net_std[t],
            obs[:, QUEUE],  # server state, not reconstructed here
            obs[:, SLOWDOWN],
            mu,
            sigma,
            sim.pool.accuracy,
            obs[:, SRTT],  # the connection's RTT estimate: tests/test_rtt.py checks its timing
            obs[:, RTTVAR],
            obs[:, CLIENT_DL],  # the client's past downloads: tests/test_downloads.py
            obs[:, CLIENT_DLVAR],
            obs[:, CLIENT_MISMATCH],  # and how far they were from their uploads (schema v4)
        )
        np.testing.assert_array_equal(obs, expected, err_msg=f"step {t}")


class SplitDownloadNetwork:
    """Upload like :class:`GaussianOneWay`; download from a generator of its own, so two sims with
    the same seed share every upload but not the downloads."""

    name = "split"

    def __init__(self, mean_ms: float, std_ms: float, download_seed: int) -> None:
        self.mean_ms, self.std_ms, self.download_seed = mean_ms, std_ms, download_seed
        self._down = np.random.default_rng(download_seed)

    def reset(self, rng: np.random.Generator, num_envs: int, num_clients: int) -> None:
        self._down = np.random.default_rng(self.download_seed)

    def sample(self, rng: np.random.Generator, ctx: BlockContext) -> tuple[np.ndarray, np.ndarray]:
        up = truncated_normal(rng, self.mean_ms, self.std_ms, ctx.client.shape)
        return up, self._down.uniform(1.0, 500.0, size=ctx.client.shape)


@PROPERTY_SETTINGS
@given(spec=sim_specs(), fast_path=st.booleans())
def test_observations_ignore_downloads_and_unused_models_realised_times(
    spec: SimSpec, fast_path: bool
) -> None:
    """Two servers see identical requests; they differ only in what the decision cannot know:
    every download time, and the true execution times of a model that is never run. Their
    observations must be identical at every step although outcomes differ, except for the
    client's history of its *past* downloads (schema v3, v4), whose timing tests/test_downloads.py
    checks."""
    fast_path = fast_path and spec.num_envs == 1
    k = len(spec.models)
    unused = k  # an extra model, never chosen
    models = [*spec.models, (0.5, 10.0, 1.0)]
    spec = replace(spec, models=models)
    a_net = SplitDownloadNetwork(spec.net_mean_ms, spec.net_std_ms, 1)
    a_sim = spec.build(network=a_net, reprofile_every=0)
    b_net = SplitDownloadNetwork(spec.net_mean_ms, spec.net_std_ms, 2)
    b_sim = spec.build(network=b_net, reprofile_every=0, true_pool=spec.pool(scale_model=unused))
    hist = [CLIENT_DL, CLIENT_DLVAR, CLIENT_MISMATCH]

    def now(obs: np.ndarray) -> np.ndarray:
        return np.delete(obs, hist, axis=1)

    oa, ob = a_sim.reset(spec.seed).copy(), b_sim.reset(spec.seed).copy()
    np.testing.assert_array_equal(now(oa), now(ob))
    assert not np.array_equal(
        a_sim.current_exec_ms()[:, unused], b_sim.current_exec_ms()[:, unused]
    )
    actions = np.random.default_rng(spec.seed).integers(0, k, size=(spec.steps, spec.num_envs))
    e2e_a, e2e_b = [], []
    for t, a in enumerate(actions):
        if fast_path:
            e2e_a.append(a_sim.step_single(int(a[0]))[1]["e2e_ms"])
            e2e_b.append(b_sim.step_single(int(a[0]))[1]["e2e_ms"])
        else:
            e2e_a.append(a_sim.step(a).e2e_ms)
            e2e_b.append(b_sim.step(a).e2e_ms)
        np.testing.assert_array_equal(now(a_sim.obs), now(b_sim.obs), err_msg=f"after step {t}")
    assert not np.array_equal(np.asarray(e2e_a), np.asarray(e2e_b)), "downloads had no effect"


# --------------------------------------------------------------------------- known bug
def _two_model_pool() -> ModelPool:
    return ModelPool(
        "two", (ModelSpec("fast", 0.5, 5.0, 0.1), ModelSpec("accurate", 0.9, 60.0, 5.0))
    )


class AlwaysFast:
    name = "always_fast"

    def reset(self, num_envs: int, seed: int | None = None) -> None:
        """Nothing to reset."""

    def select(self, obs: np.ndarray) -> np.ndarray:
        return np.zeros(obs.shape[0], dtype=np.intp)


def test_current_e2e_ms_is_the_realised_end_to_end_latency() -> None:
    sim = ModelSelectionSim(_two_model_pool(), GaussianOneWay(50.0, 20.0), num_envs=4)
    sim.reset(0)
    rng = np.random.default_rng(0)
    for t in range(200):
        a = rng.integers(0, 2, size=4)
        predicted = sim.current_e2e_ms()[np.arange(4), a]
        realised = sim.step(a).e2e_ms
        np.testing.assert_array_equal(predicted, realised, err_msg=f"step {t}")


def test_oracle_is_an_upper_bound_even_at_the_sla_boundary() -> None:
    """An SLA exactly equal to the accurate model's realised end-to-end latency of one request:
    the oracle must see that the model meets it (as ``step`` scores it) and do at least as well
    as a policy that always runs the fast model."""
    pool = _two_model_pool()
    probe = ModelSelectionSim(pool, GaussianOneWay(50.0, 20.0), sla_ms=1e9)
    probe.reset(0)
    t = 137
    for _ in range(t):
        probe.step(np.array([1]))
    predicted = float(probe.current_e2e_ms()[0, 1])
    realised = float(probe.step(np.array([1])).e2e_ms[0])
    assert predicted == realised, "the oracle's view must be the latency it is scored on"
    sim = ModelSelectionSim(pool, GaussianOneWay(50.0, 20.0), sla_ms=realised)
    oracle = rollout(make_policy("oracle"), sim, t + 1, seed=0)
    fast = rollout(AlwaysFast(), sim, t + 1, seed=0)
    assert oracle.met[t, 0] and oracle.model[t, 0] == 1, "the accurate model meets the SLA exactly"
    assert oracle.accuracy[t, 0] * oracle.met[t, 0] >= fast.accuracy[t, 0] * fast.met[t, 0]
