"""The decision log: one JSON line per served decision, what off-policy evaluation reads.

A server (``modi-serve --decision-log``) appends a :class:`DecisionRecord` per request as one
whole line (a record is a complete line or absent); :func:`read_decision_log` reads a log back
into numpy arrays (:class:`DecisionLog`) for :mod:`modi.agents.ope`, and refuses a log it
cannot trust with a :class:`DecisionLogError` that names the line, the field and why.

Record fields (format version :data:`FORMAT_VERSION`)::

    v, ts, request_id, schema, pool, pool_hash,
    selector: {name, version, exploration: {kind, epsilon, temperature}},
    features: [R + P*K floats; null: an optional request column unknown], action, model_id,
    probabilities: [K floats],
    source: "learned"|"fallback", reason,
    outcome: {latency_ms, met, accuracy, correct},
    shadow: null | {selector, action, model_id, probabilities}

The reward of off-policy evaluation is the *effective accuracy*: ``float(correct and met)``
when the request carried a label (``correct`` not null), else ``accuracy if met else 0``; the
attainment is ``met``. Part of the light runtime: standard library and numpy only.

Feature schema versions: a ``modi.model_selection`` record writes its optional request columns
(:data:`modi.runtime.features.OPTIONAL_COLUMNS`: ``srtt_ms``, ``rttvar_ms`` since v2,
``client_dl_ms``, ``client_dlvar_ms`` since v3) as ``null`` when the server did not know them,
read back as the features encode an unknown value there: NaN for the RTT, and
:data:`~modi.runtime.features.UNKNOWN_HISTORY` for the download history (which the encoders
write for "none yet", so a logged vector equals what the selector saw). Records of an older
version (v1: before the RTT columns, v2: before the download history) are read as current
records whose missing columns are unknown, which is what they are, so old logs stay readable
beside new ones. The arrays of :func:`read_decision_log` hold a record written before the
encoders left the time that is not the upload out of ``sla_ms`` and ``elapsed_ms``
(:mod:`modi.runtime.features`) as the encoders now write it
(:func:`~modi.runtime.features.upload_relative`); a current record's features as they are.
"""

from __future__ import annotations

import functools
import json
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from modi.runtime.device_features import DeviceObsLayout
from modi.runtime.features import (
    OPTIONAL_COLUMNS,
    REQUEST_FEATURES,
    SCHEMA_NAME,
    SCHEMA_VERSION,
    SELF_IMPUTED_COLUMNS,
    UNKNOWN_HISTORY,
    ObsLayout,
    upload_relative,
)
from modi.runtime.metadata import SCHEMA_REQUEST_DIMS, pool_hash

log = logging.getLogger(__name__)

#: Version of the record layout (field ``v``).
FORMAT_VERSION = 1
#: Exploration kinds a selector may log.
EXPLORATION_KINDS: tuple[str, ...] = ("none", "epsilon", "softmax", "rule")
#: Values of ``source``.
SOURCES: tuple[str, ...] = ("learned", "fallback")
#: Tolerance on ``|sum(probabilities) - 1|`` (probabilities may be logged from float32).
PROBABILITY_SUM_TOL = 1e-4
#: Feature schemas a log may carry, with the layout that splits their vectors.
LAYOUTS: dict[str, type[ObsLayout]] = {
    ObsLayout.schema: ObsLayout,
    DeviceObsLayout.schema: DeviceObsLayout,
}

_NUMBER_TYPES = frozenset({int, float})

#: The model-selection schemas before issue 13 and their request-block lengths: the same columns
#: without the trailing ones later versions appended (v1: without ``srtt_ms``/``rttvar_ms`` and
#: the download history; v2: without ``client_dl_ms``/``client_dlvar_ms``).
SCHEMA_V1 = f"{SCHEMA_NAME} v1"
V1_REQUEST_DIM = SCHEMA_REQUEST_DIMS[1]
SCHEMA_V2 = f"{SCHEMA_NAME} v2"
V2_REQUEST_DIM = SCHEMA_REQUEST_DIMS[2]
#: Older schemas a log may carry, with their request-block length: read as the current schema
#: with the columns they lack unknown (NaN), which needs every such column to be optional.
UPGRADABLE: dict[str, int] = {
    f"{SCHEMA_NAME} v{v}": dim
    for v, dim in SCHEMA_REQUEST_DIMS.items()
    if v < SCHEMA_VERSION and set(range(dim, len(REQUEST_FEATURES))) <= set(OPTIONAL_COLUMNS)
}
assert SCHEMA_V1 in UPGRADABLE and SCHEMA_V2 in UPGRADABLE
#: What an unknown optional request column (``null`` in a record) reads as: how the features
#: encode it (NaN; the download history's "none yet" is UNKNOWN_HISTORY).
UNKNOWN_VALUES: dict[int, float] = {
    c: UNKNOWN_HISTORY if c in SELF_IMPUTED_COLUMNS else math.nan for c in OPTIONAL_COLUMNS
}


def json_features(
    features: Sequence[float] | NDArray[np.floating], schema: str = ObsLayout.schema
) -> list[float | None]:
    """A feature vector for a JSON record (strict JSON has no NaN): ``null`` where a value is
    NaN or, in the model-selection schema, where the download history is the encoded "none
    yet" (below 0); the reader reads ``null`` back as :data:`UNKNOWN_VALUES`."""
    out: list[float | None] = [float(v) for v in features]
    hist = schema == ObsLayout.schema
    for c, v in enumerate(out):
        if v is not None and (math.isnan(v) or (hist and c in SELF_IMPUTED_COLUMNS and v < 0)):
            out[c] = None
    return out


@functools.lru_cache(maxsize=64)
def _pool_hash(pool: tuple[str, ...]) -> str:
    return pool_hash(pool)


_RECORD_FIELDS = (
    "v", "ts", "request_id", "schema", "pool", "pool_hash", "selector", "features", "action",
    "model_id", "probabilities", "source", "reason", "outcome", "shadow",
)  # fmt: skip


class DecisionLogError(ValueError):
    """A decision log (or one of its records) cannot be used; ``line`` (1-based, 0 when not
    known) and ``field`` say where, the message says why."""

    def __init__(self, message: str, *, path: str = "", line: int = 0, field: str = "") -> None:
        self.path = path
        self.line = line
        self.field = field
        where = []
        if path:
            where.append(str(path))
        if line:
            where.append(f"line {line}")
        if field:
            where.append(f"field {field!r}")
        super().__init__((": ".join([", ".join(where), message])) if where else message)


@dataclass(frozen=True)
class Exploration:
    """How the logging selector randomises: ``kind`` in :data:`EXPLORATION_KINDS`."""

    kind: str = "none"
    epsilon: float | None = None
    temperature: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of this exploration."""
        return {"kind": self.kind, "epsilon": self.epsilon, "temperature": self.temperature}


@dataclass(frozen=True)
class SelectorInfo:
    """Which selector decided: ``version`` is ``"sha256:<hex>"`` of an ``.onnx`` file or
    ``"modipick"`` for the rule."""

    name: str
    version: str
    exploration: Exploration = field(default_factory=Exploration)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of this selector."""
        return {"name": self.name, "version": self.version,
                "exploration": self.exploration.to_dict()}  # fmt: skip


@dataclass(frozen=True)
class Outcome:
    """What happened to the request (each field ``None`` when not known)."""

    latency_ms: float | None = None
    met: bool | None = None
    accuracy: float | None = None  # the served model's expected accuracy, a fraction
    correct: bool | None = None  # when the request carried a label

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of this outcome."""
        return {"latency_ms": self.latency_ms, "met": self.met, "accuracy": self.accuracy,
                "correct": self.correct}  # fmt: skip

    @property
    def reward(self) -> float | None:
        """Effective accuracy (``None`` when it cannot be computed)."""
        if self.met is None:
            return None
        if self.correct is not None:
            return float(self.correct and self.met)
        if not self.met:
            return 0.0
        return None if self.accuracy is None else float(self.accuracy)


@dataclass(frozen=True)
class Shadow:
    """A challenger's choice on the same request (logged, never served)."""

    selector: SelectorInfo
    action: int
    model_id: str
    probabilities: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of this shadow decision."""
        return {"selector": self.selector.to_dict(), "action": self.action,
                "model_id": self.model_id, "probabilities": list(self.probabilities)}  # fmt: skip


@dataclass(frozen=True)
class DecisionRecord:
    """One served decision, as one line of the log."""

    ts: float
    request_id: str
    schema: str
    pool: tuple[str, ...]
    pool_hash: str
    selector: SelectorInfo
    features: tuple[float, ...]
    action: int
    model_id: str
    probabilities: tuple[float, ...]
    source: str
    reason: str
    outcome: Outcome
    shadow: Shadow | None = None
    v: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of this record (field order of the format)."""
        return {
            "v": self.v, "ts": self.ts, "request_id": self.request_id, "schema": self.schema,
            "pool": list(self.pool), "pool_hash": self.pool_hash,
            "selector": self.selector.to_dict(),
            "features": json_features(self.features, self.schema),
            "action": self.action, "model_id": self.model_id,
            "probabilities": list(self.probabilities), "source": self.source,
            "reason": self.reason, "outcome": self.outcome.to_dict(),
            "shadow": None if self.shadow is None else self.shadow.to_dict(),
        }  # fmt: skip

    def to_json_line(self) -> str:
        """The record as one JSON line, newline included (no NaN/inf: strict JSON)."""
        return json.dumps(self.to_dict(), separators=(",", ":"), allow_nan=False) + "\n"

    @classmethod
    def from_dict(cls, obj: Any, line: int = 0, path: str = "") -> DecisionRecord:
        """Validate and parse one decoded record; a :class:`DecisionLogError` names the field."""
        return _Parser(path, line).record(obj)


def schema_string(name: str, version: int) -> str:
    """The ``schema`` field for a feature schema, e.g. ``"modi.model_selection v1"``."""
    return f"{name} v{version}"


# --- validation -----------------------------------------------------------------------------


class _Parser:
    def __init__(self, path: str, line: int) -> None:
        self.path = path
        self.line = line

    def err(self, fld: str, why: str) -> DecisionLogError:
        return DecisionLogError(why, path=self.path, line=self.line, field=fld)

    def get(self, obj: Mapping[str, Any], key: str, prefix: str = "") -> Any:
        if key not in obj:
            raise self.err(prefix + key, "missing")
        return obj[key]

    def string(self, x: Any, fld: str, nullable: bool = False) -> Any:
        if x is None and nullable:
            return None
        if not isinstance(x, str):
            raise self.err(fld, f"expected a string, got {_kind(x)}")
        return x

    def number(self, x: Any, fld: str, nullable: bool = False) -> Any:
        if x is None and nullable:
            return None
        if isinstance(x, bool) or not isinstance(x, int | float):
            raise self.err(fld, f"expected a number, got {_kind(x)}")
        if not math.isfinite(x):
            raise self.err(fld, f"expected a finite number, got {x!r}")
        return float(x)

    def boolean(self, x: Any, fld: str) -> bool | None:
        if x is None:
            return None
        if not isinstance(x, bool):
            raise self.err(fld, f"expected true, false or null, got {_kind(x)}")
        return x

    def integer(self, x: Any, fld: str) -> int:
        if isinstance(x, bool) or not isinstance(x, int):
            raise self.err(fld, f"expected an integer, got {_kind(x)}")
        return x

    def obj(self, x: Any, fld: str) -> Mapping[str, Any]:
        if not isinstance(x, dict):
            raise self.err(fld, f"expected an object, got {_kind(x)}")
        return x

    def features(self, x: Any, fld: str, optional: tuple[int, ...]) -> tuple[float, ...]:
        """A feature vector: finite numbers, except ``null`` (or NaN) at the ``optional``
        columns (read as :data:`UNKNOWN_VALUES`: unknown)."""
        if not isinstance(x, list):
            raise self.err(fld, f"expected a list of numbers, got {_kind(x)}")
        n = len(x)
        unknown = [
            i
            for i in optional
            if i < n and (x[i] is None or (type(x[i]) is float and x[i] != x[i]))
        ]
        if not unknown:
            return self.floats(x, fld)
        vals = list(x)
        for i in unknown:
            vals[i] = 0.0
        out = list(self.floats(vals, fld))
        for i in unknown:
            out[i] = UNKNOWN_VALUES.get(i, math.nan)
        return tuple(out)

    def floats(self, x: Any, fld: str) -> tuple[float, ...]:
        if not isinstance(x, list):
            raise self.err(fld, f"expected a list of numbers, got {_kind(x)}")
        if {type(v) for v in x} <= _NUMBER_TYPES:  # fast path: only the finiteness to check
            vals = tuple(float(v) for v in x)
            if all(map(math.isfinite, vals)):
                return vals
        for i, v in enumerate(x):
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                raise self.err(f"{fld}[{i}]", f"expected a finite number, got {v!r}")
        return tuple(float(v) for v in x)

    def selector(self, x: Any, fld: str) -> SelectorInfo:
        s = self.obj(x, fld)
        name = self.string(self.get(s, "name", fld + "."), fld + ".name")
        version = self.string(self.get(s, "version", fld + "."), fld + ".version")
        e = self.obj(self.get(s, "exploration", fld + "."), fld + ".exploration")
        p = fld + ".exploration."
        kind = self.string(self.get(e, "kind", p), p + "kind")
        if kind not in EXPLORATION_KINDS:
            raise self.err(p + "kind", f"expected one of {EXPLORATION_KINDS}, got {kind!r}")
        eps = self.number(e.get("epsilon"), p + "epsilon", nullable=True)
        if eps is not None and not 0.0 <= eps <= 1.0:
            raise self.err(p + "epsilon", f"expected a value in [0, 1], got {eps}")
        temp = self.number(e.get("temperature"), p + "temperature", nullable=True)
        if temp is not None and temp <= 0:
            raise self.err(p + "temperature", f"expected a positive value, got {temp}")
        return SelectorInfo(name, version, Exploration(kind, eps, temp))

    def action_probs(
        self, obj: Mapping[str, Any], pool: tuple[str, ...], prefix: str
    ) -> tuple[int, str, tuple[float, ...]]:
        k = len(pool)
        action = self.integer(self.get(obj, "action", prefix), prefix + "action")
        if not 0 <= action < k:
            raise self.err(prefix + "action", f"expected an index in [0, {k}), got {action}")
        model_id = self.string(self.get(obj, "model_id", prefix), prefix + "model_id")
        if model_id != pool[action]:
            raise self.err(
                prefix + "model_id",
                f"{model_id!r} is not pool[{action}] = {pool[action]!r}",
            )
        if "probabilities" not in obj or obj["probabilities"] is None:
            raise self.err(
                prefix + "probabilities",
                "missing: the log does not carry the logging policy's action probabilities "
                "(propensities), which off-policy evaluation needs",
            )
        probs = self.floats(obj["probabilities"], prefix + "probabilities")
        if len(probs) != k:
            raise self.err(prefix + "probabilities", f"expected {k} values (the pool), got "
                           f"{len(probs)}")  # fmt: skip
        if min(probs) < 0.0 or max(probs) > 1.0 + PROBABILITY_SUM_TOL:
            raise self.err(prefix + "probabilities", "expected values in [0, 1]")
        total = math.fsum(probs)
        if abs(total - 1.0) > PROBABILITY_SUM_TOL:
            raise self.err(prefix + "probabilities", f"sum to {total:.6g}, expected 1")
        if probs[action] <= 0.0:
            raise self.err(
                prefix + "probabilities",
                f"the chosen action {action} has probability {probs[action]}: a policy cannot "
                "take an action it gives probability 0",
            )
        return action, model_id, probs

    def record(self, x: Any) -> DecisionRecord:
        if not isinstance(x, dict):
            raise self.err("", f"expected a JSON object (a decision record), got {_kind(x)}")
        if "v" not in x and "propensity" in x:
            raise self.err(
                "probabilities",
                "missing: a log of an older modi-serve (a single 'propensity', no 'v'); it lacks "
                "the logging policy's full probability vector that off-policy evaluation needs",
            )
        if "v" not in x:
            known = [k for k in _RECORD_FIELDS if k in x]
            why = (
                "missing: not a modi decision record (foreign JSON?)"
                if len(known) < 3
                else "missing: records without a format version are not read"
            )
            raise self.err("v", why)
        v = x["v"]
        if v != FORMAT_VERSION or isinstance(v, bool):
            raise self.err("v", f"format version {v!r} is not supported (expected "
                           f"{FORMAT_VERSION})")  # fmt: skip
        ts = self.number(self.get(x, "ts"), "ts")
        request_id = self.string(self.get(x, "request_id"), "request_id")
        schema = self.string(self.get(x, "schema"), "schema")
        old_dim = UPGRADABLE.get(schema)
        old_schema = schema
        if old_dim is not None:
            schema = ObsLayout.schema
        layout = LAYOUTS.get(schema)
        if layout is None:
            raise self.err("schema", f"unknown feature schema {schema!r}; expected one of "
                           f"{sorted(LAYOUTS)}")  # fmt: skip
        pool_raw = self.get(x, "pool")
        if not isinstance(pool_raw, list) or not pool_raw:
            raise self.err("pool", f"expected a non-empty list of model ids, got {_kind(pool_raw)}")
        pool = tuple(self.string(m, f"pool[{i}]") for i, m in enumerate(pool_raw))
        if len(set(pool)) != len(pool):
            raise self.err("pool", "model ids repeat")
        ph = self.string(self.get(x, "pool_hash"), "pool_hash")
        if ph != _pool_hash(pool):
            raise self.err("pool_hash", f"{ph!r} is not the hash of the logged pool "
                           f"({_pool_hash(pool)!r})")  # fmt: skip
        selector = self.selector(self.get(x, "selector"), "selector")
        r_old = layout.request_dim if old_dim is None else old_dim
        optional = tuple(c for c in OPTIONAL_COLUMNS if c < r_old) if layout is ObsLayout else ()
        features = self.features(self.get(x, "features"), "features", optional)
        dim = layout(len(pool)).dim
        if old_dim is not None:  # an older schema: the columns it lacks are unknown
            missing = layout.request_dim - old_dim
            if len(features) != dim - missing:
                raise self.err(
                    "features",
                    f"expected {dim - missing} values (schema {old_schema} with "
                    f"{len(pool)} models: {old_dim} + {layout.row_dim} * {len(pool)}), "
                    f"got {len(features)}",
                )
            lacks = [UNKNOWN_VALUES[c] for c in range(old_dim, layout.request_dim)]
            features = (*features[:old_dim], *lacks, *features[old_dim:])
        if len(features) != dim:
            raise self.err(
                "features",
                f"expected {dim} values (schema {schema} with {len(pool)} models: "
                f"{layout.request_dim} + {layout.row_dim} * {len(pool)}), got {len(features)}",
            )
        action, model_id, probs = self.action_probs(x, pool, "")
        source = self.string(self.get(x, "source"), "source")
        if source not in SOURCES:
            raise self.err("source", f"expected one of {SOURCES}, got {source!r}")
        reason = self.string(self.get(x, "reason"), "reason")
        o = self.obj(self.get(x, "outcome"), "outcome")
        acc = self.number(o.get("accuracy"), "outcome.accuracy", nullable=True)
        if acc is not None and not 0.0 <= acc <= 1.0:
            raise self.err("outcome.accuracy", f"expected a fraction in [0, 1], got {acc}")
        outcome = Outcome(
            latency_ms=self.number(o.get("latency_ms"), "outcome.latency_ms", nullable=True),
            met=self.boolean(o.get("met"), "outcome.met"),
            accuracy=acc,
            correct=self.boolean(o.get("correct"), "outcome.correct"),
        )
        sh = x.get("shadow")
        shadow = None
        if sh is not None:
            s = self.obj(sh, "shadow")
            sel = self.selector(self.get(s, "selector", "shadow."), "shadow.selector")
            sa, sm, sp = self.action_probs(s, pool, "shadow.")
            shadow = Shadow(sel, sa, sm, sp)
        return DecisionRecord(
            ts=ts, request_id=request_id, schema=schema, pool=pool, pool_hash=ph,
            selector=selector, features=features, action=action, model_id=model_id,
            probabilities=probs, source=source, reason=reason, outcome=outcome, shadow=shadow,
        )  # fmt: skip


def _kind(x: Any) -> str:
    if x is None:
        return "null"
    if isinstance(x, bool):
        return "a boolean"
    if isinstance(x, int | float):
        return f"the number {x!r}"
    if isinstance(x, str):
        return f"the string {x[:40]!r}"
    if isinstance(x, list):
        return "a list"
    if isinstance(x, dict):
        return "an object"
    return type(x).__name__


# --- reading --------------------------------------------------------------------------------


def iter_decision_records(path: str | Path) -> Iterator[DecisionRecord]:
    """Validated records of a log, in order (see :func:`iter_numbered_records`)."""
    for _, rec in iter_numbered_records(path):
        yield rec


def iter_numbered_records(path: str | Path) -> Iterator[tuple[int, DecisionRecord]]:
    """``(line number, record)`` of a log, in order. Raises :class:`DecisionLogError` at the
    first bad line: a line that is not JSON (the message says *truncated* for an unterminated
    last line such as a write cut by a full disk), a foreign object, a bad field, or a schema
    or pool that differs from the first record's."""
    p = str(path)
    schema = ""
    pool: tuple[str, ...] = ()
    try:
        f = open(path, "rb")  # noqa: SIM115
    except OSError as e:
        raise DecisionLogError(f"cannot open the log: {e.strerror or e}", path=p) from None
    with f:
        n = 0
        for n, raw in enumerate(f, start=1):
            if not raw.strip():
                if raw.endswith(b"\n"):
                    raise DecisionLogError("empty line: records are whole lines", path=p, line=n)
                continue
            try:
                obj = json.loads(raw)
            except UnicodeDecodeError:
                raise DecisionLogError("not UTF-8 text", path=p, line=n) from None
            except json.JSONDecodeError as e:
                if not raw.endswith(b"\n"):
                    why = f"truncated last line (no newline, invalid JSON: {e.msg})"
                else:
                    why = f"not a JSON line ({e.msg} at column {e.colno}; a torn write?)"
                raise DecisionLogError(why, path=p, line=n) from None
            rec = _Parser(p, n).record(obj)
            if not schema:
                schema, pool = rec.schema, rec.pool
            else:
                if rec.schema != schema:
                    raise DecisionLogError(
                        f"schema changes mid-log: {rec.schema!r} after {schema!r}; one log "
                        "must use one feature schema", path=p, line=n, field="schema",
                    )  # fmt: skip
                if rec.pool != pool:
                    raise DecisionLogError(
                        f"pool changes mid-log: {list(rec.pool)} after {list(pool)}; evaluate "
                        "each pool's part of the log separately", path=p, line=n, field="pool",
                    )  # fmt: skip
            yield n, rec
        if n == 0:
            raise DecisionLogError("the log is empty", path=p)


@dataclass(frozen=True)
class DecisionLog:
    """A whole decision log as arrays (``N`` records, ``K`` models, ``D`` features).

    Unknown outcome values are NaN (``met``, ``accuracy``, ``correct``, ``latency_ms``,
    ``rewards``); shadow arrays hold -1 / NaN on rows without a shadow decision.
    """

    path: str
    schema: str
    pool: tuple[str, ...]
    pool_hash: str
    features: NDArray[np.float64]  # (N, D)
    actions: NDArray[np.intp]  # (N,)
    probabilities: NDArray[np.float64]  # (N, K)
    rewards: NDArray[np.float64]  # (N,) effective accuracy, NaN if unknown
    met: NDArray[np.float64]  # (N,) 1.0 / 0.0 / NaN
    accuracy: NDArray[np.float64]  # (N,)
    correct: NDArray[np.float64]  # (N,) 1.0 / 0.0 / NaN
    latency_ms: NDArray[np.float64]  # (N,)
    ts: NDArray[np.float64]  # (N,)
    line_numbers: NDArray[np.intp]  # (N,) 1-based line of each record
    request_ids: tuple[str, ...]
    fallback: NDArray[np.bool_]  # (N,) source == "fallback"
    reasons: tuple[str, ...]
    selectors: tuple[SelectorInfo, ...]  # distinct logging selectors, first-seen order
    selector_index: NDArray[np.intp]  # (N,) index into selectors
    shadow_selectors: tuple[SelectorInfo, ...]
    shadow_selector_index: NDArray[np.intp]  # (N,) -1 without a shadow
    shadow_actions: NDArray[np.intp]  # (N,) -1 without a shadow
    shadow_probabilities: NDArray[np.float64]  # (N, K) NaN without a shadow

    @property
    def n(self) -> int:
        """Number of records."""
        return int(self.actions.shape[0])

    @property
    def num_models(self) -> int:
        """Pool size ``K``."""
        return len(self.pool)

    @property
    def layout(self) -> ObsLayout:
        """The :class:`ObsLayout` that splits :attr:`features`."""
        return LAYOUTS[self.schema](len(self.pool))

    @property
    def propensities(self) -> NDArray[np.float64]:
        """``probabilities[i, actions[i]]``, shape ``(N,)``."""
        return self.probabilities[np.arange(self.n), self.actions]

    @property
    def has_shadow(self) -> NDArray[np.bool_]:
        """Rows that carry a shadow decision."""
        return np.asarray(self.shadow_actions >= 0)

    def first_unknown_reward(self) -> int:
        """Line number of the first record whose reward is unknown (0 if none)."""
        bad = np.flatnonzero(np.isnan(self.rewards))
        return int(self.line_numbers[bad[0]]) if bad.size else 0


def _opt(x: bool | float | None) -> float:
    return math.nan if x is None else float(x)


def _as_encoded(schema: str, features: NDArray[np.float64]) -> NDArray[np.float64]:
    """A log's features as the encoders write them now: a ``modi.model_selection`` record
    written before ``sla_ms``/``elapsed_ms`` left out the time that is not the upload is
    converted (:func:`~modi.runtime.features.upload_relative`); a current one is unchanged."""
    layout = LAYOUTS[schema]
    if layout is ObsLayout:
        upload_relative(features[:, : layout.request_dim])
    return features


def decision_log_from_records(
    records: Sequence[DecisionRecord], path: str = "", line_numbers: Sequence[int] | None = None
) -> DecisionLog:
    """Arrays of already validated records (one schema and pool: checked)."""
    if not records:
        raise DecisionLogError("no records", path=path)
    first = records[0]
    lines = list(line_numbers) if line_numbers is not None else list(range(1, len(records) + 1))
    for r, ln in zip(records, lines, strict=True):
        if r.schema != first.schema:
            raise DecisionLogError("schema changes mid-log", path=path, line=ln, field="schema")
        if r.pool != first.pool:
            raise DecisionLogError("pool changes mid-log", path=path, line=ln, field="pool")
    n, k = len(records), len(first.pool)
    sel_ids: dict[SelectorInfo, int] = {}
    shadow_ids: dict[SelectorInfo, int] = {}
    sel_index = np.empty(n, dtype=np.intp)
    sh_index = np.full(n, -1, dtype=np.intp)
    sh_actions = np.full(n, -1, dtype=np.intp)
    sh_probs = np.full((n, k), np.nan)
    for i, r in enumerate(records):
        sel_index[i] = sel_ids.setdefault(r.selector, len(sel_ids))
        if r.shadow is not None:
            sh_index[i] = shadow_ids.setdefault(r.shadow.selector, len(shadow_ids))
            sh_actions[i] = r.shadow.action
            sh_probs[i] = r.shadow.probabilities
    return DecisionLog(
        path=path,
        schema=first.schema,
        pool=first.pool,
        pool_hash=first.pool_hash,
        features=_as_encoded(first.schema, np.array([r.features for r in records], np.float64)),
        actions=np.array([r.action for r in records], dtype=np.intp),
        probabilities=np.array([r.probabilities for r in records], dtype=np.float64),
        rewards=np.array([_opt(r.outcome.reward) for r in records]),
        met=np.array([_opt(r.outcome.met) for r in records]),
        accuracy=np.array([_opt(r.outcome.accuracy) for r in records]),
        correct=np.array([_opt(r.outcome.correct) for r in records]),
        latency_ms=np.array([_opt(r.outcome.latency_ms) for r in records]),
        ts=np.array([r.ts for r in records]),
        line_numbers=np.array(lines, dtype=np.intp),
        request_ids=tuple(r.request_id for r in records),
        fallback=np.array([r.source == "fallback" for r in records], dtype=bool),
        reasons=tuple(r.reason for r in records),
        selectors=tuple(sel_ids),
        selector_index=sel_index,
        shadow_selectors=tuple(shadow_ids),
        shadow_selector_index=sh_index,
        shadow_actions=sh_actions,
        shadow_probabilities=sh_probs,
    )


def read_decision_log(path: str | Path) -> DecisionLog:
    """Read and validate a whole JSON-lines decision log (see :func:`iter_decision_records`
    for what is refused)."""
    records: list[DecisionRecord] = []
    lines: list[int] = []
    for line, rec in iter_numbered_records(path):
        records.append(rec)
        lines.append(line)
    log.debug("read %d decision records from %s", len(records), path)
    return decision_log_from_records(records, str(path), lines)


def decision_log_from_arrays(
    features: NDArray[np.floating],
    actions: NDArray[np.integer],
    probabilities: NDArray[np.floating],
    met: NDArray[np.floating] | NDArray[np.bool_],
    accuracy: NDArray[np.floating],
    pool: Sequence[str],
    *,
    schema: str = ObsLayout.schema,
    correct: NDArray[np.floating] | None = None,
    latency_ms: NDArray[np.floating] | None = None,
    selector: SelectorInfo | None = None,
    path: str = "",
) -> DecisionLog:
    """A :class:`DecisionLog` straight from arrays (a simulated log; no JSON in between), with
    the reader's checks on shapes and probabilities (rows sum to 1, the taken action > 0)."""
    x = np.asarray(features, dtype=np.float64)
    a = np.asarray(actions, dtype=np.intp).reshape(-1)
    p = np.asarray(probabilities, dtype=np.float64)
    n, k = a.size, len(pool)
    layout = LAYOUTS.get(schema)
    if layout is None:
        raise DecisionLogError(f"unknown feature schema {schema!r}", field="schema")
    if x.shape != (n, layout(k).dim):
        raise DecisionLogError(f"shape {x.shape}, expected ({n}, {layout(k).dim})",
                               field="features")  # fmt: skip
    if p.shape != (n, k):
        raise DecisionLogError(f"shape {p.shape}, expected ({n}, {k})", field="probabilities")
    if n and (a.min() < 0 or a.max() >= k):
        raise DecisionLogError(f"actions outside [0, {k})", field="action")
    bad = np.flatnonzero(np.abs(p.sum(axis=1) - 1.0) > PROBABILITY_SUM_TOL)
    if bad.size:
        raise DecisionLogError("do not sum to 1", line=int(bad[0]) + 1, field="probabilities")
    zero = np.flatnonzero(p[np.arange(n), a] <= 0)
    if zero.size:
        raise DecisionLogError("the taken action has probability 0", line=int(zero[0]) + 1,
                               field="probabilities")  # fmt: skip
    m = np.asarray(met, dtype=np.float64).reshape(-1)
    acc = np.asarray(accuracy, dtype=np.float64).reshape(-1)
    cor = np.full(n, np.nan) if correct is None else np.asarray(correct, np.float64).reshape(-1)
    with np.errstate(invalid="ignore"):
        rewards = np.where(np.isnan(cor), np.where(m > 0, acc, 0.0), cor * m)
    rewards = np.where(np.isnan(m), np.nan, rewards)
    sel = selector or SelectorInfo("simulated", "simulated", Exploration("rule"))
    ids = tuple(str(i) for i in pool)
    return DecisionLog(
        path=path, schema=schema, pool=ids, pool_hash=pool_hash(ids), features=x, actions=a,
        probabilities=p, rewards=rewards, met=m, accuracy=acc, correct=cor,
        latency_ms=(np.full(n, np.nan) if latency_ms is None
                    else np.asarray(latency_ms, np.float64).reshape(-1)),
        ts=np.zeros(n), line_numbers=np.arange(1, n + 1, dtype=np.intp),
        request_ids=tuple(str(i) for i in range(n)), fallback=np.zeros(n, dtype=bool),
        reasons=("",) * n, selectors=(sel,), selector_index=np.zeros(n, dtype=np.intp),
        shadow_selectors=(), shadow_selector_index=np.full(n, -1, dtype=np.intp),
        shadow_actions=np.full(n, -1, dtype=np.intp), shadow_probabilities=np.full((n, k), np.nan),
    )  # fmt: skip
