"""Off-policy evaluation: estimators on logs whose truth is known, the support check, served
selectors as candidates, ``modi-ope`` end to end and on bad input, and the simulation study at
a tiny budget."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modi.agents.baselines import DynamicGreedy
from modi.agents.ope import (
    CannotEstimate,
    Estimate,
    FunctionCandidate,
    PolicyCandidate,
    SelectorCandidate,
    dr,
    estimate_all,
    evaluate,
    load_candidate,
    modipick_probabilities,
    one_hot,
    switch_dr,
    weights,
)
from modi.envs.model_selection import build_sim
from modi.experiments import ope as ope_cli
from modi.experiments.ope_validation import (
    ValidationConfig,
    log_stream,
    run_validation,
    summarise,
)
from modi.runtime.decision_log import (
    DecisionRecord,
    Exploration,
    Outcome,
    SelectorInfo,
    decision_log_from_arrays,
    read_decision_log,
)
from modi.runtime.features import ObsLayout
from modi.runtime.metadata import pool_hash
from modi.runtime.selector import Selector

K = 4


def synthetic(n: int, seed: int, noise: bool = True) -> dict[str, Any]:
    """A bandit with a known reward function ``r(x, a)`` in [0, 1] and a stochastic logger."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    true = 1.0 / (1.0 + np.exp(-(x @ rng.normal(size=(3, K)) + np.arange(K) * 0.2)))
    logits = x @ rng.normal(size=(3, K))
    mu = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    mu = 0.8 * mu + 0.2 / K  # every action at least 5 %
    a = (mu.cumsum(axis=1) < rng.random((n, 1))).sum(axis=1)
    r = (rng.random(n) < true[np.arange(n), a]).astype(float) if noise else true[np.arange(n), a]
    return {"x": x, "true": true, "mu": mu, "a": a, "r": r}


def test_ips_of_the_logging_policy_is_its_mean_reward() -> None:
    d = synthetic(500, 0)
    res = estimate_all(d["mu"], d["mu"], d["a"], d["r"], d["true"], d["true"])
    ips = res["ips"]
    assert isinstance(ips, Estimate)
    assert ips.value == pytest.approx(d["r"].mean())
    snips = res["snips"]
    assert isinstance(snips, Estimate) and snips.value == pytest.approx(d["r"].mean())


def test_dr_and_dm_are_exact_with_the_true_reward_model_and_noise_free_rewards() -> None:
    d = synthetic(400, 1, noise=False)
    target = one_hot(d["true"].argmax(axis=1), K)  # the best action, deterministically
    truth = d["true"].max(axis=1).mean()
    res = estimate_all(target, d["mu"], d["a"], d["r"], d["true"], d["true"])
    for name in ("dm", "dr", "switch_dr"):
        r = res[name]
        assert isinstance(r, Estimate) and r.value == pytest.approx(truth, abs=1e-12), name
    # IPS is unbiased, not exact: it differs, and its interval covers the truth here.
    ips = res["ips"]
    assert isinstance(ips, Estimate) and ips.value != pytest.approx(truth, abs=1e-6)


def test_intervals_cover_the_truth_in_most_repetitions() -> None:
    covered = {"ips": 0, "snips": 0, "dr": 0}
    reps = 60
    for s in range(reps):
        d = synthetic(800, 100 + s)
        target = one_hot(d["true"].argmax(axis=1), K)
        truth = d["true"].max(axis=1).mean()
        rough = d["true"] + 0.1  # a biased reward model: DR must still cover
        res = estimate_all(target, d["mu"], d["a"], d["r"], rough, rough)
        for name in covered:
            r = res[name]
            assert isinstance(r, Estimate)
            covered[name] += r.lo <= truth <= r.hi
    for name, c in covered.items():
        assert c / reps >= 0.85, (name, c)


def test_support_refusal_names_the_share() -> None:
    d = synthetic(300, 2)
    logged = d["mu"].copy()
    logged[:, 3] = 0.0  # the logger never takes model 3
    logged /= logged.sum(axis=1, keepdims=True)
    a = logged.argmax(axis=1)
    target = one_hot(np.where(np.arange(300) % 10 == 0, 3, 0), K)  # 10 % on model 3
    res = estimate_all(target, logged, a, d["r"], d["true"], d["true"])
    for name in ("ips", "snips", "dr"):
        r = res[name]
        assert isinstance(r, CannotEstimate)
        assert "never takes" in r.error and "10.0 % of requests" in r.error
    dm = res["dm"]
    assert isinstance(dm, Estimate) and "10.00 %" in dm.note
    sw = res["switch_dr"]
    assert isinstance(sw, Estimate) and "10.00 %" in sw.note
    # Below the threshold the interval is widened by the unsupported share instead.
    res = estimate_all(target, logged, a, d["r"], d["true"], d["true"], max_unsupported=0.2)
    ips, dr_ = res["ips"], res["dr"]
    assert isinstance(ips, Estimate) and isinstance(dr_, Estimate)
    w = weights(target, logged, a, 1e-3)
    plain = dr(target, d["true"], w, a, d["r"])
    assert dr_.hi - dr_.lo == pytest.approx(plain.hi - plain.lo + 2 * 0.1)


def test_switch_dr_with_infinite_threshold_is_dr() -> None:
    d = synthetic(300, 3)
    target = one_hot(d["true"].argmax(axis=1), K)
    w = weights(target, d["mu"], d["a"], 1e-3)
    q = d["true"] * 0.9
    sw, _ = switch_dr(target, q, w, d["a"], d["r"], d["mu"], 1e-3, taus=[np.inf])
    assert sw.value == pytest.approx(dr(target, q, w, d["a"], d["r"]).value)


# --- simulated logs ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sim_log() -> Any:
    sim = build_sim(num_envs=4, sla_range_ms=(50.0, 400.0))
    run = log_stream(sim, modipick_probabilities, 150, seed=5)
    return sim, run


def write_log(path: Path, sim: Any, run: Any, **over: Any) -> Path:
    """The simulated run as a JSON-lines decision log, as a server writes it."""
    ids = tuple(str(i) for i in sim.pool.ids)
    sel = SelectorInfo("modipick", "modipick", Exploration("rule"))
    with open(path, "w") as f:
        for i in range(run.actions.size):
            a = int(run.actions[i])
            rec = DecisionRecord(
                ts=float(i), request_id=f"r{i}", schema=ObsLayout.schema, pool=ids,
                pool_hash=pool_hash(ids), selector=sel,
                features=tuple(float(v) for v in run.obs[i]), action=a, model_id=ids[a],
                probabilities=tuple(float(p) for p in run.probs[i]), source="fallback",
                reason="rule", outcome=Outcome(12.0, bool(run.met[i]), float(run.accuracy[i])),
            ).to_dict()  # fmt: skip
            rec.update(over)
            f.write(json.dumps(rec) + "\n")
    return path


def test_json_log_and_arrays_give_the_same_estimates(tmp_path: Path, sim_log: Any) -> None:
    sim, run = sim_log
    lg = read_decision_log(write_log(tmp_path / "d.jsonl", sim, run))
    la = decision_log_from_arrays(run.obs, run.actions, run.probs, run.met, run.accuracy,
                                  [str(i) for i in sim.pool.ids])  # fmt: skip
    cands = [PolicyCandidate("dg", DynamicGreedy()),
             FunctionCandidate("fastest", lambda o: np.full(o.shape[0], 1))]  # fmt: skip
    r1, r2 = evaluate(lg, cands), evaluate(la, cands)
    assert r1.to_dict()["candidates"] == r2.to_dict()["candidates"]
    assert r1.logging_policy["effective_accuracy"].value == pytest.approx(
        float((run.met * run.accuracy).mean())
    )


def _shield_settings() -> list[Any]:
    from modi.runtime import selector as selector_module

    modes = list(getattr(selector_module, "SHIELD_MODES", ()))
    return [True, False, *[m for m in modes if m not in ("off",)]]


@pytest.mark.parametrize("shield", _shield_settings())
def test_served_selector_candidate_matches_the_selector(
    sim_log: Any, bandit_selector_files: dict[str, Path], shield: Any
) -> None:
    """The candidate's probabilities are what the served selector draws: rows it decides
    deterministically agree with every draw; on the others the draw frequencies match."""
    sim, run = sim_log
    la = decision_log_from_arrays(run.obs, run.actions, run.probs, run.met, run.accuracy,
                                  [str(i) for i in sim.pool.ids])  # fmt: skip
    cand = load_candidate(str(bandit_selector_files["greedy"]), la, shield=shield)
    assert isinstance(cand, SelectorCandidate)
    obs = run.obs[:200]
    probs = cand.probabilities(obs)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    mixed = probs.max(axis=1) < 1.0
    if cand.shield_mode == "budget":  # the greedy file breaks the budget: the shield fires
        assert mixed.any() and (~mixed).any()
    if cand.shield_mode == "off":
        assert not mixed.any()
    served = Selector.load(str(bandit_selector_files["greedy"]), cand.selector.pool,
                           strict=True, shield=shield)  # fmt: skip
    draws = 300
    counts = np.zeros_like(probs)
    rows = np.arange(obs.shape[0])
    for s in range(draws):
        served.reseed(s)
        idx = served.select_features(obs).index
        assert np.all(probs[rows, idx] > 0)
        counts[rows, idx] += 1
    freq = counts / draws
    np.testing.assert_array_equal(freq[~mixed], probs[~mixed])
    if mixed.any():
        assert np.abs(freq[mixed] - probs[mixed]).max() < 0.1


# --- the command ------------------------------------------------------------------------------


def test_modi_ope_end_to_end(
    tmp_path: Path, sim_log: Any, bandit_selector_files: dict[str, Path], capsys: Any
) -> None:
    sim, run = sim_log
    path = write_log(tmp_path / "d.jsonl", sim, run)
    out = tmp_path / "out"
    onnx = str(bandit_selector_files["linucb"])
    rc = ope_cli.main([str(path), onnx, "dynamic_greedy", "related_accurate", "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "logging policy" in text and "related_accurate" in text
    doc = json.loads((out / "ope.json").read_text())
    assert doc["n"] == run.actions.size
    assert set(doc["logging_policy"]) == {"value", "lo", "hi"}
    names = [c["name"] for c in doc["candidates"]]
    assert names[1:] == ["dynamic_greedy", "related_accurate"]
    for c in doc["candidates"]:
        assert set(c["estimates"]) == {"ips", "snips", "dm", "dr", "switch_dr"}
        for est in c["estimates"].values():
            assert ("error" in est) != ("value" in est)
            if "value" in est:
                assert est["lo"] <= est["value"] <= est["hi"]
    # related_accurate stays inside ModiPick's support: every estimator answers.
    ra = doc["candidates"][2]
    assert all("value" in e for e in ra["estimates"].values()), ra
    lines = (out / "ope.csv").read_text().splitlines()
    assert lines[0].startswith("candidate,path,metric,estimator,value,lo,hi")
    assert len(lines) == 1 + 2 + 3 * 2 * 5


@pytest.mark.parametrize(
    ("mutate", "fragment"),
    [
        ("truncate", "line 150: truncated last line"),
        ("foreign", "line 1, field 'v': missing: not a modi decision record"),
        ("no_probs", "field 'probabilities': missing"),
        ("old_server", "older modi-serve"),
    ],
)
def test_modi_ope_bad_log(
    tmp_path: Path, sim_log: Any, capsys: Any, mutate: str, fragment: str
) -> None:
    sim, run = sim_log
    path = write_log(tmp_path / "d.jsonl", sim, run)
    lines = path.read_text().splitlines(keepends=True)[:150]
    if mutate == "truncate":
        lines[-1] = lines[-1][: len(lines[-1]) // 2]
    elif mutate == "foreign":
        lines = [json.dumps({"level": "info", "msg": "started"}) + "\n"]
    elif mutate == "no_probs":
        rec = json.loads(lines[7])
        del rec["probabilities"]
        lines[7] = json.dumps(rec) + "\n"
    elif mutate == "old_server":
        lines = [json.dumps({"ts": 1.0, "features": [], "model_id": "a", "propensity": 1.0}) + "\n"]
    path.write_text("".join(lines))
    rc = ope_cli.main([str(path), "dynamic_greedy", "--out", str(tmp_path / "o")])
    assert rc == 2
    err = capsys.readouterr().err
    assert fragment in err, err
    assert not (tmp_path / "o" / "ope.json").exists()


def test_modi_ope_candidate_for_another_pool_or_schema(
    tmp_path: Path, sim_log: Any, trained_linucb: Any, capsys: Any
) -> None:
    from modi.agents.export import export_onnx

    sim, run = sim_log
    path = write_log(tmp_path / "d.jsonl", sim, run)
    other = export_onnx(trained_linucb, tmp_path / "other.onnx", pool_ids=["a", "b", "c"])
    assert ope_cli.main([str(path), str(other), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "cannot serve the logged pool" in err and "other.onnx" in err
    assert ope_cli.main([str(path), str(tmp_path / "nope.onnx")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert ope_cli.main([str(path), "oracle"]) == 2
    assert "sees the future" in capsys.readouterr().err
    assert ope_cli.main([str(path), "best_guess"]) == 2
    assert "expected an .onnx file" in capsys.readouterr().err


def test_modi_ope_unknown_outcome(tmp_path: Path, sim_log: Any, capsys: Any) -> None:
    sim, run = sim_log
    path = write_log(tmp_path / "d.jsonl", sim, run)
    lines = path.read_text().splitlines(keepends=True)
    rec = json.loads(lines[3])
    rec["outcome"]["met"] = None
    lines[3] = json.dumps(rec) + "\n"
    path.write_text("".join(lines))
    assert ope_cli.main([str(path), "dynamic_greedy", "--out", str(tmp_path / "o")]) == 2
    assert "line 4" in capsys.readouterr().err
    rc = ope_cli.main([str(path), "dynamic_greedy", "--drop-unknown", "--out", str(tmp_path / "o")])
    assert rc == 0
    doc = json.loads((tmp_path / "o" / "ope.json").read_text())
    assert doc["n"] == len(lines) - 1 and doc["dropped_unknown_outcome"] == 1


# --- the simulation study ---------------------------------------------------------------------


def test_validation_tiny_budget() -> None:
    cfg = ValidationConfig(scenarios=("paper_campus",), reps=2, requests=200, streams=4,
                           train_requests=400, logger_train_requests=200)  # fmt: skip
    runs = run_validation(cfg, progress=False)
    assert len(runs) == 2 * 2 * 3 * 2 * 5  # loggers × reps × candidates × metrics × estimators
    s = summarise(runs)
    eps = s[(s.logger == "eps_linucb") & (s.metric == "effective_accuracy")]
    # ε-greedy logs cover every action: nothing refused, every coverage computed.
    assert (eps.refused == 0).all() and eps.coverage.notna().all()
    assert ((runs.true_onpolicy >= 0) & (runs.true_onpolicy <= 1)).all()
    ok = runs[~runs.refused]
    assert ((ok.lo <= ok.value) & (ok.value <= ok.hi)).all()


def test_candidate_for_another_schema(sim_log: Any, bandit_selector_files: dict[str, Path]) -> None:
    from modi.agents.ope import OPEError
    from modi.runtime.device_features import DeviceObsLayout

    sim, run = sim_log
    k = len(sim.pool.ids)
    dev = decision_log_from_arrays(
        np.zeros((3, DeviceObsLayout(k).dim)), run.actions[:3], run.probs[:3], run.met[:3],
        run.accuracy[:3], [str(i) for i in sim.pool.ids], schema=DeviceObsLayout.schema,
    )  # fmt: skip
    for spec in ("dynamic_greedy", str(bandit_selector_files["linucb"])):
        with pytest.raises(OPEError, match="schema"):
            load_candidate(spec, dev)


def test_met_model_is_calibrated_on_a_near_separable_log() -> None:
    """On WiFi the download is a few ms and execution times barely vary, so ``met`` is almost a
    step function of the features; an ε-greedy learned logger makes the log nearly separable.
    The fit must neither diverge nor saturate (plain Newton steps did: P(met) = 1 everywhere)."""
    from modi.agents.bandits import LinUCB
    from modi.agents.ope import MetModel
    from modi.experiments.ope_validation import epsilon_greedy

    sim = build_sim(network="link_wifi", num_envs=4, sla_range_ms=(50.0, 400.0))
    greedy = LinUCB(seed=1)
    greedy.fit(sim, 500, seed=2, progress=False)
    run = log_stream(sim, epsilon_greedy(greedy, 0.2), 150, seed=5)
    lay = ObsLayout.from_obs_dim(run.obs.shape[1])
    feats = run.obs.astype(np.float64)
    m = MetModel(lay).fit(feats, run.actions, run.met)
    assert np.isfinite(m.coef).all() and np.abs(m.coef).max() < 100
    p = m.predict(feats)
    taken = p[np.arange(run.actions.size), run.actions]
    assert abs(taken.mean() - run.met.mean()) < 0.01
    for k in np.unique(run.actions):
        sel = run.actions == k
        if sel.sum() >= 30:
            assert abs(taken[sel].mean() - run.met[sel].mean()) < 0.05, k
    assert 0.0 < run.met.mean() < 1.0 and p.std() > 0.1  # informative, not constant


def test_modi_ope_shadow_candidate(tmp_path: Path, sim_log: Any, capsys: Any) -> None:
    """``shadow`` evaluates the challenger from the probabilities the server logged for it:
    the same numbers as evaluating that policy itself."""
    sim, run = sim_log
    path = write_log(tmp_path / "d.jsonl", sim, run)
    choice = DynamicGreedy().select(run.obs)
    ids = [str(i) for i in sim.pool.ids]
    sel = {"name": "dg", "version": "sha256:00", "exploration": {"kind": "none"}}
    lines = []
    for i, line in enumerate(path.read_text().splitlines()):
        rec = json.loads(line)
        k = int(choice[i])
        rec["shadow"] = {"selector": sel, "action": k, "model_id": ids[k],
                         "probabilities": [float(j == k) for j in range(len(ids))]}  # fmt: skip
        lines.append(json.dumps(rec) + "\n")
    path.write_text("".join(lines))
    out = tmp_path / "o"
    assert ope_cli.main([str(path), "shadow", "dynamic_greedy", "--out", str(out)]) == 0
    doc = json.loads((out / "ope.json").read_text())
    sh, dg = doc["candidates"]
    assert sh["name"] == "shadow:dg" and sh["estimates"] == dg["estimates"]
    # A record without the shadow: refused, naming the line.
    rec = json.loads(lines[9])
    rec["shadow"] = None
    lines[9] = json.dumps(rec) + "\n"
    path.write_text("".join(lines))
    assert ope_cli.main([str(path), "shadow", "--out", str(tmp_path / "o2")]) == 2
    assert "line 10: field 'shadow' is null" in capsys.readouterr().err
