"""``modi-compare-offload``: device-side policies on ``modi/Offload-v0``, all on the same
request streams, per device tier × network × SLA.

Writes into the run's output directory:

* ``results.csv`` — one row per (device, network, policy, SLA): attainment, effective
  accuracy, latency, pre-execution time of offloaded requests, PieSlicer-style decision
  accuracy of the preprocessing location, energy per request (compute, radio), KB sent;
* ``checks.csv`` — the issue's claims checked on those numbers: PieSlicer's decision accuracy
  (>= 95 %) and its median / p99 pre-execution time against both static choices per scenario;
  the backup's attainment gain and energy cost at each SLA;
* ``offload_<device>_<network>.png`` per scenario and ``preexec.png``.
"""

from __future__ import annotations

import logging
import math
import sys
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import pandas as pd
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from modi.agents.baselines import make_policy
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
from modi.experiments import plots
from modi.experiments.common import ConfigError, as_float_list, as_int, instantiate_node

log = logging.getLogger(__name__)

RESULT_COLUMNS = [
    "scenario",
    "device",
    "network",
    "policy",
    "server_policy",
    "sla_ms",
    "seed",
    "n_requests",
    "attainment",
    "effective_accuracy",
    "mean_reward",
    "latency_mean_ms",
    "latency_p50_ms",
    "latency_p95_ms",
    "latency_p99_ms",
    "preexec_p50_ms",
    "preexec_p99_ms",
    "prep_decision_accuracy",
    "preexec_regret_ms",
    "preexec_regret_p99_ms",
    "offload_fraction",
    "device_prep_fraction",
    "backup_fraction",
    "answered_remote",
    "answered_backup",
    "answered_local",
    "energy_mj",
    "compute_mj",
    "radio_mj",
    "kb_sent",
]

#: PieSlicer's claim: decision accuracy at least this (the paper: 98-99 %).
MIN_DECISION_ACCURACY = 0.95
#: An SLA is tight when ModiPick alone meets it for fewer requests than this.
TIGHT_ATTAINMENT = 0.995


def _names(cfg: DictConfig, key: str) -> list[str]:
    value = cfg.get(key)
    items = [value] if isinstance(value, str) else list(value or [])
    if not items or not all(isinstance(v, str) for v in items):
        raise ConfigError(f"{key} must be a preset name or a non-empty list of them, got {value!r}")
    return items


def _policies(cfg: DictConfig) -> list[str]:
    names = _names(cfg, "policies")
    unknown = [n for n in names if n not in DEVICE_POLICY_NAMES]
    if unknown:
        raise ConfigError(
            f"policies: unknown device policy {unknown}; expected names from "
            f"{list(DEVICE_POLICY_NAMES)}"
        )
    return names


def _radio(cfg: DictConfig, network: str) -> str:
    table = cfg.get("radio") or {}
    return str(table.get(network, table.get("default", "wifi")))


def _server_policy(cfg: DictConfig, name: str) -> Any:
    args = dict((cfg.get("server_policy_args") or {}).get(name, {}) or {})
    try:
        return make_policy(name, **args)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"server_policy {name!r}: {e}") from None


def _sim(
    cfg: DictConfig, device: str, network: str, pool: ModelPool, sla: list[float], streams: int
) -> OffloadSim:
    env_args: dict[str, Any] = OmegaConf.to_container(cfg.get("env", {}), resolve=True)  # type: ignore[assignment]
    env_args = {k: v for k, v in env_args.items() if v is not None}
    dev = load_preset("device", device)
    net = load_preset("network", network)
    env_sla = np.repeat(sla, streams).tolist()
    try:
        return OffloadSim(
            dev,
            net,
            pool,
            num_envs=len(env_sla),
            sla_ms=env_sla,
            radio=_radio(cfg, network),
            **env_args,
        )
    except TypeError as e:
        raise ConfigError(f"env: {e}") from None


def run_compare_offload(cfg: DictConfig, out_dir: Path, progress: bool = True) -> pd.DataFrame:
    """Run the comparison described by ``cfg``; write CSVs and figures into ``out_dir``."""
    names = _policies(cfg)
    devices = _names(cfg, "devices")
    networks = _names(cfg, "networks")
    slas = as_float_list(cfg.sla_ms, "sla_ms")
    n_requests = as_int(cfg.n_requests, "n_requests")
    streams = as_int(cfg.get("streams_per_point", 10), "streams_per_point")
    seed = as_int(cfg.seed, "seed", minimum=0)
    fit_seed = as_int(cfg.get("fit_seed", seed + 1000), "fit_seed", minimum=0)
    if fit_seed == seed:
        raise ConfigError("fit_seed must differ from seed (PieSlicer is fitted on other requests)")
    pool = instantiate_node(cfg, "pool")
    if not isinstance(pool, ModelPool):
        raise ConfigError(f"pool must build a ModelPool, got {type(pool).__name__}")
    default_server = str(cfg.get("server_policy", "modipick"))
    policy_args = cfg.get("policy_args") or {}
    steps = math.ceil(n_requests / streams)
    label = str(cfg.get("scenario", "offload"))

    rows: list[dict[str, Any]] = []
    combos = [(d, n) for d in devices for n in networks]
    bar = tqdm(total=len(combos) * len(names), desc=f"offload {label}", disable=not progress)
    for device, network in combos:
        sim = _sim(cfg, device, network, pool, slas, streams)
        scenario = f"{device}_{network}"
        for name in names:
            try:
                policy = make_device_policy(name, **dict(policy_args.get(name, {}) or {}))
            except (TypeError, ValueError) as e:
                raise ConfigError(f"policy_args.{name}: {e}") from None
            server = getattr(policy, "server_policy", None) or default_server
            sim.set_server_policy(_server_policy(cfg, server))
            if isinstance(policy, PieSlicer):
                fit_sim = _sim(cfg, device, network, pool, [max(slas)], streams)
                fit_sim.set_server_policy(_server_policy(cfg, server))
                policy.fit(fit_sim, seed=fit_seed)
            if isinstance(policy, PrepCeiling):
                try:
                    policy.bind(sim)
                except ValueError as e:
                    raise ConfigError(f"{scenario}: {e}") from None
            r = rollout_offload(policy, sim, steps, seed)
            for j, sla in enumerate(slas):
                part = r.select_streams(slice(j * streams, (j + 1) * streams))
                rows.append(
                    {
                        "scenario": scenario,
                        "device": device,
                        "network": network,
                        "policy": name,
                        "server_policy": server,
                        "sla_ms": sla,
                        "seed": seed,
                    }
                    | part.summary(sim.num_local)
                )
            bar.update(1)
    bar.close()
    results = pd.DataFrame(rows)[RESULT_COLUMNS]
    out_dir.mkdir(parents=True, exist_ok=True)
    results.to_csv(out_dir / "results.csv", index=False)
    checks = claim_checks(results, cfg.get("tight_sla_ms"))
    checks.to_csv(out_dir / "checks.csv", index=False)
    if cfg.get("figures", True):
        for scenario, df in results.groupby("scenario", sort=False):
            plots.offload_scenario(df, out_dir / f"offload_{scenario}.png", str(scenario))
        if {"static_local", "static_remote", "pieslicer"} <= set(results.policy):
            plots.offload_preexec(results, out_dir / "preexec.png")
    log.info("wrote %s and %s", out_dir / "results.csv", out_dir / "checks.csv")
    return results


def claim_checks(results: pd.DataFrame, tight_sla_ms: Any = None) -> pd.DataFrame:
    """The issue's claims, checked on ``results`` (one row per claim and scenario/SLA).

    * ``pieslicer_decision_accuracy``: PieSlicer's preprocessing location matches the realised
      faster one in >= 95 % of requests (all SLA points of the scenario pooled by mean); with
      ``prep_ceiling`` in the run, its accuracy is in the ``ceiling`` column.
    * ``prep_ceiling_decision_accuracy``: the same for :class:`PrepCeiling` (the expected-time
      rule with the simulator's laws): whether 95 % is reachable at all from what the device
      knows.
    * ``pieslicer_median_le_static`` / ``pieslicer_p99_le_static``: its median / p99
      pre-execution time <= both static choices' (compared at every SLA point: the
      pre-execution time does not depend on the SLA).
    * ``<policy>_attainment_gain``: ``modipick_backup``'s (and ``mdinference``'s) attainment
      minus ``modipick``'s at each SLA (at the SLAs in ``tight_sla_ms`` if given), with the
      energy cost in mJ per request. An SLA is *tight* when ModiPick alone misses it for more
      than 0.5 % of the requests; there the claim is a gain > 0, elsewhere no loss.
    """
    out: list[dict[str, Any]] = []
    for scenario, df in results.groupby("scenario", sort=False):
        pol = set(df.policy)
        if {"pieslicer", "static_local", "static_remote"} <= pol:
            ps = df[df.policy == "pieslicer"].set_index("sla_ms")
            loc = df[df.policy == "static_local"].set_index("sla_ms")
            rem = df[df.policy == "static_remote"].set_index("sla_ms")
            acc = float(ps.prep_decision_accuracy.mean())
            ceiling = (
                float(df[df.policy == "prep_ceiling"].prep_decision_accuracy.mean())
                if "prep_ceiling" in pol
                else float("nan")
            )
            out.append(
                {
                    "scenario": scenario,
                    "claim": "pieslicer_decision_accuracy",
                    "sla_ms": None,
                    "value": acc,
                    "reference": MIN_DECISION_ACCURACY,
                    "holds": acc >= MIN_DECISION_ACCURACY,
                    "ceiling": ceiling,
                }
            )
            if "prep_ceiling" in pol:
                out.append(
                    {
                        "scenario": scenario,
                        "claim": "prep_ceiling_decision_accuracy",
                        "sla_ms": None,
                        "value": ceiling,
                        "reference": MIN_DECISION_ACCURACY,
                        "holds": ceiling >= MIN_DECISION_ACCURACY,
                    }
                )
            for stat in ("p50", "p99"):
                col = f"preexec_{stat}_ms"
                best_static = np.minimum(loc[col], rem[col])
                holds = bool((ps[col] <= best_static + 1e-9).all())
                out.append(
                    {
                        "scenario": scenario,
                        "claim": f"pieslicer_{'median' if stat == 'p50' else 'p99'}_le_static",
                        "sla_ms": None,
                        "value": float(ps[col].max()),
                        "reference": float(best_static.min()),
                        "holds": holds,
                        "static_local": float(loc[col].max()),
                        "static_remote": float(rem[col].max()),
                    }
                )
        if "modipick" in pol:
            base = df[df.policy == "modipick"].set_index("sla_ms")
            slas = sorted(base.index)
            if tight_sla_ms is not None:
                wanted = {float(s) for s in tight_sla_ms}
                slas = [s for s in slas if s in wanted]
            for other in ("modipick_backup", "mdinference"):
                if other not in pol:
                    continue
                bk = df[df.policy == other].set_index("sla_ms")
                for s in slas:
                    gain = float(bk.attainment[s] - base.attainment[s])
                    tight = bool(base.attainment[s] < TIGHT_ATTAINMENT)
                    out.append(
                        {
                            "scenario": scenario,
                            "claim": f"{other}_attainment_gain",
                            "sla_ms": s,
                            "value": gain,
                            "reference": 0.0,
                            "holds": gain > 0 if tight else gain >= 0,
                            "tight": tight,
                            "energy_cost_mj": float(bk.energy_mj[s] - base.energy_mj[s]),
                            "energy_cost_pct": float(
                                100 * (bk.energy_mj[s] / base.energy_mj[s] - 1.0)
                            ),
                            "attainment_without": float(base.attainment[s]),
                            "attainment_with": float(bk.attainment[s]),
                        }
                    )
    return pd.DataFrame(out)


def plot_scenario(df: pd.DataFrame, out: Path, title: str = "") -> Path:
    """Effective accuracy, attainment, energy and KB sent per request vs SLA, one line per
    policy (one scenario)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (
        ("effective_accuracy", 100.0, "effective accuracy (%)"),
        ("attainment", 100.0, "SLA attainment (%)"),
        ("energy_mj", 1.0, "device energy per request (mJ)"),
        ("kb_sent", 1.0, "KB sent per request"),
    )
    fig, axes = plt.subplots(1, 4, figsize=(19, 4.2))
    for policy, part in df.groupby("policy", sort=False):
        part = part.sort_values("sla_ms")
        for ax, (col, scale, _) in zip(axes, panels, strict=True):
            ax.plot(part.sla_ms, scale * part[col], marker="o", label=policy)
    for ax, (col, _, ylabel) in zip(axes, panels, strict=True):
        ax.set(xlabel="SLA (ms)", ylabel=ylabel)
        if col in ("energy_mj", "kb_sent"):
            ax.set_yscale("log")
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_preexec(results: pd.DataFrame, out: Path) -> Path:
    """Median and p99 pre-execution time of the static choices and PieSlicer per scenario
    (the largest SLA point; pre-execution does not depend on the SLA)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pols = ["static_local", "static_remote", "pieslicer"]
    top = results[results.sla_ms == results.sla_ms.max()]
    scenarios = list(dict.fromkeys(top.scenario))
    fig, axes = plt.subplots(1, 2, figsize=(max(8.0, 1.6 * len(scenarios) * 2), 4.4))
    width = 0.8 / len(pols)
    for ax, (col, what) in zip(
        axes, (("preexec_p50_ms", "median"), ("preexec_p99_ms", "p99")), strict=True
    ):
        for j, pol in enumerate(pols):
            vals = [
                float(top[(top.scenario == s) & (top.policy == pol)][col].iloc[0])
                for s in scenarios
            ]
            ax.bar(np.arange(len(scenarios)) + j * width, vals, width, label=pol)
        ax.set_xticks(np.arange(len(scenarios)) + width, scenarios, rotation=30, ha="right")
        ax.set(ylabel=f"{what} pre-execution time (ms)", yscale="log")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def format_table(results: pd.DataFrame) -> str:
    """A compact text table (percentages, ms, mJ, KB)."""
    t = results.copy()
    for c in ("attainment", "effective_accuracy", "prep_decision_accuracy", "offload_fraction"):
        t[c] = (100 * t[c]).round(1)
    for c in ("latency_p50_ms", "preexec_p50_ms", "preexec_p99_ms", "energy_mj", "kb_sent"):
        t[c] = t[c].round(0)
    for c in ("preexec_regret_ms", "preexec_regret_p99_ms"):
        t[c] = t[c].round(1)
    cols = [
        "scenario",
        "policy",
        "sla_ms",
        "attainment",
        "effective_accuracy",
        "preexec_p50_ms",
        "preexec_p99_ms",
        "prep_decision_accuracy",
        "preexec_regret_ms",
        "preexec_regret_p99_ms",
        "offload_fraction",
        "energy_mj",
        "kb_sent",
    ]
    return t[cols].to_string(index=False)


def console_summary(results: pd.DataFrame, checks: pd.DataFrame, out: Path) -> str:
    """What the console shows: one row per scenario × policy (means over the SLA points, in
    %, ms, mJ, KB), the claims that do not hold, and where the files are (the per-SLA table is
    ``results.csv``, the claims ``checks.csv``)."""
    t = results.groupby(["scenario", "policy"], sort=False).agg(
        eff_acc=("effective_accuracy", "mean"),
        attain=("attainment", "mean"),
        prep_acc=("prep_decision_accuracy", "mean"),
        preexec_p50_ms=("preexec_p50_ms", "mean"),
        energy_mj=("energy_mj", "mean"),
        kb_sent=("kb_sent", "mean"),
    )
    for c in ("eff_acc", "attain", "prep_acc"):
        t[c] = (100 * t[c]).round(1)
    for c in ("preexec_p50_ms", "energy_mj", "kb_sent"):
        t[c] = t[c].round(0)
    slas = sorted(results.sla_ms.unique())
    lines = [
        f"device policies, means over {len(slas)} SLA point(s) {[float(x) for x in slas]} "
        "(%, ms, mJ, KB):",
        t.reset_index().to_string(index=False),
    ]
    if len(checks):
        failing = checks[~checks.holds.astype(bool)]
        lines.append(f"claims: {len(checks) - len(failing)} of {len(checks)} hold")
        for _, r in failing.iterrows():
            sla = "" if pd.isna(r.sla_ms) else f" at {r.sla_ms:g} ms"
            lines.append(f"  does not hold: {r.scenario} {r.claim}{sla} ({r.value:.4g})")
    lines.append(f"files: {out / 'results.csv'} (per SLA), {out / 'checks.csv'}, figures *.png")
    return "\n".join(lines)


@hydra.main(version_base="1.3", config_path="pkg://modi.conf", config_name="offload")
def main(cfg: DictConfig) -> float:
    """Hydra entry point; returns the mean effective accuracy of the first policy."""
    out = Path(HydraConfig.get().runtime.output_dir)
    try:
        results = run_compare_offload(cfg, out)
    except (ConfigError, ValueError) as e:
        log.error("%s", e)
        sys.exit(2)
    try:
        checks = pd.read_csv(out / "checks.csv")
    except pd.errors.EmptyDataError:
        checks = pd.DataFrame()
    print(console_summary(results, checks, out))
    first = results[results.policy == results.policy.iloc[0]]
    return float(first.effective_accuracy.mean())


if __name__ == "__main__":
    main()
