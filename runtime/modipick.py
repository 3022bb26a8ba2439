"""ModiPick's three-stage model selection (ModiPick §3.3), batched in numpy.

This is the rule the serving runtime falls back to and the baseline the simulators compare
against; :mod:`modi.agents.baselines` wraps it as a policy, so there is one implementation.

For each request (row) with hard limit ``T_U`` (the time budget) and soft limit
``T_L = T_U - T_threshold``:

1. *Base model*: the most accurate model with ``μ+σ < T_U`` and ``μ−σ < T_L`` (Eq. 2); when
   none qualifies, the model with the lowest ``μ`` is chosen outright (best effort).
2. *Eligible set* ``M_E``: models with ``μ ∈ T_E = [T_L − d, T_L + d]`` where
   ``d = |T_L − μ(base)| + σ(base)``, and ``μ+σ < T_U``.
3. *Choice*: ``Pr(m) ∝ U(m) = A(m) (T_U − (μ+σ)) / |T_L − μ|`` (Eqs. 3–4) over ``M_E``.

The ablations of §4.4 replace stage 3: ``related_random`` picks uniformly from ``M_E`` and
``related_accurate`` picks its most accurate model.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray

Variant = Literal["modipick", "related_random", "related_accurate"]
VARIANTS: tuple[str, ...] = ("modipick", "related_random", "related_accurate")

#: Floor on |T_L − μ| in Eq. 3, so a model exactly at the soft limit gets a large, finite utility.
MIN_DISTANCE_MS = 1e-3


@dataclass(frozen=True)
class ModiPickStages:
    """Every intermediate quantity of one batched ModiPick decision (for tests and logging)."""

    t_upper_ms: NDArray[np.float64]  # (N,)
    t_lower_ms: NDArray[np.float64]  # (N,)
    has_base: NDArray[np.bool_]  # (N,)
    base: NDArray[np.intp]  # (N,) base model, or the fastest model when has_base is False
    explore_lo_ms: NDArray[np.float64]  # (N,) lower end of T_E
    explore_hi_ms: NDArray[np.float64]  # (N,) upper end of T_E
    eligible: NDArray[np.bool_]  # (N, K) M_E (only the fastest model when has_base is False)
    probability: NDArray[np.float64]  # (N, K) Pr(m) of stage 3 (0 outside M_E)


def _as_2d(x: NDArray[np.floating], n: int) -> NDArray[np.float64]:
    a = np.asarray(x, dtype=np.float64)
    return np.broadcast_to(a, (n, a.shape[-1])) if a.ndim == 1 else a


def modipick_stages(
    budget_ms: NDArray[np.floating],
    mu_ms: NDArray[np.floating],
    sigma_ms: NDArray[np.floating],
    accuracy: NDArray[np.floating],
    threshold_ms: float = 10.0,
) -> ModiPickStages:
    """Run stages one and two and compute the stage-three probabilities.

    ``budget_ms`` is ``(N,)``; profiles are ``(N, K)`` or ``(K,)`` shared by all rows.
    """
    t_u = np.asarray(budget_ms, dtype=np.float64).reshape(-1)
    n = t_u.size
    mu = _as_2d(mu_ms, n)
    sigma = _as_2d(sigma_ms, n)
    acc = _as_2d(accuracy, n)
    t_u_col = t_u[:, None]
    t_l = t_u - threshold_ms
    t_l_col = t_l[:, None]
    rows = np.arange(n)

    upper_ok = (mu + sigma) < t_u_col
    base_ok = upper_ok & ((mu - sigma) < t_l_col)
    has_base: NDArray[np.bool_] = np.asarray(base_ok.any(axis=1))
    # Most accurate qualifying model; ties broken towards the faster model.
    score = np.where(base_ok, acc, -np.inf)
    best_acc = score.max(axis=1, keepdims=True)
    tie_mu = np.where(score == best_acc, mu, np.inf)
    base_if = tie_mu.argmin(axis=1)
    fastest = mu.argmin(axis=1)
    base = np.where(has_base, base_if, fastest)

    mu_b = mu[rows, base]
    dist = np.abs(t_l - mu_b) + sigma[rows, base]
    lo = t_l - dist
    hi = t_l + dist
    eligible = upper_ok & (mu >= lo[:, None]) & (mu <= hi[:, None])
    # The base model is in T_E by construction; only rounding at absurd budgets (~1e15 ms)
    # could push it out and leave M_E empty.
    eligible[rows, base] |= has_base
    eligible[~has_base] = False
    eligible[~has_base, fastest[~has_base]] = True

    util = acc * (t_u_col - (mu + sigma)) / np.maximum(np.abs(t_l_col - mu), MIN_DISTANCE_MS)
    util = np.where(eligible, np.maximum(util, 0.0), 0.0)
    total = util.sum(axis=1, keepdims=True)
    # A row whose eligible utilities are all zero (only possible without a base) falls back
    # to uniform over its eligible set.
    uniform = eligible / eligible.sum(axis=1, keepdims=True)
    prob = np.where(total > 0, util / np.where(total > 0, total, 1.0), uniform)
    return ModiPickStages(t_u, t_l, has_base, base, lo, hi, eligible, prob)


def sample_rows(prob: NDArray[np.float64], uniforms: NDArray[np.float64]) -> NDArray[np.intp]:
    """Draw one column per row of ``prob`` (rows sum to 1) using ``uniforms`` in [0, 1)."""
    cdf = np.cumsum(prob, axis=1)
    u = uniforms.reshape(-1, 1) * cdf[:, -1:]
    idx = (cdf <= u).sum(axis=1)
    # Never land on a zero-probability column because of rounding at the end of the row.
    last_positive = prob.shape[1] - 1 - np.argmax(prob[:, ::-1] > 0, axis=1)
    return np.minimum(idx, last_positive)


def modipick_select(
    budget_ms: NDArray[np.floating],
    mu_ms: NDArray[np.floating],
    sigma_ms: NDArray[np.floating],
    accuracy: NDArray[np.floating],
    uniforms: NDArray[np.float64],
    threshold_ms: float = 10.0,
    variant: Variant = "modipick",
) -> NDArray[np.intp]:
    """Choose one model per row with ModiPick (or one of its §4.4 ablations).

    ``uniforms`` (shape ``(N,)``, in [0, 1)) drive the random choice of stage three, so the
    caller owns the randomness.
    """
    st = modipick_stages(budget_ms, mu_ms, sigma_ms, accuracy, threshold_ms)
    if variant == "modipick":
        return sample_rows(st.probability, uniforms)
    if variant == "related_random":
        return sample_rows(st.eligible / st.eligible.sum(axis=1, keepdims=True), uniforms)
    if variant == "related_accurate":
        n = st.t_upper_ms.size
        acc = _as_2d(accuracy, n)
        return np.where(st.eligible, acc, -np.inf).argmax(axis=1)
    raise ValueError(f"unknown ModiPick variant {variant!r}; expected one of {VARIANTS}")


def _pairwise_sum(a: list[float], lo: int, n: int) -> float:
    """``a[lo:lo+n]`` summed in numpy's order (``pairwise_sum`` behind ``np.add.reduce``), so
    the scalar rule normalises exactly as :func:`modipick_stages` does."""
    if n < 8:
        res = 0.0
        for i in range(lo, lo + n):
            res += a[i]
        return res
    if n <= 128:
        r0, r1, r2, r3, r4, r5, r6, r7 = a[lo : lo + 8]
        stop = lo + n - n % 8
        for i in range(lo + 8, stop, 8):
            r0 += a[i]
            r1 += a[i + 1]
            r2 += a[i + 2]
            r3 += a[i + 3]
            r4 += a[i + 4]
            r5 += a[i + 5]
            r6 += a[i + 6]
            r7 += a[i + 7]
        res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
        for i in range(stop, lo + n):
            res += a[i]
        return res
    half = n // 2
    half -= half % 8
    return _pairwise_sum(a, lo, half) + _pairwise_sum(a, lo + half, n - half)


def modipick_select_one(
    budget_ms: float,
    mu_ms: Sequence[float],
    sigma_ms: Sequence[float],
    accuracy: Sequence[float],
    uniform: float,
    threshold_ms: float = 10.0,
) -> int:
    """ModiPick for one request on Python floats: the same choice as :func:`modipick_select`
    (bit for bit, stage three's draw with ``uniform`` included; a test checks) without numpy's
    per-call overhead. This is the serving path's batch-1 fallback and shield.

    ``budget_ms`` (``T_U``) must be finite; ``mu_ms``, ``sigma_ms`` and ``accuracy`` are finite
    per-model sequences of one length ``K >= 1``.
    """
    t_u = float(budget_ms)
    t_l = t_u - threshold_ms
    # Stage 1: the most accurate model with mu+sigma < T_U and mu-sigma < T_L (ties: the faster,
    # then the first); when none qualifies, the fastest model outright.
    base = -1
    best_acc = -math.inf
    best_mu = math.inf
    fastest = 0
    fastest_mu = math.inf
    for i, (m, s, a) in enumerate(zip(mu_ms, sigma_ms, accuracy, strict=True)):
        if m < fastest_mu:
            fastest, fastest_mu = i, m
        if m + s < t_u and m - s < t_l and (a > best_acc or (a == best_acc and m < best_mu)):
            base, best_acc, best_mu = i, a, m
    if base < 0:
        return fastest
    # Stage 2: M_E = models with mu in [T_L - d, T_L + d] and mu+sigma < T_U; stage 3: utilities
    # U(m) = A (T_U - (mu+sigma)) / |T_L - mu| (>= 0 there: mu+sigma < T_U and A >= 0).
    dist = abs(t_l - mu_ms[base]) + sigma_ms[base]
    lo = t_l - dist
    hi = t_l + dist
    util: list[float] = []
    elig: list[bool] = []
    for i, (m, s, a) in enumerate(zip(mu_ms, sigma_ms, accuracy, strict=True)):
        upper = m + s
        if (upper < t_u and lo <= m <= hi) or i == base:  # the base is in T_E by construction
            w = a * (t_u - upper) / max(abs(t_l - m), MIN_DISTANCE_MS)
            util.append(w if w > 0.0 else 0.0)
            elig.append(True)
        else:
            util.append(0.0)
            elig.append(False)
    total = _pairwise_sum(util, 0, len(util))
    if total > 0:
        prob = [w / total for w in util]
    else:  # every eligible utility is zero: uniform over M_E
        share = 1.0 / sum(elig)
        prob = [share if e else 0.0 for e in elig]
    # sample_rows: how many running sums are <= uniform * their total (the running sum never
    # decreases, so a bisection counts them), never past the last positive column.
    cdf: list[float] = []
    c = 0.0
    last_positive = -1
    for i, p in enumerate(prob):
        c += p
        cdf.append(c)
        if p > 0:
            last_positive = i
    if last_positive < 0:
        last_positive = len(prob) - 1
    return min(bisect_right(cdf, uniform * c), last_positive)
