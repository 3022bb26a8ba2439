"""The device runtime: the phone's decision at capture time from an exported device policy.

:class:`DeviceSelector` loads an ONNX file written by
:func:`modi.agents.device_scorer.export_device_onnx`, keeps the phone's own network history
(:func:`modi.runtime.device_features.fold_measurement_scalar`, the env's EWMA in Python floats),
builds the observation and the option vectors with :mod:`modi.runtime.device_features` (the
module ``modi/Offload-v0`` uses) and returns a :class:`DeviceDecision`: where to preprocess,
which placement (an on-device model or offload) and whether to start the backup, with the
reason.

It never raises on the decision path. It answers with the PieSlicer rule instead (preprocess
where the expected pre-execution time is lower, from the newest uplink measurement; offload; no
backup) and says why when:

* there is no model, or the file is missing, corrupt or for another schema (``"no learned
  model: ..."``);
* the device is invalid: an unknown tier, no on-device models, a bad profile (``"invalid
  device: ..."``);
* an input is bad: NaN / inf / negative / non-numeric request fields, a network history
  (start-up probe, :meth:`~DeviceSelector.set_history`) holding such values, or a radio
  (:meth:`~DeviceSelector.set_radio`) of unknown name or invalid power (``"invalid input:
  ..."``). A bad *measurement* given to :meth:`~DeviceSelector.record` never gets that far: it
  is refused (``False``, counted in ``ignored_measurements``) and the history stays as it was;
* an on-device model's option columns (its μ, σ, accuracy, load time) leave the range seen in
  training by more than ``range_margin`` of that range: another on-device pool or device than
  the policy was trained for (``"out of range: ..."``; checked once per model state);
* onnxruntime fails (``"inference failed: ..."``).

Only numpy and onnxruntime are imported (never torch, gymnasium, hydra or mlflow).

Batch-1 path: when everything but the request is known to be valid (model, device, pool range,
history; rechecked only when they change), :meth:`~DeviceSelector.decide` rounds the request
block to float32 in one C call, packs the option vectors into the onnxruntime-bound input in
another (:meth:`modi.runtime.device_features.OptionBuilder.pack`, the same bits as
:func:`~modi.runtime.device_features.option_features`), runs the session with its free
dimensions fixed to one capture's ``(1, K)`` and reads the scores onnxruntime wrote in place;
nothing per call is left for the garbage collector. Anything unusual goes through the fully
checked path, which says why it falls back.

Usage on a phone::

    spec = DeviceSpec(tier="mid", models=[DeviceModel("mobilenet_0.25_128", 0.41, 66.3, 6.0,
                      12.0), ...], backup="mobilenet_0.25_128", prep_intercept_ms=15.0,
                      prep_ms_per_mp=36.4)
    sel = DeviceSelector.load("device_policy.onnx", spec, radio="wifi")
    sel.start(latency_ms=12.0, uplink_mbps=20.0, time_ms=0.0)        # the start-up probe
    sel.set_radio("lte")                                              # when the phone switches
    d = sel.decide(time_ms=t, sla_ms=500, megapixels=12.0, raw_bytes=3.1e6)
    ...                                                               # act on d.prep, d.placement
    sel.record(latency_ms=..., uplink_mbps=..., time_ms=t_capture)    # when the response is back
"""

from __future__ import annotations

import logging
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import NDArray

from modi.runtime import device_features as dfeat
from modi.runtime.device_meta import (
    CONTEXT_RADIOS,
    INPUT_OPTIONS,
    OUTPUT_PREDICTIONS,
    OUTPUT_SCORES,
    PREFIX,
    SETTING_INPUTS,
    DeviceMetadataError,
    DeviceModelMeta,
    context_initializers,
    radio_class,
)

log = logging.getLogger(__name__)

TIERS = ("low", "mid", "high")
#: Option columns that describe the on-device model (checked against the training range).
POOL_FEATURES = tuple(
    i
    for i, (n, _, _) in enumerate(dfeat.OPTION_FEATURES)
    if n in ("model_mu_s", "model_sigma_s", "model_accuracy", "model_load_s")
)
PREP_NAMES = ("device", "server")
#: Server preprocessing estimate of the fallback rule (ms = intercept + per-MP x MP): the env's
#: default server (``modi.envs.offload.DEFAULT_SERVER_PREP``).
FALLBACK_SERVER_PREP = (2.0, 8.0)
#: The request block rounded to float32 in one C call (the fast path packs it in column order).
_REQUEST32 = struct.Struct(f"={dfeat.R}f")
_ORDER = (dfeat.SLA, dfeat.MEGAPIXELS, dfeat.RAW_KB, dfeat.PREP_EST, dfeat.TIER_LOW,
          dfeat.TIER_MID, dfeat.TIER_HIGH, dfeat.NET_LATENCY, dfeat.NET_UPLINK,
          dfeat.NET_UPLINK_STD, dfeat.NET_AGE, dfeat.NET_UPLINK_LAST,
          dfeat.RADIO_ACTIVE_W)  # fmt: skip
if tuple(range(dfeat.R)) != _ORDER:  # pragma: no cover - a schema change must update decide()
    raise ImportError("the device request block's column order changed: update DeviceSelector")
_INF = math.inf
_new_tuple = tuple.__new__
_F32_MAX = float(np.finfo(np.float32).max)
_ORT_TYPES = {np.dtype(np.float64): "tensor(double)", np.dtype(np.bool_): "tensor(bool)"}


def _check_setting_inputs(overridable: Sequence[Any]) -> None:
    """Raise unless a per-context file's graph takes a setting in its setting inputs (name,
    type and shape of each, :data:`~modi.runtime.device_meta.SETTING_INPUTS`)."""
    have = {i.name: i for i in overridable}
    missing = sorted(set(SETTING_INPUTS) - set(have))
    if missing:
        raise DeviceMetadataError(
            f"{PREFIX}contexts given, but the graph has no setting inputs {missing}"
        )
    for name, value in context_initializers((0.0, 0.0, None), 0.0).items():
        want = (_ORT_TYPES[value.dtype], list(value.shape))
        got = (have[name].type, list(have[name].shape))
        if got != want:
            raise DeviceMetadataError(f"setting input {name!r} is {got}, expected {want}")


def _run_with(run: Any, setting: dict[str, Any]) -> Any:
    """``run(outputs, feeds)`` with the graph's setting inputs ``setting`` added to the feeds."""
    if not setting:
        return run
    return lambda outputs, feeds: run(outputs, {**feeds, **setting})


@dataclass(frozen=True)
class DeviceModel:
    """One on-device model's profile (ms) and top-1 accuracy (fraction)."""

    model_id: str
    accuracy: float
    mean_ms: float
    std_ms: float
    load_ms: float


@dataclass(frozen=True)
class DeviceSpec:
    """What the phone knows about itself: tier, on-device models, backup, preprocessing law."""

    tier: str
    models: Sequence[DeviceModel]
    backup: str
    prep_intercept_ms: float
    prep_ms_per_mp: float

    @classmethod
    def from_profile(cls, profile: Any) -> DeviceSpec:
        """The spec of a device profile (a :class:`~modi.envs.devices.DeviceProfile`, read by
        attribute so the runtime imports nothing of the simulators): its profiled values."""
        return cls(
            tier=profile.tier,
            models=tuple(
                DeviceModel(
                    m.id, float(m.accuracy), float(m.mean_ms), float(m.std_ms),
                    float(m.load_mean_ms),
                )
                for m in profile.models
            ),
            backup=profile.ids[profile.backup_index],
            prep_intercept_ms=float(profile.preprocessing.intercept_ms),
            prep_ms_per_mp=float(profile.preprocessing.ms_per_mp),
        )  # fmt: skip


class DeviceDecision(NamedTuple):
    """One capture's decision. ``placement`` is an on-device model id or ``"offload"``."""

    prep: str
    placement: str
    backup: bool
    action: tuple[int, int, int]
    source: str  # "learned" or "fallback"
    reason: str
    #: The graph's score of every option (the decision is the first highest). With the tie
    #: choice, options outside the tie set score -1e6 and tied ones minus their predicted
    #: energy; with the anchor rule, a kept anchor scores 1e9 more.
    scores: tuple[float, ...] = ()


class DeviceSelector:
    """Device-side decisions from an exported device policy, with a PieSlicer fallback.

    ``radio``: the radio the phone is on (``"wifi"``, ``"lte"``, ``"3g"`` or its active power in
    W, from the phone's power profile; WiFi unless given); :meth:`set_radio` when it changes.
    A per-context policy (a setting per tier × radio class, ``modi.device.contexts`` in its
    metadata) decides with the setting of :attr:`context`, bound to the graph's setting inputs
    when the file is loaded and when the radio's class changes.
    """

    def __init__(
        self,
        spec: DeviceSpec,
        model_path: str | Path | None = None,
        range_margin: float = 0.25,
        alpha: float = dfeat.DEVICE_NET_ALPHA,
        radio: str | float = "wifi",
    ) -> None:
        self.spec = spec
        self.range_margin = float(range_margin)
        self.alpha = float(alpha)
        self._spec_error = self._check_spec(spec)
        self.meta: DeviceModelMeta | None = None
        self._run: Any = None
        self._run_bound: Any = None
        self._runners: dict[str | None, tuple[Any, Any]] = {}
        self.load_error: str | None = "no model given" if model_path is None else None
        self.loaded = np.zeros(len(spec.models), dtype=bool)
        self._backup_index = 0
        self._tier = TIERS.index(spec.tier) if spec.tier in TIERS else 0
        if self._spec_error is None:
            ids = [m.model_id for m in spec.models]
            self._backup_index = ids.index(spec.backup)
            self.loaded[self._backup_index] = True
        # network history (the env's state): EWMAs, newest measurement, its time
        self._lat = math.nan
        self._bw = math.nan
        self._bw_var = 0.0
        self._bw_last = math.nan
        self._last_ms = math.nan
        self._radio_w = math.nan
        self._radio32 = math.nan
        self._history_ok = False
        #: Measurements :meth:`record` refused (NaN, inf, negative or not a number).
        self.ignored_measurements = 0
        # the request block's tier and history columns (TIER_LOW .. NET_UPLINK_STD) and its
        # newest bandwidth measurement (NET_UPLINK_LAST) as float32 values: set with a valid
        # history
        self._hist32 = (math.nan,) * 6
        self._last32 = math.nan
        self._fast = False  # every check but the request's passed: decide() takes the fast path
        self._req = np.zeros(dfeat.R, dtype=np.float32)
        self._tier_flags = tuple(float(i == self._tier) for i in range(len(TIERS)))
        self._ids = [m.model_id for m in spec.models]
        self._actions = [
            (int(a), int(b), int(c)) for a, b, c in dfeat.option_actions(max(1, len(self._ids)))
        ]
        self._reason = f"highest score of {len(self._actions)} options"
        # per option: the fields of its learned decision but the scores, made once
        self._answers = [
            (
                PREP_NAMES[a],
                self._ids[b] if b < len(self._ids) else "offload",
                c == 1,
                (a, b, c),
                "learned",
                self._reason,
            )
            for a, b, c in self._actions
        ]
        self._prep_law = (float(spec.prep_intercept_ms), float(spec.prep_ms_per_mp))
        self._builder: dfeat.OptionBuilder | None = None
        self._pool_error: str | None = None
        if model_path is not None:
            self._load(Path(model_path))
        self._models_changed()
        self.set_radio(radio)

    @classmethod
    def load(cls, path: str | Path, spec: DeviceSpec, **kwargs: Any) -> DeviceSelector:
        """A selector for ``spec`` with the policy at ``path`` (never raises: a bad file gives
        a selector that falls back, with :attr:`load_error` saying why)."""
        return cls(spec, path, **kwargs)

    @staticmethod
    def _check_spec(spec: DeviceSpec) -> str | None:
        if spec.tier not in TIERS:
            return f"unknown device tier {spec.tier!r}; expected one of {list(TIERS)}"
        if not spec.models:
            return "the device has no on-device models"
        ids = [m.model_id for m in spec.models]
        if spec.backup not in ids:
            return f"backup {spec.backup!r} is not an on-device model ({ids})"
        for m in spec.models:
            vals = (m.accuracy, m.mean_ms, m.std_ms, m.load_ms)
            if not all(math.isfinite(v) and v >= 0 for v in vals) or m.accuracy > 1:
                return f"model {m.model_id!r}: accuracy in [0, 1] and times >= 0 expected"
        if not all(
            math.isfinite(v) and v >= 0 for v in (spec.prep_intercept_ms, spec.prep_ms_per_mp)
        ):
            return "prep_intercept_ms and prep_ms_per_mp must be finite and >= 0"
        return None

    def _load(self, path: Path) -> None:
        try:
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.intra_op_num_threads = 1
            opts.inter_op_num_threads = 1
            opts.log_severity_level = 3
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            # every inference here is one capture's K options: with the export's free
            # dimensions fixed (N = 1, K), onnxruntime folds the graph's shape arithmetic and
            # plans its buffers once (~1 µs a decision; a file that names them otherwise is
            # run as it is)
            opts.add_free_dimension_override_by_name("N", 1)
            opts.add_free_dimension_override_by_name(
                "K", len(self.spec.models) + len(dfeat.OFFLOAD_OPTIONS)
            )
            sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            props = sess.get_modelmeta().custom_metadata_map
            self.meta = DeviceModelMeta.from_props(props)
            names = [i.name for i in sess.get_inputs()]
            if names != [INPUT_OPTIONS]:
                raise DeviceMetadataError(f"inputs {names}, expected [{INPUT_OPTIONS!r}]")
            # a per-context policy: the setting of each radio class of this phone's tier, fed
            # to the graph's setting inputs (bound once: nothing to do per decision)
            settings: dict[str | None, dict[str, Any]] = {None: {}}
            if self.meta.contexts is not None:
                _check_setting_inputs(sess.get_overridable_initializers())
                tier = TIERS[self._tier]
                settings = {
                    radio: context_initializers(
                        self.meta.contexts[f"{tier}/{radio}"], self.meta.w_bytes_per_mb
                    )
                    for radio in CONTEXT_RADIOS
                }
        except Exception as e:  # never raise on load
            self.meta = None
            self.load_error = f"{path}: {e}"
            log.warning("device policy not loaded, using the PieSlicer rule: %s", self.load_error)
            return
        self._lo = np.asarray(self.meta.feature_min, dtype=np.float32)
        self._hi = np.asarray(self.meta.feature_max, dtype=np.float32)
        width = self._hi - self._lo
        self._lo_ok = self._lo - self.range_margin * width - 1e-6
        self._hi_ok = self._hi + self.range_margin * width + 1e-6
        self._outputs = [OUTPUT_SCORES]
        self.load_error = None
        # batch-1 buffers shared with onnxruntime (IOBinding): the option vectors are written
        # in place and the scores read in place; plain run() where that is not available
        k = len(self.spec.models) + len(dfeat.OFFLOAD_OPTIONS)
        self._x = np.zeros((1, k, dfeat.F), dtype=np.float32)
        out_types = {o.name: o.type for o in sess.get_outputs()}
        dtype = np.float32 if out_types.get(OUTPUT_SCORES) == "tensor(float)" else np.float64
        self._scores = np.zeros((1, k), dtype=dtype)
        # the other output (unused here) into a buffer of its own too: no allocation per call;
        # where that fails (another shape or type), onnxruntime allocates it
        pred_dtype = {"tensor(double)": np.float64, "tensor(float)": np.float32}.get(
            out_types.get(OUTPUT_PREDICTIONS, ""), np.float64
        )
        self._predictions = np.zeros((1, k, 3), dtype=pred_dtype)
        self._runners = {}
        for key, setting in settings.items():
            bound = None
            for bind_predictions in (OUTPUT_PREDICTIONS in out_types, False):
                try:
                    bound = self._bind(ort, sess, bind_predictions, setting)
                    break
                except Exception:  # an onnxruntime without these handles: run() instead
                    bound = None
            self._runners[key] = (_run_with(sess.run, setting), bound)
        self._x.fill(0.0)
        self._score_row = self._scores[0]
        self._use_context()

    def _context_radio(self) -> str | None:
        """The radio class whose setting decides (``None``: a policy with one setting)."""
        if self.meta is None or self.meta.contexts is None:
            return None
        w = self._radio_w
        return radio_class(w) if math.isfinite(w) else CONTEXT_RADIOS[0]

    def _use_context(self) -> None:
        """Decide with the binding of the phone's decision context (one binding for a policy
        without contexts)."""
        if self._runners:
            self._run, self._run_bound = self._runners[self._context_radio()]

    @property
    def context(self) -> str | None:
        """The decision context whose setting decides (``"mid/cellular"``), for a per-context
        policy; ``None`` for a policy with one setting (or none loaded)."""
        radio = self._context_radio()
        if radio is None or self._spec_error is not None:
            return None
        return f"{TIERS[self._tier]}/{radio}"

    def _bind(self, ort: Any, sess: Any, bind_predictions: bool, setting: dict[str, Any]) -> Any:
        """``() -> None``: one inference of ``sess`` from :attr:`_x` (and the graph's setting
        inputs ``setting``, bound here once) into :attr:`_scores` (IOBinding), checked against
        ``run()`` on a probe; raises where that fails."""
        io = sess.io_binding()
        io.bind_ortvalue_input(INPUT_OPTIONS, ort.OrtValue.ortvalue_from_numpy(self._x))
        for name, value in setting.items():
            io.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(value))
        io.bind_ortvalue_output(OUTPUT_SCORES, ort.OrtValue.ortvalue_from_numpy(self._scores))
        if bind_predictions:
            io.bind_ortvalue_output(
                OUTPUT_PREDICTIONS, ort.OrtValue.ortvalue_from_numpy(self._predictions)
            )
        inner, run_io, run_opts = io._iobinding, sess._sess.run_with_iobinding, ort.RunOptions()

        def run_bound() -> None:
            run_io(inner, run_opts)

        # the bound call must write the scores run() returns, in place
        self._x[:] = np.linspace(-1.0, 1.0, self._x.size, dtype=np.float32).reshape(self._x.shape)
        self._scores.fill(np.nan)
        run_bound()
        ref = sess.run(self._outputs, {INPUT_OPTIONS: self._x, **setting})[0]
        if not np.array_equal(np.asarray(ref, dtype=self._scores.dtype), self._scores):
            raise RuntimeError("the bound call wrote other scores than run()")
        run_bound.keep = (io, setting)  # type: ignore[attr-defined]  # alive with the call
        return run_bound

    def _model_rows(self) -> NDArray[np.float32]:
        s = self.spec
        return dfeat.encode_device_models(
            [m.mean_ms for m in s.models],
            [m.std_ms for m in s.models],
            [m.accuracy for m in s.models],
            [m.load_ms for m in s.models],
            self.loaded.astype(np.float64),
            self._backup_index,
        )

    def _models_changed(self) -> None:
        """Recompute the option columns that depend on the on-device models and check them
        against the training range (once per model state, not per decision)."""
        self._set_models()
        self._update_fast()

    def _update_fast(self) -> None:
        self._fast = (
            self._spec_error is None
            and self._run is not None
            and self._run_bound is not None
            and self._pool_error is None
            and self._builder is not None
            and self._history_ok
        )

    def _set_models(self) -> None:
        self._builder = None
        self._pool_error = None
        if self._spec_error is not None:
            return
        try:
            self._builder = dfeat.OptionBuilder(self._model_rows())
        except ValueError as e:
            self._pool_error = str(e)
            return
        if self.meta is None:
            return
        static = self._builder._static
        for f in POOL_FEATURES:
            col = static[:, f].astype(np.float32)
            bad = (col < self._lo_ok[f]) | (col > self._hi_ok[f])
            if bad.any():
                k = int(np.argmax(bad))
                self._pool_error = (
                    f"option {k} feature {dfeat.OPTION_FEATURES[f][0]}={float(col[k]):.4g} "
                    f"outside the training range [{float(self._lo[f]):.4g}, "
                    f"{float(self._hi[f]):.4g}] (another on-device pool or device?)"
                )
                return

    # ------------------------------------------------------------------ network history
    def set_radio(self, radio: str | float) -> None:
        """The radio the phone is on now: ``"wifi"``, ``"lte"``, ``"3g"`` or its active power in
        W (the phone's power profile). An unknown name or an invalid power makes every decision
        fall back, with the radio in the reason, until a valid one is set (never raises)."""
        try:
            w = dfeat.RADIO_ACTIVE_POWER_W[radio] if isinstance(radio, str) else float(radio)
        except (KeyError, TypeError, ValueError):
            w = math.nan
        self._radio_w = w
        self._use_context()
        self._check_history()

    @property
    def radio_active_w(self) -> float:
        """The active power (W) of the radio the phone is on, as :meth:`set_radio` set it
        (NaN: an invalid radio)."""
        return self._radio_w

    def start(self, latency_ms: float, uplink_mbps: float, time_ms: float) -> None:
        """The start-up probe: the history starts from this measurement."""
        self.set_history(latency_ms, uplink_mbps, 0.0, uplink_mbps, time_ms)

    def set_history(
        self,
        latency_ms: float,
        uplink_mbps: float,
        uplink_var: float,
        uplink_last_mbps: float,
        last_ms: float,
    ) -> None:
        """Restore a network history (EWMAs, EW variance, newest bandwidth measurement and the
        capture time of the request that made it), e.g. saved across app restarts. Invalid
        values (NaN, inf, negative, not a number) make every decision fall back, with the
        history in the reason, until a valid measurement arrives (never raises)."""
        vals = []
        for v in (latency_ms, uplink_mbps, uplink_var, uplink_last_mbps, last_ms):
            try:
                vals.append(float(v))
            except (TypeError, ValueError):
                vals.append(math.nan)
        self._lat, self._bw, self._bw_var, self._bw_last, self._last_ms = vals
        self._check_history()

    def _check_history(self) -> None:
        vals = (self._lat, self._bw, self._bw_var, self._bw_last, self._last_ms, self._radio_w)
        self._history_ok = (
            all(math.isfinite(v) for v in vals) and min(vals[:4]) >= 0 and self._radio_w >= 0
        )
        if self._history_ok:
            try:  # the history's columns as the float32 observation holds them
                lat, bw, std, bw_last, radio = struct.unpack(
                    "=5f",
                    struct.pack(
                        "=5f",
                        self._lat, self._bw, math.sqrt(self._bw_var), self._bw_last, self._radio_w,
                    ),
                )  # fmt: skip
                # columns TIER_LOW .. NET_UPLINK_STD, then NET_UPLINK_LAST, RADIO_ACTIVE_W
                # (see _ORDER)
                self._hist32 = (*self._tier_flags, lat, bw, std)
                self._last32 = bw_last
                self._radio32 = radio
            except (OverflowError, struct.error):  # beyond float32: not a usable history
                self._history_ok = False
        self._update_fast()

    def record(self, latency_ms: float, uplink_mbps: float, time_ms: float) -> bool:
        """A completed measurement (call when the response has arrived): the response's one-way
        latency, the upload's bandwidth, and the capture time of the request that measured
        them. Returns whether it was folded in: a non-numeric, NaN, infinite or negative value
        is ignored (logged, counted in :attr:`ignored_measurements`, never raises), so it never
        reaches a decision."""
        try:
            latency_ms, uplink_mbps, time_ms = (
                float(latency_ms),
                float(uplink_mbps),
                float(time_ms),
            )
            ok = 0.0 <= latency_ms < _INF and 0.0 <= uplink_mbps < _INF and math.isfinite(time_ms)
        except (TypeError, ValueError):
            ok = False
        if not ok:
            self.ignored_measurements += 1
            log.warning(
                "ignoring an invalid network measurement (latency_ms, uplink_mbps, time_ms) = %r",
                (latency_ms, uplink_mbps, time_ms),
            )
            return False
        if not self._history_ok:
            self.start(latency_ms, uplink_mbps, time_ms)
            return True
        self._lat, self._bw, self._bw_var = dfeat.fold_measurement_scalar(
            self._lat, self._bw, self._bw_var, latency_ms, uplink_mbps, self.alpha
        )
        self._bw_last, self._last_ms = uplink_mbps, time_ms
        self._check_history()
        return True

    def set_loaded(self, model_id: str, loaded: bool = True) -> None:
        """Mark an on-device model as in memory (or not)."""
        ids = [m.model_id for m in self.spec.models]
        if model_id in ids and self.loaded[ids.index(model_id)] != bool(loaded):
            self.loaded[ids.index(model_id)] = bool(loaded)
            self._models_changed()

    # ------------------------------------------------------------------ decisions
    def observation(
        self, time_ms: float, sla_ms: float, megapixels: float, raw_bytes: float
    ) -> NDArray[np.float32]:
        """The env's observation ``(D,)`` of this capture (``modi.device_decision``)."""
        s = self.spec
        req = dfeat.encode_device_requests(
            sla_ms,
            megapixels,
            raw_bytes,
            s.prep_intercept_ms + s.prep_ms_per_mp * megapixels,
            TIERS.index(s.tier),
            self._lat,
            self._bw,
            math.sqrt(self._bw_var),
            time_ms - self._last_ms,
            self._bw_last,
            self._radio_w,
        )
        return np.concatenate([req, self._model_rows().reshape(-1)])

    def _fallback(
        self, reason: str, sla_ms: float, megapixels: float, raw_bytes: float
    ) -> DeviceDecision:
        """PieSlicer's rule from the newest uplink measurement: the location with the lower
        expected pre-execution time; offload; no backup (device preprocessing when unknown)."""
        prep = 0
        try:
            bw = self._bw_last
            s = self.spec
            if (
                math.isfinite(bw)
                and bw > 0
                and math.isfinite(megapixels)
                and math.isfinite(raw_bytes)
            ):
                dev = s.prep_intercept_ms + s.prep_ms_per_mp * megapixels
                dev += 8.0 * dfeat.PRE_PAYLOAD_KB / bw
                a, b = FALLBACK_SERVER_PREP
                srv = 8.0 * raw_bytes / 1e3 / bw + a + b * megapixels
                prep = 0 if dev <= srv else 1
        except Exception:  # the fallback itself never raises
            prep = 0
        n = len(self.spec.models)
        return DeviceDecision(PREP_NAMES[prep], "offload", False, (prep, n, 0), "fallback", reason)

    def decide(
        self, time_ms: float, sla_ms: float, megapixels: float, raw_bytes: float
    ) -> DeviceDecision:
        """The decision for a capture at ``time_ms`` (never raises)."""
        if self._fast:
            # the batch-1 path: the request block rounded to float32 in one C call, the option
            # vectors packed into the bound input in one (dfeat.OptionBuilder.pack, the same
            # values as option_features), onnxruntime writes the scores in place
            try:
                if (
                    0.0 < sla_ms < _INF
                    and 0.0 < megapixels < _INF
                    and 0.0 < raw_bytes < _INF
                    and -_INF < time_ms < _INF
                ):
                    a, b = self._prep_law
                    req = _REQUEST32.unpack(
                        _REQUEST32.pack(
                            sla_ms,
                            megapixels,
                            raw_bytes / 1e3,
                            a + b * megapixels,
                            *self._hist32,
                            time_ms - self._last_ms,
                            self._last32,
                            self._radio32,
                        )
                    )
                    self._builder.pack(self._x, req)  # type: ignore[union-attr]
                    self._run_bound()
                    values = self._score_row.tolist()
                    if math.isfinite(sum(values)):
                        # the decision's fields and the scores (tuple.__new__: what the
                        # NamedTuple's constructor does, without its Python frame)
                        answer = self._answers[values.index(max(values))]
                        return _new_tuple(DeviceDecision, (*answer, tuple(values)))
            except Exception:  # any doubt: the checked path below says why (never raises)
                pass
        return self._decide_checked(time_ms, sla_ms, megapixels, raw_bytes)

    def _decide_checked(
        self, time_ms: float, sla_ms: float, megapixels: float, raw_bytes: float
    ) -> DeviceDecision:
        """:meth:`decide` with every check spelled out (and its reason on a fallback)."""
        if self._spec_error is not None:
            return self._fallback(
                f"invalid device: {self._spec_error}", sla_ms, megapixels, raw_bytes
            )
        if self._run is None:
            return self._fallback(
                f"no learned model: {self.load_error}", sla_ms, megapixels, raw_bytes
            )
        try:
            try:
                time_ms, sla_ms = float(time_ms), float(sla_ms)
                megapixels, raw_bytes = float(megapixels), float(raw_bytes)
            except (TypeError, ValueError):
                time_ms = sla_ms = megapixels = raw_bytes = math.nan
            isfinite = math.isfinite
            if not (
                isfinite(time_ms)
                and isfinite(sla_ms)
                and isfinite(megapixels)
                and isfinite(raw_bytes)
            ):
                return self._fallback(
                    "invalid input: non-finite request field "
                    f"{(time_ms, sla_ms, megapixels, raw_bytes)}",
                    sla_ms,
                    megapixels,
                    raw_bytes,
                )
            if sla_ms <= 0 or megapixels <= 0 or raw_bytes <= 0:
                return self._fallback(
                    "invalid input: sla_ms, megapixels, raw_bytes must be > 0",
                    sla_ms,
                    megapixels,
                    raw_bytes,
                )
            if max(abs(time_ms), sla_ms, megapixels, raw_bytes / 1e3) > _F32_MAX:
                return self._fallback(
                    "invalid input: a request field beyond float32's range "
                    f"{(time_ms, sla_ms, megapixels, raw_bytes)}",
                    sla_ms,
                    megapixels,
                    raw_bytes,
                )
            if not self._history_ok:
                hist = (self._lat, self._bw, self._bw_last, self._last_ms)
                return self._fallback(
                    f"invalid input: network history {hist}, radio {self._radio_w} W (no "
                    "measurement yet?)",
                    sla_ms,
                    megapixels,
                    raw_bytes,
                )
            if self._pool_error is not None or self._builder is None:
                return self._fallback(
                    f"out of range: {self._pool_error}", sla_ms, megapixels, raw_bytes
                )
            s, req = self.spec, self._req
            req[dfeat.SLA] = sla_ms
            req[dfeat.MEGAPIXELS] = megapixels
            req[dfeat.RAW_KB] = raw_bytes / 1e3
            req[dfeat.PREP_EST] = s.prep_intercept_ms + s.prep_ms_per_mp * megapixels
            req[dfeat.TIER_LOW + self._tier] = 1.0
            req[dfeat.NET_LATENCY] = self._lat
            req[dfeat.NET_UPLINK] = self._bw
            req[dfeat.NET_UPLINK_STD] = math.sqrt(self._bw_var)
            req[dfeat.NET_AGE] = time_ms - self._last_ms
            req[dfeat.NET_UPLINK_LAST] = self._bw_last
            req[dfeat.RADIO_ACTIVE_W] = self._radio_w
            if self._run_bound is not None:
                x = self._builder.build(req, self._x)
                self._scores.fill(np.nan)
                self._run_bound()
                scores = self._scores[0]
            else:
                x = self._builder.build(req)
                scores = self._run(self._outputs, {INPUT_OPTIONS: x})[0][0]
            values = scores.tolist()
            if len(values) != x.shape[1] or not isfinite(sum(values)):
                return self._fallback("inference failed: bad scores", sla_ms, megapixels, raw_bytes)
        except Exception as e:  # the decision path never raises
            return self._fallback(f"inference failed: {e}", sla_ms, megapixels, raw_bytes)
        prep, place, backup = self._actions[values.index(max(values))]
        where = self._ids[place] if place < len(self._ids) else "offload"
        return DeviceDecision(
            PREP_NAMES[prep],
            where,
            bool(backup),
            (prep, place, backup),
            "learned",
            self._reason,
            tuple(values),
        )
