"""``modi-compare``: every policy on the same request streams over SLA and CV sweeps.

Writes ``results.csv`` (one row per policy × sweep point), ``usage.csv`` (requests per policy,
point and model) and the figures into the run's output directory, and prints a table.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import pandas as pd
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from modi.agents.baselines import POLICY_NAMES, make_policy
from modi.agents.evaluation import Rollout, rollout
from modi.agents.protocol import Policy
from modi.envs.pools import ModelPool
from modi.envs.simulator import ModelSelectionSim
from modi.experiments import plots
from modi.experiments.common import ConfigError, as_float_list, as_int, instantiate_node
from modi.experiments.splits import SPLITS, Splits, network_for_split, stream_key
from modi.experiments.stats import mean_ci

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
    "effective_accuracy_lo",
    "effective_accuracy_hi",
    "attainment_lo",
    "attainment_hi",
    "split",
    "n_seeds",
    "shield_rate",
]


#: Rule families tuned on validation: policy name -> (policy built, config key of its grid).
TUNED_RULES: dict[str, str] = {
    "modipick_tuned": "modipick",
    "mdinference_tuned": "mdinference",
    "calibrated_greedy": "calibrated_greedy",
    "model_switching": "model_switching",
    "calibrated_greedy_queue": "calibrated_greedy_queue",
}
#: Rules that read the server's queue and take its number of workers (``sim.workers``).
WORKER_RULES: tuple[str, ...] = ("calibrated_greedy", "model_switching", "calibrated_greedy_queue")


def sim_workers(cfg: DictConfig) -> int:
    """``sim.workers`` of ``cfg`` (1 when unset)."""
    sim = cfg.get("sim")
    w = sim.get("workers") if sim is not None else None
    return int(w) if w else 1


KNOWN_POLICIES: tuple[str, ...] = (*POLICY_NAMES, "modipick_tuned", "mdinference_tuned")


def _ev(cfg: DictConfig, key: str, default: Any = None) -> tuple[Any, str]:
    """An evaluation setting and its name: ``eval.<key>`` when the config has an ``eval``
    node holding it (``modi-compare eval.n_requests=...``, the keys of ``modi-train``), else the
    top-level ``<key>`` (the older spelling, kept: the ``eval`` node interpolates it)."""
    node = cfg.get("eval")
    if isinstance(node, DictConfig) and key in node:
        return node.get(key), f"eval.{key}"
    return cfg.get(key, default), key


def _policies(cfg: DictConfig) -> list[str]:
    value, key = _ev(cfg, "policies")
    names = list(value or [])
    if not names:
        raise ConfigError(f"{key} must list at least one policy")
    unknown = [n for n in names if n not in KNOWN_POLICIES]
    if unknown:
        raise ConfigError(
            f"{key}: unknown policy {unknown}; expected names from {list(KNOWN_POLICIES)}"
        )
    return names


@dataclass
class Evaluation:
    """What :func:`evaluate_points` measured.

    ``units``: one row per policy × point × seed × stream (the independent units the
    intervals are computed over); ``results``: one row per policy × point with 95 % intervals;
    ``usage``: requests per policy, point and model.
    """

    units: pd.DataFrame
    results: pd.DataFrame
    usage: pd.DataFrame


@dataclass
class EvalSetup:
    """Everything that defines the streams of an evaluation (see :func:`eval_setup`)."""

    scenario: str
    split: str
    seeds: tuple[int, ...]
    slas: list[float]
    cvs: list[float] | None
    n_requests: int
    streams: int
    splits: Splits
    sim_args: dict[str, Any] = field(default_factory=dict)


def eval_setup(
    cfg: DictConfig, split: str | None = None, n_requests: int | None = None
) -> EvalSetup:
    """Read and check the evaluation settings of a ``modi-compare``-style config.

    ``split`` given here (e.g. ``"val"`` for tuning) takes that split's own seeds, whatever
    the config's ``seeds`` say (those are the reported evaluation's)."""
    # the training seeds of a comparison are unknown (a trained selector brings its own)
    splits = Splits.from_cfg(cfg, train_seeds=())
    explicit = split is not None
    split_cfg, split_key = _ev(cfg, "split")
    split = str(split or split_cfg or "test")
    if split not in SPLITS:
        raise ConfigError(f"{split_key} must be one of {list(SPLITS)}, got {split!r}")
    seeds_cfg, seeds_key = _ev(cfg, "seeds")
    seed_cfg, seed_key = _ev(cfg, "seed")
    if explicit:
        seeds = splits.seeds(split)
    elif seeds_cfg is not None:
        seeds = tuple(as_int(s, seeds_key, minimum=0) for s in seeds_cfg)
    elif seed_cfg is not None:
        seeds = (as_int(seed_cfg, seed_key, minimum=0),)
    else:
        seeds = splits.seeds(split)
    if not seeds:
        raise ConfigError(f"{seeds_key} must list at least one seed")
    other = {s for name in SPLITS if name != split for s in splits.seeds(name)}
    if split != "train" and set(seeds) & other:
        raise ConfigError(
            f"{seeds_key}: seeds {sorted(set(seeds) & other)} of the {split} evaluation belong "
            "to another split (splits.*.seeds); evaluate on seeds nobody trained or tuned on"
        )
    sim_args: dict[str, Any] = OmegaConf.to_container(cfg.get("sim", {}), resolve=True)  # type: ignore[assignment]
    slas, sla_key = _ev(cfg, "sla_ms")
    cvs, cv_key = _ev(cfg, "cv")
    n_cfg, n_key = _ev(cfg, "n_requests")
    streams, streams_key = _ev(cfg, "streams_per_point", 10)
    return EvalSetup(
        scenario=str(cfg.get("scenario", "")),
        split=split,
        seeds=seeds,
        slas=as_float_list(slas, sla_key),
        cvs=None if cvs is None else as_float_list(cvs, cv_key, positive=False),
        n_requests=as_int(n_requests if n_requests is not None else n_cfg, n_key),
        streams=as_int(streams, streams_key),
        splits=splits,
        sim_args=sim_args,
    )


def _point_sims(
    cfg: DictConfig, pool: ModelPool, setup: EvalSetup
) -> list[tuple[float, float | None, ModelSelectionSim]]:
    """One simulator per sweep point (its streams all at that point's SLA and CV)."""
    shared = None if setup.cvs is not None else network_for_split(cfg, setup.split, setup.splits)
    out = []
    for sla in setup.slas:
        for cv in setup.cvs if setup.cvs is not None else [None]:
            net = (
                shared
                if cv is None
                else network_for_split(cfg, setup.split, setup.splits, cv=[cv] * setup.streams)
            )
            assert net is not None
            try:
                sim = ModelSelectionSim(
                    pool, net, num_envs=setup.streams, sla_ms=sla, **setup.sim_args
                )
            except TypeError as e:
                raise ConfigError(f"sim: {e}") from None
            out.append((sla, cv, sim))
    return out


def evaluate_points(
    cfg: DictConfig,
    policies: Sequence[tuple[str, Any]],
    setup: EvalSetup,
    pool: ModelPool,
    progress: bool = True,
    desc: str = "",
) -> Evaluation:
    """Run every policy on every sweep point and seed of ``setup``: the stream of a point is
    :func:`~modi.experiments.splits.stream_key` ``(scenario, split, seed, SLA[, CV])``, the
    same for every policy."""
    steps = math.ceil(setup.n_requests / setup.streams)
    sims = _point_sims(cfg, pool, setup)
    units: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    usage_rows: list[dict[str, Any]] = []
    total = len(policies) * len(sims) * len(setup.seeds)
    bar = tqdm(total=total, desc=desc or f"{setup.scenario} {setup.split}", disable=not progress)
    for name, policy in policies:
        for sla, cv, sim in sims:
            parts = []
            fired = decided = 0
            for seed in setup.seeds:
                key = stream_key(setup.scenario, setup.split, seed, sla, cv)
                r = rollout(policy, sim, steps, key)
                parts.append(r)
                fired += int(getattr(policy, "shield_firings", 0))
                decided += int(getattr(policy, "decisions", 0))
                eff = (r.accuracy * r.met).mean(axis=0)
                att = r.met.mean(axis=0)
                acc = r.accuracy.mean(axis=0)
                for j in range(sim.num_envs):
                    units.append(
                        {
                            "scenario": setup.scenario,
                            "policy": name,
                            "sla_ms": sla,
                            "cv": cv,
                            "split": setup.split,
                            "seed": seed,
                            "stream": j,
                            "n_requests": steps,
                            "effective_accuracy": float(eff[j]),
                            "attainment": float(att[j]),
                            "accuracy": float(acc[j]),
                        }
                    )
                bar.update(1)
            whole = Rollout.concat(parts)
            mine = units[-len(parts) * sim.num_envs :]
            _e_m, e_lo, e_hi = mean_ci([u["effective_accuracy"] for u in mine])
            _a_m, a_lo, a_hi = mean_ci([u["attainment"] for u in mine])
            row = {
                "scenario": setup.scenario,
                "policy": name,
                "sla_ms": sla,
                "cv": cv,
                "seed": setup.seeds[0],
                "split": setup.split,
                "n_seeds": len(setup.seeds),
            } | whole.summary()
            row |= {
                "effective_accuracy_lo": e_lo,
                "effective_accuracy_hi": e_hi,
                "attainment_lo": a_lo,
                "attainment_hi": a_hi,
            }
            row["shield_rate"] = fired / decided if decided else math.nan
            rows.append(row)
            counts = np.bincount(whole.model.reshape(-1), minlength=len(pool))
            for k, c in enumerate(counts):
                if c:
                    usage_rows.append(
                        {
                            "scenario": setup.scenario,
                            "policy": name,
                            "sla_ms": sla,
                            "cv": cv,
                            "model": pool.ids[k],
                            "requests": int(c),
                            "fraction": c / whole.model.size,
                        }
                    )
    bar.close()
    return Evaluation(
        pd.DataFrame(units), pd.DataFrame(rows)[RESULT_COLUMNS], pd.DataFrame(usage_rows)
    )


def build_policies(
    cfg: DictConfig,
    names: Sequence[str],
    pool: ModelPool,
    setup: EvalSetup,
    progress: bool = True,
) -> tuple[list[tuple[str, Any]], dict[str, dict[str, Any]]]:
    """The named policies, the tuned ones tuned on validation; returns them and the chosen
    parameters per tuned policy (see :mod:`modi.experiments.tuning`)."""
    from modi.experiments.tuning import explicit_args, tune_rule

    policy_args = cfg.get("policy_args") or {}
    out: list[tuple[str, Any]] = []
    chosen: dict[str, dict[str, Any]] = {}
    for n in names:
        node = policy_args.get(n) or {}
        args: dict[str, Any] = dict(
            OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node  # type: ignore[arg-type]
        )
        if n in TUNED_RULES and not explicit_args(n, args):
            params, _ = tune_rule(cfg, n, pool, setup, progress=False)
            chosen[n] = params
            args = {**args, **params}
        elif (
            n in ("calibrated_greedy", "model_switching")
            and "quantile" in args
            and ("download_ms" not in args)
        ):
            from modi.experiments.tuning import download_args

            q = float(args.pop("quantile"))
            args.update(download_args(cfg, pool, setup, q))
        base = TUNED_RULES.get(n, n)
        if base in WORKER_RULES:
            args.setdefault("workers", sim_workers(cfg))
        try:
            pol = make_policy(base, profile_mu_ms=pool.mean_ms, **_strip(args))
        except (TypeError, ValueError) as e:
            raise ConfigError(f"policy_args.{n}: {e}") from None
        pol.name = n
        out.append((n, pol))
    return out, chosen


def _strip(args: dict[str, Any]) -> dict[str, Any]:
    """Constructor arguments only (tuning bookkeeping such as ``quantile`` removed)."""
    return {k: v for k, v in args.items() if k not in ("quantile",)}


def run_compare(
    cfg: DictConfig,
    out_dir: Path,
    progress: bool = True,
    learned: Mapping[str, Any] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run the comparison described by ``cfg``; write CSVs and figures into ``out_dir``.

    ``learned`` adds already-built policies (trained selectors) under the given names; they run
    on the very same request streams as the baselines. Writes ``results.csv`` (with 95 %
    intervals), ``units.csv`` (per stream, for paired intervals), ``usage.csv`` and
    ``tuned.json`` (the parameters the tuned rules chose on validation).
    """
    names = _policies(cfg)
    extra = dict(learned or {})
    extra.update(load_learned_policies(cfg.get("learned"), out_dir))
    clash = sorted(set(extra) & set(names))
    if clash:
        raise ConfigError(f"learned: policy names {clash} clash with baselines in 'policies'")
    setup = eval_setup(cfg)
    pool = instantiate_node(cfg, "pool")
    if not isinstance(pool, ModelPool):
        raise ConfigError(f"pool must build a ModelPool, got {type(pool).__name__}")
    todo, chosen = build_policies(cfg, names, pool, setup, progress)
    todo += list(extra.items())
    ev = evaluate_points(cfg, todo, setup, pool, progress, desc=f"compare {setup.scenario}")
    out_dir.mkdir(parents=True, exist_ok=True)
    ev.results.to_csv(out_dir / "results.csv", index=False)
    ev.units.to_csv(out_dir / "units.csv", index=False)
    ev.usage.to_csv(out_dir / "usage.csv", index=False)
    (out_dir / "tuned.json").write_text(json.dumps(chosen, indent=2, sort_keys=True))
    _figures(cfg, ev.results, ev.usage, out_dir, setup.scenario, getattr(pool, "name", ""))
    log.info("wrote %s and %s", out_dir / "results.csv", out_dir / "usage.csv")
    return ev.results, ev.usage


def load_learned_policies(spec: Any, out_dir: Path | None = None) -> dict[str, Policy]:
    """Trained selectors named in the config key ``learned``, *as served*: exported ``.onnx``
    files, saved-policy paths (``policy.pt``: exported to ``out_dir/learned/`` first) or MLflow
    run ids (``runs:/<id>`` or a bare 32-hex id; the run's ``policy/policy.pt``). Each runs
    through :class:`modi.runtime.Selector` with its shipped defaults
    (:class:`~modi.agents.served.ServedPolicy`): what a server would run is what is compared."""
    if not spec:
        return {}
    items = [spec] if isinstance(spec, str) else list(spec)
    from modi.agents.bandits import load_learned
    from modi.agents.served import ServedPolicy, served_from_policy
    from modi.runtime import SelectorLoadError

    out: dict[str, Policy] = {}
    for item in items:
        path = resolve_policy_path(str(item))
        try:
            if path.suffix == ".onnx":
                pol: Any = ServedPolicy(path)
            else:
                learned = load_learned(path)
                folder = (out_dir or Path(".")) / "learned"
                onnx_path = folder / f"{learned.name}_{len(out)}.onnx"
                pol = served_from_policy(learned, onnx_path)
        except (OSError, ValueError, SelectorLoadError) as e:
            raise ConfigError(f"learned: cannot load {item!r}: {e}") from None
        name = base = pol.name
        i = 2
        while name in out:
            name, i = f"{base}_{i}", i + 1
        pol.name = name
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
    cfg: DictConfig,
    results: pd.DataFrame,
    usage: pd.DataFrame,
    out: Path,
    scenario: str,
    pool_name: str = "",
) -> None:
    figures = list(cfg.get("figures") or [])
    focus = str(cfg.get("usage_policy", "modipick"))
    focus_usage = usage[usage.policy == focus] if focus in set(usage.policy) else usage
    pool_name = pool_name or str(cfg.pool.get("name", ""))
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
