"""The serving selector: an exported ONNX policy behind a boundary that never fails a request.

:class:`Selector` loads a file written by :func:`modi.agents.export.export_onnx` (or an MLflow
``models:/name@alias`` URI, resolved only if mlflow is installed), checks its metadata against
this runtime's feature schema and the served pool, builds each request's features with
:mod:`modi.runtime.features` (the module the simulators use), runs onnxruntime on the CPU and
returns a :class:`Decision`. Whenever the learned choice cannot be trusted it answers with the
ModiPick rule (:mod:`modi.runtime.modipick`) instead and says why:

* no model, or a missing / corrupt / mismatched file (``"no learned model: ..."``);
* an invalid request: a missing field, NaN, inf, negative or absurd value
  (``"invalid request: ..."``);
* onnxruntime failed or returned something out of range (``"inference failed: ..."``);
* the *shield* (on by default, ``"shield: ..."``): the request lies outside what the policy
  was trained for. Training records the range of every request feature and of the profiled
  ``mu_ms``/``sigma_ms`` it saw (:class:`~modi.runtime.metadata.FeatureRanges`, written into the
  file's metadata by ``export_onnx``); the shield fires when a feature a scorer reads
  (:data:`SHIELD_REQUEST_FEATURES`, :data:`SHIELD_MODEL_FEATURES`) lies outside its training
  range widened by ``shield_tolerance`` of the range's width (default
  :data:`SHIELD_TOLERANCE`), and the reason names the feature, its value and the range, e.g.
  ``"shield: t_input_ms = 812.3 outside training range [20.1, 540.2] (+25%)"``. A file written
  before ranges were recorded has nothing to check (``status`` says so). An optional feature
  the request did not carry (NaN) fires it too where the policy reads it (the connection's
  RTT: ``"shield: srtt_ms is unknown (NaN) and the policy reads it"``), except the client's
  download history (``client_dl_ms``/``client_dlvar_ms``, none before a client's first answer,
  encoded as :data:`~modi.runtime.features.UNKNOWN_HISTORY`), which scorers impute themselves
  (:data:`~modi.runtime.features.SELF_IMPUTED_COLUMNS`): only a known value (>= 0) out of range
  fires there. ``shield="budget"``
  keeps the earlier shield (a learned choice with ``μ + σ >= T_U``, ModiPick's budget, replaced
  by ModiPick's), which assumed the download takes as long as the upload and overrode a large
  share of good choices on fast links.

Nothing raises into the serving path: only ``Selector.load(..., strict=True)`` and
``reload(..., strict=True)`` raise :class:`SelectorLoadError`; arguments out of range (a
``shield_tolerance`` outside (0, 1), an unknown ``shield`` mode) raise :class:`ValueError` when
the selector is built, before anything runs.

:meth:`Selector.select_batch` (requests) and :meth:`Selector.select_features` (prebuilt
observations, as the simulators build them) share one decision core after the features are
built, so an evaluation that runs the exported file through ``select_features``
(:class:`modi.agents.served.ServedPolicy`) measures exactly what a server decides.

Usage in a server::

    pool = PoolProfile.from_lists(ids, accuracy, mean_ms, std_ms)
    selector = Selector.load("selector.onnx", pool)       # or "models:/modi-selector@champion"
    d = selector.select(Request(sla_ms=150, elapsed_ms=48.0, upload_ms=45.0,
                                payload_bytes=330_000, client_id="phone-17"))
    run(d.model_id)                                        # d.source, d.reason for logging
    selector.observe(d.model_id, measured_exec_ms)         # keep the profiles current
    selector.set_load(queue_len=len(queue))                # optional server state

State (profiles, client histories, queue/slowdown) is guarded by one lock; ``reload`` builds and
checks the new session outside it and swaps it in atomically, keeping the old model when the
new file is refused. A decision at batch size 1 takes tens of microseconds (see
``modi.experiments.bench_runtime``): features are written into preallocated buffers (a test
checks they equal :func:`~modi.runtime.features.encode` bit for bit), learned decisions are
preallocated objects, and the session's ``run`` is bound once.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
from numpy.typing import NDArray

from modi.runtime import features as F
from modi.runtime.clients import CLIENT_NET_ALPHA, ClientNetworkHistory
from modi.runtime.metadata import (
    INPUT_MODELS,
    INPUT_REQUEST,
    OUTPUT_ACTION,
    OUTPUT_SCORES,
    FeatureRanges,
    MetadataError,
    SelectorMetadata,
)
from modi.runtime.modipick import modipick_select, modipick_select_one
from modi.runtime.pool_profile import PoolProfile
from modi.runtime.profiles import ProfileTracker
from modi.runtime.requests import (
    BYTES_PER_KB,
    InvalidRequest,
    Request,
    RequestBatch,
    RequestLimits,
    parse_request,
)

log = logging.getLogger(__name__)

Source = Literal["learned", "fallback"]
#: Largest model file the selector loads (a selector graph is kilobytes).
MAX_MODEL_BYTES = 256 * 1024 * 1024
_MLFLOW_SCHEMES = ("models:/", "runs:/", "mlflow-artifacts:/")
_F32_MAX = float(np.finfo(np.float32).max)
#: Up to this many models, the batch-1 path writes the slack column item by item.
_SCALAR_SLACK_MODELS = 32
#: Up to this many rows, a batch's fallback and shield rows use the scalar ModiPick rule.
_SCALAR_RULE_ROWS = 32
#: Up to this many rows, the calibrated shield compares a batch's request block with
#: precomputed bounds of the same flat shape (no broadcasting: several times faster).
_TILE_ROWS = 4096

ShieldMode = Literal["range", "budget", "off"]
SHIELD_MODES: tuple[str, ...] = ("range", "budget", "off")
#: Request features the calibrated shield checks: every request column a scorer reads
#: (:class:`modi.agents.scorers.PairFeatures`; ``elapsed_ms`` enters through ``remaining_ms``,
#: ``payload_kb`` through none), in this order.
SHIELD_REQUEST_FEATURES: tuple[str, ...] = (
    "sla_ms",
    "t_input_ms",
    "remaining_ms",
    "budget_ms",
    "client_net_mean_ms",
    "client_net_std_ms",
    "queue_len",
    "slowdown",
    "srtt_ms",
    "rttvar_ms",
    "client_dl_ms",
    "client_dlvar_ms",
)
#: Checked request columns a request may leave unknown *and* a scorer imputes itself
#: (:data:`modi.runtime.features.SELF_IMPUTED_COLUMNS`: a client's download history, none on
#: its first request): unknown there (a value below 0, as the encoders write it, or NaN) never
#: fires the shield; a known value (>= 0) is range-checked.
_SELF_IMPUTED = frozenset(F.SELF_IMPUTED_COLUMNS)
#: Model-block features the calibrated shield checks (every model of the served pool).
SHIELD_MODEL_FEATURES: tuple[str, ...] = ("mu_ms", "sigma_ms")
#: Default widening of the training ranges (a fraction of each range's width; of
#: ``max(|value|, 1)`` for a range of one value). Measured: a LinUCB trained on 100,000
#: requests of realistic_wifi, lte_trace, 5g_walking, hsdpa_trace, paper_campus or
#: loaded_server, served on 12,800 requests of an evaluation seed at SLAs 115/150/200 ms, saw
#: no firing at 0.1, 0.25 or 0.5 (so no cost); a campus-trained one on the WiFi link (another
#: network) 1.0 / 0.6 / 0.3 % firings. ``tests/test_served.py`` checks <= 0.5 % and <= 0.2
#: points in distribution.
SHIELD_TOLERANCE = 0.25


class SelectorLoadError(ValueError):
    """A selector file cannot be served: missing, corrupt, or mismatched; the message says why."""


@dataclass(frozen=True, slots=True)
class Decision:
    """Which model answers a request, and where the choice came from.

    ``source`` is ``"learned"`` (the ONNX selector) or ``"fallback"`` (the ModiPick rule);
    ``reason`` says why a fallback was used (empty for learned decisions).
    """

    model_id: str
    index: int
    source: Source
    reason: str = ""

    @property
    def learned(self) -> bool:
        """Whether the learned selector made this choice."""
        return self.source == "learned"


class Decisions:
    """Decisions for a batch: ``index`` and ``learned`` arrays, one ``reason`` per row.

    Indexing or iterating gives :class:`Decision` objects.
    """

    __slots__ = ("index", "learned", "pool_ids", "reasons")

    def __init__(
        self,
        index: NDArray[np.intp],
        learned: NDArray[np.bool_],
        reasons: list[str],
        pool_ids: tuple[str, ...],
    ) -> None:
        self.index = index
        self.learned = learned
        self.reasons = reasons
        self.pool_ids = pool_ids

    def __len__(self) -> int:
        return int(self.index.shape[0])

    def __getitem__(self, i: int) -> Decision:
        k = int(self.index[i])
        src: Source = "learned" if self.learned[i] else "fallback"
        return Decision(self.pool_ids[k], k, src, self.reasons[i])

    def __iter__(self) -> Iterator[Decision]:
        return (self[i] for i in range(len(self)))

    @property
    def model_ids(self) -> list[str]:
        """Chosen model id per row."""
        ids = self.pool_ids
        return [ids[k] for k in self.index.tolist()]


class _Profiles(NamedTuple):
    """The execution-time profiles and accuracies one batch decision uses: the selector's own
    (``(K,)`` arrays and their lists, see ``Selector._snapshot``) or one row per observation
    (``(N, K)`` arrays, no lists: :meth:`Selector.select_features`)."""

    mu: NDArray[np.float64]
    sigma: NDArray[np.float64]
    musig: NDArray[np.float64]
    acc: NDArray[np.float64]
    mu_list: list[float] | None
    sigma_list: list[float] | None
    acc_list: list[float] | None

    @property
    def per_row(self) -> bool:
        """Whether every row has its own profiles."""
        return self.mu.ndim == 2

    def at(self, table: NDArray[np.float64], rows: NDArray[np.intp], cols: Any) -> Any:
        """``table``'s entries for ``(rows, cols)`` (``table[cols]`` when shared by all rows)."""
        return table[rows, cols] if table.ndim == 2 else table[cols]

    def fastest(self, rows: NDArray[np.intp]) -> NDArray[np.intp]:
        """The fastest model (lowest ``mu``) of each row."""
        if self.per_row:
            return np.asarray(np.argmin(self.mu[rows], axis=1), dtype=np.intp)
        return np.full(rows.size, int(np.argmin(self.mu)), dtype=np.intp)


def _f32_down(x: float) -> float:
    """The largest float32 value <= ``x`` (as a float)."""
    y = np.float32(x)
    return float(y if float(y) <= x else np.nextafter(y, np.float32(-np.inf)))


def _f32_up(x: float) -> float:
    """The smallest float32 value >= ``x`` (as a float)."""
    y = np.float32(x)
    return float(y if float(y) >= x else np.nextafter(y, np.float32(np.inf)))


def _fmt(x: float) -> str:
    return f"{x:.6g}"


@dataclass(frozen=True)
class _Bounds:
    """The calibrated shield's limits for one loaded file: each checked feature's training
    range widened by the tolerance, rounded outwards to float32 (the features are float32, so
    a comparison on Python floats and one on a float32 array agree exactly)."""

    names: tuple[str, ...]  # checked request features, in SHIELD_REQUEST_FEATURES order
    cols: NDArray[np.intp]  # their request-block columns
    optional: NDArray[np.intp]  # checked columns whose unknown value (NaN) fires
    imputed: NDArray[np.intp]  # checked columns where unknown (< 0 or NaN) passes
    imputed_lo: NDArray[np.float32]  # their limits (lo_row holds -inf there: hi only)
    imputed_hi: NDArray[np.float32]
    fast: tuple[tuple[int, float, float], ...]  # (column, lo, hi) for the batch-1 loop: NaN fires
    fast_imputed: tuple[tuple[int, float, float], ...]  # the same, unknown (< 0, NaN) passes
    ranges: tuple[tuple[float, float], ...]  # the training ranges themselves (for reasons)
    model: tuple[tuple[str, int, float, float, float, float], ...]  # (name, col, lo, hi, rlo, rhi)
    tolerance: float
    lo_row: NDArray[np.float32]  # (R,) limits of a whole request block (-inf: not checked)
    hi_row: NDArray[np.float32]  # (R,) (+inf: not checked)
    lo_tile: NDArray[np.float32]  # lo_row repeated for _TILE_ROWS rows, flat
    hi_tile: NDArray[np.float32]

    @classmethod
    def build(cls, ranges: FeatureRanges | None, tolerance: float) -> _Bounds:
        """Limits for the features ``ranges`` recorded (none when ``ranges`` is ``None``)."""

        def widen(lo: float, hi: float) -> tuple[float, float]:
            w = hi - lo if hi > lo else max(abs(hi), 1.0)
            return _f32_down(lo - tolerance * w), _f32_up(hi + tolerance * w)

        names: list[str] = []
        cols: list[int] = []
        lims: list[tuple[float, float]] = []
        rr: list[tuple[float, float]] = []
        model: list[tuple[str, int, float, float, float, float]] = []
        if ranges is not None:
            req_cols = {f[0]: i for i, f in enumerate(F.REQUEST_FEATURES)}
            for name in SHIELD_REQUEST_FEATURES:
                r = ranges.get(name)
                if r is not None:
                    names.append(name)
                    cols.append(req_cols[name])
                    lims.append(widen(*r))
                    rr.append(r)
            mod_cols = {f[0]: i for i, f in enumerate(F.MODEL_FEATURES)}
            for name in SHIELD_MODEL_FEATURES:
                r = ranges.get(name)
                if r is not None:
                    model.append((name, mod_cols[name], *widen(*r), *r))
        lo_row = np.full(F.R, -np.inf, dtype=np.float32)
        hi_row = np.full(F.R, np.inf, dtype=np.float32)
        for c, (a, b) in zip(cols, lims, strict=True):
            lo_row[c], hi_row[c] = a, b
        fast = tuple((c, a, b) for c, (a, b) in zip(cols, lims, strict=True))
        fast_imputed = tuple(f for f in fast if f[0] in _SELF_IMPUTED)
        for c, _, _ in fast_imputed:  # the encoded unknown (-1) is below any lower limit
            lo_row[c] = -np.inf
        return cls(
            tuple(names),
            np.array(cols, dtype=np.intp),
            np.array(
                [c for c in cols if c in F.OPTIONAL_COLUMNS and c not in _SELF_IMPUTED],
                dtype=np.intp,
            ),
            np.array([c for c, _, _ in fast_imputed], dtype=np.intp),
            np.array([a for _, a, _ in fast_imputed], dtype=np.float32),
            np.array([b for _, _, b in fast_imputed], dtype=np.float32),
            tuple(f for f in fast if f[0] not in _SELF_IMPUTED),
            fast_imputed,
            tuple(rr),
            tuple(model),
            tolerance,
            lo_row,
            hi_row,
            np.tile(lo_row, _TILE_ROWS) if names else lo_row,
            np.tile(hi_row, _TILE_ROWS) if names else hi_row,
        )

    @property
    def empty(self) -> bool:
        """Whether there is nothing to check (no training ranges in the file)."""
        return not self.names and not self.model

    def _why(self, name: str, value: float, lo: float, hi: float) -> str:
        if math.isnan(value):  # an optional feature the request did not carry
            return f"shield: {name} is unknown (NaN) and the policy reads it"
        return (
            f"shield: {name} = {_fmt(value)} outside training range [{_fmt(lo)}, {_fmt(hi)}] "
            f"(+{self.tolerance * 100:g}%)"
        )

    def request_reason(self, col: int, value: float) -> str:
        """Why the shield fired for request column ``col`` at ``value``."""
        j = int(np.flatnonzero(self.cols == col)[0])
        lo, hi = self.ranges[j]
        return self._why(self.names[j], value, lo, hi)

    def model_reason(self, ids: Sequence[str], rows: NDArray[np.float32]) -> str:
        """Why the shield fires for a model block ``(K, P)`` (``""`` when it is in range)."""
        for name, col, lo, hi, rlo, rhi in self.model:
            v = rows[:, col]
            bad = np.flatnonzero((v < lo) | (v > hi))
            if bad.size:
                k = int(bad[0])
                return self._why(f"{name} of model {ids[k]!r}", float(v[k]), rlo, rhi)
        return ""

    def out_of_range(
        self,
        req: NDArray[np.float32],
        mod: NDArray[np.float32],
        rows: NDArray[np.bool_],
        ids: Sequence[str],
        shared_reason: str | None,
    ) -> tuple[NDArray[np.bool_], dict[int, str]]:
        """Which of ``rows`` fire, and why: request features first (in order), then the model
        block (``shared_reason``: the verdict on a model block all rows share, ``None``: check
        each row's)."""  # fmt: skip
        n = req.shape[0]
        fire = np.zeros(n, dtype=np.bool_)
        why: dict[int, str] = {}
        if self.names:
            if n <= _TILE_ROWS:  # one flat, unbroadcast comparison each way: SIMD-fast
                flat = req.reshape(-1)
                m = flat.size
                out = bool((flat < self.lo_tile[:m]).any() or (flat > self.hi_tile[:m]).any())
            else:
                out = bool((req < self.lo_row).any() or (req > self.hi_row).any())
            # an optional feature the request did not carry (NaN) fires where it is checked,
            # except where the scorer imputes it (a client's download history: only a known
            # value, >= 0, below its range fires; the flat pass checked the upper limit)
            unknown = np.isnan(req[:, self.optional]) if self.optional.size else None
            if unknown is not None and bool(unknown.any()):
                out = True
            hist = req[:, self.imputed] if self.imputed.size else None
            if hist is not None and not out:
                out = bool(((hist >= 0.0) & (hist < self.imputed_lo)).any())
            if out:  # rare in distribution: find the rows and their first feature out of range
                bad = ~((req >= self.lo_row) & (req <= self.hi_row))[:, self.cols]
                if hist is not None:
                    outside = (hist < self.imputed_lo) | (hist > self.imputed_hi)
                    bad[:, np.isin(self.cols, self.imputed)] = (hist >= 0.0) & outside
                hit = rows & bad.any(axis=1)
                for i in np.flatnonzero(hit).tolist():
                    j = int(np.argmax(bad[i]))
                    val = float(req[i, self.cols[j]])
                    why[i] = self._why(self.names[j], val, *self.ranges[j])
                fire |= hit
        if self.model:
            if shared_reason is not None:
                if shared_reason:
                    for i in np.flatnonzero(rows & ~fire).tolist():
                        why[i] = shared_reason
                    fire |= rows
            else:
                bad_m = np.zeros(n, dtype=np.bool_)
                for _, col, lo, hi, _, _ in self.model:
                    v = mod[:, :, col]
                    bad_m |= (v.min(axis=1) < lo) | (v.max(axis=1) > hi)
                hit = rows & bad_m & ~fire
                for i in np.flatnonzero(hit).tolist():
                    why[i] = self.model_reason(ids, mod[i])
                fire |= hit
        return fire, why


_NO_BOUNDS = _Bounds.build(None, SHIELD_TOLERANCE)


@dataclass(frozen=True)
class _Loaded:
    """A checked, ready-to-run selector file."""

    run_one: Callable[[], int]  # the batch-1 inference on the selector's own buffers
    run_batch: Callable[..., Any]  # a session with ``batch_threads`` threads (or ``run``)
    metadata: SelectorMetadata
    source: str
    path: Path
    bounds: _Bounds = _NO_BOUNDS  # the calibrated shield's limits (range mode)


def _resolve(source: str | os.PathLike[str]) -> Path:
    """Local path of a selector file; MLflow URIs are downloaded (mlflow imported lazily)."""
    text = os.fspath(source)
    if text.startswith(_MLFLOW_SCHEMES):
        try:
            import mlflow.artifacts
        except ImportError:
            raise SelectorLoadError(
                f"{text} is an MLflow URI but mlflow is not installed: install the 'train' "
                "extra (pip install 'modi[train]') or give the path of a local .onnx file"
            ) from None
        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=text))
        except Exception as e:  # mlflow raises many types; any of them means "not available"
            raise SelectorLoadError(f"cannot download {text} from MLflow: {e}") from None
        if local.is_dir():
            found = sorted(local.rglob("*.onnx"))
            if len(found) != 1:
                raise SelectorLoadError(
                    f"{text} holds {len(found)} .onnx files ({[f.name for f in found]}); "
                    "expected exactly one"
                )
            local = found[0]
        return local
    return Path(text)


class Selector:
    """Chooses the model for each request of one server; see the module docstring.

    Args:
        pool: the served pool (:class:`PoolProfile`, or anything
            :meth:`PoolProfile.from_pool` accepts, e.g. a ``ModelPool``).
        shield: ``True`` or ``"range"`` (the default): the calibrated shield, which answers
            with the fallback rule a request whose features lie outside the ranges the policy
            saw in training, widened by ``shield_tolerance`` (nothing to check for a file
            without recorded ranges: see :attr:`status`); ``"budget"``: the earlier shield,
            which replaces a learned choice with ``μ + σ >= T_U`` (``T_U`` = ``budget_ms``,
            ModiPick's budget) by ModiPick's when that respects the limit; ``False`` or
            ``"off"``: no shield.
        shield_tolerance: how far, as a fraction in (0, 1) of each training range's width, a
            feature may lie outside it before the calibrated shield fires.
        threshold_ms: ModiPick's ``T_threshold`` (soft limit ``T_L = T_U - threshold``).
        profile_alpha: EWMA weight of the execution-time profiles (:meth:`observe`).
        client_alpha: EWMA weight of each client's upload-time history.
        max_clients: clients remembered before the least recently seen are forgotten.
        limits: plausibility limits of request fields.
        seed: seed of the ModiPick rule's random stage three.
        intra_op_threads: onnxruntime threads per single-request inference (1 is fastest).
        batch_threads: onnxruntime threads for :meth:`select_batch` (a second session when
            > 1; more threads raise batch throughput on an otherwise idle multi-core server).
    """

    def __init__(
        self,
        pool: PoolProfile | Any,
        *,
        shield: bool | ShieldMode = True,
        shield_tolerance: float = SHIELD_TOLERANCE,
        threshold_ms: float = 10.0,
        profile_alpha: float = 0.1,
        client_alpha: float = CLIENT_NET_ALPHA,
        max_clients: int = 100_000,
        limits: RequestLimits | None = None,
        seed: int | None = None,
        intra_op_threads: int = 1,
        batch_threads: int = 1,
    ) -> None:
        self.pool = PoolProfile.from_pool(pool)
        if not (math.isfinite(threshold_ms) and threshold_ms >= 0):
            raise ValueError(f"threshold_ms must be finite and >= 0, got {threshold_ms}")
        if intra_op_threads < 0 or batch_threads < 0:
            raise ValueError(
                f"intra_op_threads and batch_threads must be >= 0, got {intra_op_threads} and "
                f"{batch_threads}"
            )
        self.shield_mode: ShieldMode = _shield_mode(shield)
        self.shield_tolerance = _tolerance(shield_tolerance)
        #: Whether a shield is on (either mode).
        self.shield = self.shield_mode != "off"
        self._budget_shield = self.shield_mode == "budget"
        self.threshold_ms = float(threshold_ms)
        self.limits = limits or RequestLimits()
        self.intra_op_threads = int(intra_op_threads)
        self.batch_threads = int(batch_threads)
        k = self.pool.num_models
        self._k = k
        self._ids = self.pool.ids
        self._acc = np.asarray(self.pool.accuracy, dtype=np.float64)
        self._acc_list: list[float] = self._acc.tolist()
        self._tracker = ProfileTracker(self.pool.mean_ms, self.pool.std_ms, 1, profile_alpha)
        self._clients = ClientNetworkHistory(client_alpha, max_clients)
        self._rng = np.random.default_rng(seed)
        self._lock = threading.Lock()
        self._queue_len = 0.0
        self._slowdown = 1.0
        # Preallocated inputs of the batch-1 path (written in place under the lock).
        self._req = np.zeros((1, F.R), dtype=np.float32)
        self._mod = np.zeros((1, k, F.P), dtype=np.float32)
        self._mod[0, :, F.ACC] = self._acc
        self._slack = self._mod[0, :, F.SLACK]
        # The same two buffers as flat float32 memoryviews: a request is packed in one call and
        # its slack column written item by item, faster than numpy for one short row.
        self._req_buf = self._req.data
        self._req_f = self._req.data.cast("B").cast("f")
        self._mod_f = self._mod.data.cast("B").cast("f")
        self._slack_items: list[tuple[int, float]] = []
        self._feed = {INPUT_REQUEST: self._req, INPUT_MODELS: self._mod}
        self._out = [OUTPUT_ACTION]
        self._learned_decisions = tuple(Decision(m, i, "learned") for i, m in enumerate(self._ids))
        self._musig: NDArray[np.float64] = np.zeros(k)
        self._musig_list: list[float] = []
        self._mu_list: list[float] = []
        self._sigma_list: list[float] = []
        self._mu_minus_sigma_list: list[float] = []
        self._fastest = 0
        self._model: _Loaded | None = None
        self._prof_reason = ""  # why the current profiles fire the calibrated shield ("" : not)
        self._refresh_profiles()
        self._no_model_reason = "no selector file given"
        self.last_error = ""
        self._counts = dict.fromkeys(
            ("learned", "shield", "invalid", "no_model", "inference_error", "internal_error"), 0
        )

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(
        cls,
        source: str | os.PathLike[str] | None,
        pool: PoolProfile | Any,
        *,
        strict: bool = False,
        **kwargs: Any,
    ) -> Selector:
        """A selector serving ``source`` (a ``.onnx`` path or ``models:/name@alias``) for
        ``pool``. A file that cannot be served leaves the selector on the ModiPick fallback
        (``selector.status`` says why) unless ``strict``, which raises
        :class:`SelectorLoadError`. ``kwargs`` go to :class:`Selector`."""
        sel = cls(pool, **kwargs)
        if source is not None:
            sel.reload(source, strict=strict)
        elif strict:
            raise SelectorLoadError("strict load needs a selector file")
        return sel

    def reload(self, source: str | os.PathLike[str], *, strict: bool = False) -> bool:
        """Swap in the selector at ``source`` atomically; a file that cannot be served is refused
        and the current model (or the fallback) stays. Returns whether the swap happened;
        ``strict`` raises :class:`SelectorLoadError` instead of returning ``False``."""
        try:
            loaded = self._load(source)
        except SelectorLoadError as e:
            reason = str(e)
        except Exception as e:  # never let a bad file take the server down
            reason = f"unexpected error loading {os.fspath(source)}: {type(e).__name__}: {e}"
        else:
            with self._lock:
                self._model = loaded
                self.last_error = ""
                self._prof_reason = self._profile_verdict()
            log.info(
                "selector %s (%s, %s) loaded from %s",
                loaded.metadata.policy_name,
                "pool-agnostic" if loaded.metadata.pool_agnostic else "pool-specific",
                loaded.metadata.graph,
                loaded.source,
            )
            return True
        with self._lock:
            self.last_error = reason
            if self._model is None:
                self._no_model_reason = reason
        kept = "keeping the current model" if self._model is not None else "serving ModiPick"
        log.warning("refused selector %s: %s (%s)", os.fspath(source), reason, kept)
        if strict:
            raise SelectorLoadError(reason)
        return False

    def _load(self, source: str | os.PathLike[str]) -> _Loaded:
        import onnxruntime as ort

        path = _resolve(source)
        if not path.is_file():
            raise SelectorLoadError(f"selector file {path} does not exist")
        size = path.stat().st_size
        if size > MAX_MODEL_BYTES:
            raise SelectorLoadError(f"{path} is {size} bytes, over the {MAX_MODEL_BYTES} limit")
        try:
            sess = _session(ort, path, self.intra_op_threads)
        except Exception as e:
            raise SelectorLoadError(f"{path} is not a loadable ONNX model: {e}") from None
        try:
            meta = SelectorMetadata.from_props(sess.get_modelmeta().custom_metadata_map)
            meta.check_schema()
            meta.check_pool(self.pool.ids, self.pool.accuracy)
        except MetadataError as e:
            raise SelectorLoadError(f"{path}: {e}") from None
        self._check_signature(sess, meta, path)
        run = _bound_run(sess)
        self._smoke_test(run, path)
        run_one = self._bind_batch1(ort, sess, run, path)
        run_batch = run
        if self.batch_threads != self.intra_op_threads:
            try:
                run_batch = _bound_run(_session(ort, path, self.batch_threads))
            except Exception as e:
                raise SelectorLoadError(f"{path}: cannot open the batch session: {e}") from None
            self._smoke_test(run_batch, path)
        ranges = meta.training_ranges if self.shield_mode == "range" else None
        bounds = _Bounds.build(ranges, self.shield_tolerance)
        return _Loaded(run_one, run_batch, meta, os.fspath(source), path, bounds)

    def _check_signature(self, sess: Any, meta: SelectorMetadata, path: Path) -> None:
        ins = {i.name: i for i in sess.get_inputs()}
        outs = {o.name: o for o in sess.get_outputs()}
        if set(ins) != {INPUT_REQUEST, INPUT_MODELS}:
            raise SelectorLoadError(
                f"{path}: inputs are {sorted(ins)}, expected {[INPUT_REQUEST, INPUT_MODELS]}"
            )
        if not {OUTPUT_ACTION, OUTPUT_SCORES} <= set(outs):
            raise SelectorLoadError(
                f"{path}: outputs are {sorted(outs)}, expected {[OUTPUT_ACTION, OUTPUT_SCORES]}"
            )
        req, mod = ins[INPUT_REQUEST], ins[INPUT_MODELS]
        for arg, want in ((req, 2), (mod, 3)):
            if arg.type != "tensor(float)" or len(arg.shape) != want:
                raise SelectorLoadError(
                    f"{path}: input {arg.name!r} is {arg.type} {arg.shape}, expected a float32 "
                    f"tensor of rank {want}"
                )
        if req.shape[1] != F.R or mod.shape[2] != F.P:
            raise SelectorLoadError(
                f"{path}: input shapes {req.shape} / {mod.shape} do not fit schema "
                f"{F.SCHEMA_NAME} v{F.SCHEMA_VERSION} (request width {F.R}, model width {F.P})"
            )
        k_dim = mod.shape[1]
        if meta.pool_agnostic and isinstance(k_dim, int):
            raise SelectorLoadError(
                f"{path}: metadata says pool-agnostic but the graph's model dimension is fixed "
                f"at {k_dim}"
            )
        if isinstance(k_dim, int) and k_dim != self._k:
            raise SelectorLoadError(
                f"{path}: the graph takes {k_dim} models, the served pool has {self._k}"
            )
        if outs[OUTPUT_ACTION].type != "tensor(int64)":
            raise SelectorLoadError(
                f"{path}: output 'action' is {outs[OUTPUT_ACTION].type}, expected tensor(int64)"
            )

    def _bind_batch1(
        self, ort: Any, sess: Any, run: Callable[..., Any], path: Path
    ) -> Callable[[], int]:
        """The batch-1 inference on the selector's preallocated buffers through an IOBinding
        (no per-call conversion of inputs and outputs: about a third of onnxruntime's batch-1
        cost). The binding is first checked on scratch buffers against ``run``; where it is not
        available or disagrees, the plain ``run`` with a feed is used."""
        rng = np.random.default_rng(0)
        req = np.empty_like(self._req)
        mod = np.empty_like(self._mod)
        try:
            probe = bound_inference(ort, sess, req, mod)
            for _ in range(4):
                req[...] = rng.uniform(0.0, 500.0, req.shape)
                mod[...] = rng.uniform(0.0, 200.0, mod.shape)
                want = int(
                    np.asarray(
                        run([OUTPUT_ACTION], {INPUT_REQUEST: req, INPUT_MODELS: mod}, None)[0]
                    )[0]
                )
                if probe() != want:
                    raise ValueError("the bound inference disagrees with run()")
            return bound_inference(ort, sess, self._req, self._mod)
        except Exception as e:
            log.info("%s: no IOBinding for batch-1 inference (%s); using run()", path, e)
        feed, outs = self._feed, self._out

        def run_feed() -> int:
            return int(run(outs, feed, None)[0][0])

        return run_feed

    def _smoke_test(self, run: Callable[..., Any], path: Path) -> None:
        """Run two plausible requests; refuse a graph that fails or answers out of range."""
        mu = np.asarray(self.pool.mean_ms)
        sd = np.asarray(self.pool.std_ms)
        sla = float(np.max(mu + sd)) * 2.0 + 100.0
        obs = F.encode(
            [sla, 20.0], 10.0, 10.0, 330.0, 10.0, 1.0, 0.0, 1.0, mu, sd, self._acc, 20.0, 2.0
        )
        layout = F.ObsLayout(self._k)
        feed = {
            INPUT_REQUEST: np.ascontiguousarray(layout.request(obs)),
            INPUT_MODELS: np.ascontiguousarray(layout.models(obs)),
        }
        try:
            action, scores = run([OUTPUT_ACTION, OUTPUT_SCORES], feed, None)
        except Exception as e:
            raise SelectorLoadError(f"{path}: a test inference failed: {e}") from None
        a = np.asarray(action)
        s = np.asarray(scores)
        if a.shape != (2,) or s.shape != (2, self._k):
            raise SelectorLoadError(
                f"{path}: a test inference returned shapes {a.shape} / {s.shape}, expected "
                f"(2,) / (2, {self._k})"
            )
        if a.min() < 0 or a.max() >= self._k or not np.all(np.isfinite(s)):
            raise SelectorLoadError(
                f"{path}: a test inference returned actions {a.tolist()} for {self._k} models "
                "or non-finite scores"
            )

    # ------------------------------------------------------------------ state
    @property
    def learned(self) -> bool:
        """Whether a learned selector is loaded (otherwise every answer is the fallback)."""
        return self._model is not None

    @property
    def metadata(self) -> SelectorMetadata | None:
        """Metadata of the loaded selector file."""
        m = self._model
        return None if m is None else m.metadata

    @property
    def status(self) -> str:
        """``"learned: <source>"`` or ``"fallback: <why>"``; a learned selector whose file
        records no training ranges adds that the calibrated shield has nothing to check."""
        m = self._model
        if m is None:
            return f"fallback: {self._no_model_reason}"
        if self.shield_mode == "range" and m.bounds.empty:
            return (
                f"learned: {m.source} (shield: nothing to check: the file records no training "
                "ranges)"
            )
        return f"learned: {m.source}"

    @property
    def counts(self) -> dict[str, int]:
        """How many decisions were learned, and fallbacks by cause."""
        with self._lock:
            return dict(self._counts)

    @property
    def profiles(self) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Current profiled ``(mu_ms, sigma_ms)`` per model (copies)."""
        with self._lock:
            return self._tracker.mu[0].copy(), self._tracker.sigma[0].copy()

    def _refresh_profiles(self) -> None:
        mu = self._tracker.mu[0]
        sigma = self._tracker.sigma[0]
        self._mod[0, :, F.MU] = mu
        self._mod[0, :, F.SIGMA] = sigma
        self._musig = mu + sigma
        self._musig_list = self._musig.tolist()
        self._slack_items = [(i * F.P + F.SLACK, ms) for i, ms in enumerate(self._musig_list)]
        self._mu_list = mu.tolist()
        self._sigma_list = sigma.tolist()
        self._mu_minus_sigma_list = (mu - sigma).tolist()
        self._fastest = int(np.argmin(mu))
        self._prof_reason = self._profile_verdict()

    def _profile_verdict(self) -> str:
        """Why the current profiles fire the calibrated shield of the loaded file (``""``: they
        do not); the caller holds the lock or owns the selector."""
        m = self._model
        if m is None or not m.bounds.model:
            return ""
        return m.bounds.model_reason(self._ids, self._mod[0])

    def observe(self, model_id: str, exec_ms: float) -> bool:
        """Fold a measured execution time of ``model_id`` into its profile (EWMA). Returns
        ``False`` (and logs) for an unknown model or an implausible time; never raises."""
        try:
            k = self.pool.ids.index(model_id)
        except ValueError:
            log.warning("observe: unknown model %r (pool %s)", model_id, list(self.pool.ids))
            return False
        try:
            x = float(exec_ms)
        except (TypeError, ValueError):
            x = float("nan")
        if not 0.0 < x <= self.limits.max_sla_ms:
            log.warning("observe: implausible execution time %r ms for %s", exec_ms, model_id)
            return False
        with self._lock:
            self._tracker.update(np.zeros(1, np.intp), np.array([k]), np.array([x]))
            self._refresh_profiles()
        return True

    def reseed(self, seed: int | Sequence[int] | None) -> None:
        """Restart the random stream of the ModiPick rule's stage three from ``seed`` (an
        integer or a sequence of them, e.g. a stream key; an evaluation does this per run, so
        a stream's fallbacks are reproducible)."""
        with self._lock:
            self._rng = np.random.default_rng(seed)

    def set_load(self, queue_len: float | None = None, slowdown: float | None = None) -> bool:
        """Set the server's queue length / observed slowdown used for requests that do not
        carry their own. Returns ``False`` (and logs) for an implausible value."""
        lim = self.limits
        ok = True
        with self._lock:
            if queue_len is not None:
                if isinstance(queue_len, (int, float)) and 0 <= queue_len <= lim.max_queue_len:
                    self._queue_len = float(queue_len)
                else:
                    ok = False
            if slowdown is not None:
                if isinstance(slowdown, (int, float)) and 0 < slowdown <= lim.max_slowdown:
                    self._slowdown = float(slowdown)
                else:
                    ok = False
        if not ok:
            log.warning("set_load: implausible queue_len=%r slowdown=%r", queue_len, slowdown)
        return ok

    # ------------------------------------------------------------------ features
    def _write_features(
        self,
        sla: float,
        elapsed: float,
        upload: float,
        payload_kb: float,
        net_mean: float,
        net_std: float,
        queue: float | None,
        slowdown: float | None,
        srtt: float = math.nan,
        rttvar: float = math.nan,
        dl: float = math.nan,
        dlvar: float = math.nan,
        mis: float = math.nan,
    ) -> float:
        """Write one request's features into the batch-1 buffers (exactly what
        :func:`modi.runtime.features.encode` computes); return the float32-rounded budget as a
        float (what ModiPick and the shield compare against)."""
        q = self._queue_len if queue is None else queue
        s = self._slowdown if slowdown is None else slowdown
        F.pack_request(
            self._req_buf, sla, elapsed, upload, payload_kb, net_mean, net_std, q, s, srtt, rttvar,
            dl, dlvar, mis,
        )  # fmt: skip
        budget = self._req_f[F.BUDGET]
        if self._k <= _SCALAR_SLACK_MODELS:
            mod = self._mod_f  # features.model_slack's formula: float64, then float32
            for pos, musig in self._slack_items:
                mod[pos] = budget - musig
        else:
            np.subtract(budget, self._musig, out=self._slack)
        return budget

    def features(self, request: Request | Mapping[str, Any], record: bool = False) -> Any:
        """The observation vector ``(R + P*K,)`` the selector builds for ``request`` (what the
        envs would observe). ``record=True`` also folds the upload time into the client's
        history, as :meth:`select` does. Raises :class:`InvalidRequest` for a bad request."""
        sla, el, up, pkb, client, q, s, rtt, var, dl, dlv, mis = parse_request(request, self.limits)
        with self._lock:
            c = self._clients
            mean, std = c.update_one(client, up) if record else c.peek(client, up)
            self._write_features(sla, el, up, pkb, mean, std, q, s, rtt, var, dl, dlv, mis)
            return np.concatenate([self._req[0], self._mod[0].reshape(-1)])

    # ------------------------------------------------------------------ decisions
    def select(self, request: Request | Mapping[str, Any]) -> Decision:
        """Choose the model for one request. Never raises."""
        try:
            try:
                sla, el, up, pkb, client, q, s, rtt, var, dl, dlv, mis = parse_request(
                    request, self.limits
                )
            except InvalidRequest as e:
                return self._invalid(request, e)
            with self._lock:
                mean, std = self._clients.update_one(client, up)
                budget = self._write_features(
                    sla, el, up, pkb, mean, std, q, s, rtt, var, dl, dlv, mis
                )
                model = self._model
                if model is None:
                    self._counts["no_model"] += 1
                    return self._rule(budget, "no learned model: " + self._no_model_reason)
                rf = self._req_f
                for pos, lo, hi in model.bounds.fast:  # the calibrated shield (none: empty)
                    v = rf[pos]
                    if not lo <= v <= hi:  # NaN (an unknown optional feature) fires too
                        self._counts["shield"] += 1
                        return self._rule(budget, model.bounds.request_reason(pos, v))
                for pos, lo, hi in model.bounds.fast_imputed:  # unknown (< 0, NaN) passes
                    v = rf[pos]
                    if v >= 0.0 and not lo <= v <= hi:
                        self._counts["shield"] += 1
                        return self._rule(budget, model.bounds.request_reason(pos, v))
                if self._prof_reason:
                    self._counts["shield"] += 1
                    return self._rule(budget, self._prof_reason)
                try:
                    k = model.run_one()
                except Exception as e:
                    self._counts["inference_error"] += 1
                    return self._rule(budget, f"inference failed: {type(e).__name__}: {e}")
                if not 0 <= k < self._k:
                    self._counts["inference_error"] += 1
                    return self._rule(budget, f"inference failed: action {k} is out of range")
                if (
                    self._budget_shield
                    and not self._musig_list[k] < budget
                    and self._modipick_respects(budget)
                ):
                    d = self._shielded(k, budget)
                    if d is not None:
                        return d
                self._counts["learned"] += 1
                return self._learned_decisions[k]
        except Exception as e:  # the last line of defence: still answer
            log.exception("selector internal error")
            return self._last_resort(f"internal error: {type(e).__name__}: {e}")

    def _invalid(self, request: Any, err: InvalidRequest) -> Decision:
        with self._lock:
            self._counts["invalid"] += 1
            budget = _budget_of(request)
            return self._rule(budget, f"invalid request: {err}")

    def _rule(self, budget: float, reason: str) -> Decision:
        """ModiPick's choice for one request (caller holds the lock)."""
        if not math.isfinite(budget):
            k = self._fastest  # ModiPick's best effort when nothing can qualify
        else:  # the scalar rule: modipick_select's choice without numpy's per-call overhead
            k = modipick_select_one(
                budget,
                self._mu_list,
                self._sigma_list,
                self._acc_list,
                self._rng.random(),
                self.threshold_ms,
            )
        return Decision(self._ids[k], k, "fallback", reason)

    def _modipick_respects(self, budget: float) -> bool:
        """Whether ModiPick's choice would satisfy ``mu + sigma < T_U`` (caller holds the lock).

        ModiPick (runtime.modipick) picks from its eligible set, all of which respect the hard
        limit, whenever a base model exists (Eq. 2: ``mu + sigma < T_U`` and
        ``mu - sigma < T_L``); otherwise it picks the fastest model. Checking this on Python
        floats avoids running the numpy rule for requests the shield would not change.
        """
        t_l = budget - self.threshold_ms
        for upper, lower in zip(self._musig_list, self._mu_minus_sigma_list, strict=True):
            if upper < budget and lower < t_l:
                return True
        return self._musig_list[self._fastest] < budget

    def _shielded(self, k: int, budget: float) -> Decision | None:
        d = self._rule(budget, "")
        m = d.index
        if not self._musig_list[m] < budget:
            return None  # ModiPick cannot respect the hard limit either: keep the learned choice
        self._counts["shield"] += 1
        reason = (
            f"shield: learned choice {self._ids[k]!r} has mu+sigma = {self._musig_list[k]:.2f} ms "
            f">= T_U = {budget:.2f} ms; ModiPick's choice {self._ids[m]!r} "
            f"({self._musig_list[m]:.2f} ms) respects the hard limit"
        )
        return Decision(d.model_id, m, "fallback", reason)

    def _last_resort(self, reason: str) -> Decision:
        try:
            with self._lock:
                self._counts["internal_error"] += 1
        except Exception:  # pragma: no cover - a broken lock is beyond saving
            pass
        k = self._fastest
        return Decision(self._ids[k], k, "fallback", reason)

    def select_batch(
        self, requests: RequestBatch | Sequence[Request | Mapping[str, Any]]
    ) -> Decisions:
        """Choose models for many requests at once (in order: a client's earlier request in the
        batch is part of its history for the later ones). Never raises."""
        try:
            return self._select_batch(requests)
        except Exception as e:
            log.exception("selector internal error (batch)")
            n = len(requests) if hasattr(requests, "__len__") else 0
            return self._batch_last_resort(n, e)

    def _select_batch(
        self, requests: RequestBatch | Sequence[Request | Mapping[str, Any]]
    ) -> Decisions:
        batch, reasons = _as_batch(requests, self.limits)
        n = len(batch)
        if n == 0:
            return Decisions(np.zeros(0, np.intp), np.zeros(0, np.bool_), [], self._ids)
        up = batch.upload_ms
        el = batch.elapsed_ms
        pay = batch.payload_bytes
        assert up is not None and el is not None and pay is not None
        valid = batch.valid_rows(self.limits)
        if reasons is None:
            reasons = [""] * n
            for i in np.flatnonzero(~valid).tolist():
                try:
                    parse_request(batch.row(i), self.limits)
                    reasons[i] = "invalid request"
                except InvalidRequest as e:
                    reasons[i] = f"invalid request: {e}"
        elif any(reasons):
            valid &= np.array([not r for r in reasons], dtype=np.bool_)
        clients = batch.client_id
        if clients is not None and not bool(valid.all()):
            clients = [c if ok else None for c, ok in zip(clients, valid.tolist(), strict=True)]
        with self._lock:
            net_mean, net_std = self._clients.update(clients, up)
            queue = _fill(batch.queue_len, self._queue_len, n)
            slow = _fill(batch.slowdown, self._slowdown, n)
            prof = self._snapshot()
            u = self._rng.random(n)
            model = self._model
            no_model_reason = self._no_model_reason
            prof_reason = self._prof_reason
        with np.errstate(invalid="ignore", over="ignore"):
            req, mod = F.encode_blocks(
                batch.sla_ms, el, up, pay / BYTES_PER_KB, net_mean, net_std, queue, slow,
                prof.mu, prof.sigma, self._acc,
                np.nan if batch.srtt_ms is None else batch.srtt_ms,
                np.nan if batch.rttvar_ms is None else batch.rttvar_ms,
                np.nan if batch.client_dl_ms is None else batch.client_dl_ms,
                np.nan if batch.client_dlvar_ms is None else batch.client_dlvar_ms,
                np.nan if batch.client_dl_mismatch is None else batch.client_dl_mismatch,
            )  # fmt: skip
        return self._decide(req, mod, valid, reasons, prof, u, model, no_model_reason, prof_reason)

    def select_features(self, obs: NDArray[np.floating]) -> Decisions:
        """Decide for prebuilt observations ``(N, R + P*K)`` (float32, as
        :func:`modi.runtime.features.encode` and the simulators build them; one row ``(D,)``
        is a batch of one), with the decision core of :meth:`select_batch`: the graph, the
        shield and the fallback rule, on the observations' own model blocks (``mu``, ``sigma``
        and accuracy per row, not the selector's profiles). Client histories and profiles are
        left untouched. A row with a non-finite value gets the fallback with the reason
        ``"invalid observation: ..."``. This is how an evaluation runs the served selector on
        a simulated stream (:class:`modi.agents.served.ServedPolicy`).

        Raises :class:`ValueError` for observations that do not fit the served pool (a
        length other than ``R + P*K`` for its ``K`` models); otherwise never raises.
        """
        x = np.asarray(obs, dtype=np.float32)
        if x.ndim == 1:
            x = x[None, :]
        want = F.R + F.P * self._k
        if x.ndim != 2 or x.shape[1] != want:
            raise ValueError(
                f"observations have shape {x.shape}, expected (N, {want}) for schema "
                f"{F.SCHEMA_NAME} v{F.SCHEMA_VERSION} and the served pool's {self._k} models"
            )
        try:
            return self._select_features(x)
        except Exception as e:
            log.exception("selector internal error (features)")
            return self._batch_last_resort(x.shape[0], e)

    def _select_features(self, x: NDArray[np.float32]) -> Decisions:
        n = int(x.shape[0])
        if n == 0:
            return Decisions(np.zeros(0, np.intp), np.zeros(0, np.bool_), [], self._ids)
        req = np.ascontiguousarray(x[:, : F.R])
        mod = np.ascontiguousarray(x[:, F.R :]).reshape(n, self._k, F.P)
        fin = np.isfinite(x)
        fin[:, F.OPTIONAL_COLUMNS] |= np.isnan(x[:, F.OPTIONAL_COLUMNS])  # NaN: unknown
        valid = np.asarray(fin.all(axis=1))
        reasons = [""] * n
        if not bool(valid.all()):
            names = [f[0] for f in F.REQUEST_FEATURES] + [
                f"model {k} {f[0]}" for k in range(self._k) for f in F.MODEL_FEATURES
            ]
            for i in np.flatnonzero(~valid).tolist():
                col = int(np.flatnonzero(~fin[i])[0])
                reasons[i] = f"invalid observation: {names[col]} is {float(x[i, col])}"
        mu = mod[:, :, F.MU].astype(np.float64)
        sigma = mod[:, :, F.SIGMA].astype(np.float64)
        prof = _Profiles(
            mu, sigma, mu + sigma, mod[:, :, F.ACC].astype(np.float64), None, None, None
        )
        with self._lock:
            u = self._rng.random(n)
            model = self._model
            no_model_reason = self._no_model_reason
        return self._decide(req, mod, valid, reasons, prof, u, model, no_model_reason, None)

    def _decide(
        self,
        req: NDArray[np.float32],
        mod: NDArray[np.float32],
        valid: NDArray[np.bool_],
        reasons: list[str],
        prof: _Profiles,
        u: NDArray[np.float64],
        model: _Loaded | None,
        no_model_reason: str,
        prof_reason: str | None,
    ) -> Decisions:
        """The decision core of a batch once its features are built (``req`` ``(N, R)`` and
        ``mod`` ``(N, K, P)``, C-contiguous float32; ``valid`` rows only are given to the
        graph; ``reasons`` holds the invalid rows' reasons and receives the others').
        ``prof_reason`` is the calibrated shield's verdict on the selector's own profiles,
        which every row shares (``None``: the rows carry their own, check each)."""
        n = req.shape[0]
        all_valid = bool(valid.all())
        budget = req[:, F.BUDGET].astype(np.float64)
        counts = {"invalid": n - int(valid.sum())}
        if model is None:
            index = np.empty(n, dtype=np.intp)
            learned = np.zeros(n, dtype=np.bool_)
            fallback = valid.copy()
            for i in np.flatnonzero(valid).tolist():
                reasons[i] = "no learned model: " + no_model_reason
            counts["no_model"] = int(valid.sum())
        else:
            if not all_valid:  # the graph never sees NaN, inf or absurd values
                req = req.copy()
                mod = mod.copy()
                req[~valid] = 0.0
                mod[~valid] = 0.0
            try:
                action = np.asarray(
                    model.run_batch(self._out, {INPUT_REQUEST: req, INPUT_MODELS: mod}, None)[0]
                ).reshape(-1)
                if action.shape != (n,):
                    raise ValueError(f"action has shape {action.shape}, expected ({n},)")
                err = ""
            except Exception as e:
                action = np.zeros(n, dtype=np.int64)
                err = f"inference failed: {type(e).__name__}: {e}"
            ok = valid & (action >= 0) & (action < self._k) if not err else np.zeros(n, np.bool_)
            bounds = model.bounds
            if not bounds.empty:  # the calibrated shield: before anything else, as select()
                fire, why = bounds.out_of_range(req, mod, valid, self._ids, prof_reason)
                if fire.any():
                    for i, r in why.items():
                        reasons[i] = r
                    ok &= ~fire
                    counts["shield"] = int(fire.sum())
            else:
                fire = np.zeros(n, dtype=np.bool_)
            index = np.where(ok, action, 0).astype(np.intp)
            learned = ok.copy()
            fallback = valid & ~ok
            failed = fallback & ~fire
            if failed.any():
                msg = err or "inference failed: action out of range"
                for i in np.flatnonzero(failed).tolist():
                    reasons[i] = msg
                counts["inference_error"] = int(failed.sum())
            if self._budget_shield:
                # Learned choice breaks mu + sigma < T_U while some model would respect it.
                musig = prof.musig
                rows = np.arange(n)
                lowest = musig.min(axis=-1)
                viol = ok & ~(prof.at(musig, rows, index) < budget) & (lowest < budget)
                if viol.any():
                    counts["shield"] = self._shield_rows(
                        np.flatnonzero(viol), index, learned, reasons, budget, u, prof
                    )
            counts["learned"] = int(learned.sum())
        fb = fallback | ~valid
        if fb.any():
            rows_f = np.flatnonzero(fb)
            b = budget[rows_f]
            fin = np.isfinite(b)
            pick = prof.fastest(rows_f)
            if fin.any():
                pick[fin] = self._modipick_rows(rows_f[fin], budget, u, prof)
            index[rows_f] = pick
        with self._lock:
            for key, v in counts.items():
                self._counts[key] += v
        return Decisions(index, learned, reasons, self._ids)

    def _batch_last_resort(self, n: int, e: Exception) -> Decisions:
        reason = f"internal error: {type(e).__name__}: {e}"
        with self._lock:
            self._counts["internal_error"] += n
            k = self._fastest
        return Decisions(
            np.full(n, k, dtype=np.intp), np.zeros(n, dtype=np.bool_), [reason] * n, self._ids
        )

    def _snapshot(self) -> _Profiles:
        """The current profiles (caller holds the lock); ``_refresh_profiles`` replaces these
        objects instead of modifying them, so the snapshot stays valid after the lock."""
        tr = self._tracker
        return _Profiles(
            tr.mu[0].copy(),
            tr.sigma[0].copy(),
            self._musig,
            self._acc,
            self._mu_list,
            self._sigma_list,
            self._acc_list,
        )

    def _modipick_rows(
        self,
        rows: NDArray[np.intp],
        budget: NDArray[np.float64],
        u: NDArray[np.float64],
        prof: _Profiles,
    ) -> NDArray[np.intp]:
        """ModiPick's choices for ``rows`` (finite budgets): the scalar rule for a few (numpy's
        per-call cost dominates there), the batched one for many; the same choices either
        way."""
        b = budget[rows]
        x = u[rows]
        t = self.threshold_ms
        if prof.per_row:
            mu, sigma, acc = prof.mu[rows], prof.sigma[rows], prof.acc[rows]
            if rows.size > _SCALAR_RULE_ROWS:
                return modipick_select(b, mu, sigma, acc, x, t)
            return np.array(
                [
                    modipick_select_one(bi, m, s, a, xi, t)
                    for bi, m, s, a, xi in zip(
                        b.tolist(), mu.tolist(), sigma.tolist(), acc.tolist(), x.tolist(),
                        strict=True,
                    )
                ],
                dtype=np.intp,
            )  # fmt: skip
        if rows.size > _SCALAR_RULE_ROWS:
            return modipick_select(b, prof.mu, prof.sigma, prof.acc, x, t)
        mu_l, sigma_l, acc_l = prof.mu_list, prof.sigma_list, prof.acc_list
        assert mu_l is not None and sigma_l is not None and acc_l is not None
        return np.array(
            [
                modipick_select_one(bi, mu_l, sigma_l, acc_l, xi, t)
                for bi, xi in zip(b.tolist(), x.tolist(), strict=True)
            ],
            dtype=np.intp,
        )

    def _shield_rows(
        self,
        rows: NDArray[np.intp],
        index: NDArray[np.intp],
        learned: NDArray[np.bool_],
        reasons: list[str],
        budget: NDArray[np.float64],
        u: NDArray[np.float64],
        prof: _Profiles,
    ) -> int:
        """Replace the learned choices of ``rows`` (which break the hard limit) by ModiPick's
        where that respects it; returns how many were replaced."""
        alt = self._modipick_rows(rows, budget, u, prof)
        musig = prof.musig
        b = budget[rows]
        m_alt = prof.at(musig, rows, alt)
        m_own = prof.at(musig, rows, index[rows])
        take = m_alt < b
        ids = self._ids
        for j, (i, m, t) in enumerate(zip(rows.tolist(), alt.tolist(), take.tolist(), strict=True)):
            if t:
                k = int(index[i])
                reasons[i] = (
                    f"shield: learned choice {ids[k]!r} has mu+sigma = {m_own[j]:.2f} ms >= "
                    f"T_U = {budget[i]:.2f} ms; ModiPick's choice {ids[m]!r} "
                    f"({m_alt[j]:.2f} ms) respects the hard limit"
                )
                index[i] = m
                learned[i] = False
        return int(take.sum())


def _session(ort: Any, path: Path, threads: int) -> Any:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def bound_inference(
    ort: Any, sess: Any, req: NDArray[np.float32], mod: NDArray[np.float32]
) -> Callable[[], int]:
    """``() -> action`` of ``sess`` on the arrays ``req`` and ``mod`` (shared with onnxruntime
    through an IOBinding, so writing into them changes the next inference's input). The output
    slot is reset before each run, so a run that did not write it reads as out of range (-1)."""
    out = np.zeros(1, dtype=np.int64)
    io = sess.io_binding()
    io.bind_ortvalue_input(INPUT_REQUEST, ort.OrtValue.ortvalue_from_numpy(req))
    io.bind_ortvalue_input(INPUT_MODELS, ort.OrtValue.ortvalue_from_numpy(mod))
    io.bind_ortvalue_output(OUTPUT_ACTION, ort.OrtValue.ortvalue_from_numpy(out))
    # The C-level handles (what InferenceSession.run_with_iobinding calls); an onnxruntime
    # without them raises AttributeError here and the caller falls back to run().
    inner, run_io, opts = io._iobinding, sess._sess.run_with_iobinding, ort.RunOptions()

    slot = out.data.cast("B").cast("q")  # the output as a memoryview: cheaper than numpy items

    def run_bound() -> int:
        slot[0] = -1
        run_io(inner, opts)
        return slot[0]

    return run_bound


def _bound_run(sess: Any) -> Callable[..., Any]:
    """The C++ session's ``run`` (what ``InferenceSession.run`` calls after re-checking the
    input names on every call), same signature; the public ``run`` if that is not there."""
    inner = getattr(sess, "_sess", None)
    run = getattr(inner, "run", None)
    return run if callable(run) else sess.run


def _budget_of(request: Any) -> float:
    """``sla - elapsed - upload`` of a (possibly invalid) request, or NaN."""
    try:
        if isinstance(request, Mapping):
            vals = [request.get(f) for f in ("sla_ms", "elapsed_ms", "upload_ms")]
        else:
            vals = [getattr(request, f, None) for f in ("sla_ms", "elapsed_ms", "upload_ms")]
        sla, el, up = (float(v) for v in vals)  # type: ignore[arg-type]
        b = (sla - el) - up
        if not -_F32_MAX <= b <= _F32_MAX:  # also NaN: nothing to budget with
            return math.nan
        return float(np.float32(b))
    except Exception:  # anything unreadable: no budget
        return math.nan


def _shield_mode(shield: Any) -> ShieldMode:
    """``Selector``'s ``shield`` argument as a mode; a clear error for anything else."""
    if shield is True:
        return "range"
    if shield is False or shield is None:
        return "off"
    if isinstance(shield, str) and shield in SHIELD_MODES:
        return shield  # type: ignore[return-value]
    raise ValueError(f"shield must be True, False or one of {list(SHIELD_MODES)}, got {shield!r}")


def _tolerance(x: Any) -> float:
    """``shield_tolerance`` checked: a real number strictly between 0 and 1."""
    ok = isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)
    if not ok or not 0.0 < float(x) < 1.0:
        raise ValueError(
            f"shield_tolerance must be a number in (0, 1) (a fraction of each training range's "
            f"width), got {x!r}"
        )
    return float(x)


def _fill(col: NDArray[np.float64] | None, default: float, n: int) -> NDArray[np.float64]:
    if col is None:
        return np.full(n, default)
    return np.where(np.isnan(col), default, col)


def _as_batch(
    requests: RequestBatch | Sequence[Request | Mapping[str, Any]], limits: RequestLimits
) -> tuple[RequestBatch, list[str] | None]:
    """A :class:`RequestBatch` and, for a sequence of requests, each row's invalidity reason."""
    if isinstance(requests, RequestBatch):
        return requests, None
    reasons: list[str] = []
    cols: list[list[Any]] = [[] for _ in range(12)]
    nan = float("nan")
    for r in requests:
        try:
            sla, el, up, pkb, client, q_r, s_r, rtt, var, dl, dlv, mis = parse_request(r, limits)
            reasons.append("")
            row: tuple[Any, ...] = (
                sla, el, up, pkb * BYTES_PER_KB, client, q_r, s_r, rtt, var, dl, dlv, mis,
            )  # fmt: skip
        except InvalidRequest as e:
            reasons.append(f"invalid request: {e}")
            b = _budget_of(r)
            # Keep the budget for ModiPick's fallback: sla = budget, elapsed = upload = 0.
            row = (b, 0.0, 0.0, nan, None, None, None, nan, nan, nan, nan, nan)
        for c, v in zip(cols, row, strict=True):
            c.append(v)
    queue = None if all(v is None for v in cols[5]) else [nan if v is None else v for v in cols[5]]
    slow = None if all(v is None for v in cols[6]) else [nan if v is None else v for v in cols[6]]
    clients = None if all(v is None for v in cols[4]) else cols[4]
    rtts, rttvars, dls, dlvars, mismatches = (
        None if all(math.isnan(v) for v in c) else c for c in cols[7:12]
    )  # unknown everywhere: no column
    batch = RequestBatch(
        cols[0], cols[1], cols[2], cols[3], clients, queue, slow, rtts, rttvars, dls, dlvars,
        mismatches,
    )  # fmt: skip
    return batch, reasons
