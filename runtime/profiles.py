"""Online execution-time profiles: the EWMA of μ(m) and σ(m) that ModiPick keeps per model.

ModiPick ("practical considerations", §3.3) tracks each model's mean and standard deviation of
execution time with an exponentially weighted moving average and periodically re-evaluates
models that have not been chosen lately. :class:`ProfileTracker` does this for a batch of
independent servers (``N`` rows, ``K`` models); a real server uses ``N = 1``.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray


class ProfileTracker:
    """Exponentially weighted mean and variance of execution time, per (server, model).

    Update rule for an observation ``x`` with weight ``alpha``::

        d = x - mu;  mu += alpha * d;  var = (1 - alpha) * (var + alpha * d**2)
    """

    def __init__(
        self,
        mu_ms: ArrayLike,
        sigma_ms: ArrayLike,
        num_rows: int = 1,
        alpha: float = 0.1,
    ) -> None:
        mu0 = np.asarray(mu_ms, dtype=np.float64)
        sigma0 = np.asarray(sigma_ms, dtype=np.float64)
        if mu0.ndim != 1 or mu0.shape != sigma0.shape or mu0.size == 0:
            raise ValueError(
                f"mu_ms and sigma_ms must be 1-D of equal non-zero length, got {mu0.shape} "
                f"and {sigma0.shape}"
            )
        if not np.all(np.isfinite(mu0)) or np.any(mu0 <= 0):
            raise ValueError(f"mu_ms must be finite and > 0, got {mu0.tolist()}")
        if not np.all(np.isfinite(sigma0)) or np.any(sigma0 < 0):
            raise ValueError(f"sigma_ms must be finite and >= 0, got {sigma0.tolist()}")
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        if num_rows < 1:
            raise ValueError(f"num_rows must be >= 1, got {num_rows}")
        self.alpha = float(alpha)
        self._mu0 = mu0
        self._var0 = sigma0**2
        self.mu = np.empty((num_rows, mu0.size))
        self.var = np.empty((num_rows, mu0.size))
        self.sigma = np.empty((num_rows, mu0.size))
        #: Step of each row's most recent update per model (for re-evaluation of cold models).
        self.last_update = np.zeros((num_rows, mu0.size), dtype=np.int64)
        self.reset()

    @property
    def num_models(self) -> int:
        """Number of models tracked."""
        return int(self._mu0.size)

    def reset(self, rows: NDArray[np.bool_] | None = None) -> None:
        """Return rows (all by default) to the initial profiles."""
        sel = slice(None) if rows is None else rows
        self.mu[sel] = self._mu0
        self.var[sel] = self._var0
        self.sigma[sel] = np.sqrt(self._var0)
        self.last_update[sel] = 0

    def update(
        self,
        rows: NDArray[np.intp],
        models: NDArray[np.intp],
        exec_ms: NDArray[np.floating],
        step: int | NDArray[np.int64] = 0,
    ) -> None:
        """Fold observed execution times ``exec_ms`` of ``models`` into the given rows."""
        a = self.alpha
        mu = self.mu[rows, models]
        d = exec_ms - mu
        self.mu[rows, models] = mu + a * d
        var = (1.0 - a) * (self.var[rows, models] + a * d * d)
        self.var[rows, models] = var
        self.sigma[rows, models] = np.sqrt(var)
        self.last_update[rows, models] = step

    def stale(self, step: int, max_age: int) -> NDArray[np.bool_]:
        """Mask ``(N, K)`` of models not updated within the last ``max_age`` steps."""
        return (step - self.last_update) >= max_age
