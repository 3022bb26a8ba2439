"""Off-policy evaluation: what a candidate selector would score on traffic another one served.

Given a decision log (:mod:`modi.runtime.decision_log`: features, the logging policy's full
action-probability vector ``μ(·|x)``, the action taken and its outcome) and a candidate policy
``π(·|x)`` (deterministic, or stochastic such as ModiPick or a shielded selector), each estimator
gives the candidate's mean reward over the logged requests with a 95 % confidence interval:

* ``ips`` — inverse propensity scoring, ``mean(ρ r)`` with ``ρ = π(a|x) / μ(a|x)``;
* ``snips`` — self-normalised IPS, ``Σ ρ r / Σ ρ`` (delta-method interval);
* ``dm`` — the direct method, ``mean Σ_a π(a|x) q̂(x, a)`` with a reward model ``q̂`` fitted on the
  log (its interval covers the sampling of requests only, not the model's bias);
* ``dr`` — doubly robust, ``DM + ρ (r − q̂(x, a))`` with a cross-fitted ``q̂`` (no row's model
  saw that row);
* ``switch_dr`` — Switch-DR (Wang et al., 2017): the DR correction only where ``ρ ≤ τ``, the
  model alone above (and for actions the logger never takes); ``τ`` minimises the estimated
  variance plus the squared bound on the bias this adds.

Intervals are normal approximations over the per-request terms (``ddof=1``, ``z = 1.96``).
Rewards are the effective accuracy (``accuracy`` if the SLA was met, else 0; ``correct and met``
when labels were logged) and, as a second metric, the attainment (``met``).

The reward model (:class:`MetModel`) is an L2-regularised logistic regression of ``met`` on the
(request block, model row) pair of :class:`~modi.runtime.features.ObsLayout` — the split a
pool-agnostic selector scores — plus a per-model intercept; ``q̂ = accuracy · P̂(met)`` for the
effective accuracy. Plain numpy (Newton's method): ``met`` is nearly a logistic function of
``slack_ms`` and the upload time, the fit has ~30 parameters, and it needs no extra dependency.

**Support.** Where the logger gives an action the candidate takes a probability below ``floor``
(default 0 < μ < 1e-3 counts as 0) the log says nothing about it. When the candidate puts more
than ``max_unsupported`` (default 1 %) of its choices there, ``ips``, ``snips`` and ``dr``
answer *cannot estimate* instead of a number; below it, their intervals are widened by the
unsupported share (the most the missing rewards, in [0, 1], can move the value). ``dm`` and
``switch_dr`` still answer, with a note saying how much of the estimate rests on the model.

**What is estimated.** The candidate's mean reward *on the logged requests*: their features
(queue length, profiles) are those the logging policy's own choices produced. Where the
server's state depends on earlier choices (a queue: the ``loaded_server`` scenario) a candidate
that picks slower models meets longer queues than the log shows, and its real value differs
(:mod:`modi.experiments.ope_validation` measures both: without a queue the two agree).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from modi.runtime import features as F
from modi.runtime.decision_log import DecisionLog
from modi.runtime.features import ObsLayout
from modi.runtime.modipick import modipick_stages

log = logging.getLogger(__name__)

F64 = NDArray[np.float64]

#: Estimators in report order.
ESTIMATORS: tuple[str, ...] = ("ips", "snips", "dm", "dr", "switch_dr")
#: Metrics: the reward (effective accuracy) and the attainment (SLA met).
METRICS: tuple[str, ...] = ("effective_accuracy", "attainment")
#: Two-sided 95 % normal quantile.
Z95 = 1.959963984540054
#: A logged probability below this counts as "never taken".
DEFAULT_FLOOR = 1e-3
#: Largest share of the candidate's choices the log may not cover before IPS/SNIPS/DR refuse.
DEFAULT_MAX_UNSUPPORTED = 0.01


class OPEError(ValueError):
    """Off-policy evaluation cannot run on this log or candidate; the message says why."""


# --- results --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Estimate:
    """A value with its 95 % confidence interval (fractions); ``note`` qualifies it."""

    value: float
    lo: float
    hi: float
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        """``{"value", "lo", "hi"}`` (and ``"note"`` when there is one)."""
        d: dict[str, Any] = {"value": self.value, "lo": self.lo, "hi": self.hi}
        if self.note:
            d["note"] = self.note
        return d


@dataclass(frozen=True)
class CannotEstimate:
    """An estimator's refusal: the log cannot support a number."""

    error: str

    def to_dict(self) -> dict[str, Any]:
        """``{"error": ...}``."""
        return {"error": self.error}


Result = Estimate | CannotEstimate


@dataclass(frozen=True)
class Support:
    """How much of the candidate's choice mass falls where the logger never acts.

    ``share``: mean over requests of the candidate's probability on actions with logged
    probability below ``floor`` (for a deterministic candidate, the share of requests);
    ``rows``: share of requests with any such mass.
    """

    share: float
    rows: float
    floor: float

    def message(self) -> str:
        """The refusal's text."""
        return (
            f"cannot estimate: candidate takes actions the logger never takes (logged "
            f"probability < {self.floor:g}) on {100 * self.share:.1f} % of requests"
        )


def support(target: F64, logged: F64, floor: float = DEFAULT_FLOOR) -> Support:
    """The candidate's (``target``, ``(N, K)``) mass on actions the logger (``logged``) does not
    cover."""
    unsup = (target * (logged < floor)).sum(axis=1)
    return Support(float(unsup.mean()), float((unsup > 0).mean()), float(floor))


def _normal(terms: F64, value: float | None = None, scale: float = 1.0) -> tuple[float, float]:
    """``(value, half-width)`` of a normal interval over per-request terms."""
    n = terms.size
    v = float(terms.mean()) if value is None else value
    if n < 2:
        return v, math.inf
    sd = float(terms.std(ddof=1))
    return v, Z95 * sd * scale / math.sqrt(n)


# --- estimators on arrays -------------------------------------------------------------------


def weights(target: F64, logged: F64, actions: NDArray[np.intp], floor: float) -> F64:
    """``ρ_i = π(a_i|x_i) / μ(a_i|x_i)``, 0 where the logged probability is below ``floor``."""
    rows = np.arange(actions.size)
    mu = logged[rows, actions]
    pi = target[rows, actions]
    return np.where(mu >= floor, pi / np.where(mu >= floor, mu, 1.0), 0.0)


def ips(w: F64, r: F64, unsupported: float = 0.0) -> Estimate:
    """IPS; the upper bound grows by the ``unsupported`` share (rewards there are unseen)."""
    v, h = _normal(w * r)
    return Estimate(v, v - h, v + h + unsupported)


def snips(w: F64, r: F64, unsupported: float = 0.0) -> Result:
    """Self-normalised IPS with a delta-method interval."""
    mw = float(w.mean())
    if mw <= 0:
        return CannotEstimate("cannot estimate: the candidate never agrees with a logged action")
    v = float((w * r).sum() / w.sum())
    _, h = _normal(w * (r - v) / mw, value=v)
    return Estimate(v, v - h - unsupported, v + h + unsupported)


def dm(target: F64, q: F64, unsupported: float = 0.0) -> Estimate:
    """Direct method over the logged requests."""
    v, h = _normal((target * q).sum(axis=1))
    return Estimate(v, v - h, v + h, _model_note(unsupported))


def dr_terms(target: F64, q: F64, w: F64, actions: NDArray[np.intp], r: F64) -> F64:
    """Per-request doubly robust terms ``Σ_a π q̂ + ρ (r − q̂(x, a))``."""
    rows = np.arange(actions.size)
    return np.asarray((target * q).sum(axis=1) + w * (r - q[rows, actions]))


def dr(target: F64, q: F64, w: F64, actions: NDArray[np.intp], r: F64, unsupported: float = 0.0
       ) -> Estimate:  # fmt: skip
    """Doubly robust estimate (``q`` should be cross-fitted)."""
    v, h = _normal(dr_terms(target, q, w, actions, r))
    return Estimate(v, v - h - unsupported, v + h + unsupported)


def switch_dr(
    target: F64,
    q: F64,
    w: F64,
    actions: NDArray[np.intp],
    r: F64,
    logged: F64,
    floor: float,
    taus: Sequence[float] | None = None,
) -> tuple[Estimate, float]:
    """Switch-DR and its threshold ``τ``: DR where ``ρ ≤ τ``, the model alone elsewhere.

    ``τ`` minimises ``Var/n + B(τ)²`` with ``B(τ) = mean Σ_a π(a|x) 1[ρ(x, a) > τ or
    μ(a|x) < floor]`` (rewards in [0, 1]) over the observed weights (and ∞); the estimate's note
    gives ``B(τ)``, the share of the candidate's choices left to the model.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        rho_all = np.where(logged >= floor, target / np.where(logged > 0, logged, 1.0), np.inf)
    rho_all = np.where(target > 0, rho_all, 0.0)
    unsup = logged < floor  # the model alone there, whatever τ
    cand = sorted({math.inf, *(float(t) for t in (taus if taus is not None else _tau_grid(w)))})
    base = (target * q).sum(axis=1)
    rows = np.arange(actions.size)
    resid = w * (r - q[rows, actions])
    best: tuple[float, float, F64, float] | None = None
    for tau in cand:
        terms = base + np.where(w <= tau, resid, 0.0)
        bias = float((target * ((rho_all > tau) | unsup)).sum(axis=1).mean())
        mse = float(terms.var(ddof=1)) / max(terms.size, 1) + bias**2
        if best is None or mse < best[0] - 1e-15:
            best = (mse, tau, terms, bias)
    assert best is not None
    _, tau, terms, bias = best
    v, h = _normal(terms)
    return Estimate(v, v - h, v + h, _model_note(bias, switch=True)), tau


def _tau_grid(w: F64) -> list[float]:
    pos = w[w > 0]
    if pos.size == 0:
        return []
    return list(np.quantile(pos, [0.5, 0.8, 0.9, 0.95, 0.99, 0.999]))


def _model_note(share: float, switch: bool = False) -> str:
    if share <= 0:
        return ""
    what = "weights above the switch threshold or actions" if switch else "actions"
    return (
        f"rests on the reward model alone for {100 * share:.2f} % of the candidate's choices "
        f"({what} the logger never takes)"
    )


def estimate_all(
    target: F64,
    logged: F64,
    actions: NDArray[np.intp],
    rewards: F64,
    q_dm: F64,
    q_dr: F64,
    *,
    floor: float = DEFAULT_FLOOR,
    max_unsupported: float = DEFAULT_MAX_UNSUPPORTED,
    estimators: Sequence[str] = ESTIMATORS,
) -> dict[str, Result]:
    """Every estimator on arrays: ``target``/``logged`` ``(N, K)`` probabilities, ``actions``
    and ``rewards`` ``(N,)``, reward predictions ``q_dm`` (fitted on the whole log) and
    ``q_dr`` (cross-fitted) ``(N, K)``."""
    sup = support(target, logged, floor)
    w = weights(target, logged, actions, floor)
    share = sup.share
    refuse = share > max_unsupported
    out: dict[str, Result] = {}
    for name in estimators:
        if name in ("ips", "snips", "dr") and refuse:
            out[name] = CannotEstimate(sup.message())
        elif name == "ips":
            out[name] = ips(w, rewards, share)
        elif name == "snips":
            out[name] = snips(w, rewards, share)
        elif name == "dm":
            out[name] = dm(target, q_dm, share)
        elif name == "dr":
            out[name] = dr(target, q_dr, w, actions, rewards, share)
        elif name == "switch_dr":
            out[name] = switch_dr(target, q_dr, w, actions, rewards, logged, floor)[0]
        else:
            raise ValueError(f"unknown estimator {name!r}; expected one of {ESTIMATORS}")
    return out


def on_policy(rewards: F64) -> Estimate:
    """The logging policy's own value: the mean logged reward and its normal interval."""
    v, h = _normal(rewards)
    return Estimate(v, v - h, v + h)


# --- reward model ---------------------------------------------------------------------------


def _sigmoid(z: F64) -> F64:
    return np.asarray(0.5 * (1.0 + np.tanh(0.5 * z)))


@dataclass
class MetModel:
    """Logistic regression of ``met`` on (request block, model row, model one-hot) pairs."""

    layout: ObsLayout
    ridge: float = 1.0
    mean: F64 = field(default_factory=lambda: np.zeros(0))
    scale: F64 = field(default_factory=lambda: np.ones(0))
    coef: F64 = field(default_factory=lambda: np.zeros(0))

    def _pairs(self, features: F64, actions: NDArray[np.intp] | None) -> F64:
        """Design rows ``(N, d)`` for the given actions, or ``(N, K, d)`` for every action."""
        req = self.layout.request(features)
        mod = self.layout.models(features)
        k = self.layout.num_models
        if actions is not None:
            rows = np.arange(features.shape[0])
            m = mod[rows, actions]
            onehot = np.eye(k)[actions]
            return np.concatenate([req, m, onehot], axis=1)
        n = features.shape[0]
        reqk = np.broadcast_to(req[:, None, :], (n, k, req.shape[1]))
        onehot = np.broadcast_to(np.eye(k), (n, k, k))
        return np.concatenate([reqk, mod, onehot], axis=2)

    def _design(self, x: F64) -> F64:
        z = (x - self.mean) / self.scale
        return np.concatenate([np.ones((*z.shape[:-1], 1)), z], axis=-1)

    def fit(self, features: F64, actions: NDArray[np.intp], met: F64) -> MetModel:
        """Fit on the logged pairs (Newton's method; L2 ``ridge`` on all but the intercept)."""
        x = self._pairs(np.asarray(features, np.float64), actions)
        y = np.asarray(met, np.float64)
        self.mean = x.mean(axis=0)
        sd = x.std(axis=0)
        self.scale = np.where(sd > 1e-9, sd, 1.0)
        xd = self._design(x)
        d = xd.shape[1]
        pen = np.full(d, self.ridge)
        pen[0] = 1e-8
        coef = np.zeros(d)
        if 0.0 < y.mean() < 1.0:
            coef[0] = math.log(y.mean() / (1.0 - y.mean()))

        def loss(c: F64) -> float:
            z = xd @ c
            return float((np.logaddexp(0.0, z) - y * z).sum() + 0.5 * (pen * c * c).sum())

        cur = loss(coef)
        for _ in range(100):  # Newton's method with backtracking (near-separable data)
            p = _sigmoid(xd @ coef)
            g = xd.T @ (p - y) + pen * coef
            h = (xd * (p * (1.0 - p))[:, None]).T @ xd + np.diag(pen)
            step = np.linalg.solve(h, g)
            t = 1.0
            while t > 1e-6:
                new = loss(coef - t * step)
                if new <= cur:
                    break
                t *= 0.5
            else:
                break
            coef = coef - t * step
            done = cur - new <= 1e-10 * max(1.0, abs(cur))
            cur = new
            if done:
                break
        self.coef = coef
        return self

    def predict(self, features: F64) -> F64:
        """``P̂(met | x, a)`` for every action, ``(N, K)``."""
        x = self._pairs(np.asarray(features, np.float64), None)
        return _sigmoid(self._design(x) @ self.coef)


def reward_predictions(
    features: F64,
    actions: NDArray[np.intp],
    met: F64,
    layout: ObsLayout,
    *,
    folds: int = 2,
    ridge: float = 1.0,
) -> tuple[F64, F64]:
    """``(P̂met fitted on all rows, P̂met cross-fitted)``, each ``(N, K)``; folds interleave
    (row ``i`` in fold ``i % folds``), so every row is predicted by a model that never saw it."""
    full = MetModel(layout, ridge).fit(features, actions, met).predict(features)
    cross = np.empty_like(full)
    idx = np.arange(features.shape[0])
    for f in range(folds):
        test = idx % folds == f
        if test.all():
            return full, full
        m = MetModel(layout, ridge).fit(features[~test], actions[~test], met[~test])
        cross[test] = m.predict(features[test])
    return full, cross


# --- candidates -----------------------------------------------------------------------------


class Candidate(Protocol):
    """A policy to evaluate: action probabilities ``(N, K)`` for observations ``(N, D)``."""

    name: str

    def probabilities(self, obs: NDArray[np.float32]) -> F64:
        """``π(a | x)`` per row (rows sum to 1)."""
        ...


def one_hot(actions: NDArray[np.integer], k: int) -> F64:
    """A deterministic choice as a probability matrix."""
    a = np.asarray(actions, dtype=np.intp).reshape(-1)
    if a.size and (a.min() < 0 or a.max() >= k):
        raise OPEError(f"candidate chose model index {int(a.max())}, outside the pool of {k}")
    out = np.zeros((a.size, k))
    out[np.arange(a.size), a] = 1.0
    return out


@dataclass
class FunctionCandidate:
    """A deterministic policy given as ``obs -> actions``."""

    name: str
    select: Callable[[NDArray[np.float32]], NDArray[np.integer]]
    path: str = ""

    def probabilities(self, obs: NDArray[np.float32]) -> F64:
        """One-hot of the choice."""
        k = ObsLayout.from_obs_dim(obs.shape[1]).num_models
        return one_hot(self.select(obs), k)


def modipick_probabilities(obs: NDArray[np.floating], threshold_ms: float = 10.0) -> F64:
    """ModiPick's action probabilities on observations (its stage three; the fastest model
    outright where no model qualifies)."""
    lay = ObsLayout.from_obs_dim(obs.shape[1])
    req, mod = lay.request(obs), lay.models(obs)
    st = modipick_stages(
        req[:, F.BUDGET].astype(np.float64),
        mod[:, :, F.MU].astype(np.float64),
        mod[:, :, F.SIGMA].astype(np.float64),
        mod[:, :, F.ACC].astype(np.float64),
        threshold_ms,
    )
    return np.asarray(st.probability, dtype=np.float64)


@dataclass
class PolicyCandidate:
    """A :class:`~modi.agents.protocol.Policy` (baseline or trained): the exact probabilities of
    ModiPick and its ablations and of ``pure_random``, one-hot choices of the others."""

    name: str
    policy: Any
    path: str = ""

    def probabilities(self, obs: NDArray[np.float32]) -> F64:
        """``π(a|x)``: stage-three probabilities for ModiPick, uniform for ``pure_random``."""
        from modi.agents.baselines import ModiPick, PureRandom

        x = np.asarray(obs, dtype=np.float32)
        k = ObsLayout.from_obs_dim(x.shape[1]).num_models
        pol = self.policy
        if isinstance(pol, ModiPick) and pol.variant == "modipick":
            return modipick_probabilities(x, pol.threshold_ms)
        if isinstance(pol, ModiPick) and pol.variant == "related_random":
            lay = ObsLayout(k)
            req, mod = lay.request(x), lay.models(x)
            st = modipick_stages(
                req[:, F.BUDGET].astype(np.float64), mod[:, :, F.MU], mod[:, :, F.SIGMA],
                mod[:, :, F.ACC], pol.threshold_ms,
            )  # fmt: skip
            e = st.eligible.astype(np.float64)
            return np.asarray(e / e.sum(axis=1, keepdims=True))
        if isinstance(pol, PureRandom):
            return np.full((x.shape[0], k), 1.0 / k)
        if not hasattr(pol, "select"):
            raise OPEError(f"candidate {self.name!r} is not a policy with select(obs)")
        pol.reset(x.shape[0], 0)
        return one_hot(pol.select(x), k)


@dataclass
class SelectorCandidate:
    """An exported selector as a server runs it (:class:`modi.runtime.Selector`, its shield
    included): the graph's choice where the selector keeps it, ModiPick's probabilities where
    it falls back (the shield firing, an inference failure); with the budget shield (a learned
    choice with ``μ + σ >= T_U`` replaced by ModiPick's draw when that draw respects the limit)
    the exact mixture that draw gives: ModiPick's probabilities on models within the limit,
    the graph's choice with the rest. Which rows the selector keeps is read from the selector
    itself, so the estimate follows whatever shield it serves with."""

    name: str
    selector: Any  # the Selector as served
    raw: Any  # the same file with the shield off (the graph's own choice)
    threshold_ms: float = 10.0
    path: str = ""

    @property
    def shield_mode(self) -> str:
        """``"off"``, ``"budget"`` or another mode (e.g. ``"range"``) of the served selector."""
        mode = getattr(self.selector, "shield_mode", None)
        if mode is None:  # a Selector whose only shield is the budget one
            return "budget" if self.selector.shield else "off"
        return str(mode)

    def probabilities(self, obs: NDArray[np.float32]) -> F64:
        """``π(a|x)`` of the served selector."""
        x = np.ascontiguousarray(obs, dtype=np.float32)
        k = ObsLayout.from_obs_dim(x.shape[1]).num_models
        mp = modipick_probabilities(x, self.threshold_ms)
        if self.shield_mode != "budget":
            d = self.selector.select_features(x)
            learned = np.asarray(d.learned, dtype=bool)
            return np.asarray(np.where(learned[:, None], one_hot(d.index, k), mp))
        d = self.raw.select_features(x)
        learned = np.asarray(d.learned, dtype=bool)
        out = np.where(learned[:, None], one_hot(d.index, k), mp)
        lay = ObsLayout(k)
        mod = lay.models(x)
        budget = lay.request(x)[:, F.BUDGET].astype(np.float64)
        musig = mod[:, :, F.MU].astype(np.float64) + mod[:, :, F.SIGMA].astype(np.float64)
        rows = np.arange(x.shape[0])
        own = np.asarray(d.index, dtype=np.intp)
        viol = learned & ~(musig[rows, own] < budget) & (musig.min(axis=1) < budget)
        if viol.any():
            ok = musig[viol] < budget[viol, None]
            mix = np.where(ok, mp[viol], 0.0)
            mix[np.arange(int(viol.sum())), own[viol]] += np.where(ok, 0.0, mp[viol]).sum(axis=1)
            out[viol] = mix
        return np.asarray(out)


@dataclass
class ShadowCandidate:
    """The challenger a server ran in shadow mode, from the probabilities it logged next to
    the champion's (``shadow.probabilities``): no model file needed, exactly what it would
    have served."""

    name: str
    logged: F64  # (N, K), one row per record of the log
    path: str = "shadow"

    def logged_probabilities(self, keep: NDArray[np.bool_]) -> F64:
        """``π(a|x)`` of the kept records."""
        return np.asarray(self.logged[keep])

    def probabilities(self, obs: NDArray[np.float32]) -> F64:
        """Only the logged rows are known: ``obs`` must be the whole log's."""
        if obs.shape[0] != self.logged.shape[0]:
            raise OPEError("a shadow candidate is known on its log's records only")
        return np.asarray(self.logged)


def _shadow_candidate(lg: DecisionLog) -> ShadowCandidate:
    has = lg.has_shadow
    if not has.any():
        raise OPEError(f"{lg.path}: candidate 'shadow': the log carries no shadow decisions "
                       "(field 'shadow' is null on every record)")  # fmt: skip
    if not has.all():
        line = int(lg.line_numbers[np.flatnonzero(~has)[0]])
        raise OPEError(
            f"{lg.path}: line {line}: field 'shadow' is null: candidate 'shadow' needs the "
            f"challenger's probabilities on every record ({int((~has).sum())} of {lg.n} lack them)"
        )
    idx = set(lg.shadow_selector_index.tolist())
    if len(idx) > 1:
        names = ", ".join(f"{s.name} {s.version}" for s in lg.shadow_selectors)
        raise OPEError(f"{lg.path}: field 'shadow.selector': the shadow changes mid-log "
                       f"({names}); evaluate each part separately")  # fmt: skip
    sel = lg.shadow_selectors[0]
    return ShadowCandidate(f"shadow:{sel.name}", lg.shadow_probabilities.copy())


def load_candidate(spec: str, lg: DecisionLog, *, shield: bool | str = True) -> Candidate:
    """A candidate from the command line: an ``.onnx`` file or ``models:/`` URI (served through
    :class:`~modi.runtime.Selector` with ``shield`` as a server passes it, checked against the
    log's schema and pool), a saved learned policy (``.pt``), a baseline name
    (``dynamic_greedy``, ``modipick``, ...), or ``shadow``: the challenger the log's server ran
    in shadow mode (its logged probabilities)."""
    from modi.agents.baselines import POLICY_NAMES, make_policy

    if spec == "shadow":
        return _shadow_candidate(lg)
    if spec.endswith(".onnx") or spec.startswith("models:/"):
        return _selector_candidate(spec, lg, shield)
    if spec.endswith(".pt"):
        from modi.agents.bandits import load_learned

        try:
            pol = load_learned(spec)
        except (OSError, ValueError) as e:
            raise OPEError(f"candidate {spec}: {e}") from None
        if lg.schema != ObsLayout.schema:
            raise OPEError(
                f"candidate {spec}: a saved policy reads schema {ObsLayout.schema!r}, the log "
                f"carries {lg.schema!r}"
            )
        return PolicyCandidate(Path(spec).stem, pol, spec)
    if spec in POLICY_NAMES:
        if spec in ("oracle", "informed_ceiling"):
            raise OPEError(f"candidate {spec!r} sees the future: it cannot be evaluated from a log")
        if lg.schema != ObsLayout.schema:
            raise OPEError(f"candidate {spec!r} reads schema {ObsLayout.schema!r}, the log carries "
                           f"{lg.schema!r}")  # fmt: skip
        mu0 = np.asarray(lg.layout.models(lg.features[:1])[0, :, F.MU], dtype=np.float64)
        return PolicyCandidate(spec, make_policy(spec, profile_mu_ms=mu0), "")
    raise OPEError(
        f"candidate {spec!r}: expected an .onnx file, a models:/ URI, a saved policy (.pt), "
        f"a baseline name ({', '.join(n for n in POLICY_NAMES if n != 'oracle')}) or 'shadow'"
    )


def _selector_candidate(spec: str, lg: DecisionLog, shield: bool | str) -> SelectorCandidate:
    from modi.runtime.pool_profile import PoolProfile
    from modi.runtime.selector import Selector, SelectorLoadError

    if not spec.startswith("models:/") and not Path(spec).is_file():
        raise OPEError(f"candidate {spec}: no such file")
    if lg.schema != ObsLayout.schema:
        raise OPEError(f"candidate {spec}: the served selector reads schema {ObsLayout.schema!r}"
                       f", the log carries {lg.schema!r}")  # fmt: skip
    mod = lg.layout.models(lg.features[:1])[0]
    pool = PoolProfile.from_lists(
        list(lg.pool),
        [float(a) for a in mod[:, F.ACC]],
        [float(m) for m in mod[:, F.MU]],
        [max(float(s), 0.0) for s in mod[:, F.SIGMA]],
    )
    try:
        sel = Selector.load(spec, pool, strict=True, shield=shield)
        raw = Selector.load(spec, pool, strict=True, shield=False)
    except SelectorLoadError as e:
        raise OPEError(f"candidate {spec} cannot serve the logged pool/schema: {e}") from None
    meta = sel.metadata
    name = meta.policy_name if meta is not None and meta.policy_name else Path(spec).stem
    return SelectorCandidate(name, sel, raw, sel.threshold_ms, spec)


# --- a whole log ----------------------------------------------------------------------------


@dataclass(frozen=True)
class CandidateReport:
    """One candidate's estimates per metric and estimator, and its support on the log."""

    name: str
    path: str
    support: Support
    estimates: Mapping[str, Mapping[str, Result]]  # metric -> estimator -> result

    def to_dict(self) -> dict[str, Any]:
        """The candidate's entry of ``ope.json``: ``estimates`` are the effective accuracy."""
        return {
            "name": self.name,
            "path": self.path,
            "estimates": {k: v.to_dict() for k, v in self.estimates["effective_accuracy"].items()},
            "attainment": {k: v.to_dict() for k, v in self.estimates["attainment"].items()},
            "unsupported_share": self.support.share,
        }


@dataclass(frozen=True)
class OPEReport:
    """Estimates for every candidate, and the logging policy's own value."""

    n: int
    candidates: tuple[CandidateReport, ...]
    logging_policy: Mapping[str, Estimate]  # metric -> on-policy value
    log_path: str = ""
    dropped: int = 0

    def to_dict(self) -> dict[str, Any]:
        """The ``ope.json`` document."""
        return {
            "candidates": [c.to_dict() for c in self.candidates],
            "logging_policy": self.logging_policy["effective_accuracy"].to_dict(),
            "logging_policy_attainment": self.logging_policy["attainment"].to_dict(),
            "n": self.n,
            "log": self.log_path,
            "dropped_unknown_outcome": self.dropped,
        }


def evaluate(
    lg: DecisionLog,
    candidates: Sequence[Candidate],
    *,
    floor: float = DEFAULT_FLOOR,
    max_unsupported: float = DEFAULT_MAX_UNSUPPORTED,
    estimators: Sequence[str] = ESTIMATORS,
    drop_unknown: bool = False,
    folds: int = 2,
    ridge: float = 1.0,
) -> OPEReport:
    """Estimate every candidate's effective accuracy and attainment on the log.

    Records with an unknown outcome (``met``, or ``accuracy`` of a met request, null) are an
    :class:`OPEError` naming the first line, unless ``drop_unknown`` (then they are left out and
    counted: the estimate is then about the requests whose outcome was logged).
    """
    unknown = np.isnan(lg.rewards) | np.isnan(lg.met)
    keep = ~unknown
    if unknown.any() and not drop_unknown:
        line = int(lg.line_numbers[np.flatnonzero(unknown)[0]])
        raise OPEError(
            f"{lg.path}: line {line}: field 'outcome': the reward is unknown (met or accuracy is "
            f"null) on {int(unknown.sum())} of {lg.n} records; pass --drop-unknown to leave "
            "them out"
        )
    if not keep.any():
        raise OPEError(f"{lg.path}: no record has a known outcome")
    feats = lg.features[keep]
    acts = lg.actions[keep]
    logged = lg.probabilities[keep]
    rewards = {"effective_accuracy": lg.rewards[keep], "attainment": lg.met[keep]}
    p_full, p_cross = reward_predictions(
        feats, acts, rewards["attainment"], lg.layout, folds=folds, ridge=ridge
    )
    acc = lg.layout.models(feats)[:, :, F.ACC]
    q = {
        "effective_accuracy": (acc * p_full, acc * p_cross),
        "attainment": (p_full, p_cross),
    }
    obs = feats.astype(np.float32)
    reports = []
    for cand in candidates:
        known = getattr(cand, "logged_probabilities", None)
        target = np.asarray(
            known(keep) if callable(known) else cand.probabilities(obs), dtype=np.float64
        )
        if target.shape != logged.shape:
            raise OPEError(f"candidate {cand.name!r} gave probabilities of shape {target.shape}, "
                           f"expected {logged.shape}")  # fmt: skip
        sup = support(target, logged, floor)
        est = {
            m: estimate_all(
                target, logged, acts, rewards[m], q[m][0], q[m][1], floor=floor,
                max_unsupported=max_unsupported, estimators=estimators,
            )
            for m in METRICS
        }  # fmt: skip
        reports.append(CandidateReport(cand.name, str(getattr(cand, "path", "")), sup, est))
    return OPEReport(
        n=int(keep.sum()),
        candidates=tuple(reports),
        logging_policy={m: on_policy(rewards[m]) for m in METRICS},
        log_path=lg.path,
        dropped=int(unknown.sum()),
    )
