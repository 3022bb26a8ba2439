"""Cross-check of :mod:`modi.agents.ope` against an independent, maintained implementation:
``vw-estimators`` (Vowpal Wabbit's off-policy estimators) on the same simulated decision log.

Its IPS and SNIPS estimators and its Gaussian interval take ``(p_log, r, p_pred)`` per request;
DR is checked through its definition, the direct method plus IPS of the residuals
``r - q̂(x, a)`` (vw-estimators has no DR for bandits), and DR's interval through the Gaussian
interval of the per-request DR terms.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from modi.agents.baselines import DynamicGreedy, ModiPick
from modi.agents.ope import (
    Estimate,
    PolicyCandidate,
    dr_terms,
    estimate_all,
    modipick_probabilities,
    reward_predictions,
    weights,
)
from modi.envs.model_selection import build_sim
from modi.experiments.ope_validation import epsilon_greedy, log_stream
from modi.runtime.features import ACC, ObsLayout

gaussian = pytest.importorskip("estimators.bandits.gaussian")
vw_ips = pytest.importorskip("estimators.bandits.ips")
vw_snips = pytest.importorskip("estimators.bandits.snips")


@pytest.fixture(scope="module", params=["modipick", "eps_greedy"])
def logged(request: Any) -> dict[str, Any]:
    sim = build_sim(num_envs=4, sla_range_ms=(50.0, 400.0))
    if request.param == "modipick":
        probs = modipick_probabilities
    else:
        probs = epsilon_greedy(DynamicGreedy(), 0.3)
    run = log_stream(sim, probs, 250, seed=11)
    rewards = run.met * run.accuracy
    lay = ObsLayout.from_obs_dim(run.obs.shape[1])
    feats = run.obs.astype(np.float64)
    p_full, p_cross = reward_predictions(feats, run.actions, run.met, lay)
    acc = lay.models(feats)[:, :, ACC]
    return {"run": run, "r": rewards, "q_dm": acc * p_full, "q_dr": acc * p_cross}


def vw_interval(p_log: Any, r: Any, p_pred: Any) -> list[float]:
    iv = gaussian.Interval()
    for a, b, c in zip(p_log, r, p_pred, strict=True):
        iv.add_example(float(a), float(b), float(c))
    return [float(x) for x in iv.get(0.05)]


def vw_point(est: Any, p_log: Any, r: Any, p_pred: Any) -> float:
    for a, b, c in zip(p_log, r, p_pred, strict=True):
        est.add_example(float(a), float(b), float(c))
    return float(est.get())


@pytest.mark.parametrize("candidate", ["related_accurate", "dynamic_greedy"])
def test_ips_snips_dr_equal_vw_estimators(logged: dict[str, Any], candidate: str) -> None:
    run, r = logged["run"], logged["r"]
    pol = ModiPick(variant="related_accurate") if candidate != "dynamic_greedy" else DynamicGreedy()
    target = PolicyCandidate(candidate, pol).probabilities(run.obs)
    rows = np.arange(run.actions.size)
    p_log = run.probs[rows, run.actions]
    p_pred = target[rows, run.actions]
    ours = estimate_all(target, run.probs, run.actions, r, logged["q_dm"], logged["q_dr"],
                        floor=1e-12, max_unsupported=1.0)  # fmt: skip
    ips, snips, dr = ours["ips"], ours["snips"], ours["dr"]
    assert isinstance(ips, Estimate) and isinstance(snips, Estimate) and isinstance(dr, Estimate)
    unsup = float((target * (run.probs <= 0)).sum(axis=1).mean())

    assert ips.value == pytest.approx(vw_point(vw_ips.Estimator(), p_log, r, p_pred), abs=1e-12)
    lo, hi = vw_interval(p_log, r, p_pred)
    assert ips.lo == pytest.approx(lo, abs=1e-12)
    assert ips.hi == pytest.approx(hi + unsup, abs=1e-12)

    assert snips.value == pytest.approx(vw_point(vw_snips.Estimator(), p_log, r, p_pred), abs=1e-12)

    # DR = DM + IPS of the residuals; its interval = the Gaussian interval of its terms.
    q = logged["q_dr"]
    dm_part = float((target * q).sum(axis=1).mean())
    resid = r - q[rows, run.actions]
    assert dr.value == pytest.approx(
        dm_part + vw_point(vw_ips.Estimator(), p_log, resid, p_pred), abs=1e-12
    )
    w = weights(target, run.probs, run.actions, 1e-12)
    terms = dr_terms(target, q, w, run.actions, r)
    lo, hi = vw_interval(np.ones_like(terms), terms, np.ones_like(terms))
    assert dr.lo == pytest.approx(lo - unsup, abs=1e-12)
    assert dr.hi == pytest.approx(hi + unsup, abs=1e-12)
