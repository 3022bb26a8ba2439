"""The server side of the simulator: load spikes, the finite FIFO queue, arrival processes, and
what the server may observe (never the future)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest

from modi.envs.arrivals import ArrivalError, PoissonArrivals, TraceArrivals, make_arrivals
from modi.envs.model_selection import ModelSelectionEnv, ModelSelectionVectorEnv, build_sim
from modi.envs.networks import GaussianOneWay
from modi.envs.pools import ModelPool, ModelSpec
from modi.envs.servers import SLOWDOWN_ALPHA, ServerBank, SpikeConfig, SpikeProcess
from modi.envs.simulator import ModelSelectionSim, SimulationError, StepOutcome
from modi.runtime.features import MU, QUEUE, SLOWDOWN, P, R

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
AZURE = DATA / "azure-llm-inference-2023" / "AzureLLMInferenceTrace_conv.csv"
needs_azure = pytest.mark.skipif(
    not AZURE.is_file(), reason=f"Azure arrival trace not found at {AZURE} (../shared/data)"
)

SPIKES = {"mean_interval_s": 2.0, "mean_duration_s": 1.0, "slowdown": [2.0, 4.0]}

FAST, SLOW = 0, 1
UPLOAD_MS = 5.0  # constant one-way network time of the hand-made examples
GAP_MS = 20.0  # constant inter-arrival gap of the hand-made examples


class FixedGaps:
    """Arrivals every ``gap_ms`` (captures at gap, 2*gap, ...): a hand-checkable timeline."""

    name = "fixed"

    def __init__(self, gap_ms: float) -> None:
        self.gap_ms = gap_ms

    @property
    def rate_hz(self) -> float:
        return 1000.0 / self.gap_ms

    def reset(self, rng: np.random.Generator, num_envs: int) -> None:
        """Stateless."""

    def gaps_ms(self, rng: np.random.Generator, block_len: int, num_envs: int) -> np.ndarray:
        return np.full((block_len, num_envs), self.gap_ms)


def _hand_pool(scale: float = 1.0) -> ModelPool:
    """Two deterministic models (σ = 0): fast 10 ms, slow 100 ms (times ``scale``)."""
    return ModelPool(
        "hand",
        (
            ModelSpec("fast", 0.5, 10.0 * scale, 0.0),
            ModelSpec("slow", 0.9, 100.0 * scale, 0.0),
        ),
    )


def _hand_sim(num_envs: int = 1, **kwargs: Any) -> ModelSelectionSim:
    """Captures every 20 ms, uploads and downloads of exactly 5 ms, σ = 0, no re-profiling:
    request ``k`` (0-based) reaches the server at ``25 + 20 k`` ms."""
    kw: dict[str, Any] = {
        "sla_ms": 1000.0,
        "num_clients": 1,
        "reprofile_every": 0,
        "arrivals": FixedGaps(GAP_MS),
        **kwargs,
    }
    return ModelSelectionSim(_hand_pool(), GaussianOneWay(UPLOAD_MS, 0.0), num_envs=num_envs, **kw)


def _run(sim: ModelSelectionSim, actions: list[int], seed: int = 0) -> tuple[list, list]:
    """Serve ``actions`` on stream 0 (all streams get the same action); returns the observation
    seen before each step and the outcomes."""
    sim.reset(seed)
    seen, outs = [], []
    for a in actions:
        seen.append(sim.obs.copy())
        outs.append(sim.step(np.full(sim.num_envs, a)))
    return seen, outs


def _col(outs: list[StepOutcome], name: str) -> np.ndarray:
    return np.array([getattr(o, name)[0] for o in outs])


# --------------------------------------------------------------------------- the queue by hand
@pytest.mark.parametrize("num_envs", [1, 3])
def test_fifo_queue_waits_match_a_hand_computed_timeline(num_envs: int) -> None:
    """One slow request (100 ms) then fast ones (10 ms), arriving every 20 ms at 25, 45, ...:
    request 0 runs 25-125; request 1 waits from 45 to 125; each later one starts when the one
    before finishes, until the backlog clears at 205 ms."""
    sim = _hand_sim(num_envs, queue_capacity=10)
    seen, outs = _run(sim, [SLOW] + [FAST] * 9)
    expected_wait = [0, 80, 70, 60, 50, 40, 30, 20, 10, 0]
    # Requests in the system at each arrival (completions at exactly the arrival time count).
    expected_queue = [0, 1, 2, 3, 4, 4, 3, 2, 1, 0]
    np.testing.assert_array_equal(_col(outs, "queue_ms"), expected_wait)
    np.testing.assert_array_equal([o[0, QUEUE] for o in seen], expected_queue)
    np.testing.assert_array_equal(_col(outs, "exec_ms"), [100] + [10] * 9)
    np.testing.assert_array_equal(
        _col(outs, "e2e_ms"), 2 * UPLOAD_MS + np.array(expected_wait) + _col(outs, "exec_ms")
    )
    assert not _col(outs, "dropped").any()


def test_without_a_queue_every_request_starts_on_arrival() -> None:
    sim = _hand_sim()
    seen, outs = _run(sim, [SLOW] + [FAST] * 9)
    np.testing.assert_array_equal(_col(outs, "queue_ms"), np.zeros(10))
    np.testing.assert_array_equal([o[0, QUEUE] for o in seen], np.zeros(10))
    np.testing.assert_array_equal([o[0, SLOWDOWN] for o in seen], np.ones(10))


def test_full_queue_drops_requests_with_the_miss_penalty() -> None:
    """Capacity 2, all slow: requests 0 and 1 fill the system (0 runs 25-125, 1 waits for it);
    2, 3 and 4 (at 65, 85, 105) find it full; at 125 request 0 has finished, so 5 gets in."""
    sim = _hand_sim(queue_capacity=2, miss_penalty=0.25)
    seen, outs = _run(sim, [SLOW] * 6)
    dropped = _col(outs, "dropped")
    np.testing.assert_array_equal(dropped, [False, False, True, True, True, False])
    np.testing.assert_array_equal([o[0, QUEUE] for o in seen], [0, 1, 2, 2, 2, 1])
    np.testing.assert_array_equal(_col(outs, "reward")[dropped], -0.25)
    assert not _col(outs, "met")[dropped].any()
    np.testing.assert_array_equal(_col(outs, "exec_ms")[dropped], 0.0)
    np.testing.assert_array_equal(_col(outs, "accuracy")[dropped], 0.0)
    np.testing.assert_array_equal(_col(outs, "e2e_ms")[dropped], 2 * UPLOAD_MS)
    np.testing.assert_array_equal(_col(outs, "queue_ms"), [0, 80, 0, 0, 0, 100])


def test_two_workers_serve_two_requests_at_once() -> None:
    """Two workers, all slow: requests 0 and 1 start on arrival (25, 45); 2 waits for worker 0
    (free at 125), 3 for worker 1 (free at 145)."""
    sim = _hand_sim(queue_capacity=10, workers=2)
    _, outs = _run(sim, [SLOW] * 4)
    np.testing.assert_array_equal(_col(outs, "queue_ms"), [0, 0, 60, 60])


def test_a_slower_model_now_delays_later_requests() -> None:
    """The queue makes the problem sequential: with everything else equal (same seed), serving
    the first requests with a slow model never shortens, and somewhere lengthens, the waits of
    the requests after them (FIFO waits are monotone in earlier service times)."""
    kw: dict[str, Any] = {"queue_capacity": 1000, "arrival_rate_hz": 25.0}
    fast_first = build_sim(num_envs=8, **kw)
    slow_first = build_sim(num_envs=8, **kw)
    slowest = int(np.argmax(fast_first.pool.mean_ms))
    fastest = int(np.argmin(fast_first.pool.mean_ms))
    fast_first.reset(3)
    slow_first.reset(3)
    wait_fast, wait_slow = [], []
    for t in range(200):
        wait_fast.append(fast_first.step(np.full(8, fastest)).queue_ms)
        wait_slow.append(slow_first.step(np.full(8, slowest if t < 5 else fastest)).queue_ms)
    wf, ws = np.array(wait_fast)[5:], np.array(wait_slow)[5:]
    assert np.all(ws >= wf), "a slower model earlier shortened a later wait"
    assert ws.sum() > wf.sum() + 1000.0, f"waits barely grew: {ws.sum()} vs {wf.sum()}"


# --------------------------------------------------------------------------- observations
def test_server_learns_an_execution_time_only_when_it_completes() -> None:
    """The real server is 2x slower than profiled. Request 0 (slow: 200 ms from 25 to 225 ms)
    is invisible to the server until it completes: the slowdown stays 1 and the slow model's
    profile stays 100 ms for the requests arriving at 45 ... 205; at 225 both move."""
    sim = _hand_sim(queue_capacity=100, true_pool=_hand_pool(scale=2.0))
    seen, outs = _run(sim, [SLOW] + [FAST] * 10)
    slow_mu = np.array([o[0, R + P * SLOW + MU] for o in seen])
    slowdown = np.array([o[0, SLOWDOWN] for o in seen])
    np.testing.assert_array_equal(slowdown[:10], 1.0)
    np.testing.assert_array_equal(slow_mu[:10], 100.0)
    assert slowdown[10] == pytest.approx(1.0 + SLOWDOWN_ALPHA * (2.0 - 1.0))
    assert slow_mu[10] == pytest.approx(100.0 + 0.1 * (200.0 - 100.0))
    assert _col(outs, "exec_ms")[0] == 200.0


@pytest.mark.parametrize("num_envs", [1, 4])
@pytest.mark.parametrize("t", [3, 40])
def test_observations_never_depend_on_the_current_or_later_executions(
    num_envs: int, t: int
) -> None:
    """Changing the execution noise and the spike factors of requests ``t, t+1, ...`` (drawn
    ahead) leaves every observation up to and including request ``t``'s unchanged; the change
    does show up later (so the check is not vacuous)."""
    kw: dict[str, Any] = {"spikes": SPIKES, "queue_capacity": 6, "arrival_rate_hz": 30.0}
    a_sim, b_sim = build_sim(num_envs=num_envs, **kw), build_sim(num_envs=num_envs, **kw)
    a_sim.reset(7)
    b_sim.reset(7)
    assert b_sim._blk_slow is not None
    b_sim._blk_z[t:] += 0.5
    b_sim._blk_slow[t:] *= 1.7
    if num_envs == 1:  # the scalar path reads Python copies
        b_sim._l_z = b_sim._blk_z[:, 0].tolist()
        b_sim._l_slow = b_sim._blk_slow[:, 0].tolist()
    actions = np.random.default_rng(0).integers(0, a_sim.num_models, size=(120, num_envs))
    later_differs = False
    for step, act in enumerate(actions):
        if step <= t:
            np.testing.assert_array_equal(a_sim.obs, b_sim.obs, err_msg=f"obs of request {step}")
        else:
            later_differs |= not np.array_equal(a_sim.obs, b_sim.obs)
        a_sim.step(act)
        b_sim.step(act)
    assert later_differs


def test_download_time_never_reaches_an_observation() -> None:
    kw: dict[str, Any] = {"spikes": SPIKES, "queue_capacity": 4}
    a_sim, b_sim = build_sim(num_envs=3, **kw), build_sim(num_envs=3, **kw)
    a_sim.reset(1)
    b_sim.reset(1)
    b_sim._blk_tout *= 3.0
    for act in np.random.default_rng(1).integers(0, a_sim.num_models, size=(100, 3)):
        np.testing.assert_array_equal(a_sim.obs, b_sim.obs)
        a_sim.step(act)
        b_sim.step(act)


def test_paper_setting_keeps_constant_server_columns() -> None:
    sim = build_sim(num_envs=4)
    sim.reset(0)
    for act in np.random.default_rng(0).integers(0, sim.num_models, size=(50, 4)):
        assert np.all(sim.obs[:, QUEUE] == 0.0) and np.all(sim.obs[:, SLOWDOWN] == 1.0)
        o = sim.step(act)
        assert not o.dropped.any() and np.all(o.slowdown == 1.0) and np.all(o.queue_ms == 0.0)


def test_observed_slowdown_tracks_spikes() -> None:
    """With long spikes, the observed slowdown is high while a spike lasts and near 1 between."""
    spikes = {"mean_interval_s": 5.0, "mean_duration_s": 5.0, "slowdown": 3.0}
    sim = build_sim(num_envs=16, spikes=spikes, arrival_rate_hz=50.0)
    sim.reset(0)
    in_spike, observed = [], []
    for _ in range(3000):
        observed.append(sim.obs[:, SLOWDOWN].copy())
        o = sim.step(np.zeros(16, dtype=np.intp))
        in_spike.append(o.slowdown == 3.0)
    obs_arr, spike_arr = np.array(observed)[1:], np.array(in_spike)[:-1]
    assert obs_arr[spike_arr].mean() > 2.5
    assert obs_arr[~spike_arr].mean() < 1.5


# --------------------------------------------------------------------------- spikes
def test_spike_lookup_on_a_hand_made_timeline() -> None:
    proc = SpikeProcess(SpikeConfig(2.0, 1.0, (3.0, 3.0)), num_envs=2)
    proc.reset(np.random.default_rng(0))
    # Stream 0: normal until 100 ms, spike (x3) until 200, normal until 1e9.
    # Stream 1: spike (x2) until 50, normal until 1e9.
    proc._ends = np.array([[100.0, 200.0, 1e9], [50.0, 1e9, 1e9]])
    proc._factor = np.array([[1.0, 3.0, 1.0], [2.0, 1.0, 1.0]])
    proc._spike = proc._factor > 1.0
    t = np.array([[0.0, 0.0], [99.0, 49.0], [150.0, 51.0], [200.0, 500.0], [201.0, 9e8]])
    f = proc.factors_at(t, floor_ms=np.array([0.0, 0.0]))
    np.testing.assert_array_equal(f, [[1, 2], [1, 2], [3, 1], [3, 1], [1, 1]])


def test_spike_process_has_the_configured_statistics() -> None:
    cfg = SpikeConfig.parse({"mean_interval_s": 3.0, "mean_duration_s": 1.0, "slowdown": [2, 5]})
    assert cfg is not None
    proc = SpikeProcess(cfg, num_envs=64)
    proc.reset(np.random.default_rng(0))
    # A fine grid over 2000 s, asked for in blocks as the simulator does.
    step_ms, block = 10.0, 5000
    factors = []
    for b in range(40):
        t = (b * block + np.arange(block))[:, None] * step_ms + np.zeros(64)
        factors.append(proc.factors_at(t, floor_ms=t[-1]))
    f = np.concatenate(factors)
    spike = f > 1.0
    assert spike.mean() == pytest.approx(cfg.spike_fraction, abs=0.02)
    assert f[spike].min() >= 2.0 and f[spike].max() <= 5.0
    assert f[spike].mean() == pytest.approx(3.5, abs=0.1)
    starts = (spike[1:] & ~spike[:-1]).sum()
    mean_spike_s = spike.sum() * step_ms / 1000.0 / starts
    assert mean_spike_s == pytest.approx(1.0, rel=0.1)
    assert proc._ends.shape[1] < 64, "old episodes are not forgotten"


def test_spikes_multiply_execution_time_by_the_factor() -> None:
    sim = _hand_sim(spikes={"mean_interval_s": 0.5, "mean_duration_s": 0.5, "slowdown": 3.0})
    _, outs = _run(sim, [FAST, SLOW] * 200)
    f = _col(outs, "slowdown")
    assert set(np.unique(f)) == {1.0, 3.0}
    base = np.tile([10.0, 100.0], 200)
    np.testing.assert_array_equal(_col(outs, "exec_ms"), base * f)


def test_oracle_view_is_the_realised_latency_with_queue_and_spikes() -> None:
    sim = build_sim(num_envs=8, spikes=SPIKES, queue_capacity=3, arrival_rate_hz=30.0)
    sim.reset(2)
    rng = np.random.default_rng(2)
    rows = np.arange(8)
    drops = 0
    for _ in range(400):
        a = rng.integers(0, sim.num_models, size=8)
        predicted = sim.current_e2e_ms()
        o = sim.step(a)
        drops += int(o.dropped.sum())
        assert np.all(np.isinf(predicted[o.dropped]))
        np.testing.assert_array_equal(predicted[rows, a][~o.dropped], o.e2e_ms[~o.dropped])
    assert drops > 0


# --------------------------------------------------------------------------- common randomness
def test_every_policy_sees_the_same_requests_and_spikes() -> None:
    kw: dict[str, Any] = {"spikes": SPIKES, "queue_capacity": 4, "arrival_rate_hz": 30.0}
    runs = []
    for policy_seed in (0, 1):
        sim = build_sim(num_envs=5, **kw)
        sim.reset(11)
        rng = np.random.default_rng(policy_seed)
        outs = [sim.step(rng.integers(0, sim.num_models, size=5)) for _ in range(300)]
        runs.append(outs)
    a, b = runs
    for name in ("sla_ms", "t_input_ms", "t_output_ms", "slowdown"):
        np.testing.assert_array_equal(
            np.array([getattr(o, name) for o in a]), np.array([getattr(o, name) for o in b])
        )
    assert not np.array_equal(
        np.array([o.queue_ms for o in a]), np.array([o.queue_ms for o in b])
    ), "different policies should see different queues"


def test_switching_the_server_model_on_keeps_the_requests_in_arrival_order() -> None:
    """With the server model on, each block holds the same requests as without it (same SLAs
    and uploads), stepped in the order they reach the server."""
    plain = build_sim(network="lte", num_envs=4, sla_range_ms=(80.0, 300.0))
    loaded = build_sim(network="lte", num_envs=4, sla_range_ms=(80.0, 300.0), spikes=SPIKES)
    plain.block_len = loaded.block_len = 64
    plain.reset(5)
    loaded.reset(5)
    acts = np.random.default_rng(0).integers(0, plain.num_models, size=(128, 4))
    p_outs = [plain.step(a) for a in acts]
    q_outs = [loaded.step(a) for a in acts]
    for name in ("t_input_ms", "sla_ms"):
        p_col = np.array([getattr(o, name) for o in p_outs]).reshape(2, 64, 4)
        q_col = np.array([getattr(o, name) for o in q_outs]).reshape(2, 64, 4)
        np.testing.assert_array_equal(np.sort(p_col, axis=1), np.sort(q_col, axis=1))
        assert not np.array_equal(p_col, q_col), "LTE uploads should reorder some requests"
    arrive = loaded._blk_arrive
    assert np.all(np.diff(arrive, axis=0) >= 0), "not stepped in arrival order"
    np.testing.assert_array_equal(plain._blk_time, np.sort(plain._blk_time, axis=0))


def test_fifo_hold_back_only_at_block_boundaries() -> None:
    """Only a request overtaken across a block boundary (one that reaches the server before a
    request of the previous block) is admitted late: when that request arrives."""
    sim = build_sim(network="lte", num_envs=16, queue_capacity=8)
    sim.block_len = 64
    sim.reset(0)
    prev_last = np.full(16, -np.inf)
    held = 0
    for _ in range(6):
        arrive, admit = sim._blk_arrive.copy(), sim._blk_admit.copy()
        late = admit > arrive
        held += int(late.sum())
        np.testing.assert_array_equal(admit[late], np.broadcast_to(prev_last, late.shape)[late])
        assert np.all(arrive[late] < np.broadcast_to(prev_last, late.shape)[late])
        prev_last = admit[-1]
        for _ in range(64):
            sim.step(np.zeros(16, dtype=np.intp))
    assert 0 < held < 0.1 * 6 * 64 * 16


def test_same_seed_same_loaded_run() -> None:
    kw: dict[str, Any] = {"spikes": SPIKES, "queue_capacity": 4}
    a_env = gym.make("modi/ModelSelection-v0", **kw)
    b_env = gym.make("modi/ModelSelection-v0", **kw)
    oa, _ = a_env.reset(seed=3)
    ob, _ = b_env.reset(seed=3)
    np.testing.assert_array_equal(oa, ob)
    for a in np.random.default_rng(0).integers(0, 11, size=700).tolist():
        ra = a_env.step(a)
        rb = b_env.step(a)
        np.testing.assert_array_equal(ra[0], rb[0])
        assert ra[1:] == rb[1:]


# --------------------------------------------------------------------------- scalar vs batched
@pytest.mark.parametrize(
    "kwargs",
    [
        {"spikes": SPIKES},
        {"spikes": {**SPIKES, "slowdown": 3.0}, "queue_capacity": 3},
        {"queue_capacity": 5, "workers": 2, "reprofile_every": 50, "arrival_rate_hz": 40.0},
        {"queue_capacity": 4, "pool": "mdinference_p2", "sla_range_ms": (80.0, 300.0)},
    ],
)
def test_scalar_server_matches_the_batched_server_exactly(kwargs: dict[str, Any]) -> None:
    """One stream runs on :class:`ScalarServer` (plain Python); forcing :class:`ServerBank`
    (numpy) on the same stream must give bit-identical observations, infos and oracle views."""
    scalar = build_sim(num_envs=1, **kwargs)
    batched = build_sim(num_envs=1, **kwargs)
    batched.server = ServerBank(1, batched.pool.mean_ms, batched.queue_capacity, batched.workers)
    scalar.reset(4)
    batched.reset(4)
    acts = np.random.default_rng(4).integers(0, scalar.num_models, size=1200)
    for t, a in enumerate(acts):
        np.testing.assert_array_equal(scalar.obs, batched.obs, err_msg=f"obs before step {t}")
        np.testing.assert_array_equal(scalar.current_e2e_ms(), batched.current_e2e_ms())
        reward, info = scalar.step_single(int(a))
        o = batched.step(np.array([a]))
        assert reward == o.reward[0], f"step {t}"
        assert info == {k: getattr(o, k)[0].item() for k in info}, f"step {t}: infos differ"


def test_single_env_matches_the_one_stream_vector_env_with_a_server() -> None:
    kw: dict[str, Any] = {"spikes": SPIKES, "queue_capacity": 3, "workers": 2}
    single = ModelSelectionEnv(**kw)
    vector = ModelSelectionVectorEnv(num_envs=1, max_episode_steps=10**9, **kw)
    o1, _ = single.reset(seed=9)
    o2, _ = vector.reset(seed=9)
    np.testing.assert_array_equal(o1, o2[0])
    for t, a in enumerate(np.random.default_rng(9).integers(0, 11, size=700).tolist()):
        o1, r1, _, _, i1 = single.step(a)
        o2, r2, _, _, i2 = vector.step(np.array([a]))
        assert r1 == r2[0] and i1 == {k: i2[k][0].item() for k in i1}, f"step {t}"
        np.testing.assert_array_equal(o1, o2[0])


def test_vector_env_reset_state_forgets_the_observed_slowdown() -> None:
    sim = build_sim(num_envs=3, spikes={**SPIKES, "slowdown": 4.0}, arrival_rate_hz=50)
    sim.reset(0)
    for _ in range(300):
        sim.step(np.zeros(3, dtype=np.intp))
    assert np.any(sim.obs[:, SLOWDOWN] != 1.0)
    sim.reset_state(np.array([True, False, True]))
    assert sim.obs[0, SLOWDOWN] == 1.0 and sim.obs[2, SLOWDOWN] == 1.0


# --------------------------------------------------------------------------- arrivals
@needs_azure
def test_azure_trace_parses_with_its_own_rate() -> None:
    arr = TraceArrivals(AZURE)
    # 19,366 requests from 18:15:46.68 to 19:14:08.40 (README).
    span_s = (19 * 3600 + 14 * 60 + 8.40) - (18 * 3600 + 15 * 60 + 46.68)
    assert arr.gaps_cycle_ms.size == 19366
    assert arr.native_rate_hz == pytest.approx(19365 / span_s, rel=1e-3)
    assert arr.rate_hz == arr.native_rate_hz
    assert np.all(arr.gaps_cycle_ms >= 0)


@needs_azure
def test_azure_trace_rescales_to_a_target_rate_and_wraps() -> None:
    arr = TraceArrivals(AZURE, rate_hz=20.0)
    assert arr.gaps_cycle_ms.mean() == pytest.approx(50.0)
    arr.reset(np.random.default_rng(0), num_envs=4)
    g = arr.gaps_ms(np.random.default_rng(0), 19366, 4)
    # A whole cycle per stream, from different random offsets: same gaps, shifted.
    assert g.mean() == pytest.approx(50.0)
    assert not np.array_equal(g[:, 0], g[:, 1])
    np.testing.assert_allclose(np.sort(g[:, 0]), np.sort(arr.gaps_cycle_ms))
    fixed = TraceArrivals(AZURE, rate_hz=20.0, random_offset=False)
    fixed.reset(np.random.default_rng(0), num_envs=1)
    first = fixed.gaps_ms(np.random.default_rng(0), 19366, 1)[:, 0]
    again = fixed.gaps_ms(np.random.default_rng(0), 10, 1)[:, 0]
    np.testing.assert_array_equal(first[:10], again)


@needs_azure
def test_simulator_replays_the_azure_trace() -> None:
    """From the first row (no random offset), the capture times are the trace's, rescaled."""
    arrivals = {"trace": str(AZURE), "rate_hz": 10.0, "random_offset": False}
    sim = build_sim(num_envs=2, arrivals=arrivals)
    assert isinstance(sim.arrivals, TraceArrivals)
    sim.reset(0)
    captured = sim._blk_time[:, 0]
    expected = np.cumsum(sim.arrivals.gaps_cycle_ms[: captured.size])
    np.testing.assert_allclose(captured, expected, rtol=1e-12)
    np.testing.assert_array_equal(sim._blk_time[:, 0], sim._blk_time[:, 1])


def test_poisson_is_the_default_and_keeps_the_old_draws() -> None:
    sim = build_sim(num_envs=1, arrival_rate_hz=7.0)
    assert isinstance(sim.arrivals, PoissonArrivals) and sim.arrivals.rate_hz == 7.0
    assert isinstance(make_arrivals({"poisson": {"rate_hz": 3}}, 20.0), PoissonArrivals)
    assert make_arrivals({"kind": "poisson"}, 9.0).rate_hz == 9.0


def _csv(tmp_path: Path, text: str, name: str = "arrivals.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_trace_with_numeric_seconds_and_equal_timestamps(tmp_path: Path) -> None:
    path = _csv(tmp_path, "timestamp,x\n0.0,1\n0.5,1\n0.5,2\n2.0,3\n")
    arr = TraceArrivals(path, random_offset=False)
    np.testing.assert_allclose(arr.gaps_cycle_ms, [500.0, 0.0, 1500.0, 2000.0 / 3])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty file"),
        ("time,x\n1,2\n", r"line 1: no TIMESTAMP column"),
        ("TIMESTAMP\n2023-11-16 18:15:46.1\nyesterday\n", r"line 3: cannot parse timestamp"),
        (
            "TIMESTAMP\n2023-11-16 18:15:46.1\n2023-11-16 18:15:45.9\n",
            r"line 3: timestamp .* earlier than the previous",
        ),
        ("TIMESTAMP\n2023-11-16 18:15:46.1\n", "needs at least 2 rows"),
        ("TIMESTAMP\n5\n5\n", "all 2 timestamps are equal"),
        ("TIMESTAMP\n5\n2023-11-16 18:15:46\n", r"line 3: .* mixes datetime"),
        ("TIMESTAMP,x\n1,2\n3\n", None),  # a short row with the timestamp first is fine
        ("x,TIMESTAMP\n1,2\n3\n", r"line 3: no TIMESTAMP value"),
        ("TIMESTAMP\n2023-13-16 18:15:46\n2023-11-16 18:15:47\n", r"line 2: cannot parse"),
    ],
)
def test_bad_trace_files_name_the_file_and_line(
    tmp_path: Path, text: str, message: str | None
) -> None:
    path = _csv(tmp_path, text)
    if message is None:
        TraceArrivals(path)
        return
    with pytest.raises(SimulationError, match=message) as exc:
        build_sim(arrivals={"trace": str(path)})
    assert str(path) in str(exc.value)


def test_missing_trace_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(SimulationError, match="no such arrival trace file") as exc:
        build_sim(arrivals={"trace": str(tmp_path / "nope.csv"), "rate_hz": 5})
    assert "nope.csv" in str(exc.value)
    with pytest.raises(ArrivalError, match="not a regular file"):
        TraceArrivals(tmp_path)


@pytest.mark.parametrize(
    ("arrivals", "message"),
    [
        ("uniform", "arrivals must be 'poisson'"),
        ({"trace": 3}, "arrivals.trace must be a file path"),
        ({"kind": "gamma"}, "arrivals must be"),
        ({"kind": "poisson", "rate_hz": 0}, "arrivals.rate_hz must be a finite number > 0"),
        ({"kind": "poisson", "scale": 2}, r"unknown keys \['scale'\]"),
    ],
)
def test_bad_arrival_settings(arrivals: Any, message: str) -> None:
    with pytest.raises(SimulationError, match=message):
        build_sim(arrivals=arrivals)


@needs_azure
def test_bad_trace_rate_is_refused() -> None:
    with pytest.raises(SimulationError, match=r"arrivals\.rate_hz"):
        build_sim(arrivals={"trace": str(AZURE), "rate_hz": -1})


# --------------------------------------------------------------------------- bad server args
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"queue_capacity": 0}, "queue_capacity must be None"),
        ({"queue_capacity": True}, "queue_capacity must be None"),
        ({"queue_capacity": 2.5}, "queue_capacity must be None"),
        ({"queue_capacity": 3, "workers": 0}, "workers must be an integer >= 1"),
        ({"queue_capacity": 2, "workers": 3}, r"queue_capacity \(2\) must be >= workers \(3\)"),
        ({"workers": 2}, "workers=2 needs a queue"),
        ({"spikes": {**SPIKES, "mean_interval_s": 0}}, "spikes.mean_interval_s must be"),
        ({"spikes": {**SPIKES, "mean_duration_s": -1}}, "spikes.mean_duration_s must be"),
        ({"spikes": {**SPIKES, "slowdown": 0.5}}, "spikes.slowdown must satisfy 1 <= low"),
        ({"spikes": {**SPIKES, "slowdown": [3, 2]}}, "spikes.slowdown must satisfy"),
        ({"spikes": {**SPIKES, "slowdown": [1, 2, 3]}}, "spikes.slowdown must be a number"),
        ({"spikes": {**SPIKES, "slowdown": "x"}}, "spikes.slowdown must be a number"),
        ({"spikes": {"mean_interval_s": 1}}, r"missing keys \['mean_duration_s', 'slowdown'\]"),
        ({"spikes": {**SPIKES, "period": 1}}, r"unknown keys \['period'\]"),
        ({"spikes": 3}, "spikes must be a mapping"),
    ],
)
def test_bad_server_settings_name_the_field(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(SimulationError, match=message):
        build_sim(**kwargs)
