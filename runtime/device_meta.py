"""Metadata of an exported *device* policy (ONNX ``metadata_props``), the contract between
:func:`modi.agents.device_scorer.export_device_onnx` and :class:`modi.runtime.DeviceSelector`.

Keys start with ``modi.device.`` (the server selector's keys, :mod:`modi.runtime.metadata`,
start with ``modi.`` and never with ``modi.device.``). A file whose schemas or feature names
differ from this runtime's is refused with the key named.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from numbers import Real

import numpy as np
from numpy.typing import NDArray

from modi.runtime import device_features as dfeat

PREFIX = "modi.device."
#: The newest metadata version this runtime reads (2: ``contexts``, a per-context policy's
#: settings; a runtime older than version 2 does not check the version and would run such a
#: file with its one fallback setting).
DEVICE_METADATA_VERSION = 2
#: ONNX input / outputs of a device policy file.
INPUT_OPTIONS = "options"
OUTPUT_PREDICTIONS = "predictions"
OUTPUT_SCORES = "scores"


class DeviceMetadataError(ValueError):
    """A device policy file's metadata is missing, malformed or for another schema."""


#: Score of an option outside the tie set (ε-lexicographic choice, see
#: :func:`modi.agents.device_scorer.choice_scores`).
TIE_OUT = -1e6
#: Added to the score of a kept anchor option: above any objective and any tie-rule score
#: (``-energy`` or :data:`TIE_OUT`).
ANCHOR_BONUS = 1e9

#: The decision contexts of a per-context policy: the device's tier × its radio's class, what
#: the phone knows of itself at every capture. Their index is ``tier × 2 + cellular``.
CONTEXT_TIERS: tuple[str, ...] = ("low", "mid", "high")
CONTEXT_RADIOS: tuple[str, ...] = ("wifi", "cellular")
CONTEXTS: tuple[str, ...] = tuple(f"{t}/{r}" for t in CONTEXT_TIERS for r in CONTEXT_RADIOS)
#: A radio whose active power is at least this (W) is cellular: 3G 0.82 W and LTE 1.29 W
#: against WiFi's 0.13 W (:data:`modi.runtime.device_features.RADIO_ACTIVE_POWER_W`).
CELLULAR_MIN_W = 0.5
#: One choice setting: (energy weight per J, tie tolerance, anchor margin or ``None``).
ContextSetting = tuple[float, float, "float | None"]
#: The anchor margin in the graph of a setting without an anchor: the best objective minus
#: it is beyond every objective, so no anchor is ever kept.
NO_ANCHOR = -1e300


def radio_class(active_w: float) -> str:
    """The context radio (``wifi`` or ``cellular``) of a radio's active power (W), compared in
    float32 as the option vectors hold it (the trained policy reads it from there)."""
    return CONTEXT_RADIOS[int(float(np.float32(active_w)) >= CELLULAR_MIN_W)]


def objective_vector(w_energy_per_j: float, w_bytes_per_mb: float) -> NDArray[np.float64]:
    """The objective's weights of the predicted (accuracy, energy J, MB sent)."""
    return np.array([1.0, -w_energy_per_j, -w_bytes_per_mb], dtype=np.float64)


def context_initializers(
    setting: ContextSetting, w_bytes_per_mb: float
) -> dict[str, NDArray[np.float64] | NDArray[np.bool_]]:
    """The values of a per-context graph's :data:`SETTING_INPUTS` for one choice setting: the
    export writes a per-context policy's fallback setting into them (initializers that are
    also graph inputs), and :class:`modi.runtime.DeviceSelector` feeds its own context's."""
    w, tol, margin = setting
    return {
        "objective": objective_vector(w, w_bytes_per_mb).reshape(-1, 1),
        "tie_tolerance": np.array(float(tol), dtype=np.float64),
        "use_tie": np.array(tol > 0),
        "anchor_margin": np.array(NO_ANCHOR if margin is None else float(margin), np.float64),
    }


#: The graph inputs of a per-context export that carry its choice setting (initializers that
#: are also inputs: the file's values unless fed; :func:`context_initializers`).
SETTING_INPUTS: tuple[str, ...] = tuple(context_initializers((0.0, 0.0, None), 0.0))


def check_contexts(contexts: object) -> dict[str, ContextSetting]:
    """``contexts`` as a setting per :data:`CONTEXTS`; a missing context or a bad value raises
    :class:`ValueError` naming it."""
    if not isinstance(contexts, Mapping) or set(contexts) != set(CONTEXTS):
        got = sorted(contexts) if isinstance(contexts, Mapping) else contexts
        raise ValueError(f"contexts: expected a setting for each of {list(CONTEXTS)}, got {got!r}")
    out: dict[str, ContextSetting] = {}
    for key in CONTEXTS:
        setting = contexts[key]
        try:
            w, tol, margin = setting
        except (TypeError, ValueError):
            raise ValueError(
                f"contexts[{key!r}]: expected (w_energy_per_j, tie_tolerance, anchor_margin), "
                f"got {setting!r}"
            ) from None
        values = {"w_energy_per_j": w, "tie_tolerance": tol, "anchor_margin": margin}
        for name, v in values.items():
            if v is None and name == "anchor_margin":
                continue
            try:
                ok = (
                    not isinstance(v, bool)
                    and isinstance(v, Real)
                    and math.isfinite(v)
                    and float(v) >= 0
                )
            except OverflowError:  # an integer beyond float's range
                ok = False
            if not ok:
                raise ValueError(
                    f"contexts[{key!r}]: {name} must be a finite number >= 0, got {v!r}"
                )
        out[key] = (float(w), float(tol), None if margin is None else float(margin))
    return out


def _feature_names() -> list[str]:
    return [n for n, _, _ in dfeat.OPTION_FEATURES]


@dataclass(frozen=True)
class DeviceModelMeta:
    """What a device policy file says about itself."""

    w_energy_per_j: float
    w_bytes_per_mb: float
    feature_min: tuple[float, ...]
    feature_max: tuple[float, ...]
    trained_on: str = "{}"
    #: A setting per decision context (:data:`CONTEXTS`), or ``None``: the graph's own
    #: (metadata version 2).
    contexts: dict[str, ContextSetting] | None = field(default=None, hash=False)
    device_schema: str = dfeat.SCHEMA_NAME
    device_schema_version: int = dfeat.SCHEMA_VERSION
    option_schema: str = dfeat.OPTION_SCHEMA_NAME
    option_schema_version: int = dfeat.OPTION_SCHEMA_VERSION
    metadata_version: int = DEVICE_METADATA_VERSION

    def to_props(self) -> dict[str, str]:
        """ONNX ``metadata_props`` entries."""
        return {
            PREFIX + "metadata_version": str(self.metadata_version),
            PREFIX + "device_schema": self.device_schema,
            PREFIX + "device_schema_version": str(self.device_schema_version),
            PREFIX + "option_schema": self.option_schema,
            PREFIX + "option_schema_version": str(self.option_schema_version),
            PREFIX + "option_features": json.dumps(_feature_names()),
            PREFIX + "w_energy_per_j": repr(float(self.w_energy_per_j)),
            PREFIX + "w_bytes_per_mb": repr(float(self.w_bytes_per_mb)),
            PREFIX + "feature_min": json.dumps(list(self.feature_min)),
            PREFIX + "feature_max": json.dumps(list(self.feature_max)),
            PREFIX + "trained_on": self.trained_on,
        } | (
            {}
            if self.contexts is None
            else {PREFIX + "contexts": json.dumps({k: list(v) for k, v in self.contexts.items()})}
        )

    @classmethod
    def from_props(cls, props: Mapping[str, str]) -> DeviceModelMeta:
        """Parse and check ``metadata_props`` against this runtime's schemas."""

        def get(key: str) -> str:
            if PREFIX + key not in props:
                raise DeviceMetadataError(f"device policy metadata has no {PREFIX + key!r}")
            return props[PREFIX + key]

        try:
            meta = cls(
                w_energy_per_j=float(get("w_energy_per_j")),
                w_bytes_per_mb=float(get("w_bytes_per_mb")),
                feature_min=tuple(float(v) for v in json.loads(get("feature_min"))),
                feature_max=tuple(float(v) for v in json.loads(get("feature_max"))),
                trained_on=props.get(PREFIX + "trained_on", "{}"),
                device_schema=get("device_schema"),
                device_schema_version=int(get("device_schema_version")),
                option_schema=get("option_schema"),
                option_schema_version=int(get("option_schema_version")),
                metadata_version=int(get("metadata_version")),
            )
            names = json.loads(get("option_features"))
            if not 1 <= meta.metadata_version <= DEVICE_METADATA_VERSION:
                raise DeviceMetadataError(
                    f"{PREFIX}metadata_version is {meta.metadata_version}; this runtime reads "
                    f"1 to {DEVICE_METADATA_VERSION} (a file from a newer modi?)"
                )
            if PREFIX + "contexts" in props:
                if meta.metadata_version < 2:
                    raise DeviceMetadataError(
                        f"{PREFIX}contexts needs metadata_version >= 2, the file says "
                        f"{meta.metadata_version}"
                    )
                meta = dataclasses.replace(
                    meta, contexts=check_contexts(json.loads(props[PREFIX + "contexts"]))
                )
        except (TypeError, ValueError, OverflowError, json.JSONDecodeError) as e:
            if isinstance(e, DeviceMetadataError):
                raise
            raise DeviceMetadataError(f"malformed device policy metadata: {e}") from None
        want = (dfeat.SCHEMA_NAME, dfeat.SCHEMA_VERSION)
        if (meta.device_schema, meta.device_schema_version) != want:
            raise DeviceMetadataError(
                f"{PREFIX}device_schema is {meta.device_schema} v{meta.device_schema_version}; "
                f"this runtime reads {want[0]} v{want[1]}"
            )
        want_o = (dfeat.OPTION_SCHEMA_NAME, dfeat.OPTION_SCHEMA_VERSION)
        if (meta.option_schema, meta.option_schema_version) != want_o or names != _feature_names():
            raise DeviceMetadataError(
                f"{PREFIX}option_schema is {meta.option_schema} v{meta.option_schema_version} "
                f"with features {names}; this runtime reads {want_o[0]} v{want_o[1]}"
            )
        if len(meta.feature_min) != dfeat.F or len(meta.feature_max) != dfeat.F:
            raise DeviceMetadataError(
                f"{PREFIX}feature_min/feature_max must have {dfeat.F} values each"
            )
        return meta
