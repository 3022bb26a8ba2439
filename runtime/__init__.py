"""The deployable part of modi: feature encoding, the ModiPick rule, online profiles and the
ONNX :class:`Selector` that servers embed, and the phone-side :class:`DeviceSelector`.

Imports only numpy (and onnxruntime when a learned selector is loaded); never torch,
gymnasium, stable-baselines3, mlflow or hydra (mlflow only inside ``Selector.load`` of a
``models:/`` URI, if installed).
"""

from modi.runtime.device_selector import DeviceSelector
from modi.runtime.features import (
    MODEL_FEATURES,
    REQUEST_FEATURES,
    SCHEMA_NAME,
    SCHEMA_VERSION,
    ObsLayout,
    encode,
    obs_dim,
)
from modi.runtime.metadata import MetadataError, SelectorMetadata, pool_hash
from modi.runtime.modipick import ModiPickStages, modipick_select, modipick_stages
from modi.runtime.pool_profile import PoolProfile, PoolProfileError
from modi.runtime.profiles import ProfileTracker
from modi.runtime.requests import InvalidRequest, Request, RequestBatch, RequestLimits
from modi.runtime.selector import Decision, Decisions, Selector, SelectorLoadError

__all__ = [
    "MODEL_FEATURES",
    "REQUEST_FEATURES",
    "SCHEMA_NAME",
    "SCHEMA_VERSION",
    "Decision",
    "Decisions",
    "DeviceSelector",
    "InvalidRequest",
    "MetadataError",
    "ModiPickStages",
    "ObsLayout",
    "PoolProfile",
    "PoolProfileError",
    "ProfileTracker",
    "Request",
    "RequestBatch",
    "RequestLimits",
    "Selector",
    "SelectorLoadError",
    "SelectorMetadata",
    "encode",
    "modipick_select",
    "modipick_stages",
    "obs_dim",
    "pool_hash",
]
