"""``modi-train``: train a learned selector on a scenario, compare it with the baselines and the
oracle on an evaluation stream seeded differently from training, track the run in MLflow and
export the selector to ONNX.

``train(cfg, out_dir)`` is a plain function (tests and sweeps call it); ``main`` is the thin
Hydra wrapper. Writes into the run folder: ``policy.pt``, ``training_curve.csv`` and ``.png``,
``results.csv`` and ``usage.csv`` (the same files as ``modi-compare``), ``learned_vs_modipick.csv``
and, with ``export=true``, ``selector.onnx``.
"""

from __future__ import annotations

import json
import logging
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import hydra
import pandas as pd
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from modi.agents.bandits import LearnedPolicy, load_learned
from modi.agents.export import export_onnx, log_to_mlflow
from modi.envs.pools import ModelPool
from modi.envs.simulator import ModelSelectionSim, SimulationError
from modi.experiments import plots
from modi.experiments.common import ConfigError, as_float_list, as_int, instantiate_node
from modi.experiments.compare import format_table, run_compare

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"


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
    seed = as_int(cfg.seed, "seed", minimum=0)
    requests = as_int(cfg.train.requests, "train.requests")
    num_envs = as_int(cfg.train.num_envs, "train.num_envs")
    lo_hi = as_float_list(cfg.train.sla_range_ms, "train.sla_range_ms")
    if len(lo_hi) != 2 or lo_hi[0] > lo_hi[1]:
        raise ConfigError(f"train.sla_range_ms must be [low, high] with low <= high, got {lo_hi}")
    log_every = as_int(cfg.train.log_every, "train.log_every")
    as_int(cfg.eval.seed, "eval.seed", minimum=0)
    if int(cfg.eval.seed) == seed:
        raise ConfigError("eval.seed must differ from seed: evaluate on a stream not trained on")
    return seed, requests, (lo_hi[0], lo_hi[1]), num_envs, log_every


def _eval_cfg(cfg: DictConfig) -> DictConfig:
    """The ``modi-compare`` config of the evaluation."""
    ev = cfg.eval
    c = OmegaConf.create(
        {
            "scenario": cfg.get("scenario", ""),
            "policies": list(ev.policies),
            "learned": [],
            "policy_args": OmegaConf.to_container(cfg.get("policy_args") or {}),
            "sla_ms": list(ev.sla_ms),
            "cv": None,
            "n_requests": ev.n_requests,
            "streams_per_point": ev.streams_per_point,
            "seed": ev.seed,
            "figures": list(cfg.get("figures") or []),
            "usage_policy": cfg.get("usage_policy", "modipick"),
        }
    )
    for key in ("pool", "network", "sim"):
        c[key] = OmegaConf.to_container(cfg[key], resolve=True)
    return c


def train(cfg: DictConfig, out_dir: Path, progress: bool = True) -> dict[str, float]:
    """Train, evaluate, track and export as ``cfg`` says; returns summary metrics."""
    seed, requests, sla_range, num_envs, log_every = _validate(cfg)
    pool = instantiate_node(cfg, "pool")
    if not isinstance(pool, ModelPool):
        raise ConfigError(f"pool must build a ModelPool, got {type(pool).__name__}")
    network = instantiate_node(cfg, "network")
    sim_args: dict[str, Any] = OmegaConf.to_container(cfg.sim, resolve=True)  # type: ignore[assignment]
    miss_penalty = float(sim_args.get("miss_penalty", 0.0))
    agent = build_agent(cfg, miss_penalty, seed)
    agent.log_every = log_every
    try:
        sim = ModelSelectionSim(
            pool, network, num_envs=num_envs, sla_range_ms=sla_range, **sim_args
        )
    except (TypeError, SimulationError) as e:
        raise ConfigError(f"sim: {e}") from None
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
        if remaining:
            hist = agent.fit(sim, remaining, seed + done, progress=progress, callback=on_chunk)
            curve = pd.DataFrame(hist.rows())
            curve["requests"] += done
            curve.to_csv(out_dir / "training_curve.csv", index=False)
            plots.training_curve(curve, out_dir / "training_curve.png", agent.name)
        policy_path = agent.save(out_dir / "policy.pt")

        results, _ = run_compare(
            _eval_cfg(cfg), out_dir, progress=progress, learned={agent.name: agent}
        )
        summary = learned_vs_modipick(results, agent.name)
        summary.to_csv(out_dir / "learned_vs_modipick.csv", index=False)
        onnx_path = (
            export_onnx(agent, out_dir / "selector.onnx", run_id=run_id or None)
            if cfg.get("export")
            else None
        )

        metrics: dict[str, float] = {}
        mine = results[results.policy == agent.name]
        metrics["eval_effective_accuracy"] = float(mine.effective_accuracy.mean())
        metrics["eval_attainment"] = float(mine.attainment.mean())
        mp = results[results.policy == "modipick"]
        metrics["eval_modipick_effective_accuracy"] = float(mp.effective_accuracy.mean())
        metrics["eval_gap_closed_mean"] = float(summary.gap_closed.mean())
        if mlflow is not None:
            mlflow.log_metrics(metrics)
            for _, r in summary.iterrows():
                s = int(r.sla_ms)
                mlflow.log_metric(f"eval_gap_closed_sla{s}", float(r.gap_closed))
                mlflow.log_metric(f"eval_eff_acc_sla{s}", float(r[f"{agent.name}_eff_acc"]))
            mlflow.log_artifact(str(policy_path), "policy")
            for f in sorted(out_dir.glob("*.csv")) + sorted(out_dir.glob("*.png")):
                mlflow.log_artifact(str(f), "results")
            if onnx_path is not None:
                log_to_mlflow(onnx_path, tr.get("registered_model"), alias=tr.get("alias"))
    log.info("run folder %s", out_dir)
    sys.stdout.write(
        format_table(results) + "\n\n" + summary.round(3).to_string(index=False) + "\n"
    )
    return metrics


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
