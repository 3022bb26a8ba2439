"""Validate off-policy evaluation in simulation: does the interval cover the truth?

For each scenario (the ``modi-compare`` configs, ``scenario=...``), each logging policy and each
repetition (a seed): a stochastic logger serves a stream and its decisions are logged with its
true action probabilities; :func:`modi.agents.ope.evaluate` estimates each candidate's effective
accuracy and attainment from that log; the truth is the candidate's own run on the same seed
(common random numbers: the same requests, network and execution noise).

Two truths are kept: ``true_onpolicy`` (the candidate really serving the stream: what a
promotion would get) and ``true_logged`` (the candidate's reward on exactly the logged requests,
from the simulator's realised latency of every model: the quantity the estimators target;
the two differ only where the server's state, e.g. its learned profiles or queue, depends on
earlier choices).

Loggers: ``modipick`` (stochastic through its stage three) and ``eps_linucb`` (a briefly trained
LinUCB, ε-greedy). Candidates: ``linucb`` (a longer-trained LinUCB, its deterministic choice),
``dynamic_greedy`` and ``related_accurate`` (the most accurate model of ModiPick's eligible set:
a deterministic policy inside ModiPick's support).

Run ``python -m modi.experiments.ope_validation [--reps 20] [--out DIR]``: prints the table of
coverage and mean absolute error per scenario × logger × candidate × estimator and writes
``ope_validation.csv`` (the table), ``ope_validation_pooled.csv`` (pooled over candidates) and
``ope_validation_runs.csv`` (every repetition; ``--from-runs`` re-summarises one).
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from modi.agents.bandits import LinUCB
from modi.agents.baselines import DynamicGreedy, ModiPick
from modi.agents.evaluation import rollout
from modi.agents.ope import (
    ESTIMATORS,
    METRICS,
    CannotEstimate,
    PolicyCandidate,
    evaluate,
    modipick_probabilities,
    one_hot,
)
from modi.agents.protocol import Policy
from modi.envs.simulator import ModelSelectionSim
from modi.runtime.decision_log import decision_log_from_arrays
from modi.runtime.features import ObsLayout
from modi.runtime.modipick import sample_rows

log = logging.getLogger(__name__)

F64 = NDArray[np.float64]
DEFAULT_SCENARIOS = ("paper_campus", "realistic_wifi", "lte_trace")


@dataclass(frozen=True)
class ValidationConfig:
    """Sizes of a validation run."""

    scenarios: tuple[str, ...] = DEFAULT_SCENARIOS
    reps: int = 20
    requests: int = 4000  # logged requests per repetition
    streams: int = 10
    train_requests: int = 20_000  # the candidate LinUCB
    logger_train_requests: int = 2_000  # the ε-greedy logger's LinUCB
    epsilon: float = 0.2
    seed: int = 0
    loggers: tuple[str, ...] = ("modipick", "eps_linucb")


def scenario_sim(scenario: str, streams: int) -> ModelSelectionSim:
    """The simulator of a ``modi-compare`` scenario, each request's SLA uniform in the
    scenario's ``sla_range_ms``."""
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    from modi.experiments.common import instantiate_node

    with initialize_config_module(config_module="modi.conf", version_base="1.3"):
        cfg = compose("compare", overrides=[f"scenario={scenario}"])
    pool = instantiate_node(cfg, "pool")
    network = instantiate_node(cfg, "network")
    sim_args: dict[str, Any] = OmegaConf.to_container(cfg.sim, resolve=True)  # type: ignore[assignment]
    lo, hi = (float(x) for x in cfg.get("sla_range_ms", [50.0, 400.0]))
    return ModelSelectionSim(pool, network, num_envs=streams, sla_range_ms=(lo, hi), **sim_args)


@dataclass
class LoggedRun:
    """A logged stream: observations, the logger's probabilities and choices, outcomes, and the
    realised outcome of every model on every request (``cf_met``, privileged)."""

    obs: NDArray[np.float32]
    probs: F64
    actions: NDArray[np.intp]
    met: F64
    accuracy: F64
    cf_met: NDArray[np.bool_]


def log_stream(
    sim: ModelSelectionSim,
    probs_fn: Callable[[NDArray[np.float32]], F64],
    steps: int,
    seed: int,
) -> LoggedRun:
    """Serve ``steps`` requests per stream with a stochastic logger (actions drawn from
    ``probs_fn``'s probabilities by a generator of its own) and log everything."""
    rng = np.random.default_rng([seed, 7919])
    sim.reset(seed)
    o_l, p_l, a_l, m_l, acc_l, cf_l = [], [], [], [], [], []
    for _ in range(steps):
        obs = sim.obs.copy()  # the simulator overwrites sim.obs in place on step()
        p = probs_fn(obs)
        cf = sim.current_e2e_ms() <= sim.current_sla_ms()[:, None]
        a = sample_rows(p, rng.random(obs.shape[0]))
        o = sim.step(a)
        if not np.array_equal(o.met, cf[np.arange(a.size), a]):
            raise AssertionError("simulator outcome differs from its counterfactual latency")
        o_l.append(obs)
        p_l.append(p)
        a_l.append(a)
        m_l.append(o.met.astype(np.float64))
        acc_l.append(o.accuracy)
        cf_l.append(cf)
    return LoggedRun(
        np.concatenate(o_l), np.concatenate(p_l), np.concatenate(a_l), np.concatenate(m_l),
        np.concatenate(acc_l), np.concatenate(cf_l),
    )  # fmt: skip


def epsilon_greedy(policy: Policy, epsilon: float) -> Callable[[NDArray[np.float32]], F64]:
    """The ε-greedy probabilities around a deterministic policy's choice (e.g. a learned one)."""

    def probs(obs: NDArray[np.float32]) -> F64:
        k = ObsLayout.from_obs_dim(obs.shape[1]).num_models
        return (1.0 - epsilon) * one_hot(policy.select(obs), k) + epsilon / k

    return probs


def run_validation(cfg: ValidationConfig, progress: bool = True) -> pd.DataFrame:
    """Every repetition's estimates and truths, one row per scenario × logger × candidate ×
    metric × estimator × repetition."""
    rows: list[dict[str, Any]] = []
    steps = max(1, math.ceil(cfg.requests / cfg.streams))
    for scenario in cfg.scenarios:
        t0 = time.perf_counter()
        sim = scenario_sim(scenario, cfg.streams)
        acc = np.asarray(sim.accuracy, dtype=np.float64)
        cand_pol = LinUCB(seed=cfg.seed)
        cand_pol.fit(sim, cfg.train_requests, seed=10_000 + cfg.seed, progress=False)
        cand_pol.name = "linucb"
        logger_pol = LinUCB(seed=cfg.seed + 1)
        logger_pol.fit(sim, cfg.logger_train_requests, seed=20_000 + cfg.seed, progress=False)
        candidates = [
            PolicyCandidate("linucb", cand_pol),
            PolicyCandidate("dynamic_greedy", DynamicGreedy()),
            PolicyCandidate("related_accurate", ModiPick(variant="related_accurate")),
        ]
        loggers: dict[str, Callable[[NDArray[np.float32]], F64]] = {
            "modipick": modipick_probabilities,
            "eps_linucb": epsilon_greedy(logger_pol, cfg.epsilon),
        }
        truth_cache: dict[tuple[str, int], tuple[float, float]] = {}
        for logger in cfg.loggers:
            for rep in range(cfg.reps):
                seed = 1_000 * (cfg.seed + 1) + rep
                run = log_stream(sim, loggers[logger], steps, seed)
                lg = decision_log_from_arrays(
                    run.obs, run.actions, run.probs, run.met, run.accuracy, _ids(sim)
                )
                rep_report = evaluate(lg, candidates)
                for cand, rpt in zip(candidates, rep_report.candidates, strict=True):
                    key = (cand.name, seed)
                    if key not in truth_cache:
                        r = rollout(cand.policy, sim, steps, seed)
                        truth_cache[key] = (
                            float((r.accuracy * r.met).mean()),
                            float(r.met.mean()),
                        )
                    on_eff, on_att = truth_cache[key]
                    target = cand.probabilities(run.obs)
                    cf_eff = float((target * run.cf_met * acc).sum(axis=1).mean())
                    cf_att = float((target * run.cf_met).sum(axis=1).mean())
                    truths = {
                        "effective_accuracy": (on_eff, cf_eff),
                        "attainment": (on_att, cf_att),
                    }
                    for metric in METRICS:
                        t_on, t_cf = truths[metric]
                        for est in ESTIMATORS:
                            res = rpt.estimates[metric][est]
                            row: dict[str, Any] = {
                                "scenario": scenario, "logger": logger, "candidate": cand.name,
                                "metric": metric, "estimator": est, "rep": rep, "seed": seed,
                                "n": lg.n, "unsupported_share": rpt.support.share,
                                "true_onpolicy": t_on, "true_logged": t_cf,
                                "logger_value": float(np.mean(lg.rewards if metric ==
                                                      "effective_accuracy" else lg.met)),
                            }  # fmt: skip
                            if isinstance(res, CannotEstimate):
                                row.update(value=np.nan, lo=np.nan, hi=np.nan, refused=True)
                            else:
                                row.update(value=res.value, lo=res.lo, hi=res.hi, refused=False)
                            rows.append(row)
            if progress:
                log.info("%s / %s: %d repetitions", scenario, logger, cfg.reps)
        log.info("%s done in %.0f s", scenario, time.perf_counter() - t0)
    return pd.DataFrame(rows)


def _ids(sim: ModelSelectionSim) -> list[str]:
    return [str(i) for i in sim.pool.ids]


def summarise(runs: pd.DataFrame) -> pd.DataFrame:
    """Coverage (of the on-policy and of the logged-requests truth), mean absolute error and
    mean interval width per scenario × logger × candidate × metric × estimator."""
    r = runs.copy()
    r["cover_onpolicy"] = (r.lo <= r.true_onpolicy) & (r.true_onpolicy <= r.hi)
    r["cover_logged"] = (r.lo <= r.true_logged) & (r.true_logged <= r.hi)
    r["abs_err_onpolicy"] = (r.value - r.true_onpolicy).abs()
    r["abs_err_logged"] = (r.value - r.true_logged).abs()
    r["width"] = r.hi - r.lo
    keys = ["scenario", "logger", "candidate", "metric", "estimator"]
    ok = r[~r.refused]
    agg = ok.groupby(keys, sort=False).agg(
        reps=("rep", "size"),
        coverage=("cover_onpolicy", "mean"),
        coverage_logged=("cover_logged", "mean"),
        mae=("abs_err_onpolicy", "mean"),
        mae_logged=("abs_err_logged", "mean"),
        width=("width", "mean"),
    )
    base = r.groupby(keys, sort=False).agg(
        refused=("refused", "sum"),
        unsupported=("unsupported_share", "mean"),
        true_value=("true_onpolicy", "mean"),
        logger_value=("logger_value", "mean"),
    )
    out = base.join(agg, how="left").reset_index()
    out["reps"] = out["reps"].fillna(0).astype(int)
    return out


def pooled(runs: pd.DataFrame) -> pd.DataFrame:
    """Coverage (percent) and mean absolute error (points) per scenario × logger × metric ×
    estimator, pooled over the candidates each estimator answered for."""
    r = runs.copy()
    r["cover"] = (r.lo <= r.true_onpolicy) & (r.true_onpolicy <= r.hi)
    r["cover_logged"] = (r.lo <= r.true_logged) & (r.true_logged <= r.hi)
    r["abs_err"] = (r.value - r.true_onpolicy).abs()
    keys = ["scenario", "logger", "metric", "estimator"]
    ok = (
        r[~r.refused]
        .groupby(keys, sort=False)
        .agg(
            estimates=("rep", "size"),
            coverage=("cover", "mean"),
            coverage_logged=("cover_logged", "mean"),
            mae=("abs_err", "mean"),
        )
    )
    out = r.groupby(keys, sort=False).agg(refused=("refused", "sum")).join(ok).reset_index()
    for c in ("coverage", "coverage_logged", "mae"):
        out[c] = (100 * out[c]).round(2 if c == "mae" else 0)
    return out


def format_table(summary: pd.DataFrame, metric: str = "effective_accuracy") -> str:
    """The summary of one metric as text (percentages)."""
    t = summary[summary.metric == metric].copy()
    for c in ("coverage", "coverage_logged"):
        t[c] = (100 * t[c]).round(0)
    for c in ("mae", "mae_logged", "width", "unsupported", "true_value", "logger_value"):
        t[c] = (100 * t[c]).round(2)
    cols = ["scenario", "logger", "candidate", "estimator", "reps", "refused", "unsupported",
            "true_value", "coverage", "coverage_logged", "mae", "mae_logged", "width"]  # fmt: skip
    return str(t[cols].to_string(index=False))


def learning_comparison(
    cfg: ValidationConfig, requests: int = 20_000, eval_requests: int = 10_000
) -> pd.DataFrame:
    """Selectors learned from logs (:func:`modi.agents.offline.train_from_log`) against the
    online-trained LinUCB with the same number of requests, on held-out streams: one row per
    scenario × repetition × policy (effective accuracy and attainment)."""
    from modi.agents.offline import train_from_log

    rows: list[dict[str, Any]] = []
    steps = max(1, math.ceil(requests / cfg.streams))
    eval_steps = max(1, math.ceil(eval_requests / cfg.streams))
    for scenario in cfg.scenarios:
        sim = scenario_sim(scenario, cfg.streams)
        ids = _ids(sim)
        for rep in range(cfg.reps):
            seed = 50_000 + 100 * cfg.seed + rep
            online = LinUCB(seed=seed)
            online.fit(sim, requests, seed=seed, progress=False)
            eps_base = LinUCB(seed=seed + 1)
            eps_base.fit(sim, cfg.logger_train_requests, seed=seed + 1, progress=False)
            policies: dict[str, Any] = {
                "modipick": ModiPick(),
                "dynamic_greedy": DynamicGreedy(),
                "online_linucb": online,
            }
            for logger, fn in (("modipick", modipick_probabilities),
                               ("eps_linucb", epsilon_greedy(eps_base, cfg.epsilon))):  # fmt: skip
                run = log_stream(sim, fn, steps, seed)
                lg = decision_log_from_arrays(run.obs, run.actions, run.probs, run.met,
                                              run.accuracy, ids)  # fmt: skip
                for weighting in ("ips", "none"):
                    pol = train_from_log(lg, weighting=weighting)
                    policies[f"offline_{weighting}<{logger}"] = pol
                policies[f"logger<{logger}"] = None if logger == "modipick" else eps_base
            eval_seed = 90_000 + 100 * cfg.seed + rep  # held out: never logged nor trained on
            for name, pol in policies.items():
                if pol is None:
                    continue
                r = rollout(pol, sim, eval_steps, eval_seed)
                rows.append({
                    "scenario": scenario, "rep": rep, "policy": name, "requests": requests,
                    "effective_accuracy": float((r.accuracy * r.met).mean()),
                    "attainment": float(r.met.mean()),
                })  # fmt: skip
        log.info("%s: learning from logs, %d repetitions", scenario, cfg.reps)
    return pd.DataFrame(rows)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: run, print the tables, write the CSVs."""
    p = argparse.ArgumentParser(prog="python -m modi.experiments.ope_validation",
                                description=__doc__.split("\n\n")[0])  # fmt: skip
    d = ValidationConfig()
    p.add_argument("--scenarios", default=",".join(d.scenarios), help="comma-separated")
    p.add_argument("--loggers", default=",".join(d.loggers), help="modipick,eps_linucb")
    p.add_argument("--reps", type=int, default=d.reps)
    p.add_argument("--requests", type=int, default=d.requests, help="logged per repetition")
    p.add_argument("--streams", type=int, default=d.streams)
    p.add_argument("--train-requests", type=int, default=d.train_requests)
    p.add_argument("--logger-train-requests", type=int, default=d.logger_train_requests)
    p.add_argument("--epsilon", type=float, default=d.epsilon)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--out", type=Path, default=Path("ope_validation"))
    p.add_argument(
        "--learning",
        action="store_true",
        help="instead: selectors learned from logs vs online (offline_learning.csv)",
    )
    p.add_argument("--learning-requests", type=int, default=20_000)
    p.add_argument(
        "--from-runs",
        type=Path,
        default=None,
        help="re-summarise an ope_validation_runs.csv instead of running",
    )
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name, v in (("reps", a.reps), ("requests", a.requests), ("streams", a.streams),
                    ("train-requests", a.train_requests),
                    ("logger-train-requests", a.logger_train_requests)):  # fmt: skip
        if v < 1:
            print(f"error: --{name} must be >= 1, got {v}", file=sys.stderr)
            return 2
    if not 0.0 < a.epsilon <= 1.0:
        print(f"error: --epsilon must be in (0, 1], got {a.epsilon}", file=sys.stderr)
        return 2
    loggers = tuple(s for s in a.loggers.split(",") if s)
    bad = [x for x in loggers if x not in ("modipick", "eps_linucb")]
    if bad:
        print(f"error: --loggers: unknown {bad}; expected modipick, eps_linucb", file=sys.stderr)
        return 2
    cfg = ValidationConfig(
        scenarios=tuple(s for s in a.scenarios.split(",") if s), reps=a.reps,
        requests=a.requests, streams=a.streams, train_requests=a.train_requests,
        logger_train_requests=a.logger_train_requests, epsilon=a.epsilon, seed=a.seed,
        loggers=loggers,
    )  # fmt: skip
    t0 = time.perf_counter()
    if a.learning:
        res = learning_comparison(cfg, a.learning_requests)
        a.out.mkdir(parents=True, exist_ok=True)
        res.to_csv(a.out / "offline_learning.csv", index=False)
        t = res.groupby(["scenario", "policy"], sort=False)[["effective_accuracy", "attainment"]]
        table = (100 * t.agg(["mean", "std"])).round(2)
        print(f"\nheld-out effective accuracy / attainment (percent, mean and sd over {cfg.reps} "
              f"repetitions; learned from {a.learning_requests} requests)")  # fmt: skip
        print(table.to_string())
        print(f"\nwrote {a.out / 'offline_learning.csv'} ({time.perf_counter() - t0:.0f} s)")
        return 0
    if a.from_runs is not None:
        runs = pd.read_csv(a.from_runs)
        reps = int(runs.rep.max()) + 1
        n = int(runs.n.max())
    else:
        runs = run_validation(cfg)
        reps, n = cfg.reps, cfg.requests
    summary = summarise(runs)
    pool = pooled(runs)
    a.out.mkdir(parents=True, exist_ok=True)
    runs.to_csv(a.out / "ope_validation_runs.csv", index=False)
    summary.to_csv(a.out / "ope_validation.csv", index=False)
    pool.to_csv(a.out / "ope_validation_pooled.csv", index=False)
    for metric in METRICS:
        print(f"\n{metric} (percent; coverage of the on-policy truth and of the logged-requests "
              f"truth over {reps} repetitions of {n} logged requests)")  # fmt: skip
        print(format_table(summary, metric))
    for col in ("coverage", "mae"):
        print(f"\n{col} pooled over the candidates estimated (percent / points)")
        for metric in METRICS:
            t = pool[pool.metric == metric].pivot_table(
                index=["scenario", "logger"], columns="estimator", values=col, sort=False
            )
            print(f"{metric}:\n{t.to_string()}")
    print(f"\nwrote {a.out / 'ope_validation.csv'}, {a.out / 'ope_validation_pooled.csv'} and "
          f"{a.out / 'ope_validation_runs.csv'} ({time.perf_counter() - t0:.0f} s)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
