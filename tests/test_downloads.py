"""The client's own download history (``client_dl_ms``, ``client_dlvar_ms``; feature schema v3):
what a phone measured of its earlier responses, only those that had surely arrived when it sent
the request, whatever model served them."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from modi.envs.catalog import load_preset
from modi.envs.downloads import ClientDownloads, fold, fold_mismatch
from modi.envs.links import LinkModel
from modi.envs.networks import BlockContext
from modi.envs.simulator import ModelSelectionSim
from modi.runtime import features as F
from modi.runtime.features import CLIENT_MISMATCH_GAIN, client_mismatch_update, mismatch


def _sequential(downloads: list[float], dl: float = math.nan, var: float = math.nan) -> list:
    out = []
    for d in downloads:
        dl, var = F.client_dl_update(dl, var, d)
        out.append((dl, var))
    return out


def test_fold_is_the_runtime_definition() -> None:
    d = np.random.default_rng(0).exponential(60.0, 50)
    m, v = fold(math.nan, math.nan, d)
    want = np.array(_sequential(list(d)))
    np.testing.assert_allclose(np.c_[m, v], want, rtol=1e-12)
    assert (m[0], v[0]) == (d[0], d[0] / 2)  # RFC 6298's first sample
    m2, v2 = fold(m[19], v[19], d[20:])  # resuming from a state is the same sequence
    np.testing.assert_allclose(np.c_[m2, v2], want[20:], rtol=1e-12)


def test_block_folds_in_arrival_order_and_carries_responses_in_flight() -> None:
    """One client: sent at 0, 10, 20, 30 (block 1) and 40 (block 2); responses surely back
    at 25, 15, 100, 35 and 45 with downloads 1, 2, 3, 4, 5."""
    h = ClientDownloads(1, 1)
    col = np.array([[0.0], [10.0], [20.0], [30.0]])
    m, v, x = h.block(
        col, np.zeros((4, 1), np.int64), np.array([[25.0], [15.0], [100.0], [35.0]]),
        np.array([[1.0], [2.0], [3.0], [4.0]]), np.array([30.0]),
        upload_ms=np.array([[2.0], [2.0], [2.0], [2.0]]),
    )  # fmt: skip
    seq = _sequential([2.0, 1.0])  # known at 15, then at 25 (arrival order, not send order)
    assert np.isnan(m[0, 0]) and np.isnan(m[1, 0]) and np.isnan(v[1, 0])
    assert (m[2, 0], v[2, 0]) == pytest.approx(seq[0])
    assert (m[3, 0], v[3, 0]) == pytest.approx(seq[1])
    # the mismatch pairs each download with its own upload, in the same order: |ln 2/2| = 0
    # first, then |ln 1/2|
    mis = [math.nan]
    for d in (2.0, 1.0, 4.0):
        mis.append(client_mismatch_update(mis[-1], d, 2.0))
    assert np.isnan(x[0, 0]) and np.isnan(x[1, 0])
    assert (x[2, 0], x[3, 0]) == pytest.approx((0.0, mis[2]))
    m, v, x = h.block(
        np.array([[40.0]]), np.zeros((1, 1), np.int64), np.array([[45.0]]), np.array([[5.0]]),
        np.array([40.0]), upload_ms=np.array([[2.0]]),
    )  # fmt: skip
    # the response known at 35 (carried over the block boundary) counts, 45 and 100 do not
    assert (m[0, 0], v[0, 0]) == pytest.approx(_sequential([2.0, 1.0, 4.0])[-1])
    assert x[0, 0] == pytest.approx(mis[3])
    # without the uploads (a server that does not return t_input_ms) it stays unknown
    h.reset()
    assert np.isnan(h.block(col, np.zeros((4, 1), np.int64), col + 1.0, col + 1.0,
                            np.array([30.0]))[2]).all()  # fmt: skip


def test_mismatch_fold_matches_the_scalar_update() -> None:
    rng = np.random.default_rng(1)
    x = mismatch(rng.exponential(60.0, 40), rng.exponential(60.0, 40))
    want, cur = [], math.nan
    for v in x:
        cur = float(v) if math.isnan(cur) else cur + CLIENT_MISMATCH_GAIN * (v - cur)
        want.append(cur)
    np.testing.assert_allclose(fold_mismatch(math.nan, x), want, rtol=1e-12)
    np.testing.assert_allclose(fold_mismatch(want[9], x[10:]), want[10:], rtol=1e-12)
    # the scalar update the clients use agrees, and equal times give exactly 0
    assert client_mismatch_update(math.nan, 80.0, 80.0) == 0.0
    assert client_mismatch_update(0.0, 40.0, 80.0) == pytest.approx(
        CLIENT_MISMATCH_GAIN * math.log(2.0)
    )


def test_a_response_arriving_at_the_send_instant_is_not_yet_read() -> None:
    h = ClientDownloads(1, 1)
    m, _, _ = h.block(
        np.array([[0.0], [50.0]]), np.zeros((2, 1), np.int64), np.array([[50.0], [90.0]]),
        np.array([[7.0], [8.0]]), np.array([50.0]),
    )  # fmt: skip
    assert np.isnan(m[1, 0])


class SlowDownloadsAfter(LinkModel):
    """A link whose downloads of requests captured after ``after_ms`` take ``factor`` times
    longer (the upload, and so the TCP view, unchanged)."""

    def __init__(self, after_ms: float, factor: float) -> None:
        super().__init__(rtt_ms=40.0, uplink_mbps=20.0, downlink_mbps=20.0, rtt_cv=0.3)
        self.after_ms, self.factor = after_ms, factor

    def sample(self, rng: np.random.Generator, ctx: BlockContext) -> tuple[np.ndarray, np.ndarray]:
        t_in, t_out = super().sample(rng, ctx)
        late = np.asarray(ctx.time_ms) > self.after_ms
        return t_in, np.where(late, t_out * self.factor, t_out)


def _run(net: LinkModel, action: str, num_envs: int, n: int = 800, **kw: object) -> tuple:
    sim = ModelSelectionSim(
        load_preset("pool", "modipick_table2"), net, num_envs=num_envs, num_clients=4, **kw
    )  # type: ignore[arg-type]
    sim.reset(11)
    mean = sim.pool.mean_ms
    pick = int(np.argmin(mean) if action == "fastest" else np.argmax(mean))
    obs, capture = [], []
    for _ in range(n):
        st = sim.current_state()
        capture.append(st["decision_ms"] - st["t_input_ms"])
        obs.append(sim.obs[:, [F.CLIENT_DL, F.CLIENT_DLVAR, F.CLIENT_MISMATCH]].copy())
        sim.step(np.full(num_envs, pick, dtype=np.intp))
    return np.stack(obs), np.stack(capture)


@pytest.mark.parametrize("num_envs", [1, 3])
def test_history_holds_only_downloads_finished_before_the_request_was_sent(num_envs: int) -> None:
    """Downloads of requests captured after 10 s become 5x slower: no request sent by 10 s
    sees it; later requests do."""
    base, capture = _run(SlowDownloadsAfter(1e12, 1.0), "fastest", num_envs)
    slow, capture2 = _run(SlowDownloadsAfter(10_000.0, 5.0), "fastest", num_envs)
    np.testing.assert_array_equal(capture, capture2)
    early = capture <= 10_000.0
    assert early.sum() > 100 and (~early).sum() > 100
    np.testing.assert_array_equal(base[early], slow[early])
    late = capture > 12_000.0
    assert slow[late][:, 0].mean() > 3.0 * base[late][:, 0].mean()
    # the mismatch too (the uploads are the same, the downloads 5x longer: ln 5 closer to them)
    assert base[late][:, 2].mean() - slow[late][:, 2].mean() > 1.0


@pytest.mark.parametrize("queue", [None, 4])
def test_history_does_not_depend_on_the_policy(queue: int | None) -> None:
    """Common random numbers: the fastest and the slowest model everywhere see the same
    history (a response counts once it would have arrived whichever model ran)."""
    net = SlowDownloadsAfter(1e12, 1.0)
    a, _ = _run(net, "fastest", 2, n=400, queue_capacity=queue)
    b, _ = _run(net, "slowest", 2, n=400, queue_capacity=queue)
    np.testing.assert_array_equal(a, b)
    known = a[:, :, 0] != F.UNKNOWN_HISTORY
    assert not np.isnan(a).any()  # a Gymnasium observation: unknown is -1, not NaN
    assert known.mean() > 0.9  # after each client's first responses, the history is there
    assert np.all(a[known] > 0)


def test_mismatch_is_zero_exactly_where_each_download_takes_as_long_as_its_upload() -> None:
    """The papers' network (one draw for both directions): every known mismatch is 0; a link
    whose download differs from the upload: none is."""
    from modi.envs.networks import GaussianOneWay

    for net, zero in ((GaussianOneWay(40.0, 12.0), True), (SlowDownloadsAfter(1e12, 1.0), False)):
        sim = ModelSelectionSim(
            load_preset("pool", "modipick_table2"), net, num_envs=2, num_clients=4
        )
        sim.reset(5)
        seen = []
        for _ in range(300):
            seen.append(sim.obs[:, F.CLIENT_MISMATCH].copy())
            sim.step(np.zeros(2, dtype=np.intp))
        x = np.stack(seen)
        known = x >= 0.0
        assert known.mean() > 0.9 and np.all(x[~known] == F.UNKNOWN_HISTORY)
        assert np.all(x[known] == 0.0) if zero else np.all(x[known] > 0.05)


def test_history_tracks_the_download_time() -> None:
    obs, _ = _run(SlowDownloadsAfter(1e12, 1.0), "fastest", 2, n=1500)
    sim = ModelSelectionSim(
        load_preset("pool", "modipick_table2"), SlowDownloadsAfter(1e12, 1.0), num_envs=2,
        num_clients=4,
    )  # fmt: skip
    sim.reset(11)
    t_out = np.stack([sim.step(np.zeros(2, dtype=np.intp)).t_output_ms for _ in range(1500)])
    assert np.median(obs[200:, :, 0]) == pytest.approx(np.median(t_out), rel=0.15)


def test_a_policy_saved_for_an_older_schema_is_refused_with_what_changed(tmp_path: Path) -> None:
    import torch

    from modi.agents.bandits import NeuralBandit, load_learned

    path = NeuralBandit(hidden=4, layers=1).save(tmp_path / "policy.pt")
    st = torch.load(path, weights_only=False)
    st["schema_version"] = 2
    torch.save(st, path)
    with pytest.raises(ValueError, match=r"v2.*v3 added client_dl_ms, client_dlvar_ms"):
        load_learned(path)


def test_client_history_update_is_the_scalar_estimators_elementwise() -> None:
    """The array fold the offload env uses equals the runtime's scalar ones (what
    ``modi-client`` sends), from a client's first answer on."""
    rng = np.random.default_rng(7)
    n, steps = 5, 40
    m, v, x = np.full(n, np.nan), np.full(n, np.nan), np.full(n, np.nan)
    ref = [(math.nan, math.nan, math.nan)] * n
    for _ in range(steps):
        d = rng.lognormal(3.0, 1.0, n)
        u = rng.lognormal(3.0, 1.0, n)
        m, v, x = F.client_history_update(m, v, x, d, u)
        for k in range(n):
            dl, var = F.client_dl_update(ref[k][0], ref[k][1], float(d[k]))
            ref[k] = (dl, var, client_mismatch_update(ref[k][2], float(d[k]), float(u[k])))
        np.testing.assert_allclose(m, [r[0] for r in ref], rtol=1e-12)
        np.testing.assert_allclose(v, [r[1] for r in ref], rtol=1e-12)
        np.testing.assert_allclose(x, [r[2] for r in ref], rtol=1e-12)
