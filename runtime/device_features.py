"""Observation vectors for the *device's* decisions (``modi/Offload-v0``).

A separate schema from :mod:`modi.runtime.features` (the server's decision): the phone decides
at capture time, before anything is sent, so it knows only the SLA, the image it captured, its
own tier and profiles, and its own past network measurements (DESIGN.md §1). Never in this
vector: this request's upload or download time, and anything about the server's load.

One flat ``float32`` vector per request: a *request block* of :data:`DEVICE_REQUEST_FEATURES`
followed by ``L`` rows of :data:`DEVICE_MODEL_FEATURES`, one per on-device model (pool order).

Version 2 added ``net_uplink_last_mbps``, the most recent bandwidth measurement itself: on a
link whose bandwidth is a Markov process that measurement (with its age) says everything the
past says about this request's bandwidth, while the EWMA mixes in older ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from numpy.typing import ArrayLike, NDArray

from modi.runtime.features import ObsLayout

SCHEMA_NAME = "modi.device_decision"
SCHEMA_VERSION = 2

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

#: EWMA weight of the device's network measurements.
DEVICE_NET_ALPHA = 0.5

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
