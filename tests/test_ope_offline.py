"""Learning selectors from decision logs (:mod:`modi.agents.offline`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modi.agents.bandits import LinUCB, load_learned
from modi.agents.offline import OfflineTrainingError, train_from_log
from modi.agents.ope import modipick_probabilities
from modi.envs.model_selection import build_sim
from modi.experiments.ope_validation import ValidationConfig, learning_comparison, log_stream
from modi.runtime.decision_log import decision_log_from_arrays
from modi.runtime.device_features import DeviceObsLayout


@pytest.fixture(scope="module")
def logged() -> Any:
    sim = build_sim(num_envs=4, sla_range_ms=(50.0, 400.0))
    run = log_stream(sim, modipick_probabilities, 200, seed=3)
    lg = decision_log_from_arrays(run.obs, run.actions, run.probs, run.met, run.accuracy,
                                  [str(i) for i in sim.pool.ids])  # fmt: skip
    return run, lg


def test_unweighted_equals_the_bandits_own_update(logged: Any) -> None:
    run, lg = logged
    off = train_from_log(lg, weighting="none")
    ref = LinUCB()
    ref.observe(run.obs, run.actions, run.met.astype(bool))
    np.testing.assert_allclose(off.A, ref.A, rtol=1e-10)  # type: ignore[attr-defined]
    np.testing.assert_allclose(off.b, ref.b, rtol=1e-10, atol=1e-12)  # type: ignore[attr-defined]
    np.testing.assert_array_equal(off.select(run.obs), ref.select(run.obs))


def test_ips_weighting_reweights_by_inverse_propensity(logged: Any) -> None:
    run, lg = logged
    clip = 5.0
    off = train_from_log(lg, weighting="ips", clip=clip)
    w = 1.0 / lg.propensities
    w = np.minimum(w / w.mean(), clip)
    assert (w == clip).any() and (w < 1).any()  # the log has rare and common choices
    # Duplicating rows is the same as integer weights: check the sufficient statistics.
    ref = LinUCB()
    phi = ref._basis(run.obs)[0][np.arange(run.actions.size), run.actions]
    a = np.eye(phi.shape[1]) * ref.ridge + (phi * w[:, None]).T @ phi
    np.testing.assert_allclose(off.A, a, rtol=1e-10)  # type: ignore[attr-defined]


def test_offline_policy_saves_and_reloads(logged: Any, tmp_path: Path) -> None:
    run, lg = logged
    off = train_from_log(lg)
    back = load_learned(off.save(tmp_path / "offline.pt"))
    np.testing.assert_array_equal(back.select(run.obs), off.select(run.obs))


def test_bad_input(logged: Any) -> None:
    run, lg = logged
    with pytest.raises(OfflineTrainingError, match="weighting"):
        train_from_log(lg, weighting="magic")  # type: ignore[arg-type]
    with pytest.raises(OfflineTrainingError, match="kind"):
        train_from_log(lg, kind="ppo")
    unknown = decision_log_from_arrays(run.obs, run.actions, run.probs, np.full(run.met.size,
                                       np.nan), run.accuracy, list(lg.pool))  # fmt: skip
    with pytest.raises(OfflineTrainingError, match="known outcome"):
        train_from_log(unknown)
    k = lg.num_models
    dev = decision_log_from_arrays(
        np.zeros((3, DeviceObsLayout(k).dim)), run.actions[:3], run.probs[:3], run.met[:3],
        run.accuracy[:3], list(lg.pool), schema=DeviceObsLayout.schema,
    )  # fmt: skip
    with pytest.raises(OfflineTrainingError, match="schema"):
        train_from_log(dev)


def test_learning_comparison_tiny_budget() -> None:
    cfg = ValidationConfig(scenarios=("paper_campus",), reps=1, streams=4,
                           logger_train_requests=200)  # fmt: skip
    res = learning_comparison(cfg, requests=400, eval_requests=200)
    assert {"online_linucb", "offline_ips<modipick", "offline_none<eps_linucb"} <= set(res.policy)
    assert res.effective_accuracy.between(0, 1).all()
