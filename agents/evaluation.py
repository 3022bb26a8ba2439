"""Run any policy on a simulator and summarise what happened.

Every policy is run on a freshly reset simulator with the same seed, so all of them face the
same request stream (common random numbers).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from modi.agents.protocol import ClairvoyantPolicy, InformedPolicy, OnlinePolicy, Policy
from modi.envs.simulator import ModelSelectionSim


@dataclass
class Rollout:
    """Per-request outcomes of one policy, arrays of shape ``(T, N)`` (steps × streams)."""

    policy: str
    model: NDArray[np.intp]
    sla_ms: NDArray[np.float64]
    t_input_ms: NDArray[np.float64]
    exec_ms: NDArray[np.float64]
    e2e_ms: NDArray[np.float64]
    met: NDArray[np.bool_]
    accuracy: NDArray[np.float64]
    reward: NDArray[np.float64]
    extra: dict[str, NDArray[np.float64]] = field(default_factory=dict)

    def select_streams(self, cols: NDArray[np.intp] | slice) -> Rollout:
        """The outcomes of a subset of streams (e.g. one sweep point)."""
        return Rollout(
            self.policy,
            self.model[:, cols],
            self.sla_ms[:, cols],
            self.t_input_ms[:, cols],
            self.exec_ms[:, cols],
            self.e2e_ms[:, cols],
            self.met[:, cols],
            self.accuracy[:, cols],
            self.reward[:, cols],
        )

    @classmethod
    def concat(cls, parts: Sequence[Rollout]) -> Rollout:
        """Several rollouts of one policy side by side (streams concatenated; same length)."""
        if not parts:
            raise ValueError("Rollout.concat needs at least one rollout")
        if len(parts) == 1:
            return parts[0]

        def cat(attr: str) -> NDArray[Any]:
            return np.concatenate([getattr(p, attr) for p in parts], axis=1)

        return cls(
            parts[0].policy,
            cat("model"),
            cat("sla_ms"),
            cat("t_input_ms"),
            cat("exec_ms"),
            cat("e2e_ms"),
            cat("met"),
            cat("accuracy"),
            cat("reward"),
        )

    def summary(self) -> dict[str, float]:
        """Attainment, accuracies (fractions) and latency statistics over all requests."""
        e2e = self.e2e_ms.reshape(-1)
        p50, p95, p99 = np.percentile(e2e, [50, 95, 99])
        return {
            "n_requests": int(e2e.size),
            "attainment": float(self.met.mean()),
            "accuracy": float(self.accuracy.mean()),
            "effective_accuracy": float((self.accuracy * self.met).mean()),
            "mean_reward": float(self.reward.mean()),
            "latency_mean_ms": float(e2e.mean()),
            "latency_std_ms": float(e2e.std()),
            "latency_p50_ms": float(p50),
            "latency_p95_ms": float(p95),
            "latency_p99_ms": float(p99),
        }


def rollout(
    policy: Policy | ClairvoyantPolicy | InformedPolicy,
    sim: ModelSelectionSim,
    steps: int,
    seed: int | Sequence[int],
    policy_seed: int | Sequence[int] | None = None,
) -> Rollout:
    """Reset ``sim`` with ``seed`` (an integer or a stream key) and let ``policy`` serve
    ``steps`` requests per stream."""
    n = sim.num_envs
    obs = sim.reset(seed)
    ps = seed if policy_seed is None else policy_seed
    if not isinstance(ps, int):  # a stream key: the policy gets one integer derived from it
        ps = int(np.random.SeedSequence(list(ps)).generate_state(1)[0])
    policy.reset(n, ps)
    clairvoyant = isinstance(policy, ClairvoyantPolicy)
    informed = not clairvoyant and isinstance(policy, InformedPolicy)
    online = isinstance(policy, OnlinePolicy)
    shape = (steps, n)
    out = Rollout(
        policy.name,
        np.empty(shape, dtype=np.intp),
        np.empty(shape),
        np.empty(shape),
        np.empty(shape),
        np.empty(shape),
        np.empty(shape, dtype=np.bool_),
        np.empty(shape),
        np.empty(shape),
    )
    for t in range(steps):
        if clairvoyant:
            actions = policy.select_clairvoyant(  # type: ignore[union-attr]
                obs, sim.current_e2e_ms(), sim.current_sla_ms()
            )
        elif informed:
            actions = policy.select_informed(obs, sim)  # type: ignore[union-attr]
        else:
            actions = policy.select(obs)  # type: ignore[union-attr]
        prev = obs.copy() if online else obs
        o = sim.step(actions)
        if online:
            policy.update(prev, o.model, o.reward, o)  # type: ignore[union-attr]
        obs = sim.obs
        out.model[t] = o.model
        out.sla_ms[t] = o.sla_ms
        out.t_input_ms[t] = o.t_input_ms
        out.exec_ms[t] = o.exec_ms
        out.e2e_ms[t] = o.e2e_ms
        out.met[t] = o.met
        out.accuracy[t] = o.accuracy
        out.reward[t] = o.reward
    return out
