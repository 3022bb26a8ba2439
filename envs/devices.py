"""Mobile devices: tiers, on-device preprocessing, on-device model pools, load times, energy.

A :class:`DeviceProfile` is one phone class of PieSlicer's evaluation (Nexus 5 low end, Moto X4
mid range, Pixel 2 high end):

* **preprocessing** — decoding and resizing an ``R``-megapixel image to the model input takes
  ``intercept_ms + ms_per_mp * R`` on the device, times a log-normal noise factor (CV ``cv``).
  The numbers per tier are calibrated in ``conf/device/*.yaml`` against PieSlicer's latency
  table (seed ``001``), which is the only measurement of it we have; see there.
* **on-device models** — each with top-1 accuracy and *empirical* distributions (quantile tables)
  of inference and load time. Sources: the PieSlicer app's per-run measurements
  (``shared/data/cakelab/pieslicer_on_device_runs.csv``: 367 runs per model, float and 8-bit,
  inference and model-load time; the phone is not recorded, the app hard-codes ``motox``) or
  TensorFlow Lite's hosted-model table (``shared/data/tflite-hosted-models``, means only,
  quantized models measured on a Pixel 2). Times are scaled per tier by stated factors.
  Accuracy is ImageNet top-1 from the TF Lite table (the PieSlicer runs were retrained on a
  5-class flower set, so their own correctness is not ImageNet accuracy).
* **energy** — compute energy is ``compute_power_w`` times the busy time of the CPU
  (preprocessing, model loads, inference); radio energy (:class:`RadioEnergy`) is a per-byte
  cost in each direction plus the radio's active power while a transfer lasts, so more bytes
  cost more battery (DeepDecision, seed ``004``: "higher bandwidth → more battery").

Everything here is numpy only; files are read once per path (cached).
"""

from __future__ import annotations

import csv
import functools
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from modi.envs.images import ImageError, ImageModel
from modi.runtime.device_features import RADIO_ACTIVE_POWER_W

log = logging.getLogger(__name__)

F64 = NDArray[np.float64]

#: Device tiers, slowest first.
TIERS: tuple[str, ...] = ("low", "mid", "high")
#: Points of the quantile tables that represent a time distribution given by mean and CV.
QUANTILE_POINTS = 257


class DeviceError(ValueError):
    """A device profile is malformed or names unknown models/tiers; the message says which."""


def _number(value: object, field: str, *, minimum: float = 0.0, strict: bool = True) -> float:
    if isinstance(value, bool):
        raise DeviceError(f"{field} must be a number, got {value!r}")
    try:
        x = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise DeviceError(f"{field} must be a number, got {value!r}") from None
    if not math.isfinite(x) or x < minimum or (strict and x == minimum):
        op = ">" if strict else ">="
        raise DeviceError(f"{field} must be {op} {minimum:g}, got {value!r}")
    return x


def lognormal_quantiles(mean: float, cv: float, points: int = QUANTILE_POINTS) -> F64:
    """Quantile table (mid-point probabilities) of a log-normal with the given mean and CV."""
    if cv == 0:
        return np.full(points, mean)
    sigma = math.sqrt(math.log1p(cv * cv))
    mu = math.log(mean) - sigma * sigma / 2
    p = (np.arange(points) + 0.5) / points
    from statistics import NormalDist

    z = np.array([NormalDist().inv_cdf(float(q)) for q in p])
    return np.exp(mu + sigma * z)


@dataclass(frozen=True, eq=False)
class OnDeviceModel:
    """A model the phone can run: accuracy (fraction) and quantile tables (ms, sorted) of its
    inference and load times on this device."""

    id: str
    accuracy: float
    exec_ms: F64
    load_ms: F64
    quantized: bool = False
    source: str = ""

    def __post_init__(self) -> None:
        where = f"on-device model {self.id!r}"
        if not self.id:
            raise DeviceError("on-device model id must be a non-empty string")
        if not (math.isfinite(self.accuracy) and 0.0 <= self.accuracy <= 1.0):
            raise DeviceError(
                f"{where}: accuracy must be a fraction in [0, 1], got {self.accuracy}"
            )
        for name in ("exec_ms", "load_ms"):
            arr = np.sort(np.asarray(getattr(self, name), dtype=np.float64).ravel())
            if arr.size == 0 or not np.all(np.isfinite(arr)) or arr[0] <= 0:
                raise DeviceError(f"{where}: {name} must be a non-empty list of times > 0")
            object.__setattr__(self, name, arr)

    @property
    def mean_ms(self) -> float:
        """Mean inference time (ms)."""
        return float(self.exec_ms.mean())

    @property
    def std_ms(self) -> float:
        """Standard deviation of inference time (ms)."""
        return float(self.exec_ms.std())

    @property
    def load_mean_ms(self) -> float:
        """Mean load time (ms)."""
        return float(self.load_ms.mean())

    def scaled(self, exec_scale: float, load_scale: float) -> OnDeviceModel:
        """The same model on a device ``exec_scale`` times slower (loads ``load_scale``)."""
        return OnDeviceModel(
            self.id,
            self.accuracy,
            self.exec_ms * exec_scale,
            self.load_ms * load_scale,
            self.quantized,
            self.source,
        )


@dataclass(frozen=True)
class Preprocessing:
    """On-device preprocessing time ``(intercept_ms + ms_per_mp * R) * noise`` for ``R``
    megapixels; ``noise`` is log-normal with mean 1 and coefficient of variation ``cv``."""

    intercept_ms: float
    ms_per_mp: float
    cv: float = 0.1

    def __post_init__(self) -> None:
        _number(self.intercept_ms, "preprocessing.intercept_ms", strict=False)
        _number(self.ms_per_mp, "preprocessing.ms_per_mp")
        _number(self.cv, "preprocessing.cv", strict=False)

    def mean_ms(self, megapixels: ArrayLike) -> F64:
        """Expected preprocessing time of images of ``megapixels`` (must be > 0)."""
        mp = np.asarray(megapixels, dtype=np.float64)
        if np.any(~np.isfinite(mp) | (mp <= 0)):
            bad = mp[~np.isfinite(mp) | (mp <= 0)].ravel()[:3].tolist()
            raise ImageError(f"megapixels must be finite and > 0, got {bad}")
        return self.intercept_ms + self.ms_per_mp * mp

    def noise(self, z: ArrayLike) -> F64:
        """Multiplicative noise factors (mean 1) from standard-normal draws ``z``."""
        if self.cv == 0:
            return np.ones(np.shape(z))
        s2 = math.log1p(self.cv * self.cv)
        return np.exp(math.sqrt(s2) * np.asarray(z, dtype=np.float64) - s2 / 2)


@dataclass(frozen=True)
class RadioEnergy:
    """Energy of the phone's radio for a transfer: ``up_mj_per_mb`` per uploaded MB,
    ``down_mj_per_mb`` per downloaded MB, plus ``active_mw`` while a transfer lasts.

    The presets (:data:`RADIO_PROFILES`) are the linear power models of Huang et al., "A Close
    Examination of Performance and Power Characteristics of 4G LTE Networks" (MobiSys 2012):
    power ``P = alpha_u * t_u + alpha_d * t_d + beta`` (mW, throughputs in Mbit/s), i.e.
    ``alpha`` mJ per Mbit transferred plus ``beta`` mW while active; per MB that is
    ``8 * alpha``. These values come from the literature, not from ``shared/data``; they were
    fitted at the throughputs of 2012 phones (a few Mbit/s), so per-byte costs on faster links
    are pessimistic. Tail energy (the radio staying in a high-power state after a transfer,
    seconds on LTE) is left out: it is shared by consecutive requests.
    """

    name: str
    up_mj_per_mb: float
    down_mj_per_mb: float
    active_mw: float

    def __post_init__(self) -> None:
        for f in ("up_mj_per_mb", "down_mj_per_mb", "active_mw"):
            _number(getattr(self, f), f"radio.{f}", strict=False)

    def energy_mj(self, up_bytes: ArrayLike, down_bytes: ArrayLike, active_ms: ArrayLike) -> F64:
        """Radio energy (mJ) of transfers of the given sizes lasting ``active_ms``."""
        return (
            self.up_mj_per_mb * np.asarray(up_bytes, dtype=np.float64) / 1e6
            + self.down_mj_per_mb * np.asarray(down_bytes, dtype=np.float64) / 1e6
            + self.active_mw * np.asarray(active_ms, dtype=np.float64) / 1e3
        )


#: Huang et al. (MobiSys 2012) power models: alpha_u, alpha_d (mW per Mbit/s) x 8 per MB, beta
#: (the active power, :data:`modi.runtime.device_features.RADIO_ACTIVE_POWER_W`: what the phone
#: itself knows of its radio, the device policy's feature).
RADIO_PROFILES: dict[str, RadioEnergy] = {
    "wifi": RadioEnergy("wifi", 8 * 283.17, 8 * 137.01, 1e3 * RADIO_ACTIVE_POWER_W["wifi"]),
    "lte": RadioEnergy("lte", 8 * 438.39, 8 * 51.97, 1e3 * RADIO_ACTIVE_POWER_W["lte"]),
    "3g": RadioEnergy("3g", 8 * 868.98, 8 * 122.12, 1e3 * RADIO_ACTIVE_POWER_W["3g"]),
}


def radio_profile(radio: str | RadioEnergy | Mapping[str, Any]) -> RadioEnergy:
    """A :class:`RadioEnergy` from a preset name (``wifi``, ``lte``, ``3g``), a mapping of its
    fields, or itself."""
    if isinstance(radio, RadioEnergy):
        return radio
    if isinstance(radio, str):
        try:
            return RADIO_PROFILES[radio]
        except KeyError:
            raise DeviceError(
                f"unknown radio {radio!r}; expected one of {sorted(RADIO_PROFILES)} or a "
                "mapping {name, up_mj_per_mb, down_mj_per_mb, active_mw}"
            ) from None
    if isinstance(radio, Mapping):
        try:
            return RadioEnergy(
                str(radio.get("name", "custom")),
                float(radio["up_mj_per_mb"]),
                float(radio["down_mj_per_mb"]),
                float(radio["active_mw"]),
            )
        except KeyError as e:
            raise DeviceError(f"radio mapping is missing {e}") from None
    raise DeviceError(f"radio must be a name, a mapping or a RadioEnergy, got {radio!r}")


# ----------------------------------------------------------------------------- measured data
@functools.lru_cache(maxsize=8)
def read_pieslicer_runs(path: str) -> dict[tuple[str, bool], tuple[F64, F64]]:
    """Per-run ``(infer_time_ms, load_time_ms)`` arrays of the PieSlicer app's runs, keyed by
    ``(model_name, quantized_8bit)`` (``cakelab/pieslicer_on_device_runs.csv``)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise DeviceError(
            f"{p}: no such PieSlicer runs CSV (expected pieslicer_on_device_runs.csv)"
        )
    runs: dict[tuple[str, bool], tuple[list[float], list[float]]] = {}
    with p.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        need = {"model_name", "quantized_8bit", "load_time_ms", "infer_time_ms"}
        missing = need - set(reader.fieldnames or [])
        if missing:
            raise DeviceError(f"{p}: missing column(s) {sorted(missing)}")
        for row in reader:
            key = (row["model_name"], row["quantized_8bit"].strip().lower() == "true")
            try:
                inf, load = float(row["infer_time_ms"]), float(row["load_time_ms"])
            except ValueError:
                raise DeviceError(f"{p}: line {reader.line_num}: a time is not a number") from None
            ex, ld = runs.setdefault(key, ([], []))
            ex.append(inf)
            ld.append(load)
    return {k: (np.asarray(v[0]), np.asarray(v[1])) for k, v in runs.items()}


@functools.lru_cache(maxsize=8)
def read_tflite_table(path: str) -> dict[str, dict[str, str]]:
    """Rows of TF Lite's transcribed hosted-model table, keyed by ``model_name``."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise DeviceError(f"{p}: no such TF Lite hosted-model table")
    with p.open(newline="", encoding="utf-8") as fh:
        return {row["model_name"]: dict(row) for row in csv.DictReader(fh)}


def tflite_name(pieslicer_model: str, quantized: bool) -> str:
    """The TF Lite table's name of a PieSlicer model (``mobilenet_0.25_128`` →
    ``Mobilenet_V1_0.25_128``; ``inception_v3`` → ``Inception_V3``; ``_quant`` if 8-bit)."""
    if pieslicer_model.startswith("mobilenet_"):
        base = "Mobilenet_V1_" + pieslicer_model[len("mobilenet_") :]
    elif pieslicer_model == "inception_v3":
        base = "Inception_V3"
    else:
        raise DeviceError(
            f"no TF Lite accuracy known for PieSlicer model {pieslicer_model!r}; give its "
            "'accuracy' (top-1 %) in the pool entry"
        )
    return base + ("_quant" if quantized else "")


def _entry_accuracy(
    entry: Mapping[str, Any], table: dict[str, dict[str, str]] | None, key: str
) -> float:
    if "accuracy" in entry:
        return _number(entry["accuracy"], f"{key}.accuracy", strict=False) / 100.0
    if table is None:
        raise DeviceError(f"{key}: needs 'accuracy' (top-1 %) or the pool's 'accuracy_table'")
    return float(table[key]["top1_accuracy_pct"]) / 100.0


def pieslicer_models(
    path: str | Path,
    models: Sequence[Mapping[str, Any]],
    accuracy_table: str | Path | None = None,
) -> tuple[OnDeviceModel, ...]:
    """On-device models from the PieSlicer per-run measurements (not yet scaled to a tier).

    Each entry: ``{model: mobilenet_1.0_224, quantized: false}`` and optionally ``accuracy``
    (top-1 %, default: the TF Lite table's value for the same architecture and precision) and
    ``id`` (default ``model`` + ``_8bit`` when quantized).
    """
    runs = read_pieslicer_runs(str(path))
    table = read_tflite_table(str(accuracy_table)) if accuracy_table is not None else None
    out = []
    for i, e in enumerate(models):
        if not isinstance(e, Mapping) or "model" not in e:
            raise DeviceError(f"pool.models[{i}] must be a mapping with a 'model' name, got {e!r}")
        name = str(e["model"])
        quant = bool(e.get("quantized", False))
        if (name, quant) not in runs:
            known = sorted({m for m, _ in runs})
            raise DeviceError(
                f"pool.models[{i}]: no PieSlicer runs of {name!r} (quantized={quant}); "
                f"known models: {known}"
            )
        ex, ld = runs[(name, quant)]
        tname = tflite_name(name, quant) if "accuracy" not in e else name
        if table is not None and "accuracy" not in e and tname not in table:
            raise DeviceError(f"pool.models[{i}]: {tname!r} is not in the TF Lite table")
        acc = _entry_accuracy(e, table, tname)
        mid = str(e.get("id", name + ("_8bit" if quant else "")))
        out.append(OnDeviceModel(mid, acc, ex, ld, quant, "pieslicer_on_device_runs.csv"))
    return tuple(out)


def tflite_models(
    path: str | Path,
    models: Sequence[Mapping[str, Any] | str],
    cv: float = 0.05,
    load_intercept_ms: float = 5.3,
    load_ms_per_mb: float = 10.5,
    load_cv: float = 0.08,
) -> tuple[OnDeviceModel, ...]:
    """On-device models from TF Lite's hosted-model table (means only).

    Inference time: log-normal with the table's ``tflite_latency_ms`` as mean and CV ``cv``
    (assumed; the table gives no spread). Load time: ``load_intercept_ms + load_ms_per_mb *
    model size`` (the least-squares line of the PieSlicer float models' mean load time against
    their TF Lite file size over the 17 float models, 5.3 ms + 10.5 ms/MB), log-normal with CV
    ``load_cv``.
    """
    table = read_tflite_table(str(path))
    out = []
    for i, e in enumerate(models):
        entry: Mapping[str, Any] = {"model": e} if isinstance(e, str) else e
        name = str(entry.get("model", ""))
        if name not in table:
            raise DeviceError(
                f"pool.models[{i}]: {name!r} is not in the TF Lite table; known: {sorted(table)}"
            )
        row = table[name]
        mean = float(row["tflite_latency_ms"])
        size = float(row["model_size_Mb_as_listed"])
        acc = (
            float(entry["accuracy"]) / 100.0
            if "accuracy" in entry
            else float(row["top1_accuracy_pct"]) / 100.0
        )
        out.append(
            OnDeviceModel(
                str(entry.get("id", name)),
                acc,
                lognormal_quantiles(mean, cv),
                lognormal_quantiles(load_intercept_ms + load_ms_per_mb * size, load_cv),
                name.endswith("_quant"),
                f"tflite hosted models ({row.get('benchmark_note_in_source', '')})",
            )
        )
    return tuple(out)


# ----------------------------------------------------------------------------- the device
@dataclass(frozen=True, eq=False)
class DeviceProfile:
    """One device tier: preprocessing, on-device pool, backup model, power, images.

    Build it from a config with :meth:`from_config` (the ``conf/device/*.yaml`` presets).
    """

    name: str
    tier: str
    models: tuple[OnDeviceModel, ...]
    preprocessing: Preprocessing
    compute_power_w: float = 2.5
    backup_model: str | None = None
    images: ImageModel = field(default_factory=ImageModel)
    phone: str = ""

    def __post_init__(self) -> None:
        if self.tier not in TIERS:
            raise DeviceError(
                f"device {self.name!r}: unknown device tier {self.tier!r}; expected one of "
                f"{list(TIERS)}"
            )
        if not self.models:
            raise DeviceError(
                f"device {self.name!r}: the on-device pool has no models (at least one is "
                "needed: the placement action chooses among them)"
            )
        ids = [m.id for m in self.models]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise DeviceError(f"device {self.name!r}: duplicate on-device model ids {dup}")
        _number(self.compute_power_w, "compute_power_w", strict=False)
        if self.backup_model is not None and self.backup_model not in ids:
            raise DeviceError(
                f"device {self.name!r}: backup_model {self.backup_model!r} is not in the "
                f"on-device pool {ids}"
            )

    @property
    def ids(self) -> tuple[str, ...]:
        """On-device model ids, in pool order."""
        return tuple(m.id for m in self.models)

    @property
    def tier_index(self) -> int:
        """Position of the tier in :data:`TIERS` (0 = low)."""
        return TIERS.index(self.tier)

    @property
    def backup_index(self) -> int:
        """Pool index of the backup model (default: the fastest model by mean)."""
        if self.backup_model is not None:
            return self.ids.index(self.backup_model)
        return int(np.argmin([m.mean_ms for m in self.models]))

    @classmethod
    def from_config(
        cls,
        name: str,
        tier: str,
        pool: Mapping[str, Any],
        preprocessing: Mapping[str, Any],
        compute_power_w: float = 2.5,
        backup_model: str | None = None,
        images: Mapping[str, Any] | ImageModel | None = None,
        phone: str = "",
    ) -> DeviceProfile:
        """Build a device from a config mapping (see ``conf/device/mid.yaml``).

        ``pool``: ``{source: pieslicer | tflite, path, models: [...], exec_scale, load_scale,
        ...}``; extra keys go to :func:`pieslicer_models` / :func:`tflite_models`.
        """
        if tier not in TIERS:
            raise DeviceError(
                f"device {name!r}: unknown device tier {tier!r}; expected one of {list(TIERS)}"
            )
        if not isinstance(pool, Mapping):
            raise DeviceError(f"device {name!r}: 'pool' must be a mapping, got {pool!r}")
        args = dict(pool)
        source = args.pop("source", "pieslicer")
        exec_scale = _number(args.pop("exec_scale", 1.0), "pool.exec_scale")
        load_scale = _number(args.pop("load_scale", exec_scale), "pool.load_scale")
        entries = args.pop("models", None)
        if not entries:
            raise DeviceError(
                f"device {name!r}: the on-device pool has no models (pool.models is empty)"
            )
        if "path" not in args:
            raise DeviceError(f"device {name!r}: pool.path (the measured data file) is missing")
        try:
            if source == "pieslicer":
                base = pieslicer_models(args.pop("path"), entries, **args)
            elif source == "tflite":
                base = tflite_models(args.pop("path"), entries, **args)
            else:
                raise DeviceError(
                    f"device {name!r}: unknown pool.source {source!r}; expected 'pieslicer' or "
                    "'tflite'"
                )
        except TypeError as e:
            raise DeviceError(f"device {name!r}: pool: {e}") from None
        models = tuple(m.scaled(exec_scale, load_scale) for m in base)
        pre = Preprocessing(**dict(preprocessing))
        img = images if isinstance(images, ImageModel) else ImageModel(**dict(images or {}))
        dev = cls(name, tier, models, pre, float(compute_power_w), backup_model, img, phone)
        log.debug(
            "device %s (%s, %s): %d on-device models from %s, x%.2f",
            name,
            tier,
            phone,
            len(models),
            source,
            exec_scale,
        )
        return dev
