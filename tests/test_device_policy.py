"""The learned device policy (issue 14): option features, the shared scorer, its ONNX export
(parity on 10,000 env observations), :class:`modi.runtime.DeviceSelector` and its fallbacks
(``modi-train env=offload``: tests/test_offload_training.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from modi.agents.device_scorer import (
    DeviceScorerPolicy,
    collect,
    device_spec,
    export_device_onnx,
    fit_scorer,
    option_action_index,
)
from modi.envs.devices import DeviceProfile, OnDeviceModel, Preprocessing
from modi.envs.images import ImageModel
from modi.envs.links import LinkModel
from modi.envs.offload import OffloadSim
from modi.envs.pools import ModelPool, ModelSpec
from modi.runtime import DeviceSelector
from modi.runtime import device_features as dfeat
from modi.runtime.device_meta import PREFIX
from modi.runtime.device_selector import DeviceModel, DeviceSpec


def _model(mid: str, acc: float, mu: float, sd: float, load: float) -> OnDeviceModel:
    rng = np.random.default_rng(abs(hash(mid)) % 2**32)
    return OnDeviceModel(mid, acc, np.maximum(rng.normal(mu, sd, 64), 1.0), np.full(8, load))


def _device(models: int = 3, tier: str = "mid") -> DeviceProfile:
    base = [("small", 0.45, 40.0, 4.0, 10.0), ("mid", 0.62, 150.0, 15.0, 60.0),
            ("big", 0.74, 700.0, 60.0, 300.0), ("huge", 0.78, 1500.0, 100.0, 600.0)]  # fmt: skip
    return DeviceProfile(
        name=f"t{models}",
        tier=tier,
        models=tuple(_model(*b) for b in base[:models]),
        preprocessing=Preprocessing(10.0, 30.0, 0.1),
        compute_power_w=2.0,
        backup_model="small",
        images=ImageModel(mode="camera", camera_mp=8.0, camera_fraction=0.5, other_mp=(0.1, 8.0)),
    )


def _sim(num_envs: int = 8, models: int = 3, tier: str = "mid", **kw: Any) -> OffloadSim:
    link = LinkModel(40.0, 10.0, 30.0, 0.3, 0.5, 0.5, correlation_ms=3000.0, name="var")
    pool = ModelPool("srv", (ModelSpec("s", 0.6, 10.0, 2.0), ModelSpec("l", 0.8, 60.0, 8.0)))
    args: dict[str, Any] = {"sla_range_ms": (150.0, 2000.0)}
    args.update(kw)
    return OffloadSim(_device(models, tier), link, pool, num_envs=num_envs, **args)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[DeviceScorerPolicy, Path]:
    sim = _sim(16)
    data = collect([sim], 60, seed=0)
    net, _ = fit_scorer(data, hidden=(32, 32), epochs=3, seed=0)
    x = data[0][0].reshape(-1, dfeat.F)
    pol = DeviceScorerPolicy(net, 0.0, 0.0, x.min(axis=0), x.max(axis=0), {"test": True})
    path = export_device_onnx(pol, tmp_path_factory.mktemp("dev") / "device_policy.onnx")
    return pol, path


# --------------------------------------------------------------------------- option features
def test_options_are_every_distinct_action_and_agnostic_to_the_pool() -> None:
    for big_l in (1, 3, 7):
        acts = dfeat.option_actions(big_l)
        assert len(acts) == dfeat.num_options(big_l) == big_l + 4
        assert len({tuple(a) for a in acts}) == len(acts)
        np.testing.assert_array_equal(acts[:big_l, 1], np.arange(big_l))
        assert (acts[big_l:, 1] == big_l).all()
    for models in (2, 4):
        sim = _sim(3, models)
        x = dfeat.option_features(sim.reset(1))
        assert x.shape == (3, models + 4, dfeat.F) and np.isfinite(x).all()
        # option targets are taken from the env's own action order
        idx = option_action_index(sim.num_local)
        np.testing.assert_array_equal(sim.all_actions()[idx], dfeat.option_actions(models))


def test_option_features_see_only_the_observation() -> None:
    """Option vectors are a function of the device observation: rewriting this request's
    realised network times leaves them unchanged."""
    sim = _sim(4)
    sim.reset(2)
    for _ in range(5):
        sim.step(np.tile([0, 3, 1], (4, 1)))
    before = dfeat.option_features(sim.obs)
    for name in ("_blk_tin_pre", "_blk_tin_raw", "_blk_tout_pre", "_blk_bw"):
        getattr(sim, name)[sim._cursor] *= 5.0
    sim._arrive()
    np.testing.assert_array_equal(dfeat.option_features(sim.obs), before)


def test_local_options_do_not_see_the_link(trained: tuple[DeviceScorerPolicy, Path]) -> None:
    """Option schema v2: a local run sends nothing, so a local option's vector (and so a
    scorer's prediction for it) is the same whatever the device's network history says; the
    offload options do see it."""
    sim = _sim(4, 3)
    obs = sim.reset(5)
    for _ in range(5):
        sim.step(np.tile([0, 3, 0], (4, 1)))
    obs = sim.obs.copy()
    other = obs.copy()
    net = [dfeat.NET_LATENCY, dfeat.NET_UPLINK, dfeat.NET_UPLINK_STD, dfeat.NET_AGE,
           dfeat.NET_UPLINK_LAST]  # fmt: skip
    other[:, net] = other[:, net] * 7.0 + 3.0
    x, y = dfeat.option_features(obs), dfeat.option_features(other)
    np.testing.assert_array_equal(x[:, :3], y[:, :3])
    assert (x[:, :3, dfeat.NET_COLUMNS] == 0).all()
    assert not np.array_equal(x[:, 3:], y[:, 3:])
    pol = trained[0]
    np.testing.assert_array_equal(pol.predict(x)[:, :3], pol.predict(y)[:, :3])
    for i in range(4):
        rows = other[i, dfeat.R :].reshape(3, dfeat.P)
        b = dfeat.OptionBuilder(rows)
        np.testing.assert_array_equal(b.build(other[i, : dfeat.R])[0], y[i])
        buf = np.full((1, 7, dfeat.F), np.nan, np.float32)  # the padding must write zeros
        b.pack(buf, other[i, : dfeat.R].tolist())
        np.testing.assert_array_equal(buf[0], y[i])


def test_the_runtime_option_builder_equals_option_features() -> None:
    """The device runtime's batch-1 path (:class:`OptionBuilder`) gives the same float32
    vectors as :func:`option_features` on env observations (models loaded and unloaded,
    every action kind)."""
    for models in (1, 4):
        sim = _sim(4, models)
        obs = sim.reset(9)
        rng = np.random.default_rng(0)
        for _ in range(150):
            x = dfeat.option_features(obs)
            for i in range(4):
                rows = obs[i, dfeat.R :].reshape(models, dfeat.P)
                b = dfeat.OptionBuilder(rows).build(obs[i, : dfeat.R])
                np.testing.assert_array_equal(b[0], x[i])
            sim.step(rng.integers(0, sim.action_nvec, size=(4, 3)))
            obs = sim.obs


# --------------------------------------------------------------------------- scorer + export
def test_onnx_chooses_like_the_trained_policy_on_10000_env_observations(
    trained: tuple[DeviceScorerPolicy, Path],
) -> None:
    import onnxruntime as ort

    pol, path = trained
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    sim = _sim(50)
    obs = sim.reset(11)
    same = total = 0
    for _ in range(200):
        a = pol.select(obs)
        s = sess.run(["scores"], {"options": dfeat.option_features(obs)})[0]
        b = dfeat.option_actions(sim.num_local)[s.argmax(axis=1)]
        same += int((a == b).all(axis=1).sum())
        total += len(a)
        sim.step(a)
        obs = sim.obs
    assert total == 10_000
    assert same == total


def test_energy_weight_trades_accuracy_for_energy(trained: tuple[DeviceScorerPolicy, Path]) -> None:
    """A larger energy weight never picks options with higher predicted energy on average."""
    pol, _ = trained
    sim = _sim(32)
    obs = sim.reset(5)
    x = dfeat.option_features(obs)
    pred = pol.predict(x)
    energy = []
    for w in (0.0, 0.3, 10.0):
        a = pol.with_weights(w).scores(obs).argmax(axis=1)
        energy.append(float(pred[np.arange(len(a)), a, 1].mean()))
    assert energy[0] >= energy[1] >= energy[2]


def test_export_metadata_names_the_schemas(trained: tuple[DeviceScorerPolicy, Path]) -> None:
    _, path = trained
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert props[PREFIX + "device_schema"] == dfeat.SCHEMA_NAME
    assert int(props[PREFIX + "device_schema_version"]) == dfeat.SCHEMA_VERSION
    assert json.loads(props[PREFIX + "option_features"]) == [n for n, _, _ in dfeat.OPTION_FEATURES]


# --------------------------------------------------------------------------- DeviceSelector
def _selector_like_env(sim: OffloadSim, path: Path | None) -> DeviceSelector:
    sel = DeviceSelector(device_spec(sim.device), path)
    sel.set_history(
        float(sim._dev_lat[0]),
        float(sim._dev_bw[0]),
        float(sim._dev_bw_var[0]),
        float(sim._dev_bw_last[0]),
        float(sim._dev_last_ms[0]),
    )
    for j, mid in enumerate(sim.device.ids):
        sel.set_loaded(mid, bool(sim.loaded[0, j]))
    return sel


def test_selector_builds_the_env_observation_and_decides_like_the_policy(
    trained: tuple[DeviceScorerPolicy, Path],
) -> None:
    pol, path = trained
    sim = _sim(1)
    obs = sim.reset(3)
    for _ in range(60):
        i = sim._cursor
        sel = _selector_like_env(sim, path)
        t, sla = float(sim._blk_time[i][0]), float(sim._blk_sla[i][0])
        mp, raw = float(sim._blk_mp[i][0]), float(sim._blk_raw[i][0])
        np.testing.assert_allclose(sel.observation(t, sla, mp, raw), obs[0], rtol=1e-6, atol=1e-3)
        d = sel.decide(t, sla, mp, raw)
        assert d.source == "learned", d.reason
        assert d.action == tuple(int(v) for v in pol.select(obs)[0])
        sim.step(np.array([d.action]))
        obs = sim.obs


def test_selector_falls_back_to_pieslicer_and_never_raises(
    trained: tuple[DeviceScorerPolicy, Path], tmp_path: Path
) -> None:
    _, path = trained
    sim = _sim(1)
    sim.reset(0)
    args = (1000.0, 500.0, 4.0, 1.5e6)

    def check(sel: DeviceSelector, fragment: str, *a: float) -> None:
        d = sel.decide(*(a or args))
        assert d.source == "fallback" and fragment in d.reason, d
        assert d.placement == "offload" and not d.backup and d.prep in ("device", "server")

    check(_selector_like_env(sim, None), "no learned model")
    check(_selector_like_env(sim, tmp_path / "missing.onnx"), "no learned model")
    bad = tmp_path / "corrupt.onnx"
    bad.write_bytes(b"not an onnx file")
    check(_selector_like_env(sim, bad), "no learned model")
    other = tmp_path / "other_schema.onnx"
    m = onnx.load(str(path))
    for p in m.metadata_props:
        if p.key == PREFIX + "device_schema_version":
            p.value = "1"
    onnx.save(m, str(other))
    sel = _selector_like_env(sim, other)
    check(sel, "no learned model")
    assert sel.load_error is not None and "device_schema" in sel.load_error
    ok = _selector_like_env(sim, path)
    check(ok, "invalid input", 1000.0, float("nan"), 4.0, 1.5e6)
    ok.record(float("nan"), 5.0, 900.0)  # ignored, not folded in
    assert ok.decide(*args).source == "learned"
    ok.set_history(20.0, 10.0, 0.0, float("nan"), 0.0)
    check(ok, "invalid input")
    ok.record(25.0, 12.0, 950.0)  # a valid measurement starts the history afresh
    assert ok.decide(*args).source == "learned"
    spec = device_spec(sim.device)
    unknown = DeviceSpec("flagship", spec.models, spec.backup, 10.0, 30.0)
    check(DeviceSelector(unknown, path), "unknown device tier")
    # another on-device pool far outside the training range: refused with the feature named
    slow = tuple(
        DeviceModel(m.model_id, m.accuracy, 100 * m.mean_ms, m.std_ms, m.load_ms)
        for m in spec.models
    )
    far = DeviceSelector(DeviceSpec(spec.tier, slow, spec.backup, 10.0, 30.0), path)
    far.start(20.0, 10.0, 0.0)
    check(far, "out of range")
    assert "model_mu_s" in far.decide(*args).reason


def test_selector_folds_measurements_like_the_env() -> None:
    sel = DeviceSelector(device_spec(_device()), None)
    sel.start(20.0, 10.0, 0.0)
    lat, bw, var = 20.0, 10.0, 0.0
    for k, (la, b) in enumerate([(30.0, 5.0), (25.0, 12.0), (10.0, 20.0)]):
        sel.record(la, b, 100.0 * (k + 1))
        lat, bw, var = (float(v) for v in dfeat.fold_measurement(lat, bw, var, la, b))
    obs = sel.observation(1000.0, 500.0, 2.0, 1e6)
    assert obs[dfeat.NET_LATENCY] == pytest.approx(lat)
    assert obs[dfeat.NET_UPLINK] == pytest.approx(bw)
    assert obs[dfeat.NET_UPLINK_STD] == pytest.approx(np.sqrt(var), rel=1e-5)
    assert obs[dfeat.NET_UPLINK_LAST] == 20.0 and obs[dfeat.NET_AGE] == 700.0


def test_device_selector_imports_no_training_stack(
    trained: tuple[DeviceScorerPolicy, Path],
) -> None:
    """``from modi.runtime import DeviceSelector`` and a learned decision import neither torch,
    gymnasium, SB3, mlflow, hydra nor onnx."""
    import subprocess
    import sys
    import textwrap

    _, path = trained
    code = textwrap.dedent(
        f"""
        import sys
        from modi.runtime import DeviceSelector
        from modi.runtime.device_selector import DeviceModel, DeviceSpec
        spec = DeviceSpec("mid", [DeviceModel("small", 0.45, 40.0, 4.0, 10.0),
                                  DeviceModel("mid", 0.62, 150.0, 15.0, 60.0),
                                  DeviceModel("big", 0.74, 700.0, 60.0, 300.0)],
                          "small", 10.0, 30.0)
        sel = DeviceSelector.load({str(path)!r}, spec)
        sel.start(20.0, 10.0, 0.0)
        d = sel.decide(1000.0, 500.0, 4.0, 1.5e6)
        assert d.source == "learned", d.reason
        heavy = ["torch", "gymnasium", "stable_baselines3", "mlflow", "hydra", "onnx"]
        print(",".join(m for m in heavy if m in sys.modules))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=60
    )
    assert out.returncode == 0, f"the subprocess failed:\n{out.stderr}"
    assert out.stdout.strip() == "", f"DeviceSelector imported {out.stdout.strip()}"


def test_device_bench_measures_a_learned_decision() -> None:
    """A small run of the device runtime benchmark (figures are for modi-bench, not asserted
    against a speed)."""
    from modi.experiments.bench_device import run_device_bench

    res = run_device_bench(n=300, warmup=50)
    assert set(res) >= {
        "device_selector_p50_us",
        "device_selector_p99_us",
        "device_fallback_p50_us",
        "device_fallback_p99_us",
    }
    assert all(v > 0 for v in res.values() if not isinstance(v, str))
    assert res["device_selector_p50_us"] <= res["device_selector_p99_us"]
