"""The deployable part of modi: feature encoding, the ModiPick rule and online profiles.

Imports only numpy (and onnxruntime where a learned selector is loaded); never torch,
gymnasium, stable-baselines3, mlflow or hydra.
"""

from modi.runtime.features import (
    MODEL_FEATURES,
    REQUEST_FEATURES,
    SCHEMA_NAME,
    SCHEMA_VERSION,
    ObsLayout,
    encode,
    obs_dim,
)
from modi.runtime.modipick import ModiPickStages, modipick_select, modipick_stages
from modi.runtime.profiles import ProfileTracker

__all__ = [
    "MODEL_FEATURES",
    "REQUEST_FEATURES",
    "SCHEMA_NAME",
    "SCHEMA_VERSION",
    "ModiPickStages",
    "ObsLayout",
    "ProfileTracker",
    "encode",
    "modipick_select",
    "modipick_stages",
    "obs_dim",
]
