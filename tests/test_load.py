"""Planning under load: the queue-aware rule, the lookahead reference (it knows the present, not
the future, and leaves the simulator alone) and modi-load-report at a tiny budget."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from modi.agents.baselines import CalibratedGreedy, QueueAwareGreedy, make_policy
from modi.agents.lookahead import RolloutLookahead, future_copy, pareto_models
from modi.envs.simulator import ModelSelectionSim
from modi.experiments.common import instantiate_node
from modi.experiments.load_report import QUEUE_RULES, REPORT_COLUMNS, _compose, main
from modi.experiments.splits import Splits, network_for_split
from modi.runtime import features as F


def _loaded_sim(num_envs: int = 4, sla_ms: float = 150.0) -> ModelSelectionSim:
    cfg = _compose(["scenario=loaded_server", "tracking=none"])
    pool = instantiate_node(cfg, "pool")
    net = network_for_split(cfg, "test", Splits.from_cfg(cfg, train_seeds=[0]))
    args: Any = OmegaConf.to_container(cfg.sim, resolve=True)
    return ModelSelectionSim(pool, net, num_envs=num_envs, sla_ms=sla_ms, **args)


def _warm(sim: ModelSelectionSim, steps: int = 150, seed: int = 3) -> None:
    """Reset and serve with the slowest model until the queues are busy."""
    sim.reset(seed)
    slow = np.full(sim.num_envs, int(np.argmax(sim.pool.mean_ms)))
    for _ in range(steps):
        sim.step(slow)


def test_queue_aware_greedy_takes_smaller_models_as_the_queue_grows() -> None:
    k = 3
    obs = np.zeros((2, F.obs_dim(k)), dtype=np.float32)
    obs[:, F.SLA] = 200.0
    obs[:, F.REMAINING] = 150.0
    obs[:, F.SLOWDOWN] = 1.0
    obs[:, F.QUEUE] = [0, 4]
    models = obs[:, F.R :].reshape(2, k, F.P)
    models[:, :, F.MU] = [5.0, 30.0, 100.0]
    models[:, :, F.ACC] = [0.6, 0.75, 0.8]
    rule = QueueAwareGreedy(z=0.0, download_ms=10.0, wait_ms_per_request=20.0)
    assert rule.select(obs).tolist() == [2, 1]  # 4 x 20 ms queued: only the 30 ms model fits
    obs[1, F.SLOWDOWN] = 2.0  # the queue ahead runs twice as slow too: the fastest is left
    assert rule.select(obs).tolist() == [2, 0]
    blind = QueueAwareGreedy(z=0.0, download_ms=10.0, wait_ms_per_request=0.0)
    plain = CalibratedGreedy(z=0.0, download_ms=10.0, wait_ms_per_request=0.0)
    assert blind.select(obs).tolist() == plain.select(obs).tolist()
    assert isinstance(make_policy("calibrated_greedy_queue"), QueueAwareGreedy)


def test_pareto_models_drop_dominated_models() -> None:
    mu = np.array([4.9, 3.2, 4.2, 25.0, 60.0])
    acc = np.array([0.49, 0.50, 0.63, 0.60, 0.80])
    assert pareto_models(mu, acc).tolist() == [1, 2, 4]


def test_future_copy_keeps_the_present_and_redraws_the_future() -> None:
    sim = _loaded_sim()
    _warm(sim)
    before = copy.deepcopy(sim)
    fut = future_copy(sim, np.random.default_rng(0), horizon=5)
    i = sim._cursor
    assert fut.block_len >= 6 and fut._cursor == 0
    # the future requests reach the server after the current one (those still uploading now
    # included), in arrival order
    assert (fut._blk_arrive[1:6] >= sim._blk_arrive[i]).all()
    assert (np.diff(fut._blk_arrive[1:6], axis=0) >= 0).all()
    for name in ("_blk_sla", "_blk_tin", "_blk_tout", "_blk_time", "_blk_arrive"):
        np.testing.assert_array_equal(getattr(fut, name)[0], getattr(sim, name)[i])
    np.testing.assert_array_equal(fut.server.queue_len, sim.server.queue_len)
    np.testing.assert_array_equal(fut.obs, sim.obs)
    # the future requests are new draws, not the simulator's own
    assert not np.allclose(fut._blk_time[1:3], sim._blk_time[i + 1 : i + 3])
    # and the simulator itself is untouched: it goes on exactly as a copy taken before
    a = np.zeros(sim.num_envs, dtype=np.intp)
    o1, o2 = sim.step(a), before.step(a)
    np.testing.assert_array_equal(o1.e2e_ms, o2.e2e_ms)
    np.testing.assert_array_equal(sim.obs, before.obs)
    with pytest.raises(ValueError, match="horizon"):
        future_copy(sim, np.random.default_rng(0), horizon=0)


def test_lookahead_knows_the_present_not_the_future() -> None:
    sim = _loaded_sim()
    _warm(sim)
    other = copy.deepcopy(sim)
    i = other._cursor
    # another future: later arrivals, execution noise and downloads differ, the present not
    other._blk_time[i + 1 :] += 500.0
    other._blk_z[i:] = -other._blk_z[i:]
    other._blk_tout[i + 1 :] *= 3.0
    plan = RolloutLookahead(make_policy("informed_ceiling"), horizon=4, samples=2)
    plan.reset(sim.num_envs, 7)
    a = plan.select_informed(sim.obs, sim)
    plan.reset(sim.num_envs, 7)
    b = plan.select_informed(other.obs, other)
    np.testing.assert_array_equal(a, b)
    # horizon 1 is the informed ceiling: the present only
    one = RolloutLookahead(make_policy("informed_ceiling"), horizon=1)
    ceiling = make_policy("informed_ceiling")
    np.testing.assert_array_equal(
        one.select_informed(sim.obs, sim), ceiling.select_informed(sim.obs, sim)
    )
    with pytest.raises(TypeError, match="select_informed"):
        plan.select(sim.obs)
    for bad in ({"horizon": 0}, {"samples": 0}, {"candidates": "some"}):
        with pytest.raises(ValueError, match="lookahead"):
            RolloutLookahead(make_policy("informed_ceiling"), **bad)  # type: ignore[arg-type]


TINY = [
    "--sla", "150", "--n-requests", "60", "--val-requests", "40", "--streams", "2",
    "--train-requests", "600", "--lookahead-requests", "8", "--horizon", "3", "--samples", "1",
    "--set", "train.num_envs=8", "agent.n_steps=16", "agent.batch_size=64",
    "splits.test.seeds=[1000,1001]",
    "tuning.calibrated_greedy_queue.z=[0,1]", "tuning.calibrated_greedy_queue.quantile=[0.9]",
    "tuning.calibrated_greedy_queue.wait_ms_per_request=[0,20]",
    "tuning.model_switching.z=[1]", "tuning.model_switching.quantile=[0.9]",
]  # fmt: skip


def test_load_report_at_a_tiny_budget(tmp_path: Path) -> None:
    out = tmp_path / "rep"
    assert main(["--out", str(out), *TINY]) == 0
    rep = pd.read_csv(out / "report.csv")
    assert list(rep.columns) == REPORT_COLUMNS
    assert len(rep) == 2 and (rep.sla_ms == 150.0).all()
    first, second = rep.iloc[0], rep.iloc[1]
    assert first.trained_on_arrivals and not second.trained_on_arrivals
    assert first.arrivals == "AzureLLMInferenceTrace_conv" and second.arrivals != first.arrivals
    for col in ("best_rule_eff_acc", "learned_eff_acc", "lookahead_eff_acc",
                "informed_ceiling_eff_acc", "oracle_eff_acc_not_a_bound"):  # fmt: skip
        assert 0.0 <= first[col] <= 1.0, col
    assert first.diff_lo <= first["diff"] <= first.diff_hi
    assert first["diff"] == pytest.approx(first.learned_eff_acc - first.best_rule_eff_acc)
    assert first.n_units == 4 and first.requests_per_stream == 30
    assert first.prefix_requests_per_stream == 4 and np.isnan(second.lookahead_eff_acc)
    # the rule is the validation's best setting of the queue-aware grids at that SLA
    val = pd.read_csv(out / "validation.csv")
    assert len(val) == 4 + 1 and set(val.family) == set(QUEUE_RULES)
    best = val.iloc[int(val.effective_accuracy.to_numpy().argmax())]
    assert first.best_rule == best.family and first.best_rule_params == best.params
    assert second.best_rule == first.best_rule  # chosen once, on the first trace
    units = pd.read_csv(out / "units.csv")
    assert set(units.role) == {"best_rule", "learned", "informed_ceiling", "oracle", "lookahead"}
    assert set(units.seed) == {1000, 1001}
    assert (out / "selector.onnx").is_file() and (out / "policy.pt").is_file()
    assert "not a bound" in (out / "report.md").read_text()
    # a saved policy skips training; the same streams give the same learned row
    again = tmp_path / "again"
    no_second = ["--second-trace", "none"]
    assert main(["--out", str(again), *TINY, *no_second, "--policy", str(out / "policy.pt")]) == 0
    rep2 = pd.read_csv(again / "report.csv")
    assert len(rep2) == 1 and not (again / "policy.pt").exists()
    assert rep2.learned_eff_acc.iloc[0] == pytest.approx(first.learned_eff_acc)


def test_load_report_refuses_bad_input(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path), "--horizon", "0"])
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path), "--scenario", "nowhere"])
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path), "--policy", str(tmp_path / "missing.pt")])
    # a scenario without a queue is not a load problem: refused before any training
    assert main(["--out", str(tmp_path), "--scenario", "realistic_wifi"]) == 2
    assert "no server queue" in caplog.text
    assert main(["--out", str(tmp_path), "--second-trace", str(tmp_path / "none.csv")]) == 2
    assert "--second-trace" in caplog.text


def test_lookahead_plans_from_the_first_request_on_a_trace_network() -> None:
    """A trace's time starts at 0: the future copy's window of earlier captures is clipped
    there (loaded_lte failed on its first request before)."""
    cfg = _compose(["scenario=loaded_lte", "tracking=none"])
    pool = instantiate_node(cfg, "pool")
    net = network_for_split(cfg, "test", Splits.from_cfg(cfg, train_seeds=[0]))
    args: Any = OmegaConf.to_container(cfg.sim, resolve=True)
    sim = ModelSelectionSim(pool, net, num_envs=2, sla_ms=150.0, **args)
    sim.reset(5)
    plan = RolloutLookahead(make_policy("informed_ceiling"), horizon=3, samples=1)
    plan.reset(sim.num_envs, 1)
    a = plan.select_informed(sim.obs, sim)
    assert a.shape == (2,) and ((a >= 0) & (a < len(pool))).all()
    fut = future_copy(sim, np.random.default_rng(0), horizon=3)
    assert (fut._blk_time >= 0).all()
