"""``modi-train env=offload`` (issue 14): the device policy's splits, rules tuned on
validation, the learned row served through ``DeviceSelector`` beside every rule and ceiling,
the accuracy-energy frontier, and bad input named before training."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_module
from omegaconf import DictConfig

from modi.experiments.common import ConfigError
from modi.experiments.train_offload import (
    LEARNED,
    choose_best_rule,
    choose_setting,
    learned_name,
    mixture_weights,
    run_offload_training,
    tuning_grid,
)

TINY = [
    "env=offload",
    "tracking=none",
    "env.devices=[mid]",
    "env.networks=[link_wifi,lte_tmobile]",
    "env.train_networks=[lte_att]",  # trained on, never evaluated
    "env.train.streams=4",
    "env.train.steps=15",
    "env.train.epochs=1",
    "env.train.hidden=[16]",
    "env.eval.sla_ms=[400,1000]",
    "splits.val.seeds=[100]",
    "splits.test.seeds=[1000,1001]",
    "env.eval.requests_per_point=40",
    "env.eval.val_requests_per_point=40",
    "env.eval.streams_per_point=4",
    "env.eval.parity_observations=200",
    "env.eval.rules=[static_local,pieslicer,mdinference]",
    "env.eval.ceilings=[oracle]",
    "~env.tuning.deepdecision",
    "~env.tuning.on_device",
    "~env.tuning.modipick_backup",
    "env.tuning.pieslicer.margin_ms=[0.0,50.0]",
    "env.tuning.mdinference.server_gamma=[0.0,1.0]",
    "env.policy_args.pieslicer.fit_requests=100",
    "env.frontier.w_energy_per_j=[0.0,1.0]",
    "env.select.w_energy_per_j=[0.0,1.0]",
    "env.select.tie_tolerance=[0.0,0.01]",
    "env.select.anchor_margin=[null,0.05]",
    "env.frontier.test_seeds=1",
    "figures=false",
]


def _cfg(*extra: str) -> DictConfig:
    with initialize_config_module("modi.conf", version_base="1.3"):
        return compose("train", overrides=[*TINY, *extra])


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, float], Path]:
    out = tmp_path_factory.mktemp("offload_train")
    return run_offload_training(_cfg(), out), out


def test_tiny_run_writes_the_served_learned_row_beside_every_tuned_rule(
    tiny_run: tuple[dict[str, float], Path],
) -> None:
    from modi.experiments.compare_offload import RESULT_COLUMNS

    metrics, out = tiny_run
    assert metrics["onnx_parity"] == 1.0
    # the learned row is DeviceSelector's decisions; they equal the trained scorer's
    assert metrics["served_fallback_rate"] == 0.0
    assert metrics["served_agreement"] == 1.0
    res = pd.read_csv(out / "results.csv")
    assert set(RESULT_COLUMNS) <= set(res.columns)
    assert {"effective_accuracy_lo", "energy_mj_hi", "n_units", "params"} <= set(res.columns)
    assert (res.n_seeds == 2).all() and (res.n_units == 8).all()
    assert (res.effective_accuracy_lo <= res.effective_accuracy + 1e-12).all()
    for scen in ("mid_link_wifi", "mid_lte_tmobile"):
        for sla in (400.0, 1000.0):
            pols = set(res[(res.scenario == scen) & (res.sla_ms == sla)].policy)
            assert pols == {LEARNED, "static_local", "pieslicer", "mdinference", "oracle"}
    # the tuned setting is one of the grid's, chosen on validation, and reported
    tuned = pd.read_csv(out / "tuned.csv")
    assert set(tuned.policy) == {"static_local", "pieslicer", "mdinference"}
    assert (tuned[tuned.policy == "pieslicer"].grid_points == 2).all()
    val = pd.read_csv(out / "validation.csv")
    for _, t in tuned.iterrows():
        v = val[(val.scenario == t.scenario) & (val.policy == t.policy)]
        by = v.groupby("params").effective_accuracy.mean()
        assert by[t.params] >= by.max() - 0.0005
    paired = pd.read_csv(out / "paired.csv")
    assert len(paired) == 4 and (paired.diff_lo <= paired["diff"]).all()
    assert set(paired.best_rule) <= {"static_local", "pieslicer", "mdinference"}
    # the anchor alone (static_local: the same action and server side) beside the learned row,
    # where the exported policy is anchored on it
    assert ("anchor_eff_acc" in paired) == (not np.isnan(metrics["anchor_margin"]))
    # the PieSlicer-gap counts logged are those of paired.csv's points where the choice matters
    m = paired[paired.choice_matters]
    for key, name in (("pieslicer_gap_closed", "oracle"), ("pieslicer_gap_closed_prep", "prep")):
        closed = m[key].dropna() if key in m else pd.Series(dtype=float)
        assert metrics[f"pieslicer_gap_points_{name}"] == len(closed)
        assert metrics[f"pieslicer_half_closed_{name}"] == (closed >= 0.5).sum()
    from modi.experiments.train_offload import paired_table

    points = zip(paired.scenario, paired.sla_ms, strict=True)
    best = dict(zip(points, paired.best_rule, strict=True))
    units = pd.read_csv(out / "units.csv")
    rules = ["static_local", "pieslicer", "mdinference"]
    assert "anchor_eff_acc" not in paired_table(units, best, rules, anchor_rule=None)
    anchored = paired_table(units, best, rules, anchor_rule="static_local")
    sl = res[res.policy == "static_local"].set_index(["scenario", "sla_ms"]).effective_accuracy
    for _, r in anchored.iterrows():
        assert np.isclose(r.anchor_eff_acc, sl[r.scenario, r.sla_ms])
        assert np.isclose(r.anchor_diff, r.anchor_eff_acc - r.best_rule_eff_acc)
    assert anchored.anchor_ge_at_le_energy.dtype == bool
    # static_local against itself where it is the best rule: at least as good, same energy
    own = anchored[anchored.best_rule == "static_local"]
    assert own.anchor_ge_at_le_energy.all() and np.allclose(own.anchor_diff, 0.0)
    # the best rule within the learned policy's validation energy, beside it
    assert paired.budget_not_worse.dtype == bool
    assert set(paired.budget_rule) <= {*rules, "none"}
    name = learned_name(
        metrics["w_energy_per_j"],
        metrics["tie_tolerance"],
        None if np.isnan(metrics["anchor_margin"]) else metrics["anchor_margin"],
    )
    vm = val.groupby(["scenario", "sla_ms", "policy", "params"], dropna=False).energy_mj.mean()
    for _, r in paired.iterrows():
        ve = vm[r.scenario, r.sla_ms]
        own = float(ve[name].iloc[0])
        tuned_e = {t.policy: float(ve[t.policy][t.params]) for t in
                   tuned[tuned.scenario == r.scenario].itertuples()}  # fmt: skip
        if r.budget_rule == "none":  # every tuned rule spent more on validation
            assert r.budget_not_worse and min(tuned_e.values()) > own
            continue
        assert tuned_e[r.budget_rule] <= own * (1 + 1e-9) + 1e-9
        b = res[(res.scenario == r.scenario) & (res.sla_ms == r.sla_ms)].set_index("policy")
        assert np.isclose(r.budget_rule_eff_acc, b.effective_accuracy[r.budget_rule])
        assert np.isclose(r.budget_diff, r.learned_eff_acc - r.budget_rule_eff_acc)
        assert r.budget_diff_lo <= r.budget_diff <= r.budget_diff_hi
    front = pd.read_csv(out / "frontier.csv")
    assert set(front.kind) == {"learned", "rule"}
    # dominance on the paired intervals beside the one on the means; the counts logged
    lf = front[front.kind == "learned"]
    for col, key in (("dominated_by", "frontier_points_dominated"),
                     ("dominated_by_ci", "frontier_points_dominated_ci")):  # fmt: skip
        assert metrics[key] == (lf[col].fillna("") != "").sum()
    assert (front[front.kind == "rule"].dominated_by_ci.fillna("") == "").all()
    assert metrics["w_energy_per_j"] in (0.0, 1.0)
    assert metrics["tie_tolerance"] in (0.0, 0.01)
    assert metrics["anchor_margin"] == 0.05 or np.isnan(metrics["anchor_margin"])
    weights = pd.read_csv(out / "weights.csv")
    assert len(weights) == 8 and set(weights.anchor_margin.dropna()) == {0.05}
    assert (out / "device_policy.onnx").stat().st_size > 0
    # the training-only network was trained on (the mixture) and is evaluated nowhere
    from modi.agents.device_scorer import DeviceScorerPolicy

    trained = DeviceScorerPolicy.load(out / "device_policy.pt").trained_on
    assert trained["networks"] == ["link_wifi", "lte_tmobile", "lte_att"]
    assert set(trained["mixture"]["networks"]) == {"link_wifi", "lte_tmobile", "lte_att"}
    for f in ("results.csv", "validation.csv", "paired.csv", "units.csv"):
        assert not pd.read_csv(out / f).scenario.str.contains("lte_att").any(), f


def test_every_policy_meets_the_same_test_streams(
    tiny_run: tuple[dict[str, float], Path],
) -> None:
    """Common random numbers: the requests of a point do not depend on the policy (static
    rules with the same preprocessing upload the same raw sizes), and the test streams are
    not the validation streams."""
    _, out = tiny_run
    per_seed = pd.read_csv(out / "results_per_seed.csv")
    val = pd.read_csv(out / "validation.csv")
    test_sl = per_seed[per_seed.policy == "static_local"].set_index(["scenario", "sla_ms", "seed"])
    assert set(test_sl.index.get_level_values("seed")) == {1000, 1001}
    assert set(val.seed) == {100}
    # the oracle bounds every policy point by point (same requests)
    for (scen, sla, seed), g in per_seed.groupby(["scenario", "sla_ms", "seed"]):
        o = float(g[g.policy == "oracle"].mean_reward.iloc[0])
        assert (g.mean_reward <= o + 1e-9).all(), (scen, sla, seed)


def test_trace_networks_read_only_their_split_segment() -> None:
    from modi.experiments.splits import Splits
    from modi.experiments.train_offload import build_scenarios

    cfg = _cfg()
    splits = Splits.from_cfg(cfg, train_seeds=[0])
    (sc_link, sc_lte) = build_scenarios(cfg.env, ["mid"], ["link_wifi", "lte_tmobile"], splits)
    segs = {s: getattr(sc_lte.networks[s], "segment", None) for s in ("train", "val", "test")}
    for s in ("train", "val", "test"):
        assert segs[s] is not None and tuple(segs[s]) == tuple(splits.segments[s])
    assert not hasattr(sc_link.networks["test"], "segment")


def test_every_network_is_priced_with_its_radio_or_named_in_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from modi.experiments.splits import Splits
    from modi.experiments.train_offload import build_scenarios

    cfg = _cfg()
    splits = Splits.from_cfg(cfg, train_seeds=[0])
    with caplog.at_level("WARNING", logger="modi.experiments.train_offload"):
        nets = ["wifi_university", "wifi_residential", "lte_tmobile", "link_wifi", "link_5g"]
        nets += ["link_5g_mmwave", "lte_tmobile_driving"]
        scs = build_scenarios(cfg.env, ["mid"], nets, splits)
    radio = {sc.network: sc.radio for sc in scs}
    assert radio["lte_tmobile"] == radio["lte_tmobile_driving"] == radio["link_5g"] == "lte"
    assert radio["wifi_university"] == radio["link_wifi"] == "wifi"
    assert not caplog.records  # the default networks and the training-only T-Mobile are listed
    caplog.clear()
    with caplog.at_level("WARNING", logger="modi.experiments.train_offload"):
        (sc,) = build_scenarios(cfg.env, ["mid"], ["campus"], splits)
    assert sc.radio == "wifi"
    assert "['campus']" in caplog.text and "env.radio" in caplog.text


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("env.devices=[mid,ultra]", "env.devices.*ultra"),
        ("env.networks=[link_wifi,moon_link]", "env.networks.*moon_link"),
        ("env.train_networks=[moon_link]", "env.train_networks.*moon_link"),
        ("env.train_networks=[lte_tmobile]", r"env.train_networks \['lte_tmobile'\] are in env"),
        ("+env.mixture.devices.mid=0", "env.mixture.devices.mid must be a number > 0"),
        ("+env.mixture.networks.link_5g=1", "not in env.networks"),
        ("+env.tuning.oracle.x=[1]", "env.tuning"),
        ("splits.test.seeds=[100,1000]", "val and test"),
        ("splits.val.seeds=[0]", "train and val"),
        ("env.eval.rules=[static_local,magic]", "unknown policies"),
        ("env.frontier.per_weight_setting=maybe", "per_weight_setting"),
        ("env.select.per_context=maybe", "env.select.per_context"),
    ],
)
def test_bad_input_is_named_before_training(tmp_path: Path, override: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        run_offload_training(_cfg(override), tmp_path)
    assert not (tmp_path / "training.csv").exists()


def test_mixture_weights_and_grids() -> None:
    cfg = _cfg("+env.mixture.networks.lte_tmobile=3")
    w = mixture_weights(cfg.env, "networks", ["link_wifi", "lte_tmobile"])
    assert w == {"link_wifi": 1.0, "lte_tmobile": 3.0}
    both = "env.networks + env.train_networks"
    with pytest.raises(ConfigError, match=r"not in env\.networks \+ env\.train_networks"):
        mixture_weights(cfg.env, "networks", ["link_wifi", "lte_att"], both)
    bad = _cfg("+env.mixture.networks.lte_att=0")
    with pytest.raises(ConfigError, match=r"remove 'lte_att' from env\.networks \+ env\.train"):
        mixture_weights(bad.env, "networks", ["link_wifi", "lte_att"], both)
    grid = tuning_grid(cfg.env, "pieslicer")
    assert grid == [{"margin_ms": 0.0}, {"margin_ms": 50.0}]
    assert tuning_grid(cfg.env, "static_local") == [{}]


def test_best_rule_ties_go_to_less_energy_and_the_setting_to_most_wins() -> None:
    val = pd.DataFrame(
        [
            ("s", 500.0, "a", 0.800, 900.0),
            ("s", 500.0, "b", 0.8003, 400.0),  # tied with a within 0.0005, cheaper
            ("s", 500.0, "c", 0.700, 100.0),
            ("s", 500.0, "learned_w0", 0.801, 950.0),  # more accurate, more energy
            ("s", 500.0, "learned_w0.1", 0.8002, 380.0),  # tied, less energy
            ("s", 500.0, "learned_w0_t0.01", 0.7900, 300.0),  # less energy, too inaccurate
        ],
        columns=["scenario", "sla_ms", "policy", "effective_accuracy", "energy_mj"],
    )
    best = choose_best_rule(val, ["a", "b", "c"], 0.0005)
    assert best == {("s", 500.0): "b"}
    (w, t, a), table = choose_setting(
        val, best, [(0.0, 0.0, None), (0.1, 0.0, None), (0.0, 0.01, None)], 0.0005
    )
    assert (w, t, a) == (0.1, 0.0, None)
    assert list(table.points_ge_at_le_energy) == [0.0, 1.0, 0.0]
    assert np.isclose(table.mean_eff_acc.iloc[0], 0.801)


def test_the_budget_rule_is_the_best_rule_within_the_learned_energy() -> None:
    from modi.experiments.train_offload import choose_budget_rule

    val = pd.DataFrame(
        [
            ("s", 500.0, "a", 0.800, 900.0),  # most accurate, over the budget
            ("s", 500.0, "b", 0.700, 500.0),  # within it, exactly at the budget
            ("s", 500.0, "c", 0.6997, 400.0),  # tied with b within 0.0005, cheaper
            ("s", 500.0, "d", 0.650, 100.0),  # within it, not tied
            ("s", 500.0, "learned_w0", 0.750, 500.0),
            ("t", 500.0, "a", 0.800, 900.0),
            ("t", 500.0, "learned_w0", 0.750, 100.0),  # no rule fits
        ],
        columns=["scenario", "sla_ms", "policy", "effective_accuracy", "energy_mj"],
    )
    got = choose_budget_rule(val, ["a", "b", "c", "d"], "learned_w0", 0.0005)
    assert got == {("s", 500.0): "c", ("t", 500.0): None}
    # without the tie the most accurate within the budget; at the budget counts as within
    assert choose_budget_rule(val, ["a", "b", "c", "d"], "learned_w0", 0.0)[("s", 500.0)] == "b"
    assert choose_budget_rule(val, ["a", "b", "c"], "learned_w1", 0.0005) == {}
    val.loc[val.policy == "learned_w0", "energy_mj"] = np.nan  # no budget: not chosen
    assert choose_budget_rule(val, ["a", "b", "c"], "learned_w0", 0.0005) == {}


def test_tie_tolerance_trades_no_more_than_it_allows() -> None:
    """The epsilon-lexicographic choice: among options within the tolerance of the best
    objective, the least predicted energy; the exported graph computes the same scores."""
    from modi.agents.device_scorer import TIE_OUT, choice_scores

    pred = np.array([[[0.80, 2.0, 0.0], [0.799, 0.5, 0.0], [0.70, 0.1, 0.0]]])
    obj = np.array([1.0, 0.0, 0.0])
    assert choice_scores(pred, obj, 0.0).argmax() == 0
    s = choice_scores(pred, obj, 0.005)
    assert s.argmax() == 1 and s[0, 2] == TIE_OUT
    assert choice_scores(pred, obj, 0.2).argmax() == 2


def test_the_anchor_is_kept_unless_another_option_beats_it_by_the_margin() -> None:
    """An anchor option (a fixed index from the end, whatever the number of local models) is
    chosen when its objective is within the margin of the best; otherwise the choice is the
    plain (or tied) one. With two anchors kept, the choice between them is the plain one."""
    from modi.agents.device_scorer import ANCHOR_BONUS, ANCHORS, anchor_indices, choice_scores
    from modi.runtime import device_features as dfeat

    off, bak = ANCHORS["offload"], ANCHORS["offload_backup"]
    for num_local in (1, 3):
        acts = dfeat.option_actions(num_local)
        assert tuple(acts[off]) == (0, num_local, 0)
        assert tuple(acts[bak]) == (0, num_local, 1)
        k = len(acts)
        pred = np.zeros((2, k, 3))
        pred[:, :, 0] = 0.5
        pred[0, off, 0] = 0.795
        pred[0, 0, 0] = 0.80  # beats the anchor by 0.005
        pred[1, off, 0] = 0.70
        pred[1, 0, 0] = 0.80  # beats it by 0.1
        obj = np.array([1.0, 0.0, 0.0])
        assert list(choice_scores(pred, obj, 0.0).argmax(axis=1)) == [0, 0]
        s = choice_scores(pred, obj, 0.0, anchor_margin=0.01)
        assert list(s.argmax(axis=1)) == [k + off, 0]
        assert s[0, off] == 0.795 + ANCHOR_BONUS
        assert list(choice_scores(pred, obj, 0.0, anchor_margin=0.001).argmax(axis=1)) == [0, 0]
        # margin 0: the anchor only where it is the best (then it wins the tie choice too)
        pred[1, off, 0] = 0.80
        pred[1, off, 1] = 5.0  # more energy than option 0
        assert choice_scores(pred, obj, 0.01).argmax(axis=1)[1] == 0
        assert choice_scores(pred, obj, 0.01, 0.0).argmax(axis=1)[1] == k + off
        # two anchors, both kept: the better of them (the plain objective) ...
        pred[0, bak, 0] = 0.797
        both = anchor_indices(["offload", "offload_backup"])
        assert choice_scores(pred, obj, 0.0, 0.01, both).argmax(axis=1)[0] == k + bak
        # ... or, with a tie tolerance, the one of less predicted energy within it
        pred[0, bak, 1] = 1.0
        assert choice_scores(pred, obj, 0.01, 0.01, both).argmax(axis=1)[0] == k + off


def test_anchor_margin_is_checked() -> None:
    from modi.agents.device_scorer import DeviceScorerError
    from modi.experiments.common import ConfigError
    from modi.experiments.train_offload import anchor_margins

    assert anchor_margins({}) == [None]
    assert anchor_margins({"anchor_margin": [None, 0, 0.01]}) == [None, 0.0, 0.01]
    assert anchor_margins({"anchor_margin": 0.02}) == [0.02]
    for bad in ([-0.1], ["x"], [float("nan")], [], [True]):
        with pytest.raises(ConfigError, match=r"env\.select\.anchor_margin"):
            anchor_margins({"anchor_margin": bad})
    # the frontier's extra margins: none by default, checked and named like the shipped grid's
    front = "env.frontier.anchor_margin"
    assert anchor_margins({}, front, default=()) == []
    assert anchor_margins({"anchor_margin": [0.5, 1]}, front, default=()) == [0.5, 1.0]
    with pytest.raises(ConfigError, match=r"env\.frontier\.anchor_margin: .*-1"):
        anchor_margins({"anchor_margin": [-1]}, front, default=())
    for bad in ("[offload,local]", "local"):  # a list, or one name (not its letters)
        with pytest.raises(ConfigError, match=r"env\.select\.anchors: .*got \[.*'local'\]"):
            run_offload_training(
                _cfg(f"env.select.anchors={bad}"), Path("/nonexistent/never-written")
            )
    with pytest.raises(ConfigError, match=r"env\.select\.anchor_margin"):
        run_offload_training(
            _cfg("env.select.anchor_margin=[-1]"), Path("/nonexistent/never-written")
        )
    from modi.agents.device_scorer import DeviceScorerPolicy

    with pytest.raises(DeviceScorerError, match="anchor_margin"):
        DeviceScorerPolicy(None, anchor_margin=-1.0)  # type: ignore[arg-type]
    with pytest.raises(DeviceScorerError, match="anchors"):
        DeviceScorerPolicy(None, anchors=("nowhere",))  # type: ignore[arg-type]


def _mid_wifi_sim() -> Any:
    """20 mid-tier devices on ``link_wifi`` with SLAs over the training range."""
    from modi.envs.catalog import load_preset
    from modi.envs.offload import OffloadSim

    return OffloadSim(
        load_preset("device", "mid"),
        load_preset("network", "link_wifi"),
        load_preset("pool", "modipick_table2"),
        num_envs=20,
        sla_range_ms=(150.0, 2500.0),
    )


@pytest.mark.parametrize("tie", [0.0, 0.01])
def test_onnx_with_an_anchor_chooses_like_the_policy(
    tiny_run: tuple[dict[str, float], Path], tmp_path: Path, tie: float
) -> None:
    """The exported graph's anchor rule decides as the policy does (parity 1.0), with one or
    two anchors, and with a large margin it keeps the anchor everywhere."""
    from modi.agents.device_scorer import ANCHORS, DeviceScorerPolicy, export_device_onnx
    from modi.experiments.train_offload import check_parity

    _, out = tiny_run
    base = DeviceScorerPolicy.load(out / "device_policy.pt")
    sim = _mid_wifi_sim()
    for anchors in (("offload",), ("offload", "offload_backup")):
        for margin in (0.0, 0.01, 10.0):
            pol = base.with_weights(0.03, tie_tolerance=tie, anchor_margin=margin, anchors=anchors)
            path = export_device_onnx(pol, tmp_path / f"anchor_{margin}_{len(anchors)}.onnx")
            assert check_parity(pol, path, [sim], 1000, [[7, 7]]) == 1.0
    pol = base.with_weights(0.03, tie_tolerance=tie, anchor_margin=10.0)
    obs = sim.reset(3)
    picks = pol.scores(obs).argmax(axis=1)  # margin 10: always the anchor
    assert (picks == pol.scores(obs).shape[1] + ANCHORS["offload"]).all()
    loaded = DeviceScorerPolicy.load(pol.save(tmp_path / "anchor.pt"))
    assert loaded.anchor_margin == 10.0 and loaded.tie_tolerance == tie
    assert loaded.anchors == ("offload",)


def test_onnx_with_a_tie_tolerance_chooses_like_the_policy(
    tiny_run: tuple[dict[str, float], Path], tmp_path: Path
) -> None:
    from modi.agents.device_scorer import DeviceScorerPolicy, export_device_onnx
    from modi.experiments.train_offload import check_parity

    _, out = tiny_run
    pol = DeviceScorerPolicy.load(out / "device_policy.pt").with_weights(
        0.03, tie_tolerance=0.01, anchor_margin=None
    )
    path = export_device_onnx(pol, tmp_path / "tie.onnx")
    sim = _mid_wifi_sim()
    assert check_parity(pol, path, [sim], 2000, [[7, 7]]) == 1.0
    # per row: the tied choice is within the tolerance of the best objective, at no more
    # predicted energy than the plain argmax
    from modi.runtime import device_features as dfeat

    obs = sim.reset(3)
    pred = pol.predict(dfeat.option_features(obs))
    objective = pred[..., 0] - 0.03 * pred[..., 1]
    tied = pol.scores(obs).argmax(axis=1)
    plain = objective.argmax(axis=1)
    rows = np.arange(len(obs))
    assert (objective[rows, tied] >= objective[rows, plain] - 0.01 - 1e-12).all()
    assert (pred[rows, tied, 1] <= pred[rows, plain, 1] + 1e-12).all()


def test_pieslicer_gap_closed_to_the_oracle_and_to_the_informed_prep_ceiling() -> None:
    """``pieslicer_gap_closed`` is measured to the clairvoyant oracle, ``..._prep`` to
    prep_ceiling (the informed reference); no gap (the ceiling not above PieSlicer) → NaN."""
    from modi.experiments.train_offload import paired_table

    def units(acc: dict[str, float]) -> pd.DataFrame:
        rows = []
        for pol, a in acc.items():
            for seed, stream in itertools.product(range(2), range(3)):
                jitter = 0.001 * (stream - 1)  # the same per stream for every policy: paired
                rows.append({"scenario": "mid_link_5g", "sla_ms": 300.0, "policy": pol,
                             "seed": seed, "stream": stream,
                             "effective_accuracy": a + jitter, "energy_mj": 100.0})  # fmt: skip
        return pd.DataFrame(rows)

    rules = ["static_local", "pieslicer"]
    best = {("mid_link_5g", 300.0): "pieslicer"}
    acc = {"learned": 0.53, "pieslicer": 0.50, "static_local": 0.49, "prep_ceiling": 0.54,
           "oracle": 0.60}  # fmt: skip
    r = paired_table(units(acc), best, rules, anchor_rule=None).iloc[0]
    assert np.isclose(r.pieslicer_eff_acc, 0.50)
    assert np.isclose(r.pieslicer_gap_closed, 0.03 / 0.10)
    assert np.isclose(r.pieslicer_gap_closed_prep, 0.03 / 0.04)
    # prep_ceiling below PieSlicer (it minimises expected time, not the objective): no gap
    r = paired_table(units(acc | {"prep_ceiling": 0.48}), best, rules, anchor_rule=None).iloc[0]
    assert np.isnan(r.pieslicer_gap_closed_prep) and np.isclose(r.pieslicer_gap_closed, 0.3)
    # a network prep_ceiling cannot run on (traces): no column value, the oracle's kept
    no_prep = {k: v for k, v in acc.items() if k != "prep_ceiling"}
    r = paired_table(units(no_prep), best, rules, anchor_rule=None).iloc[0]
    assert np.isnan(r.get("pieslicer_gap_closed_prep", np.nan))
    assert np.isclose(r.pieslicer_gap_closed, 0.3)


def test_frontier_dominance_with_paired_intervals_ignores_noise_level_differences() -> None:
    """A rule dominates a learned frontier point on the paired intervals only where it is
    significantly better in one of accuracy/energy and not worse in the other; on the means,
    a rule equal up to the streams' noise can "dominate" too."""
    from modi.experiments.train_offload import dominated_by, dominated_by_paired

    rng = np.random.default_rng(0)
    n = 20
    base_acc = 0.6 + 0.02 * rng.standard_normal(n)  # per stream, shared: common random numbers
    base_e = 200.0 + 5.0 * rng.standard_normal(n)

    def rows(policy: str, acc: np.ndarray, energy: np.ndarray) -> list[dict[str, Any]]:
        return [{"scenario": "mid_link_5g", "policy": policy, "sla_ms": 300.0, "seed": 1000,
                 "stream": k, "effective_accuracy": float(acc[k]), "energy_mj": float(energy[k])}
                for k in range(n)]  # fmt: skip

    noise = 1e-3 * rng.standard_normal(n)
    noise += 1e-5 - noise.mean()  # a hair more accurate on the mean
    e_noise = 0.5 * rng.standard_normal(n)
    e_noise -= 0.01 + e_noise.mean()  # 0.01 mJ less on the mean
    rules = {
        # the learned point up to noise: dominates on the means only
        "static_local": (base_acc + noise, base_e + e_noise),
        # 2 points more accurate on every stream at the same energy: dominates
        "mdinference": (base_acc + 0.02, base_e),
        # more accurate but more energy: never dominates
        "on_device": (base_acc + 0.05, base_e + 50.0),
    }
    units = pd.DataFrame([r for p, (a, e) in rules.items() for r in rows(p, a, e)])
    front_units = pd.DataFrame(rows("learned_w0.01", base_acc, base_e))
    means = pd.concat([units, front_units]).groupby("policy")[["effective_accuracy", "energy_mj"]]
    frontier = means.mean().reset_index()
    frontier["scenario"], frontier["sla_ms"] = "mid_link_5g", 300.0
    frontier["kind"] = np.where(frontier.policy.str.startswith("learned"), "learned", "rule")
    learned = frontier.kind == "learned"
    on_means = dict(zip(frontier.policy, dominated_by(frontier), strict=True))["learned_w0.01"]
    paired = dict(
        zip(frontier.policy, dominated_by_paired(frontier, front_units, units), strict=True)
    )
    assert paired["learned_w0.01"] == "mdinference"
    assert set(on_means.split(";")) == {"static_local", "mdinference"}
    assert all(v == "" for p, v in paired.items() if p in rules)  # rules' own rows
    assert learned.sum() == 1


def test_each_frontier_weight_gets_the_setting_best_for_its_own_objective() -> None:
    """``frontier_settings``: at each weight the (tie, margin) of highest validation objective
    at that weight (ties: smaller tolerance, then margin off first); the shipped weight keeps
    the shipped setting even where another scores higher."""
    from modi.experiments.train_offload import frontier_settings

    # (w, t, a): (effective accuracy, energy mJ)
    vals = {
        (0.0, 0.0, None): (0.60, 900.0),
        (0.0, 0.0, 0.05): (0.61, 950.0),  # the shipped setting (w = 0)
        (0.0, 0.01, None): (0.62, 990.0),  # the best at w = 0, not chosen: shipped weight
        (0.0, 0.01, 0.05): (0.60, 900.0),
        (1.0, 0.0, None): (0.58, 800.0),  # objective 0.58 - 0.8 = -0.22
        (1.0, 0.0, 0.05): (0.61, 900.0),  # -0.29
        (1.0, 0.01, None): (0.59, 790.0),  # -0.20: the best at w = 1
        (1.0, 0.01, 0.05): (0.55, 780.0),  # -0.23
    }
    val = pd.DataFrame(
        [
            {"policy": learned_name(*k), "effective_accuracy": a, "energy_mj": e, "kb_sent": 20.0}
            for k, (a, e) in vals.items()
        ]
    )
    choice, table = frontier_settings(val, [0.0, 1.0], list(vals), (0.0, 0.0, 0.05))
    assert choice == {0.0: (0.0, 0.0, 0.05), 1.0: (1.0, 0.01, None)}
    assert table.chosen.sum() == 2 and len(table) == 8
    w1 = table[table.w_energy_per_j == 1.0].set_index(["tie_tolerance", "anchor_margin"])
    assert w1.val_objective.max() == pytest.approx(0.59 - 0.79)
    # a tie in objective goes to the smaller tolerance, then to the margin off
    # fewer validation points dominated by a rule come first, the objective breaks ties
    dom = {learned_name(*k): 3 for k in vals} | {learned_name(1.0, 0.0, 0.05): 1}
    choice, table = frontier_settings(val, [0.0, 1.0], list(vals), (0.0, 0.0, 0.05), dominated=dom)
    assert choice[1.0] == (1.0, 0.0, 0.05) and table.val_dominated.min() == 1
    flat = val.assign(effective_accuracy=0.6, energy_mj=900.0)
    choice, _ = frontier_settings(flat, [0.0, 1.0], list(vals), (0.0, 0.01, 0.05))
    assert choice[1.0] == (1.0, 0.0, None)


def test_per_weight_frontier_run_uses_each_weights_validation_choice(
    tiny_run: tuple[dict[str, float], Path],
) -> None:
    """With ``env.frontier.per_weight_setting`` (the default) the test frontier's learned point
    at each weight is the setting ``frontier_settings.csv`` chose for it on validation."""
    metrics, out = tiny_run
    table = pd.read_csv(out / "frontier_settings.csv")
    chosen = table[table.chosen]
    assert sorted(chosen.w_energy_per_j) == [0.0, 1.0]
    front = pd.read_csv(out / "frontier.csv")
    learned = front[front.kind == "learned"]
    for r in chosen.itertuples():
        margin = None if pd.isna(r.anchor_margin) else r.anchor_margin
        name = learned_name(r.w_energy_per_j, r.tie_tolerance, margin)
        assert set(learned[learned.w_energy_per_j == r.w_energy_per_j].policy) == {name}
    assert metrics["frontier_points"] == len(learned)
    # the frontier validates env.frontier.anchor_margin's margins too; the shipped grid does not
    margins = {m for m in pd.read_csv(out / "weights.csv").anchor_margin if not pd.isna(m)}
    front_margins = {m for m in table.anchor_margin if not pd.isna(m)}
    assert margins == {0.05} and front_margins == {0.05, 0.3, 0.5, 1.0}


def test_each_context_gets_the_setting_that_wins_its_own_points() -> None:
    """``choose_context_settings``: each decision context chooses on its scenarios' points
    alone (here two settings, each better in one context); a context without a validation
    scenario gets the fallback; ``context_rows`` assembles the per-context policy's rows."""
    from modi.agents.device_scorer import CONTEXTS
    from modi.experiments.train_offload import choose_context_settings, context_rows

    rows = []
    for scen, good in (("mid_wifi", "learned_w0"), ("mid_lte", "learned_w0.1")):
        rows += [
            (scen, 500.0, "rule", 0.80, 500.0),
            (scen, 500.0, "learned_w0", 0.81 if good == "learned_w0" else 0.70, 400.0),
            (scen, 500.0, "learned_w0.1", 0.81 if good == "learned_w0.1" else 0.70, 400.0),
        ]
    val = pd.DataFrame(rows, columns=["scenario", "sla_ms", "policy", "effective_accuracy",
                                      "energy_mj"])  # fmt: skip
    best = choose_best_rule(val, ["rule"], 0.0005)
    context_of = {"mid_wifi": "mid/wifi", "mid_lte": "mid/cellular"}
    fallback = (0.03, 0.0, None)
    settings = [(0.0, 0.0, None), (0.1, 0.0, None)]
    choice, table = choose_context_settings(val, best, settings, 0.0005, None, context_of, fallback)
    assert choice["mid/wifi"] == (0.0, 0.0, None)
    assert choice["mid/cellular"] == (0.1, 0.0, None)
    assert all(choice[c] == fallback for c in CONTEXTS if c not in context_of.values())
    assert set(table.context) == {"mid/wifi", "mid/cellular"}
    assert table.groupby("context").chosen.sum().eq(1).all()
    policy_rows = context_rows(val, choice, context_of, "learned_contexts")
    assert list(policy_rows.effective_accuracy) == [0.81, 0.81]
    assert set(policy_rows.policy) == {"learned_contexts"}


def test_tiny_run_ships_a_setting_per_context(
    tiny_run: tuple[dict[str, float], Path], tmp_path: Path
) -> None:
    """With ``env.select.per_context`` the exported policy carries the setting ``contexts.csv``
    chose for each context its scenarios are in, and the one setting of ``weights.csv`` in the
    others; without it (the default) one setting everywhere."""
    from modi.agents.device_scorer import DeviceScorerPolicy

    assert DeviceScorerPolicy.load(tiny_run[1] / "device_policy.pt").contexts is None
    assert not (tiny_run[1] / "contexts.csv").exists()
    out = tmp_path
    metrics = run_offload_training(
        _cfg("env.select.per_context=true", "env.frontier.per_weight_setting=false"), out
    )
    table = pd.read_csv(out / "contexts.csv")
    assert set(table.context) == {"mid/wifi", "mid/cellular"}  # link_wifi, lte_tmobile
    pol = DeviceScorerPolicy.load(out / "device_policy.pt")
    assert pol.contexts is not None
    for r in table[table.chosen].itertuples():
        margin = None if pd.isna(r.anchor_margin) else r.anchor_margin
        assert pol.contexts[r.context] == (r.w_energy_per_j, r.tie_tolerance, margin)
    a = None if np.isnan(metrics["anchor_margin"]) else metrics["anchor_margin"]
    one = (metrics["w_energy_per_j"], metrics["tie_tolerance"], a)
    assert pol.contexts["low/wifi"] == pol.contexts["high/cellular"] == one
    # the file as the runtime runs it: each context's setting fed to the graph
    assert metrics["onnx_parity"] == 1.0
    assert metrics["served_agreement"] == 1.0
    # the check inside validation (odd streams) of both ways of choosing
    for k in ("one_setting", "per_context"):
        assert 0 <= metrics[f"val_held_out_points_{k}"] <= metrics["points"]
