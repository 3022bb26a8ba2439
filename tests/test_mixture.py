"""Training on a mixture (conf/mix, modi.experiments.mixture), pool time scaling and
modi-transfer-report at a tiny budget."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_module
from omegaconf import DictConfig, OmegaConf

from modi.agents.bandits import LinUCB, load_learned
from modi.envs.catalog import load_preset
from modi.envs.pools import PoolError
from modi.envs.simulator import ModelSelectionSim
from modi.experiments.common import ConfigError
from modi.experiments.mixture import MixtureSim, MixtureSpec
from modi.experiments.train import prepare_training
from modi.experiments.transfer_report import main as transfer_main
from modi.experiments.transfer_report import rtt_overrides, verdict, with_validation
from modi.runtime import features as F


def _cfg(*overrides: str) -> DictConfig:
    with initialize_config_module(config_module="modi.conf", version_base="1.3"):
        return compose(config_name="train", overrides=["tracking=none", *overrides])


def _spec(**mix: object) -> MixtureSpec | None:
    base = OmegaConf.to_container(_cfg().mix, resolve=True)
    assert isinstance(base, dict)
    base.update(mix)
    return MixtureSpec.from_cfg(base)


def test_default_training_is_the_mixture_and_mix_none_the_scenario() -> None:
    ts = prepare_training(_cfg("train.num_envs=8"))
    assert isinstance(ts.sim, MixtureSim) and ts.agent.kind == "neural"
    assert ts.agent.reads is None  # the MLP reads every feature, the connection's RTT too
    regime = prepare_training(_cfg("train.num_envs=8", "agent=linucb_regime"))
    assert {"srtt_ms", "rttvar_ms"} <= set(regime.agent.reads or ())
    alone = prepare_training(_cfg("mix=none", "agent=linucb"))
    assert isinstance(alone.sim, ModelSelectionSim)
    with pytest.raises(ConfigError, match="mix=none"):
        prepare_training(_cfg("agent=ppo"))


def test_episodes_vary_family_rtt_and_pool_and_a_bandit_trains_on_them() -> None:
    spec = _spec(chunk_requests=64)
    assert spec is not None
    sim = MixtureSim(spec, num_envs=8, sim_args={}, segment=(0.0, 0.6))
    sim.reset(3)
    widths = set()
    for _ in range(400):
        widths.add(sim.obs.shape[1])
        assert np.isfinite(sim.obs[:, F.SRTT]).all()
        sim.step(np.zeros(8, dtype=np.intp))
    families = {e[0] for e in sim.episodes}
    scales = {e[1] for e in sim.episodes}
    pools = {e[2] for e in sim.episodes}
    assert len(families) >= 4 and len(scales) >= 3 and "random" in pools
    assert len(widths) >= 3  # pools of different sizes
    lo, hi = spec.rtt_scale
    assert all(lo - 1e-9 <= s <= hi + 1e-9 for s in scales)
    # the same seed gives the same episodes
    again = MixtureSim(spec, num_envs=8, sim_args={}, segment=(0.0, 0.6))
    again.reset(3)
    for _ in range(400):
        again.step(np.zeros(8, dtype=np.intp))
    assert again.episodes == sim.episodes
    pol = LinUCB(seed=0, steps=("slack", "net_headroom", "net_margin"), width_ms=2.0)
    pol.fit(sim, 3_200, seed=0, progress=False)  # type: ignore[arg-type]
    r = pol.feature_ranges
    assert r is not None and r.get("srtt_ms") is not None


def test_bad_mixtures_are_refused_before_training() -> None:
    fams = {"wifi": {"weight": 0.0, "scenario": "realistic_wifi"}}
    with pytest.raises(ConfigError, match="every weight is 0"):
        _spec(families=fams)
    with pytest.raises(ConfigError, match=r"mix.rtt_scale: min 2.0 > max 0.5"):
        _spec(rtt_scale=[2.0, 0.5])
    with pytest.raises(ConfigError, match="unknown scenario 'nowhere'"):
        _spec(families={"x": {"scenario": "nowhere"}})
    with pytest.raises(ConfigError, match="chunk_requests"):
        _spec(chunk_requests=0)
    with pytest.raises(ConfigError, match="weight must be a finite number >= 0"):
        _spec(families={"x": {"scenario": "realistic_wifi", "weight": -1}})
    zero = [f"mix.families.{f}.weight=0" for f in _cfg().mix.families]
    with pytest.raises(ConfigError, match="every weight is 0"):
        prepare_training(_cfg(*zero))


def test_pool_time_scale() -> None:
    base = load_preset("pool", "modipick_table2")
    slow = load_preset("pool", "modipick_table2", time_scale=10)
    assert slow.name == "modipick_table2_x10"
    np.testing.assert_allclose(slow.mean_ms, 10 * base.mean_ms)
    np.testing.assert_allclose(slow.std_ms, 10 * base.std_ms)
    np.testing.assert_array_equal(slow.accuracy, base.accuracy)
    with pytest.raises(PoolError, match="time_scale must be a number > 0"):
        load_preset("pool", "modipick_table2", time_scale=0)


def test_rtt_overrides_scale_the_round_trip_of_every_network_kind() -> None:
    assert rtt_overrides(_cfg("scenario=lte_trace"), 2.0) == ["network.rtt_ms=120"]
    assert rtt_overrides(_cfg("scenario=paper_campus"), 0.5) == [
        "network.mean_ms=28.9367",
        "network.std_ms=15.3937",
    ]
    assert rtt_overrides(_cfg("scenario=lte_trace"), 1.0) == []


def test_transfer_report_at_a_tiny_budget(tmp_path: Path) -> None:
    ts = prepare_training(_cfg("train.num_envs=8", "train.requests=3200"))
    ts.agent.fit(ts.sim, 3_200, 0, progress=False)  # type: ignore[arg-type]
    policy = ts.agent.save(tmp_path / "policy.pt")
    assert load_learned(policy).reads == ts.agent.reads
    out = tmp_path / "tr"
    args = ["--policy", str(policy), "--out", str(out), "--scenarios", "paper_campus",
            "--rtt-factors", "2", "--no-pools", "--n-requests", "100", "--val-requests", "100",
            "--sla", "150", "--quiet"]  # fmt: skip
    assert transfer_main(args) == 0
    rep = pd.read_csv(out / "report.csv")
    assert list(rep.condition) == ["paper_campus rtt x2"] and list(rep.rtt_factor) == [2.0]
    r = rep.iloc[0]
    assert r.diff_lo <= r["diff"] <= r.diff_hi
    assert r.best_rule not in ("oracle", "informed_ceiling", r.learned)
    # the same comparison on the validation split, for choosing without the test split
    assert r.val_diff_lo <= r.val_diff <= r.val_diff_hi
    assert r.val_diff == pytest.approx(r.val_learned_eff_acc - r.val_best_rule_eff_acc)
    verdicts = pd.read_csv(out / "verdicts.csv")
    assert list(verdicts.condition) == ["paper_campus rtt x2"]
    assert verdicts.val_worst_diff_lo.iloc[0] == pytest.approx(r.val_diff_lo)
    assert "On the validation split" in (out / "report.md").read_text()
    # the rules were tuned on this condition's own validation split (its folder's val/)
    assert (out / "paper_campus_rtt_x2" / "val" / "results.csv").is_file()
    assert "paper_campus rtt x2" in (out / "report.md").read_text()
    with pytest.raises(SystemExit):
        transfer_main(["--policy", str(tmp_path / "missing.pt"), "--out", str(out)])


def test_decision_penalty_is_chosen_on_the_validation_mixture(tmp_path: Path) -> None:
    from modi.experiments.train import choose_decision_penalty

    with pytest.raises(ConfigError, match=r"train\.decision_penalties must be >= 0"):
        prepare_training(_cfg("train.decision_penalties=[0,-1]"))
    grid = ["train.decision_penalties=[0,0.5,3]", "train.penalty_requests=800"]
    ts = prepare_training(_cfg("train.num_envs=8", *grid))
    ts.agent.fit(ts.sim, 3_200, 0, progress=False)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"train\.penalty_tie_tolerance"):
        prepare_training(_cfg("train.penalty_tie_tolerance=-0.1"))
    table = choose_decision_penalty(
        _cfg(*grid, "train.penalty_tie_tolerance=0"), ts, ts.agent, tmp_path, progress=False
    )
    assert table is not None and list(table.decision_penalty) == [0.0, 0.5, 3.0]
    best = table.loc[table.val_effective_accuracy.idxmax()]
    assert table.chosen.sum() == 1 and bool(best.chosen)
    assert ts.agent.miss_penalty == best.decision_penalty
    assert (table.requests >= 800).all()
    saved = pd.read_csv(tmp_path / "decision_penalty.csv")
    assert list(saved.decision_penalty) == [0.0, 0.5, 3.0]
    # the penalty ships with the policy: the saved file decides with it
    assert load_learned(ts.agent.save(tmp_path / "p.pt")).miss_penalty == best.decision_penalty
    # a larger penalty never lowers attainment on the same validation stream here
    assert table.val_attainment.iloc[-1] >= table.val_attainment.iloc[0] - 0.02
    none = _cfg("train.decision_penalties=[]")
    assert choose_decision_penalty(none, ts, ts.agent, tmp_path) is None


def test_tied_penalties_are_decided_by_attainment() -> None:
    from modi.experiments.train import pick_penalty

    table = pd.DataFrame(
        {
            "decision_penalty": [0.0, 0.5, 1.0, 2.0],
            "val_effective_accuracy": [0.5190, 0.5194, 0.5192, 0.5150],
            "val_attainment": [0.670, 0.674, 0.676, 0.700],
        }
    )
    assert pick_penalty(table, 0.0) == 0.5  # no tolerance: the highest effective accuracy
    assert pick_penalty(table, 0.0005) == 1.0  # tied within 0.05 points: more attainment
    assert pick_penalty(table, 0.01) == 2.0
    # equal attainment: the higher effective accuracy, then the smaller penalty
    flat = table.assign(val_attainment=0.7)
    assert pick_penalty(flat, 0.01) == 0.5
    assert pick_penalty(flat.assign(val_effective_accuracy=0.5), 0.0) == 0.0


def test_transfer_verdict_checks_the_validation_split_apart_from_the_test_split() -> None:
    row = {"condition": "c", "best_rule": "r", "sla_ms": 100.0, "diff": 0.01, "diff_lo": 0.0,
           "diff_hi": 0.02, "attainment_diff": 0.0, "ceiling_gap": 0.0, "gap_closed": 0.0,
           "shield_rate": 0.0}  # fmt: skip
    val = {"val_diff": -0.01, "val_diff_lo": -0.02, "val_diff_hi": 0.0,
           "val_attainment_diff": 0.0, "val_ceiling_gap": 0.0, "val_gap_closed": 0.0}  # fmt: skip
    v = verdict(pd.DataFrame([{**row, **val}]))
    assert v["meets_criterion"] and not v["val_meets_criterion"]
    assert v["val_worst_diff_lo"] == pytest.approx(-0.02) and v["val_worst_sla_ms"] == 100.0
    # a report written before the validation columns: no validation verdict, the test one stands
    old = verdict(pd.DataFrame([row]))
    assert old["meets_criterion"] and "val_meets_criterion" not in old
    with pytest.raises(ValueError, match="several rows per SLA"):
        with_validation(pd.DataFrame([row, row]), pd.DataFrame([val]))
