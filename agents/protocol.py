"""The one protocol every policy satisfies: heuristics, bandits, SB3 agents, ONNX selectors."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

Obs = NDArray[np.float32]
Actions = NDArray[np.intp]


@runtime_checkable
class Policy(Protocol):
    """Batched decision rule: observations ``(N, D)`` in, one model index per row out."""

    name: str

    def reset(self, num_envs: int, seed: int | None = None) -> None:
        """Prepare for ``num_envs`` streams; ``seed`` fixes the policy's own randomness."""

    def select(self, obs: Obs) -> Actions:
        """Choose a model index for each row of ``obs``."""
        ...


@runtime_checkable
class OnlinePolicy(Policy, Protocol):
    """A policy that learns from the outcome of its own decisions."""

    def update(self, obs: Obs, actions: Actions, rewards: NDArray[np.float64], info: Any) -> None:
        """Learn from one batch of (observation, action, reward)."""


@runtime_checkable
class ClairvoyantPolicy(Protocol):
    """A policy allowed to see realised latencies (the oracle: an upper bound, not a rule)."""

    name: str

    def reset(self, num_envs: int, seed: int | None = None) -> None:
        """Prepare for ``num_envs`` streams."""

    def select_clairvoyant(
        self, obs: Obs, e2e_ms: NDArray[np.float64], sla_ms: NDArray[np.float64] | None = None
    ) -> Actions:
        """Choose with knowledge of every model's realised end-to-end latency ``(N, K)``;
        ``sla_ms`` is the exact SLA (the observation holds it rounded to float32)."""
        ...


@runtime_checkable
class InformedPolicy(Protocol):
    """A reference allowed to see the simulator's latent state at decision time (the informed
    ceiling): the link's and the server's present state, never the noise still to come."""

    name: str

    def reset(self, num_envs: int, seed: int | None = None) -> None:
        """Prepare for ``num_envs`` streams."""

    def select_informed(self, obs: Obs, sim: Any) -> Actions:
        """Choose with access to ``sim`` (a :class:`~modi.envs.simulator.ModelSelectionSim`)."""
        ...
