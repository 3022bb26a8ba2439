"""``modi-train env=offload``: train, evaluate and export a learned *device* policy.

The device policy (:mod:`modi.agents.device_scorer`) is trained on a mixture of device tiers ×
networks × SLAs of ``modi/Offload-v0``, then evaluated per tier × network on *test* seeds that
differ from the training and validation seeds, beside every rule and ceiling on the same request
streams (common random numbers: the same seed gives every policy the same captures). Writes into
the run folder:

* ``results.csv`` — one row per (scenario, policy, SLA), the columns of ``modi-compare-offload``
  (means over the test seeds) plus ``n_seeds`` and the 95 % interval (t over seeds) of
  effective accuracy, attainment and energy (``*_lo``, ``*_hi``); the learned policy's row is
  ``policy = learned`` (the exported ONNX file's choices: parity is checked first);
* ``results_per_seed.csv`` — the same per test seed;
* ``paired.csv`` — per scenario × SLA: the best rule (highest mean effective accuracy on the
  test seeds, which favours the rule), learned − best rule with its paired 95 % interval, the
  energy difference, the gap to the oracle closed, and PieSlicer's gap closed;
* ``frontier.csv`` (+ ``frontier_<scenario>.png``) — the learned scorer under each energy weight
  of ``env.frontier.w_energy_per_j`` against the rules' (energy, effective accuracy) points;
* ``device_policy.onnx`` and ``device_policy.pt``; ``training.csv`` (loss per epoch).
"""

from __future__ import annotations

import logging
import math
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from modi.agents.device_scorer import (
    DeviceScorerError,
    DeviceScorerPolicy,
    export_device_onnx,
    train_device_scorer,
)
from modi.agents.offload_policies import (
    DEVICE_POLICY_NAMES,
    PieSlicer,
    PrepCeiling,
    make_device_policy,
    rollout_offload,
)
from modi.envs.catalog import load_preset
from modi.envs.offload import OffloadSim
from modi.envs.pools import ModelPool
from modi.experiments.common import ConfigError, as_float_list, as_int, instantiate_node
from modi.experiments.compare_offload import RESULT_COLUMNS, _server_policy
from modi.runtime import device_features as dfeat

log = logging.getLogger(__name__)

LEARNED = "learned"
#: Two-sided 97.5 % quantiles of Student's t by degrees of freedom (1..30; beyond: normal).
_T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip
CI_COLUMNS = ("effective_accuracy", "attainment", "energy_mj")


def t_interval(values: np.ndarray[Any, Any]) -> tuple[float, float, float]:
    """Mean and 95 % t interval of independent values (NaN interval for one value)."""
    v = np.asarray(values, dtype=np.float64)
    m = float(v.mean())
    if v.size < 2:
        return m, float("nan"), float("nan")
    t = _T975[v.size - 2] if v.size - 1 <= len(_T975) else 1.96
    h = t * float(v.std(ddof=1)) / math.sqrt(v.size)
    return m, m - h, m + h


def _names(node: DictConfig, key: str) -> list[str]:
    value = node.get(key)
    items = [value] if isinstance(value, str) else list(value or [])
    if not items or not all(isinstance(v, str) for v in items):
        raise ConfigError(f"env.{key} must be a name or a non-empty list of names, got {value!r}")
    return items


def _seeds(value: Any, key: str) -> list[int]:
    items = list(value) if isinstance(value, (list, tuple)) or OmegaConf.is_list(value) else []
    if len(items) < 1:
        raise ConfigError(f"{key} must be a non-empty list of seeds, got {value!r}")
    return [as_int(v, key, minimum=0) for v in items]


def _sim(
    env: DictConfig,
    device: str,
    network: str,
    pool: ModelPool,
    num_envs: int,
    objective: tuple[float, float],
    **kwargs: Any,
) -> OffloadSim:
    args: dict[str, Any] = OmegaConf.to_container(env.get("sim", {}), resolve=True)  # type: ignore[assignment]
    args = {k: v for k, v in args.items() if v is not None}
    table = env.get("radio") or {}
    radio = str(table.get(network, table.get("default", "wifi")))
    try:
        return OffloadSim(
            load_preset("device", device),
            load_preset("network", network),
            pool,
            num_envs=num_envs,
            radio=radio,
            energy_cost_per_j=objective[0],
            bandwidth_cost_per_mb=objective[1],
            **args,
            **kwargs,
        )
    except TypeError as e:
        raise ConfigError(f"env.sim: {e}") from None


def check_parity(
    policy: DeviceScorerPolicy, onnx_path: Path, sims: list[OffloadSim], n_obs: int, seed: int
) -> float:
    """Fraction of ``n_obs`` env observations (the policy's own rollouts on ``sims``, seed
    ``seed``) on which the ONNX file picks the same action as the trained policy."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    same = total = 0
    per_sim = max(1, math.ceil(n_obs / len(sims)))
    for i, sim in enumerate(sims):
        obs = sim.reset(seed + i)
        got = 0
        while got < per_sim:
            a = policy.select(obs)
            x = dfeat.option_features(obs)
            scores = sess.run(["scores"], {"options": x})[0]
            b = dfeat.option_actions(sim.num_local)[scores.argmax(axis=1)]
            take = min(per_sim - got, len(obs))
            same += int((a[:take] == b[:take]).all(axis=1).sum())
            total += take
            got += take
            sim.step(a)
            obs = sim.obs
    return same / total


class _OnnxPolicy:
    """The exported file as a device policy (what the evaluation rolls out)."""

    name = LEARNED
    server_policy: str | None = None  # the env's server policy, as in training

    def __init__(self, path: Path) -> None:
        import onnxruntime as ort

        self._sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def reset(self, num_envs: int, seed: int | None = None) -> None:
        """Deterministic."""

    def select(self, obs: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        """The ONNX scorer's argmax per row."""
        x = dfeat.option_features(obs)
        s = self._sess.run(["scores"], {"options": x})[0]
        big_l = dfeat.DeviceObsLayout.from_obs_dim(obs.shape[1]).num_models
        return dfeat.option_actions(big_l)[s.argmax(axis=1)]


def _rows(
    r: Any, sim: OffloadSim, meta: dict[str, Any], slas: list[float], streams: int
) -> list[dict[str, Any]]:
    out = []
    for j, sla in enumerate(slas):
        part = r.select_streams(slice(j * streams, (j + 1) * streams))
        out.append(meta | {"sla_ms": sla} | part.summary(sim.num_local))
    return out


def _aggregate(per_seed: pd.DataFrame) -> pd.DataFrame:
    keys = ["scenario", "device", "network", "policy", "server_policy", "sla_ms"]
    rows = []
    for k, g in per_seed.groupby(keys, sort=False):
        row = dict(zip(keys, k, strict=True))
        num = g.drop(columns=[*keys, "seed"]).mean(numeric_only=True).to_dict()
        row |= num
        row["seed"] = -1
        row["n_seeds"] = len(g)
        for c in CI_COLUMNS:
            _, lo, hi = t_interval(g[c].to_numpy())
            row[f"{c}_lo"], row[f"{c}_hi"] = lo, hi
        rows.append(row)
    cols = RESULT_COLUMNS + ["n_seeds"] + [f"{c}_{s}" for c in CI_COLUMNS for s in ("lo", "hi")]
    return pd.DataFrame(rows)[cols]


def paired_table(per_seed: pd.DataFrame, rules: list[str]) -> pd.DataFrame:
    """Learned − best rule per scenario × SLA with paired 95 % intervals (same seeds)."""
    out = []
    for (scen, sla), g in per_seed.groupby(["scenario", "sla_ms"], sort=False):
        piv = g.pivot_table(index="seed", columns="policy", values="effective_accuracy")
        en = g.pivot_table(index="seed", columns="policy", values="energy_mj")
        have = [r for r in rules if r in piv.columns]
        if LEARNED not in piv.columns or not have:
            continue
        best = max(have, key=lambda p: float(piv[p].mean()))
        d, lo, hi = t_interval((piv[LEARNED] - piv[best]).to_numpy())
        de, elo, ehi = t_interval((en[LEARNED] - en[best]).to_numpy())
        row: dict[str, Any] = {
            "scenario": scen,
            "sla_ms": sla,
            "best_rule": best,
            "best_rule_eff_acc": float(piv[best].mean()),
            "learned_eff_acc": float(piv[LEARNED].mean()),
            "diff": d,
            "diff_lo": lo,
            "diff_hi": hi,
            "best_rule_energy_mj": float(en[best].mean()),
            "learned_energy_mj": float(en[LEARNED].mean()),
            "energy_diff_mj": de,
            "energy_diff_lo": elo,
            "energy_diff_hi": ehi,
        }
        if "oracle" in piv.columns:
            gap = float(piv["oracle"].mean()) - row["best_rule_eff_acc"]
            row["oracle_eff_acc"] = float(piv["oracle"].mean())
            row["gap_closed_to_oracle"] = d / gap if gap > 1e-9 else float("nan")
        if "pieslicer" in piv.columns and "oracle" in piv.columns:
            ps = float(piv["pieslicer"].mean())
            gap = float(piv["oracle"].mean()) - ps
            row["pieslicer_eff_acc"] = ps
            row["pieslicer_gap_closed"] = (
                (row["learned_eff_acc"] - ps) / gap if gap > 1e-9 else float("nan")
            )
        out.append(row)
    return pd.DataFrame(out)


def dominated_by(frontier: pd.DataFrame) -> list[str]:
    """For each learned frontier point, the rules (same scenario and SLA) that strictly dominate
    it: at least its effective accuracy at no more energy, better in one of the two ("" if
    none); empty for the rules' own rows."""
    out = []
    for _, r in frontier.iterrows():
        if r.kind != "learned":
            out.append("")
            continue
        rules = frontier[
            (frontier.kind == "rule")
            & (frontier.scenario == r.scenario)
            & (frontier.sla_ms == r.sla_ms)
        ]
        dom = rules[
            (rules.effective_accuracy >= r.effective_accuracy)
            & (rules.energy_mj <= r.energy_mj)
            & ((rules.effective_accuracy > r.effective_accuracy) | (rules.energy_mj < r.energy_mj))
        ]
        out.append(";".join(dom.policy))
    return out


def _plot_frontier(df: pd.DataFrame, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for scen, g in df.groupby("scenario", sort=False):
        slas = sorted(g.sla_ms.unique())
        fig, axes = plt.subplots(1, len(slas), figsize=(4.2 * len(slas), 3.8), squeeze=False)
        for ax, sla in zip(axes[0], slas, strict=True):
            part = g[g.sla_ms == sla]
            lr = part[part.kind == "learned"].sort_values("energy_mj")
            ax.plot(lr.energy_mj, 100 * lr.effective_accuracy, "k-o", label="learned (w sweep)")
            for _, r in part[part.kind == "rule"].iterrows():
                ax.plot(r.energy_mj, 100 * r.effective_accuracy, "s", label=r.policy)
            ax.set(xscale="log", xlabel="device energy per request (mJ)", title=f"SLA {sla:g} ms")
            ax.set_ylabel("effective accuracy (%)")
        axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
        fig.suptitle(str(scen))
        fig.tight_layout()
        p = out_dir / f"frontier_{scen}.png"
        fig.savefig(p, dpi=100)
        plt.close(fig)
        paths.append(p)
    return paths


def run_offload_training(cfg: DictConfig, out_dir: Path) -> dict[str, float]:
    """Train, export, evaluate (test split) and track a device policy as ``cfg.env`` says;
    returns summary metrics (``eval_effective_accuracy`` is the learned policy's mean)."""
    env = cfg.env
    devices = _names(env, "devices")
    networks = _names(env, "networks")
    tr, ev = env.train, env.eval
    seed = as_int(tr.seed, "env.train.seed", minimum=0)
    streams = as_int(tr.streams, "env.train.streams")
    steps = as_int(tr.steps, "env.train.steps")
    rounds = as_int(tr.rounds, "env.train.rounds")
    sla_range = as_float_list(tr.sla_range_ms, "env.train.sla_range_ms")
    if len(sla_range) != 2 or sla_range[0] > sla_range[1]:
        raise ConfigError(f"env.train.sla_range_ms must be [low, high], got {sla_range}")
    slas = as_float_list(ev.sla_ms, "env.eval.sla_ms")
    test_seeds = _seeds(ev.test_seeds, "env.eval.test_seeds")
    val_seed = as_int(ev.validation_seed, "env.eval.validation_seed", minimum=0)
    fit_seed = as_int(ev.fit_seed, "env.eval.fit_seed", minimum=0)
    n_req = as_int(ev.requests_per_point, "env.eval.requests_per_point")
    per_point = as_int(ev.streams_per_point, "env.eval.streams_per_point")
    rules = [str(r) for r in ev.rules]
    ceilings = [str(r) for r in ev.ceilings]
    unknown = [p for p in rules + ceilings if p not in DEVICE_POLICY_NAMES]
    if unknown:
        raise ConfigError(
            f"env.eval: unknown policies {unknown}; expected {list(DEVICE_POLICY_NAMES)}"
        )
    objective = (float(env.objective.w_energy_per_j), float(env.objective.w_bytes_per_mb))
    weights = as_float_list(
        env.frontier.w_energy_per_j, "env.frontier.w_energy_per_j", positive=False
    )
    # the splits: training streams, validation, PieSlicer's fit and test seeds are disjoint
    n_sims = len(devices) * len(networks)
    train_seeds = {seed + 7919 * r + i for r in range(rounds) for i in range(n_sims)}
    used = {"validation": {val_seed + i for i in range(n_sims)}, "fit": {fit_seed}}
    for name, group in used.items():
        if group & train_seeds:
            raise ConfigError(
                f"env.eval: the {name} seeds overlap the training seeds "
                f"{sorted(group & train_seeds)}"
            )
    if len(set(test_seeds)) != len(test_seeds):
        raise ConfigError(f"env.eval.test_seeds has duplicates: {test_seeds}")
    clash = set(test_seeds) & (train_seeds | used["validation"] | used["fit"])
    if clash:
        raise ConfigError(
            f"env.eval.test_seeds {sorted(clash)} overlap training/validation/fit seeds"
        )
    pool = instantiate_node(cfg, "pool")
    if not isinstance(pool, ModelPool):
        raise ConfigError(f"pool must build a ModelPool, got {type(pool).__name__}")
    out_dir.mkdir(parents=True, exist_ok=True)

    tracking_cfg = cfg.get("tracking") or {}
    tracking = str(tracking_cfg.get("uri")) != "disabled"
    if tracking:
        from modi.experiments.tracking import mlflow_run

        ctx: Any = mlflow_run(
            tracking_cfg.get("uri"),
            str(tracking_cfg.get("experiment", "modi")),
            run_name=f"device-scorer-s{seed}",
            params={"env": OmegaConf.to_container(env, resolve=True)},
            tags={"agent": "device_scorer", "env": "offload", "seed": str(seed)},
        )
    else:
        ctx = nullcontext(None)
    with ctx:
        mlflow: Any = None
        if tracking:
            import mlflow as _mlflow

            mlflow = _mlflow
        t0 = time.perf_counter()
        server_name = str(env.get("server_policy", "modipick"))
        sims = [
            _sim(env, d, n, pool, streams, objective, sla_range_ms=tuple(sla_range))
            for d in devices
            for n in networks
        ]
        for sim in sims:
            sim.set_server_policy(_server_policy(env, server_name))
        hist_rows: list[dict[str, float]] = []

        def on_round(r: int, hist: list[dict[str, float]]) -> None:
            for h in hist:
                hist_rows.append({"round": float(r)} | h)
                if mlflow is not None:
                    step = int(r * 1000 + h["epoch"])
                    mlflow.log_metric("train_diff_mse", h["train_diff_mse"], step=step)
                    mlflow.log_metric("train_level_mse", h["train_level_mse"], step=step)

        try:
            policy = train_device_scorer(
                sims,
                steps,
                seed,
                rounds=rounds,
                epsilon=float(tr.epsilon),
                hidden=[int(h) for h in tr.hidden],
                epochs=as_int(tr.epochs, "env.train.epochs"),
                batch_size=as_int(tr.batch_size, "env.train.batch_size"),
                level_weight=float(tr.get("level_weight", 0.1)),
                twin_weight=float(tr.get("twin_weight", 10.0)),
                lr=float(tr.lr),
                w_energy_per_j=objective[0],
                w_bytes_per_mb=objective[1],
                trained_on={"devices": devices, "networks": networks, "sla_range_ms": sla_range},
                on_round=on_round,
            )
        except DeviceScorerError as e:
            raise ConfigError(f"env.train: {e}") from None
        train_s = time.perf_counter() - t0
        pd.DataFrame(hist_rows).to_csv(out_dir / "training.csv", index=False)
        policy.save(out_dir / "device_policy.pt")
        onnx_path = export_device_onnx(policy, out_dir / "device_policy.onnx")
        val_sims = [
            _sim(env, d, n, pool, streams, objective, sla_range_ms=tuple(sla_range))
            for d in devices
            for n in networks
        ]
        for sim in val_sims:
            sim.set_server_policy(_server_policy(env, server_name))
        parity = check_parity(
            policy, onnx_path, val_sims, as_int(ev.parity_observations, "parity"), val_seed
        )
        log.info("ONNX parity on validation observations: %.4f", parity)
        served = _OnnxPolicy(onnx_path)

        # evaluation on the test seeds: every policy on the same streams
        steps_eval = math.ceil(n_req / per_point)
        per_seed_rows: list[dict[str, Any]] = []
        frontier_rows: list[dict[str, Any]] = []
        for device in devices:
            for network in networks:
                scen = f"{device}_{network}"
                sim = _sim(env, device, network, pool, len(slas) * per_point, objective,
                           sla_ms=np.repeat(slas, per_point).tolist())  # fmt: skip
                for name in [LEARNED, *rules, *ceilings]:
                    if name == LEARNED:
                        pol: Any = served
                    else:
                        pol = make_device_policy(
                            name, **dict((env.get("policy_args") or {}).get(name, {}) or {})
                        )
                    server = getattr(pol, "server_policy", None) or str(
                        env.get("server_policy", "modipick")
                    )
                    sim.set_server_policy(_server_policy(env, server))
                    if isinstance(pol, PieSlicer):
                        fit_sim = _sim(
                            env, device, network, pool, per_point, objective, sla_ms=max(slas)
                        )
                        fit_sim.set_server_policy(_server_policy(env, server))
                        pol.fit(fit_sim, seed=fit_seed)
                    if isinstance(pol, PrepCeiling):
                        try:
                            pol.bind(sim)
                        except ValueError:
                            log.info("%s: prep_ceiling needs a link model, skipped", scen)
                            continue
                    for s in test_seeds:
                        r = rollout_offload(pol, sim, steps_eval, s)
                        meta = {"scenario": scen, "device": device, "network": network,
                                "policy": name, "server_policy": server, "seed": s}  # fmt: skip
                        per_seed_rows += _rows(r, sim, meta, slas, per_point)
                # the frontier: the scorer under each energy weight (first test seed)
                sim.set_server_policy(
                    _server_policy(env, str(env.get("server_policy", "modipick")))
                )
                for w in weights:
                    r = rollout_offload(policy.with_weights(w), sim, steps_eval, test_seeds[0])
                    meta = {
                        "scenario": scen,
                        "policy": f"learned_w{w:g}",
                        "kind": "learned",
                        "w_energy_per_j": w,
                    }
                    frontier_rows += _rows(r, sim, meta, slas, per_point)
                log.info("evaluated %s", scen)
        per_seed = pd.DataFrame(per_seed_rows)
        per_seed.to_csv(out_dir / "results_per_seed.csv", index=False)
        results = _aggregate(per_seed)
        results.to_csv(out_dir / "results.csv", index=False)
        paired = paired_table(per_seed, rules)
        paired.to_csv(out_dir / "paired.csv", index=False)
        first = per_seed[(per_seed.seed == test_seeds[0]) & per_seed.policy.isin(rules)]
        rule_pts = first[
            ["scenario", "policy", "sla_ms", "effective_accuracy", "energy_mj"]
        ].assign(kind="rule")
        frontier = pd.concat(
            [
                pd.DataFrame(frontier_rows)[
                    [
                        "scenario",
                        "policy",
                        "sla_ms",
                        "effective_accuracy",
                        "energy_mj",
                        "kind",
                        "w_energy_per_j",
                    ]
                ],
                rule_pts,
            ],
            ignore_index=True,
        )
        frontier["dominated_by"] = dominated_by(frontier)
        frontier.to_csv(out_dir / "frontier.csv", index=False)
        figures = _plot_frontier(frontier, out_dir) if cfg.get("figures", True) else []
        learned = results[results.policy == LEARNED]
        metrics = {
            "eval_effective_accuracy": float(learned.effective_accuracy.mean()),
            "eval_attainment": float(learned.attainment.mean()),
            "eval_energy_mj": float(learned.energy_mj.mean()),
            "onnx_parity": parity,
            "train_seconds": train_s,
            "points_learned_ge_best_rule": float((paired["diff_lo"] >= -0.002).mean())
            if len(paired)
            else float("nan"),
            "frontier_points_dominated": float(
                (frontier[frontier.kind == "learned"].dominated_by != "").mean()
            ),
            "mean_diff_vs_best_rule": float(paired["diff"].mean()) if len(paired) else float("nan"),
        }
        if mlflow is not None:
            mlflow.log_metrics(metrics)
            for f in [onnx_path, out_dir / "device_policy.pt"]:
                mlflow.log_artifact(str(f), "policy")
            for f in [
                out_dir / n for n in ("results.csv", "paired.csv", "frontier.csv", "training.csv")
            ] + figures:
                mlflow.log_artifact(str(f), "results")
    log.info(
        "device policy: %s; run folder %s", {k: round(v, 4) for k, v in metrics.items()}, out_dir
    )
    return metrics


def offload_main(cfg: DictConfig) -> float:
    """``modi-train env=offload``: run in the Hydra run folder; a config error exits with 2."""
    import sys

    from hydra.core.hydra_config import HydraConfig

    out = Path(HydraConfig.get().runtime.output_dir)
    try:
        metrics = run_offload_training(cfg, out)
    except (ConfigError, ValueError) as e:
        log.error("%s", e)
        sys.exit(2)
    print(_summary(out))
    return metrics["eval_effective_accuracy"]


def _summary(out: Path) -> str:
    """A short console summary: learned vs best rule per scenario × SLA, and the files."""
    p = pd.read_csv(out / "paired.csv")
    lines = ["learned device policy vs the best rule (test seeds, effective accuracy %, 95 % CI):"]
    if len(p):
        t = p[
            [
                "scenario",
                "sla_ms",
                "best_rule",
                "best_rule_eff_acc",
                "learned_eff_acc",
                "diff_lo",
                "diff_hi",
                "energy_diff_mj",
            ]
        ].copy()
        for c in ("best_rule_eff_acc", "learned_eff_acc", "diff_lo", "diff_hi"):
            t[c] = (100 * t[c]).round(2)
        t["energy_diff_mj"] = t["energy_diff_mj"].round(0)
        lines.append(t.to_string(index=False))
    lines.append(f"files: {out / 'results.csv'}, paired.csv, frontier.csv, device_policy.onnx")
    return "\n".join(lines)
