"""Device policies for ``modi/Offload-v0`` (PieSlicer's fit, the rules, the oracle) and the
``modi-compare-offload`` app on a tiny budget."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_module
from omegaconf import DictConfig

from modi.agents.offload_policies import (
    DEVICE_POLICY_NAMES,
    DeepDecision,
    PieSlicer,
    PreexecMeasurements,
    PrepCeiling,
    collect_measurements,
    make_device_policy,
    rollout_offload,
)
from modi.envs.catalog import available, load_preset
from modi.envs.devices import Preprocessing
from modi.envs.images import ImageModel
from modi.envs.links import LinkModel
from modi.envs.networks import BlockContext
from modi.envs.offload import PREP_DEVICE, PREP_SERVER, OffloadSim, build_offload_sim
from modi.experiments.common import ConfigError
from modi.experiments.compare_offload import RESULT_COLUMNS, console_summary, run_compare_offload
from modi.runtime import device_features as dfeat

PIESLICER_RUNS = (
    Path(__file__).resolve().parents[1].parent / "shared/data/cakelab/pieslicer_on_device_runs.csv"
)
pytestmark = pytest.mark.skipif(
    not PIESLICER_RUNS.is_file(), reason=f"device data not found at {PIESLICER_RUNS}"
)

IMAGE_1K = {"mode": "file_size", "file_size_mb": [0.01, 10.0]}


def _compose(*overrides: str) -> DictConfig:
    with initialize_config_module(config_module="modi.conf", version_base="1.3"):
        return compose(config_name="offload", overrides=list(overrides))


def test_device_presets_cover_the_three_tiers_with_measured_pools() -> None:
    assert {"low", "mid", "high", "high_tflite"} <= set(available("device"))
    devices = {n: load_preset("device", n) for n in ("low", "mid", "high")}
    assert [d.tier for d in devices.values()] == ["low", "mid", "high"]
    mid = devices["mid"]
    m = mid.models[mid.ids.index("mobilenet_1.0_224")]
    # PieSlicer runs: 367 per model, MobileNet 1.0/224 float ~168 ms; TF Lite top-1 71.0 %.
    assert m.exec_ms.size == 367 and m.mean_ms == pytest.approx(168.1, abs=0.1)
    assert m.accuracy == pytest.approx(0.710)
    q = mid.models[mid.ids.index("inception_v3_8bit")]
    assert (
        q.quantized
        and q.load_mean_ms < 0.5 * mid.models[mid.ids.index("inception_v3")].load_mean_ms
    )
    # tier factors: 1.4x slower (low), 0.4x (high), on inference and load alike
    for tier, f in (("low", 1.4), ("high", 0.4)):
        other = devices[tier].models[devices[tier].ids.index("mobilenet_1.0_224")]
        assert other.mean_ms == pytest.approx(f * m.mean_ms)
        assert other.load_mean_ms == pytest.approx(f * m.load_mean_ms)
    prep = [d.preprocessing.mean_ms(12.0) for d in devices.values()]
    assert prep[0] > prep[1] > prep[2], "preprocessing must be slower on slower phones"
    tfl = load_preset("device", "high_tflite")
    assert tfl.models[tfl.ids.index("Mobilenet_V1_1.0_224_quant")].mean_ms == pytest.approx(
        70.2, rel=0.01
    )


def test_pieslicer_recovers_the_simulated_preprocessing_times() -> None:
    sim = build_offload_sim("mid", "wifi_university", num_envs=20, images=IMAGE_1K)
    fit = PieSlicer().fit(sim, seed=100, requests=1500)
    dev = load_preset("device", "mid").preprocessing
    # device ~ intercept + ms_per_mp * MP (+ ~0 per raw MB); server ~ 2 + 8 ms/MP
    assert fit.device_prep[1] == pytest.approx(dev.ms_per_mp, rel=0.08)
    assert fit.server_prep_raw[1] == pytest.approx(8.0, rel=0.08)
    assert fit.server_prep_pre_ms == pytest.approx(2.0 + 8.0 * 0.050176, rel=0.05)
    assert fit.pre_mb == pytest.approx(0.02, rel=0.1)
    assert fit.n_device > 500 and fit.n_server > 500
    # the upload model: bigger payloads and slower measured links take longer
    ps = PieSlicer()
    ps.coef = fit
    age = np.array([1000.0, 1000.0])
    x_fast = ps.upload_features(np.array([1.0, 5.0]), np.array([50.0, 50.0]), 10.0, age)
    x_slow = ps.upload_features(np.array([5.0]), np.array([5.0]), 10.0, age[:1])
    t_fast = x_fast @ fit.upload
    assert t_fast[1] > t_fast[0] and (x_slow @ fit.upload)[0] > t_fast[1]


def test_pieslicer_beats_both_static_choices_on_a_fast_link() -> None:
    """Where the choice matters (campus WiFi link, low-end phone) PieSlicer's median and p99
    pre-execution times are at most both static ones', and it decides right most of the time."""
    kw = {"images": IMAGE_1K, "sla_ms": 1e5}
    fit_sim = build_offload_sim("low", "link_wifi", num_envs=20, **kw)
    sim = build_offload_sim("low", "link_wifi", num_envs=25, **kw)
    stats = {}
    for name in ("static_local", "static_remote", "pieslicer"):
        pol = make_device_policy(name)
        if isinstance(pol, PieSlicer):
            pol.fit(fit_sim, seed=7)
        stats[name] = rollout_offload(pol, sim, 120, seed=0).summary(sim.num_local)
    ps = stats["pieslicer"]
    for col in ("preexec_p50_ms", "preexec_p99_ms"):
        assert ps[col] <= min(stats["static_local"][col], stats["static_remote"][col])
    assert ps["prep_decision_accuracy"] > max(
        stats["static_local"]["prep_decision_accuracy"],
        stats["static_remote"]["prep_decision_accuracy"],
    )
    assert 0.0 < ps["device_prep_fraction"] < 1.0


def _decisions(
    sim: OffloadSim, policies: dict[str, PieSlicer | PrepCeiling], steps: int, seed: int
) -> dict[str, dict[str, float]]:
    """Decision accuracy and mean regret (ms) of each policy's preprocessing location on the
    same requests (the location does not change later observations)."""
    obs = sim.reset(seed)
    hits = {k: 0 for k in policies}
    regret = {k: 0.0 for k in policies}
    n = 0
    for _ in range(steps):
        cf = sim.current_preexec_ms()
        for name, pol in policies.items():
            prep = pol.select(obs)[:, 0]
            chosen = cf[np.arange(sim.num_envs), prep]
            hits[name] += int((chosen <= cf.min(axis=1)).sum())
            regret[name] += float((chosen - cf.min(axis=1)).sum())
        n += sim.num_envs
        sim.step(np.tile([PREP_DEVICE, sim.num_local, 0], (sim.num_envs, 1)))
        obs = sim.obs
    return {k: {"accuracy": hits[k] / n, "regret_ms": regret[k] / n} for k in policies}


def test_pieslicer_with_the_last_measurement_decides_like_the_ceiling() -> None:
    """On a fast, variable link (low-end phone, ``link_wifi``: many close calls) the EWMA of
    past bandwidths is a stale estimate of this request's; the most recent measurement with
    its age brings PieSlicer to the expected-time ceiling, and both beat the EWMA fit."""
    kw = {"images": IMAGE_1K, "sla_ms": 1e5}
    fit_sim = build_offload_sim("low", "link_wifi", num_envs=20, **kw)
    sim = build_offload_sim("low", "link_wifi", num_envs=40, **kw)
    pols: dict[str, PieSlicer | PrepCeiling] = {
        "ewma": PieSlicer(bandwidth="ewma"),
        "last": PieSlicer(bandwidth="last"),
        "ceiling": PrepCeiling().bind(sim),
    }
    for name in ("ewma", "last"):
        pols[name].fit(fit_sim, seed=7)  # type: ignore[union-attr]
    res = _decisions(sim, pols, 150, seed=0)
    assert res["last"]["accuracy"] > res["ewma"]["accuracy"] + 0.01, res
    # the last measurement closes most of the EWMA fit's regret gap to the ceiling (the history
    # holds only completed measurements: the newest is a response or more old, issue 14)
    ceil = res["ceiling"]["regret_ms"]
    assert res["last"]["regret_ms"] - ceil < 0.5 * (res["ewma"]["regret_ms"] - ceil), res
    assert abs(res["last"]["accuracy"] - res["ceiling"]["accuracy"]) < 0.015, res
    assert res["ceiling"]["regret_ms"] < res["ewma"]["regret_ms"], res
    with pytest.raises(ValueError, match="bandwidth must be one of"):
        PieSlicer(bandwidth="newest")


def test_prep_ceiling_is_exact_without_noise() -> None:
    """Constructed case: a constant link, noiseless preprocessing, fixed payload size — the
    expected pre-execution times are the realised ones, so the ceiling is always right."""
    dev = load_preset("device", "low")
    dev = dataclasses.replace(dev, preprocessing=Preprocessing(15.0, 48.9, 0.0))
    images = ImageModel(mode="file_size", file_size_mb=(0.5, 10.0), preprocessed_sigma=0.0)
    link = LinkModel(10.0, 60.0, 100.0, name="constant")
    sim = OffloadSim(
        dev,
        link,
        load_preset("pool", "modipick_table2"),
        num_envs=8,
        sla_ms=1e5,
        images=images,
        server_prep={"intercept_ms": 2.0, "ms_per_mp": 8.0, "cv": 0.0},
    )
    ceiling = PrepCeiling().bind(sim)
    obs = sim.reset(3)
    for _ in range(20):
        np.testing.assert_allclose(
            ceiling.expected_preexec_ms(obs), sim.current_preexec_ms(), rtol=1e-5
        )
        sim.step(ceiling.select(obs))
        obs = sim.obs
    r = rollout_offload(ceiling, sim, 30, seed=4).summary(sim.num_local)
    assert r["prep_decision_accuracy"] == 1.0 and 0.0 < r["device_prep_fraction"] < 1.0
    with pytest.raises(RuntimeError, match="not bound"):
        PrepCeiling().select(obs)


def test_expected_inverse_uplink_is_the_conditional_mean_of_the_link() -> None:
    """``E[1/B_now | b_last, age]`` against the link's own sampler: the residual has mean 0
    and no correlation with the last measurement, while the plug-in ``1/b_last`` is biased
    towards the extremes (it forgets the regression to the mean)."""
    link = LinkModel(10.0, 50.0, 100.0, rtt_cv=0.0, uplink_cv=0.6, correlation_ms=5000.0)
    n, age = 40000, 1500.0
    rng = np.random.default_rng(0)
    link.reset(rng, n, 1)
    shape = (2, n)
    ctx = BlockContext(
        np.zeros(shape, dtype=np.int64),
        np.array([[0.0], [age]]) * np.ones(shape),
        np.full(shape, 1e6),
        np.full(shape, 1e3),
    )
    t_in, _ = link.sample(rng, ctx)
    inv = (t_in - 5.0) / 8000.0  # 1 MB at B Mbit/s takes 8000 / B ms, plus RTT/2 = 5 ms
    b_last, inv_now = 1.0 / inv[0], inv[1]
    pred = link.expected_inverse_uplink(b_last, np.full(n, age))
    resid = inv_now - pred
    scale = inv_now.std()
    assert abs(resid.mean()) < 0.02 * scale
    assert abs(np.corrcoef(resid, np.log(b_last))[0, 1]) < 0.02
    plug_in = inv_now - 1.0 / b_last
    assert np.corrcoef(plug_in, np.log(b_last))[0, 1] > 0.2
    # limits: independent draws give the marginal mean, no noise gives 1 / mean
    iid = LinkModel(10.0, 50.0, 100.0, uplink_cv=0.6, correlation_ms=0.0)
    assert iid.expected_inverse_uplink(np.array([5.0]), np.array([10.0]))[0] == pytest.approx(
        iid.uplink.mean_inverse
    )
    flat = LinkModel(10.0, 50.0, 100.0)
    assert flat.expected_inverse_uplink(np.array([50.0]), np.array([1e4]))[0] == pytest.approx(
        1 / 50.0
    )


def test_pieslicer_needs_both_locations_and_a_fit() -> None:
    sim = build_offload_sim("mid", "wifi_university", num_envs=2)
    m = collect_measurements(sim, 40, seed=0)
    only_device = PreexecMeasurements(
        **{k: v[m.prep == PREP_DEVICE] for k, v in m.__dict__.items()}
    )
    with pytest.raises(ValueError, match="both preprocessing locations"):
        PieSlicer().fit_measurements(only_device)
    with pytest.raises(RuntimeError, match="not fitted"):
        PieSlicer().select(sim.obs)


def test_rules_pick_the_documented_actions() -> None:
    sim = build_offload_sim("mid", "wifi_university", num_envs=3, sla_ms=[300.0, 1000.0, 5000.0])
    obs = sim.reset(0)
    big_l = sim.num_local
    assert (make_device_policy("static_local").select(obs) == [PREP_DEVICE, big_l, 0]).all()
    assert (make_device_policy("static_remote").select(obs) == [PREP_SERVER, big_l, 0]).all()
    assert (make_device_policy("modipick_backup").select(obs)[:, 2] == 1).all()
    assert make_device_policy("mdinference").server_policy == "mdinference"  # type: ignore[union-attr]
    local = make_device_policy("on_device").select(obs)
    assert (local[:, 1] < big_l).all()
    acc = obs[:, dfeat.R :].reshape(3, big_l, dfeat.P)[:, :, dfeat.ACC]
    chosen = acc[np.arange(3), local[:, 1]]
    assert chosen[0] <= chosen[1] <= chosen[2], "a looser SLA allows a more accurate model"
    dd = DeepDecision(threshold_ms=100.0)
    net = dd.expected_network_ms(obs)
    assert ((dd.select(obs)[:, 1] == big_l) == (net < 100.0)).all()
    assert (DeepDecision(threshold_ms=0.0).select(obs)[:, 1] < big_l).all()
    with pytest.raises(ValueError, match="unknown device policy 'greedy'"):
        make_device_policy("greedy")


def test_oracle_is_an_upper_bound_per_request() -> None:
    sim = build_offload_sim("low", "wifi_residential", num_envs=10, sla_range_ms=(300.0, 1500.0))
    rewards = {}
    for name in ("oracle", "modipick_backup", "on_device", "static_local", "deepdecision"):
        r = rollout_offload(make_device_policy(name), sim, 60, seed=4)
        rewards[name] = r.fields["reward"]
    # same stream, same state at step 0: the oracle's first decisions are the best
    for name, rew in rewards.items():
        assert (rewards["oracle"][0] >= rew[0] - 1e-12).all(), name
        assert rewards["oracle"].mean() >= rew.mean() - 1e-9, name


def test_each_oracle_bounds_the_policies_of_its_server_policy() -> None:
    """``oracle`` runs with ModiPick on the server, ``oracle_mdinference`` with MDInference's
    rule: each is the upper bound of the device policies that share its server side (the
    MDInference server can beat ModiPick's, so ``oracle`` alone does not bound ``mdinference``)."""
    from modi.agents.baselines import make_policy

    sim = build_offload_sim("mid", "wifi_university", num_envs=10, sla_range_ms=(300.0, 800.0))
    rewards = {}
    for name in ("oracle_mdinference", "mdinference"):
        pol = make_device_policy(name)
        assert pol.server_policy == "mdinference"  # type: ignore[union-attr]
        sim.set_server_policy(make_policy("mdinference"))
        rewards[name] = rollout_offload(pol, sim, 60, seed=5).fields["reward"]
    assert (rewards["oracle_mdinference"][0] >= rewards["mdinference"][0] - 1e-12).all()
    assert rewards["oracle_mdinference"].mean() >= rewards["mdinference"].mean() - 1e-9


# --------------------------------------------------------------------------- the app
def test_offload_config_and_experiments_compose() -> None:
    cfg = _compose()
    assert set(cfg.policies) <= set(DEVICE_POLICY_NAMES)
    for exp in ("pieslicer", "backup"):
        cfg = _compose(f"offload_experiment={exp}")
        assert list(cfg.devices) == ["low", "mid", "high"]
        assert cfg.scenario == exp


def test_compare_offload_runs_a_tiny_budget(tmp_path: Path) -> None:
    cfg = _compose(
        "offload_experiment=backup",
        "devices=[mid]",
        "networks=[wifi_residential]",
        "policies=[modipick,modipick_backup,pieslicer,static_local,static_remote,oracle]",
        "sla_ms=[500,2000]",
        "tight_sla_ms=null",
        "n_requests=60",
        "streams_per_point=3",
        "policy_args.pieslicer.fit_requests=200",
    )
    results = run_compare_offload(cfg, tmp_path, progress=False)
    on_disk = pd.read_csv(tmp_path / "results.csv")
    assert list(on_disk.columns) == RESULT_COLUMNS and len(on_disk) == len(results) == 12
    assert (on_disk.n_requests == 60).all()
    for col in ("attainment", "effective_accuracy", "offload_fraction"):
        assert on_disk[col].between(0.0, 1.0).all(), col
    assert (on_disk.energy_mj > 0).all() and (on_disk.kb_sent >= 0).all()
    remote = on_disk[on_disk.policy == "static_remote"]
    local = on_disk[on_disk.policy == "static_local"]
    assert (remote.kb_sent.to_numpy() > 50 * local.kb_sent.to_numpy()).all()
    assert (on_disk[on_disk.policy == "modipick_backup"].server_policy == "modipick").all()
    checks = pd.read_csv(tmp_path / "checks.csv")
    assert {"pieslicer_decision_accuracy", "modipick_backup_attainment_gain"} <= set(checks.claim)
    for png in ("offload_mid_wifi_residential.png", "preexec.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the console shows one row per scenario x policy, the failing claims and the files
    text = console_summary(results, checks, tmp_path)
    failing = int((~checks.holds.astype(bool)).sum())
    assert len(text.splitlines()) == 1 + 1 + 6 + 1 + failing + 1, text
    assert str(tmp_path / "results.csv") in text and "checks.csv" in text
    assert f"claims: {len(checks) - failing} of {len(checks)} hold" in text
    # same seed, same numbers
    again = run_compare_offload(cfg, tmp_path / "again", progress=False)
    pd.testing.assert_frame_equal(results, again)


def test_compare_offload_bad_config_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown device policy"):
        run_compare_offload(_compose("policies=[nope]"), tmp_path, progress=False)
    with pytest.raises(ConfigError, match="fit_seed must differ"):
        run_compare_offload(_compose("fit_seed=0"), tmp_path, progress=False)
