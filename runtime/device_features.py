"""Observation vectors for the *device's* decisions (``modi/Offload-v0``).

A separate schema from :mod:`modi.runtime.features` (the server's decision): the phone decides
at capture time, before anything is sent, so it knows only the SLA, the image it captured, its
own tier and profiles, and its own past network measurements (DESIGN.md §1). Never in this
vector: this request's upload or download time, and anything about the server's load.

One flat ``float32`` vector per request: a *request block* of :data:`DEVICE_REQUEST_FEATURES`
followed by ``L`` rows of :data:`DEVICE_MODEL_FEATURES`, one per on-device model (pool order).

Version 2 added ``net_uplink_last_mbps``, the most recent bandwidth measurement itself: on a
link whose bandwidth is a Markov process that measurement (with its age) says everything the
past says about this request's bandwidth, while the EWMA mixes in older ones. Version 3 added
``radio_active_w``, the active power of the radio the phone is on (WiFi or cellular, from its
power profile): an offload's radio energy is that power times the transfer time, which differs
tenfold between WiFi and LTE at the same bandwidth, so a scorer that cannot see the radio
mis-predicts the energy of every offload from the link's speed alone.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from numpy.typing import ArrayLike, NDArray

from modi.runtime.features import ObsLayout

SCHEMA_NAME = "modi.device_decision"
SCHEMA_VERSION = 3

#: Request block columns: (name, unit, description).
DEVICE_REQUEST_FEATURES: tuple[tuple[str, str, str], ...] = (
    ("sla_ms", "ms", "end-to-end latency SLA of the request"),
    ("megapixels", "MP", "resolution of the captured image"),
    ("raw_kb", "KB", "encoded size of the captured (raw) image"),
    ("prep_est_ms", "ms", "device's profiled estimate of preprocessing this image on itself"),
    ("tier_low", "flag", "1 if the device is a low-end phone"),
    ("tier_mid", "flag", "1 if the device is a mid-range phone"),
    ("tier_high", "flag", "1 if the device is a high-end phone"),
    ("net_latency_ms", "ms", "EWMA of one-way latency measured at the device's past requests"),
    ("net_uplink_mbps", "Mbit/s", "EWMA of uplink bandwidth measured at past requests"),
    ("net_uplink_std_mbps", "Mbit/s", "EW standard deviation of those uplink measurements"),
    ("net_age_ms", "ms", "time since the most recent of those measurements"),
    ("net_uplink_last_mbps", "Mbit/s", "uplink bandwidth of that most recent measurement"),
    (
        "radio_active_w",
        "W",
        "active power of the radio the device is on (its power profile: WiFi or cellular)",
    ),
)
#: On-device model rows: (name, unit, description).
DEVICE_MODEL_FEATURES: tuple[tuple[str, str, str], ...] = (
    ("mu_ms", "ms", "profiled mean inference time on this device"),
    ("sigma_ms", "ms", "profiled standard deviation of inference time on this device"),
    ("accuracy", "fraction", "top-1 accuracy of the model"),
    ("load_ms", "ms", "profiled mean time to load the model into memory"),
    ("loaded", "flag", "1 if the model is in memory now (no load needed)"),
    ("is_backup", "flag", "1 for the model that serves as the on-device backup"),
)

#: Active power (W) of each radio while transferring (Huang et al., MobiSys 2012: the beta
#: of their power models; :data:`modi.envs.devices.RADIO_PROFILES` prices the radio with it).
#: A phone reads its own from its power profile.
RADIO_ACTIVE_POWER_W: dict[str, float] = {"wifi": 0.13286, "lte": 1.28804, "3g": 0.81788}

#: EWMA weight of the device's network measurements.
DEVICE_NET_ALPHA = 0.5


def fold_measurement(
    lat_mean: ArrayLike,
    bw_mean: ArrayLike,
    bw_var: ArrayLike,
    lat: ArrayLike,
    bw: ArrayLike,
    alpha: float = DEVICE_NET_ALPHA,
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """One completed measurement (one-way latency ``lat`` ms, uplink ``bw`` Mbit/s) folded
    into the device's network history: returns the new (latency EWMA, bandwidth EWMA,
    bandwidth EW variance). The env and :class:`modi.runtime.DeviceSelector` both use it."""
    m_bw = np.asarray(bw_mean, dtype=np.float64)
    d = np.asarray(bw, dtype=np.float64) - m_bw
    m_lat = np.asarray(lat_mean, dtype=np.float64)
    new_lat = m_lat + alpha * (np.asarray(lat, dtype=np.float64) - m_lat)
    new_var = (1 - alpha) * (np.asarray(bw_var, dtype=np.float64) + alpha * d * d)
    return new_lat, m_bw + alpha * d, new_var


def fold_measurement_scalar(
    lat_mean: float,
    bw_mean: float,
    bw_var: float,
    lat: float,
    bw: float,
    alpha: float = DEVICE_NET_ALPHA,
) -> tuple[float, float, float]:
    """:func:`fold_measurement` of one device in Python floats (the phone's path: no numpy
    call, no array per measurement): the same float64 operations in the same order, so the
    same values bit for bit (a test checks)."""
    d = bw - bw_mean
    new_lat = lat_mean + alpha * (lat - lat_mean)
    new_var = (1 - alpha) * (bw_var + alpha * d * d)
    return new_lat, bw_mean + alpha * d, new_var


R = len(DEVICE_REQUEST_FEATURES)
P = len(DEVICE_MODEL_FEATURES)

# Column indices (request block).
(
    SLA,
    MEGAPIXELS,
    RAW_KB,
    PREP_EST,
    TIER_LOW,
    TIER_MID,
    TIER_HIGH,
    NET_LATENCY,
    NET_UPLINK,
    NET_UPLINK_STD,
    NET_AGE,
    NET_UPLINK_LAST,
    RADIO_ACTIVE_W,
) = range(R)
# Column indices (model rows).
MU, SIGMA, ACC, LOAD, LOADED, IS_BACKUP = range(P)


def obs_dim(num_models: int) -> int:
    """Length of the observation for ``num_models`` on-device models."""
    if num_models < 1:
        raise ValueError(f"num_models must be >= 1, got {num_models}")
    return R + P * num_models


@dataclass(frozen=True)
class DeviceObsLayout(ObsLayout):
    """Splits device observations into the request block and the on-device model rows ``L``."""

    request_dim: ClassVar[int] = R
    row_dim: ClassVar[int] = P
    schema: ClassVar[str] = f"{SCHEMA_NAME} v{SCHEMA_VERSION}"


def encode_device_requests(
    sla_ms: ArrayLike,
    megapixels: ArrayLike,
    raw_bytes: ArrayLike,
    prep_est_ms: ArrayLike,
    tier: int,
    net_latency_ms: ArrayLike,
    net_uplink_mbps: ArrayLike,
    net_uplink_std_mbps: ArrayLike,
    net_age_ms: ArrayLike,
    net_uplink_last_mbps: ArrayLike,
    radio_active_w: ArrayLike,
) -> NDArray[np.float32]:
    """Request blocks for arrays of requests of any shape ``S``: returns ``S + (R,)`` float32.

    ``tier`` is the index of the device tier (0 low, 1 mid, 2 high).
    """
    if tier not in (0, 1, 2):
        raise ValueError(f"tier must be 0 (low), 1 (mid) or 2 (high), got {tier!r}")
    sla = np.asarray(sla_ms, dtype=np.float64)
    mp = np.asarray(megapixels, dtype=np.float64)
    shape = np.broadcast_shapes(sla.shape, mp.shape)
    out = np.zeros((*shape, R), dtype=np.float32)
    out[..., SLA] = sla
    out[..., MEGAPIXELS] = mp
    out[..., RAW_KB] = np.asarray(raw_bytes, dtype=np.float64) / 1e3
    out[..., PREP_EST] = prep_est_ms
    out[..., TIER_LOW + tier] = 1.0
    out[..., NET_LATENCY] = net_latency_ms
    out[..., NET_UPLINK] = net_uplink_mbps
    out[..., NET_UPLINK_STD] = net_uplink_std_mbps
    out[..., NET_AGE] = net_age_ms
    out[..., NET_UPLINK_LAST] = net_uplink_last_mbps
    out[..., RADIO_ACTIVE_W] = radio_active_w
    return out


def encode_device_models(
    mu_ms: ArrayLike,
    sigma_ms: ArrayLike,
    accuracy: ArrayLike,
    load_ms: ArrayLike,
    loaded: ArrayLike,
    backup_index: int,
) -> NDArray[np.float32]:
    """Model rows ``(N, L, P)`` (or ``(L, P)``) from per-model arrays broadcast together."""
    mu = np.asarray(mu_ms, dtype=np.float64)
    ld = np.asarray(loaded, dtype=np.float64)
    shape = np.broadcast_shapes(mu.shape, ld.shape)
    out = np.empty((*shape, P), dtype=np.float32)
    out[..., MU] = mu
    out[..., SIGMA] = sigma_ms
    out[..., ACC] = accuracy
    out[..., LOAD] = load_ms
    out[..., LOADED] = ld
    flag = np.zeros(shape[-1])
    flag[backup_index] = 1.0
    out[..., IS_BACKUP] = flag
    return out


# ============================================================================ placement options
#: Schema of the per-option vectors a device policy scores (one row per placement option).
OPTION_SCHEMA_NAME = "modi.device_option"
#: Version 2 zeroes the network columns (``net_latency_s`` .. ``log_uplink_last``) of the
#: local options: a run on the phone sends nothing, so its outcome does not depend on the link,
#: and a scorer that saw the link there extrapolated from it (issue 14: on LTE a low-end phone's
#: large models scored 0.5 above offloading at a 300 ms SLA and realised 0.2 below).
#: Version 3 appends the radio (``radio_active_w`` and the active radio energy it implies for
#: the option's transfers, ``radio_active_j``; 0 in the local options).
OPTION_SCHEMA_VERSION = 3

#: Option kinds, in option order after the ``L`` local models: offload with on-device
#: preprocessing, offload with in-cloud preprocessing, then both again with the backup on.
OFFLOAD_OPTIONS: tuple[tuple[int, int], ...] = ((0, 0), (1, 0), (0, 1), (1, 1))  # (prep, backup)
#: Median size (KB) of the 224x224 payload the device uploads after preprocessing itself (the
#: device knows it only after preprocessing: a fixed estimate, like PieSlicer's mean size).
PRE_PAYLOAD_KB = 20.0

#: Columns of an option vector: (name, unit, description). Only device knowledge at capture.
OPTION_FEATURES: tuple[tuple[str, str, str], ...] = (
    ("sla_s", "s", "SLA of the request"),
    ("megapixels_10", "10 MP", "resolution of the captured image / 10"),
    ("raw_mb", "MB", "encoded size of the captured image"),
    ("prep_est_s", "s", "profiled estimate of preprocessing on the device"),
    ("tier_low", "flag", "low-end device"),
    ("tier_mid", "flag", "mid-range device"),
    ("tier_high", "flag", "high-end device"),
    ("net_latency_s", "s", "EWMA of the one-way latency measured (0: local options)"),
    ("log_uplink", "ln Mbit/s", "log of the EWMA of the uplink bandwidth (0: local)"),
    ("uplink_cv", "ratio", "EW std / EWMA of the uplink bandwidth, capped at 10 (0: local)"),
    ("log_age", "ln(1 + s)", "age of the newest network measurement (0: local)"),
    ("log_uplink_last", "ln Mbit/s", "log of the newest uplink measurement (0: local)"),
    ("is_local", "flag", "run an on-device model"),
    ("prep_server", "flag", "offload the raw image (preprocess in the cloud)"),
    ("backup", "flag", "offload with the on-device backup model in parallel"),
    ("model_mu_s", "s", "profiled mean inference time of the on-device model involved"),
    ("model_sigma_s", "s", "its profiled standard deviation"),
    ("model_accuracy", "fraction", "its top-1 accuracy (0 when none is involved)"),
    ("model_load_s", "s", "its load time if not in memory, else 0"),
    ("local_slack_s", "s", "SLA - preprocessing - load - mean inference of that model"),
    ("local_z", "sigmas", "that slack in the model's standard deviations (capped at +-10)"),
    ("upload_est_s", "s", "payload size / newest uplink measurement (offload options)"),
    ("offload_slack_s", "s", "SLA - device preprocessing - upload - 2 x latency (offload)"),
    ("radio_active_w", "W", "active power of the device's radio (0: local options)"),
    (
        "radio_active_j",
        "J",
        "radio_active_w x (upload_est + 2 x latency): the transfer's estimated active energy",
    ),
)
F = len(OPTION_FEATURES)
#: The network columns of an option vector: 0 in the local options' vectors (schema v2).
NET_COLUMNS = slice(7, 12)
#: The radio's columns (schema v3; 0 in the local options' vectors).
RADIO_COLUMNS = slice(23, 25)
#: The tier flags of an option vector (every option's) and its radio power (offload options').
OPTION_TIER_COLUMNS = slice(4, 7)
OPTION_RADIO_W = RADIO_COLUMNS.start
_MAX_CV = 10.0
_MAX_Z = 10.0
_PACK_SHARED = struct.Struct("=12f").pack


def num_options(num_models: int) -> int:
    """Number of placement options of a device with ``num_models`` on-device models."""
    if num_models < 1:
        raise ValueError(f"num_models must be >= 1, got {num_models}")
    return num_models + len(OFFLOAD_OPTIONS)


def option_actions(num_models: int) -> NDArray[np.int64]:
    """The env action ``(preprocessing, placement, backup)`` of every option, ``(K, 3)``."""
    k = num_options(num_models)
    out = np.zeros((k, 3), dtype=np.int64)
    out[:num_models, 1] = np.arange(num_models)
    for j, (prep, backup) in enumerate(OFFLOAD_OPTIONS):
        out[num_models + j] = (prep, num_models, backup)
    return out


def option_features(obs: ArrayLike) -> NDArray[np.float32]:
    """Option vectors ``(N, K, F)`` of device observations ``(N, R + P·L)`` (or one ``(D,)``).

    The same function builds the features in training (from ``modi/Offload-v0``'s
    observations) and on the phone (:class:`modi.runtime.DeviceSelector`); it knows nothing
    of the pool beyond the rows in the observation, so a scorer over these vectors serves any
    on-device pool.
    """
    x = np.atleast_2d(np.asarray(obs, dtype=np.float64))
    layout = DeviceObsLayout.from_obs_dim(x.shape[1])
    req, models = layout.request(x), layout.models(x)
    n, big_l = models.shape[0], models.shape[1]
    k = big_l + len(OFFLOAD_OPTIONS)
    out = np.zeros((n, k, F), dtype=np.float64)
    sla = req[:, SLA]
    prep = req[:, PREP_EST]
    bw = np.maximum(req[:, NET_UPLINK], 1e-3)
    bw_last = np.maximum(req[:, NET_UPLINK_LAST], 1e-3)
    lat = req[:, NET_LATENCY]
    shared = np.stack(
        [
            sla / 1e3,
            req[:, MEGAPIXELS] / 10.0,
            req[:, RAW_KB] / 1e3,
            prep / 1e3,
            req[:, TIER_LOW],
            req[:, TIER_MID],
            req[:, TIER_HIGH],
            lat / 1e3,
            np.log(bw),
            np.minimum(req[:, NET_UPLINK_STD] / bw, _MAX_CV),
            np.log1p(np.maximum(req[:, NET_AGE], 0.0) / 1e3),
            np.log(bw_last),
        ],
        axis=1,
    )
    out[:, :, :12] = shared[:, None, :]
    out[:, :big_l, NET_COLUMNS] = 0.0  # a local run does not use the link
    # the on-device model of each option: the local model, or the backup (offload + backup)
    backup_idx = np.argmax(models[:, :, IS_BACKUP], axis=1)
    idx = np.concatenate(
        [np.tile(np.arange(big_l), (n, 1)), np.repeat(backup_idx[:, None], 4, axis=1)], axis=1
    )
    rows = np.take_along_axis(models, idx[:, :, None], axis=1)  # (N, K, P)
    involved = np.zeros((n, k), dtype=bool)
    involved[:, :big_l] = True
    involved[:, big_l + 2 :] = True
    mu, sigma = rows[:, :, MU], rows[:, :, SIGMA]
    load = np.where(rows[:, :, LOADED] > 0, 0.0, rows[:, :, LOAD])
    slack = sla[:, None] - prep[:, None] - load - mu
    z = np.clip(slack / np.maximum(sigma, 1.0), -_MAX_Z, _MAX_Z)
    out[:, :, 12] = 0.0
    out[:, :big_l, 12] = 1.0
    out[:, big_l:, 13] = [p for p, _ in OFFLOAD_OPTIONS]
    out[:, big_l:, 14] = [b for _, b in OFFLOAD_OPTIONS]
    out[:, :, 15] = np.where(involved, mu / 1e3, 0.0)
    out[:, :, 16] = np.where(involved, sigma / 1e3, 0.0)
    out[:, :, 17] = np.where(involved, rows[:, :, ACC], 0.0)
    out[:, :, 18] = np.where(involved, load / 1e3, 0.0)
    out[:, :, 19] = np.where(involved, slack / 1e3, 0.0)
    out[:, :, 20] = np.where(involved, z, 0.0)
    payload_kb = np.where(
        np.array([p for p, _ in OFFLOAD_OPTIONS])[None, :] == 1,
        req[:, RAW_KB, None],
        PRE_PAYLOAD_KB,
    )
    upload_ms = 8.0 * payload_kb / bw_last[:, None]
    dev_prep = np.where(np.array([p for p, _ in OFFLOAD_OPTIONS])[None, :] == 0, prep[:, None], 0.0)
    out[:, big_l:, 21] = upload_ms / 1e3
    out[:, big_l:, 22] = (sla[:, None] - dev_prep - upload_ms - 2.0 * lat[:, None]) / 1e3
    rw = req[:, RADIO_ACTIVE_W, None]
    out[:, big_l:, 23] = rw
    out[:, big_l:, 24] = rw * ((upload_ms + 2.0 * lat[:, None]) / 1e3)
    return out.astype(np.float32)


class OptionBuilder:
    """Option vectors of *one* capture for a fixed set of on-device model rows: the device
    runtime's batch-1 path. The model-dependent columns are computed once per model state
    (:meth:`set_models`); :meth:`build` fills the rest with the same float64 formulas as
    :func:`option_features` (a test checks they agree on env observations)."""

    def __init__(self, model_rows: ArrayLike) -> None:
        self.set_models(model_rows)

    def set_models(self, model_rows: ArrayLike) -> None:
        """Model rows ``(L, P)`` of the device observation (after a model load or unload)."""
        m = np.asarray(model_rows, dtype=np.float32).astype(np.float64)
        if m.ndim != 2 or m.shape[1] != P or m.shape[0] < 1:
            raise ValueError(f"model rows must be (L >= 1, {P}), got {m.shape}")
        big_l = m.shape[0]
        k = big_l + len(OFFLOAD_OPTIONS)
        backup = int(np.argmax(m[:, IS_BACKUP]))
        rows = m[np.concatenate([np.arange(big_l), np.full(4, backup)])]
        involved = np.ones(k, dtype=bool)
        involved[big_l : big_l + 2] = False
        self.num_models = big_l
        self._involved = involved
        self._mu = rows[:, MU]
        self._sigma1 = np.maximum(rows[:, SIGMA], 1.0)
        self._load = np.where(rows[:, LOADED] > 0, 0.0, rows[:, LOAD])
        static = np.zeros((k, F))
        static[:big_l, 12] = 1.0
        static[big_l:, 13] = [p for p, _ in OFFLOAD_OPTIONS]
        static[big_l:, 14] = [b for _, b in OFFLOAD_OPTIONS]
        static[:, 15] = np.where(involved, self._mu / 1e3, 0.0)
        static[:, 16] = np.where(involved, rows[:, SIGMA] / 1e3, 0.0)
        static[:, 17] = np.where(involved, rows[:, ACC], 0.0)
        static[:, 18] = np.where(involved, self._load / 1e3, 0.0)
        self._static = static
        self._ready: NDArray[np.float32] | None = None
        keep = np.flatnonzero(involved)
        self._mu_inv = self._mu[keep]
        self._load_inv = self._load[keep]
        self._sigma1_inv = self._sigma1[keep]
        self._cols_slack = np.zeros((keep.size, 2))
        # the scalar path (:meth:`pack`): every option's model-only columns 12..18 as float32
        # bytes, the (bytes, load, mu, max(sigma, 1)) of each on-device model as Python
        # values, and one struct for the whole (K, F) buffer: per option the shared columns
        # 0..11 (bytes; a local model: 0..6, then the link columns 7..11 as zero padding),
        # 12..18 (bytes), then 19..24 (a local model: slack, z, zero padding; offload: zeros
        # or the backup's slack, z, then the upload's two columns and the radio's two)
        row_bytes = [struct.pack("=7f", *row[12:19].tolist()) for row in static]
        self._local = list(zip(row_bytes[:big_l], self._load[:big_l].tolist(),
                               self._mu[:big_l].tolist(), self._sigma1[:big_l].tolist(),
                               strict=True))  # fmt: skip
        self._offload_bytes = row_bytes[big_l:]
        self._backup_model = (
            float(self._load[big_l + 2]),
            float(self._mu[big_l + 2]),
            float(self._sigma1[big_l + 2]),
        )
        layout = "28s20x28s2f16x" * big_l + "48s28s8x4f" * 2 + "48s28s6f" * 2
        self._pack_all = struct.Struct("=" + layout)
        self._packed_into: NDArray[np.float32] | None = None
        self._packed_view = memoryview(bytearray(0))

    def pack(self, buffer: NDArray[np.float32], request: Sequence[float]) -> None:
        """Scalar fast path of :meth:`build`: the option vectors of one capture written into
        ``buffer`` (a C-contiguous float32 array of ``K·F`` values, e.g. ``(1, K, F)``; a
        ``ValueError`` for another size) by one ``struct.pack_into``. ``request`` is the
        request block as Python floats already rounded to float32 (what
        :func:`option_features` reads from a float32 observation); the values are the same bit
        for bit (a test checks). Raises ``OverflowError`` where a value is beyond float32's
        range (:meth:`build` stores inf there, as numpy does)."""
        # (comparisons instead of min/max calls, NaN kept as np.maximum/np.minimum keep it:
        # a third of this method's time)
        r = request
        sla, prep, lat, raw_kb = r[SLA], r[PREP_EST], r[NET_LATENCY], r[RAW_KB]
        bw = r[NET_UPLINK]
        if bw < 1e-3:
            bw = 1e-3
        bw_last = r[NET_UPLINK_LAST]
        if bw_last < 1e-3:
            bw_last = 1e-3
        cv = r[NET_UPLINK_STD] / bw
        if cv > _MAX_CV:
            cv = _MAX_CV
        age = r[NET_AGE]
        if age < 0.0:
            age = 0.0
        sh = _PACK_SHARED(
            sla / 1e3,
            r[MEGAPIXELS] / 10.0,
            raw_kb / 1e3,
            prep / 1e3,
            r[TIER_LOW],
            r[TIER_MID],
            r[TIER_HIGH],
            lat / 1e3,
            math.log(bw),
            cv,
            math.log1p(age / 1e3),
            math.log(bw_last),
        )
        sh_local = sh[:28]  # columns 0..6; the link columns 7..11 are the layout's zero pad
        base = sla - prep
        args: list[bytes | float] = []
        for stat, load, mu, sigma1 in self._local:
            slack = base - load - mu
            z = slack / sigma1
            args += (sh_local, stat, slack / 1e3,
                     -_MAX_Z if z < -_MAX_Z else (_MAX_Z if z > _MAX_Z else z))  # fmt: skip
        load, mu, sigma1 = self._backup_model
        slack = base - load - mu
        z = slack / sigma1
        bk_slack, bk_z = slack / 1e3, -_MAX_Z if z < -_MAX_Z else (_MAX_Z if z > _MAX_Z else z)
        up_pre = 8.0 * PRE_PAYLOAD_KB / bw_last
        up_raw = 8.0 * raw_kb / bw_last
        pre_up, pre_slack = up_pre / 1e3, (sla - prep - up_pre - 2.0 * lat) / 1e3
        raw_up, raw_slack = up_raw / 1e3, (sla - 0.0 - up_raw - 2.0 * lat) / 1e3
        rw = r[RADIO_ACTIVE_W]
        pre_j, raw_j = rw * ((up_pre + 2.0 * lat) / 1e3), rw * ((up_raw + 2.0 * lat) / 1e3)
        s0, s1, s2, s3 = self._offload_bytes
        if buffer is not self._packed_into:  # the bytes view of the buffer, made once
            view = buffer.data.cast("B")
            if view.nbytes != self._pack_all.size:
                raise ValueError(
                    f"buffer of {view.nbytes} bytes, expected {self._pack_all.size} "
                    f"({self._static.shape[0]} options x {F} float32 features)"
                )
            self._packed_view = view
            self._packed_into = buffer
        # one C call writes every option (the padding as zeros)
        self._pack_all.pack_into(
            self._packed_view, 0, *args,
            sh, s0, pre_up, pre_slack, rw, pre_j,
            sh, s1, raw_up, raw_slack, rw, raw_j,
            sh, s2, bk_slack, bk_z, pre_up, pre_slack, rw, pre_j,
            sh, s3, bk_slack, bk_z, raw_up, raw_slack, rw, raw_j,
        )  # fmt: skip

    def build(
        self, request: ArrayLike, out: NDArray[np.float32] | None = None
    ) -> NDArray[np.float32]:
        """Option vectors ``(1, K, F)`` of one request block ``(R,)`` (float32 values), written
        into ``out`` when given (a preallocated ``(1, K, F)`` float32 buffer: the columns that
        depend only on the models are written once, the rest at every call)."""
        if out is None:
            out = np.empty((1, *self._static.shape), dtype=np.float32)
            self._ready = None
        if out is not self._ready:
            out[0] = self._static
            self._ready = out
        r = np.asarray(request, dtype=np.float32).tolist()
        x = out[0]
        sla, prep, lat, raw_kb = r[SLA], r[PREP_EST], r[NET_LATENCY], r[RAW_KB]
        bw = max(r[NET_UPLINK], 1e-3)
        bw_last = max(r[NET_UPLINK_LAST], 1e-3)
        x[:, :12] = (
            sla / 1e3,
            r[MEGAPIXELS] / 10.0,
            raw_kb / 1e3,
            prep / 1e3,
            r[TIER_LOW],
            r[TIER_MID],
            r[TIER_HIGH],
            lat / 1e3,
            math.log(bw),
            min(r[NET_UPLINK_STD] / bw, _MAX_CV),
            math.log1p(max(r[NET_AGE], 0.0) / 1e3),
            math.log(bw_last),
        )
        x[: self.num_models, NET_COLUMNS] = 0.0
        # the involved rows: the local models (0..L-1) and the backup of L+2, L+3
        slack = sla - prep - self._load_inv - self._mu_inv
        z = slack / self._sigma1_inv
        np.minimum(z, _MAX_Z, out=z)
        np.maximum(z, -_MAX_Z, out=z)
        big_l = self.num_models
        col = self._cols_slack
        col[:, 0] = slack / 1e3
        col[:, 1] = z
        x[:big_l, 19:21] = col[:big_l]
        x[big_l + 2 :, 19:21] = col[big_l:]
        up_pre = 8.0 * PRE_PAYLOAD_KB / bw_last
        up_raw = 8.0 * raw_kb / bw_last
        x[big_l:, 21:23] = (
            (up_pre / 1e3, (sla - prep - up_pre - 2.0 * lat) / 1e3),
            (up_raw / 1e3, (sla - 0.0 - up_raw - 2.0 * lat) / 1e3),
            (up_pre / 1e3, (sla - prep - up_pre - 2.0 * lat) / 1e3),
            (up_raw / 1e3, (sla - 0.0 - up_raw - 2.0 * lat) / 1e3),
        )
        rw = r[RADIO_ACTIVE_W]
        pre_j, raw_j = rw * ((up_pre + 2.0 * lat) / 1e3), rw * ((up_raw + 2.0 * lat) / 1e3)
        x[big_l:, 23:25] = ((rw, pre_j), (rw, raw_j), (rw, pre_j), (rw, raw_j))
        return out
