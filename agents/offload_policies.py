"""Device-side policies for ``modi/Offload-v0`` and their evaluation.

Every policy reads the device observation (:mod:`modi.runtime.device_features`, what the phone
knows at capture) and returns one action ``(preprocessing, placement, backup)`` per row:

* ``static_local`` — PieSlicer's static choice "preprocess on the device", then offload.
* ``static_remote`` — upload the raw image, preprocess in the cloud, offload.
* ``pieslicer`` — PieSlicer (ICPE'21): linear regressions of each part of the pre-execution
  time, fitted on simulated measurements (:meth:`PieSlicer.fit`), pick the faster location.
* ``prep_ceiling`` — the reference for PieSlicer's decision accuracy: the location with the lower
  *expected* pre-execution time given what the device knows at capture, computed from the
  simulator's own laws (:class:`PrepCeiling`; it knows the model, never this request's draws).
* ``on_device`` — always local: the most accurate on-device model whose expected time fits the
  SLA (profiled preprocessing + load if not in memory + μ + σ), the fastest if none does.
* ``deepdecision`` — DeepDecision-style rule: offload (preprocessed) when the expected network
  latency is below ``threshold_ms`` (100 ms: "when latency < 100 ms, should offload"), else
  run locally as ``on_device``.
* ``modipick`` — offload with on-device preprocessing and no backup (ModiPick alone on the
  server; the same action as ``static_local``, named for the backup comparison).
* ``modipick_backup`` — the same with the on-device backup on.
* ``mdinference`` — offload with the backup on, and MDInference's μ+σ rule on the server.
* ``oracle`` — clairvoyant: the joint action with the best realised reward (ties: less energy,
  then lower latency). It is myopic (it ignores what a model load does to later requests), and
  clairvoyant over the *device's* action only: the server side is the env's server policy
  (ModiPick), so it bounds the policies that run with that server policy.
* ``oracle_mdinference`` — the same with MDInference's server rule: the bound of
  ``mdinference``, whose server side can beat ModiPick's (up to 1.7 points of effective
  accuracy in the default comparison).

A policy may name the server policy it needs (``server_policy``); the comparison builds the env's
server side from it (default ModiPick).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from modi.envs.images import INPUT_MEGAPIXELS
from modi.envs.links import LinkModel
from modi.envs.networks import GaussianOneWay
from modi.envs.offload import (
    ANSWER_BACKUP,
    ANSWER_LOCAL,
    ANSWER_REMOTE,
    INFO_KEYS,
    PREP_DEVICE,
    PREP_SERVER,
    OffloadSim,
)
from modi.envs.traces import BYTES_PER_MS_PER_MBPS
from modi.runtime import device_features as dfeat

log = logging.getLogger(__name__)

DeviceObs = NDArray[np.float32]
DeviceActions = NDArray[np.int64]


@runtime_checkable
class DevicePolicy(Protocol):
    """Batched device decision: observations ``(N, D)`` in, actions ``(N, 3)`` out."""

    name: str

    def reset(self, num_envs: int, seed: int | None = None) -> None:
        """Prepare for ``num_envs`` devices."""

    def select(self, obs: DeviceObs) -> DeviceActions:
        """One ``(preprocessing, placement, backup)`` action per row."""
        ...


@dataclass(frozen=True)
class Counterfactual:
    """Realised outcome of every joint action for the current requests (privileged)."""

    actions: NDArray[np.int64]  # (A, 3)
    reward: NDArray[np.float64]  # (N, A)
    energy_mj: NDArray[np.float64]  # (N, A)
    e2e_ms: NDArray[np.float64]  # (N, A)


@runtime_checkable
class ClairvoyantDevicePolicy(Protocol):
    """A device policy that sees the realised outcome of every action (the oracle)."""

    name: str

    def reset(self, num_envs: int, seed: int | None = None) -> None:
        """Prepare for ``num_envs`` devices."""

    def select_clairvoyant(self, obs: DeviceObs, cf: Counterfactual) -> DeviceActions:
        """Choose knowing every action's outcome."""
        ...


class _Base:
    name = "base"
    #: Server policy this device policy is meant to run with (None: the env's default).
    server_policy: str | None = None

    def __init__(self) -> None:
        self._layout: dfeat.DeviceObsLayout | None = None

    def reset(self, num_envs: int, seed: int | None = None) -> None:
        """Nothing to reset (deterministic rules)."""

    def _split(self, obs: DeviceObs) -> tuple[NDArray[Any], NDArray[Any]]:
        obs = np.atleast_2d(obs)
        if self._layout is None or self._layout.dim != obs.shape[1]:
            self._layout = dfeat.DeviceObsLayout.from_obs_dim(obs.shape[1])
        return self._layout.request(obs), self._layout.models(obs)

    def _actions(self, n: int, prep: Any, placement: Any, backup: Any) -> DeviceActions:
        out = np.empty((n, 3), dtype=np.int64)
        out[:, 0] = prep
        out[:, 1] = placement
        out[:, 2] = backup
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class StaticOffload(_Base):
    """Always offload with a fixed preprocessing location and backup setting."""

    def __init__(self, name: str, prep: int, backup: bool = False, server: str | None = None):
        super().__init__()
        self.name = name
        self.prep = int(prep)
        self.backup = int(bool(backup))
        self.server_policy = server

    def select(self, obs: DeviceObs) -> DeviceActions:
        """The fixed action for every row."""
        req, models = self._split(obs)
        return self._actions(req.shape[0], self.prep, models.shape[1], self.backup)


def _local_choice(
    req: NDArray[Any], models: NDArray[Any], margin_sigma: float = 1.0
) -> NDArray[Any]:
    """Most accurate on-device model whose expected latency (profiled preprocessing + load if
    not in memory + μ + margin·σ) fits the SLA; the one with the lowest expected latency if none."""
    load = np.where(models[:, :, dfeat.LOADED] > 0, 0.0, models[:, :, dfeat.LOAD])
    expect = (
        req[:, dfeat.PREP_EST : dfeat.PREP_EST + 1]
        + load
        + models[:, :, dfeat.MU]
        + margin_sigma * models[:, :, dfeat.SIGMA]
    )
    ok = expect <= req[:, dfeat.SLA : dfeat.SLA + 1]
    score = np.where(ok, models[:, :, dfeat.ACC], -np.inf)
    best = score.max(axis=1, keepdims=True)
    pick = np.where(score == best, expect, np.inf).argmin(axis=1)
    return np.where(ok.any(axis=1), pick, expect.argmin(axis=1))


class OnDevice(_Base):
    """Run every request on the device (see :func:`_local_choice`)."""

    name = "on_device"

    def __init__(self, margin_sigma: float = 1.0) -> None:
        super().__init__()
        if margin_sigma < 0:
            raise ValueError(f"on_device.margin_sigma must be >= 0, got {margin_sigma}")
        self.margin_sigma = float(margin_sigma)

    def select(self, obs: DeviceObs) -> DeviceActions:
        """Local model per row."""
        req, models = self._split(obs)
        return self._actions(
            req.shape[0], PREP_DEVICE, _local_choice(req, models, self.margin_sigma), 0
        )


class DeepDecision(_Base):
    """Offload (preprocessed) when the expected network latency is below ``threshold_ms``.

    Expected network latency = one-way latency up + upload of a ``payload_kb`` payload at the
    measured uplink bandwidth + one-way latency down, all from the device's measurements.
    Otherwise run locally like :class:`OnDevice`.
    """

    name = "deepdecision"

    def __init__(self, threshold_ms: float = 100.0, payload_kb: float = 20.0) -> None:
        super().__init__()
        if threshold_ms < 0 or payload_kb <= 0:
            raise ValueError(
                "deepdecision.threshold_ms must be >= 0 and payload_kb > 0, got "
                f"{threshold_ms} and {payload_kb}"
            )
        self.threshold_ms = float(threshold_ms)
        self.payload_kb = float(payload_kb)

    def expected_network_ms(self, obs: DeviceObs) -> NDArray[np.float64]:
        """The rule's estimate of the network part of an offloaded request, per row."""
        req, _ = self._split(obs)
        lat = req[:, dfeat.NET_LATENCY].astype(np.float64)
        bw = np.maximum(req[:, dfeat.NET_UPLINK].astype(np.float64), 1e-6)
        return 2.0 * lat + 8.0 * self.payload_kb / bw

    def select(self, obs: DeviceObs) -> DeviceActions:
        """Offload or run locally, per row."""
        req, models = self._split(obs)
        offload = self.expected_network_ms(obs) < self.threshold_ms
        placement = np.where(offload, models.shape[1], _local_choice(req, models))
        return self._actions(req.shape[0], PREP_DEVICE, placement, 0)


@dataclass
class PreexecMeasurements:
    """What a device logs about its offloaded requests (PieSlicer's training data), 1-D arrays:
    features known at capture and the measured parts of the pre-execution time."""

    megapixels: NDArray[np.float64]
    raw_mb: NDArray[np.float64]
    net_latency_ms: NDArray[np.float64]
    net_uplink_mbps: NDArray[np.float64]
    net_uplink_last_mbps: NDArray[np.float64]
    net_age_ms: NDArray[np.float64]
    prep: NDArray[np.int64]
    sent_mb: NDArray[np.float64]
    device_prep_ms: NDArray[np.float64]
    t_input_ms: NDArray[np.float64]
    server_prep_ms: NDArray[np.float64]

    def __len__(self) -> int:
        return int(self.megapixels.size)


class RandomPrep(_Base):
    """Offload with a uniformly random preprocessing location (the measurement campaign)."""

    name = "random_prep"

    def __init__(self) -> None:
        super().__init__()
        self._rng = np.random.default_rng()

    def reset(self, num_envs: int, seed: int | Sequence[int] | None = None) -> None:
        """Reseed."""
        self._rng = np.random.default_rng(seed)

    def select(self, obs: DeviceObs) -> DeviceActions:
        """Random location, offload, no backup."""
        req, models = self._split(obs)
        n = req.shape[0]
        return self._actions(n, self._rng.integers(0, 2, size=n), models.shape[1], 0)


def collect_measurements(
    sim: OffloadSim, requests: int, seed: int | Sequence[int]
) -> PreexecMeasurements:
    """Run a measurement campaign of at least ``requests`` offloaded requests with random
    preprocessing locations on ``sim`` (reset with ``seed``) and log what the device measures."""
    policy = RandomPrep()
    policy.reset(sim.num_envs, seed)
    obs = sim.reset(seed)
    steps = max(1, -(-requests // sim.num_envs))
    cols: dict[str, list[NDArray[Any]]] = {k: [] for k in PreexecMeasurements.__dataclass_fields__}
    for _ in range(steps):
        req = obs[:, : dfeat.R].astype(np.float64)
        a = policy.select(obs)
        o = sim.step(a)
        cols["megapixels"].append(req[:, dfeat.MEGAPIXELS])
        cols["raw_mb"].append(req[:, dfeat.RAW_KB] / 1e3)
        cols["net_latency_ms"].append(req[:, dfeat.NET_LATENCY])
        cols["net_uplink_mbps"].append(req[:, dfeat.NET_UPLINK])
        cols["net_uplink_last_mbps"].append(req[:, dfeat.NET_UPLINK_LAST])
        cols["net_age_ms"].append(req[:, dfeat.NET_AGE])
        cols["prep"].append(o.prep)
        cols["sent_mb"].append(o.bytes_sent / 1e6)
        cols["device_prep_ms"].append(o.device_prep_ms)
        cols["t_input_ms"].append(o.t_input_ms)
        cols["server_prep_ms"].append(o.server_prep_ms)
        obs = sim.obs
    return PreexecMeasurements(**{k: np.concatenate(v) for k, v in cols.items()})


@dataclass
class PieSlicerFit:
    """Coefficients of PieSlicer's linear models (ms), fitted by least squares."""

    device_prep: NDArray[np.float64]  # on [1, MP, raw MB]
    server_prep_raw: NDArray[np.float64]  # on [1, MP, raw MB]
    server_prep_pre_ms: float  # mean in-cloud time of an already preprocessed payload
    upload: NDArray[np.float64]  # on PieSlicer.upload_features(...) (see there)
    pre_mb: float  # mean size of the preprocessed payload
    use_network_features: bool
    bandwidth: str = "last"
    n_device: int = 0
    n_server: int = 0
    residual_ms: dict[str, float] = field(default_factory=dict)


def _lstsq(x: NDArray[np.float64], y: NDArray[np.float64]) -> NDArray[np.float64]:
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    return np.asarray(coef, dtype=np.float64)


#: Bandwidth estimates PieSlicer's upload model can use (see :class:`PieSlicer`).
PIESLICER_BANDWIDTH = ("last", "ewma")


class PieSlicer(_Base):
    """PieSlicer's preprocessing-location rule: predict the pre-execution time of both
    locations with linear regressions, choose the faster; always offload, no backup.

    Models (least squares on a device's own measurements, one fit per device × network as in
    the paper):

    * device preprocessing ``~ 1 + MP + raw MB``;
    * in-cloud preprocessing of the raw image ``~ 1 + MP + raw MB`` (the server reports it);
    * upload time, pooled over raw and preprocessed payloads, with the device's network
      estimates (``use_network_features``; else ``~ 1 + MB`` like the paper's size-only
      features). ``bandwidth="last"`` (default): the most recent bandwidth measurement ``b``
      and its age ``a`` (s), ``~ 1 + MB + MB/b + MB/b·a + MB·a + latency`` — this request's
      bandwidth regresses from ``b`` towards the link's mean the older ``b`` is, and the
      age terms let the fit learn that. ``bandwidth="ewma"``: the EWMA of past measurements,
      ``~ 1 + MB + MB/EWMA + latency`` (the first version; it mixes in stale measurements and
      decides worse on fast, variable links);
    * the preprocessed payload's size: its mean.

    Predicted pre-execution: device ``= prep(MP) + upload(pre MB) + in-cloud(pre)``, server
    ``= upload(raw MB) + in-cloud(MP)``. ``margin_ms`` (tuned on validation; default 0, the
    paper's rule): preprocess on the device while its prediction is at most the server's +
    ``margin_ms`` (a positive margin favours the small upload, a negative one the raw image).
    """

    name = "pieslicer"

    def __init__(
        self,
        use_network_features: bool = True,
        fit_requests: int = 2000,
        bandwidth: str = "last",
        margin_ms: float = 0.0,
    ) -> None:
        super().__init__()
        if not np.isfinite(margin_ms):
            raise ValueError(f"pieslicer.margin_ms must be a finite number, got {margin_ms!r}")
        self.margin_ms = float(margin_ms)
        if fit_requests < 10:
            raise ValueError(f"pieslicer.fit_requests must be >= 10, got {fit_requests}")
        if bandwidth not in PIESLICER_BANDWIDTH:
            raise ValueError(
                f"pieslicer.bandwidth must be one of {list(PIESLICER_BANDWIDTH)}, got {bandwidth!r}"
            )
        self.use_network_features = bool(use_network_features)
        self.fit_requests = int(fit_requests)
        self.bandwidth = bandwidth
        self.coef: PieSlicerFit | None = None

    def upload_features(
        self,
        mb: NDArray[Any],
        bw: NDArray[Any],
        lat: NDArray[Any],
        age_ms: NDArray[Any] | None = None,
    ) -> NDArray[np.float64]:
        """Regressors of the upload time ``(..., F)`` for payloads of ``mb`` MB, bandwidth
        estimate ``bw`` (Mbit/s: the last measurement or the EWMA, per ``bandwidth``), latency
        estimate ``lat`` (ms) and the measurement's age (ms; ``None``: 0)."""
        mb = np.asarray(mb, dtype=np.float64)
        one = np.ones_like(mb)
        if not self.use_network_features:
            return np.stack([one, mb], axis=-1)
        inv = mb / np.maximum(np.asarray(bw, dtype=np.float64), 1e-3)
        lat = np.broadcast_to(np.asarray(lat, dtype=np.float64), mb.shape)
        if self.bandwidth == "ewma":
            return np.stack([one, mb, inv, lat], axis=-1)
        age_s = np.zeros_like(mb) if age_ms is None else np.asarray(age_ms, dtype=np.float64) / 1e3
        return np.stack([one, mb, inv, inv * age_s, mb * age_s, lat], axis=-1)

    def _net(self, uplink_ewma: NDArray[Any], uplink_last: NDArray[Any]) -> NDArray[Any]:
        return uplink_last if self.bandwidth == "last" else uplink_ewma

    def fit_measurements(self, m: PreexecMeasurements) -> PieSlicerFit:
        """Fit the regressions on logged measurements (both locations must be present)."""
        dev = m.prep == PREP_DEVICE
        srv = m.prep == PREP_SERVER
        if dev.sum() < 3 or srv.sum() < 3:
            raise ValueError(
                "PieSlicer needs measurements of both preprocessing locations (at least 3 each); "
                f"got {int(dev.sum())} on the device and {int(srv.sum())} on the server"
            )
        size_x = np.stack([np.ones(len(m)), m.megapixels, m.raw_mb], axis=-1)
        bw = self._net(m.net_uplink_mbps, m.net_uplink_last_mbps)
        up_x = self.upload_features(m.sent_mb, bw, m.net_latency_ms, m.net_age_ms)
        c_dp = _lstsq(size_x[dev], m.device_prep_ms[dev])
        c_sp = _lstsq(size_x[srv], m.server_prep_ms[srv])
        c_up = _lstsq(up_x, m.t_input_ms)
        fit = PieSlicerFit(
            device_prep=c_dp,
            server_prep_raw=c_sp,
            server_prep_pre_ms=float(m.server_prep_ms[dev].mean()),
            upload=c_up,
            pre_mb=float(m.sent_mb[dev].mean()),
            use_network_features=self.use_network_features,
            bandwidth=self.bandwidth,
            n_device=int(dev.sum()),
            n_server=int(srv.sum()),
            residual_ms={
                "device_prep": float(np.std(size_x[dev] @ c_dp - m.device_prep_ms[dev])),
                "server_prep": float(np.std(size_x[srv] @ c_sp - m.server_prep_ms[srv])),
                "upload": float(np.std(up_x @ c_up - m.t_input_ms)),
            },
        )
        self.coef = fit
        log.info(
            "PieSlicer fitted on %d + %d measurements; residual std (ms): %s",
            fit.n_device,
            fit.n_server,
            {k: round(v, 1) for k, v in fit.residual_ms.items()},
        )
        return fit

    def fit(
        self, sim: OffloadSim, seed: int | Sequence[int], requests: int | None = None
    ) -> PieSlicerFit:
        """Collect ``requests`` (default ``fit_requests``) measurements on ``sim`` with random
        preprocessing locations (seed ``seed``; use a seed other than the evaluation's) and fit."""
        return self.fit_measurements(collect_measurements(sim, requests or self.fit_requests, seed))

    def predict_preexec_ms(self, obs: DeviceObs) -> NDArray[np.float64]:
        """Predicted pre-execution time ``(N, 2)``: device, server preprocessing."""
        if self.coef is None:
            raise RuntimeError("PieSlicer is not fitted: call fit(sim, seed) or fit_measurements()")
        c = self.coef
        req, _ = self._split(obs)
        req = req.astype(np.float64)
        mp, raw_mb = req[:, dfeat.MEGAPIXELS], req[:, dfeat.RAW_KB] / 1e3
        bw = self._net(req[:, dfeat.NET_UPLINK], req[:, dfeat.NET_UPLINK_LAST])
        lat, age = req[:, dfeat.NET_LATENCY], req[:, dfeat.NET_AGE]
        size_x = np.stack([np.ones_like(mp), mp, raw_mb], axis=-1)
        dev = (
            size_x @ c.device_prep
            + self.upload_features(np.full_like(mp, c.pre_mb), bw, lat, age) @ c.upload
            + c.server_prep_pre_ms
        )
        srv = self.upload_features(raw_mb, bw, lat, age) @ c.upload + size_x @ c.server_prep_raw
        return np.stack([dev, srv], axis=1)

    def select(self, obs: DeviceObs) -> DeviceActions:
        """The location with the lower predicted pre-execution time; offload; no backup."""
        pred = self.predict_preexec_ms(obs)
        req, models = self._split(obs)
        prep = np.where(pred[:, 0] <= pred[:, 1] + self.margin_ms, PREP_DEVICE, PREP_SERVER)
        return self._actions(req.shape[0], prep, models.shape[1], 0)


class PrepCeiling(_Base):
    """The ceiling of PieSlicer's decision: the location with the lower *expected*
    pre-execution time given exactly what the device knows at capture, with the expectations
    taken under the simulator's own laws (bound with :meth:`bind`). Always offload, no backup.

    It knows the model, not the draws: image size and megapixels, the tier's preprocessing law
    (mean ``intercept + ms_per_mp·MP``), the server's, the preprocessed payload's mean size, and
    for a :class:`~modi.envs.links.LinkModel` this request's expected inverse uplink given the
    device's most recent bandwidth measurement and its age
    (:meth:`~modi.envs.links.LinkModel.expected_inverse_uplink`; on such a link that
    measurement is a sufficient statistic of the past). The round-trip term is the same for
    both locations and enters at its mean. On the papers' Gaussian network the upload does not
    depend on the payload and cancels. Other networks (traces) have no closed form: ``bind``
    refuses them.
    """

    name = "prep_ceiling"

    def __init__(self) -> None:
        super().__init__()
        self._sim: OffloadSim | None = None

    def bind(self, sim: OffloadSim) -> PrepCeiling:
        """Use ``sim``'s device, server preprocessing, images and network laws."""
        if not isinstance(sim.network, (LinkModel, GaussianOneWay)):
            raise ValueError(
                f"prep_ceiling needs a LinkModel or GaussianOneWay network, got "
                f"{type(sim.network).__name__} ({getattr(sim.network, 'name', '?')})"
            )
        self._sim = sim
        return self

    def expected_preexec_ms(self, obs: DeviceObs) -> NDArray[np.float64]:
        """Expected pre-execution time ``(N, 2)`` (device, server preprocessing) given the
        observation."""
        if self._sim is None:
            raise RuntimeError("PrepCeiling is not bound: call bind(sim) first")
        sim = self._sim
        req, _ = self._split(obs)
        req = req.astype(np.float64)
        mp, raw = req[:, dfeat.MEGAPIXELS], req[:, dfeat.RAW_KB] * 1e3
        img = sim.images
        pre = img.preprocessed_kb * 1e3 * np.exp(img.preprocessed_sigma**2 / 2.0)
        dev = sim.device.preprocessing.mean_ms(mp) + float(
            sim.server_prep.mean_ms(INPUT_MEGAPIXELS)
        )
        srv = sim.server_prep.mean_ms(mp)
        net = sim.network
        if isinstance(net, LinkModel):
            inv = net.expected_inverse_uplink(req[:, dfeat.NET_UPLINK_LAST], req[:, dfeat.NET_AGE])
            half_rtt = net.rtt.mean / 2.0
            dev = dev + half_rtt + pre / BYTES_PER_MS_PER_MBPS * inv
            srv = srv + half_rtt + raw / BYTES_PER_MS_PER_MBPS * inv
        return np.stack([dev, srv], axis=1)

    def select(self, obs: DeviceObs) -> DeviceActions:
        """The location with the lower expected pre-execution time; offload; no backup."""
        e = self.expected_preexec_ms(obs)
        req, models = self._split(obs)
        prep = np.where(e[:, 0] <= e[:, 1], PREP_DEVICE, PREP_SERVER)
        return self._actions(req.shape[0], prep, models.shape[1], 0)


class DeviceOracle(_Base):
    """Clairvoyant upper bound (per request): the joint action with the highest realised reward;
    ties go to less energy, then lower latency. ``server`` names the server policy it runs with
    (None: the env's default); it bounds the device policies that share that server policy."""

    name = "oracle"

    def __init__(self, server: str | None = None, name: str = "oracle") -> None:
        super().__init__()
        self.name = name
        self.server_policy = server

    def select(self, obs: DeviceObs) -> DeviceActions:
        """An oracle cannot decide from the observation alone."""
        raise TypeError("the oracle needs realised outcomes: call select_clairvoyant(obs, cf)")

    def select_clairvoyant(self, obs: DeviceObs, cf: Counterfactual) -> DeviceActions:
        """Best realised action per row."""
        r = cf.reward
        best = r.max(axis=1, keepdims=True)
        top = np.isclose(r, best, rtol=0.0, atol=1e-12)
        energy = np.where(top, cf.energy_mj, np.inf)
        e_best = energy.min(axis=1, keepdims=True)
        top &= np.isclose(energy, e_best, rtol=1e-9, atol=1e-9)
        pick = np.where(top, cf.e2e_ms, np.inf).argmin(axis=1)
        return cf.actions[pick].copy()


DEVICE_POLICY_NAMES: tuple[str, ...] = (
    "static_local",
    "static_remote",
    "pieslicer",
    "prep_ceiling",
    "on_device",
    "deepdecision",
    "modipick",
    "modipick_backup",
    "mdinference",
    "oracle",
    "oracle_mdinference",
)


def make_device_policy(name: str, **kwargs: Any) -> DevicePolicy | ClairvoyantDevicePolicy:
    """Build a device policy by name; ``kwargs`` go to its constructor."""
    if name == "static_local":
        return StaticOffload(name, PREP_DEVICE, **kwargs)
    if name == "static_remote":
        return StaticOffload(name, PREP_SERVER, **kwargs)
    if name == "modipick":
        return StaticOffload(name, PREP_DEVICE, backup=False, server="modipick", **kwargs)
    if name == "modipick_backup":
        return StaticOffload(name, PREP_DEVICE, backup=True, server="modipick", **kwargs)
    if name == "mdinference":
        return StaticOffload(name, PREP_DEVICE, backup=True, server="mdinference", **kwargs)
    if name == "pieslicer":
        return PieSlicer(**kwargs)
    if name == "prep_ceiling":
        return PrepCeiling(**kwargs)
    if name == "on_device":
        return OnDevice(**kwargs)
    if name == "deepdecision":
        return DeepDecision(**kwargs)
    if name == "oracle":
        return DeviceOracle(**kwargs)
    if name == "oracle_mdinference":
        return DeviceOracle(server="mdinference", name=name, **kwargs)
    raise ValueError(f"unknown device policy {name!r}; expected one of {list(DEVICE_POLICY_NAMES)}")


# ============================================================================ evaluation
@dataclass
class OffloadRollout:
    """Per-request outcomes of one device policy: ``fields[key]`` is ``(T, N)`` for every key of
    :data:`modi.envs.offload.INFO_KEYS`."""

    policy: str
    fields: dict[str, NDArray[Any]]

    def select_streams(self, cols: slice | NDArray[np.intp]) -> OffloadRollout:
        """The outcomes of a subset of streams (one sweep point)."""
        return OffloadRollout(self.policy, {k: v[:, cols] for k, v in self.fields.items()})

    def summary(self, num_local: int) -> dict[str, float]:
        """Attainment, effective accuracy, latency, pre-execution time, PieSlicer decision
        accuracy, energy and bytes, over all requests (fractions, ms, mJ, KB)."""
        f = {k: v.reshape(-1) for k, v in self.fields.items()}
        n = f["e2e_ms"].size
        off = f["placement"] >= num_local
        e2e = f["e2e_ms"]
        pre = f["preexec_ms"][off]
        cf_dev, cf_srv = f["cf_preexec_device_ms"][off], f["cf_preexec_server_ms"][off]
        chose_dev = f["prep"][off] == PREP_DEVICE
        chosen = np.where(chose_dev, cf_dev, cf_srv)
        other = np.where(chose_dev, cf_srv, cf_dev)
        regret = chosen - np.minimum(cf_dev, cf_srv)
        p50, p95, p99 = np.percentile(e2e, [50, 95, 99])
        out: dict[str, float] = {
            "n_requests": int(n),
            "attainment": float(f["met"].mean()),
            "effective_accuracy": float(f["accuracy"].mean()),
            "mean_reward": float(f["reward"].mean()),
            "latency_mean_ms": float(e2e.mean()),
            "latency_p50_ms": float(p50),
            "latency_p95_ms": float(p95),
            "latency_p99_ms": float(p99),
            "offload_fraction": float(off.mean()),
            "local_fraction": float(1.0 - off.mean()),
            "device_prep_fraction": float(chose_dev.mean()) if off.any() else float("nan"),
            "backup_fraction": float(f["backup"].mean()),
            "answered_remote": float((f["answered_by"] == ANSWER_REMOTE).mean()),
            "answered_backup": float((f["answered_by"] == ANSWER_BACKUP).mean()),
            "answered_local": float((f["answered_by"] == ANSWER_LOCAL).mean()),
            "preexec_p50_ms": float(np.percentile(pre, 50)) if pre.size else float("nan"),
            "preexec_p99_ms": float(np.percentile(pre, 99)) if pre.size else float("nan"),
            "prep_decision_accuracy": float((chosen <= other).mean()) if pre.size else float("nan"),
            "preexec_regret_ms": float(regret.mean()) if pre.size else float("nan"),
            "preexec_regret_p99_ms": float(np.percentile(regret, 99)) if pre.size else float("nan"),
            "energy_mj": float(f["energy_mj"].mean()),
            "compute_mj": float(f["compute_mj"].mean()),
            "radio_mj": float(f["radio_mj"].mean()),
            "kb_sent": float(f["bytes_sent"].mean() / 1e3),
        }
        return out


def rollout_offload(
    policy: DevicePolicy | ClairvoyantDevicePolicy,
    sim: OffloadSim,
    steps: int,
    seed: int | Sequence[int],
    policy_seed: int | None = None,
) -> OffloadRollout:
    """Reset ``sim`` with ``seed`` (an integer or a stream key, see
    :func:`modi.experiments.splits.stream_key`) and let ``policy`` handle ``steps`` captures
    per device. The policy's own randomness is seeded with ``policy_seed`` (default: derived
    from ``seed``)."""
    obs = sim.reset(seed)
    if policy_seed is None:
        policy_seed = (
            int(seed)
            if isinstance(seed, (int, np.integer))
            else int(np.random.SeedSequence(list(seed)).generate_state(1)[0])
        )
    policy.reset(sim.num_envs, policy_seed)
    clairvoyant = isinstance(policy, ClairvoyantDevicePolicy)
    acts = sim.all_actions()
    cols: dict[str, list[NDArray[Any]]] = {k: [] for k in INFO_KEYS}
    for _ in range(steps):
        if clairvoyant:
            rew, energy, e2e = sim.counterfactual_rewards()
            a = policy.select_clairvoyant(obs, Counterfactual(acts, rew, energy, e2e))  # type: ignore[union-attr]
        else:
            a = policy.select(obs)  # type: ignore[union-attr]
        o = sim.step(a)
        for k in INFO_KEYS:
            cols[k].append(getattr(o, k))
        obs = sim.obs
    return OffloadRollout(policy.name, {k: np.stack(v) for k, v in cols.items()})
