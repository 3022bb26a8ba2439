"""``modi-train``: train a learned selector on a scenario, compare it with the baselines and the
oracle on an evaluation stream seeded differently from training, track the run in MLflow and
export the selector to ONNX.

``train(cfg, out_dir)`` is a plain function (tests and sweeps call it); ``main`` is the thin
Hydra wrapper. Writes into the run folder: ``policy.pt``, ``training_curve.csv`` and ``.png``,
``results.csv`` and ``usage.csv`` (the same files as ``modi-compare``), ``learned_vs_modipick.csv``
and, with ``export=true``, ``selector.onnx``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import sys
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import hydra
import pandas as pd
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from modi.agents.bandits import LearnedPolicy, load_learned
from modi.agents.export import log_to_mlflow
from modi.agents.served import served_from_policy
from modi.envs.pools import ModelPool
from modi.envs.simulator import ModelSelectionSim, SimulationError
from modi.experiments import plots
from modi.experiments.common import ConfigError, as_float_list, as_int, instantiate_node
from modi.experiments.compare import format_table, run_compare
from modi.experiments.mixture import MixtureSim, MixtureSpec
from modi.experiments.splits import Splits, network_for_split
from modi.experiments.summary import best_rule, format_summary, summarize

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
#: Agents that train on a mixture (``mix``): pool-agnostic, any number of models per episode.
MIXTURE_AGENTS = ("linucb", "lints", "neural")


def build_agent(cfg: DictConfig, miss_penalty: float, seed: int) -> LearnedPolicy:
    """Instantiate ``cfg.agent`` (its ``name`` key is the policy's name)."""
    node = cfg.get("agent")
    if not isinstance(node, DictConfig) or "_target_" not in node:
        raise ConfigError(f"agent must be a config with a _target_, got {node!r}")
    args = OmegaConf.to_container(node, resolve=True)
    assert isinstance(args, dict)
    name = str(args.pop("name", "learned"))
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        agent = instantiate(args, miss_penalty=miss_penalty, seed=seed)
    except InstantiationException as e:
        raise ConfigError(f"agent ({name}): {e.__cause__ or e}") from None
    if not isinstance(agent, LearnedPolicy):
        raise ConfigError(f"agent {name!r} does not build a learned policy: {type(agent).__name__}")
    agent.name = name
    return agent


def learned_vs_modipick(results: pd.DataFrame, learned: str) -> pd.DataFrame:
    """Per SLA: effective accuracy of ModiPick, the learned selector and the oracle, the share of
    ModiPick's gap to the oracle that the learned selector closes, and the attainment change."""
    rows = []
    for sla, df in results.groupby("sla_ms"):
        by = df.set_index("policy")
        mp, lr, orc = (by.loc[p] for p in ("modipick", learned, "oracle"))
        gap = orc.effective_accuracy - mp.effective_accuracy
        rows.append(
            {
                "sla_ms": sla,
                "modipick_eff_acc": mp.effective_accuracy,
                f"{learned}_eff_acc": lr.effective_accuracy,
                "oracle_eff_acc": orc.effective_accuracy,
                "gap_points": 100 * gap,
                "gap_closed": (lr.effective_accuracy - mp.effective_accuracy) / gap
                if gap > 1e-9
                else float("nan"),
                "attainment_delta_points": 100 * (lr.attainment - mp.attainment),
            }
        )
    return pd.DataFrame(rows)


def _validate(cfg: DictConfig) -> tuple[int, int, tuple[float, float], int, int]:
    """Check every setting that can be checked before training (nothing trains on a config
    that would fail at evaluation)."""
    seed = as_int(cfg.seed, "seed", minimum=0)
    requests = as_int(cfg.train.requests, "train.requests")
    num_envs = as_int(cfg.train.num_envs, "train.num_envs")
    lo_hi = as_float_list(cfg.train.sla_range_ms, "train.sla_range_ms")
    if len(lo_hi) != 2 or lo_hi[0] > lo_hi[1]:
        raise ConfigError(f"train.sla_range_ms must be [low, high] with low <= high, got {lo_hi}")
    log_every = as_int(cfg.train.log_every, "train.log_every")
    ev = cfg.eval
    if ev.get("seed") is not None:
        raise ConfigError(
            "eval.seed is gone: evaluation uses the test split's seeds (splits.test.seeds); "
            "set eval.seeds=[...] to override them"
        )
    as_float_list(cfg.sla_ms, "sla_ms")
    as_float_list(ev.sla_ms, "eval.sla_ms")
    as_int(ev.n_requests, "eval.n_requests")
    as_int(ev.val_n_requests, "eval.val_n_requests")
    as_int(ev.streams_per_point, "eval.streams_per_point")
    splits = Splits.from_cfg(cfg, train_seeds=[seed])
    if ev.get("seeds") is not None:
        bad = set(int(s) for s in ev.seeds) & (set(splits.train) | set(splits.val))
        if bad:
            raise ConfigError(
                f"eval.seeds {sorted(bad)} are training or validation seeds; the reported "
                "evaluation must use seeds nobody trained or tuned on"
            )
    probe = _eval_cfg(cfg, "test")
    from modi.experiments.compare import TUNED_RULES, _policies
    from modi.experiments.tuning import grid

    for name in _policies(probe):
        if name in TUNED_RULES:
            grid(probe, name)
    return seed, requests, (lo_hi[0], lo_hi[1]), num_envs, log_every


def _eval_cfg(cfg: DictConfig, split: str) -> DictConfig:
    """The ``modi-compare`` config of the evaluation on ``split`` (val or test)."""
    ev = cfg.eval
    c = OmegaConf.create(
        {
            "scenario": cfg.get("scenario", ""),
            "policies": list(ev.policies),
            "learned": [],
            "policy_args": OmegaConf.to_container(cfg.get("policy_args") or {}),
            "sla_ms": list(ev.sla_ms),
            "cv": None,
            "split": split,
            "seeds": None if split != "test" or ev.get("seeds") is None else list(ev.seeds),
            "seed": None,
            "n_requests": ev.n_requests if split == "test" else ev.val_n_requests,
            "streams_per_point": ev.streams_per_point,
            "figures": list(cfg.get("figures") or []) if split == "test" else [],
            "usage_policy": cfg.get("usage_policy", "modipick"),
        }
    )
    for key in ("pool", "network", "sim", "splits", "tuning"):
        c[key] = OmegaConf.to_container(cfg[key], resolve=True)
    return c


def evaluate_learned(
    cfg: DictConfig,
    learned: Any,
    out_dir: Path,
    progress: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Evaluate ``learned`` (the served selector) beside the rules on the validation split
    (``out_dir/val``) and the test split (``out_dir``); returns the validation results, the
    test results and the learned-vs-best-rule summary (best rule chosen on validation)."""
    name = learned.name
    val_res, _ = run_compare(
        _eval_cfg(cfg, "val"), out_dir / "val", progress=progress, learned={name: learned}
    )
    results, _ = run_compare(
        _eval_cfg(cfg, "test"), out_dir, progress=progress, learned={name: learned}
    )
    units = pd.read_csv(out_dir / "units.csv")
    tuned = json.loads((out_dir / "tuned.json").read_text())
    rule = best_rule(val_res, exclude=[name])
    summary = summarize(results, units, name, rule, tuned.get(rule))
    summary.to_csv(out_dir / "summary.csv", index=False)
    return val_res, results, summary


@dataclass
class TrainingSetup:
    """What a training run needs, checked: the agent, the simulator of the training split and
    the run's settings (:func:`prepare_training`)."""

    agent: LearnedPolicy
    sim: ModelSelectionSim | MixtureSim
    seed: int
    requests: int
    log_every: int
    miss_penalty: float
    #: A fresh simulator of the validation split like :attr:`sim` (its segment of every
    #: trace; reset it with a validation seed).
    val_sim: Callable[[], ModelSelectionSim | MixtureSim]
    val_seed: int


def prepare_training(cfg: DictConfig) -> TrainingSetup:
    """Validate ``cfg`` (before any work) and build the agent and the training split's
    simulator (its seeds and, for trace networks, its segment of every trace)."""
    seed, requests, sla_range, num_envs, log_every = _validate(cfg)
    decision_penalties(cfg)  # checked before any work
    penalty_tie_tolerance(cfg)
    splits = Splits.from_cfg(cfg, train_seeds=[seed])
    pool = instantiate_node(cfg, "pool")
    if not isinstance(pool, ModelPool):
        raise ConfigError(f"pool must build a ModelPool, got {type(pool).__name__}")
    sim_args: dict[str, Any] = OmegaConf.to_container(cfg.sim, resolve=True)  # type: ignore[assignment]
    miss_penalty = float(sim_args.get("miss_penalty", 0.0))
    mix = MixtureSpec.from_cfg(cfg.get("mix"))
    agent = build_agent(cfg, miss_penalty, seed)
    agent.log_every = log_every
    if mix is not None:
        if agent.kind not in MIXTURE_AGENTS:
            raise ConfigError(
                f"mix: training on a mixture needs a pool-agnostic bandit agent "
                f"({', '.join(MIXTURE_AGENTS)}; pools change size between episodes), got "
                f"agent kind {agent.kind!r}: add mix=none to train it on the scenario alone"
            )
        segment = splits.segments.get("train")
        mixture = MixtureSim(mix, num_envs, sim_args, segment)

        def val_mixture() -> ModelSelectionSim | MixtureSim:
            return MixtureSim(mix, num_envs, sim_args, splits.segments.get("val"))

        return TrainingSetup(
            agent, mixture, seed, requests, log_every, miss_penalty, val_mixture, splits.val[0]
        )

    def scenario_sim(split: str) -> ModelSelectionSim:
        network = network_for_split(cfg, split, splits)
        try:
            return ModelSelectionSim(
                pool, network, num_envs=num_envs, sla_range_ms=sla_range, **sim_args
            )
        except (TypeError, SimulationError) as e:
            raise ConfigError(f"sim: {e}") from None

    return TrainingSetup(
        agent, scenario_sim("train"), seed, requests, log_every, miss_penalty,
        lambda: scenario_sim("val"), splits.val[0],
    )  # fmt: skip


def decision_penalties(cfg: DictConfig) -> tuple[list[float], int]:
    """``train.decision_penalties`` (``[]``: none to choose) and ``train.penalty_requests``,
    checked."""
    cands = cfg.train.get("decision_penalties")
    if not cands:
        return [], 0
    lams = as_float_list(cands, "train.decision_penalties", positive=False)
    if any(not math.isfinite(x) for x in lams):
        raise ConfigError(f"train.decision_penalties must be finite numbers >= 0, got {lams}")
    n = as_int(cfg.train.get("penalty_requests", 384_000), "train.penalty_requests")
    return lams, n


def penalty_tie_tolerance(cfg: DictConfig) -> float:
    """``train.penalty_tie_tolerance``, checked: a finite number >= 0."""
    key = "train.penalty_tie_tolerance"
    tols = as_float_list(cfg.train.get("penalty_tie_tolerance", 0.0), key, positive=False)
    if len(tols) != 1 or not math.isfinite(tols[0]):
        raise ConfigError(f"{key} must be one finite number >= 0 (0.0005 = 0.05 points)")
    return tols[0]


def pick_penalty(table: pd.DataFrame, tol: float) -> float:
    """The chosen penalty of a validation ``table`` (``decision_penalty``,
    ``val_effective_accuracy``, ``val_attainment``): among the candidates whose effective
    accuracy is within ``tol`` of the best (tied), the one of highest attainment (then the
    higher effective accuracy, then the smaller penalty)."""
    best = float(table.val_effective_accuracy.max())
    tied = table[table.val_effective_accuracy >= best - tol]
    top = tied.sort_values(
        ["val_attainment", "val_effective_accuracy", "decision_penalty"],
        ascending=[False, False, True],
    ).iloc[0]
    return float(top.decision_penalty)


def _validation_run(
    ts: TrainingSetup, agent: LearnedPolicy, lam: float, n: int, bar: Any
) -> dict[str, float]:
    """Effective accuracy and attainment of ``agent`` deciding with penalty ``lam`` on ``n``
    requests of the validation stream."""
    agent.set_decision_penalty(lam)
    sim = ts.val_sim()
    sim.reset(ts.val_seed)  # the same validation stream for every candidate
    eff = met = seen = 0.0
    while seen < n:
        o = sim.step(agent.select(sim.obs))
        eff += float((o.accuracy * o.met).sum())
        met += float(o.met.sum())
        seen += o.met.size
        bar.update(o.met.size)
    return {
        "decision_penalty": lam,
        "val_effective_accuracy": eff / seen,
        "val_attainment": met / seen,
        "requests": seen,
    }


def choose_decision_penalty(
    cfg: DictConfig,
    ts: TrainingSetup,
    agent: LearnedPolicy,
    out_dir: Path,
    progress: bool = True,
) -> pd.DataFrame | None:
    """Choose the shipped decision penalty (``(A + penalty)·P(met)``, see
    :meth:`~modi.agents.bandits.LearnedPolicy.set_decision_penalty`) among
    ``train.decision_penalties`` on the *validation* split (the same validation stream for
    every candidate; the mixture's, for a mixture): the highest effective accuracy, where
    candidates within ``train.penalty_tie_tolerance`` of it are tied and the one of highest
    attainment wins (:func:`pick_penalty`); set it on the agent and write
    ``decision_penalty.csv``. ``None`` (nothing chosen) when the list is empty or the
    agent is not a bandit ranking by ``P(met)`` (SB3 actors)."""
    lams, n = decision_penalties(cfg)
    if not lams:
        return None
    tol = penalty_tie_tolerance(cfg)
    if agent.kind not in MIXTURE_AGENTS:  # SB3 actors decide without P(met): nothing to choose
        log.info("decision penalty: %s does not rank by P(met); kept %g", agent.kind,
                 agent.miss_penalty)  # fmt: skip
        return None
    bar = tqdm(total=n * len(lams), desc="decision penalty (validation)", unit="req",
               disable=not progress)  # fmt: skip
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small batches: one thread is faster than a contended pool
    try:
        rows = [_validation_run(ts, agent, lam, n, bar) for lam in lams]
    finally:
        torch.set_num_threads(threads)
        bar.close()
    table = pd.DataFrame(rows)
    best = pick_penalty(table, tol)
    table["tied"] = table.val_effective_accuracy >= table.val_effective_accuracy.max() - tol
    table["chosen"] = table.decision_penalty == best
    agent.set_decision_penalty(best)
    table.to_csv(out_dir / "decision_penalty.csv", index=False)
    log.info(
        "decision penalty %g chosen on validation (effective accuracy / attainment %s; "
        "tied within %g)", best,
        ", ".join(f"{r.decision_penalty:g}: {100 * r.val_effective_accuracy:.3f} / "
                  f"{100 * r.val_attainment:.2f} %" for r in table.itertuples()),
        tol,
    )  # fmt: skip
    return table


def train(cfg: DictConfig, out_dir: Path, progress: bool = True) -> dict[str, float]:
    """Train, evaluate, track and export as ``cfg`` says; returns summary metrics."""
    ts = prepare_training(cfg)
    agent, sim, seed, requests = ts.agent, ts.sim, ts.seed, ts.requests
    log_every, miss_penalty = ts.log_every, ts.miss_penalty
    out_dir.mkdir(parents=True, exist_ok=True)
    tr = cfg.tracking
    tracking = str(tr.get("uri")) != "disabled"
    tags = {"agent": agent.name, "scenario": str(cfg.get("scenario", "")), "seed": str(seed)}
    if tracking:
        from modi.experiments.tracking import mlflow_run

        ctx: Any = mlflow_run(
            tr.get("uri"),
            str(tr.experiment),
            run_name=f"{agent.name}-{cfg.get('scenario', '')}-s{seed}",
            params=OmegaConf.to_container(cfg, resolve=True),  # type: ignore[arg-type]
            tags=tags,
            resume_run_id=cfg.get("resume"),
        )
    else:
        ctx = nullcontext(None)
    with ctx as run:
        mlflow = _mlflow() if tracking else None
        run_id = run.info.run_id if run is not None else ""
        done = 0
        if cfg.get("resume"):
            agent, done = _resume(mlflow, str(cfg.resume), out_dir)
            agent.name = tags["agent"]
            agent.log_every = log_every
        ckpt = out_dir / CHECKPOINT

        def on_chunk(seen: int, row: dict[str, float]) -> None:
            if mlflow is not None:
                mlflow.log_metrics({f"train_{k}": v for k, v in row.items()}, step=done + seen)
            agent.save(ckpt)
            (out_dir / "checkpoint.json").write_text(json.dumps({"requests_done": done + seen}))
            if mlflow is not None:
                mlflow.log_artifact(str(ckpt), "checkpoint")
                mlflow.log_artifact(str(out_dir / "checkpoint.json"), "checkpoint")

        remaining = max(0, requests - done)
        curve = None
        logs = cfg.train.get("from_logs")
        if logs:
            agent = _from_logs(cfg, logs, miss_penalty, seed)
            remaining = 0
        if remaining:
            # a MixtureSim has the interface the bandits' online training uses
            stream = cast(ModelSelectionSim, sim)
            hist = agent.fit(stream, remaining, seed + done, progress=progress, callback=on_chunk)
            if isinstance(sim, MixtureSim):
                _log_mixture(sim, out_dir)
            curve = pd.DataFrame(hist.rows())
            curve["requests"] += done
            curve.to_csv(out_dir / "training_curve.csv", index=False)
        pen = None if logs else choose_decision_penalty(cfg, ts, agent, out_dir, progress)
        if pen is not None and mlflow is not None:
            mlflow.log_metric("decision_penalty", agent.miss_penalty)
        policy_path = agent.save(out_dir / "policy.pt")
        # The learned row is the exported selector as a server runs it (shipped defaults).
        onnx_path = out_dir / "selector.onnx"
        served = served_from_policy(agent, onnx_path, run_id=run_id or None)
        val_res, results, summary = evaluate_learned(cfg, served, out_dir, progress)
        compat = learned_vs_modipick(results, agent.name)
        compat.to_csv(out_dir / "learned_vs_modipick.csv", index=False)
        if curve is not None:
            plots.training_curve(
                curve,
                out_dir / "training_curve.png",
                agent.name,
                references=_references(results, summary),
            )
        metrics: dict[str, float] = {}
        mine = results[results.policy == agent.name]
        metrics["eval_effective_accuracy"] = float(mine.effective_accuracy.mean())
        metrics["eval_attainment"] = float(mine.attainment.mean())
        metrics["val_effective_accuracy"] = float(
            val_res[val_res.policy == agent.name].effective_accuracy.mean()
        )
        rule = str(summary.best_rule.iloc[0])
        metrics["eval_best_rule_effective_accuracy"] = float(summary.best_rule_eff_acc.mean())
        metrics["eval_diff_points_mean"] = float(100 * summary["diff"].mean())
        metrics["eval_diff_lo_points_min"] = float(100 * summary.diff_lo.min())
        metrics["eval_shield_rate"] = float(summary.shield_rate.mean())
        mp = results[results.policy == "modipick"]
        if not mp.empty:
            metrics["eval_modipick_effective_accuracy"] = float(mp.effective_accuracy.mean())
        gc = summary.gap_closed.dropna()
        if not gc.empty:
            metrics["eval_gap_closed_mean"] = float(gc.mean())
        if mlflow is not None:
            mlflow.log_metrics(metrics)
            mlflow.set_tags({"best_rule": rule})
            for _, r in summary.iterrows():
                s = int(r.sla_ms)
                mlflow.log_metric(f"eval_diff_points_sla{s}", float(100 * r["diff"]))
                mlflow.log_metric(f"eval_eff_acc_sla{s}", float(r.learned_eff_acc))
            mlflow.log_artifact(str(policy_path), "policy")
            for f in sorted(out_dir.glob("*.csv")) + sorted(out_dir.glob("*.png")):
                mlflow.log_artifact(str(f), "results")
            if cfg.get("export"):
                _register(
                    onnx_path,
                    tr,
                    metrics["val_effective_accuracy"],
                    _val_key(cfg),
                )
    log.info("run folder %s", out_dir)
    sys.stdout.write(
        format_table(results)
        + f"\n\n{agent.name} (as served) vs the best rule on validation ({rule}), test split:\n"
        + format_summary(summary)
        + "\n"
    )
    return metrics


def _log_mixture(sim: MixtureSim, out_dir: Path) -> None:
    """Write the mixture's episodes (family, RTT scale, pool) to ``mixture_episodes.csv``."""
    eps = pd.DataFrame(sim.episodes, columns=["family", "rtt_scale", "pool"])
    eps.to_csv(out_dir / "mixture_episodes.csv", index=False)
    counts = eps.groupby("family").size().to_dict()
    log.info("trained on a mixture of %d episodes: %s", len(eps), counts)


def _from_logs(cfg: DictConfig, logs: Any, miss_penalty: float, seed: int) -> LearnedPolicy:
    """A linear bandit trained offline from decision logs (``train.from_logs``: paths of
    ``modi-serve --decision-log`` files), IPS-weighted (:func:`modi.agents.offline.train_from_log`),
    with the agent config's settings; it is then exported and evaluated like an online one."""
    from modi.agents.offline import OfflineTrainingError, train_from_log
    from modi.runtime.decision_log import DecisionLogError

    paths = [str(logs)] if isinstance(logs, str) else [str(x) for x in logs]
    node = cfg.agent
    kind = {"LinUCB": "linucb", "LinearThompson": "lints"}.get(
        str(node.get("_target_", "")).rsplit(".", 1)[-1]
    )
    if kind is None:
        raise ConfigError(
            f"train.from_logs trains linear bandits only (agent=linucb or agent=lints), "
            f"got agent {node.get('name')!r}"
        )
    try:
        agent = train_from_log(
            paths,
            kind=kind,
            alpha=float(node.get("alpha", 0.5)),
            ridge=float(node.get("ridge", 1.0)),
            width_ms=float(node.get("width_ms", 8.0)),
            miss_penalty=miss_penalty,
            seed=seed,
        )
    except (OfflineTrainingError, DecisionLogError, OSError) as e:
        raise ConfigError(f"train.from_logs: {e}") from None
    agent.name = str(node.get("name", kind))
    log.info("trained %s offline from %d decision log(s)", agent.name, len(paths))
    return agent


def _references(results: pd.DataFrame, summary: pd.DataFrame) -> dict[str, float]:
    """Reference lines of the training curve: test means over the sweep."""
    refs = {f"best rule ({summary.best_rule.iloc[0]})": float(summary.best_rule_eff_acc.mean())}
    for name in ("modipick", "informed_ceiling", "oracle"):
        r = results[results.policy == name]
        if not r.empty:
            refs[name.replace("_", " ")] = float(r.effective_accuracy.mean())
    return refs


def _val_key(cfg: DictConfig) -> str:
    """What makes two runs' validation scores comparable (scenario and validation streams)."""
    doc = {
        "scenario": str(cfg.get("scenario", "")),
        "val": OmegaConf.to_container(cfg.splits, resolve=True),
        "sla_ms": list(cfg.eval.sla_ms),
        "n": int(cfg.eval.val_n_requests),
        "pool": OmegaConf.to_container(cfg.pool, resolve=True),
        "network": OmegaConf.to_container(cfg.network, resolve=True),
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _register(onnx_path: Path, tr: DictConfig, val_score: float, val_key: str) -> None:
    """Register the selector as the ``challenger``; move ``@champion`` to it only when it beats
    the current champion on the same validation streams (or there is none)."""
    name = tr.get("registered_model")
    if not name:
        log_to_mlflow(onnx_path, None, alias=None)
        return
    challenger = str(tr.get("challenger_alias") or "challenger")
    reg = log_to_mlflow(onnx_path, name, alias=challenger)
    from mlflow import MlflowClient

    client = MlflowClient()
    client.set_model_version_tag(name, reg.version, "val_effective_accuracy", repr(val_score))
    client.set_model_version_tag(name, reg.version, "val_key", val_key)
    champion = str(tr.get("alias") or "champion")
    try:
        current = client.get_model_version_by_alias(name, champion)
    except Exception:  # MlflowException: no such alias yet
        current = None
    if current is None:
        client.set_registered_model_alias(name, champion, reg.version)
        log.info("%s version %s is the first %s", name, reg.version, champion)
        return
    tags = current.tags or {}
    if tags.get("val_key") != val_key:
        log.info(
            "%s@%s (version %s) was validated on other streams: it stays %s; this run is "
            "@%s (version %s)",
            name, champion, current.version, champion, challenger, reg.version,
        )  # fmt: skip
        return
    old = float(tags.get("val_effective_accuracy", "nan"))
    if val_score > old:
        client.set_registered_model_alias(name, champion, reg.version)
        log.info(
            "%s version %s beats @%s on validation (%.4f > %.4f): now @%s",
            name, reg.version, champion, val_score, old, champion,
        )  # fmt: skip
    else:
        log.info(
            "%s version %s does not beat @%s on validation (%.4f <= %.4f): stays @%s",
            name, reg.version, champion, val_score, old, challenger,
        )  # fmt: skip


def _mlflow() -> Any:
    import mlflow

    return mlflow


def _resume(mlflow: Any, run_id: str, out_dir: Path) -> tuple[LearnedPolicy, int]:
    if mlflow is None:
        raise ConfigError("resume needs MLflow tracking (tracking=local or a tracking.uri)")
    try:
        local = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="checkpoint"))
    except Exception as e:  # MlflowException: no such artifact
        raise ConfigError(
            f"resume={run_id}: the run has no checkpoint to resume from ({e})"
        ) from None
    agent = load_learned(local / CHECKPOINT)
    done = int(json.loads((local / "checkpoint.json").read_text())["requests_done"])
    log.info("resuming run %s after %d requests", run_id, done)
    return agent, done


@hydra.main(version_base="1.3", config_path="pkg://modi.conf", config_name="train")
def main(cfg: DictConfig) -> float:
    """Hydra entry point; returns the learned selector's mean evaluation effective accuracy."""
    if (cfg.get("env") or {}).get("kind") == "offload":  # modi-train env=offload
        from modi.experiments.train_offload import offload_main

        return offload_main(cfg)
    out = Path(HydraConfig.get().runtime.output_dir)
    try:
        metrics = train(cfg, out)
    except ConfigError as e:
        log.error("%s", e)
        sys.exit(2)
    return metrics["eval_effective_accuracy"]


if __name__ == "__main__":
    main()
