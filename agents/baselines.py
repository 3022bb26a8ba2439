"""The published heuristics as batched policies over the feature vector.

* ``static_greedy`` — most accurate model with profiled μ ≤ SLA, fixed at development time
  (ModiPick §3.2.1); the SLA column, so less any time before the upload
  (:mod:`modi.runtime.features`: none in ``ModelSelection-v0``).
* ``dynamic_greedy`` — most accurate model with μ ≤ T_budget = SLA − 2·T_input (§3.2.2).
* ``modipick`` — the three stages of §3.3 (:mod:`modi.runtime.modipick`).
* ``related_random`` / ``related_accurate`` — §4.4 ablations: uniform / most accurate over M_E.
* ``pure_random`` — uniform over the whole pool (§4.4).
* ``mdinference`` — most accurate model with μ + γσ < T_budget, the fastest when none fits.
* ``calibrated_greedy`` — what a careful engineer writes by hand: the most accurate model with
  μ + z·σ + d̂ + expected queue wait ≤ SLA − elapsed, ``d̂`` a download estimate (a quantile of
  the download fitted on validation; :mod:`modi.experiments.tuning`), ``z`` tuned.
* ``model_switching`` — Model-Switching (Zhang et al., HotCloud'20): smaller models as the queue
  grows: the most accurate model whose run, behind the queued requests run by the same model,
  fits what is left of the SLA.
* ``calibrated_greedy_queue`` — calibrated greedy whose expected wait (queued requests ×
  wait per request / workers) is scaled by the observed slowdown, like the execution.
* ``oracle`` — clairvoyant: the most accurate model whose *realised* latency meets the SLA.
* ``informed_ceiling`` — knows the latent link/server state, not the noise still to come
  (:mod:`modi.agents.references`).

"No model fits" always falls back to the model with the lowest profiled μ (best effort).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from modi.agents.protocol import Actions, Obs
from modi.runtime.features import (
    ACC,
    BUDGET,
    MU,
    QUEUE,
    REMAINING,
    SIGMA,
    SLA,
    SLOWDOWN,
    T_INPUT,
    ObsLayout,
)
from modi.runtime.modipick import modipick_select


def _most_accurate(ok: NDArray[np.bool_], acc: NDArray[Any], mu: NDArray[Any]) -> Actions:
    """Per row, the most accurate model where ``ok`` (ties → faster); fastest if none is ok."""
    score = np.where(ok, acc, -np.inf)
    best = score.max(axis=1, keepdims=True)
    pick = np.where(score == best, mu, np.inf).argmin(axis=1)
    return np.where(ok.any(axis=1), pick, mu.argmin(axis=1))


class _Base:
    name = "base"

    def __init__(self) -> None:
        self._rng = np.random.default_rng()
        self._layout: ObsLayout | None = None

    def reset(self, num_envs: int, seed: int | None = None) -> None:
        """Reseed the policy's own randomness."""
        self._rng = np.random.default_rng(seed)

    def _split(self, obs: Obs) -> tuple[NDArray[Any], NDArray[Any]]:
        obs = np.atleast_2d(obs)
        if self._layout is None or self._layout.dim != obs.shape[1]:
            self._layout = ObsLayout.from_obs_dim(obs.shape[1])
        return self._layout.request(obs), self._layout.models(obs)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class StaticGreedy(_Base):
    """Most accurate model whose profiled mean fits the SLA, ignoring the network.

    ``profile_mu_ms`` fixes the development-time profile (the pool's measured means); without
    it, the profile in the first observation seen is used and then kept.
    """

    name = "static_greedy"

    def __init__(self, profile_mu_ms: NDArray[np.float64] | None = None) -> None:
        super().__init__()
        self._mu = None if profile_mu_ms is None else np.asarray(profile_mu_ms, dtype=np.float64)

    def select(self, obs: Obs) -> Actions:
        """Choose per row from the SLA alone."""
        req, models = self._split(obs)
        if self._mu is None or self._mu.size != models.shape[1]:
            self._mu = models[0, :, MU].astype(np.float64)
        mu = np.broadcast_to(self._mu, models.shape[:2])
        return _most_accurate(mu <= req[:, SLA : SLA + 1], models[:, :, ACC], mu)


class DynamicGreedy(_Base):
    """Most accurate model with μ ≤ T_budget = SLA − 2·T_input (ModiPick Eq. 1)."""

    name = "dynamic_greedy"

    def select(self, obs: Obs) -> Actions:
        """Choose per row from the time budget."""
        req, models = self._split(obs)
        mu = models[:, :, MU]
        return _most_accurate(mu <= req[:, BUDGET : BUDGET + 1], models[:, :, ACC], mu)


class MDInference(_Base):
    """Most accurate model with μ + γσ < T_budget; the fastest model when none fits."""

    name = "mdinference"

    def __init__(self, gamma: float = 1.0) -> None:
        super().__init__()
        if gamma < 0:
            raise ValueError(f"mdinference.gamma must be >= 0, got {gamma}")
        self.gamma = float(gamma)

    def select(self, obs: Obs) -> Actions:
        """Choose per row with a γ-σ safety margin."""
        req, models = self._split(obs)
        mu = models[:, :, MU]
        ok = mu + self.gamma * models[:, :, SIGMA] < req[:, BUDGET : BUDGET + 1]
        return _most_accurate(ok, models[:, :, ACC], mu)


class ModiPick(_Base):
    """ModiPick's three stages (or a §4.4 ablation via ``variant``)."""

    def __init__(self, threshold_ms: float = 10.0, variant: str = "modipick") -> None:
        super().__init__()
        if threshold_ms < 0:
            raise ValueError(f"modipick.threshold_ms must be >= 0, got {threshold_ms}")
        self.threshold_ms = float(threshold_ms)
        self.variant = variant
        self.name = variant

    def select(self, obs: Obs) -> Actions:
        """Choose per row with ModiPick."""
        req, models = self._split(obs)
        u = self._rng.random(req.shape[0])
        return modipick_select(
            req[:, BUDGET].astype(np.float64),
            models[:, :, MU],
            models[:, :, SIGMA],
            models[:, :, ACC],
            np.asarray(u, dtype=np.float64),
            self.threshold_ms,
            self.variant,  # type: ignore[arg-type]
        )


def _checked(value: float, field: str, minimum: float = 0.0) -> float:
    x = float(value)
    if not np.isfinite(x) or x < minimum:
        raise ValueError(f"{field} must be a finite number >= {minimum}, got {value!r}")
    return x


class CalibratedGreedy(_Base):
    """The most accurate model with ``(μ + z·σ)·slowdown + d̂ + wait ≤ SLA − elapsed``.

    ``d̂ = download_ms + download_per_upload · T_input`` is a download estimate from what the
    server observes (fitted on validation: the slope of the download on the measured upload,
    and a quantile of the rest; on the papers' network, where the response takes as long as
    the upload, the slope is 1); ``wait`` is the expected queue wait,
    ``queue_len · wait_ms_per_request`` (by default the pool's mean profiled μ per queued
    request, divided by ``workers``). The fastest model when none fits.
    """

    name = "calibrated_greedy"

    def __init__(
        self,
        z: float = 1.0,
        download_ms: float = 0.0,
        wait_ms_per_request: float | None = None,
        workers: int = 1,
        download_per_upload: float = 0.0,
    ) -> None:
        super().__init__()
        self.z = _checked(z, "calibrated_greedy.z")
        self.download_ms = float(download_ms)
        if not np.isfinite(self.download_ms):
            raise ValueError(f"calibrated_greedy.download_ms must be finite, got {download_ms!r}")
        self.download_per_upload = _checked(
            download_per_upload, "calibrated_greedy.download_per_upload"
        )
        self.wait_ms_per_request = (
            None
            if wait_ms_per_request is None
            else _checked(wait_ms_per_request, "calibrated_greedy.wait_ms_per_request")
        )
        self.workers = int(_checked(workers, "calibrated_greedy.workers", 1.0))

    def _wait(self, req: NDArray[Any], mu: NDArray[Any]) -> NDArray[Any]:
        per = (
            mu.mean(axis=1, keepdims=True) / self.workers
            if self.wait_ms_per_request is None
            else self.wait_ms_per_request
        )
        return req[:, QUEUE : QUEUE + 1] * per

    def _download(self, req: NDArray[Any]) -> NDArray[Any]:
        d = self.download_ms + self.download_per_upload * req[:, T_INPUT : T_INPUT + 1]
        return np.maximum(d.astype(np.float64), 0.0)

    def select(self, obs: Obs) -> Actions:
        """Choose per row within what is left of the SLA."""
        req, models = self._split(obs)
        mu = models[:, :, MU].astype(np.float64)
        slow = req[:, SLOWDOWN : SLOWDOWN + 1].astype(np.float64)
        need = (mu + self.z * models[:, :, SIGMA]) * slow
        need += self._download(req) + self._wait(req, mu)
        ok = need <= req[:, REMAINING : REMAINING + 1]
        return _most_accurate(ok, models[:, :, ACC], mu)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(z={self.z}, download_ms={self.download_ms:.3g}, "
            f"download_per_upload={self.download_per_upload:.3g})"
        )


class ModelSwitching(CalibratedGreedy):
    """Model-Switching (Zhang et al., HotCloud'20): under load, smaller models.

    The most accurate model ``m`` whose run behind the ``q`` queued requests, all served by
    ``m`` too, fits: ``((q / workers + 1)·μ_m + z·σ_m)·slowdown + d̂ ≤ SLA − elapsed``. Without
    a queue it is :class:`CalibratedGreedy`.
    """

    name = "model_switching"

    def select(self, obs: Obs) -> Actions:
        """Choose per row, scaling each model's time by the queue ahead."""
        req, models = self._split(obs)
        mu = models[:, :, MU].astype(np.float64)
        slow = req[:, SLOWDOWN : SLOWDOWN + 1].astype(np.float64)
        ahead = req[:, QUEUE : QUEUE + 1] / self.workers
        need = ((ahead + 1.0) * mu + self.z * models[:, :, SIGMA]) * slow + self._download(req)
        ok = need <= req[:, REMAINING : REMAINING + 1]
        return _most_accurate(ok, models[:, :, ACC], mu)


class QueueAwareGreedy(CalibratedGreedy):
    """Calibrated greedy with the expected wait scaled by the load: the most accurate model with
    ``(μ + z·σ)·slowdown + d̂ + (queue_len / workers)·wait_ms_per_request·slowdown ≤ SLA −
    elapsed``: every queued request ahead runs under the same observed slowdown. With
    ``wait_ms_per_request=None``, the pool's mean profiled μ per queued request. Tuned on
    validation like :class:`CalibratedGreedy` (``tuning.calibrated_greedy_queue``)."""

    name = "calibrated_greedy_queue"

    def _wait(self, req: NDArray[Any], mu: NDArray[Any]) -> NDArray[Any]:
        per = (
            mu.mean(axis=1, keepdims=True)
            if self.wait_ms_per_request is None
            else self.wait_ms_per_request
        )
        slow = req[:, SLOWDOWN : SLOWDOWN + 1].astype(np.float64)
        return req[:, QUEUE : QUEUE + 1] / self.workers * per * slow


class PureRandom(_Base):
    """Uniform over the whole pool (ModiPick §4.4)."""

    name = "pure_random"

    def select(self, obs: Obs) -> Actions:
        """Choose uniformly."""
        _, models = self._split(obs)
        return np.asarray(self._rng.integers(0, models.shape[1], size=models.shape[0]))


class Oracle(_Base):
    """Clairvoyant upper bound: knows every model's realised latency for this request."""

    name = "oracle"

    def select(self, obs: Obs) -> Actions:
        """An oracle cannot decide from the observation alone."""
        raise TypeError("the oracle needs realised latencies: call select_clairvoyant(obs, e2e_ms)")

    def select_clairvoyant(
        self, obs: Obs, e2e_ms: NDArray[np.float64], sla_ms: NDArray[np.float64] | None = None
    ) -> Actions:
        """Most accurate model meeting the SLA in reality; the fastest in reality if none.

        ``sla_ms`` (exact, float64) avoids the float32 rounding of the observation's SLA column,
        which is also less any time since capture that is not the upload (none in
        ``ModelSelection-v0``): give it where ``e2e_ms`` counts from capture and more came first.
        """
        req, models = self._split(obs)
        sla = req[:, SLA] if sla_ms is None else np.asarray(sla_ms, dtype=np.float64)
        met = e2e_ms <= sla.reshape(-1, 1)
        score = np.where(met, models[:, :, ACC], -np.inf)
        best = score.max(axis=1, keepdims=True)
        pick = np.where(score == best, e2e_ms, np.inf).argmin(axis=1)
        return np.where(met.any(axis=1), pick, e2e_ms.argmin(axis=1))


POLICY_NAMES: tuple[str, ...] = (
    "static_greedy",
    "dynamic_greedy",
    "modipick",
    "mdinference",
    "pure_random",
    "related_random",
    "related_accurate",
    "calibrated_greedy",
    "model_switching",
    "calibrated_greedy_queue",
    "oracle",
    "informed_ceiling",
)


def make_policy(name: str, profile_mu_ms: NDArray[np.float64] | None = None, **kwargs: Any) -> Any:
    """Build a baseline or reference by name; ``kwargs`` go to its constructor."""
    if name == "static_greedy":
        return StaticGreedy(profile_mu_ms, **kwargs)
    if name == "dynamic_greedy":
        return DynamicGreedy(**kwargs)
    if name in ("modipick", "related_random", "related_accurate"):
        return ModiPick(variant=name, **kwargs)
    if name == "mdinference":
        return MDInference(**kwargs)
    if name == "pure_random":
        return PureRandom(**kwargs)
    if name == "calibrated_greedy":
        return CalibratedGreedy(**kwargs)
    if name == "model_switching":
        return ModelSwitching(**kwargs)
    if name == "calibrated_greedy_queue":
        return QueueAwareGreedy(**kwargs)
    if name == "oracle":
        return Oracle(**kwargs)
    if name == "informed_ceiling":
        from modi.agents.references import InformedCeiling

        return InformedCeiling(**kwargs)
    raise ValueError(f"unknown policy {name!r}; expected one of {list(POLICY_NAMES)}")
