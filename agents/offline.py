"""Learning a selector from decision logs (no exploration of its own).

:func:`train_from_log` fits the linear bandits of :mod:`modi.agents.bandits` (``LinUCB``,
``LinearThompson``: a ridge regression of ``met`` on the shared step basis, deciding by
``accuracy · P(met)``) on the logged ``(features, action, met)`` triples of one or more decision
logs, and returns the policy, ready to ``save`` or ``export_onnx`` like an online-trained one.

``weighting``:

* ``"ips"`` (default) — importance-weighted regression: each logged pair weighs
  ``1 / μ(a|x)`` (normalised to mean 1 and clipped at ``clip``), so the fit is the one the
  regression would have on a log whose actions were uniform — what the greedy choice over all
  models needs — instead of concentrating on the logger's habits;
* ``"none"`` — the plain regression on the logged pairs (the direct method's model as a
  policy).

The regression (``A = ridge·I + Σ w φφᵀ``, ``b = Σ w φ met``) is the bandit's own sufficient
statistics, so a policy trained from a log can go on learning online (``observe``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from modi.agents.bandits import LearnedPolicy, LinearThompson, LinUCB
from modi.agents.scorers import split_obs
from modi.runtime.decision_log import DecisionLog, read_decision_log
from modi.runtime.features import ObsLayout

log = logging.getLogger(__name__)

Weighting = Literal["ips", "none"]
WEIGHTINGS: tuple[str, ...] = ("ips", "none")


class OfflineTrainingError(ValueError):
    """The logs cannot train a selector; the message says which log and why."""


LogSource = DecisionLog | str | Path


def _as_logs(logs: LogSource | Sequence[LogSource]) -> list[DecisionLog]:
    items = [logs] if isinstance(logs, DecisionLog | str | Path) else list(logs)
    return [x if isinstance(x, DecisionLog) else read_decision_log(x) for x in items]


def train_from_log(
    logs: LogSource | Sequence[LogSource],
    *,
    kind: str = "linucb",
    weighting: Weighting = "ips",
    clip: float = 20.0,
    alpha: float = 0.5,
    ridge: float = 1.0,
    width_ms: float = 8.0,
    miss_penalty: float = 0.0,
    seed: int | None = None,
) -> LearnedPolicy:
    """Train a linear bandit (``kind`` ``"linucb"`` or ``"lints"``) from decision logs (paths
    or :class:`DecisionLog`); records with an unknown ``met`` are left out. Raises
    :class:`OfflineTrainingError` (and :class:`~modi.runtime.decision_log.DecisionLogError` for
    a bad log)."""
    if weighting not in WEIGHTINGS:
        raise OfflineTrainingError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    if not clip >= 1.0:
        raise OfflineTrainingError(f"clip must be >= 1, got {clip}")
    cls = {"linucb": LinUCB, "lints": LinearThompson}.get(kind)
    if cls is None:
        raise OfflineTrainingError(f"kind must be 'linucb' or 'lints', got {kind!r}")
    lgs = _as_logs(logs)
    if not lgs:
        raise OfflineTrainingError("no decision log given")
    policy = cls(alpha=alpha, ridge=ridge, width_ms=width_ms, miss_penalty=miss_penalty, seed=seed)
    a_mat = np.eye(policy.basis.dim) * policy.ridge
    b_vec = np.zeros(policy.basis.dim)
    used = 0
    for lg in lgs:
        if lg.schema != ObsLayout.schema:
            raise OfflineTrainingError(
                f"{lg.path}: schema {lg.schema!r}; the linear bandits read {ObsLayout.schema!r}"
            )
        known = ~np.isnan(lg.met)
        if not known.any():
            log.warning("%s: no record with a known outcome; skipped", lg.path)
            continue
        obs = lg.features[known].astype(np.float32)
        actions = lg.actions[known]
        met = lg.met[known]
        if weighting == "ips":
            w = 1.0 / lg.propensities[known]
            w = np.minimum(w / w.mean(), clip)
        else:
            w = np.ones(actions.size)
        record = getattr(policy, "record_observations", None)
        if callable(record):  # the training ranges a calibrated shield checks
            record(obs)
        with torch.no_grad():
            req, models = split_obs(torch.as_tensor(obs))
            phi = policy.basis(req, models).double().numpy()
        x = phi[np.arange(actions.size), actions]
        fin = np.isfinite(x).all(axis=1)
        if not fin.all():  # e.g. a basis reading srtt_ms on records where it was unknown
            log.warning("%s: %d records whose features the basis cannot read (NaN); skipped",
                        lg.path, int((~fin).sum()))  # fmt: skip
            x, w, met = x[fin], w[fin], met[fin]
        a_mat += (x * w[:, None]).T @ x
        b_vec += x.T @ (w * met)
        used += int(x.shape[0])
    if used == 0:
        raise OfflineTrainingError("no logged record has a known outcome (outcome.met)")
    policy.A = a_mat
    policy.b = b_vec
    policy.A_inv = np.asarray(np.linalg.inv(a_mat), dtype=np.float64)
    policy.theta = np.asarray(policy.A_inv @ b_vec, dtype=np.float64)
    log.info("trained %s from %d logged decisions (%s weighting)", kind, used, weighting)
    return policy
