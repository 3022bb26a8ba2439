"""The served selector as a policy: ``select_features`` decides exactly as ``select_batch`` on
the same requests, and :class:`ServedPolicy` runs the exported file with the shipped defaults
through an evaluation rollout."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from modi.agents.evaluation import rollout
from modi.agents.protocol import Policy
from modi.agents.served import ServedPolicy, served_from_policy
from modi.envs.model_selection import build_sim
from modi.runtime import PoolProfile, Request, Selector
from modi.runtime import features as F


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


#: Selectors compared: the trained LinUCB with the shipped defaults; the same with a tight
#: calibrated shield (it fires for SLAs past 400 ms: the policy was trained on 50-400 ms);
#: the 'most accurate model' selector under the earlier budget shield; no model (ModiPick).
SELECTORS = ["linucb", "linucb_tight", "greedy_budget", "no_model"]


def _selectors(files: dict[str, Path], pool: PoolProfile, **kw: Any) -> dict[str, Selector]:
    return {
        "linucb": Selector.load(files["linucb"], pool, strict=True, seed=3, **kw),
        "linucb_tight": Selector.load(
            files["linucb"], pool, strict=True, seed=3, shield_tolerance=0.01, **kw
        ),
        "greedy_budget": Selector.load(
            files["greedy"], pool, strict=True, seed=3, shield="budget", **kw
        ),
        "no_model": Selector(pool, seed=3, **kw),
    }


def _same(a: Any, b: Any, where: str) -> None:
    np.testing.assert_array_equal(a.index, b.index, err_msg=where)
    np.testing.assert_array_equal(a.learned, b.learned, err_msg=where)
    assert a.reasons == b.reasons, where


@pytest.mark.parametrize("which", SELECTORS)
def test_select_features_on_env_observations_equals_select_batch_on_the_requests(
    which: str, bandit_selector_files: dict[str, Path]
) -> None:
    """One stream of the WiFi link whose profiles move with every execution: the selector that
    builds its own features (``select_batch``, profiles kept current with ``observe``) and the
    one fed the simulator's observations make the same decisions, reasons included."""
    sim = build_sim(
        "modipick_table2", "link_wifi", num_envs=1, num_clients=1, sla_range_ms=(50.0, 450.0),
        reprofile_every=0,
    )  # fmt: skip
    pool = PoolProfile.from_pool(sim.pool)
    own = _selectors(bandit_selector_files, pool, profile_alpha=sim.tracker.alpha)[which]
    fed = _selectors(bandit_selector_files, pool)[which]
    obs = sim.reset(seed=21).copy()
    fallbacks = shielded = 0
    for step in range(500):
        d_fed = fed.select_features(obs)
        o = sim.step(d_fed.index)
        up = float(o.t_input_ms[0])
        dl, dlvar, mis = (
            float(obs[0, c]) for c in (F.CLIENT_DL, F.CLIENT_DLVAR, F.CLIENT_MISMATCH)
        )
        req = Request(float(o.sla_ms[0]), up, up, sim.payload_kb * 1000.0, "c",
                      srtt_ms=float(obs[0, F.SRTT]), rttvar_ms=float(obs[0, F.RTTVAR]),
                      client_dl_ms=dl if dl >= 0.0 else None,
                      client_dlvar_ms=dlvar if dlvar >= 0.0 else None,
                      client_dl_mismatch=mis if mis >= 0.0 else None)  # fmt: skip
        np.testing.assert_array_equal(own.features(req), obs[0], err_msg=f"step {step}")
        d_own = own.select_batch([req])
        _same(d_own, d_fed, f"step {step}")
        fallbacks += int(not d_fed.learned[0])
        shielded += int(d_fed.reasons[0].startswith("shield: "))
        own.observe(pool.ids[int(o.model[0])], float(o.exec_ms[0]))
        obs = sim.obs.copy()
    if which != "linucb":
        assert fallbacks > 0, "the comparison covered fallback decisions"
    if which in ("linucb_tight", "greedy_budget"):
        assert shielded > 0, "the comparison covered shield firings"
    assert own.counts == fed.counts


@pytest.mark.parametrize("which", SELECTORS)
def test_batches_of_many_streams_decide_alike(
    which: str, bandit_selector_files: dict[str, Path]
) -> None:
    """64 streams (past the scalar rule's row limit) right after reset, over a few seeds."""
    sim = build_sim("modipick_table2", "link_wifi", num_envs=64, sla_range_ms=(50.0, 450.0))
    pool = PoolProfile.from_pool(sim.pool)
    own = _selectors(bandit_selector_files, pool)[which]
    fed = _selectors(bandit_selector_files, pool)[which]
    for seed in range(6):
        obs = sim.reset(seed=seed).copy()
        sla = sim.current_sla_ms()
        up = sim._blk_tin[0]
        clients = [(seed, e, int(c)) for e, c in enumerate(sim._blk_client[0])]
        reqs = [
            Request(float(s), float(u), float(u), sim.payload_kb * 1000.0, c)
            for s, u, c in zip(sla, up, clients, strict=True)
        ]
        _same(own.select_batch(reqs), fed.select_features(obs), f"seed {seed}")
    assert own.counts == fed.counts


def test_select_features_refuses_the_wrong_width_and_survives_bad_rows(
    bandit_selector_files: dict[str, Path],
) -> None:
    sim = build_sim("modipick_table2", num_envs=4)
    pool = PoolProfile.from_pool(sim.pool)
    sel = Selector.load(bandit_selector_files["linucb"], pool, strict=True)
    obs = sim.reset(seed=0).copy()
    with pytest.raises(ValueError, match="expected"):
        sel.select_features(obs[:, :-1])
    one = sel.select_features(obs[0])
    assert len(one) == 1
    obs[1, F.T_INPUT] = np.nan
    obs[2, F.R + F.MU] = np.inf
    d = sel.select_features(obs)
    assert d.learned[0] and d.learned[3] and not d.learned[1] and not d.learned[2]
    assert "t_input_ms" in d.reasons[1] and "model 0 mu_ms" in d.reasons[2]
    assert ((d.index >= 0) & (d.index < pool.num_models)).all()
    assert sel.counts["invalid"] == 2
    assert len(sel.select_features(obs[:0])) == 0


def test_served_policy_is_a_policy_and_runs_a_rollout(trained_linucb: Any, tmp_path: Path) -> None:
    served = served_from_policy(trained_linucb, tmp_path / "linucb.onnx")
    assert isinstance(served, Policy) and served.name == trained_linucb.name
    sim = build_sim("modipick_table2", "link_wifi", num_envs=16, sla_range_ms=(50.0, 400.0))
    a = rollout(served, sim, 60, seed=5)
    stats = served.stats()
    assert stats["decisions"] == 16 * 60
    assert 0.0 <= served.shield_rate <= served.fallback_rate <= 1.0
    assert served.selector is not None and served.selector.counts["learned"] > 0
    b = rollout(served, sim, 60, seed=5)
    np.testing.assert_array_equal(a.model, b.model)
    assert served.stats() == stats, "reset zeroes the counters; same seed, same run"


def test_served_policy_agrees_with_the_torch_policy_where_learned(
    trained_linucb: Any, tmp_path: Path
) -> None:
    served = served_from_policy(trained_linucb, tmp_path / "p.onnx")
    sim = build_sim("modipick_table2", "link_wifi", num_envs=64, sla_range_ms=(50.0, 400.0))
    obs = sim.reset(seed=9)
    served.reset(64, 0)
    for _ in range(20):
        d = served.decide(obs)
        want = trained_linucb.select(obs)
        np.testing.assert_array_equal(d.index[d.learned], want[d.learned])
        sim.step(d.index)
        obs = sim.obs


def test_served_policy_from_a_pool_specific_file(trained_linucb: Any, tmp_path: Path) -> None:
    sim = build_sim("modipick_table2", num_envs=8)
    ids = list(sim.pool.ids)
    served = served_from_policy(
        trained_linucb, tmp_path / "s.onnx", pool_ids=ids, pool_accuracy=sim.pool.accuracy.tolist()
    )
    obs = sim.reset(seed=1)
    served.reset(8, [7, 0, 1, 150_000])  # a stream key, as modi-compare passes
    assert served.select(obs).shape == (8,)
    assert served.selector is not None and served.selector.pool.ids == tuple(ids)
    wrapped = ServedPolicy(served.selector, name="mine")
    assert wrapped.name == "mine" and wrapped.select(obs).shape == (8,)
    with pytest.raises(FileNotFoundError):
        ServedPolicy(tmp_path / "missing.onnx")


def test_calibrated_shield_almost_never_fires_in_distribution(
    trained_linucb: Any, tmp_path: Path
) -> None:
    """The training scenario (campus network, SLAs 50-400 ms) on an evaluation seed: the shield
    with its shipped tolerance fires on at most 0.5 % of the requests, and costs at most 0.2
    points of effective accuracy against the unshielded selector."""
    served = served_from_policy(trained_linucb, tmp_path / "p.onnx")
    assert served.selector is None or served.selector.shield_mode == "range"
    sim = build_sim(num_envs=64, sla_range_ms=(50.0, 400.0))
    shielded = rollout(served, sim, 150, seed=1000)
    assert served.selector is not None and served.selector.shield_mode == "range"
    assert served.decisions == 64 * 150 and served.shield_rate <= 0.005, served.stats()
    bare = ServedPolicy(tmp_path / "p.onnx", shield=False)
    unshielded = rollout(bare, sim, 150, seed=1000)
    cost = unshielded.summary()["effective_accuracy"] - shielded.summary()["effective_accuracy"]
    assert cost <= 0.002, cost
