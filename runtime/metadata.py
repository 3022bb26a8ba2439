"""The contract between an exported selector and the runtime that serves it.

:func:`modi.agents.export.export_onnx` writes a :class:`SelectorMetadata` into the ``.onnx``
file's ``metadata_props`` (string key/value pairs, every key prefixed ``modi.``);
:class:`modi.runtime.Selector` reads them back with :meth:`SelectorMetadata.from_props` and
refuses a file whose feature schema or pool does not match what it serves. Both sides use this
module, so the keys cannot drift. Part of the runtime: standard library and features only.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from modi.runtime.features import MODEL_FEATURES, REQUEST_FEATURES, SCHEMA_NAME, SCHEMA_VERSION

#: Version of this metadata layout (bump when a key changes meaning).
METADATA_VERSION = 1
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
        )

    def check_schema(self) -> None:
        """Raise :class:`MetadataError` unless the features are this runtime's schema."""
        if (self.schema_name, self.schema_version) != (SCHEMA_NAME, SCHEMA_VERSION):
            raise MetadataError(
                f"feature schema mismatch: the selector was trained on {self.schema_name} "
                f"v{self.schema_version}, this runtime builds {SCHEMA_NAME} v{SCHEMA_VERSION}"
            )
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
