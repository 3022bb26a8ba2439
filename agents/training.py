"""Online training of learned selectors on the batched simulator, with a progress bar and a
training curve (reward, attainment, effective accuracy per chunk of requests)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tqdm.auto import tqdm

from modi.agents.bandits import LearnedPolicy
from modi.envs.simulator import ModelSelectionSim

log = logging.getLogger(__name__)


@dataclass
class TrainingHistory:
    """One row per logging chunk: requests seen so far and the chunk's means."""

    requests: list[int] = field(default_factory=list)
    reward: list[float] = field(default_factory=list)
    attainment: list[float] = field(default_factory=list)
    effective_accuracy: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)

    def rows(self) -> list[dict[str, float]]:
        """The curve as a list of dicts."""
        return [
            {
                "requests": r,
                "reward": a,
                "attainment": b,
                "effective_accuracy": c,
                "seconds": s,
            }
            for r, a, b, c, s in zip(
                self.requests,
                self.reward,
                self.attainment,
                self.effective_accuracy,
                self.seconds,
                strict=True,
            )
        ]


def train_online(
    policy: LearnedPolicy,
    sim: ModelSelectionSim,
    total_requests: int,
    seed: int,
    progress: bool = True,
    log_every: int = 20_000,
    callback: Callable[[int, dict[str, float]], None] | None = None,
) -> TrainingHistory:
    """Let ``policy`` serve ``total_requests`` requests of ``sim`` (all streams together),
    exploring and learning from every outcome; every observation it sees widens its recorded
    training ranges (:meth:`LearnedPolicy.record_observations`)."""
    if total_requests < 1:
        raise ValueError(f"total_requests must be >= 1, got {total_requests}")
    n = sim.num_envs
    steps = max(1, total_requests // n)
    obs = sim.reset(seed)
    hist = TrainingHistory()
    acc_r = acc_m = acc_e = 0.0
    cnt = 0
    t0 = time.perf_counter()
    with tqdm(
        total=steps * n, desc=f"train {policy.name}", disable=not progress, unit="req"
    ) as bar:
        for t in range(steps):
            policy.record_observations(obs)
            actions = policy.explore(obs)
            prev = obs.copy()
            o = sim.step(actions)
            policy.observe(prev, actions, o.met)
            obs = sim.obs
            acc_r += float(o.reward.sum())
            acc_m += float(o.met.sum())
            acc_e += float((o.accuracy * o.met).sum())
            cnt += n
            bar.update(n)
            if cnt >= log_every or t == steps - 1:
                row = {
                    "reward": acc_r / cnt,
                    "attainment": acc_m / cnt,
                    "effective_accuracy": acc_e / cnt,
                }
                seen = (t + 1) * n
                hist.requests.append(seen)
                hist.reward.append(row["reward"])
                hist.attainment.append(row["attainment"])
                hist.effective_accuracy.append(row["effective_accuracy"])
                hist.seconds.append(time.perf_counter() - t0)
                bar.set_postfix(eff_acc=f"{row['effective_accuracy']:.3f}")
                if callback is not None:
                    callback(seen, row)
                acc_r = acc_m = acc_e = 0.0
                cnt = 0
    log.info("trained %s on %d requests in %.1f s", policy.name, steps * n, hist.seconds[-1])
    return hist
