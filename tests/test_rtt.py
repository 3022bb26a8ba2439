"""The server's TCP view of a connection's RTT (``srtt_ms``, ``rttvar_ms``; feature schema v2):
RFC 6298's estimators over the RTTs of each request's upload, never anything later."""

from __future__ import annotations

import numpy as np
import pytest

from modi.envs.catalog import load_preset
from modi.envs.links import LinkModel
from modi.envs.networks import BlockContext, GaussianOneWay
from modi.envs.rtt import SmoothedRtt, fold_sample, upload_samples
from modi.envs.simulator import ModelSelectionSim
from modi.runtime import features as F


class ShiftedLink(LinkModel):
    """A link whose RTT after stream time ``after_ms`` is ``factor`` times larger (upload and
    download): what comes after a request's arrival must not change its observation."""

    def __init__(self, after_ms: float, factor: float) -> None:
        super().__init__(rtt_ms=40.0, uplink_mbps=20.0, downlink_mbps=20.0, rtt_cv=0.3)
        self.after_ms, self.factor = after_ms, factor

    def sample(self, rng: np.random.Generator, ctx: BlockContext) -> tuple[np.ndarray, np.ndarray]:
        t_in, t_out = super().sample(rng, ctx)
        late = np.asarray(ctx.time_ms) > self.after_ms
        half = 0.5 * self.upload_rtt_ms
        t_in = np.where(late, t_in + (self.factor - 1) * half, t_in)
        t_out = np.where(late, t_out + (self.factor - 1) * half, t_out)
        self.upload_rtt_ms = np.where(late, self.upload_rtt_ms * self.factor, self.upload_rtt_ms)
        return t_in, t_out


def _observations(net: LinkModel, n: int = 600, num_envs: int = 3) -> np.ndarray:
    sim = ModelSelectionSim(
        load_preset("pool", "modipick_table2"), net, num_envs=num_envs, num_clients=4
    )
    sim.reset(7)
    out = []
    for _ in range(n):
        out.append(sim.obs.copy())
        sim.step(np.zeros(num_envs, dtype=np.intp))
    return np.stack(out)


@pytest.mark.parametrize("num_envs", [1, 3])
def test_srtt_uses_only_uploads_that_finished_before_the_request_arrived(num_envs: int) -> None:
    """Tripling the RTT from 10 s of stream time on changes no observation of a request that
    arrived before then, and does change later ones."""
    base = _observations(ShiftedLink(1e12, 1.0), num_envs=num_envs)
    shifted = _observations(ShiftedLink(10_000.0, 3.0), num_envs=num_envs)
    sim = ModelSelectionSim(
        load_preset("pool", "modipick_table2"),
        ShiftedLink(1e12, 1.0),
        num_envs=num_envs,
        num_clients=4,
    )
    sim.reset(7)
    arrival = []
    for _ in range(base.shape[0]):
        arrival.append(sim.current_state()["decision_ms"].copy())
        sim.step(np.zeros(num_envs, dtype=np.intp))
    before = np.stack(arrival) < 10_000.0
    assert before.any() and (~before).any()
    np.testing.assert_array_equal(base[before], shifted[before])
    late_srtt = shifted[~before][:, F.SRTT] / base[~before][:, F.SRTT]
    assert np.median(late_srtt) > 2.0  # the estimate follows the new RTT


def test_srtt_tracks_the_link_and_rttvar_its_spread() -> None:
    """On a link whose RTT never changes, srtt converges to it (noise ~10 % per sample, folded
    over the upload's round trips) and rttvar is small; on a varying link rttvar is larger."""
    steady = _observations(LinkModel(rtt_ms=50.0, uplink_mbps=20.0, downlink_mbps=20.0))
    late = steady[100:].reshape(-1, steady.shape[-1])
    assert np.median(late[:, F.SRTT]) == pytest.approx(50.0, rel=0.05)
    varying = _observations(
        LinkModel(rtt_ms=50.0, uplink_mbps=20.0, downlink_mbps=20.0, rtt_cv=0.8, correlation_ms=0.0)
    )[100:].reshape(-1, steady.shape[-1])
    assert np.median(varying[:, F.RTTVAR]) > 2 * np.median(late[:, F.RTTVAR])


def test_first_sample_of_a_connection_follows_rfc_6298() -> None:
    """First sample: srtt = r, rttvar = r / 2 (RFC 6298 (2.2)), up to the sample's noise."""
    est = SmoothedRtt(1, 2)
    rng = np.random.default_rng(0)
    s, v = est.update(
        rng, np.array([[0], [1]]), np.array([[80.0], [30.0]]), np.array([[40.0], [15.0]])
    )
    assert s[:, 0] == pytest.approx([80.0, 30.0], rel=0.5)
    np.testing.assert_allclose(v[:, 0], s[:, 0] / 2)


def test_papers_network_reports_the_round_trip_of_its_one_way_draw() -> None:
    net = GaussianOneWay(30.0, 5.0)
    rng = np.random.default_rng(1)
    net.reset(rng, 2, 1)
    ctx = BlockContext(
        np.zeros((4, 2), np.int64), np.zeros((4, 2)), np.ones((4, 2)), np.ones((4, 2))
    )
    t_in, _ = net.sample(rng, ctx)
    np.testing.assert_array_equal(net.upload_rtt_ms, 2 * t_in)


def test_a_network_without_upload_rtts_leaves_the_features_unknown() -> None:
    """A custom network model that does not report its upload RTTs: NaN (unknown), not 0."""

    class Bare:
        name = "bare"

        def reset(self, rng: np.random.Generator, num_envs: int, num_clients: int) -> None:
            pass

        def sample(
            self, rng: np.random.Generator, ctx: BlockContext
        ) -> tuple[np.ndarray, np.ndarray]:
            d = np.full(np.shape(ctx.client), 20.0)
            return d, d

    sim = ModelSelectionSim(load_preset("pool", "modipick_table2"), Bare(), num_envs=2)
    obs = sim.reset(0)
    assert np.isnan(obs[:, F.SRTT]).all() and np.isnan(obs[:, F.RTTVAR]).all()


def test_the_offload_envs_fold_is_smoothed_rtts_update_with_the_noise_given() -> None:
    """The elementwise fold (the offload env's: an upload's samples, then RFC 6298) and
    :class:`SmoothedRtt` agree sample by sample, from a connection's first upload on."""
    rng = np.random.default_rng(4)
    b, n = 30, 3
    rtt = rng.uniform(10.0, 200.0, (b, n))
    t_in = rng.uniform(5.0, 900.0, (b, n))
    z = rng.standard_normal((b, n))

    class Fixed:  # a generator that returns the given normals
        def standard_normal(self, shape: tuple[int, ...]) -> np.ndarray:
            assert shape == z.shape
            return z

    ref = SmoothedRtt(n, 1)
    srtt, rttvar = ref.update(Fixed(), np.zeros((b, n), dtype=np.int64), rtt, t_in)  # type: ignore[arg-type]
    s, v = np.full(n, np.nan), np.zeros(n)
    for j in range(b):
        s, v = fold_sample(s, v, *upload_samples(rtt[j], t_in[j], z[j]))
        np.testing.assert_allclose(s, srtt[j], rtol=1e-12)
        np.testing.assert_allclose(v, rttvar[j], rtol=1e-12)
