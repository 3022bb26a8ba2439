"""Tests for modi.envs.traces: Mahimahi and throughput traces, loading, validation."""

from __future__ import annotations

import logging
import math
import re
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from modi.envs.traces import (
    MahimahiTrace,
    ThroughputTrace,
    TraceError,
    load_traces,
    resolve_trace_paths,
)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
MAHIMAHI = DATA / "mahimahi"
PENSIEVE = DATA / "pensieve"
LUMOS = DATA / "sigcomm21-5g-lumos5g"


def _needs(folder: Path) -> pytest.MarkDecorator:
    return pytest.mark.skipif(
        not folder.is_dir(), reason=f"real trace data not found at {folder} (../shared/data)"
    )


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# --------------------------------------------------------------------------- Mahimahi, by hand


@pytest.fixture
def mm(tmp_path: Path) -> MahimahiTrace:
    # opportunities 1, 1, 3, 7 ms, period 7 ms: loop 0 at 1,1,3,7; loop 1 at 8,8,10,14;
    # loop 2 at 15,15,17,21; ...
    return MahimahiTrace.load(_write(tmp_path, "small.down", "1\n1\n3\n7\n"))


def test_mahimahi_load_attributes(mm: MahimahiTrace) -> None:
    assert mm.opportunities_ms.dtype == np.int64
    assert mm.opportunities_ms.tolist() == [1, 1, 3, 7]
    assert mm.period_ms == 7
    assert mm.name == "small.down"
    # 4 packets x 1500 B x 8 bit / 7 ms = 6857.14 bit/ms = 6.857 Mbit/s
    assert mm.mean_throughput_mbps == pytest.approx(4 * 1500 * 8 / 7 / 1000)
    assert not mm.opportunities_ms.flags.writeable


@pytest.mark.parametrize(
    ("start", "nbytes", "expected"),
    [
        (0, 1, 1.0),  # 1 packet: first opportunity >= 0 is 1 -> 1 - 0
        (0, 0, 1.0),  # an empty payload still needs 1 packet
        (0, 1500, 1.0),  # exactly one MTU = 1 packet
        (0, 1501, 1.0),  # 2 packets at 1, 1 -> 1
        (0, 4500, 3.0),  # 3 packets at 1, 1, 3 -> 3
        (2, 3000, 5.0),  # 2 packets from t=2: at 3 and 7 -> 7 - 2
        (6, 4500, 2.0),  # 3 packets from t=6: 7, then next loop 8, 8 -> 8 - 6
        (7, 1, 0.0),  # the opportunity at 7 itself is usable
        (7.5, 1, 0.5),  # next opportunity is loop 1's 1 -> 8 - 7.5
        (6.5, 1, 0.5),  # first >= 6.5 is 7 -> 0.5
        (1, 3000, 0.0),  # two packets in the same millisecond 1 -> 1 - 1
        (0, 9 * 1500, 15.0),  # 9 packets: 1,1,3,7, 8,8,10,14, 15 (two wraps) -> 15
        (2, 10 * 1500, 19.0),  # 10 packets from 2: 3,7, 8,8,10,14, 15,15,17,21 -> 21 - 2
        (14, 3000, 1.0),  # loop 2 starts at 14: loop 1's 14, then loop 2's 15 -> 15 - 14
        (16, 1, 1.0),  # 16 = 14 + 2: next is 14 + 3 = 17 -> 1
        (100, 1, 1.0),  # 100 = 14 * 7 + 2: next is 98 + 3 = 101 -> 1
        (0, 4 * 1500 * 1000, 7000.0),  # 4000 packets = 1000 full loops, last at 1000 * 7
    ],
)
def test_mahimahi_hand_computed(
    mm: MahimahiTrace, start: float, nbytes: float, expected: float
) -> None:
    got = mm.transfer_time_ms(np.array([start]), np.array([nbytes]))
    assert got.tolist() == [expected], f"start {start} ms, {nbytes} B: expected {expected} ms"


def test_mahimahi_vectorised_and_broadcast(mm: MahimahiTrace) -> None:
    got = mm.transfer_time_ms(np.array([0.0, 2.0, 6.0]), np.array([4500.0, 3000.0, 4500.0]))
    assert got.dtype == np.float64
    assert got.tolist() == [3.0, 5.0, 2.0]  # the three cases above in one call
    # scalar payload broadcast over starts: 1 packet from 0, 2, 6 -> at 1, 3, 7
    assert mm.transfer_time_ms(np.array([0.0, 2.0, 6.0]), 1.0).tolist() == [1.0, 1.0, 1.0]
    assert mm.transfer_time_ms(np.zeros((2, 2)), np.full((2, 2), 4500.0)).shape == (2, 2)


def test_mahimahi_late_first_timestamp(tmp_path: Path) -> None:
    # opportunities 5, 10, period 10: loop 0 at 5, 10; loop 1 at 15, 20 (like the .up files,
    # which start at 831 / 7 / 637 ms)
    trace = MahimahiTrace.load(_write(tmp_path, "late.up", "5\n10\n"))
    got = trace.transfer_time_ms(np.array([0, 0, 10, 10, 11]), np.array([1, 4500, 1, 3000, 1]))
    # 0:1 pkt -> 5; 0:3 pkts -> 5,10,15 -> 15; 10:1 -> 10 -> 0; 10:2 -> 10,15 -> 5; 11 -> 15 -> 4
    assert got.tolist() == [5.0, 15.0, 0.0, 5.0, 4.0]
    # 2 packets per 10 ms = 2 * 1500 * 8 / 10 / 1000 = 2.4 Mbit/s
    assert trace.mean_throughput_mbps == pytest.approx(2.4)


def test_mahimahi_all_zero_timestamps_is_one_ms_fixed_rate(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # mm-link rejects this trace; here period = max(last, 1) = 1 ms: 3 packets every ms
    with caplog.at_level(logging.WARNING, logger="modi.envs.traces"):
        trace = MahimahiTrace.load(_write(tmp_path, "zeros.down", "0\n0\n0\n"))
    assert trace.period_ms == 1
    assert "zeros.down" in caplog.text and "all 3 timestamps are 0" in caplog.text
    # 4 packets from 0: 0, 0, 0, 1 -> 1 ms; 1 packet from 0.5: next at 1 -> 0.5 ms;
    # 1 packet from 1: at 1 -> 0 ms
    got = trace.transfer_time_ms(np.array([0.0, 0.5, 1.0]), np.array([6000.0, 1.0, 1.0]))
    assert got.tolist() == [1.0, 0.5, 0.0]
    assert trace.mean_throughput_mbps == pytest.approx(36.0)  # 3 * 1500 * 8 / 1 / 1000


def test_mahimahi_ignores_blank_lines_and_crlf(tmp_path: Path) -> None:
    trace = MahimahiTrace.load(_write(tmp_path, "blank.down", "\n1\r\n\n1\n  3 \n\n7\n\n"))
    assert trace.opportunities_ms.tolist() == [1, 1, 3, 7]
    assert trace.period_ms == 7


def test_constructor_validates_arrays() -> None:
    with pytest.raises(TraceError, match=r"direct\.down: entry 2: timestamp 1 ms is smaller"):
        MahimahiTrace(Path("direct.down"), np.array([0, 5, 1]))
    with pytest.raises(TraceError, match="must be integers"):
        MahimahiTrace(Path("direct.down"), np.array([0.5, 1.0]))
    with pytest.raises(TraceError, match=r"direct\.tp: entry 1: negative throughput"):
        ThroughputTrace(Path("direct.tp"), np.array([0.0, 1.0]), np.array([1.0, -1.0]))


def test_bad_requests_raise(mm: MahimahiTrace) -> None:
    for start, nbytes in [(-1.0, 1.0), (0.0, -1.0), (np.nan, 1.0), (0.0, np.inf)]:
        with pytest.raises(TraceError, match=r"small\.down"):
            mm.transfer_time_ms(np.array([start]), np.array([nbytes]))
    with pytest.raises(TraceError, match="do not broadcast"):
        mm.transfer_time_ms(np.zeros(3), np.zeros(2))


# --------------------------------------------------------------------------- throughput, by hand


@pytest.fixture
def tp(tmp_path: Path) -> ThroughputTrace:
    # 0-1 s: 8 Mbit/s = 1000 B/ms; 1-2 s: 0; 2-3 s (last sample, one median step): 16 Mbit/s
    # = 2000 B/ms. Period 3000 ms, 1e6 + 0 + 2e6 = 3e6 bytes per loop.
    return ThroughputTrace.load(_write(tmp_path, "small.tp", "0 8\n1 0\n2 16\n"))


def test_throughput_load_attributes(tp: ThroughputTrace) -> None:
    assert tp.times_s.tolist() == [0.0, 1.0, 2.0]
    assert tp.mbps.tolist() == [8.0, 0.0, 16.0]
    assert tp.step_s == 1.0
    assert tp.period_s == 3.0 and tp.period_ms == 3000.0
    # 3e6 bytes / 3000 ms = 1000 B/ms = 8 Mbit/s; unweighted sample mean is (8+0+16)/3 = 8 too
    assert tp.mean_throughput_mbps == pytest.approx(8.0)
    assert tp.sample_mean_mbps == pytest.approx(8.0)


@pytest.mark.parametrize(
    ("start", "nbytes", "expected"),
    [
        (0, 500_000, 500.0),  # 500 kB at 1000 B/ms
        (0, 1_000_000, 1000.0),  # exactly the first segment: done at its end
        (0, 1_500_000, 2250.0),  # 1e6 by 1000, nothing until 2000, 5e5 / 2000 = 250 -> 2250
        (500, 1_000_000, 1750.0),  # 5e5 by 1000, wait to 2000, 5e5 / 2000 -> 2250 - 500
        (1500, 2000, 501.0),  # inside the zero segment: wait to 2000, 2000 B / 2000 = 1
        (1000, 1, 1000.0005),  # at the zero segment's start: 2000 + 1/2000 - 1000
        (2500, 2_000_000, 1500.0),  # 1e6 by 3000, wrap: 1e6 at 1000 B/ms -> 4000 - 2500
        (2500, 2_500_000, 2750.0),  # 1e6 by 3000, 1e6 by 4000, zero to 5000, +250 -> 5250
        (0, 9_000_000, 9000.0),  # three whole loops
        (0, 10_000_000, 10000.0),  # three loops (9000 ms) + 1e6 at 1000 B/ms
        (15_500, 500_000, 500.0),  # 15500 = 5 loops + 500 ms: as from 500
        (1234.5, 0, 0.0),  # an empty payload takes no time
    ],
)
def test_throughput_hand_computed(
    tp: ThroughputTrace, start: float, nbytes: float, expected: float
) -> None:
    got = tp.transfer_time_ms(np.array([start]), np.array([nbytes]))
    assert got[0] == pytest.approx(expected, rel=1e-12, abs=1e-9), (
        f"start {start} ms, {nbytes} B: expected {expected} ms"
    )


def test_throughput_start_at_one_second_is_shifted(tmp_path: Path, tp: ThroughputTrace) -> None:
    # Lumos5G 5G files start at 1.0 s: trace time 0 is the first sample
    shifted = ThroughputTrace.load(_write(tmp_path, "shift.tp", "1.0\t8\n2.0\t0\n3.0\t16\n"))
    assert shifted.period_ms == 3000.0
    starts = np.array([0.0, 500.0, 1500.0, 2500.0])
    sizes = np.array([1.5e6, 1e6, 2000.0, 2.5e6])
    np.testing.assert_allclose(
        shifted.transfer_time_ms(starts, sizes), [2250.0, 1750.0, 501.0, 2750.0], rtol=1e-12
    )
    np.testing.assert_allclose(
        shifted.transfer_time_ms(starts, sizes), tp.transfer_time_ms(starts, sizes), rtol=1e-12
    )


def test_throughput_repeated_timestamp_has_zero_weight(tmp_path: Path, tp: ThroughputTrace) -> None:
    # like the 29 Lumos5G 4G files with a repeated second: the 100 Mbit/s sample lasts 0 s
    dup = ThroughputTrace.load(_write(tmp_path, "dup.tp", "0 8\n1 100\n1 0\n2 16\n"))
    assert dup.period_ms == 3000.0
    assert dup.mean_throughput_mbps == pytest.approx(8.0)
    assert dup.sample_mean_mbps == pytest.approx(31.0)  # (8 + 100 + 0 + 16) / 4
    starts = np.array([0.0, 500.0, 2500.0])
    sizes = np.array([1.5e6, 1e6, 2.5e6])
    np.testing.assert_allclose(
        dup.transfer_time_ms(starts, sizes), tp.transfer_time_ms(starts, sizes), rtol=1e-12
    )


def test_throughput_irregular_steps_and_median_last_step(tmp_path: Path) -> None:
    # steps 0.5 s and 1.5 s: median 1.0 s, so the last sample lasts 1 s, period 3 s
    trace = ThroughputTrace.load(_write(tmp_path, "irr.tp", "0 4\n0.5 8\n2.0 2\n"))
    assert trace.step_s == 1.0 and trace.period_ms == 3000.0
    # (4 * 0.5 + 8 * 1.5 + 2 * 1) / 3 = 16 / 3 Mbit/s time-weighted; (4 + 8 + 2) / 3 unweighted
    assert trace.mean_throughput_mbps == pytest.approx(16 / 3)
    assert trace.sample_mean_mbps == pytest.approx(14 / 3)
    # 4 Mbit/s = 500 B/ms for 500 ms = 250 kB; then 1000 B/ms: 300 kB needs 50 ms more -> 550
    assert trace.transfer_time_ms(np.array([0.0]), np.array([300_000.0]))[0] == pytest.approx(550)


def test_single_sample_trace_lasts_one_second(tmp_path: Path) -> None:
    trace = ThroughputTrace.load(_write(tmp_path, "one.tp", "0 8\n"))
    assert trace.period_ms == 1000.0
    # constant 1000 B/ms: 2.5 MB takes 2500 ms from anywhere
    got = trace.transfer_time_ms(np.array([0.0, 700.0]), np.array([2.5e6, 2.5e6]))
    np.testing.assert_allclose(got, [2500.0, 2500.0])


# --------------------------------------------------------------------------- properties


def _ref_mahimahi(opp: list[int], start: float, nbytes: float) -> float:
    """Slow reference: walk the looped opportunity list one packet at a time."""
    period = max(opp[-1], 1)
    packets = max(1, math.ceil(nbytes / 1500))
    loop = 0
    while True:
        for o in opp:
            t = loop * period + o
            if t >= start:
                packets -= 1
                if packets == 0:
                    return t - start
        loop += 1


def _ref_throughput(
    times: list[float], mbps: list[float], step: float, start: float, nbytes: float
) -> float:
    """Slow reference: walk the looped segments, draining the payload."""
    if nbytes == 0:
        return 0.0
    bounds = [(t - times[0]) * 1000.0 for t in times] + [(times[-1] - times[0] + step) * 1000.0]
    period = bounds[-1]
    remaining = nbytes
    now = start
    loop = math.floor(start / period)
    while True:
        for i, r in enumerate(mbps):
            seg_end = loop * period + bounds[i + 1]
            if seg_end <= now:
                continue
            begin = max(now, loop * period + bounds[i])
            rate = r * 125.0  # bytes per ms
            if rate > 0 and rate * (seg_end - begin) >= remaining:
                return begin + remaining / rate - start
            remaining -= rate * (seg_end - begin)
            now = seg_end
        loop += 1


_opps = st.lists(st.integers(0, 40), min_size=1, max_size=25).map(sorted)
_starts = st.one_of(st.integers(0, 300).map(float), st.floats(0, 300, allow_nan=False))


@settings(max_examples=300, deadline=None)
@given(
    opp=_opps,
    starts=st.lists(_starts, min_size=1, max_size=8),
    sizes=st.lists(st.integers(0, 60_000), min_size=1, max_size=8),
)
def test_mahimahi_matches_reference(opp: list[int], starts: list[float], sizes: list[int]) -> None:
    trace = MahimahiTrace(Path("random.down"), np.array(opp, dtype=np.int64))
    sizes_sorted = np.array(sorted(sizes), dtype=np.float64)
    for start in starts:
        got = trace.transfer_time_ms(np.full(len(sizes_sorted), start), sizes_sorted)
        expected = [_ref_mahimahi(opp, start, float(b)) for b in sizes_sorted]
        assert got.tolist() == expected, f"opp {opp}, start {start}"
        assert np.all(got >= 0), "transfer time must be non-negative"
        assert np.all(np.diff(got) >= 0), "transfer time must not decrease with payload"


@st.composite
def _throughput_traces(draw: st.DrawFn) -> tuple[list[float], list[float]]:
    steps = draw(st.lists(st.sampled_from([0.0, 0.25, 0.5, 1.0, 1.5, 2.0]), max_size=10))
    times = [0.0]
    for s in steps:
        times.append(times[-1] + s)
    offset = draw(st.sampled_from([0.0, 1.0, 3.5]))
    rate = st.one_of(st.just(0.0), st.floats(0.01, 50.0, allow_nan=False))
    mbps = draw(st.lists(rate, min_size=len(times), max_size=len(times)))
    return [t + offset for t in times], mbps


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@example(  # start + period rounds onto the start of a zero-throughput stretch
    trace_data=([0.0, 0.25, 0.75], [0.0, 0.0, 1.0]),
    start_frac=[2.9999999999999996],
    size_frac=[2.3311881096718974e-31],
)
@given(
    trace_data=_throughput_traces(),
    start_frac=st.lists(st.floats(0, 3), min_size=1, max_size=5),
    size_frac=st.lists(st.floats(0, 4), min_size=1, max_size=8),
)
def test_throughput_matches_reference(
    trace_data: tuple[list[float], list[float]], start_frac: list[float], size_frac: list[float]
) -> None:
    times, mbps = trace_data
    try:
        trace = ThroughputTrace(Path("random.tp"), np.array(times), np.array(mbps))
    except TraceError as exc:  # all throughput zero (or only at zero-length samples)
        assert "zero" in str(exc) and "random.tp" in str(exc)
        assume(False)
        return
    per_loop = trace.mean_throughput_mbps * 125.0 * trace.period_ms
    sizes = np.array(sorted(size_frac)) * per_loop
    for frac in start_frac:
        start = frac * trace.period_ms
        got = trace.transfer_time_ms(np.full(len(sizes), start), sizes)
        # completion time jumps where a payload ends exactly at the start of a zero-throughput
        # stretch, so compare with the reference at payloads 1e-9 smaller and larger
        lo = [_ref_throughput(times, mbps, trace.step_s, start, b * (1 - 1e-9)) for b in sizes]
        hi = [_ref_throughput(times, mbps, trace.step_s, start, b * (1 + 1e-9)) for b in sizes]
        for g, low, high, b in zip(got, lo, hi, sizes, strict=True):
            assert low - 1e-6 <= g <= high + 1e-6, (
                f"start {start}, {b} B: {g} not in [{low}, {high}]"
            )
        assert np.all(got >= 0), "transfer time must be non-negative"
        assert np.all(np.diff(got) >= 0), "transfer time must not decrease with payload"
        # looping: starting one period later gives the same answer. start + period is rounded,
        # and a start a few ulps before a period boundary can land on it (the start of a
        # zero-throughput stretch, a jump of the completion time): bracket in time as well.
        later = trace.transfer_time_ms(np.full(len(sizes), start + trace.period_ms), sizes)
        eps = 1e-6  # ms, far above the rounding of start + period
        for g, b in zip(later, sizes, strict=True):
            refs = [
                _ref_throughput(times, mbps, trace.step_s, t, b * f)
                for t in (max(start - eps, 0.0), start, start + eps)
                for f in (1 - 1e-9, 1 + 1e-9)
            ]
            assert min(refs) - 1e-6 <= g <= max(refs) + 1e-6, "periodicity"


# --------------------------------------------------------------------------- bad inputs


MM_BAD = [
    ("empty.down", "", ["empty file"]),
    ("blank.down", "\n  \n\n", ["zero delivery opportunities"]),
    ("word.down", "1\n2\nabc\n4\n", ["line 3", "'abc'"]),
    ("float.down", "1\n1.5\n", ["line 2", "'1.5'", "integer"]),
    ("two.down", "1\n2 3\n", ["line 2", "'2 3'"]),
    ("blanks-then-word.down", "1\n\n2\nfoo\n", ["line 4", "'foo'"]),
    ("neg.down", "-1\n2\n", ["line 1", "negative"]),
    ("dec.down", "1\n5\n3\n", ["line 3", "non-decreasing"]),
]

TP_BAD = [
    ("empty.tp", "", ["empty file"]),
    ("blank.tp", "\n\n", ["no samples"]),
    ("word.tp", "0 1\n1 x\n", ["line 2", "'1 x'"]),
    ("one-col.tp", "0 1\n1\n", ["line 2", "two numbers"]),
    ("three-col.tp", "0 1\n1 2 3\n2 1\n", ["line 2", "'1 2 3'"]),
    ("nan.tp", "0 1\n1 nan\n", ["line 2", "non-finite"]),
    ("negtime.tp", "-1 5\n0 5\n", ["line 1", "negative timestamp"]),
    ("dec.tp", "0 1\n2 1\n1 1\n", ["line 3", "non-decreasing"]),
    ("negrate.tp", "0 1\n\n1 -2\n", ["line 3", "negative throughput"]),
    ("zero.tp", "0 0\n1 0\n2 0\n", ["zero for the whole trace"]),
    ("zero-dup.tp", "0 0\n1 5\n1 0\n", ["zero over the whole trace length"]),
]


@pytest.mark.parametrize(("name", "text", "fragments"), MM_BAD, ids=[c[0] for c in MM_BAD])
def test_bad_mahimahi_files(tmp_path: Path, name: str, text: str, fragments: list[str]) -> None:
    path = _write(tmp_path, name, text)
    with pytest.raises(TraceError) as info:
        MahimahiTrace.load(path)
    message = str(info.value)
    assert name in message, f"message should name the file: {message}"
    for fragment in fragments:
        assert fragment in message, f"expected {fragment!r} in {message!r}"


@pytest.mark.parametrize(("name", "text", "fragments"), TP_BAD, ids=[c[0] for c in TP_BAD])
def test_bad_throughput_files(tmp_path: Path, name: str, text: str, fragments: list[str]) -> None:
    path = _write(tmp_path, name, text)
    with pytest.raises(TraceError) as info:
        ThroughputTrace.load(path)
    message = str(info.value)
    assert name in message, f"message should name the file: {message}"
    for fragment in fragments:
        assert fragment in message, f"expected {fragment!r} in {message!r}"


@pytest.mark.parametrize("kind", ["mahimahi", "throughput"])
def test_missing_file(tmp_path: Path, kind: str) -> None:
    loader = MahimahiTrace.load if kind == "mahimahi" else ThroughputTrace.load
    with pytest.raises(TraceError, match=r"no-such-trace.*no such trace file"):
        loader(tmp_path / "no-such-trace")
    with pytest.raises(TraceError, match="no such trace file or directory"):
        load_traces(tmp_path / "no-such-trace", kind)  # type: ignore[call-overload]


def test_trace_error_is_value_error() -> None:
    assert issubclass(TraceError, ValueError)


def test_large_file_parse_error_names_line(tmp_path: Path) -> None:
    lines = [str(i) for i in range(200_000)]
    lines[123_456] = "12x"
    path = _write(tmp_path, "big.down", "\n".join(lines) + "\n")
    with pytest.raises(TraceError, match=r"big\.down: line 123457: .*'12x'"):
        MahimahiTrace.load(path)


# --------------------------------------------------------------------------- load_traces


@pytest.fixture
def trace_dir(tmp_path: Path) -> Path:
    d = tmp_path / "set"
    d.mkdir()
    _write(d, "b.down", "2\n4\n")
    _write(d, "a.down", "1\n1\n3\n7\n")
    _write(d, "README.md", "not a trace\n")
    _write(d, "README.upstream", "not a trace\n")
    _write(d, "MANIFEST.tsv", "sha\tpath\n")
    _write(d, ".hidden", "junk\n")
    (d / "sub").mkdir()
    return d


def test_load_directory_sorted_skipping_docs(trace_dir: Path) -> None:
    traces = load_traces(trace_dir, "mahimahi")
    assert [t.name for t in traces] == ["a.down", "b.down"]
    assert [t.period_ms for t in traces] == [7, 4]


def test_load_file_glob_and_sequence(trace_dir: Path) -> None:
    assert [t.name for t in load_traces(trace_dir / "b.down", "mahimahi")] == ["b.down"]
    assert [t.name for t in load_traces(str(trace_dir / "*"), "mahimahi")] == ["a.down", "b.down"]
    mixed = load_traces([trace_dir / "b.down", str(trace_dir)], "mahimahi")
    assert [t.name for t in mixed] == ["b.down", "a.down", "b.down"]
    assert resolve_trace_paths(str(trace_dir / "?.down")) == [
        trace_dir / "a.down",
        trace_dir / "b.down",
    ]


def test_load_throughput_kind(tmp_path: Path) -> None:
    _write(tmp_path, "x.log", "0\t1.5\n1\t2.5\n")
    traces = load_traces(tmp_path, "throughput")
    assert len(traces) == 1 and isinstance(traces[0], ThroughputTrace)
    assert traces[0].mean_throughput_mbps == pytest.approx(2.0)


def test_load_traces_errors(trace_dir: Path, tmp_path: Path) -> None:
    pattern = str(trace_dir / "*.nothing")
    with pytest.raises(TraceError, match=re.escape(repr(pattern))):
        load_traces(pattern, "mahimahi")
    empty = tmp_path / "empty-dir"
    empty.mkdir()
    _write(empty, "README", "docs only\n")
    with pytest.raises(TraceError, match="empty-dir: directory contains no trace files"):
        load_traces(empty, "throughput")
    with pytest.raises(TraceError, match="empty sequence"):
        load_traces([], "mahimahi")
    with pytest.raises(TraceError, match="unknown trace kind 'bogus'"):
        load_traces(trace_dir, "bogus")  # type: ignore[call-overload]
    # a bad file inside a set is reported by name before anything is simulated
    _write(trace_dir, "c.down", "1\noops\n")
    with pytest.raises(TraceError, match=r"c\.down: line 2"):
        load_traces(trace_dir, "mahimahi")


# --------------------------------------------------------------------------- real traces


def _mahimahi_table() -> dict[str, tuple[int, int, float]]:
    """README summary: file -> (lines, duration s, mean Mbit/s)."""
    text = (MAHIMAHI / "README.md").read_text()
    rows = re.findall(r"^\| ([\w.-]+\.(?:down|up)) \| (\d+) \| (\d+) \| ([\d.]+) \|$", text, re.M)
    return {name: (int(n), int(d), float(rate)) for name, n, d, rate in rows}


def _set_table(readme: Path) -> dict[str, tuple[int, int, float, float, float]]:
    """README set summary: set -> (files, median duration s, mean, min, max of per-file means)."""
    pattern = r"^\| ([^|]+?) \| (\d+) \| (\d+) s \| ([\d.]+) \(([\d.]+)-([\d.]+)\) \|$"
    rows = re.findall(pattern, readme.read_text(), re.M)
    return {r[0]: (int(r[1]), int(r[2]), float(r[3]), float(r[4]), float(r[5])) for r in rows}


@_needs(MAHIMAHI)
def test_real_mahimahi_matches_readme_table() -> None:
    table = _mahimahi_table()
    assert len(table) == 9, f"expected 9 rows in the README table, parsed {table}"
    traces = load_traces(MAHIMAHI / "traces", "mahimahi")
    assert sorted(t.name for t in traces) == sorted(table), "README.upstream must be skipped"
    for trace in traces:
        lines, duration_s, rate = table[trace.name]
        assert trace.opportunities_ms.size == lines, trace.name
        assert round(trace.period_ms / 1000) == duration_s, trace.name
        assert trace.mean_throughput_mbps == pytest.approx(rate, rel=0.01), trace.name
        # exactness on real data: one (two) loop's worth of packets from t=0 ends at the last
        # opportunity of the first (second) loop
        n = trace.opportunities_ms.size
        got = trace.transfer_time_ms(np.zeros(2), np.array([n, 2 * n]) * 1500.0)
        assert got.tolist() == [trace.period_ms, 2 * trace.period_ms], trace.name


@_needs(MAHIMAHI)
def test_real_mahimahi_loads_fast() -> None:
    path = MAHIMAHI / "traces" / "TMobile-LTE-driving.down"  # 505,078 lines
    t0 = time.perf_counter()
    trace = MahimahiTrace.load(path)
    elapsed = time.perf_counter() - t0
    assert trace.opportunities_ms.size == 505_078
    assert elapsed < 2.0, f"loading 505k lines took {elapsed:.2f} s; expected well under 1 s"
    starts = np.linspace(0, 10 * trace.period_ms, 100_000)
    got = trace.transfer_time_ms(starts, np.full(starts.size, 300_000.0))
    assert np.all(got > 0) and np.all(np.isfinite(got))


def _check_set(
    sets: dict[str, tuple[int, int, float, float, float]],
    key: str,
    spec: Path | str,
    weighted: bool,
) -> list[ThroughputTrace]:
    n_files, median_s, mean, lo, hi = sets[key]
    traces = load_traces(spec, "throughput")
    assert len(traces) == n_files, f"{key}: expected {n_files} files"
    spans = [float(t.times_s[-1] - t.times_s[0]) for t in traces]
    assert abs(float(np.median(spans)) - median_s) <= 1.0, f"{key}: median duration"
    per_file = np.array(
        [t.mean_throughput_mbps if weighted else t.sample_mean_mbps for t in traces]
    )
    # The README's table rounds to two decimals: allow that rounding (or 1 %).
    for got, want in ((per_file.mean(), mean), (per_file.min(), lo), (per_file.max(), hi)):
        assert abs(float(got) - want) <= max(0.005, 0.01 * want), (key, float(got), want)
    for t in traces:  # one loop's worth of bytes from t=0 takes at most one period
        per_loop = t.mean_throughput_mbps * 125.0 * t.period_ms
        got = float(t.transfer_time_ms(np.zeros(1), np.array([per_loop]))[0])
        assert 0 < got <= t.period_ms * (1 + 1e-9), t.name
        if t.mbps[-1] > 0:
            assert got == pytest.approx(t.period_ms, rel=1e-9), t.name
    return traces


@_needs(LUMOS)
def test_real_lumos5g_walking_matches_readme_table() -> None:
    sets = _set_table(LUMOS / "README.md")
    # time-weighted means reproduce the table (1 s steps: weighted ~= unweighted)
    t4 = _check_set(sets, "4G walking", str(LUMOS / "lumos5g_4g" / "*walking*"), weighted=True)
    _check_set(sets, "5G walking", str(LUMOS / "lumos5g_5g" / "*walking*"), weighted=True)
    # some 4G files repeat a timestamp once; they load (the repeated sample lasts 0 s)
    repeated = [t.name for t in t4 if np.any(np.diff(t.times_s) == 0)]
    assert repeated, "expected the known repeated timestamps in the 4G walking set"


@_needs(PENSIEVE)
def test_real_pensieve_norway_and_fcc() -> None:
    sets = _set_table(PENSIEVE / "README.md")
    norway = PENSIEVE / "norway_hsdpa"
    specs = {
        "Norway test (bus, car, train, tram)": norway / "cooked_test_traces",
        "Norway logs (bus, car, train, tram)": norway / "cooked_traces",
        "FCC": PENSIEVE / "fcc" / "cooked_traces",
    }
    assert set(specs) <= set(sets), f"README set names changed: {sorted(sets)}"
    loaded = {}
    for key, spec in specs.items():
        # the README summarises unweighted per-file sample means
        loaded[key] = _check_set(sets, key, spec, weighted=False)
        assert all(t.mean_throughput_mbps > 0 for t in loaded[key])
    # Norway test traces are sampled irregularly (0.16-19 s) and long gaps have low
    # throughput, so the time-weighted mean is well below the sample mean of the README
    test_set = loaded["Norway test (bus, car, train, tram)"]
    weighted = np.mean([t.mean_throughput_mbps for t in test_set])
    unweighted = np.mean([t.sample_mean_mbps for t in test_set])
    assert weighted < 0.95 * unweighted, (weighted, unweighted)


# --------------------------------------------------------------------------- segments, capacity


def _looped_opportunities(opp: list[int], period: int, t0: float, t1: float) -> int:
    """Slow reference: opportunities of the looped trace at times in (t0, t1]."""
    count = 0
    for loop in range(math.floor(t0 / period) - 1, math.floor(t1 / period) + 2):
        count += sum(1 for o in opp if t0 < loop * period + o <= t1)
    return count


@settings(max_examples=200, deadline=None)
@given(
    opp=_opps,
    t0_8=st.integers(-1600, 2400),
    length_8=st.integers(0, 1200),
)
def test_mahimahi_cumulative_bytes_counts_opportunities(
    opp: list[int], t0_8: int, length_8: int
) -> None:
    t0, length = t0_8 / 8, length_8 / 8  # eighths of a ms: exact in float64
    trace = MahimahiTrace(Path("random.down"), np.array(opp, dtype=np.int64))
    got = trace.cumulative_bytes(t0 + length) - trace.cumulative_bytes(t0)
    assert got == 1500 * _looped_opportunities(opp, trace.period_ms, t0, t0 + length)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(
    trace_data=_throughput_traces(),
    start_frac=st.floats(0, 3),
    size_frac=st.floats(0.001, 2.5),
)
def test_throughput_cumulative_bytes_inverts_transfer_time(
    trace_data: tuple[list[float], list[float]], start_frac: float, size_frac: float
) -> None:
    times, mbps = trace_data
    try:
        trace = ThroughputTrace(Path("random.tp"), np.array(times), np.array(mbps))
    except TraceError:
        assume(False)
        return
    per_loop = trace.mean_throughput_mbps * 125.0 * trace.period_ms
    start, size = start_frac * trace.period_ms, size_frac * per_loop
    done = start + float(trace.transfer_time_ms(start, size))
    delivered = trace.cumulative_bytes(done) - trace.cumulative_bytes(start)
    assert delivered == pytest.approx(size, rel=1e-6, abs=1e-6)


@settings(max_examples=200, deadline=None)
@given(
    opp=st.lists(st.integers(0, 60), min_size=2, max_size=30).map(sorted),
    cut=st.tuples(st.floats(0, 1), st.floats(0, 1)),
    start=st.floats(0, 400, allow_nan=False),
    size=st.integers(0, 40_000),
)
def test_mahimahi_segment_is_the_range_looped_on_its_own(
    opp: list[int], cut: tuple[float, float], start: float, size: int
) -> None:
    trace = MahimahiTrace(Path("random.down"), np.array(opp, dtype=np.int64))
    period = trace.period_ms
    s0, s1 = sorted(round(c * period) for c in cut)
    inside = sorted(o - s0 for o in (period if o == 0 else o for o in opp) if s0 < o <= s1)
    assume(s0 < s1 and inside)
    seg = trace.segment(s0, s1)
    assert seg.period_ms == s1 - s0
    # reference: the opportunities of the range, looped with the range's length
    packets = max(1, math.ceil(size / 1500))
    times = (loop * (s1 - s0) + o for loop in range(10**6) for o in inside)
    usable = (t for t in times if t >= start)
    for _ in range(packets - 1):
        next(usable)
    assert float(seg.transfer_time_ms(start, size)) == next(usable) - start


def test_throughput_segment_hand_computed(tmp_path: Path) -> None:
    # 8, 16, 8, 32 Mbit/s (1000, 2000, 1000, 4000 B/ms) for 1 s each
    trace = ThroughputTrace.load(_write(tmp_path, "steps", "0 8\n1 16\n2 8\n3 32\n"))
    seg = trace.segment(1500.0, 3250.0)  # 500 ms at 2000, 1000 ms at 1000, 250 ms at 4000
    assert seg.period_ms == 1750.0 and seg.path == trace.path
    assert seg.mean_throughput_mbps == pytest.approx((500 * 16 + 1000 * 8 + 250 * 32) / 1750)
    # from 1500 (= trace time 3000): 250 ms at 4000 = 1e6 B, then the segment's start: 2000 B/ms
    np.testing.assert_allclose(seg.transfer_time_ms(1500.0, 2_000_000.0), 250.0 + 500.0)
    np.testing.assert_allclose(seg.cumulative_bytes(1750.0), 1_000_000 + 1_000_000 + 1_000_000)
    for bad in ((-1.0, 100.0), (100.0, 100.0), (0.0, 4000.5), (float("nan"), 10.0)):
        with pytest.raises(TraceError, match=r"steps: segment .* within one loop"):
            trace.segment(*bad)
