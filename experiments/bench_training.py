"""Training cost: wall time until a learned selector passes ModiPick on a scenario.

The agent trains as ``modi-train`` would (same configs); every ``check_every`` requests its
deterministic policy is evaluated on a fixed *validation* stream (the validation split's seed,
``splits.val.seeds[0]``: never trained on, and not a test seed, so the early stop is a choice
made on validation; SLAs drawn from the scenario's training range) beside ModiPick on the very
same requests. Reported:
training seconds (evaluation time excluded) and requests until the learned effective accuracy
first exceeds ModiPick's.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from modi.agents.baselines import make_policy
from modi.agents.evaluation import rollout
from modi.envs.simulator import ModelSelectionSim
from modi.experiments.common import instantiate_node
from modi.experiments.train import build_agent

log = logging.getLogger(__name__)


class _Passed(Exception):
    """Raised from the training callback to stop once ModiPick is passed."""


def seconds_to_beat_modipick(
    agent_name: str,
    scenario: str = "realistic_wifi",
    max_requests: int = 3_000_000,
    check_every: int = 2_000,
    eval_streams: int = 20,
    eval_steps: int = 500,
    seed: int = 0,
    eval_seed: int = 100,
) -> dict[str, Any]:
    """Train ``agent_name`` on ``scenario`` until it beats ModiPick on the evaluation stream."""
    with initialize_config_module(config_module="modi.conf", version_base="1.3"):
        cfg = compose(
            config_name="train", overrides=[f"scenario={scenario}", f"agent={agent_name}"]
        )
    pool = instantiate_node(cfg, "pool")
    sim_args: dict[str, Any] = OmegaConf.to_container(cfg.sim, resolve=True)  # type: ignore[assignment]
    lo, hi = (float(x) for x in cfg.train.sla_range_ms)

    def make_sim(n: int) -> ModelSelectionSim:
        return ModelSelectionSim(
            pool, instantiate_node(cfg, "network"), num_envs=n, sla_range_ms=(lo, hi), **sim_args
        )

    eval_sim = make_sim(eval_streams)
    modipick = rollout(make_policy("modipick"), eval_sim, eval_steps, eval_seed).summary()
    target = modipick["effective_accuracy"]
    agent = build_agent(cfg, float(sim_args.get("miss_penalty", 0.0)), seed)
    agent.log_every = check_every
    train_sim = make_sim(int(cfg.train.num_envs))
    state: dict[str, Any] = {"train_s": 0.0, "mark": 0.0, "curve": []}

    def on_chunk(seen: int, row: dict[str, float]) -> None:
        state["train_s"] += time.perf_counter() - state["mark"]
        eff = rollout(agent, eval_sim, eval_steps, eval_seed).summary()["effective_accuracy"]
        state["curve"].append((seen, round(state["train_s"], 2), round(eff, 4)))
        log.info(
            "%s: %d requests, %.1f s, eff. acc %.4f (ModiPick %.4f)",
            agent_name,
            seen,
            state["train_s"],
            eff,
            target,
        )
        if eff > target:
            state["passed"] = (seen, state["train_s"], eff)
            raise _Passed
        state["mark"] = time.perf_counter()

    state["mark"] = time.perf_counter()
    with contextlib.suppress(_Passed):
        agent.fit(train_sim, max_requests, seed, progress=False, callback=on_chunk)
    passed = state.get("passed")
    return {
        "agent": agent_name,
        "scenario": scenario,
        "modipick_effective_accuracy": round(target, 4),
        "passed": passed is not None,
        "seconds": round(passed[1], 2) if passed else None,
        "requests": passed[0] if passed else None,
        "effective_accuracy": round(passed[2], 4) if passed else None,
        "curve": state["curve"],
    }
