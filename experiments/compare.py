"""``modi-compare``: every policy on the same request streams over SLA and CV sweeps.

Writes ``results.csv`` (one row per policy × sweep point), ``usage.csv`` (requests per policy,
point and model) and the figures into the run's output directory, and prints a table.
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import pandas as pd
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from modi.agents.baselines import POLICY_NAMES, make_policy
from modi.agents.evaluation import rollout
from modi.agents.protocol import ClairvoyantPolicy, Policy
from modi.envs.pools import ModelPool
from modi.envs.simulator import ModelSelectionSim
from modi.experiments import plots
from modi.experiments.common import ConfigError, as_float_list, as_int, instantiate_node

log = logging.getLogger(__name__)

RESULT_COLUMNS = [
    "scenario",
    "policy",
    "sla_ms",
    "cv",
    "seed",
    "n_requests",
    "attainment",
    "accuracy",
    "effective_accuracy",
    "latency_mean_ms",
    "latency_p50_ms",
    "latency_p95_ms",
    "latency_p99_ms",
    "latency_std_ms",
    "mean_reward",
]


def _policies(cfg: DictConfig) -> list[str]:
    names = list(cfg.get("policies") or [])
    if not names:
        raise ConfigError("policies must list at least one policy")
    unknown = [n for n in names if n not in POLICY_NAMES]
    if unknown:
        raise ConfigError(
            f"policies: unknown policy {unknown}; expected names from {list(POLICY_NAMES)}"
        )
    return names


def run_compare(
    cfg: DictConfig,
    out_dir: Path,
    progress: bool = True,
    learned: Mapping[str, Policy] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run the comparison described by ``cfg``; write CSVs and figures into ``out_dir``.

    ``learned`` adds already-built policies (trained selectors) under the given names; they run
    on the very same request streams as the baselines.
    """
    names = _policies(cfg)
    extra = dict(learned or {})
    extra.update(load_learned_policies(cfg.get("learned")))
    clash = sorted(set(extra) & set(names))
    if clash:
        raise ConfigError(f"learned: policy names {clash} clash with baselines in 'policies'")
    slas = as_float_list(cfg.sla_ms, "sla_ms")
    cvs = None if cfg.get("cv") is None else as_float_list(cfg.cv, "cv", positive=False)
    n_requests = as_int(cfg.n_requests, "n_requests")
    streams = as_int(cfg.get("streams_per_point", 10), "streams_per_point")
    seed = as_int(cfg.seed, "seed", minimum=0)
    pool = instantiate_node(cfg, "pool")
    if not isinstance(pool, ModelPool):
        raise ConfigError(f"pool must build a ModelPool, got {type(pool).__name__}")

    points = [(s, c) for s in slas for c in (cvs if cvs is not None else [None])]
    env_sla = np.repeat([p[0] for p in points], streams)
    if cvs is not None:
        env_cv = np.repeat([p[1] for p in points], streams)
        network = instantiate_node(cfg, "network", cv=env_cv.tolist())
    else:
        network = instantiate_node(cfg, "network")
    sim_args: dict[str, Any] = OmegaConf.to_container(cfg.get("sim", {}), resolve=True)  # type: ignore[assignment]
    try:
        sim = ModelSelectionSim(
            pool, network, num_envs=len(env_sla), sla_ms=env_sla.tolist(), **sim_args
        )
    except TypeError as e:
        raise ConfigError(f"sim: {e}") from None
    steps = math.ceil(n_requests / streams)
    policy_args = cfg.get("policy_args") or {}
    scenario = str(cfg.get("scenario", ""))

    rows: list[dict[str, Any]] = []
    usage_rows: list[dict[str, Any]] = []
    todo: list[tuple[str, Policy | ClairvoyantPolicy]] = [
        (n, make_policy(n, profile_mu_ms=pool.mean_ms, **dict(policy_args.get(n, {}) or {})))
        for n in names
    ]
    todo += list(extra.items())
    for name, policy in tqdm(todo, desc=f"compare {scenario}", disable=not progress):
        r = rollout(policy, sim, steps, seed)
        for j, (sla, cv) in enumerate(points):
            part = r.select_streams(slice(j * streams, (j + 1) * streams))
            rows.append(
                {"scenario": scenario, "policy": name, "sla_ms": sla, "cv": cv, "seed": seed}
                | part.summary()
            )
            counts = np.bincount(part.model.reshape(-1), minlength=len(pool))
            for k, c in enumerate(counts):
                if c:
                    usage_rows.append(
                        {
                            "scenario": scenario,
                            "policy": name,
                            "sla_ms": sla,
                            "cv": cv,
                            "model": pool.ids[k],
                            "requests": int(c),
                            "fraction": c / part.model.size,
                        }
                    )
    results = pd.DataFrame(rows)[RESULT_COLUMNS]
    usage = pd.DataFrame(usage_rows)
    out_dir.mkdir(parents=True, exist_ok=True)
    results.to_csv(out_dir / "results.csv", index=False)
    usage.to_csv(out_dir / "usage.csv", index=False)
    _figures(cfg, results, usage, out_dir, scenario)
    log.info("wrote %s and %s", out_dir / "results.csv", out_dir / "usage.csv")
    return results, usage


def load_learned_policies(spec: Any) -> dict[str, Policy]:
    """Trained policies named in the config key ``learned``: a list of saved-policy paths or
    MLflow run ids (``runs:/<id>`` or a bare 32-hex id; the run's ``policy/policy.pt``)."""
    if not spec:
        return {}
    items = [spec] if isinstance(spec, str) else list(spec)
    from modi.agents.bandits import load_learned

    out: dict[str, Policy] = {}
    for item in items:
        path = resolve_policy_path(str(item))
        try:
            pol = load_learned(path)
        except (OSError, ValueError) as e:
            raise ConfigError(f"learned: cannot load {item!r}: {e}") from None
        name = pol.name
        i = 2
        while name in out:
            name, i = f"{pol.name}_{i}", i + 1
        out[name] = pol
    return out


def resolve_policy_path(item: str) -> Path:
    """A saved-policy path, or the policy artifact of an MLflow run id."""
    p = Path(item)
    if p.is_file():
        return p
    run_id = item[len("runs:/") :].split("/")[0] if item.startswith("runs:/") else item
    if len(run_id) == 32 and all(c in "0123456789abcdef" for c in run_id):
        import mlflow

        from modi.experiments.tracking import resolve_uri

        try:
            local = mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path="policy", tracking_uri=resolve_uri(None)
            )
        except Exception as e:  # MlflowException: unknown run or artifact
            raise ConfigError(
                f"learned: MLflow run {run_id} has no policy artifact ({e})"
            ) from None
        files = sorted(Path(local).glob("*.pt"))
        if not files:
            raise ConfigError(f"learned: MLflow run {run_id} has no saved policy (*.pt)")
        return files[0]
    raise ConfigError(f"learned: {item!r} is neither a saved-policy file nor an MLflow run id")


def _figures(
    cfg: DictConfig, results: pd.DataFrame, usage: pd.DataFrame, out: Path, scenario: str
) -> None:
    figures = list(cfg.get("figures") or [])
    focus = str(cfg.get("usage_policy", "modipick"))
    focus_usage = usage[usage.policy == focus] if focus in set(usage.policy) else usage
    pool_name = cfg.pool.get("name", "")
    for fig in figures:
        if fig == "latency_accuracy":
            plots.latency_accuracy(
                results, out / "latency_accuracy.png", f"{scenario}, pool {pool_name}"
            )
        elif fig == "usage_sla":
            plots.usage(
                focus_usage, "sla_ms", out / "usage_sla.png", f"{focus}: model usage vs SLA"
            )
        elif fig == "cv":
            plots.cv_sweep(results, out / "cv_sweep.png", f"{scenario}: mean 50 ms, CV sweep")
        elif fig == "usage_cv":
            plots.usage(focus_usage, "cv", out / "usage_cv.png", f"{focus}: model usage vs CV")
        else:
            raise ConfigError(
                f"figures: unknown figure {fig!r}; "
                "expected latency_accuracy, usage_sla, cv or usage_cv"
            )


def format_table(results: pd.DataFrame) -> str:
    """A compact text table (percentages and milliseconds)."""
    t = results.copy()
    for c in ("attainment", "accuracy", "effective_accuracy"):
        t[c] = (100 * t[c]).round(1)
    for c in ("latency_mean_ms", "latency_p50_ms", "latency_p99_ms"):
        t[c] = t[c].round(1)
    cols = [
        "policy",
        "sla_ms",
        "cv",
        "attainment",
        "accuracy",
        "effective_accuracy",
        "latency_mean_ms",
        "latency_p99_ms",
    ]
    if t["cv"].isna().all():
        cols.remove("cv")
    return t[cols].to_string(index=False)


@hydra.main(version_base="1.3", config_path="pkg://modi.conf", config_name="compare")
def main(cfg: DictConfig) -> float:
    """Hydra entry point; returns the mean effective accuracy of the first policy."""
    out = Path(HydraConfig.get().runtime.output_dir)
    try:
        results, _ = run_compare(cfg, out)
    except (ConfigError, ValueError) as e:
        log.error("%s", e)
        sys.exit(2)
    print(format_table(results))
    print(f"\nresults: {out / 'results.csv'}")
    first = results[results.policy == results.policy.iloc[0]]
    return float(first.effective_accuracy.mean())


if __name__ == "__main__":
    main()
