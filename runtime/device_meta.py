"""Metadata of an exported *device* policy (ONNX ``metadata_props``), the contract between
:func:`modi.agents.device_scorer.export_device_onnx` and :class:`modi.runtime.DeviceSelector`.

Keys start with ``modi.device.`` (the server selector's keys, :mod:`modi.runtime.metadata`,
start with ``modi.`` and never with ``modi.device.``). A file whose schemas or feature names
differ from this runtime's is refused with the key named.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from modi.runtime import device_features as dfeat

PREFIX = "modi.device."
DEVICE_METADATA_VERSION = 1
#: ONNX input / outputs of a device policy file.
INPUT_OPTIONS = "options"
OUTPUT_PREDICTIONS = "predictions"
OUTPUT_SCORES = "scores"


class DeviceMetadataError(ValueError):
    """A device policy file's metadata is missing, malformed or for another schema."""


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
        }

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
        except (TypeError, ValueError, json.JSONDecodeError) as e:
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
