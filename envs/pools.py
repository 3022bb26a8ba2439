"""Model pools: the models a server can answer with, each with accuracy and an execution-time
distribution (normal μ/σ or empirical samples) measured on some hardware."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

log = logging.getLogger(__name__)

LOCATIONS = ("server", "device")


class PoolError(ValueError):
    """A model pool is malformed; the message names the file or field."""


@dataclass(frozen=True)
class ModelSpec:
    """One model: id, top-1 accuracy (fraction), execution-time distribution, location."""

    id: str
    accuracy: float
    mean_ms: float
    std_ms: float
    location: str = "server"
    samples_ms: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        where = f"model {self.id!r}"
        if not self.id:
            raise PoolError("model id must be a non-empty string")
        if not 0.0 <= self.accuracy <= 1.0 or not np.isfinite(self.accuracy):
            raise PoolError(f"{where}: accuracy must be a fraction in [0, 1], got {self.accuracy}")
        if not np.isfinite(self.mean_ms) or self.mean_ms <= 0:
            raise PoolError(f"{where}: mean_ms must be > 0, got {self.mean_ms}")
        if not np.isfinite(self.std_ms) or self.std_ms < 0:
            raise PoolError(
                f"{where}: std_ms must be >= 0 (sigma cannot be negative), got {self.std_ms}"
            )
        if self.location not in LOCATIONS:
            raise PoolError(f"{where}: location must be one of {LOCATIONS}, got {self.location!r}")
        if self.samples_ms is not None and (len(self.samples_ms) == 0 or min(self.samples_ms) <= 0):
            raise PoolError(f"{where}: samples_ms must be a non-empty list of positive times")


@dataclass(frozen=True)
class ModelPool:
    """An ordered, non-empty collection of models with array views for the simulator."""

    name: str
    models: tuple[ModelSpec, ...]
    source: str = ""
    ids: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        if not self.models:
            raise PoolError(f"pool {self.name!r} is empty: at least one model is needed")
        ids = tuple(m.id for m in self.models)
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise PoolError(f"pool {self.name!r} has duplicate model ids {dup}")
        object.__setattr__(self, "ids", ids)

    def __len__(self) -> int:
        return len(self.models)

    @property
    def accuracy(self) -> NDArray[np.float64]:
        """Top-1 accuracy per model, fraction, shape (K,)."""
        return np.array([m.accuracy for m in self.models])

    @property
    def mean_ms(self) -> NDArray[np.float64]:
        """Profiled mean execution time per model, shape (K,)."""
        return np.array([m.mean_ms for m in self.models])

    @property
    def std_ms(self) -> NDArray[np.float64]:
        """Profiled standard deviation of execution time per model, shape (K,)."""
        return np.array([m.std_ms for m in self.models])

    def index(self, model_id: str) -> int:
        """Position of ``model_id`` in the pool."""
        try:
            return self.ids.index(model_id)
        except ValueError:
            raise PoolError(
                f"unknown model {model_id!r} in pool {self.name!r}; known: {list(self.ids)}"
            ) from None

    def scaled(self, factor: float) -> ModelPool:
        """The same models with every execution time times ``factor`` (> 0), named
        ``<name>_x<factor>``."""
        ok = isinstance(factor, (int, float)) and not isinstance(factor, bool)
        f = float(factor) if ok else 0.0
        if not np.isfinite(f) or f <= 0:
            raise PoolError(f"pool {self.name!r}: time_scale must be a number > 0, got {factor!r}")
        models = tuple(
            replace(
                m,
                mean_ms=m.mean_ms * f,
                std_ms=m.std_ms * f,
                samples_ms=None if m.samples_ms is None else tuple(x * f for x in m.samples_ms),
            )
            for m in self.models
        )
        return ModelPool(f"{self.name}_x{f:g}", models, self.source)

    def subset(self, model_ids: Sequence[str], name: str | None = None) -> ModelPool:
        """A pool with only the given models, in the given order."""
        return ModelPool(name or self.name, tuple(self.models[self.index(i)] for i in model_ids))

    @classmethod
    def from_config(
        cls,
        name: str,
        models: Sequence[Mapping[str, Any]] | None = None,
        path: str | Path | None = None,
        accuracy_unit: str = "percent",
        include: Sequence[str] | None = None,
        time_scale: float = 1.0,
    ) -> ModelPool:
        """Build a pool from inline model entries or a YAML file (``path``).

        ``time_scale`` multiplies every execution time (mean, std, samples): ``10`` is the same
        pool on servers ten times slower, ``0.1`` ten times faster (``pool.time_scale=10``);
        the pool's name then ends in ``_x10``.

        Entries take ``id``/``name``, ``top1_accuracy`` (percent unless ``accuracy_unit`` is
        ``fraction``) or ``accuracy`` (fraction), ``mean_ms``, ``std_ms``, optional ``location``
        and ``samples_ms``.

        A ``path`` replaces inline ``models`` (so ``pool.path=FILE`` works on a preset with
        inline models, e.g. the default ``modipick_table2``); the pool is then named after the
        file (its stem).
        """
        source = "inline config"
        if path is not None:
            entries, source = _read_pool_file(Path(path))
            if models:
                log.info(
                    "pool %s: path %s replaces the %d inline models; the pool is named %r",
                    name,
                    path,
                    len(models),
                    Path(path).stem,
                )
                name = Path(path).stem
        elif models is not None:
            entries = list(models)
        else:
            raise PoolError(f"pool {name!r}: needs 'models' (a list) or 'path' (a YAML file)")
        specs = tuple(_spec(e, i, source, accuracy_unit) for i, e in enumerate(entries))
        pool = cls(name, specs, source)
        if include is not None:
            pool = pool.subset(list(include))
        if time_scale != 1.0:
            pool = pool.scaled(time_scale)
        log.debug("loaded pool %s with %d models from %s", name, len(pool), source)
        return pool


def _read_pool_file(path: Path) -> tuple[list[Mapping[str, Any]], str]:
    import yaml  # training-stack dependency; pools are built by the simulator, not the runtime

    if not path.is_file():
        raise PoolError(f"pool file {path} does not exist (give a YAML file with a 'models' list)")
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise PoolError(f"pool file {path} is not valid YAML: {e}") from None
    if not isinstance(doc, Mapping) or not isinstance(doc.get("models"), list):
        raise PoolError(f"pool file {path}: expected a mapping with a 'models' list")
    return list(doc["models"]), str(path)


def _spec(e: Any, i: int, source: str, accuracy_unit: str) -> ModelSpec:
    where = f"{source}, models[{i}]"
    if not isinstance(e, Mapping):
        raise PoolError(f"{where}: expected a mapping, got {type(e).__name__}")
    model_id = e.get("id", e.get("name"))
    if not isinstance(model_id, str):
        raise PoolError(f"{where}: needs a string 'id' (or 'name')")
    try:
        if "top1_accuracy" in e:
            acc = float(e["top1_accuracy"])
            acc = acc / 100.0 if accuracy_unit == "percent" else acc
        elif "accuracy" in e:
            acc = float(e["accuracy"])
        else:
            raise PoolError(f"{where} ({model_id}): needs 'top1_accuracy' or 'accuracy'")
        samples = e.get("samples_ms")
        if samples is None and ("mean_ms" not in e or "std_ms" not in e):
            raise PoolError(f"{where} ({model_id}): needs 'mean_ms' and 'std_ms' (or 'samples_ms')")
        return ModelSpec(
            id=model_id,
            accuracy=acc,
            mean_ms=float(e["mean_ms"] if "mean_ms" in e else np.mean(np.asarray(samples))),
            std_ms=float(e["std_ms"] if "std_ms" in e else np.std(np.asarray(samples))),
            location=str(e.get("location", "server")),
            samples_ms=tuple(float(s) for s in samples) if samples is not None else None,
        )
    except PoolError as err:
        raise PoolError(f"{where}: {err}") from None
    except (TypeError, ValueError) as err:
        raise PoolError(f"{where} ({model_id}): a numeric field is malformed: {err}") from None
