"""Every registered environment: Gymnasium's checker, seeded determinism, the native vector
env, and exact parity between the scalar fast path (``step_single``) and the batched path."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from modi.envs import ENV_IDS
from modi.envs.model_selection import ModelSelectionEnv, ModelSelectionVectorEnv
from modi.envs.offload import OffloadVectorEnv
from modi.envs.pools import ModelPool, ModelSpec
from modi.runtime.features import MODEL_FEATURES, REQUEST_FEATURES, ObsLayout

ROLLOUT_STEPS = 500

# Gymnasium warns about the infinite Box bounds (deliberate: features are unbounded) and about
# checking a wrapped env; anything else it says is a finding.
_EXPECTED_CHECKER_WARNINGS = ("infinity", "different from the unwrapped version")


def _check_quietly(env: gym.Env[Any, Any]) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env, skip_render_check=True)
    unexpected = [
        str(w.message)
        for w in caught
        if not any(s in str(w.message) for s in _EXPECTED_CHECKER_WARNINGS)
    ]
    assert not unexpected, f"gymnasium's env checker complained: {unexpected}"


def _fixed_actions(space: gym.Space[Any] | int, steps: int, seed: int = 1234) -> list[Any]:
    """``steps`` seeded actions of a ``Discrete`` (or a number of models) or ``MultiDiscrete``
    action space."""
    rng = np.random.default_rng(seed)
    if isinstance(space, gym.spaces.MultiDiscrete):
        return [rng.integers(0, space.nvec) for _ in range(steps)]
    n = space if isinstance(space, int) else int(space.n)  # type: ignore[attr-defined]
    return rng.integers(0, n, size=steps).tolist()


#: Offload-v0's device presets read the PieSlicer runs from the shared data.
_PIESLICER_RUNS = (
    Path(__file__).resolve().parents[1].parent
    / "shared"
    / "data"
    / "cakelab"
    / "pieslicer_on_device_runs.csv"
)
ENV_PARAMS = [
    pytest.param(
        i,
        marks=pytest.mark.skipif(
            i == "modi/Offload-v0" and not _PIESLICER_RUNS.is_file(),
            reason=f"device data not found at {_PIESLICER_RUNS}",
        ),
    )
    for i in ENV_IDS
]

#: The native vector env of every registered id.
_VECTOR_ENVS = {
    "modi/ModelSelection-v0": ModelSelectionVectorEnv,
    "modi/Offload-v0": OffloadVectorEnv,
}


def _record(env: gym.Env[Any, Any], seed: int, actions: list[int]) -> dict[str, list[Any]]:
    obs, info = env.reset(seed=seed)
    trace: dict[str, list[Any]] = {"obs": [obs], "reward": [], "info": [], "done": []}
    for a in actions:
        obs, reward, terminated, truncated, info = env.step(a)
        trace["obs"].append(obs)
        trace["reward"].append(reward)
        trace["info"].append(info)
        trace["done"].append((terminated, truncated))
    return trace


def _empirical_pool() -> ModelPool:
    """A pool where one model's execution time comes from measured samples, not a Gaussian."""
    samples = tuple(float(x) for x in np.linspace(20.0, 60.0, 41))
    return ModelPool(
        "mixed",
        (
            ModelSpec("fast", 0.55, 4.0, 0.5),
            ModelSpec(
                "sampled", 0.72, float(np.mean(samples)), float(np.std(samples)), "server", samples
            ),
            ModelSpec("slow", 0.81, 90.0, 12.0),
        ),
    )


@pytest.mark.parametrize("env_id", ENV_PARAMS)
def test_check_env_passes_on_the_unwrapped_env(env_id: str) -> None:
    env = gym.make(env_id)
    _check_quietly(env.unwrapped)
    env.close()


@pytest.mark.parametrize("env_id", ENV_PARAMS)
def test_check_env_passes_through_gym_make_wrappers(env_id: str) -> None:
    env = gym.make(env_id)
    _check_quietly(env)
    env.close()


@pytest.mark.parametrize("env_id", ENV_PARAMS)
def test_same_seed_replays_the_same_episode(env_id: str) -> None:
    env = gym.make(env_id)
    actions = _fixed_actions(env.action_space, ROLLOUT_STEPS)
    first = _record(env, 7, actions)
    second = _record(env, 7, actions)
    np.testing.assert_array_equal(np.stack(first["obs"]), np.stack(second["obs"]))
    assert first["reward"] == second["reward"]
    assert first["info"] == second["info"]
    assert first["done"] == second["done"]
    # A fresh instance with the same seed replays the stream too (no hidden global state).
    third = _record(gym.make(env_id), 7, actions)
    np.testing.assert_array_equal(np.stack(first["obs"]), np.stack(third["obs"]))
    assert first["info"] == third["info"]


@pytest.mark.parametrize("env_id", ENV_PARAMS)
def test_different_seeds_give_different_streams(env_id: str) -> None:
    env = gym.make(env_id)
    actions = _fixed_actions(env.action_space, ROLLOUT_STEPS)
    a = _record(env, 7, actions)
    b = _record(env, 8, actions)
    assert not np.array_equal(a["obs"][0], b["obs"][0]), "first observation ignores the seed"
    sla_a = [(i["sla_ms"], i["e2e_ms"]) for i in a["info"]]
    sla_b = [(i["sla_ms"], i["e2e_ms"]) for i in b["info"]]
    assert sla_a != sla_b
    assert a["reward"] != b["reward"]


@pytest.mark.parametrize("env_id", ENV_PARAMS)
def test_make_vec_returns_the_native_vector_env(env_id: str) -> None:
    venv = gym.make_vec(env_id, num_envs=3)
    assert isinstance(venv, _VECTOR_ENVS[env_id])
    single = gym.make(env_id)
    assert venv.num_envs == 3
    assert venv.single_observation_space == single.observation_space
    assert venv.single_action_space == single.action_space
    obs, _ = venv.reset(seed=0)
    assert obs.shape == (3, *single.observation_space.shape)
    assert venv.observation_space.contains(obs)
    obs, reward, terminated, truncated, info = venv.step(
        np.zeros(venv.action_space.shape, dtype=np.int64)
    )
    assert reward.shape == terminated.shape == truncated.shape == (3,)
    assert info["e2e_ms"].shape == (3,)
    # The streams are independent: they do not all carry the same request.
    assert len(set(info["e2e_ms"].tolist())) == 3


@pytest.mark.parametrize(
    ("pool", "kwargs"),
    [
        ("modipick_table2", {}),
        ("modipick_table2", {"sla_range_ms": (40.0, 300.0), "miss_penalty": 0.5}),
        ("modipick_table2", {"reprofile_every": 7, "profile_alpha": 0.3}),
        ("empirical", {"sla_ms": 180.0, "reprofile_every": 11}),
    ],
    ids=["default", "sla-range-penalty", "reprofile", "empirical-pool"],
)
def test_scalar_fast_path_matches_the_vector_path_exactly(
    pool: str, kwargs: dict[str, Any]
) -> None:
    """``ModelSelectionEnv.step`` (``sim.step_single``) and the one-stream vector env
    (``sim.step``) must agree bit for bit: observations, rewards and infos. The run crosses a
    block boundary (512 requests), several re-profiling rounds and uses a few models only so
    that cold models get re-evaluated."""
    pool_arg: str | ModelPool = _empirical_pool() if pool == "empirical" else pool
    single = ModelSelectionEnv(pool=pool_arg, **kwargs)
    vector = ModelSelectionVectorEnv(num_envs=1, pool=pool_arg, max_episode_steps=10**9, **kwargs)
    k = single.action_space.n
    favourites = np.array([0, k // 2, k - 1])
    rng = np.random.default_rng(5)
    o1, _ = single.reset(seed=11)
    o2, _ = vector.reset(seed=11)
    np.testing.assert_array_equal(o1, o2[0])
    for t in range(1100):
        a = int(rng.choice(favourites)) if t % 3 else int(rng.integers(k))
        o1, r1, term1, trunc1, i1 = single.step(a)
        o2, r2, term2, trunc2, i2 = vector.step(np.array([a]))
        assert r1 == r2[0], f"step {t}: reward {r1} (scalar) != {r2[0]} (vector)"
        assert i1 == {key: i2[key][0].item() for key in i1}, f"step {t}: infos differ"
        np.testing.assert_array_equal(o1, o2[0], err_msg=f"observation after step {t}")
        assert (term1, trunc1) == (bool(term2[0]), bool(trunc2[0]))


def test_single_env_truncates_after_max_episode_steps() -> None:
    env = gym.make(ENV_IDS[0])
    assert env.spec is not None and env.spec.max_episode_steps == 1000
    env.reset(seed=0)
    flags = [env.step(0)[2:4] for _ in range(1000)]
    assert all(f == (False, False) for f in flags[:-1])
    assert flags[-1] == (False, True)

    short = gym.make(ENV_IDS[0], max_episode_steps=5)
    short.reset(seed=0)
    truncated = [short.step(1)[3] for _ in range(5)]
    assert truncated == [False] * 4 + [True]


def test_vector_env_autoresets_with_final_obs() -> None:
    venv = gym.make_vec(ENV_IDS[0], num_envs=3, max_episode_steps=4)
    layout = ObsLayout(venv.single_action_space.n)
    pool = venv.unwrapped.pool
    venv.reset(seed=3)
    actions = np.array([0, 5, 10])
    for _ in range(3):
        obs, _, terminated, truncated, info = venv.step(actions)
        assert not truncated.any() and not terminated.any()
        assert "final_obs" not in info
    obs, _, terminated, truncated, info = venv.step(actions)
    assert truncated.all() and not terminated.any()
    assert info["_final_obs"].all()
    final = info["final_obs"]
    assert final.shape == obs.shape
    # The stream goes on: the next request is the same; only the server's learned state is reset.
    np.testing.assert_array_equal(layout.request(final), layout.request(obs))
    np.testing.assert_allclose(
        layout.models(obs)[:, :, 0], np.tile(pool.mean_ms, (3, 1)), rtol=1e-6
    )
    np.testing.assert_allclose(layout.models(obs)[:, :, 1], np.tile(pool.std_ms, (3, 1)), rtol=1e-6)
    learned_mu = layout.models(final)[np.arange(3), actions, 0]
    assert np.all(learned_mu != layout.models(obs)[np.arange(3), actions, 0]), (
        "final_obs should carry the profiles learned during the episode"
    )
    # A new episode of 4 requests follows.
    flags = [venv.step(actions)[3].all() for _ in range(4)]
    assert flags == [False, False, False, True]


@pytest.mark.parametrize("env_id", ENV_PARAMS)
def test_docstring_documents_every_observation_column(env_id: str) -> None:
    doc = type(gym.make(env_id).unwrapped).__doc__ or ""
    for section in ("## Action Space", "## Observation Space", "## Rewards", "## Episode End"):
        assert section in doc
    for i, (name, unit, _) in enumerate(REQUEST_FEATURES):
        assert f"| {i} | {name} | {unit} |" in doc, f"request column {i} ({name}) missing"
    for i, (name, unit, _) in enumerate(MODEL_FEATURES):
        assert f"| {i} | {name} | {unit} |" in doc, f"model column {i} ({name}) missing"
    assert "T_output" in doc and "Never in an observation" in doc
