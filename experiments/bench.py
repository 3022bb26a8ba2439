"""``modi-bench``: simulator and reproduction speed, each against a reference measured in the
same run (CartPole for the envs), printed as one JSON object and written to ``bench.json``.

Rounds are interleaved (ours, reference, ours, ...) and the median is reported, because the
machines are shared and noisy: compare ratios, not absolute numbers across runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

import modi
import modi.envs

log = logging.getLogger(__name__)


def single_env_rate(make: Callable[[], gym.Env[Any, Any]], steps: int, seed: int = 0) -> float:
    """Steps per second of one env through the ``gym.make`` wrappers, random actions."""
    env = make()
    env.reset(seed=seed)
    n_actions = int(env.action_space.n)  # type: ignore[attr-defined]
    actions = np.random.default_rng(seed).integers(0, n_actions, size=steps).tolist()
    step, reset = env.step, env.reset
    t0 = time.perf_counter()
    for a in actions:
        _, _, terminated, truncated, _ = step(a)
        if terminated or truncated:
            reset()
    dt = time.perf_counter() - t0
    env.close()
    return steps / dt


def vector_env_rate(make: Callable[[], Any], steps: int, seed: int = 0) -> float:
    """Env-steps per second of a natively batched vector env, random actions."""
    env = make()
    env.reset(seed=seed)
    n = env.num_envs
    high = int(env.single_action_space.n)
    actions = np.random.default_rng(seed).integers(0, high, size=(steps, n))
    t0 = time.perf_counter()
    for a in actions:
        env.step(a)
    dt = time.perf_counter() - t0
    env.close()
    return steps * n / dt


def reproduction_seconds(out_dir: Path) -> float:
    """Wall time of ``modi-reproduce`` (Figures 6, 7 and 9: CSVs, figures and claim checks)."""
    from modi.experiments.reproduction import run_reproduction

    t0 = time.perf_counter()
    run_reproduction(out_dir, progress=False)
    return time.perf_counter() - t0


def run_bench(
    steps: int = 100_000,
    vector_envs: int = 1024,
    vector_steps: int = 300,
    rounds: int = 3,
    env_kwargs: dict[str, Any] | None = None,
    reproduce: bool = True,
    training: tuple[str, ...] = (),
    label: str = "",
    runtime: bool = True,
) -> dict[str, Any]:
    """Measure everything; returns the figures as a dict."""
    kw = env_kwargs or {}
    ours: list[float] = []
    ref: list[float] = []
    vec: list[float] = []
    ref_vec: list[float] = []
    for _ in range(rounds):
        ours.append(single_env_rate(lambda: gym.make("modi/ModelSelection-v0", **kw), steps))
        ref.append(single_env_rate(lambda: gym.make("CartPole-v1"), steps))
        vec.append(
            vector_env_rate(
                lambda: gym.make_vec("modi/ModelSelection-v0", num_envs=vector_envs, **kw),
                vector_steps,
            )
        )
        ref_vec.append(
            vector_env_rate(
                lambda: gym.make_vec(
                    "CartPole-v1", num_envs=vector_envs, vectorization_mode="vector_entry_point"
                ),
                vector_steps,
            )
        )
    res: dict[str, Any] = {
        "modi_version": modi.__version__,
        "env": label or {k: str(v) for k, v in kw.items()},
        "env_steps_per_s": round(statistics.median(ours)),
        "cartpole_steps_per_s": round(statistics.median(ref)),
        "vector_env_steps_per_s": round(statistics.median(vec)),
        "cartpole_vector_steps_per_s": round(statistics.median(ref_vec)),
        "vector_envs": vector_envs,
    }
    res["env_vs_cartpole"] = round(res["env_steps_per_s"] / res["cartpole_steps_per_s"], 3)
    if reproduce:
        with tempfile.TemporaryDirectory() as tmp:
            res["reproduction_seconds"] = round(reproduction_seconds(Path(tmp)), 2)
    if runtime:
        from modi.experiments.bench_runtime import run_runtime_bench

        res.update(run_runtime_bench())
        from modi.experiments.bench_device import run_device_bench

        res.update(run_device_bench())
        res["device_vs_selector_p99"] = round(
            res["device_selector_p99_us"] / res["selector_p99_us"], 3
        )
        res["device_shipped_vs_selector_p99"] = round(
            res["device_selector_shipped_p99_us"] / res["selector_p99_us"], 3
        )
    for agent in training:
        from modi.experiments.bench_training import seconds_to_beat_modipick

        t = seconds_to_beat_modipick(agent)
        res[f"train_seconds_to_beat_modipick_{agent}"] = t["seconds"]
        res[f"train_requests_to_beat_modipick_{agent}"] = t["requests"]
        res[f"train_{agent}_vs_modipick_effective_accuracy"] = [
            t["effective_accuracy"],
            t["modipick_effective_accuracy"],
        ]
    return res


def scenario_env_kwargs(scenario: str) -> dict[str, Any]:
    """``gym.make`` keyword arguments for a scenario preset (pool, network, sim settings)."""
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    from modi.experiments.common import instantiate_node

    with initialize_config_module(config_module="modi.conf", version_base="1.3"):
        cfg = compose(config_name="compare", overrides=[f"scenario={scenario}"])
    sim: dict[str, Any] = OmegaConf.to_container(cfg.sim, resolve=True)  # type: ignore[assignment]
    return {
        "pool": instantiate_node(cfg, "pool"),
        "network": instantiate_node(cfg, "network"),
        **sim,
    }


def main(argv: list[str] | None = None) -> None:
    """Console entry point."""
    p = argparse.ArgumentParser(prog="modi-bench", description=__doc__)
    p.add_argument("--steps", type=int, default=100_000, help="single-env steps per round")
    p.add_argument("--vector-envs", type=int, default=1024)
    p.add_argument("--vector-steps", type=int, default=300)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--pool", default=None, help="pool preset for the env (default: env default)")
    p.add_argument("--network", default=None, help="network preset for the env")
    p.add_argument(
        "--scenario", default=None, help="scenario preset for the env (pool, network, server)"
    )
    p.add_argument("--no-reproduction", action="store_true", help="skip reproduction_seconds")
    p.add_argument("--no-runtime", action="store_true", help="skip the runtime selector figures")
    p.add_argument(
        "--training",
        nargs="*",
        default=["linucb", "ppo"],
        help="agents whose wall time to pass ModiPick on realistic_wifi is measured",
    )
    p.add_argument("--out", type=Path, default=Path("bench.json"))
    args = p.parse_args(argv)
    for name in ("steps", "vector_envs", "vector_steps", "rounds"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    kw: dict[str, Any] = {
        k: v for k, v in (("pool", args.pool), ("network", args.network)) if v is not None
    }
    if args.scenario:
        kw = scenario_env_kwargs(args.scenario) | kw
    res = run_bench(
        args.steps,
        args.vector_envs,
        args.vector_steps,
        args.rounds,
        kw,
        not args.no_reproduction,
        tuple(args.training),
        args.scenario or "",
        not args.no_runtime,
    )
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
