"""The pool a server actually hosts, as the runtime needs it: ids, accuracies, initial profiles.

The runtime never imports :mod:`modi.envs`; :meth:`PoolProfile.from_pool` accepts anything that
looks like a pool (``ids``, ``accuracy``, ``mean_ms``, ``std_ms``), e.g.
:class:`modi.envs.pools.ModelPool`, and :meth:`PoolProfile.from_lists` builds one from plain
lists (a server's config file).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from modi.runtime.metadata import pool_hash


class PoolProfileError(ValueError):
    """A served pool description is malformed; the message names the model and field."""


@dataclass(frozen=True)
class PoolProfile:
    """Ordered models a server hosts: id, top-1 accuracy (fraction) and the initial execution-time
    profile (mean and standard deviation, ms) that the selector's EWMA tracker starts from."""

    ids: tuple[str, ...]
    accuracy: tuple[float, ...]
    mean_ms: tuple[float, ...]
    std_ms: tuple[float, ...]
    name: str = ""

    def __post_init__(self) -> None:
        k = len(self.ids)
        if k == 0:
            raise PoolProfileError("a pool needs at least one model")
        for field_name in ("accuracy", "mean_ms", "std_ms"):
            n = len(getattr(self, field_name))
            if n != k:
                raise PoolProfileError(f"{field_name} has {n} values for {k} model ids")
        seen: set[str] = set()
        for i, (mid, a, mu, sd) in enumerate(
            zip(self.ids, self.accuracy, self.mean_ms, self.std_ms, strict=True)
        ):
            where = f"pool {self.name!r} model {i} ({mid!r})"
            if not isinstance(mid, str) or not mid:
                raise PoolProfileError(f"{where}: id must be a non-empty string")
            if mid in seen:
                raise PoolProfileError(f"{where}: duplicate model id")
            seen.add(mid)
            if not (math.isfinite(a) and 0.0 <= a <= 1.0):
                raise PoolProfileError(f"{where}: accuracy must be a fraction in [0, 1], got {a}")
            if not (math.isfinite(mu) and mu > 0.0):
                raise PoolProfileError(f"{where}: mean_ms must be finite and > 0, got {mu}")
            if not (math.isfinite(sd) and sd >= 0.0):
                raise PoolProfileError(f"{where}: std_ms must be finite and >= 0, got {sd}")

    @classmethod
    def from_lists(
        cls,
        ids: Sequence[str],
        accuracy: Sequence[float],
        mean_ms: Sequence[float],
        std_ms: Sequence[float],
        name: str = "",
    ) -> PoolProfile:
        """Build from parallel lists (accuracy as a fraction in [0, 1])."""
        try:
            return cls(
                tuple(str(i) for i in ids),
                tuple(float(a) for a in accuracy),
                tuple(float(m) for m in mean_ms),
                tuple(float(s) for s in std_ms),
                str(name),
            )
        except (TypeError, ValueError) as e:
            if isinstance(e, PoolProfileError):
                raise
            raise PoolProfileError(f"pool {name!r}: a numeric field is malformed: {e}") from None

    @classmethod
    def from_pool(cls, pool: Any) -> PoolProfile:
        """Build from any object with ``ids``, ``accuracy``, ``mean_ms``, ``std_ms`` (and
        optionally ``name``), such as :class:`modi.envs.pools.ModelPool`."""
        if isinstance(pool, PoolProfile):
            return pool
        missing = [a for a in ("ids", "accuracy", "mean_ms", "std_ms") if not hasattr(pool, a)]
        if missing:
            raise PoolProfileError(
                f"cannot describe a pool from {type(pool).__name__}: it lacks {missing}; give a "
                "PoolProfile, a ModelPool or use PoolProfile.from_lists"
            )
        return cls.from_lists(
            list(pool.ids),
            list(pool.accuracy),
            list(pool.mean_ms),
            list(pool.std_ms),
            str(getattr(pool, "name", "")),
        )

    @property
    def num_models(self) -> int:
        """Number of models ``K``."""
        return len(self.ids)

    def index(self, model_id: str) -> int:
        """Position of ``model_id`` in the pool."""
        try:
            return self.ids.index(model_id)
        except ValueError:
            raise PoolProfileError(
                f"unknown model {model_id!r}; the pool holds {list(self.ids)}"
            ) from None

    def fingerprint(self, with_accuracy: bool = True) -> str:
        """:func:`~modi.runtime.metadata.pool_hash` of this pool."""
        return pool_hash(self.ids, self.accuracy if with_accuracy else None)
