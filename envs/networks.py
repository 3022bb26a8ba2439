"""Network models: how long a request's upload (``T_input``) and the response's download
(``T_output``) take.

A network model is sampled a block of requests at a time, shape ``(B, N)``: ``B`` consecutive
requests of ``N`` independent streams. It is action-independent, so every policy evaluated
with the same seed sees the same network (common random numbers).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
from numpy.typing import ArrayLike, NDArray

F64 = NDArray[np.float64]


class NetworkError(ValueError):
    """A network model is misconfigured; the message names the field."""


@dataclass
class BlockContext:
    """What a network model may condition on for a block of requests, all shape ``(B, N)``."""

    client: NDArray[np.int64]
    time_ms: F64
    payload_bytes: F64
    response_bytes: F64


@runtime_checkable
class NetworkModel(Protocol):
    """Samples upload and download times for blocks of requests."""

    name: str

    def reset(self, rng: np.random.Generator, num_envs: int, num_clients: int) -> None:
        """Start new streams (per-client state, trace offsets)."""

    def sample(self, rng: np.random.Generator, ctx: BlockContext) -> tuple[F64, F64]:
        """Return ``(t_input_ms, t_output_ms)``, each shaped like ``ctx.client``.

        A model should also set ``upload_rtt_ms`` (same shape): the round-trip time the
        connection measured *during* each request's upload (what feeds the server's smoothed
        RTT, :mod:`modi.envs.rtt`). Without it the simulator reports the RTT as unknown (NaN).
        """
        ...


def _per_env(value: float | Sequence[float] | F64, field_name: str) -> F64:
    arr = np.atleast_1d(np.asarray(value, dtype=np.float64))
    if arr.ndim != 1 or arr.size == 0 or not np.all(np.isfinite(arr)):
        raise NetworkError(f"{field_name} must be a finite number or a list of them, got {value!r}")
    return arr


def truncated_normal(
    rng: np.random.Generator, mean: ArrayLike, std: ArrayLike, shape: tuple[int, ...]
) -> F64:
    """Gaussian draws redrawn while ``<= 0`` (the MDInference simulator's ``getSample``)."""
    mean_b = np.broadcast_to(np.asarray(mean, dtype=np.float64), shape)
    std_b = np.broadcast_to(np.asarray(std, dtype=np.float64), shape)
    out = mean_b + std_b * rng.standard_normal(shape)
    bad = out <= 0
    while bad.any():
        out[bad] = mean_b[bad] + std_b[bad] * rng.standard_normal(int(bad.sum()))
        bad = out <= 0
    return out


class GaussianOneWay:
    """The papers' network: one draw ``d ~ N(mean, std²)`` (redrawn while ``d <= 0``) per request,
    used for both directions, so ``T_input = T_output = d`` and the network costs ``2d``.

    ``mean_ms`` and ``std_ms`` may be lists with one value per stream (for sweeps).
    """

    def __init__(
        self,
        mean_ms: float | Sequence[float] | F64,
        std_ms: float | Sequence[float] | F64,
        name: str = "gaussian",
    ) -> None:
        self.name = name
        self.mean_ms = _per_env(mean_ms, "network.mean_ms")
        self.std_ms = _per_env(std_ms, "network.std_ms")
        if np.any(self.mean_ms <= 0):
            raise NetworkError(f"network.mean_ms must be > 0, got {self.mean_ms.tolist()}")
        if np.any(self.std_ms < 0):
            raise NetworkError(f"network.std_ms must be >= 0, got {self.std_ms.tolist()}")

    @classmethod
    def from_cv(
        cls, mean_ms: float | Sequence[float], cv: float | Sequence[float], name: str = "cv"
    ) -> GaussianOneWay:
        """A network with the given mean and coefficient of variation ``std/mean``."""
        mean = _per_env(mean_ms, "network.mean_ms")
        cv_arr = _per_env(cv, "network.cv")
        if np.any(cv_arr < 0):
            raise NetworkError(f"network.cv must be >= 0, got {cv_arr.tolist()}")
        return cls(mean, mean * cv_arr, name=name)

    @property
    def cv(self) -> F64:
        """Coefficient of variation per stream."""
        return np.asarray(self.std_ms / self.mean_ms)

    def reset(self, rng: np.random.Generator, num_envs: int, num_clients: int) -> None:
        """Check that per-stream parameters match the number of streams."""
        for arr, fld in ((self.mean_ms, "mean_ms"), (self.std_ms, "std_ms")):
            if arr.size not in (1, num_envs):
                raise NetworkError(
                    f"network.{fld} has {arr.size} values but there are {num_envs} streams"
                )

    def sample(self, rng: np.random.Generator, ctx: BlockContext) -> tuple[F64, F64]:
        """One truncated Gaussian draw per request, used for both directions."""
        d = truncated_normal(rng, self.mean_ms, self.std_ms, ctx.client.shape)
        #: The round trip of each request's upload: one way is ``d``, so the RTT is ``2d``.
        self.upload_rtt_ms = 2.0 * d
        return d, d


#: The papers' network semantics under the name the configs use.
PaperNetwork = GaussianOneWay
