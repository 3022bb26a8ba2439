"""``modi/Offload-v0``: env checker, seeded determinism and common random numbers, the native
vector env, information honesty of the device observation, a hand-checked latency/energy
breakdown, and bad input."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from modi.envs.catalog import PresetError
from modi.envs.devices import (
    DeviceError,
    DeviceProfile,
    OnDeviceModel,
    Preprocessing,
    RadioEnergy,
)
from modi.envs.images import INPUT_MEGAPIXELS, ImageBatch, ImageError, ImageModel
from modi.envs.links import LinkModel
from modi.envs.offload import (
    ANSWER_BACKUP,
    ANSWER_LOCAL,
    ANSWER_NONE,
    ANSWER_REMOTE,
    INFO_KEYS,
    PROBE_BYTES,
    OffloadEnv,
    OffloadError,
    OffloadSim,
    OffloadVectorEnv,
)
from modi.envs.pools import ModelPool, ModelSpec
from modi.runtime import device_features as dfeat
from modi.runtime.features import CLIENT_NET_ALPHA

ENV_ID = "modi/Offload-v0"
PIESLICER_RUNS = (
    Path(__file__).resolve().parents[1].parent / "shared/data/cakelab/pieslicer_on_device_runs.csv"
)
#: The device presets (low/mid/high) read the PieSlicer runs from the shared data.
needs_data = pytest.mark.skipif(
    not PIESLICER_RUNS.is_file(), reason=f"device data not found at {PIESLICER_RUNS}"
)
_EXPECTED_CHECKER_WARNINGS = ("infinity", "different from the unwrapped version")


def _check_quietly(env: gym.Env[Any, Any]) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env, skip_render_check=True)
    unexpected = [
        str(w.message)
        for w in caught
        if not any(s in str(w.message) for s in _EXPECTED_CHECKER_WARNINGS)
    ]
    assert not unexpected, f"gymnasium's env checker complained: {unexpected}"


def _actions(space: gym.spaces.MultiDiscrete, steps: int, seed: int = 3) -> list[Any]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, space.nvec) for _ in range(steps)]


# --------------------------------------------------------------------------- a tiny world
def _const_model(mid: str, acc: float, exec_ms: float, load_ms: float) -> OnDeviceModel:
    return OnDeviceModel(mid, acc, np.array([exec_ms]), np.array([load_ms]))


def _hand_device() -> DeviceProfile:
    """Everything deterministic: 4 MP photos of 1 MB, 20 KB payloads, preprocessing
    10 + 50 ms/MP = 210 ms, two on-device models, 2 W."""
    return DeviceProfile(
        name="hand",
        tier="mid",
        models=(_const_model("a", 0.5, 100.0, 50.0), _const_model("b", 0.7, 300.0, 200.0)),
        preprocessing=Preprocessing(10.0, 50.0, 0.0),
        compute_power_w=2.0,
        backup_model="a",
        images=ImageModel(
            mode="camera",
            camera_mp=4.0,
            camera_fraction=1.0,
            bytes_per_pixel=0.25,
            bytes_per_pixel_sigma=0.0,
            preprocessed_kb=20.0,
            preprocessed_sigma=0.0,
        ),
    )


def _hand_sim(sla_ms: float, **kwargs: Any) -> OffloadSim:
    """Constant link: RTT 20 ms, 8 Mbit/s both ways (1 MB takes 1000 ms); one server model of
    20 ms exactly (accuracy 0.8); server preprocessing 2 + 8 ms/MP."""
    link = LinkModel(rtt_ms=20.0, uplink_mbps=8.0, downlink_mbps=8.0, name="const")
    pool = ModelPool("one", (ModelSpec("srv", 0.8, 20.0, 0.0),))
    args: dict[str, Any] = {
        "sla_ms": sla_ms,
        "radio": RadioEnergy("test", 1000.0, 500.0, 100.0),
        "server_prep": {"intercept_ms": 2.0, "ms_per_mp": 8.0, "cv": 0.0},
    }
    args.update(kwargs)
    return OffloadSim(_hand_device(), link, pool, **args)


T_DP = 10.0 + 50.0 * 4.0  # device preprocessing, ms
T_IN_PRE = 10.0 + 20.0  # RTT/2 + 20 KB at 1 MB/s
T_IN_RAW = 10.0 + 1000.0
T_OUT = 10.0 + 1.0  # RTT/2 + 1 KB
T_SP_PRE = 2.0 + 8.0 * INPUT_MEGAPIXELS
T_SP_RAW = 2.0 + 8.0 * 4.0


# --------------------------------------------------------------------------- gymnasium
@needs_data
def test_check_env_passes_on_other_devices_and_options() -> None:
    env = gym.make(
        ENV_ID,
        device="low",
        network="wifi_residential",
        sla_range_ms=(200.0, 2000.0),
        cache_models=0,
        resident_backup=False,
        energy_cost_per_j=0.1,
    )
    _check_quietly(env.unwrapped)
    assert isinstance(env.action_space, gym.spaces.MultiDiscrete)
    assert env.action_space.nvec.tolist() == [2, 8, 2]


@needs_data
def test_same_seed_replays_and_fresh_instances_agree() -> None:
    env = gym.make(ENV_ID, device="high", sla_ms=600.0)
    acts = _actions(env.action_space, 300)

    def record(e: gym.Env[Any, Any]) -> tuple[list[Any], list[float], list[dict[str, Any]]]:
        obs, _ = e.reset(seed=5)
        o, r, i = [obs], [], []
        for a in acts:
            obs, rew, _, _, info = e.step(a)
            o.append(obs)
            r.append(rew)
            i.append(info)
        return o, r, i

    a, b, c = record(env), record(env), record(gym.make(ENV_ID, device="high", sla_ms=600.0))
    np.testing.assert_array_equal(np.stack(a[0]), np.stack(b[0]))
    np.testing.assert_array_equal(np.stack(a[0]), np.stack(c[0]))
    assert a[1] == b[1] == c[1]
    assert a[2] == b[2] == c[2]
    assert set(a[2][0]) == set(INFO_KEYS)


@needs_data
def test_same_seed_gives_every_policy_the_same_requests() -> None:
    """Common random numbers: whatever the actions, the captured images, SLAs and the
    counterfactual pre-execution times of both locations are the same."""
    env = gym.make(ENV_ID, sla_range_ms=(300.0, 1500.0))
    keys = ("sla_ms", "megapixels", "raw_bytes", "pre_bytes")
    keys += ("cf_preexec_device_ms", "cf_preexec_server_ms")
    streams = []
    for seed_actions in (1, 2):
        env.reset(seed=9)
        acts = _actions(env.action_space, 400, seed=seed_actions)
        streams.append([{k: env.step(a)[4][k] for k in keys} for a in acts])
    assert streams[0] == streams[1]


@needs_data
def test_vector_env_matches_the_single_env_and_autoresets() -> None:
    single = OffloadEnv(device="mid", sla_ms=700.0)
    vector = OffloadVectorEnv(num_envs=1, device="mid", sla_ms=700.0, max_episode_steps=50)
    o1, _ = single.reset(seed=4)
    o2, _ = vector.reset(seed=4)
    np.testing.assert_array_equal(o1, o2[0])
    for t, a in enumerate(_actions(single.action_space, 49)):
        o1, r1, _, _, i1 = single.step(a)
        o2, r2, _, trunc, i2 = vector.step(a[None, :])
        assert r1 == r2[0] and not trunc[0]
        assert i1 == {k: i2[k][0].item() for k in i1}, f"step {t}"
        np.testing.assert_array_equal(o1, o2[0])
    _, _, _, trunc, info = vector.step(np.array([[0, 7, 0]]))
    assert trunc[0] and info["_final_obs"][0]
    venv = gym.make_vec(ENV_ID, num_envs=4)
    assert isinstance(venv, OffloadVectorEnv)
    venv.reset(seed=0)
    _, reward, _, _, info = venv.step(np.tile([0, 7, 1], (4, 1)))
    assert reward.shape == (4,) and info["energy_mj"].shape == (4,)
    assert len(set(info["megapixels"].tolist())) == 4, "streams should be independent"


def test_docstring_documents_every_device_observation_column() -> None:
    doc = OffloadEnv.__doc__ or ""
    for i, (name, unit, _) in enumerate(dfeat.DEVICE_REQUEST_FEATURES):
        assert f"| {i} | {name} | {unit} |" in doc, f"request column {i} ({name}) missing"
    for i, (name, unit, _) in enumerate(dfeat.DEVICE_MODEL_FEATURES):
        assert f"| {i} | {name} | {unit} |" in doc, f"model column {i} ({name}) missing"
    for key in ("device_prep_ms", "server_prep_ms", "queue_ms", "backup_done_ms", "energy_mj"):
        assert key in doc


# --------------------------------------------------------------------------- honesty
def test_device_observation_ignores_this_requests_network_and_the_server() -> None:
    """Rewriting the current request's realised upload/download times or the server's state
    leaves the device's observation unchanged (it is built before anything is sent)."""
    sim = OffloadSim(
        _hand_device(),
        LinkModel(20.0, 8.0, 8.0, 0.5, 0.5, 0.5, name="noisy"),
        ModelPool("two", (ModelSpec("s", 0.6, 5.0, 1.0), ModelSpec("l", 0.8, 50.0, 3.0))),
        num_envs=3,
    )
    sim.reset(1)
    for _ in range(5):
        sim.step(np.tile([0, 2, 0], (3, 1)))
    before = sim.obs.copy()
    i = sim._cursor
    for name in ("_blk_tin_pre", "_blk_tin_raw", "_blk_tout_pre", "_blk_tout_raw"):
        getattr(sim, name)[i] *= 7.0
    sim.tracker.mu[:] *= 3.0
    sim._srv_mean[:] = 1e6
    sim._arrive()
    np.testing.assert_array_equal(sim.obs, before)


@needs_data
def test_device_observation_does_not_depend_on_the_server_policy() -> None:
    """Two servers that choose differently: the same device actions see the same device
    observations throughout (the device never observes the server's state)."""

    class Always:
        def __init__(self, k: int) -> None:
            self.name, self.k = f"always{k}", k

        def reset(self, num_envs: int, seed: int | None = None) -> None:
            pass

        def select(self, obs: Any) -> Any:
            return np.full(obs.shape[0], self.k)

    obs = []
    for k in (0, 10):
        env = OffloadEnv(device="mid", server_policy=Always(k), sla_ms=500.0)
        o, _ = env.reset(seed=2)
        trace = [o]
        for a in _actions(env.action_space, 200, seed=8):
            trace.append(env.step(a)[0])
        obs.append(np.stack(trace))
    np.testing.assert_array_equal(obs[0], obs[1])


def test_network_features_are_the_ewma_of_previous_measurements() -> None:
    """On a constant link every measurement is the same, so the EWMA is exact from the probe
    on: latency = RTT/2 + 1 KB / downlink, uplink = the link's bandwidth."""
    sim = _hand_sim(1000.0)
    obs = sim.reset(0)
    for _ in range(3):
        req = obs[0, : dfeat.R]
        assert req[dfeat.NET_LATENCY] == pytest.approx(T_OUT)
        assert req[dfeat.NET_UPLINK] == pytest.approx(8.0, rel=1e-5)
        assert req[dfeat.NET_UPLINK_STD] == pytest.approx(0.0, abs=1e-4)
        assert req[dfeat.NET_UPLINK_LAST] == pytest.approx(8.0, rel=1e-5)
        assert req[dfeat.NET_AGE] > 0
        assert req[dfeat.TIER_MID] == 1 and req[dfeat.TIER_LOW] == req[dfeat.TIER_HIGH] == 0
        assert req[dfeat.PREP_EST] == pytest.approx(T_DP)
        obs = sim.obs
        sim.step(np.array([[0, 2, 0]]))


def _noisy_sim(**kwargs: Any) -> OffloadSim:
    return OffloadSim(
        _hand_device(),
        LinkModel(20.0, 8.0, 8.0, 0.5, 0.5, 0.5, name="noisy"),
        ModelPool("two", (ModelSpec("s", 0.6, 5.0, 1.0), ModelSpec("l", 0.8, 50.0, 3.0))),
        **kwargs,
    )


def test_last_uplink_is_the_newest_completed_measurement() -> None:
    """On a variable link ``net_uplink_last_mbps`` is the bandwidth measured by the offloaded
    request whose response arrived last before the capture, and the EWMA took in exactly the
    measurements completed since the previous capture (``m = m + a (b - m)`` each), across block
    boundaries too."""
    sim = _noisy_sim(num_envs=1, arrival_rate_hz=2.0)
    assert sim.block_len == 256
    obs = sim.reset(1).astype(np.float64)
    assert obs[0, dfeat.NET_UPLINK_LAST] == pytest.approx(obs[0, dfeat.NET_UPLINK])
    a = dfeat.DEVICE_NET_ALPHA
    inflight: list[tuple[float, float]] = []  # (response arrival, measured bandwidth)
    folded = 0
    for _ in range(300):
        i = sim._cursor
        t0, bw = float(sim._blk_time[i][0]), float(sim._blk_bw[i][0])
        o = sim.step(np.array([[1, 2, 0]]))
        inflight.append((t0 + float(o.remote_e2e_ms[0]), bw))
        now = float(sim._blk_time[sim._cursor][0])
        done = sorted(x for x in inflight if x[0] <= now)
        inflight = [x for x in inflight if x[0] > now]
        new = sim.obs.astype(np.float64)
        m = obs[0, dfeat.NET_UPLINK]
        for _, b in done:
            m = m + a * (b - m)
        assert new[0, dfeat.NET_UPLINK] == pytest.approx(m, rel=1e-4)
        if done:
            folded += 1
            assert new[0, dfeat.NET_UPLINK_LAST] == pytest.approx(done[-1][1], rel=1e-5)
        else:
            assert new[0, dfeat.NET_UPLINK_LAST] == obs[0, dfeat.NET_UPLINK_LAST]
        obs = new
    assert 0 < folded < 300  # both cases met: a response in time and one still in flight


def test_a_measurement_enters_the_history_only_once_it_has_completed() -> None:
    """Perturbing the previous request's download latency and upload bandwidth changes the
    next observation only when that response arrived before the next capture (the leak of
    issue 14: the old env folded it in regardless)."""
    sim = _noisy_sim(num_envs=4, arrival_rate_hz=1.0, sla_ms=2000.0)
    sim.reset(3)
    late = early = 0
    for step in range(200):
        i = sim._cursor
        other = copy.deepcopy(sim)
        for name in ("_blk_tout_pre", "_blk_tout_raw", "_blk_bw"):
            getattr(other, name)[i] *= 7.0
        act = np.tile([step % 2, 2, 0], (4, 1))
        o = sim.step(act)
        other.step(act)
        arrival = sim._blk_time[i] + o.remote_e2e_ms
        nxt = sim._blk_time[sim._cursor]
        pending = arrival > nxt
        net = slice(dfeat.NET_LATENCY, dfeat.R)
        np.testing.assert_array_equal(other.obs[pending, net], sim.obs[pending, net])
        assert np.all(
            other.obs[~pending, dfeat.NET_LATENCY] != sim.obs[~pending, dfeat.NET_LATENCY]
        )
        late += int(pending.sum())
        early += int((~pending).sum())
    assert late > 0 and early > 0


def test_a_local_request_measures_nothing_and_a_probe_costs_its_bytes() -> None:
    """Running locally leaves the network history as it was (only its age grows); with
    ``probe_every_ms`` a local request probes when the history is stale, pays the probe's bytes
    and radio energy, and its measurement enters once the probe has completed."""
    sim = _noisy_sim(num_envs=2)
    obs = sim.reset(5).copy()
    net = [dfeat.NET_LATENCY, dfeat.NET_UPLINK, dfeat.NET_UPLINK_STD, dfeat.NET_UPLINK_LAST]
    for _ in range(50):
        o = sim.step(np.tile([0, 0, 0], (2, 1)))
        assert not o.probe.any() and np.all(o.bytes_sent == 0) and np.all(o.radio_mj == 0)
        np.testing.assert_array_equal(sim.obs[:, net], obs[:, net])
        assert np.all(sim.obs[:, dfeat.NET_AGE] > obs[:, dfeat.NET_AGE])
        obs = sim.obs.copy()

    probing = _noisy_sim(num_envs=2, probe_every_ms=3000.0)
    probing.reset(5)
    probes = 0
    for _ in range(100):
        before = probing.obs.copy()
        age = before[:, dfeat.NET_AGE].astype(np.float64)
        o = probing.step(np.tile([0, 0, 0], (2, 1)))
        np.testing.assert_array_equal(o.bytes_sent > 0, o.probe)
        np.testing.assert_array_equal(o.radio_mj > 0, o.probe)
        assert np.all(o.bytes_sent[o.probe] == pytest.approx(sum(PROBE_BYTES)))
        assert np.all(age[o.probe] > 3000.0)
        probes += int(o.probe.sum())
    assert probes > 0
    # an offloaded request is its own measurement: no probe on it
    o = probing.step(np.tile([0, 2, 0], (2, 1)))
    assert not o.probe.any()


# --------------------------------------------------------------------------- breakdown
def test_offload_with_device_preprocessing_by_hand() -> None:
    sim = _hand_sim(300.0)
    sim.reset(0)
    o = sim.step(np.array([[0, 2, 0]])).info(0)
    preexec = T_DP + T_IN_PRE + T_SP_PRE
    assert o["device_prep_ms"] == pytest.approx(T_DP)
    assert o["t_input_ms"] == pytest.approx(T_IN_PRE)
    assert o["server_prep_ms"] == pytest.approx(T_SP_PRE)
    assert o["queue_ms"] == 0.0 and o["exec_ms"] == pytest.approx(20.0)
    assert o["t_output_ms"] == pytest.approx(T_OUT)
    assert o["preexec_ms"] == pytest.approx(preexec)
    assert o["e2e_ms"] == pytest.approx(preexec + 20.0 + T_OUT)  # 273.4 <= 300
    assert o["met"] and o["answered_by"] == ANSWER_REMOTE and o["accuracy"] == pytest.approx(0.8)
    assert o["bytes_sent"] == pytest.approx(20e3) and o["bytes_received"] == pytest.approx(1e3)
    assert o["compute_mj"] == pytest.approx(2.0 * T_DP)
    radio = 1000.0 * 0.02 + 500.0 * 0.001 + 100.0 * (T_IN_PRE + T_OUT) / 1e3
    assert o["radio_mj"] == pytest.approx(radio)
    assert o["energy_mj"] == pytest.approx(2.0 * T_DP + radio)
    assert o["reward"] == pytest.approx(0.8)
    assert o["cf_preexec_device_ms"] == pytest.approx(preexec)
    assert o["cf_preexec_server_ms"] == pytest.approx(T_IN_RAW + T_SP_RAW)


def test_raw_upload_late_and_the_backup_answers() -> None:
    sim = _hand_sim(400.0)
    sim.reset(0)
    o = sim.step(np.array([[1, 2, 1]])).info(0)
    remote = T_IN_RAW + T_SP_RAW + 20.0 + T_OUT
    backup_done = T_DP + 0.0 + 100.0  # resident backup: no load
    assert o["preexec_ms"] == pytest.approx(T_IN_RAW + T_SP_RAW)
    assert o["remote_e2e_ms"] == pytest.approx(remote)  # 1075 > 400: late
    assert o["backup"] and o["backup_load_ms"] == 0.0
    assert o["backup_done_ms"] == pytest.approx(backup_done)  # 310 <= 400
    assert o["answered_by"] == ANSWER_BACKUP and o["accuracy"] == pytest.approx(0.5)
    assert o["e2e_ms"] == pytest.approx(backup_done) and o["met"]
    # the device preprocesses for its backup even though the server preprocesses the upload
    assert o["device_prep_ms"] == pytest.approx(T_DP)
    assert o["compute_mj"] == pytest.approx(2.0 * (T_DP + 100.0))
    radio = 1000.0 * 1.0 + 500.0 * 0.001 + 100.0 * (T_IN_RAW + T_OUT) / 1e3
    assert o["radio_mj"] == pytest.approx(radio)
    # with device preprocessing the remote answer (273 ms) comes first and stops the backup
    o = sim.step(np.array([[0, 2, 1]])).info(0)
    assert o["answered_by"] == ANSWER_REMOTE and o["accuracy"] == pytest.approx(0.8)
    busy = (T_DP + T_IN_PRE + T_SP_PRE + 20.0 + T_OUT) - T_DP
    assert o["compute_mj"] == pytest.approx(2.0 * (T_DP + busy))


def test_local_model_loads_once_and_misses_are_worth_nothing() -> None:
    sim = _hand_sim(600.0, miss_penalty=0.25, energy_cost_per_j=0.1)
    sim.reset(0)
    first = sim.step(np.array([[1, 1, 1]])).info(0)  # model b, not in memory
    assert first["prep"] == 0 and not first["backup"]  # ignored for a local placement
    assert first["local_load_ms"] == pytest.approx(200.0)
    assert first["local_e2e_ms"] == pytest.approx(T_DP + 200.0 + 300.0)  # 710 > 600
    assert first["answered_by"] == ANSWER_NONE and not first["met"]
    assert first["accuracy"] == 0.0 and first["bytes_sent"] == 0.0 and first["radio_mj"] == 0
    energy = 2.0 * (T_DP + 200.0 + 300.0)
    assert first["reward"] == pytest.approx(-0.25 - 0.1 * energy / 1e3)
    assert sim.obs[0, dfeat.R + dfeat.P * 1 + dfeat.LOADED] == 1.0  # the device knows
    second = sim.step(np.array([[0, 1, 0]])).info(0)  # now in memory
    assert second["local_load_ms"] == 0.0
    assert second["local_e2e_ms"] == pytest.approx(T_DP + 300.0)
    assert second["answered_by"] == ANSWER_LOCAL and second["accuracy"] == pytest.approx(0.7)


def test_counterfactuals_match_what_step_returns() -> None:
    sim = OffloadSim(
        _hand_device(),
        LinkModel(20.0, 8.0, 8.0, 0.5, 0.5, 0.5, name="noisy"),
        ModelPool("two", (ModelSpec("s", 0.6, 5.0, 1.0), ModelSpec("l", 0.8, 50.0, 3.0))),
        num_envs=4,
        sla_range_ms=(200.0, 1500.0),
    )
    sim.reset(3)
    acts = sim.all_actions()
    rng = np.random.default_rng(0)
    rows = np.arange(4)
    for _ in range(40):
        reward, energy, e2e = sim.counterfactual_rewards()
        pre = sim.current_preexec_ms()
        j = rng.integers(0, len(acts), size=4)
        o = sim.step(acts[j])
        np.testing.assert_allclose(o.reward, reward[rows, j])
        np.testing.assert_allclose(o.energy_mj, energy[rows, j])
        np.testing.assert_allclose(o.e2e_ms, e2e[rows, j])
        np.testing.assert_allclose(
            pre, np.stack([o.cf_preexec_device_ms, o.cf_preexec_server_ms], 1)
        )


# --------------------------------------------------------------------------- bad input
def test_unknown_device_tier_or_preset_is_named() -> None:
    with pytest.raises(DeviceError, match=r"unknown device tier 'ultra'; expected one of"):
        DeviceProfile("x", "ultra", (_const_model("a", 0.5, 1.0, 1.0),), Preprocessing(1, 1))
    with pytest.raises(PresetError, match=r"unknown device 'ultra'; expected one of \[.*'mid'"):
        gym.make(ENV_ID, device="ultra")
    with pytest.raises(DeviceError, match="unknown device tier 'top'"):
        DeviceProfile.from_config("x", "top", {"models": []}, {"intercept_ms": 1, "ms_per_mp": 1})


def test_a_device_pool_with_no_models_is_refused() -> None:
    with pytest.raises(DeviceError, match="on-device pool has no models"):
        DeviceProfile("empty", "low", (), Preprocessing(1.0, 1.0))
    with pytest.raises(DeviceError, match="on-device pool has no models"):
        DeviceProfile.from_config(
            "empty",
            "low",
            {"source": "pieslicer", "path": "x.csv", "models": []},
            {"intercept_ms": 1, "ms_per_mp": 1},
        )


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: ImageModel(camera_mp=-2.0), r"images\.camera_mp must be > 0, got -2"),
        (lambda: ImageModel(other_mp=[-1.0, 3.0]), r"images\.other_mp must satisfy 0 < low"),
        (lambda: ImageModel(file_size_mb=[2.0, 1.0]), r"images\.file_size_mb"),
        (lambda: ImageModel(preprocessed_kb=0), r"images\.preprocessed_kb must be > 0"),
        (lambda: ImageBatch.from_values(-3.0, 1e6, 2e4), r"images\.megapixels must be"),
        (lambda: ImageBatch.from_values(3.0, -1e6, 2e4), r"images\.raw_bytes must be"),
        (lambda: ImageBatch.from_values(3.0, 1e6, 0.0), r"images\.pre_bytes must be"),
        (lambda: Preprocessing(10.0, 50.0).mean_ms(-1.0), r"megapixels must be finite and > 0"),
        (lambda: Preprocessing(10.0, -5.0), r"preprocessing\.ms_per_mp must be > 0"),
    ],
)
def test_negative_megapixels_or_sizes_are_named(make: Any, match: str) -> None:
    with pytest.raises((ImageError, DeviceError), match=match):
        make()


@needs_data
@pytest.mark.parametrize(
    ("action", "match"),
    [
        ([0, 8, 0], r"component 1, placement.*must be in \[0, 8\), got \[8\]"),
        ([2, 0, 0], r"component 0, preprocessing.*got \[2\]"),
        ([0, 0, -1], r"component 2, backup.*got \[-1\]"),
        ([0, 1], r"3 integers"),
        ([0.5, 1, 0], r"integers"),
    ],
)
def test_actions_outside_the_space_are_named(action: list[Any], match: str) -> None:
    env = OffloadEnv()
    env.reset(seed=0)
    with pytest.raises(OffloadError, match=match):
        env.step(np.array(action))


@needs_data
def test_vector_actions_of_the_wrong_shape_are_named() -> None:
    venv = OffloadVectorEnv(num_envs=2)
    venv.reset(seed=0)
    with pytest.raises(OffloadError, match=r"expected actions of shape \(2, 3\)"):
        venv.step(np.zeros((3, 3), dtype=np.int64))


@needs_data
def test_other_bad_arguments_are_named() -> None:
    with pytest.raises(OffloadError, match="backup_model 'nope' is not an on-device model"):
        OffloadEnv(backup_model="nope")
    with pytest.raises(OffloadError, match="server_policy must be"):
        OffloadEnv(server_policy="greedy")
    with pytest.raises(OffloadError, match=r"sla_ms must be > 0"):
        OffloadEnv(sla_ms=-5.0)
    with pytest.raises(DeviceError, match="unknown radio 'satellite'"):
        OffloadEnv(radio="satellite")
    with pytest.raises(OffloadError, match="cache_models must be an integer >= 0"):
        OffloadEnv(cache_models=-1)


# --------------------------------------------------------------------------- the server's view
def test_server_observation_carries_the_tcp_rtt_and_the_phones_download_history() -> None:
    """What the server selector reads (feature schema v4), as in the model-selection simulator:
    the connection's smoothed RTT on arrival (this request's upload folded in), and the download
    history the phone sends, unknown before its first answer arrives and then the runtime's
    estimators over its answers."""
    from modi.runtime import features as F

    sim = _hand_sim(2000.0, arrival_rate_hz=0.5)
    sim.reset(0)
    srv = sim.server_obs.astype(np.float64)  # rows: device preprocessing, then raw upload
    assert np.all((srv[:, F.SRTT] > 14.0) & (srv[:, F.SRTT] < 28.0))  # RTT 20 ms, noisy samples
    np.testing.assert_allclose(srv[:, F.RTTVAR], 0.5 * srv[:, F.SRTT], rtol=1e-5)  # first sample
    assert np.all(srv[:, F.CLIENT_DL : F.R] == F.UNKNOWN_HISTORY)
    # running locally sends nothing: the connection has no sample yet and the history stays
    for _ in range(3):
        sim.step(np.array([[0, 0, 0]]))
        assert np.isnan(sim._tcp_srtt).all() and np.isinf(sim._up_done).all()
        assert np.all(sim.server_obs[:, F.CLIENT_DL : F.R] == F.UNKNOWN_HISTORY)
    dl = dlvar = mis = float("nan")
    inflight: list[tuple[float, float, float]] = []  # (arrival, download, upload)
    for _ in range(12):
        t0 = float(sim._blk_time[sim._cursor][0])
        o = sim.step(np.array([[0, 2, 0]]))  # offload, preprocessed on the device
        assert 14.0 < sim.server_obs[0, F.SRTT] < 28.0
        # an answer is folded in at the first capture after it has arrived, in arrival order
        inflight.append((t0 + float(o.remote_e2e_ms[0]), float(o.t_output_ms[0]),
                         float(o.t_input_ms[0])))  # fmt: skip
        now = float(sim._blk_time[sim._cursor][0])
        for _, d, u in sorted(x for x in inflight if x[0] <= now):
            dl, dlvar = F.client_dl_update(dl, dlvar, d)
            mis = F.client_mismatch_update(mis, d, u)
        inflight = [x for x in inflight if x[0] > now]
        nxt = sim.server_obs.astype(np.float64)
        if not np.isnan(dl):
            np.testing.assert_allclose(nxt[:, F.CLIENT_DL], dl, rtol=1e-5)
            np.testing.assert_allclose(nxt[:, F.CLIENT_DLVAR], dlvar, rtol=1e-5)
            np.testing.assert_allclose(nxt[:, F.CLIENT_MISMATCH], mis, rtol=1e-5)
    assert dl == pytest.approx(T_OUT) and mis == pytest.approx(abs(np.log(T_OUT / T_IN_PRE)))


def test_an_answer_enters_the_phones_download_history_only_once_it_has_arrived() -> None:
    """Perturbing the previous answer's download time changes the next server observation's
    download history only when that answer arrived before the next capture (DESIGN.md §1)."""
    from modi.runtime import features as F

    sim = _noisy_sim(num_envs=4, arrival_rate_hz=1.0, sla_ms=2000.0)
    sim.reset(3)
    late = early = 0
    hist = slice(F.CLIENT_DL, F.R)
    for step in range(200):
        i = sim._cursor
        other = copy.deepcopy(sim)
        for name in ("_blk_tout_pre", "_blk_tout_raw"):
            getattr(other, name)[i] *= 7.0
        act = np.tile([step % 2, 2, 0], (4, 1))
        o = sim.step(act)
        other.step(act)
        arrival = sim._blk_time[i] + o.remote_e2e_ms
        pending = np.tile(arrival > sim._blk_time[sim._cursor], 2)  # both payload rows
        mine, theirs = sim.server_obs, other.server_obs
        np.testing.assert_array_equal(theirs[pending, hist], mine[pending, hist])
        assert np.all(theirs[~pending, F.CLIENT_DL] != mine[~pending, F.CLIENT_DL])
        late += int(pending.sum())
        early += int((~pending).sum())
    assert late > 0 and early > 0


def test_the_server_view_leaves_every_other_draw_as_it_was() -> None:
    """The RTT samples' noise has its own generator: the device's observations and outcomes of
    a stream are those of a sim whose server view is never read."""
    a, b = _noisy_sim(num_envs=3), _noisy_sim(num_envs=3)
    a.reset(11)
    b.reset(11)
    b._rtt_rng = np.random.default_rng(999)  # another noise for the server's RTT samples
    for samples in (b._blk_rtt_pre, b._blk_rtt_raw):
        samples[0][:] *= np.exp(0.1 * b._rtt_rng.standard_normal(samples[0].shape))
    for step in range(300):
        act = np.tile([step % 2, (step // 2) % 3, step % 3 == 0], (3, 1))
        oa, ob = a.step(act), b.step(act)
        np.testing.assert_array_equal(a.obs, b.obs)
        np.testing.assert_array_equal(oa.e2e_ms, ob.e2e_ms)
    assert not np.array_equal(a._tcp_srtt, b._tcp_srtt)


def test_an_upload_enters_the_servers_rtt_only_once_it_has_reached_the_server() -> None:
    """Perturbing a request's RTT samples changes the next request's smoothed RTT (per payload
    row) only when the earlier upload reached the server before the next request does; the
    uploads overlap (the raw image takes seconds at 5 captures per second)."""
    from modi.runtime import features as F

    n = 4
    sim = _noisy_sim(num_envs=n, arrival_rate_hz=5.0, sla_ms=5000.0)
    sim.reset(8)
    before = after = changed = 0
    for step in range(150):
        i = sim._cursor
        other = copy.deepcopy(sim)
        for samples in (other._blk_rtt_pre, other._blk_rtt_raw):
            samples[0][i] *= 1.3  # this request's RTT samples
        act = np.tile([step % 2, 2, 0], (n, 1))
        o = sim.step(act)
        other.step(act)
        t0 = sim._blk_time[i]
        reached = t0 + o.device_prep_ms + o.t_input_ms  # this upload at the server
        j = sim._cursor
        nxt = sim._blk_time[j]
        arrive = np.concatenate([nxt + sim._blk_tdp[j] + sim._blk_tin_pre[j],
                                 nxt + sim._blk_tin_raw[j]])  # fmt: skip
        seen = np.tile(reached, 2) <= arrive
        mine, theirs = sim.server_obs[:, F.SRTT], other.server_obs[:, F.SRTT]
        np.testing.assert_array_equal(theirs[~seen], mine[~seen])
        before += int((~seen).sum())
        after += int(seen.sum())
        # an upload seen counts (in float32 unless later folds have all but overwritten it)
        changed += int((theirs[seen] != mine[seen]).sum())
    assert before > 0 and after > 0 and changed > 0.9 * after


def test_the_servers_upload_history_holds_the_uploads_that_have_reached_it() -> None:
    """``net_mean_ms``/``net_std_ms`` of the server's observation: the EWMA of the device's
    earlier upload times over the uploads that reached the server before this request does (per
    payload row), in arrival order; this request's own upload before the first."""
    from modi.runtime import features as F

    n = 2
    sim = _noisy_sim(num_envs=n, arrival_rate_hz=5.0, sla_ms=5000.0)
    sim.reset(21)
    sent: list[list[tuple[float, float]]] = [[] for _ in range(n)]  # (at the server, t_input)
    a = CLIENT_NET_ALPHA
    checked = 0
    for step in range(120):
        j = sim._cursor
        t = sim._blk_time[j]
        arrive = np.concatenate([t + sim._blk_tdp[j] + sim._blk_tin_pre[j],
                                 t + sim._blk_tin_raw[j]])  # fmt: skip
        own = np.concatenate([sim._blk_tin_pre[j], sim._blk_tin_raw[j]])
        srv = sim.server_obs.astype(np.float64)
        for row in range(2 * n):
            m, v = float("nan"), 0.0
            for _, x in sorted(u for u in sent[row % n] if u[0] <= arrive[row]):
                if np.isnan(m):
                    m = x
                else:
                    d = x - m
                    m, v = m + a * d, (1 - a) * (v + a * d * d)
            exp_m, exp_s = (own[row], 0.0) if np.isnan(m) else (m, np.sqrt(v))
            assert srv[row, F.NET_MEAN] == pytest.approx(exp_m, rel=1e-5)
            assert srv[row, F.NET_STD] == pytest.approx(exp_s, rel=1e-4, abs=1e-3)
            checked += 1
        # with the backup on, the phone preprocesses (for the backup) even for a raw upload,
        # which starts at capture
        o = sim.step(np.tile([step % 2, 2, int(step % 3 == 0)], (n, 1)))
        for k in range(n):
            prep_ms = o.device_prep_ms[k] if o.prep[k] == 0 else 0.0
            sent[k].append((t[k] + prep_ms + o.t_input_ms[k], o.t_input_ms[k]))
    assert checked == 120 * 2 * n


def test_the_servers_profiles_learn_an_execution_once_it_has_finished() -> None:
    """The μ/σ the server decides with (its observation's model block) are the EWMA of the
    executions that finished before the capture, in completion order: at 20 captures per
    second many are still running at the next capture and must not be in yet."""
    from modi.runtime import features as F

    n = 3
    sim = _noisy_sim(num_envs=n, arrival_rate_hz=20.0, sla_ms=5000.0, reprofile_every=0)
    sim.reset(5)
    a = sim.tracker.alpha
    mu0, var0 = np.array([5.0, 50.0]), np.array([1.0, 9.0])
    runs: list[list[tuple[float, int, float]]] = [[] for _ in range(n)]  # (finished, model, ms)
    pending = checked = 0
    for step in range(200):
        t = sim._blk_time[sim._cursor]
        srv = sim.server_obs.astype(np.float64)
        for row in range(n):
            mu, var = mu0.copy(), var0.copy()
            for _, k, x in sorted(r for r in runs[row] if r[0] <= t[row]):
                d = x - mu[k]
                mu[k], var[k] = mu[k] + a * d, (1 - a) * (var[k] + a * d * d)
            pending += sum(r[0] > t[row] for r in runs[row])
            for payload in (row, row + n):  # the server's view for either payload
                got = srv[payload, F.R :].reshape(2, F.P)
                np.testing.assert_allclose(got[:, F.MU], mu, rtol=1e-6, err_msg=f"step {step}")
                np.testing.assert_allclose(got[:, F.SIGMA], np.sqrt(var), rtol=1e-5)
                checked += 1
        o = sim.step(np.tile([step % 2, 2, 0], (n, 1)))
        for k in range(n):
            end = t[k] + o.preexec_ms[k] + o.exec_ms[k]
            runs[k].append((end, int(o.server_model[k]), float(o.exec_ms[k])))
    assert checked == 200 * 2 * n and pending > 50


def test_the_servers_view_counts_the_request_from_its_uploads_start() -> None:
    """The phone's preprocessing (and the server's own) comes off the SLA the server selector
    sees, as it does in every encoder: elapsed = the upload, the time left as it is."""
    from modi.runtime import features as F

    n = 3
    sim = _noisy_sim(num_envs=n, sla_ms=700.0)
    sim.reset(4)
    for step in range(30):
        i = sim._cursor
        srv = sim.server_obs.astype(np.float64)
        t_in = np.concatenate([sim._blk_tin_pre[i], sim._blk_tin_raw[i]])
        gone = np.concatenate(  # from capture to the server's decision, for either payload
            [sim._blk_tdp[i] + sim._blk_tin_pre[i] + sim._blk_tsp_pre[i],
             sim._blk_tin_raw[i] + sim._blk_tsp_raw[i]]
        )  # fmt: skip
        np.testing.assert_allclose(srv[:, F.ELAPSED], t_in, rtol=1e-6)
        np.testing.assert_allclose(srv[:, F.SLA], 700.0 - (gone - t_in), rtol=1e-6)
        np.testing.assert_allclose(srv[:, F.REMAINING], 700.0 - gone, rtol=1e-5, atol=1e-3)
        np.testing.assert_allclose(srv[:, F.BUDGET], 700.0 - gone - t_in, rtol=1e-5, atol=1e-3)
        assert np.all(gone[:n] > t_in[:n] + 1.0), "the phone's preprocessing comes first"
        sim.step(np.tile([step % 2, 2, 0], (n, 1)))


def test_a_reprofiling_run_is_learned_once_it_has_finished() -> None:
    """Re-profiling a model the server has not run lately is an execution too: its time enters
    the profile at the first capture after it finishes, not at once."""
    from modi.runtime import features as F

    sim = _noisy_sim(num_envs=2, arrival_rate_hz=40.0, sla_ms=5000.0, reprofile_every=5)
    sim.reset(2)
    mu0 = sim.tracker.mu.copy()
    local = np.tile([0, 0, 0], (2, 1))  # run locally: the server learns only the re-profiling
    for _ in range(5):
        sim.step(local)
    running = np.isfinite(sim._ex_done)
    assert running.any(), "the 50 ms model's run outlasts a 25 ms gap at least once"
    rows, slots = np.nonzero(running)
    models, done = sim._ex_model[rows, slots], sim._ex_done[rows, slots]
    srv = sim.server_obs.astype(np.float64)[:2, F.R :].reshape(2, 2, F.P)
    np.testing.assert_allclose(srv[rows, models, F.MU], mu0[rows, models], rtol=1e-7)
    while np.any(sim._blk_time[sim._cursor][rows] < done):
        sim.step(local)
    srv = sim.server_obs.astype(np.float64)[:2, F.R :].reshape(2, 2, F.P)
    assert np.all(srv[rows, models, F.MU] != np.float32(mu0[rows, models])), "learned once done"


def test_the_radio_is_in_the_observation_and_the_offload_options_only() -> None:
    """The phone knows which radio it is on: its active power is in every observation, and in
    the offload options' vectors (with the transfer's estimated active energy), never in a local
    option's (a local run sends nothing)."""
    for radio in ("wifi", "lte"):
        sim = _noisy_sim(num_envs=2, radio=radio)
        obs = sim.reset(0)
        want = dfeat.RADIO_ACTIVE_POWER_W[radio]
        assert np.allclose(obs[:, dfeat.RADIO_ACTIVE_W], want)
        x = dfeat.option_features(obs)
        big_l = sim.num_local
        assert np.all(x[:, :big_l, dfeat.RADIO_COLUMNS] == 0.0)
        assert np.allclose(x[:, big_l:, 23], want)
        up_s, lat_s = x[:, big_l:, 21], obs[:, dfeat.NET_LATENCY, None] / 1e3
        assert np.allclose(x[:, big_l:, 24], want * (up_s + 2.0 * lat_s), rtol=1e-5)
