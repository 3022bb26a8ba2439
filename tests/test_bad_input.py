"""Misuse gets a clear error that names the field, preset or file at fault."""

from __future__ import annotations

import re
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from hydra import compose, initialize_config_module

from modi.agents.baselines import make_policy
from modi.envs import ENV_IDS
from modi.envs.catalog import PresetError, load_preset, preset_config
from modi.envs.model_selection import ModelSelectionVectorEnv
from modi.envs.networks import GaussianOneWay
from modi.envs.pools import ModelPool, ModelSpec, PoolError
from modi.envs.simulator import ModelSelectionSim, SimulationError
from modi.experiments.common import ConfigError
from modi.experiments.compare import run_compare

ENV_ID = ENV_IDS[0]


def _pool() -> ModelPool:
    return ModelPool(
        "tiny", (ModelSpec("small", 0.5, 5.0, 0.5), ModelSpec("large", 0.8, 50.0, 2.0))
    )


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# --------------------------------------------------------------------------- presets
@pytest.mark.parametrize("group", ["pool", "network"])
def test_unknown_preset_names_the_group_and_the_choices(group: str) -> None:
    with pytest.raises(PresetError, match=rf"unknown {group} 'nope'.*expected one of \["):
        load_preset(group, "nope")
    with pytest.raises(PresetError, match="campus" if group == "network" else "modipick_table2"):
        preset_config(group, "nope")


@pytest.mark.parametrize(("kwarg", "group"), [("pool", "pool"), ("network", "network")])
def test_gym_make_with_an_unknown_preset_names_it(kwarg: str, group: str) -> None:
    with pytest.raises(PresetError, match=rf"unknown {group} 'no_such_{kwarg}'"):
        gym.make(ENV_ID, **{kwarg: f"no_such_{kwarg}"})
    with pytest.raises(PresetError, match=rf"unknown {group} 'no_such_{kwarg}'"):
        gym.make_vec(ENV_ID, num_envs=2, **{kwarg: f"no_such_{kwarg}"})


# --------------------------------------------------------------------------- pools
def test_unknown_model_id_lists_the_known_ones() -> None:
    pool = _pool()
    with pytest.raises(PoolError, match=r"unknown model 'resnet' in pool 'tiny'; known: \["):
        pool.index("resnet")
    with pytest.raises(PoolError, match="unknown model 'resnet'"):
        pool.subset(["small", "resnet"])
    with pytest.raises(PoolError, match="unknown model 'resnet'"):
        load_preset("pool", "modipick_table2", include=["squeezenet", "resnet"])


def test_missing_pool_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "pool.yaml"
    with pytest.raises(PoolError, match=re.escape(str(missing)) + ".*does not exist"):
        ModelPool.from_config("p", path=missing)


def test_malformed_yaml_pool_file_names_the_path(tmp_path: Path) -> None:
    bad = _write(tmp_path, "broken.yaml", "models:\n  - {id: a, mean_ms: [1, 2\n")
    with pytest.raises(PoolError, match=re.escape(str(bad)) + ".*not valid YAML"):
        ModelPool.from_config("p", path=bad)


@pytest.mark.parametrize(
    "text",
    ["foo: 1\n", "models: {id: a}\n", "- {id: a}\n", ""],
    ids=["no-key", "mapping", "list", "empty"],
)
def test_pool_file_without_a_models_list_says_what_is_expected(tmp_path: Path, text: str) -> None:
    path = _write(tmp_path, "pool.yaml", text)
    with pytest.raises(PoolError, match=re.escape(str(path)) + ".*'models' list"):
        ModelPool.from_config("p", path=path)


def test_negative_std_ms_names_the_model_and_field(tmp_path: Path) -> None:
    with pytest.raises(PoolError, match=r"model 'x'.*std_ms must be >= 0.*-1"):
        ModelSpec("x", 0.5, 10.0, -1.0)
    path = _write(
        tmp_path,
        "pool.yaml",
        "models:\n"
        "  - {id: ok, top1_accuracy: 50, mean_ms: 5, std_ms: 1}\n"
        "  - {id: bad, top1_accuracy: 60, mean_ms: 9, std_ms: -0.5}\n",
    )
    with pytest.raises(PoolError, match=re.escape(str(path)) + r", models\[1\].*'bad'.*std_ms"):
        ModelPool.from_config("p", path=path)


@pytest.mark.parametrize(
    ("entry", "fragment"),
    [
        ("{top1_accuracy: 50, mean_ms: 5, std_ms: 1}", "needs a string 'id'"),
        ("{id: a, mean_ms: 5, std_ms: 1}", "needs 'top1_accuracy' or 'accuracy'"),
        ("{id: a, top1_accuracy: 50, std_ms: 1}", "needs 'mean_ms' and 'std_ms'"),
        ("{id: a, top1_accuracy: 50, mean_ms: fast, std_ms: 1}", "numeric field is malformed"),
        ("{id: a, top1_accuracy: 150, mean_ms: 5, std_ms: 1}", "accuracy must be a fraction"),
        ("{id: a, top1_accuracy: 50, mean_ms: 0, std_ms: 1}", "mean_ms must be > 0"),
    ],
)
def test_malformed_model_entries_name_the_field(tmp_path: Path, entry: str, fragment: str) -> None:
    path = _write(tmp_path, "pool.yaml", f"models:\n  - {entry}\n")
    with pytest.raises(PoolError, match=re.escape(fragment)) as err:
        ModelPool.from_config("p", path=path)
    assert r"models[0]" in str(err.value)


def test_empty_pool_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PoolError, match="pool 'none' is empty"):
        ModelPool("none", ())
    with pytest.raises(PoolError, match="pool 'none' is empty"):
        ModelPool.from_config("none", models=[])
    with pytest.raises(PoolError, match="pool 'none' is empty"):
        ModelPool.from_config("none", path=_write(tmp_path, "pool.yaml", "models: []\n"))
    with pytest.raises(PoolError, match="needs 'models'"):
        ModelPool.from_config("none")


def test_duplicate_model_ids_are_named() -> None:
    with pytest.raises(PoolError, match=r"duplicate model ids \['a'\]"):
        ModelPool("dup", (ModelSpec("a", 0.5, 1.0, 0.1), ModelSpec("a", 0.6, 2.0, 0.1)))


# --------------------------------------------------------------------------- simulator and envs
@pytest.mark.parametrize("sla", [0.0, -10.0, float("nan")])
def test_non_positive_sla_is_refused(sla: float) -> None:
    with pytest.raises(SimulationError, match="sla_ms must be > 0"):
        ModelSelectionSim(_pool(), GaussianOneWay(50.0, 10.0), sla_ms=sla)
    with pytest.raises(SimulationError, match="sla_ms must be > 0"):
        ModelSelectionSim(_pool(), GaussianOneWay(50.0, 10.0), num_envs=2, sla_ms=[100.0, sla])


def test_non_positive_sla_via_gym_make_is_refused() -> None:
    with pytest.raises(SimulationError, match="sla_ms must be > 0"):
        gym.make(ENV_ID, sla_ms=0)
    with pytest.raises(SimulationError, match="sla_ms must be > 0"):
        gym.make_vec(ENV_ID, num_envs=2, sla_ms=-1.0)
    with pytest.raises(SimulationError, match="sla_range_ms"):
        gym.make(ENV_ID, sla_range_ms=(0.0, 100.0))
    with pytest.raises(SimulationError, match="sla_range_ms"):
        gym.make(ENV_ID, sla_range_ms=(200.0, 100.0))


def test_wrong_number_of_slas_is_refused() -> None:
    with pytest.raises(SimulationError, match="sla_ms must be one number or 3 numbers"):
        ModelSelectionSim(_pool(), GaussianOneWay(50.0, 10.0), num_envs=3, sla_ms=[100.0, 200.0])


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"num_envs": 0}, "num_envs"),
        ({"num_clients": 0}, "num_clients"),
        ({"payload_kb": 0.0}, "payload_kb"),
        ({"arrival_rate_hz": -1.0}, "arrival_rate_hz"),
        ({"reprofile_every": -1}, "reprofile_every"),
    ],
)
def test_out_of_range_simulator_arguments_are_named(
    kwargs: dict[str, float], fragment: str
) -> None:
    with pytest.raises(SimulationError, match=fragment):
        ModelSelectionSim(_pool(), GaussianOneWay(50.0, 10.0), **kwargs)  # type: ignore[arg-type]


def test_negative_network_std_is_named() -> None:
    with pytest.raises(ValueError, match=r"network\.std_ms must be >= 0"):
        GaussianOneWay(50.0, -1.0)
    with pytest.raises(ValueError, match=r"network\.cv must be >= 0"):
        GaussianOneWay.from_cv(50.0, -0.5)


@pytest.mark.parametrize("action", [2, -1, 99])
def test_out_of_range_action_names_the_valid_range(action: int) -> None:
    env = gym.make(ENV_ID, pool=_pool())
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"model index in \[0, 2\)"):
        env.step(action)


@pytest.mark.parametrize("action", [1.5, "large", None, np.array([0, 1])])
def test_non_integer_action_is_refused(action: object) -> None:
    env = gym.make(ENV_ID, pool=_pool())
    env.reset(seed=0)
    with pytest.raises(ValueError, match="integer model index"):
        env.step(action)


def test_numpy_integer_actions_are_accepted() -> None:
    env = gym.make(ENV_ID, pool=_pool())
    env.reset(seed=0)
    _, _, _, _, info = env.step(np.int64(1))
    assert info["model"] == 1


def test_bad_vector_actions_are_refused() -> None:
    venv = ModelSelectionVectorEnv(num_envs=3, pool=_pool())
    venv.reset(seed=0)
    with pytest.raises(SimulationError, match="expected 3 actions"):
        venv.step(np.array([0, 1]))
    with pytest.raises(SimulationError, match=r"model indices in \[0, 2\), got \[0, 1, 2\]"):
        venv.step(np.array([0, 1, 2]))
    with pytest.raises(SimulationError, match=r"model indices in \[0, 2\)"):
        venv.step(np.array([0, -1, 1]))
    with pytest.raises(SimulationError, match="integers"):
        venv.step(np.array([0.0, 0.5, 1.0]))
    # A refused step leaves the env usable, and whole floats are accepted as indices.
    _, _, _, _, info = venv.step(np.array([0.0, 1.0, 1.0]))
    assert info["model"].tolist() == [0, 1, 1]


# --------------------------------------------------------------------------- policies
def test_unknown_policy_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown policy 'nope'; expected one of \[.*'modipick'"):
        make_policy("nope")


@pytest.mark.parametrize(
    ("name", "kwargs", "fragment"),
    [
        ("modipick", {"threshold_ms": -1.0}, "modipick.threshold_ms must be >= 0"),
        ("mdinference", {"gamma": -0.1}, "mdinference.gamma must be >= 0"),
    ],
)
def test_bad_policy_arguments_are_named(name: str, kwargs: dict[str, float], fragment: str) -> None:
    with pytest.raises(ValueError, match=re.escape(fragment)):
        make_policy(name, **kwargs)


def test_oracle_refuses_to_decide_without_realised_latencies() -> None:
    with pytest.raises(TypeError, match="select_clairvoyant"):
        make_policy("oracle").select(np.zeros((1, 18), dtype=np.float32))  # type: ignore[union-attr]


def test_run_compare_with_an_unknown_policy_names_it(tmp_path: Path) -> None:
    with initialize_config_module(config_module="modi.conf", version_base="1.3"):
        cfg = compose(
            config_name="compare", overrides=["policies=[modipick,nope]", "n_requests=20"]
        )
    with pytest.raises(ConfigError, match=r"policies: unknown policy \['nope'\]"):
        run_compare(cfg, tmp_path, progress=False)
    assert not (tmp_path / "results.csv").exists()


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("n_requests=0", "n_requests must be an integer >= 1"),
        ("sla_ms=[100,-5]", "sla_ms must be > 0"),
        ("seed=-1", "seed must be an integer >= 0"),
        ("policies=[]", "policies must list at least one policy"),
        ("figures=[pie]", "figures: unknown figure 'pie'"),
    ],
)
def test_run_compare_names_the_bad_setting(tmp_path: Path, override: str, fragment: str) -> None:
    settings = {"n_requests": "20", "streams_per_point": "2", "sla_ms": "[100]"}
    key, value = override.split("=", 1)
    settings[key] = value
    with initialize_config_module(config_module="modi.conf", version_base="1.3"):
        cfg = compose(config_name="compare", overrides=[f"{k}={v}" for k, v in settings.items()])
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        run_compare(cfg, tmp_path, progress=False)
