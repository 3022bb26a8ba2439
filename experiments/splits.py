"""Train / validation / test splits and the keys of request streams.

Every reported number comes from a *test* stream nobody tuned on; every choice (rule parameters,
agent settings, early stopping, the champion) is made on *validation* streams (DESIGN.md §4).

* A request stream is a function of ``(scenario, split, seed, SLA value[, CV])`` alone
  (:func:`stream_key`): adding or removing other SLAs from a sweep changes no number, and every
  policy evaluated on a point sees the same requests (common random numbers).
* The splits' seeds must be disjoint (:class:`Splits` refuses an overlap).
* Trace-driven networks are split in time as well: each split reads only its own fraction of
  every trace (``segments``, passed to the network as ``segment``), so the test part of a trace
  is never seen in training or tuning. Synthetic networks (the papers' Gaussian network, the
  link models) need no such split: their seeds are the split.
"""

from __future__ import annotations

import inspect
import itertools
import logging
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from modi.experiments.common import ConfigError, instantiate_node

log = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("train", "val", "test")


def stream_key(
    scenario: str, split: str, seed: int, sla_ms: float, cv: float | None = None
) -> list[int]:
    """The seed of the request stream of one sweep point: integers derived from what the point
    *is*, for :class:`numpy.random.SeedSequence` (so for ``ModelSelectionSim.reset``)."""
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {list(SPLITS)}, got {split!r}")
    key = [
        zlib.crc32(str(scenario).encode()),
        SPLITS.index(split),
        int(seed),
        round(float(sla_ms) * 1000),
    ]
    if cv is not None:
        key.append(round(float(cv) * 1e6) + 1)
    return key


def _seed_list(value: Any, key: str) -> tuple[int, ...]:
    items = list(value) if isinstance(value, (list, tuple, ListConfig)) else [value]
    out = []
    for v in items:
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ConfigError(f"{key} must be a list of integers >= 0, got {value!r}")
        out.append(int(v))
    if not out:
        raise ConfigError(f"{key} must list at least one seed")
    if len(set(out)) != len(out):
        raise ConfigError(f"{key} lists a seed twice: {out}")
    return tuple(out)


@dataclass(frozen=True)
class Splits:
    """Seeds of the three splits and, for trace-driven networks, their trace segments."""

    train: tuple[int, ...]
    val: tuple[int, ...]
    test: tuple[int, ...]
    segments: Mapping[str, tuple[float, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
            both = sorted(set(getattr(self, a)) & set(getattr(self, b)))
            if both:
                raise ConfigError(
                    f"splits: seed(s) {both} are in both {a} and {b}; the splits must be disjoint"
                )
        spans = []
        for name, seg in self.segments.items():
            if name not in SPLITS:
                raise ConfigError(
                    f"splits.segments: unknown split {name!r}; expected {list(SPLITS)}"
                )
            lo, hi = seg
            if not 0.0 <= lo < hi <= 1.0:
                raise ConfigError(
                    f"splits.segments.{name} must be [start, end] with 0 <= start < end <= 1 "
                    f"(fractions of each trace), got {[lo, hi]}"
                )
            spans.append((lo, hi, name))
        spans.sort()
        for (_, hi1, n1), (lo2, _, n2) in itertools.pairwise(spans):
            if lo2 < hi1:
                raise ConfigError(
                    f"splits.segments: {n1} and {n2} overlap; a test trace segment must never "
                    "be seen in training or tuning"
                )

    def seeds(self, split: str) -> tuple[int, ...]:
        """The seeds of ``split``."""
        if split not in SPLITS:
            raise ConfigError(f"split must be one of {list(SPLITS)}, got {split!r}")
        return tuple(getattr(self, split))

    @classmethod
    def from_cfg(cls, cfg: DictConfig, train_seeds: Sequence[int] | None = None) -> Splits:
        """Read ``cfg.splits`` (``val.seeds``, ``test.seeds``, ``segments``); the training seeds
        are ``train_seeds`` or ``cfg.splits.train.seeds`` or ``[cfg.seed]``."""
        node = cfg.get("splits")
        if not isinstance(node, DictConfig):
            raise ConfigError(f"splits must be a mapping (val, test, segments), got {node!r}")
        if train_seeds is None:
            tr = node.get("train")
            if tr is not None and tr.get("seeds") is not None:
                train_seeds = _seed_list(tr.seeds, "splits.train.seeds")
            else:
                train_seeds = _seed_list(cfg.get("seed", 0), "seed")
        segs: dict[str, tuple[float, float]] = {}
        raw = node.get("segments")
        if raw is not None:
            seg_map: Any = OmegaConf.to_container(raw, resolve=True)
            if not isinstance(seg_map, dict):
                raise ConfigError(f"splits.segments must be a mapping, got {raw!r}")
            for name, v in seg_map.items():
                if (
                    not isinstance(v, list)
                    or len(v) != 2
                    or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)
                ):
                    raise ConfigError(
                        f"splits.segments.{name} must be [start, end] (fractions), got {v!r}"
                    )
                segs[str(name)] = (float(v[0]), float(v[1]))
        return cls(
            train=tuple(train_seeds),
            val=_seed_list(node.val.seeds, "splits.val.seeds"),
            test=_seed_list(node.test.seeds, "splits.test.seeds"),
            segments=segs,
        )


def takes_segment(node: DictConfig) -> bool:
    """Whether the network config's target accepts a ``segment`` (trace-driven networks)."""
    from hydra.utils import get_object

    target = node.get("_target_") if isinstance(node, DictConfig) else None
    if not target:
        return False
    try:
        obj = get_object(str(target))
        return "segment" in inspect.signature(obj).parameters
    except (ImportError, ValueError, TypeError):
        return False


def network_for_split(cfg: DictConfig, split: str, splits: Splits | None, **overrides: Any) -> Any:
    """Instantiate ``cfg.network`` for ``split``: trace-driven networks read only the split's
    segment of their traces (when ``splits`` defines one)."""
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {list(SPLITS)}, got {split!r}")
    node = cfg.get("network")
    if splits is not None and split in splits.segments and takes_segment(node):
        if node.get("segment") is not None:
            raise ConfigError(
                "network.segment is set by the splits (splits.segments); "
                "set splits.segments.<split> instead"
            )
        overrides = {"segment": list(splits.segments[split]), **overrides}
    return instantiate_node(cfg, "network", **overrides)
