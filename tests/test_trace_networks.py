"""Tests for modi.envs.trace_networks: Mahimahi and throughput trace-driven networks."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hydra import compose, initialize_config_module
from hydra.utils import instantiate

import modi.experiments.common  # noqa: F401 - registers the ${modi_data_dir:} resolver
from modi.envs.catalog import load_preset
from modi.envs.links import fit_lognormal, read_speedtest
from modi.envs.model_selection import build_sim
from modi.envs.networks import BlockContext, NetworkError, NetworkModel
from modi.envs.trace_networks import MahimahiNetwork, RttProcess, ThroughputNetwork
from modi.envs.traces import MahimahiTrace, ThroughputTrace, TraceError

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
MAHIMAHI = DATA / "mahimahi" / "traces"
SPEEDTEST = DATA / "sigcomm21-5g-speedtest"
# preset -> the data folder it reads
PRESETS = {
    "mahimahi": MAHIMAHI,
    "lte_att": MAHIMAHI,
    "lte_tmobile": MAHIMAHI,
    "throughput": DATA / "pensieve",
    "hsdpa_norway": DATA / "pensieve",
    "lumos5g_walking": DATA / "sigcomm21-5g-lumos5g",
    "link_wifi": DATA,
    "link_5g": SPEEDTEST,
    "link_5g_mmwave": SPEEDTEST,
}


def _preset(name: str) -> Any:
    folder = PRESETS[name]
    return pytest.param(
        name,
        marks=pytest.mark.skipif(not folder.is_dir(), reason=f"data not found at {folder}"),
    )


def _write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path


def _ctx(client: object, time_ms: object, payload: float = 330_000.0) -> BlockContext:
    c = np.asarray(client, dtype=np.int64)
    return BlockContext(
        client=c,
        time_ms=np.asarray(time_ms, dtype=np.float64),
        payload_bytes=np.full(c.shape, payload),
        response_bytes=np.full(c.shape, 1_000.0),
    )


# --------------------------------------------------------------------------- hand-computed


@pytest.fixture
def small_mahimahi(tmp_path: Path) -> tuple[Path, Path]:
    # uplink: opportunities 1, 1, 3, 7 (period 7): loop 1 at 8, 8, 10, 14; loop 2 at 15, ...
    # downlink: opportunities 2, 4 (period 4): 2, 4, 6, 8, 10, 12, 14, 16, ...
    up = _write(tmp_path, "small.up", "1\n1\n3\n7\n")
    down = _write(tmp_path, "small.down", "2\n4\n")
    return up, down


def test_mahimahi_network_hand_computed(small_mahimahi: tuple[Path, Path]) -> None:
    up, down = small_mahimahi
    net = MahimahiNetwork(
        up, down, rtt_ms=10.0, download_delay_ms=1.0, random_offset=False, name="small"
    )
    assert isinstance(net, NetworkModel)
    rng = np.random.default_rng(0)
    net.reset(rng, num_envs=2, num_clients=1)
    np.testing.assert_array_equal(net.offset_ms, 0.0)
    ctx = _ctx([[0, 0], [0, 0]], [[2.0, 6.5], [20.0, 30.0]])
    ctx.payload_bytes[:] = [[3000.0, 1.0], [1.0, 4500.0]]
    t_in, t_out = net.sample(rng, ctx)
    # stream 0, t=2, 2 packets: opportunities 3 and 7 -> 5 ms; + RTT/2 = 10.
    #   download from 2 + 10 + 1 = 13: next opportunity 14 -> 1 ms; + 5 = 6.
    # stream 1, t=6.5, 1 packet: opportunity 7 -> 0.5 ms; + 5 = 5.5.
    #   download from 6.5 + 5.5 + 1 = 13 -> 14: 1 ms; + 5 = 6.
    # stream 0, t=20, 1 packet: loop 2 is 14..21 (15, 15, 17, 21) -> 21 - 20 = 1; + 5 = 6.
    #   download from 20 + 6 + 1 = 27 -> 28: 1 ms; + 5 = 6.
    # stream 1, t=30, 3 packets: loop 4 is 28..35 (29, 29, 31, 35), loop 5 starts 36, 36:
    #   packets at 31, 35, 36 -> 6 ms; + 5 = 11. Download from 30 + 11 + 1 = 42: an
    #   opportunity at 42 itself -> 0 ms; + 5 = 5.
    np.testing.assert_allclose(t_in, [[10.0, 5.5], [6.0, 11.0]])
    np.testing.assert_allclose(t_out, [[6.0, 6.0], [6.0, 5.0]])


def test_throughput_network_hand_computed(tmp_path: Path) -> None:
    # 8 Mbit/s (1000 B/ms) for 1 s, then 16 Mbit/s (2000 B/ms) for 1 s; period 2 s.
    path = _write(tmp_path, "steps", "0 8\n1 16\n")
    net = ThroughputNetwork(path, rtt_ms=20.0, uplink_scale=0.5, random_offset=False)
    rng = np.random.default_rng(0)
    net.reset(rng, num_envs=1, num_clients=1)
    t_in, t_out = net.sample(rng, _ctx([[0], [0], [0]], [[0.0], [900.0], [1500.0]]))
    # uplink at half the rate: 500 B/ms, then 1000 B/ms.
    # t=0: 330000 B at 500 B/ms = 660 ms; + 10 = 670. Download from 670: 1000 B at
    #   1000 B/ms = 1 ms; + 10 = 11.
    # t=900: 100 ms x 500 = 50000 B, 280000 B at 1000 B/ms = 280 ms -> 380; + 10 = 390.
    #   Download from 1290: 1000 B at 2000 B/ms = 0.5; + 10 = 10.5.
    # t=1500: 500 ms x 1000 = 500000 B >= 330000 -> 330 ms; + 10 = 340.
    #   Download from 1840: 0.5 ms; + 10 = 10.5.
    np.testing.assert_allclose(t_in[:, 0], [670.0, 390.0, 340.0])
    np.testing.assert_allclose(t_out[:, 0], [11.0, 10.5, 10.5])


def test_random_offsets_shift_each_clients_trace_time(small_mahimahi: tuple[Path, Path]) -> None:
    up, down = small_mahimahi
    net = MahimahiNetwork(up, down, rtt_ms=4.0)
    rng = np.random.default_rng(1)
    net.reset(rng, num_envs=3, num_clients=5)
    assert net.offset_ms.shape == (3, 5)
    assert np.all((net.offset_ms >= 0) & (net.offset_ms < 7))  # the longer period: 7 ms
    assert np.unique(net.offset_ms).size == 15
    client = rng.integers(0, 5, (20, 3))
    time_ms = np.cumsum(rng.exponential(3.0, (20, 3)), axis=0)
    t_in, t_out = net.sample(rng, _ctx(client, time_ms, payload=4000.0))
    up_tr, down_tr = MahimahiTrace.load(up), MahimahiTrace.load(down)
    start = net.offset_ms[np.arange(3), client] + time_ms
    np.testing.assert_allclose(t_in, 2.0 + up_tr.transfer_time_ms(start, 4000.0))
    np.testing.assert_allclose(
        t_out, 2.0 + down_tr.transfer_time_ms(start + t_in, 1000.0), atol=1e-9
    )


@pytest.fixture
def two_pairs(tmp_path: Path) -> Path:
    # fast: a packet every ms; slow: every 10 ms. Stems pair fast.up/fast.down etc.
    _write(tmp_path, "fast.up", "".join(f"{i}\n" for i in range(1, 101)))
    _write(tmp_path, "fast.down", "".join(f"{i}\n" for i in range(1, 51)))
    _write(tmp_path, "slow.up", "".join(f"{10 * i}\n" for i in range(1, 11)))
    _write(tmp_path, "slow.down", "".join(f"{10 * i}\n" for i in range(1, 21)))
    return tmp_path


def test_each_client_gets_one_trace_pair_by_stem(two_pairs: Path) -> None:
    net = MahimahiNetwork(two_pairs / "*.up", str(two_pairs / "*.down"), rtt_ms=2.0)
    assert net.paired
    assert [t.path.stem for t in net.uplink_traces] == [t.path.stem for t in net.downlink_traces]
    rng = np.random.default_rng(2)
    net.reset(rng, num_envs=64, num_clients=4)
    np.testing.assert_array_equal(net.uplink_index, net.downlink_index)
    assert set(np.unique(net.uplink_index)) == {0, 1}
    client = rng.integers(0, 4, (30, 64))
    time_ms = np.cumsum(rng.exponential(20.0, (30, 64)), axis=0)
    t_in, t_out = net.sample(rng, _ctx(client, time_ms, payload=15_000.0))  # 10 packets
    rows = np.arange(64)
    idx = net.uplink_index[rows, client]
    start = net.offset_ms[rows, client] + time_ms
    for i, (up, down) in enumerate(zip(net.uplink_traces, net.downlink_traces, strict=True)):
        sel = idx == i
        np.testing.assert_allclose(t_in[sel], 1.0 + up.transfer_time_ms(start[sel], 15_000.0))
        np.testing.assert_allclose(
            t_out[sel], 1.0 + down.transfer_time_ms(start[sel] + t_in[sel], 1000.0)
        )
    # 10 packets: ~10 ms on the fast uplink, ~100 ms on the slow one
    fast = [t.path.stem for t in net.uplink_traces].index("fast")
    assert t_in[idx == fast].max() < 13.0 < 90.0 < t_in[idx != fast].min()


def test_unpaired_files_are_drawn_independently(two_pairs: Path) -> None:
    (two_pairs / "fast.down").rename(two_pairs / "quick.down")
    (two_pairs / "slow.down").rename(two_pairs / "sluggish.down")
    net = MahimahiNetwork(two_pairs / "*.up", two_pairs / "*.down", rtt_ms=2.0)
    assert not net.paired
    net.reset(np.random.default_rng(3), num_envs=64, num_clients=4)
    assert not np.array_equal(net.uplink_index, net.downlink_index)


def test_files_without_a_partner_are_left_out_with_a_warning(
    two_pairs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _write(two_pairs, "lonely.down", "5\n")
    with caplog.at_level(logging.WARNING):
        net = MahimahiNetwork(two_pairs / "*.up", two_pairs / "*.down", rtt_ms=2.0)
    assert net.paired and len(net.uplink_traces) == 2
    assert "lonely.down" in caplog.text


def test_throughput_network_assigns_one_trace_per_client(tmp_path: Path) -> None:
    _write(tmp_path, "a", "0 8\n1 8\n")  # 1000 B/ms
    _write(tmp_path, "b", "0 80\n1 80\n")  # 10000 B/ms
    net = ThroughputNetwork(tmp_path, rtt_ms=2.0, uplink_scale=1.0)
    rng = np.random.default_rng(4)
    net.reset(rng, num_envs=16, num_clients=3)
    client = rng.integers(0, 3, (10, 16))
    t_in, t_out = net.sample(rng, _ctx(client, np.cumsum(np.ones((10, 16)) * 5, axis=0)))
    idx = net.uplink_index[np.arange(16), client]
    np.testing.assert_allclose(t_in, np.where(idx == 0, 1.0 + 330.0, 1.0 + 33.0))
    np.testing.assert_allclose(t_out, np.where(idx == 0, 1.0 + 1.0, 1.0 + 0.1))


def test_network_state_persists_across_blocks(small_mahimahi: tuple[Path, Path]) -> None:
    up, down = small_mahimahi
    rng = np.random.default_rng(5)
    client = rng.integers(0, 3, (40, 4))
    time_ms = np.cumsum(rng.exponential(3.0, (40, 4)), axis=0)
    a = MahimahiNetwork(up, down, rtt_ms=4.0)
    b = MahimahiNetwork(up, down, rtt_ms=4.0)
    a.reset(np.random.default_rng(6), 4, 3)
    b.reset(np.random.default_rng(6), 4, 3)
    whole = a.sample(rng, _ctx(client, time_ms))
    first = b.sample(rng, _ctx(client[:13], time_ms[:13]))
    second = b.sample(rng, _ctx(client[13:], time_ms[13:]))
    np.testing.assert_array_equal(whole[0], np.concatenate([first[0], second[0]]))
    np.testing.assert_array_equal(whole[1], np.concatenate([first[1], second[1]]))


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("name", "text", "pattern"),
    [
        ("empty.up", "", r"network\.uplink: .*empty\.up: empty file"),
        ("blank.up", "\n\n", r"network\.uplink: .*blank\.up: .*zero delivery opportunities"),
        ("text.up", "1\n2\nthree\n", r"network\.uplink: .*text\.up: line 3: .*'three'"),
    ],
)
def test_bad_mahimahi_trace_fails_at_construction(
    tmp_path: Path, name: str, text: str, pattern: str
) -> None:
    up = _write(tmp_path, name, text)
    down = _write(tmp_path, "ok.down", "1\n")
    with pytest.raises(TraceError, match=pattern):
        MahimahiNetwork(up, down, rtt_ms=10.0)


def test_missing_trace_names_setting_and_file(tmp_path: Path) -> None:
    down = _write(tmp_path, "ok.down", "1\n")
    with pytest.raises(TraceError, match=r"network\.uplink: .*nowhere\.up: no such trace file"):
        MahimahiNetwork(tmp_path / "nowhere.up", down, rtt_ms=10.0)
    with pytest.raises(TraceError, match=r"network\.downlink: .*no trace files match"):
        MahimahiNetwork(down, tmp_path / "*.nothing", rtt_ms=10.0)
    with pytest.raises(TraceError, match=r"network\.path: .*gone: no such trace file"):
        ThroughputNetwork(tmp_path / "gone", rtt_ms=10.0)


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("0 0\n1 0\n2 0\n", r"zero.*whole trace"),
        ("0 1.5\n1 fast\n", r"line 2: .*'1 fast'"),
        ("", r"empty file"),
    ],
)
def test_bad_throughput_trace_fails_at_construction(
    tmp_path: Path, text: str, pattern: str
) -> None:
    path = _write(tmp_path, "trace", text)
    with pytest.raises(TraceError, match=r"network\.path: .*trace: .*" + pattern):
        ThroughputNetwork(path, rtt_ms=10.0)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"rtt_ms": 0.0}, r"network\.rtt_ms must be > 0"),
        ({"rtt_ms": -3.0}, r"network\.rtt_ms must be > 0"),
        ({"uplink_scale": 0.0}, r"network\.uplink_scale must be > 0"),
        ({"uplink_scale": -0.5}, r"network\.uplink_scale must be > 0"),
        ({"download_delay_ms": -1.0}, r"network\.download_delay_ms must be >= 0"),
        ({"rtt_ms": float("nan")}, r"network\.rtt_ms must be a finite number"),
    ],
)
def test_bad_numbers_name_the_field(tmp_path: Path, kwargs: dict[str, float], field: str) -> None:
    path = _write(tmp_path, "trace", "0 1\n")
    args: dict[str, Any] = {"rtt_ms": 10.0, **kwargs}
    with pytest.raises(NetworkError, match=field):
        ThroughputNetwork(path, **args)
    if "uplink_scale" not in kwargs:
        with pytest.raises(NetworkError, match=field):
            MahimahiNetwork(_write(tmp_path, "x.up", "1\n"), tmp_path / "x.up", **args)


def test_sample_needs_reset_and_valid_clients(small_mahimahi: tuple[Path, Path]) -> None:
    net = MahimahiNetwork(*small_mahimahi, rtt_ms=1.0)
    rng = np.random.default_rng(0)
    with pytest.raises(NetworkError, match="reset"):
        net.sample(rng, _ctx([[0]], [[1.0]]))
    net.reset(rng, 1, 2)
    with pytest.raises(NetworkError, match=r"client ids must be in \[0, 2\)"):
        net.sample(rng, _ctx([[2]], [[1.0]]))


# --------------------------------------------------------------------------- determinism


def _run(net: NetworkModel, seed: int, action_seed: int) -> tuple[np.ndarray, np.ndarray]:
    sim = build_sim(network=net, num_envs=6)
    sim.reset(seed)
    acts = np.random.default_rng(action_seed).integers(0, sim.num_models, (300, 6))
    outs = [sim.step(a) for a in acts]
    return np.array([o.t_input_ms for o in outs]), np.array([o.t_output_ms for o in outs])


def test_same_seed_same_network_whatever_the_actions(two_pairs: Path) -> None:
    net = MahimahiNetwork(two_pairs / "*.up", two_pairs / "*.down", rtt_ms=20.0)
    a = _run(net, seed=3, action_seed=0)
    b = _run(net, seed=3, action_seed=1)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    c = _run(net, seed=4, action_seed=0)
    assert not np.array_equal(a[0], c[0])


# --------------------------------------------------------------------------- presets


@pytest.mark.parametrize("name", [_preset(n) for n in PRESETS])
def test_presets_instantiate_and_run_in_the_simulator(name: str) -> None:
    with initialize_config_module(config_module="modi.conf", version_base="1.3"):
        cfg = compose(config_name="compare", overrides=[f"network={name}"])
    net = instantiate(cfg.network, _convert_="all")
    assert net.name == name
    assert isinstance(net, NetworkModel)
    assert type(load_preset("network", name)) is type(net)
    t_in, t_out = _run(net, seed=0, action_seed=0)
    assert t_in.shape == t_out.shape == (300, 6)
    assert np.all(np.isfinite(t_in)) and np.all(np.isfinite(t_out))
    assert np.all(t_in > 0) and np.all(t_out > 0)


@pytest.mark.skipif(not MAHIMAHI.is_dir(), reason=f"Mahimahi traces not found at {MAHIMAHI}")
def test_a_path_override_is_all_it_takes() -> None:
    up = MAHIMAHI / "TMobile-LTE-short.up"
    down = MAHIMAHI / "TMobile-LTE-short.down"
    overrides = ["network=mahimahi", f"network.uplink={up}", f"network.downlink={down}"]
    with initialize_config_module(config_module="modi.conf", version_base="1.3"):
        cfg = compose(config_name="compare", overrides=overrides)
    net = instantiate(cfg.network, _convert_="all")
    assert [t.name for t in net.uplink_traces] == ["TMobile-LTE-short.up"]
    assert [t.name for t in net.downlink_traces] == ["TMobile-LTE-short.down"]
    preset = load_preset("network", "mahimahi", uplink=str(up), downlink=str(down))
    assert preset.uplink_traces[0].path == up


@pytest.mark.skipif(not MAHIMAHI.is_dir(), reason=f"Mahimahi traces not found at {MAHIMAHI}")
def test_real_mahimahi_glob_pairs_by_stem(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        net = MahimahiNetwork(MAHIMAHI / "*.up", MAHIMAHI / "*.down", rtt_ms=60.0)
    # TMobile-LTE-driving.down has no uplink file: left out
    assert sorted(t.path.stem for t in net.uplink_traces) == [
        "ATT-LTE-driving",
        "ATT-LTE-driving-2016",
        "TMobile-LTE-short",
        "TMobile-UMTS-driving",
    ]
    assert "TMobile-LTE-driving.down" in caplog.text


@pytest.mark.skipif(not (DATA / "pensieve").is_dir(), reason="Norway HSDPA traces not found")
def test_hsdpa_preset_uses_its_traces_mean_rates() -> None:
    net = load_preset("network", "hsdpa_norway")
    assert isinstance(net, ThroughputNetwork)
    assert len(net.traces) == 112
    assert all(isinstance(t, ThroughputTrace) for t in net.traces)
    # a 1 KB response on a ~1.3 Mbit/s link: about 6 ms on top of RTT/2
    rng = np.random.default_rng(0)
    net.reset(rng, 200, 4)
    client = rng.integers(0, 4, (50, 200))
    _, t_out = net.sample(rng, _ctx(client, np.cumsum(np.full((50, 200), 50.0), axis=0)))
    assert 50.0 < np.median(t_out) < 80.0


# --------------------------------------------------------------------------- segments (splits)


def _random_block(
    rng: np.random.Generator, num_envs: int, num_clients: int, rows: int, gap_ms: float
) -> tuple[np.ndarray, np.ndarray]:
    client = rng.integers(0, num_clients, (rows, num_envs))
    time_ms = np.cumsum(rng.exponential(gap_ms, (rows, num_envs)), axis=0)
    return client, time_ms


@pytest.fixture
def two_halves(tmp_path: Path) -> Path:
    # 10 s: 1 Mbit/s (125 B/ms) for the first 5 s, 100 Mbit/s (12,500 B/ms) for the last 5 s
    return _write(tmp_path, "halves", "".join(f"{i} {1 if i < 5 else 100}\n" for i in range(10)))


@pytest.mark.parametrize(("segment", "rate"), [((0.0, 0.5), 125.0), ((0.5, 1.0), 12_500.0)])
def test_a_throughput_segment_never_reads_the_other_half(
    two_halves: Path, segment: tuple[float, float], rate: float
) -> None:
    net = ThroughputNetwork(two_halves, rtt_ms=2.0, uplink_scale=1.0, segment=segment)
    rng = np.random.default_rng(11)
    net.reset(rng, num_envs=8, num_clients=5)
    period = 10_000.0
    starts = net.start_offset_ms
    assert np.all((starts >= segment[0] * period) & (starts < segment[1] * period))
    client, time_ms = _random_block(rng, 8, 5, 60, 400.0)
    # payloads of up to 6 s at the slow rate: many transfers run past the segment's end
    ctx = _ctx(client, time_ms)
    ctx.payload_bytes[:] = rng.uniform(1_000.0, 750_000.0, client.shape)
    t_in, t_out = net.sample(rng, ctx)
    # one rate only: any trace time outside the segment would change these
    np.testing.assert_allclose(t_in, 1.0 + ctx.payload_bytes / rate, rtol=1e-9)
    np.testing.assert_allclose(t_out, 1.0 + 1_000.0 / rate, rtol=1e-9)


def test_a_mahimahi_segment_never_reads_the_other_half(tmp_path: Path) -> None:
    # first 5 s: a packet every ms; last 5 s: one every 10 ms (up and down alike)
    opp = [*range(1, 5001), *range(5010, 10_001, 10)]
    text = "".join(f"{t}\n" for t in opp)
    up, down = _write(tmp_path, "h.up", text), _write(tmp_path, "h.down", text)
    fast = MahimahiNetwork(up, down, rtt_ms=2.0, segment=(0.0, 0.5))
    slow = MahimahiNetwork(up, down, rtt_ms=2.0, segment=[0.5, 1.0])
    rng = np.random.default_rng(12)
    client, time_ms = _random_block(rng, 6, 4, 80, 300.0)
    packets = 220  # 330 KB
    for net in (fast, slow):
        net.reset(np.random.default_rng(13), num_envs=6, num_clients=4)
    t_fast, _ = fast.sample(rng, _ctx(client, time_ms))
    t_slow, _ = slow.sample(rng, _ctx(client, time_ms))
    # fast half: 220 packets in at most 220 ms (+ RTT/2); slow half: at least 219 gaps of 10 ms
    assert t_fast.max() <= 1.0 + packets
    assert t_slow.min() >= 1.0 + 10.0 * (packets - 1)
    assert np.all((fast.start_offset_ms >= 0) & (fast.start_offset_ms < 5000))
    assert np.all((slow.start_offset_ms >= 5000) & (slow.start_offset_ms < 10_000))


def test_a_transfer_past_the_segment_end_wraps_to_its_start(tmp_path: Path) -> None:
    # 8, 16, 8, 32 Mbit/s for 1 s each = 1000, 2000, 1000, 4000 B/ms
    path = _write(tmp_path, "steps", "0 8\n1 16\n2 8\n3 32\n")
    net = ThroughputNetwork(
        path, rtt_ms=10.0, uplink_scale=1.0, random_offset=False, segment=(0.25, 0.75)
    )
    rng = np.random.default_rng(0)
    net.reset(rng, num_envs=1, num_clients=1)
    np.testing.assert_array_equal(net.start_offset_ms, 1000.0)  # the segment [1000, 3000) ms
    ctx = _ctx([[0], [0], [0]], [[1500.0], [3500.0], [0.0]], payload=1_000_000.0)
    t_in, _ = net.sample(rng, ctx)
    # t = 1500 is trace time 2500: 500 ms at 1000 B/ms = 500,000 B up to the segment's end,
    # then from trace time 1000 at 2000 B/ms: 250 ms. Total 750 (the whole trace: 500 + 125).
    # t = 3500 is one segment loop (2000 ms) later: the same. t = 0 (trace time 1000):
    # 1000 ms at 2000 B/ms = 2,000,000 B >= 1,000,000 -> 500 ms.
    np.testing.assert_allclose(t_in[:, 0], [5.0 + 750.0, 5.0 + 750.0, 5.0 + 500.0])


def test_a_mahimahi_transfer_wraps_within_its_segment(tmp_path: Path) -> None:
    # every ms in (1000, 3000]; every 10 ms elsewhere
    opp = [*range(10, 1001, 10), *range(1001, 3001), *range(3010, 4001, 10)]
    text = "".join(f"{t}\n" for t in opp)
    up, down = _write(tmp_path, "w.up", text), _write(tmp_path, "w.down", text)
    net = MahimahiNetwork(up, down, rtt_ms=2.0, random_offset=False, segment=(0.25, 0.75))
    rng = np.random.default_rng(0)
    net.reset(rng, num_envs=1, num_clients=1)
    t_in, _ = net.sample(rng, _ctx([[0]], [[1990.5]], payload=30 * 1500.0))
    # trace time 2990.5: opportunities 2991..3000 (10 packets), then the segment's start again,
    # 1001..1020 (20 packets): done at segment time 2000 + 20 -> 29.5 ms
    np.testing.assert_allclose(t_in[0, 0], 1.0 + 29.5)


def test_the_whole_period_as_a_segment_changes_nothing(tmp_path: Path) -> None:
    rng = np.random.default_rng(21)
    for name in ("a", "b", "c"):
        mbps = rng.lognormal(0.0, 1.0, 40) * (rng.random(40) > 0.1)
        _write(tmp_path, name, "".join(f"{i} {m}\n" for i, m in enumerate(mbps)))
    nets = [
        ThroughputNetwork(tmp_path, rtt_ms=30.0, uplink_scale=0.3, segment=seg)
        for seg in (None, (0.0, 1.0))
    ]
    client, time_ms = _random_block(rng, 5, 7, 200, 150.0)
    outs = []
    for net in nets:
        net.reset(np.random.default_rng(3), num_envs=5, num_clients=7)
        outs.append(net.sample(np.random.default_rng(4), _ctx(client, time_ms)))
    np.testing.assert_array_equal(outs[0][0], outs[1][0])
    np.testing.assert_array_equal(outs[0][1], outs[1][1])


@pytest.mark.parametrize(
    ("segment", "pattern"),
    [
        ((0.5, 0.5), r"network\.segment .*0 <= a < b <= 1"),
        ((0.6, 0.2), r"network\.segment .*0 <= a < b <= 1"),
        ((-0.1, 0.5), r"network\.segment\[0\] must be >= 0"),
        ((0.2, 1.5), r"network\.segment .*0 <= a < b <= 1"),
        ((0.2,), r"network\.segment must be null or two fractions"),
        (0.5, r"network\.segment must be null or two fractions"),
        (("a", 0.5), r"network\.segment\[0\] must be a number"),
        ((0.0, 0.05), r"network\.segment .*leaves 500\.0 ms .*at least 1000 ms"),
    ],
)
def test_bad_segments_name_the_setting(tmp_path: Path, segment: object, pattern: str) -> None:
    path = _write(tmp_path, "ten_s", "".join(f"{i} 5\n" for i in range(10)))
    with pytest.raises(NetworkError, match=pattern):
        ThroughputNetwork(path, rtt_ms=10.0, segment=segment)  # type: ignore[arg-type]
    up = _write(tmp_path, "t.up", "".join(f"{i}\n" for i in range(1, 10_001)))
    with pytest.raises(NetworkError, match=pattern):
        MahimahiNetwork(up, up, rtt_ms=10.0, segment=segment)  # type: ignore[arg-type]


def test_a_segment_without_any_throughput_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, "gap", "".join(f"{i} {0 if i < 5 else 3}\n" for i in range(10)))
    with pytest.raises(NetworkError, match=r"network\.segment .*gap.*zero throughout"):
        ThroughputNetwork(path, rtt_ms=10.0, segment=(0.0, 0.5))
    up = _write(tmp_path, "g.up", "".join(f"{t}\n" for t in range(6000, 10_001)))
    with pytest.raises(NetworkError, match=r"network\.segment .*g\.up.*no delivery opportunity"):
        MahimahiNetwork(up, up, rtt_ms=10.0, segment=(0.0, 0.5))


@pytest.mark.skipif(not (DATA / "pensieve").is_dir(), reason="Norway HSDPA traces not found")
def test_segment_from_the_command_line() -> None:
    overrides = ["network=hsdpa_norway", "network.segment=[0.8,1.0]"]
    with initialize_config_module(config_module="modi.conf", version_base="1.3"):
        cfg = compose(config_name="compare", overrides=overrides)
    net = instantiate(cfg.network, _convert_="all")
    assert net.segment == (0.8, 1.0)
    net.reset(np.random.default_rng(0), 50, 4)
    period = np.array([t.period_ms for t in net.source_uplink_traces])[net.uplink_index]
    assert np.all(net.start_offset_ms >= 0.8 * period - 1e-6)
    assert np.all(net.start_offset_ms < period)


# --------------------------------------------------------------------------- latent state


def test_latent_state_of_a_hand_made_throughput_trace(tmp_path: Path) -> None:
    # 8 Mbit/s for 1 s, then 16 Mbit/s for 1 s; period 2 s
    path = _write(tmp_path, "steps", "0 8\n1 16\n")
    net = ThroughputNetwork(path, rtt_ms=20.0, uplink_scale=0.5, random_offset=False)
    net.reset(np.random.default_rng(0), num_envs=2, num_clients=3)
    state = net.latent_state(
        np.array([0, 1, 1, 0]), np.array([2, 0, 1, 0]), np.array([1500.0, 1000.0, 100.0, 4500.0])
    )
    # [500, 1500]: half at 8, half at 16 -> 12. [0, 1000]: 8. [-900, 100] = [1100, 2000] of the
    # previous loop at 16 (900 ms) + [0, 100] at 8 -> 15.2. 4500 = 500 + 2 loops -> [-500, 500]:
    # 500 ms at 16 + 500 ms at 8 -> 12.
    np.testing.assert_allclose(state["downlink_mbps"], [12.0, 8.0, 15.2, 12.0])
    np.testing.assert_allclose(state["uplink_mbps"], [6.0, 4.0, 7.6, 6.0])
    np.testing.assert_array_equal(state["rtt_ms"], 20.0)
    short = net.latent_state(np.array([0]), np.array([0]), np.array([1500.0]), window_ms=400.0)
    np.testing.assert_allclose(short["downlink_mbps"], [16.0])


def test_latent_state_of_a_hand_made_mahimahi_trace(tmp_path: Path) -> None:
    # uplink: 3 packets at every ms of (0, 1000], 1 packet every 10 ms of (1000, 2000]
    up_opp = [t for t in range(1, 1001) for _ in range(3)] + list(range(1010, 2001, 10))
    up = _write(tmp_path, "m.up", "".join(f"{t}\n" for t in up_opp))
    down = _write(tmp_path, "m.down", "".join(f"{t}\n" for t in range(1, 2001)))  # 1 per ms
    net = MahimahiNetwork(up, down, rtt_ms=40.0, random_offset=False)
    net.reset(np.random.default_rng(0), num_envs=1, num_clients=1)
    zero = np.zeros(2, dtype=np.intp)
    state = net.latent_state(zero, zero, np.array([1000.0, 1500.0]), window_ms=500.0)
    # (500, 1000]: 1500 packets; (1000, 1500]: 50 packets. x 1500 B x 8 bit / 500 ms
    np.testing.assert_allclose(state["uplink_mbps"], [1500 * 12 / 500, 50 * 12 / 500])
    np.testing.assert_allclose(state["downlink_mbps"], 500 * 12 / 500)
    np.testing.assert_array_equal(state["rtt_ms"], 40.0)


def test_latent_state_reads_no_trace_ahead_and_stays_in_the_segment(tmp_path: Path) -> None:
    rates = np.arange(1, 21, dtype=float)  # 20 s, 1..20 Mbit/s
    past = _write(tmp_path, "a", "".join(f"{i} {r}\n" for i, r in enumerate(rates)))
    rates[12:] *= 50.0  # another future after 12 s
    future = _write(tmp_path, "b", "".join(f"{i} {r}\n" for i, r in enumerate(rates)))
    states = []
    for path in (past, future):
        net = ThroughputNetwork(path, rtt_ms=20.0, random_offset=False, segment=(0.25, 0.75))
        net.reset(np.random.default_rng(0), num_envs=1, num_clients=1)
        # segment [5 s, 15 s); stream time 6.5 s is trace time 11.5 s, 0.5 s is 5.5 s
        states.append(net.latent_state(np.zeros(2, np.intp), np.zeros(2, np.intp), [6500.0, 500.0]))
    # b differs only after trace time 12 s: the estimate at 11.5 s cannot see it
    assert states[0]["downlink_mbps"][0] == states[1]["downlink_mbps"][0]
    # [10.5, 11.5] s: 0.5 s at 11 and 0.5 s at 12 Mbit/s. [4.5, 5.5] s wraps to the segment's
    # end: [14.5, 15] s at 15 (x 50 in b) and [5, 5.5] s at 6 -- not 5, the rate before it
    assert states[0]["downlink_mbps"][0] == pytest.approx(11.5)
    assert states[0]["downlink_mbps"][1] == pytest.approx(0.5 * 15 + 0.5 * 6)
    assert states[1]["downlink_mbps"][1] == pytest.approx(0.5 * 750 + 0.5 * 6)


def test_latent_state_uses_each_clients_trace_and_offset(two_pairs: Path) -> None:
    net = MahimahiNetwork(two_pairs / "*.up", two_pairs / "*.down", rtt_ms=2.0)
    rng = np.random.default_rng(9)
    net.reset(rng, num_envs=5, num_clients=4)
    env = rng.integers(0, 5, 200)
    client = rng.integers(0, 4, 200)
    t = rng.uniform(0.0, 5000.0, 200)
    state = net.latent_state(env, client, t, window_ms=250.0)
    idx = net.uplink_index[env, client]
    now = net.offset_ms[env, client] + t
    for i, (up, down) in enumerate(zip(net.uplink_traces, net.downlink_traces, strict=True)):
        sel = idx == i
        for tr, key in ((up, "uplink_mbps"), (down, "downlink_mbps")):
            delivered = tr.cumulative_bytes(now[sel]) - tr.cumulative_bytes(now[sel] - 250.0)
            np.testing.assert_allclose(state[key][sel], delivered / 250.0 / 125.0)
    # fast pair: ~1 packet per ms = 12 Mbit/s; slow pair: 1 per 10 ms = 1.2 Mbit/s
    fast = [t.path.stem for t in net.uplink_traces].index("fast")
    assert (
        state["uplink_mbps"][idx == fast].min()
        > 10.0
        > 2.0
        > state["uplink_mbps"][idx != fast].max()
    )


def test_latent_state_bad_input(small_mahimahi: tuple[Path, Path]) -> None:
    net = MahimahiNetwork(*small_mahimahi, rtt_ms=1.0)
    one = np.zeros(1, dtype=np.intp)
    with pytest.raises(NetworkError, match="reset"):
        net.latent_state(one, one, np.zeros(1))
    net.reset(np.random.default_rng(0), 2, 3)
    with pytest.raises(NetworkError, match=r"env_index must be in \[0, 2\)"):
        net.latent_state(one + 2, one, np.zeros(1))
    with pytest.raises(NetworkError, match=r"client ids must be in \[0, 3\)"):
        net.latent_state(one, one + 3, np.zeros(1))
    with pytest.raises(NetworkError, match="window_ms must be > 0"):
        net.latent_state(one, one, np.zeros(1), window_ms=0.0)
    with pytest.raises(NetworkError, match="time_ms must be finite"):
        net.latent_state(one, one, np.array([np.nan]))


# --------------------------------------------------------------------------- input traps


def test_one_folder_for_both_directions_pairs_up_with_down(
    two_pairs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        net = MahimahiNetwork(two_pairs, str(two_pairs), rtt_ms=2.0)
    assert net.paired
    assert sorted(t.path.name for t in net.uplink_traces) == ["fast.up", "slow.up"]
    assert [t.path.stem for t in net.uplink_traces] == [t.path.stem for t in net.downlink_traces]
    assert all(t.path.suffix == ".down" for t in net.downlink_traces)
    assert "no uplink/downlink partner" not in caplog.text


def test_a_folder_with_files_of_unclear_direction_is_refused(two_pairs: Path) -> None:
    _write(two_pairs, "notes.txt", "1\n2\n")
    with pytest.raises(NetworkError, match=r"network\.uplink: .*notes\.txt.*\*\.up.*\*\.down"):
        MahimahiNetwork(two_pairs, two_pairs, rtt_ms=2.0)
    # the globs work
    net = MahimahiNetwork(two_pairs / "*.up", two_pairs / "*.down", rtt_ms=2.0)
    assert net.paired and len(net.uplink_traces) == 2


@pytest.mark.skipif(not MAHIMAHI.is_dir(), reason=f"Mahimahi traces not found at {MAHIMAHI}")
def test_the_real_mahimahi_folder_for_both_directions(caplog: pytest.LogCaptureFixture) -> None:
    overrides = ["network=mahimahi", f"network.uplink={MAHIMAHI}", f"network.downlink={MAHIMAHI}"]
    with initialize_config_module(config_module="modi.conf", version_base="1.3"):
        cfg = compose(config_name="compare", overrides=overrides)
    with caplog.at_level(logging.WARNING):
        net = instantiate(cfg.network, _convert_="all")
    names = [
        (u.path.name, d.path.name)
        for u, d in zip(net.uplink_traces, net.downlink_traces, strict=True)
    ]
    assert sorted(names) == [
        ("ATT-LTE-driving-2016.up", "ATT-LTE-driving-2016.down"),
        ("ATT-LTE-driving.up", "ATT-LTE-driving.down"),
        ("TMobile-LTE-short.up", "TMobile-LTE-short.down"),
        ("TMobile-UMTS-driving.up", "TMobile-UMTS-driving.down"),
    ]
    # the one file without a partner is named once
    assert caplog.text.count("TMobile-LTE-driving.down") == 1
    assert ".up" not in caplog.text


# --------------------------------------------------------------------------- time-varying RTT


def test_rtt_process_has_the_log_normal_marginal_and_the_ou_correlation() -> None:
    proc = RttProcess(mean_ms=100.0, cv=0.4, correlation_ms=5000.0)
    proc.reset(np.random.default_rng(0), 20_000)
    key = np.arange(20_000)
    t0 = np.random.default_rng(1).uniform(0.0, 1e7, key.size)
    rtt = proc.rtt_ms(key, t0)
    assert rtt.mean() == pytest.approx(100.0, rel=0.02)
    assert rtt.std() / rtt.mean() == pytest.approx(0.4, rel=0.05)
    assert np.median(rtt) == pytest.approx(proc.marginal.median, rel=0.02)
    for lag in (100.0, 1000.0, 5000.0, 20_000.0):
        later = proc.rtt_ms(key, t0 + lag)
        rho = np.corrcoef(np.log(rtt), np.log(later))[0, 1]
        assert rho == pytest.approx(np.exp(-lag / 5000.0), abs=0.03), lag


@pytest.fixture
def fast_link(tmp_path: Path) -> Path:
    # 8 Gbit/s for 10 s: a 1 KB transfer takes 1 µs, a 30 KB one 30 µs
    return _write(tmp_path, "fast", "".join(f"{i} 8000\n" for i in range(10)))


def test_upload_and_download_see_the_rtt_at_their_own_times(fast_link: Path) -> None:
    net = ThroughputNetwork(
        fast_link, rtt_ms=80.0, rtt_cv=0.5, rtt_correlation_ms=200.0, download_delay_ms=40.0
    )
    rng = np.random.default_rng(5)
    net.reset(rng, num_envs=3, num_clients=4)
    client, time_ms = _random_block(rng, 3, 4, 50, 300.0)
    ctx = _ctx(client, time_ms, payload=30_000.0)
    t_in, t_out = net.sample(rng, ctx)
    env = np.broadcast_to(np.arange(3), client.shape)
    rtt_up = net.latent_state(env, client, time_ms)["rtt_ms"]
    rtt_down = net.latent_state(env, client, time_ms + t_in + 40.0)["rtt_ms"]
    np.testing.assert_allclose(t_in, 0.5 * rtt_up + 30_000.0 / 1e6, rtol=1e-9)
    np.testing.assert_allclose(t_out, 0.5 * rtt_down + 1_000.0 / 1e6, rtol=1e-9)
    # correlation time 200 ms: the download's RTT is not the upload's
    assert np.abs(rtt_down / rtt_up - 1.0).mean() > 0.05
    assert 0.2 < np.std(np.log(rtt_up)) < 0.7


def test_the_rtt_paths_are_a_function_of_the_seed(fast_link: Path) -> None:
    def run(seed: int, cv: float) -> tuple[np.ndarray, float]:
        net = ThroughputNetwork(fast_link, rtt_ms=50.0, rtt_cv=cv)
        rng = np.random.default_rng(seed)
        net.reset(rng, num_envs=2, num_clients=3)
        after_reset = float(rng.random())
        client, time_ms = _random_block(np.random.default_rng(9), 2, 3, 40, 100.0)
        return net.sample(rng, _ctx(client, time_ms))[0], after_reset

    a, a_next = run(1, 0.3)
    b, _ = run(1, 0.3)
    c, _ = run(2, 0.3)
    constant, constant_next = run(1, 0.0)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert np.ptp(constant) < 1e-3 < np.ptp(a)
    # the paths come from a child of the stream's generator: the stream's own draws are unchanged
    assert a_next == constant_next


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"rtt_cv": -0.1}, r"network\.rtt_cv must be >= 0"),
        ({"rtt_cv": float("inf")}, r"network\.rtt_cv must be a finite number"),
        ({"rtt_correlation_ms": 0.0}, r"network\.rtt_correlation_ms must be > 0"),
    ],
)
def test_bad_rtt_settings_name_the_field(
    fast_link: Path, kwargs: dict[str, float], field: str
) -> None:
    with pytest.raises(NetworkError, match=field):
        ThroughputNetwork(fast_link, rtt_ms=50.0, **kwargs)


@pytest.mark.parametrize(
    ("preset", "radio_type"),
    [
        pytest.param("hsdpa_norway", "5G-NSA-Low-Band", marks=_preset("hsdpa_norway").marks),
        pytest.param("throughput", "5G-NSA-Low-Band", marks=_preset("throughput").marks),
        pytest.param("lumos5g_walking", "5G-NSA-mmWave", marks=_preset("lumos5g_walking").marks),
    ],
)
@pytest.mark.skipif(not SPEEDTEST.is_dir(), reason=f"speed tests not found at {SPEEDTEST}")
def test_preset_rtt_spread_is_the_ookla_fit(preset: str, radio_type: str) -> None:
    rtt = read_speedtest(
        SPEEDTEST / "dataset_speedtest_ookla.shared.csv", radio_type, None, "single"
    )["rtt"]
    net = load_preset("network", preset)
    assert net.rtt_cv == pytest.approx(fit_lognormal(rtt, "quantile").cv, abs=5e-4)
    assert net.rtt_process is not None and net.rtt_process.marginal.mean == net.rtt_ms


@pytest.mark.skipif(not (DATA / "pensieve").is_dir(), reason="Norway HSDPA traces not found")
def test_rtt_mean_from_the_command_line() -> None:
    overrides = ["network=hsdpa_norway", "network.rtt_ms=200"]
    with initialize_config_module(config_module="modi.conf", version_base="1.3"):
        cfg = compose(config_name="compare", overrides=overrides)
    net = instantiate(cfg.network, _convert_="all")
    net.reset(np.random.default_rng(0), 64, 8)
    env = np.repeat(np.arange(64), 8 * 50)
    client = np.tile(np.repeat(np.arange(8), 50), 64)
    time_ms = np.tile(np.arange(50) * 20_000.0, 64 * 8)
    rtt = net.latent_state(env, client, time_ms)["rtt_ms"]
    assert rtt.mean() == pytest.approx(200.0, rel=0.05)
