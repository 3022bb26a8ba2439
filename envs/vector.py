"""The shared part of modi's natively batched vector envs: ``N`` endless request streams in one
simulator object, seeded together, truncated every ``max_episode_steps`` requests with
same-step autoreset (the stream goes on; the learned server/device state is reset)."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv
from numpy.typing import NDArray


class BatchedSim(Protocol):
    """What :class:`StreamVectorEnv` needs of a batched simulator."""

    obs: NDArray[np.float32]

    def reset(self, seed: int | None = None) -> NDArray[np.float32]:
        """Start all streams from ``seed``."""
        ...

    def reset_state(self, rows: NDArray[np.bool_]) -> None:
        """Forget learned state for the given streams."""


class StreamVectorEnv(VectorEnv[NDArray[np.float32], NDArray[np.int64], NDArray[Any]]):
    """Base of the native vector envs; subclasses set ``self.sim`` and the spaces, then call
    :meth:`_init_streams`, and finish ``step`` with :meth:`_finish_step`."""

    metadata: dict[str, Any] = {  # noqa: RUF012 - gymnasium API
        "autoreset_mode": AutoresetMode.SAME_STEP,
        "render_modes": [],
    }
    sim: Any

    def _init_streams(self, num_envs: int, max_episode_steps: int) -> None:
        self.num_envs = num_envs
        self.max_episode_steps = int(max_episode_steps)
        self._elapsed = np.zeros(num_envs, dtype=np.int64)
        self._terminated = np.zeros(num_envs, dtype=np.bool_)

    def reset(
        self, *, seed: int | list[int] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[NDArray[np.float32], dict[str, Any]]:
        """Start all streams; ``seed`` (an int) fixes every stream."""
        if isinstance(seed, list):
            seed = seed[0] if seed else None
        super().reset(seed=seed)
        sim_seed = int(self.np_random.integers(2**63)) if seed is None else seed
        self._elapsed[:] = 0
        return self.sim.reset(sim_seed).copy(), {}

    def _finish_step(
        self, reward: NDArray[np.float64], infos: dict[str, Any]
    ) -> tuple[
        NDArray[np.float32],
        NDArray[np.float64],
        NDArray[np.bool_],
        NDArray[np.bool_],
        dict[str, Any],
    ]:
        """Count the step, truncate streams at ``max_episode_steps`` (same-step autoreset)."""
        self._elapsed += 1
        truncated = self._elapsed >= self.max_episode_steps
        if truncated.any():
            infos["final_obs"] = self.sim.obs.copy()
            infos["_final_obs"] = truncated.copy()
            self.sim.reset_state(truncated)
            self._elapsed[truncated] = 0
        return self.sim.obs.copy(), reward.copy(), self._terminated.copy(), truncated, infos
