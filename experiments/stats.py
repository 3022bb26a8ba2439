"""95 % intervals for reported means and paired differences (scipy's Student t).

The unit of a sample is one independent request stream (one seed × one stream of a sweep
point): requests within a stream are correlated (networks and profiles have memory), streams
are not. Paired differences are taken stream by stream between policies that served the very
same requests (common random numbers).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

LEVEL = 0.95


def mean_ci(values: ArrayLike, level: float = LEVEL) -> tuple[float, float, float]:
    """``(mean, low, high)``: the Student-t interval of the mean over independent units."""
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size == 0:
        return (math.nan, math.nan, math.nan)
    m = float(x.mean())
    if x.size < 2 or float(np.ptp(x)) <= 1e-12 * max(1.0, abs(m)):
        return (m, m, m)
    from scipy import stats

    ci: Any = stats.ttest_1samp(x, 0.0).confidence_interval(level)
    return (m, float(ci.low), float(ci.high))


def paired_ci(a: ArrayLike, b: ArrayLike, level: float = LEVEL) -> tuple[float, float, float]:
    """``(mean, low, high)`` of ``a − b`` unit by unit (same streams, paired)."""
    x = np.asarray(a, dtype=np.float64).ravel()
    y = np.asarray(b, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"paired samples must have the same units, got {x.size} and {y.size}")
    return mean_ci(x - y, level)
