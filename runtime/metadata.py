"""The contract between an exported selector and the runtime that serves it.

:func:`modi.agents.export.export_onnx` writes a :class:`SelectorMetadata` into the ``.onnx``
file's ``metadata_props`` (string key/value pairs, every key prefixed ``modi.``);
:class:`modi.runtime.Selector` reads them back with :meth:`SelectorMetadata.from_props` and
refuses a file whose feature schema or pool does not match what it serves. Both sides use this
module, so the keys cannot drift. Part of the runtime: numpy, the standard library and features
only.

Since metadata version 2 a file may carry the *training ranges* of its policy
(:class:`FeatureRanges`, key ``modi.training_ranges``): the smallest and largest value of each
request feature and of the model block's ``mu_ms`` and ``sigma_ms`` over every observation the
policy saw while training (recorded by :class:`RangeRecorder`). The selector's shield checks
requests against them. Older files (version 1) have none and still load.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from modi.runtime.features import (
    MODEL_FEATURES,
    MU,
    REQUEST_FEATURES,
    SCHEMA_NAME,
    SCHEMA_VERSION,
    SELF_IMPUTED_COLUMNS,
    SIGMA,
    P,
    R,
)

#: Length of the request block of each feature schema version of :data:`SCHEMA_NAME`: each
#: version appended columns to the request block (the model block never changed), so version
#: ``v`` has the first ``SCHEMA_REQUEST_DIMS[v]`` columns of :data:`REQUEST_FEATURES`. Version 2
#: (issue 13) added ``srtt_ms``, ``rttvar_ms``; version 3 ``client_dl_ms``, ``client_dlvar_ms``;
#: version 4 ``client_dl_mismatch``.
SCHEMA_REQUEST_DIMS: dict[int, int] = {1: 10, 2: 12, 3: 14, 4: 15}
assert SCHEMA_REQUEST_DIMS[SCHEMA_VERSION] == R == len(REQUEST_FEATURES)
assert max(SCHEMA_REQUEST_DIMS) == SCHEMA_VERSION


def schema_changes(version: int) -> str:
    """What changed in the features since schema ``version`` of :data:`SCHEMA_NAME`, e.g.
    ``"v3 added client_dl_ms, client_dlvar_ms"`` (``""`` for the current or an unknown
    version): the reason an older selector or saved policy is refused."""
    if version not in SCHEMA_REQUEST_DIMS or version >= SCHEMA_VERSION:
        return ""
    names = _names(REQUEST_FEATURES)
    parts = []
    for v in range(version + 1, SCHEMA_VERSION + 1):
        added = names[SCHEMA_REQUEST_DIMS[v - 1] : SCHEMA_REQUEST_DIMS[v]]
        parts.append(f"v{v} added {', '.join(added)}")
    return "; ".join(parts) + " to the request block"


def schema_mismatch(name: str, version: int) -> str:
    """The reason a selector of feature schema ``name`` ``version`` is refused (``""`` when it
    is this runtime's): which schema it has, which this runtime builds, what changed, what to
    do."""
    if (name, version) == (SCHEMA_NAME, SCHEMA_VERSION):
        return ""
    why = (
        f"feature schema mismatch: the selector was trained on {name} v{version}, this runtime "
        f"builds {SCHEMA_NAME} v{SCHEMA_VERSION}"
    )
    changes = schema_changes(version) if name == SCHEMA_NAME else ""
    if changes:
        why += f" ({changes}): retrain it (modi-train) and export it again"
    return why


#: Version of this metadata layout (bump when a key changes meaning). 2: ``training_ranges``.
METADATA_VERSION = 2
PREFIX = "modi."

#: Names of the graph's inputs and outputs (fixed by the contract).
INPUT_REQUEST = "request"
INPUT_MODELS = "models"
OUTPUT_ACTION = "action"
OUTPUT_SCORES = "scores"

ACTION_MEANING = (
    "index (int64) into the models input's second axis, i.e. the position of the chosen model "
    "in the served pool's order; it is the argmax of 'scores' (first index on ties)"
)


class MetadataError(ValueError):
    """A selector file's metadata is missing, malformed or does not match; the message says
    which key and what was expected."""


def pool_hash(model_ids: Sequence[str], accuracy: Sequence[float] | None = None) -> str:
    """Fingerprint of a pool: ``sha256`` over the ordered model ids (and accuracies if given,
    rounded to 1e-6). Order matters: a pool-specific selector's action ``k`` means model ``k``."""
    doc: dict[str, object] = {"ids": [str(i) for i in model_ids]}
    if accuracy is not None:
        doc["accuracy"] = [round(float(a), 6) for a in accuracy]
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def _names(rows: tuple[tuple[str, str, str], ...]) -> tuple[str, ...]:
    return tuple(r[0] for r in rows)


#: Features whose training range is recorded: every request column, then the model block's
#: ``mu_ms`` and ``sigma_ms`` (over all models of all observations).
RANGE_FEATURES: tuple[str, ...] = (*_names(REQUEST_FEATURES), "mu_ms", "sigma_ms")


@dataclass(frozen=True)
class FeatureRanges:
    """Smallest and largest value of each feature of :data:`RANGE_FEATURES` seen in training
    (``names[i]`` spans ``[lo[i], hi[i]]``), over ``observations`` observations."""

    names: tuple[str, ...]
    lo: tuple[float, ...]
    hi: tuple[float, ...]
    observations: int

    def __post_init__(self) -> None:
        n = len(self.names)
        if len(self.lo) != n or len(self.hi) != n or len(set(self.names)) != n:
            raise MetadataError(
                f"training ranges need one unique name, lo and hi per feature, got "
                f"{n} names, {len(self.lo)} lo, {len(self.hi)} hi"
            )
        for name, a, b in zip(self.names, self.lo, self.hi, strict=True):
            if not (math.isfinite(a) and math.isfinite(b) and a <= b):
                raise MetadataError(
                    f"training range of {name!r} must be finite with lo <= hi, got [{a}, {b}]"
                )
        if self.observations < 1:
            raise MetadataError(f"training ranges need >= 1 observation, got {self.observations}")

    def get(self, name: str) -> tuple[float, float] | None:
        """``(lo, hi)`` of ``name``, or ``None`` when it was not recorded."""
        try:
            i = self.names.index(name)
        except ValueError:
            return None
        return self.lo[i], self.hi[i]

    def subset(self, names: tuple[str, ...] | list[str]) -> FeatureRanges:
        """Only the features of ``names`` (the ones a policy reads), in this object's order."""
        keep = [i for i, n in enumerate(self.names) if n in set(names)]
        return FeatureRanges(
            tuple(self.names[i] for i in keep),
            tuple(self.lo[i] for i in keep),
            tuple(self.hi[i] for i in keep),
            self.observations,
        )

    def to_json(self) -> str:
        """The ranges as one JSON object (``repr`` precision: float64 round-trips exactly)."""
        return json.dumps(
            {
                "features": list(self.names),
                "lo": list(self.lo),
                "hi": list(self.hi),
                "observations": self.observations,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str) -> FeatureRanges:
        """Parse :meth:`to_json`'s output; :class:`MetadataError` says what is wrong."""
        try:
            doc = json.loads(text)
            return cls(
                tuple(str(x) for x in doc["features"]),
                tuple(float(x) for x in doc["lo"]),
                tuple(float(x) for x in doc["hi"]),
                int(doc["observations"]),
            )
        except MetadataError:
            raise
        except (ValueError, TypeError, KeyError) as e:
            raise MetadataError(f"malformed modi.training_ranges: {e!r}") from None


class RangeRecorder:
    """Running float64 min/max of :data:`RANGE_FEATURES` over batches of observations
    ``(N, R + P*K)`` (what a learned policy sees while training): a few vectorised reductions
    per batch. Non-finite values are ignored, and so is an unknown download history (a value
    below 0 in :data:`~modi.runtime.features.SELF_IMPUTED_COLUMNS`: the encoded "none yet"),
    so those ranges span the downloads the policy saw."""

    def __init__(self) -> None:
        self.lo = np.full(len(RANGE_FEATURES), np.inf)
        self.hi = np.full(len(RANGE_FEATURES), -np.inf)
        self.observations = 0

    def update(self, obs: NDArray[np.floating]) -> None:
        """Fold a batch of observations (or one, ``(D,)``) into the ranges."""
        x = np.asarray(obs)
        if x.ndim == 1:
            x = x[None, :]
        if x.shape[0] == 0:
            return
        if x.ndim != 2 or x.shape[1] <= R or (x.shape[1] - R) % P:
            raise ValueError(f"observations of shape {x.shape} do not fit the feature schema")
        req = x[:, :R]
        if SELF_IMPUTED_COLUMNS:
            hist = req[:, SELF_IMPUTED_COLUMNS]
            req = req.copy()
            req[:, SELF_IMPUTED_COLUMNS] = np.where(hist >= 0.0, hist, np.nan)
        cols = [req, x[:, R + MU :: P], x[:, R + SIGMA :: P]]
        with np.errstate(invalid="ignore"):
            lo = [np.fmin.reduce(np.where(np.isfinite(c), c, np.nan), axis=0) for c in cols]
            hi = [np.fmax.reduce(np.where(np.isfinite(c), c, np.nan), axis=0) for c in cols]
        lo_all = np.concatenate([lo[0], [np.nanmin(lo[1]), np.nanmin(lo[2])]]).astype(np.float64)
        hi_all = np.concatenate([hi[0], [np.nanmax(hi[1]), np.nanmax(hi[2])]]).astype(np.float64)
        np.fmin(self.lo, lo_all, out=self.lo)
        np.fmax(self.hi, hi_all, out=self.hi)
        self.observations += int(x.shape[0])

    def merge(self, other: RangeRecorder | FeatureRanges | None) -> None:
        """Widen these ranges by another recorder's (or saved ranges of some of
        :data:`RANGE_FEATURES`: the others stay as they are)."""
        if other is None:
            return
        if isinstance(other, FeatureRanges):
            unknown = [n for n in other.names if n not in RANGE_FEATURES]
            if unknown:
                raise ValueError(f"cannot merge ranges of {unknown} into {RANGE_FEATURES}")
            lo = np.full(len(RANGE_FEATURES), np.inf)
            hi = np.full(len(RANGE_FEATURES), -np.inf)
            idx = [RANGE_FEATURES.index(n) for n in other.names]
            lo[idx], hi[idx], n = other.lo, other.hi, other.observations
        else:
            lo, hi, n = other.lo, other.hi, other.observations
        np.fmin(self.lo, lo, out=self.lo)
        np.fmax(self.hi, hi, out=self.hi)
        self.observations += n

    def ranges(self) -> FeatureRanges | None:
        """The ranges so far of the features seen with a finite value (an optional one that
        was always unknown, e.g. a download history no training client had, has none: nothing
        to check it against); ``None`` before any observation with finite values."""
        seen = np.isfinite(self.lo) & np.isfinite(self.hi)
        if self.observations == 0 or not seen.any():
            return None
        keep = np.flatnonzero(seen).tolist()
        return FeatureRanges(
            tuple(RANGE_FEATURES[i] for i in keep),
            tuple(float(self.lo[i]) for i in keep),
            tuple(float(self.hi[i]) for i in keep),
            self.observations,
        )

    @classmethod
    def from_ranges(cls, ranges: FeatureRanges | None) -> RangeRecorder:
        """A recorder that continues from saved ranges (or starts empty)."""
        rec = cls()
        rec.merge(ranges)
        return rec

    def state(self) -> dict[str, Any] | None:
        """Plain data for a saved policy (``None`` when nothing was recorded)."""
        r = self.ranges()
        return None if r is None else json.loads(r.to_json())


@dataclass(frozen=True)
class SelectorMetadata:
    """What an exported selector says about itself.

    ``pool_agnostic`` selectors score each (request, model) pair with shared weights and serve
    any pool; pool-specific ones carry the ordered ``pool_model_ids`` and ``pool_hash`` they
    were trained for (``pool_hash_covers`` says whether accuracies are in the hash).
    """

    policy_kind: str
    policy_name: str
    pool_agnostic: bool
    schema_name: str = SCHEMA_NAME
    schema_version: int = SCHEMA_VERSION
    request_features: tuple[str, ...] = _names(REQUEST_FEATURES)
    model_features: tuple[str, ...] = _names(MODEL_FEATURES)
    pool_model_ids: tuple[str, ...] = ()
    pool_hash: str = ""
    pool_hash_covers: str = ""  # "ids" or "ids+accuracy"; empty when pool-agnostic
    training_run_id: str = ""
    modi_version: str = ""
    graph: str = "plain"  # "fused" when export replaced scorers by algebraically equal ones
    action_meaning: str = ACTION_MEANING
    metadata_version: int = METADATA_VERSION
    extra: Mapping[str, str] = field(default_factory=dict)
    #: What the policy saw in training (``None``: not recorded, e.g. a version-1 file).
    training_ranges: FeatureRanges | None = None

    def to_props(self) -> dict[str, str]:
        """String key/value pairs for ``ModelProto.metadata_props``."""
        props = {
            "metadata_version": str(self.metadata_version),
            "schema_name": self.schema_name,
            "schema_version": str(self.schema_version),
            "request_features": json.dumps(list(self.request_features)),
            "model_features": json.dumps(list(self.model_features)),
            "pool_agnostic": "true" if self.pool_agnostic else "false",
            "pool_model_ids": json.dumps(list(self.pool_model_ids)),
            "pool_hash": self.pool_hash,
            "pool_hash_covers": self.pool_hash_covers,
            "training_run_id": self.training_run_id,
            "version": self.modi_version,
            "policy_kind": self.policy_kind,
            "policy_name": self.policy_name,
            "graph": self.graph,
            "action_meaning": self.action_meaning,
            "inputs": (
                f"{INPUT_REQUEST}: float32 (N, {len(self.request_features)}) request block; "
                f"{INPUT_MODELS}: float32 (N, K, {len(self.model_features)}) model block, "
                f"one row per model in pool order (schema {self.schema_name} "
                f"v{self.schema_version})"
            ),
            "outputs": f"{OUTPUT_ACTION}: int64 (N,); {OUTPUT_SCORES}: float32 (N, K)",
        }
        if self.training_ranges is not None:
            props["training_ranges"] = self.training_ranges.to_json()
        props.update({f"extra.{k}": str(v) for k, v in self.extra.items()})
        return {PREFIX + k: v for k, v in props.items()}

    @classmethod
    def from_props(cls, props: Mapping[str, str]) -> SelectorMetadata:
        """Parse ``metadata_props`` (as onnxruntime's ``custom_metadata_map`` returns them)."""
        p = {k[len(PREFIX) :]: v for k, v in props.items() if k.startswith(PREFIX)}
        if not p:
            raise MetadataError(
                "the file carries no modi metadata (no 'modi.*' metadata_props): it was not "
                "written by modi.agents.export.export_onnx"
            )
        required = ("schema_name", "schema_version", "pool_agnostic", "policy_kind")
        missing = [PREFIX + k for k in required if k not in p]
        if missing:
            raise MetadataError(f"metadata is missing {missing}")
        try:
            version = int(p["schema_version"])
            meta_version = int(p.get("metadata_version", "1"))
            req = tuple(json.loads(p["request_features"])) if "request_features" in p else ()
            mod = tuple(json.loads(p["model_features"])) if "model_features" in p else ()
            ids = tuple(json.loads(p.get("pool_model_ids", "[]")))
        except (ValueError, TypeError) as e:
            raise MetadataError(f"malformed modi metadata: {e}") from None
        ranges = FeatureRanges.from_json(p["training_ranges"]) if "training_ranges" in p else None
        agnostic = p["pool_agnostic"].strip().lower()
        if agnostic not in ("true", "false"):
            raise MetadataError(f"modi.pool_agnostic must be 'true' or 'false', got {agnostic!r}")
        return cls(
            policy_kind=p["policy_kind"],
            policy_name=p.get("policy_name", p["policy_kind"]),
            pool_agnostic=agnostic == "true",
            schema_name=p["schema_name"],
            schema_version=version,
            request_features=tuple(str(x) for x in req),
            model_features=tuple(str(x) for x in mod),
            pool_model_ids=tuple(str(x) for x in ids),
            pool_hash=p.get("pool_hash", ""),
            pool_hash_covers=p.get("pool_hash_covers", ""),
            training_run_id=p.get("training_run_id", ""),
            modi_version=p.get("version", ""),
            graph=p.get("graph", "plain"),
            action_meaning=p.get("action_meaning", ""),
            metadata_version=meta_version,
            extra={k[len("extra.") :]: v for k, v in p.items() if k.startswith("extra.")},
            training_ranges=ranges,
        )

    def check_schema(self) -> None:
        """Raise :class:`MetadataError` unless the features are this runtime's schema."""
        why = schema_mismatch(self.schema_name, self.schema_version)
        if why:
            raise MetadataError(why)
        want_req, want_mod = _names(REQUEST_FEATURES), _names(MODEL_FEATURES)
        if self.request_features and self.request_features != want_req:
            raise MetadataError(
                f"request feature columns differ from schema {SCHEMA_NAME} v{SCHEMA_VERSION}: "
                f"file has {list(self.request_features)}, runtime builds {list(want_req)}"
            )
        if self.model_features and self.model_features != want_mod:
            raise MetadataError(
                f"model feature columns differ from schema {SCHEMA_NAME} v{SCHEMA_VERSION}: "
                f"file has {list(self.model_features)}, runtime builds {list(want_mod)}"
            )

    def check_pool(self, model_ids: Sequence[str], accuracy: Sequence[float]) -> None:
        """Raise :class:`MetadataError` unless a pool-specific selector was made for this pool
        (same ids in the same order, same fingerprint). Pool-agnostic selectors pass."""
        if self.pool_agnostic:
            return
        ids = tuple(model_ids)
        if ids != self.pool_model_ids:
            raise MetadataError(
                f"pool mismatch: this pool-specific selector was exported for models "
                f"{list(self.pool_model_ids)} (in that order), the served pool is {list(ids)}"
            )
        acc = accuracy if self.pool_hash_covers == "ids+accuracy" else None
        if self.pool_hash and pool_hash(ids, acc) != self.pool_hash:
            raise MetadataError(
                f"pool mismatch: same model ids but the pool fingerprint differs "
                f"({self.pool_hash_covers}: file {self.pool_hash}, served {pool_hash(ids, acc)}); "
                "the served models' accuracies changed since export"
            )
