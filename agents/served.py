"""The learned selector *as served*, as a policy: evaluate exactly what a server runs.

:class:`ServedPolicy` wraps a :class:`modi.runtime.Selector` (an exported ``.onnx`` file behind
the runtime's decision core: graph, shield, fallback rule, all with the selector's shipped
defaults unless given otherwise) as a :class:`~modi.agents.protocol.Policy`. Each ``select``
is one :meth:`Selector.select_features` call on the simulator's observations, so the choices
are the server's (a test checks they equal :meth:`Selector.select_batch` on the same requests),
and the policy counts how often the shield fired and how often the fallback answered.

:func:`served_from_policy` exports a trained :class:`~modi.agents.bandits.LearnedPolicy` with
:func:`~modi.agents.export.export_onnx` and serves the file: the learned row of a comparison.

Usage::

    served = served_from_policy(policy, "out/linucb.onnx")
    rollout(served, sim, steps, seed)        # modi.agents.evaluation
    served.shield_rate, served.fallback_rate
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from modi.agents.protocol import Actions, Obs
from modi.runtime import features as F
from modi.runtime.pool_profile import PoolProfile
from modi.runtime.selector import Decisions, Selector

if TYPE_CHECKING:
    from modi.agents.bandits import LearnedPolicy

_SHIELD_PREFIX = "shield"


class ServedPolicy:
    """A :class:`Selector` as a policy of :mod:`modi.agents.protocol`.

    Args:
        selector: a loaded :class:`Selector`, or the path of an exported ``.onnx`` file
            (loaded strictly: a file the runtime refuses raises
            :class:`~modi.runtime.SelectorLoadError`).
        pool_ids: with a path, the served pool's ordered model ids (required for a
            pool-specific file; default ``m0 .. m{K-1}``). The pool's accuracies and profiles
            come from the first observation's model block (``select_features`` decides on
            each observation's own model block anyway).
        name: the policy's name (default: the file's ``policy_name``, else ``"served"``).
        selector_kwargs: with a path, arguments of :class:`Selector` (default: none, i.e. the
            shipped defaults, which is what a server runs).

    Counters since the last :meth:`reset`: :attr:`decisions`, :attr:`shield_firings`,
    :attr:`fallbacks` (every decision not made by the learned graph, shield firings included),
    and the rates :attr:`shield_rate` and :attr:`fallback_rate`.
    """

    def __init__(
        self,
        selector: Selector | str | os.PathLike[str],
        *,
        pool_ids: Sequence[str] | None = None,
        name: str | None = None,
        **selector_kwargs: Any,
    ) -> None:
        self._path: Path | None = None
        self._pool_ids = None if pool_ids is None else [str(i) for i in pool_ids]
        self._kwargs = dict(selector_kwargs)
        self.selector: Selector | None
        if isinstance(selector, Selector):
            if pool_ids is not None or selector_kwargs:
                raise ValueError(
                    "pool_ids and selector arguments apply to a path; this Selector is built"
                )
            self.selector = selector
            meta = selector.metadata
        else:
            self._path = Path(os.fspath(selector))
            if not self._path.is_file():
                raise FileNotFoundError(f"selector file {self._path} does not exist")
            from modi.agents.export import read_metadata

            meta = read_metadata(self._path)
            if not meta.pool_agnostic and self._pool_ids is None:
                self._pool_ids = list(meta.pool_model_ids)
            self.selector = None
            if "seed" in self._kwargs:
                raise ValueError("give the seed to reset(num_envs, seed), not to ServedPolicy")
        self.name = name or (meta.policy_name if meta is not None else "served")
        self._seed: int | Sequence[int] | None = None
        self.decisions = 0
        self.shield_firings = 0
        self.fallbacks = 0

    # -- protocol -----------------------------------------------------------------------------
    def reset(self, num_envs: int, seed: int | Sequence[int] | None = None) -> None:
        """Zero the counters and restart the fallback rule's random stream from ``seed`` (an
        integer or a stream key)."""
        self._seed = seed
        self.decisions = self.shield_firings = self.fallbacks = 0
        if self.selector is not None:
            self.selector.reseed(seed)

    def select(self, obs: Obs) -> Actions:
        """The served selector's choice for each row of ``obs`` ``(N, R + P*K)``."""
        return self.decide(obs).index

    def decide(self, obs: Obs) -> Decisions:
        """:meth:`select` with the whole :class:`~modi.runtime.Decisions` (reasons, sources)."""
        x = np.atleast_2d(np.asarray(obs, dtype=np.float32))
        sel = self.selector if self.selector is not None else self._build(x)
        d = sel.select_features(x)
        n = len(d)
        learned = int(np.count_nonzero(d.learned))
        self.decisions += n
        if learned < n:
            self.fallbacks += n - learned
            self.shield_firings += sum(
                1 for ok, r in zip(d.learned.tolist(), d.reasons, strict=True)
                if not ok and r.startswith(_SHIELD_PREFIX)
            )  # fmt: skip
        return d

    # -- counters -----------------------------------------------------------------------------
    @property
    def shield_rate(self) -> float:
        """Shield firings / decisions since :meth:`reset` (0 before any decision)."""
        return self.shield_firings / self.decisions if self.decisions else 0.0

    @property
    def fallback_rate(self) -> float:
        """Decisions not made by the learned graph / decisions since :meth:`reset`."""
        return self.fallbacks / self.decisions if self.decisions else 0.0

    def stats(self) -> dict[str, float]:
        """The counters as a dict (for a report row)."""
        return {
            "decisions": self.decisions,
            "shield_firings": self.shield_firings,
            "fallbacks": self.fallbacks,
            "shield_rate": self.shield_rate,
            "fallback_rate": self.fallback_rate,
        }

    # -- building -----------------------------------------------------------------------------
    def _build(self, obs: NDArray[np.float32]) -> Selector:
        """Load the file for the pool of ``obs`` (first row's model block)."""
        assert self._path is not None
        layout = F.ObsLayout.from_obs_dim(obs.shape[1])
        rows = layout.models(obs[:1])[0].astype(np.float64)
        k = layout.num_models
        ids = self._pool_ids or [f"m{i}" for i in range(k)]
        if len(ids) != k:
            raise ValueError(f"pool_ids has {len(ids)} models, the observations {k}")
        pool = PoolProfile.from_lists(
            ids, rows[:, F.ACC].tolist(), rows[:, F.MU].tolist(), rows[:, F.SIGMA].tolist()
        )
        sel = Selector.load(self._path, pool, strict=True, seed=self._seed, **self._kwargs)
        self.selector = sel
        return sel


def served_from_policy(
    policy: LearnedPolicy,
    path: str | os.PathLike[str],
    *,
    pool_ids: Sequence[str] | None = None,
    pool_accuracy: Sequence[float] | None = None,
    name: str | None = None,
    run_id: str | None = None,
) -> ServedPolicy:
    """Export ``policy`` to ``path`` with :func:`~modi.agents.export.export_onnx` and return it
    as served with the :class:`Selector`'s shipped defaults (``pool_ids``/``pool_accuracy``
    make a pool-specific file, as in ``export_onnx``; ``name`` defaults to the policy's)."""
    from modi.agents.export import export_onnx

    out = export_onnx(policy, path, pool_ids, run_id, pool_accuracy=pool_accuracy)
    own = getattr(policy, "pool_ids", None)
    ids = pool_ids if pool_ids is not None else own
    return ServedPolicy(out, pool_ids=ids, name=name or str(getattr(policy, "name", "served")))
