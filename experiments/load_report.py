"""``modi-load-report``: planning under load — the learned sequential policy, as served, against
the best queue-aware rule and the lookahead reference, per SLA (issue 13, item 5).

On a loaded scenario (``loaded_server`` by default: a FIFO queue, load spikes, arrivals replayed
from a real trace):

1. **Train** the agent (``--agent``, default ``ppo_load``: PPO with a discount > 0 on the
   queue-aware observation) on the scenario's training split, or load a saved one
   (``--policy PATH``); it is exported to ONNX and served by the runtime with its shipped
   defaults (what a server runs is what is evaluated).
2. **Validate** the queue-aware rules on the validation split: calibrated greedy with the
   expected wait (``calibrated_greedy_queue``: ``tuning.calibrated_greedy_queue`` grid) and
   Model-Switching (``model_switching``: ``tuning.model_switching`` grid), the download
   estimate fitted on validation (:func:`modi.experiments.tuning.download_model`). The best
   (rule, setting) **per SLA** on validation is the best queue-aware rule of that SLA.
3. **Test** (``splits.test.seeds``, ``--streams`` streams each): per SLA the best rule, the
   learned selector, the informed ceiling (knows the present, myopic), the per-request oracle
   (clairvoyant, but *not a bound* under load: its choices change later requests' waits) and
   the lookahead reference (:class:`~modi.agents.lookahead.RolloutLookahead` over the informed
   ceiling and the learned selector by default: at least as good as both in expectation). The
   lookahead is slow, so it runs on the first ``--lookahead-requests`` requests of every
   stream, and the rule and the learned selector are also reported on that prefix, paired.
   95 % intervals over streams × seeds; paired intervals for learned − best rule.
4. **A second arrival trace** the selector never trained on (``--second-trace``): the learned
   selector, the rules chosen on the first trace's validation, the ceiling and the oracle.

Writes into ``--out``: ``report.csv`` (one row per trace × SLA; fractions), ``units.csv`` (per
stream), ``validation.csv`` (every rule setting per SLA), ``report.md`` and the selector.
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from modi.envs.catalog import available
from modi.experiments.common import ConfigError, instantiate_node

log = logging.getLogger(__name__)

#: The queue-aware rule families tuned per SLA (config key of the grid = the policy built).
QUEUE_RULES: tuple[str, ...] = ("calibrated_greedy_queue", "model_switching")

#: The report's columns (fractions; ``*_lo``/``*_hi``: 95 % intervals; ``diff*``: learned −
#: best rule, paired; ``prefix_*``: on the first ``lookahead_requests`` of every stream).
REPORT_COLUMNS = [
    "scenario",
    "arrivals",
    "trained_on_arrivals",
    "sla_ms",
    "best_rule",
    "best_rule_params",
    "best_rule_eff_acc",
    "best_rule_eff_acc_lo",
    "best_rule_eff_acc_hi",
    "learned",
    "learned_eff_acc",
    "learned_eff_acc_lo",
    "learned_eff_acc_hi",
    "diff",
    "diff_lo",
    "diff_hi",
    "best_rule_attainment",
    "learned_attainment",
    "attainment_diff",
    "attainment_diff_lo",
    "attainment_diff_hi",
    "informed_ceiling_eff_acc",
    "oracle_eff_acc_not_a_bound",
    "lookahead_eff_acc",
    "lookahead_eff_acc_lo",
    "lookahead_eff_acc_hi",
    "prefix_best_rule_eff_acc",
    "prefix_learned_eff_acc",
    "prefix_learned_minus_lookahead",
    "prefix_learned_minus_lookahead_lo",
    "prefix_learned_minus_lookahead_hi",
    "prefix_requests_per_stream",
    "requests_per_stream",
    "shield_rate",
    "n_units",
]


@dataclass
class Settings:
    """What one report run does (see :func:`main` for the command-line flags)."""

    scenario: str = "loaded_server"
    agent: str = "ppo_load"
    seed: int = 0
    policy: Path | None = None
    train_requests: int | None = None
    n_requests: int | None = None
    val_requests: int | None = None
    streams: int = 10
    lookahead_requests: int = 1000
    horizon: int = 20
    samples: int = 2
    #: Base policies of the lookahead's rollouts: ``ceiling`` (the informed ceiling),
    #: ``learned`` (the served selector), ``rule`` (the SLA's best queue-aware rule).
    lookahead_bases: Sequence[str] = ("ceiling", "learned")
    sla_ms: Sequence[float] | None = None
    second_trace: str | None = "auto"
    second_rate_hz: float | None = None
    progress: bool = False
    #: Extra config overrides (``KEY=VALUE``), e.g. a tuning grid or ``train.num_envs=8``.
    overrides: Sequence[str] = ()


def _compose(overrides: Sequence[str]) -> DictConfig:
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="modi.conf", version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


def _overrides(s: Settings) -> list[str]:
    out = [
        f"scenario={s.scenario}",
        f"agent={s.agent}",
        "mix=none",  # trained on the loaded scenario itself, not the default mixture
        f"seed={s.seed}",
        "tracking=none",
        f"eval.streams_per_point={s.streams}",
    ]
    if s.train_requests:
        out.append(f"train.requests={s.train_requests}")
    if s.n_requests:
        out.append(f"eval.n_requests={s.n_requests}")
    if s.val_requests:
        out += [f"eval.val_n_requests={s.val_requests}", f"tuning.n_requests={s.val_requests}"]
    if s.sla_ms:
        out.append(f"sla_ms=[{','.join(f'{x:g}' for x in s.sla_ms)}]")
    return [*out, *s.overrides]


def _trace_of(sim_args: dict[str, Any]) -> str:
    arr = sim_args.get("arrivals")
    if isinstance(arr, dict) and arr.get("trace"):
        return Path(str(arr["trace"])).stem
    return str(arr)


# ------------------------------------------------------------------------------ validation
def tune_queue_rules(
    cfg: DictConfig, pool: Any, progress: bool = False
) -> tuple[dict[float, tuple[str, Any, dict[str, float]]], pd.DataFrame]:
    """Every setting of the queue-aware rules' grids on the validation split, at every SLA;
    returns per SLA the best ``(name, policy, params)`` and the whole table."""
    from modi.agents.baselines import make_policy
    from modi.experiments.compare import eval_setup, evaluate_points
    from modi.experiments.train import _eval_cfg
    from modi.experiments.tuning import download_model, grid

    vcfg = _eval_cfg(cfg, "val")
    setup = eval_setup(vcfg)
    workers = int(OmegaConf.select(cfg, "sim.workers", default=1) or 1)
    settings: list[tuple[str, str, dict[str, float]]] = []
    for family in QUEUE_RULES:
        for i, p in enumerate(grid(vcfg, family)):
            settings.append((family, f"{family}#{i}", p))
    qs = sorted({p["quantile"] for _, _, p in settings})
    dl = download_model(vcfg, pool, setup, qs)
    pols = []
    params: dict[str, dict[str, float]] = {}
    for family, tag, p in settings:
        a, b = dl[p["quantile"]]
        args: dict[str, Any] = {k: v for k, v in p.items() if k != "quantile"}
        args |= {"download_ms": a, "download_per_upload": b, "workers": workers}
        pol = make_policy(family, None, **args)
        pol.name = tag
        pols.append((tag, pol))
        params[tag] = {**p, "download_ms": a, "download_per_upload": b}
    ev = evaluate_points(vcfg, pols, setup, pool, progress=progress, desc="tune queue rules")
    table = ev.results[["policy", "sla_ms", "effective_accuracy", "attainment"]].copy()
    table["family"] = table.policy.str.split("#").str[0]
    table["params"] = table.policy.map(lambda t: _fmt(params[t]))
    chosen: dict[float, tuple[str, Any, dict[str, float]]] = {}
    by_tag = dict(pols)
    for sla, part in table.groupby("sla_ms"):
        best = part.iloc[int(np.argmax(part.effective_accuracy.to_numpy()))]
        tag = str(best.policy)
        chosen[float(sla)] = (tag.split("#")[0], by_tag[tag], params[tag])
        log.info(
            "SLA %g: best queue-aware rule on validation %s (%s), %.2f %%",
            sla, tag, _fmt(params[tag]), 100 * best.effective_accuracy,
        )  # fmt: skip
    return chosen, table


def _fmt(p: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in sorted(p.items()))


# ------------------------------------------------------------------------------ test
def evaluate_test(
    cfg: DictConfig,
    pool: Any,
    rules: dict[float, tuple[str, Any, dict[str, float]]],
    learned: Any,
    s: Settings,
    sim_args: dict[str, Any],
    with_lookahead: bool,
    learned_base: Any = None,
) -> pd.DataFrame:
    """Per stream (unit) of the test split: every policy's effective accuracy and attainment
    over the whole stream and over its first ``lookahead_requests / streams`` requests.
    ``learned_base`` is a second instance of the learned selector for the lookahead's rollouts
    (its decision counters stay apart from the evaluated one's)."""
    from modi.agents.baselines import make_policy
    from modi.agents.evaluation import rollout
    from modi.agents.lookahead import RolloutLookahead
    from modi.envs.simulator import ModelSelectionSim
    from modi.experiments.compare import eval_setup
    from modi.experiments.splits import network_for_split, stream_key
    from modi.experiments.train import _eval_cfg

    tcfg = _eval_cfg(cfg, "test")
    setup = eval_setup(tcfg)
    steps = math.ceil(setup.n_requests / setup.streams)
    prefix = min(steps, max(1, math.ceil(s.lookahead_requests / setup.streams)))
    net = network_for_split(tcfg, "test", setup.splits)
    trace = _trace_of(sim_args)
    rows: list[dict[str, Any]] = []
    for sla in setup.slas:
        if sla not in rules:
            raise ConfigError(f"no queue-aware rule was chosen on validation for SLA {sla:g}")
        family, rule, _ = rules[sla]
        ceiling = make_policy("informed_ceiling")
        todo: list[tuple[str, Any, int]] = [
            ("best_rule", rule, steps),
            ("learned", learned, steps),
            ("informed_ceiling", ceiling, steps),
            ("oracle", make_policy("oracle"), steps),
        ]
        if with_lookahead:
            pick = {
                "ceiling": make_policy("informed_ceiling"),
                "learned": learned_base if learned_base is not None else learned,
                "rule": rule,
            }
            bases = [pick[b] for b in s.lookahead_bases]
            planner = RolloutLookahead(bases, horizon=s.horizon, samples=s.samples)
            todo.append(("lookahead", planner, prefix))
        sim = ModelSelectionSim(pool, net, num_envs=setup.streams, sla_ms=sla, **sim_args)
        for seed in setup.seeds:
            key = stream_key(setup.scenario, "test", seed, sla)
            for role, pol, n in todo:
                t0 = time.perf_counter()
                if role == "learned":
                    pol.shield_firings = pol.decisions = 0
                r = rollout(pol, sim, n, key)
                eff = r.accuracy * r.met
                fired = int(getattr(pol, "shield_firings", 0)) if role == "learned" else 0
                decided = int(getattr(pol, "decisions", 0)) if role == "learned" else 0
                for j in range(sim.num_envs):
                    rows.append(
                        {
                            "arrivals": trace,
                            "sla_ms": sla,
                            "seed": seed,
                            "stream": j,
                            "role": role,
                            "policy": family if role == "best_rule" else pol.name,
                            "steps": n,
                            "effective_accuracy": float(eff[:, j].mean()),
                            "attainment": float(r.met[:, j].mean()),
                            "prefix_effective_accuracy": float(eff[:prefix, j].mean()),
                            "prefix_attainment": float(r.met[:prefix, j].mean()),
                            "prefix_steps": prefix,
                            "shield_fired": fired / sim.num_envs,
                            "decisions": decided / sim.num_envs,
                        }
                    )
                if role == "lookahead":
                    log.info(
                        "lookahead %s SLA %g seed %d: %d requests in %.0f s",
                        trace, sla, seed, n * sim.num_envs, time.perf_counter() - t0,
                    )  # fmt: skip
    return pd.DataFrame(rows)


def summarize_units(
    units: pd.DataFrame,
    scenario: str,
    rules: dict[float, tuple[str, Any, dict[str, float]]],
    learned_name: str,
    trained_on: str,
) -> pd.DataFrame:
    """One row per (arrival trace, SLA): :data:`REPORT_COLUMNS`."""
    from modi.experiments.stats import mean_ci, paired_ci

    out = []
    for (trace, sla), u in units.groupby(["arrivals", "sla_ms"], sort=False):

        def col(role: str, c: str, u: pd.DataFrame = u) -> pd.Series:
            v = u[u.role == role].sort_values(["seed", "stream"])[c]
            return v.reset_index(drop=True)

        rl, lr = col("best_rule", "effective_accuracy"), col("learned", "effective_accuracy")
        d = paired_ci(lr, rl)
        a = paired_ci(col("learned", "attainment"), col("best_rule", "attainment"))
        has_la = bool((u.role == "lookahead").any())
        la = mean_ci(col("lookahead", "prefix_effective_accuracy")) if has_la else (math.nan,) * 3
        dla = (
            paired_ci(
                col("learned", "prefix_effective_accuracy"),
                col("lookahead", "prefix_effective_accuracy"),
            )
            if has_la
            else (math.nan,) * 3
        )
        lu = u[u.role == "learned"]
        dec = float(lu.decisions.sum())
        family, _, params = rules[float(sla)]
        out.append(
            {
                "scenario": scenario,
                "arrivals": trace,
                "trained_on_arrivals": trace == trained_on,
                "sla_ms": float(sla),
                "best_rule": family,
                "best_rule_params": _fmt(params),
                "best_rule_eff_acc": float(rl.mean()),
                "best_rule_eff_acc_lo": mean_ci(rl)[1],
                "best_rule_eff_acc_hi": mean_ci(rl)[2],
                "learned": learned_name,
                "learned_eff_acc": float(lr.mean()),
                "learned_eff_acc_lo": mean_ci(lr)[1],
                "learned_eff_acc_hi": mean_ci(lr)[2],
                "diff": d[0],
                "diff_lo": d[1],
                "diff_hi": d[2],
                "best_rule_attainment": float(col("best_rule", "attainment").mean()),
                "learned_attainment": float(col("learned", "attainment").mean()),
                "attainment_diff": a[0],
                "attainment_diff_lo": a[1],
                "attainment_diff_hi": a[2],
                "informed_ceiling_eff_acc": float(
                    col("informed_ceiling", "effective_accuracy").mean()
                ),
                "oracle_eff_acc_not_a_bound": float(col("oracle", "effective_accuracy").mean()),
                "lookahead_eff_acc": la[0],
                "lookahead_eff_acc_lo": la[1],
                "lookahead_eff_acc_hi": la[2],
                "prefix_best_rule_eff_acc": float(
                    col("best_rule", "prefix_effective_accuracy").mean()
                ),
                "prefix_learned_eff_acc": float(col("learned", "prefix_effective_accuracy").mean()),
                "prefix_learned_minus_lookahead": dla[0],
                "prefix_learned_minus_lookahead_lo": dla[1],
                "prefix_learned_minus_lookahead_hi": dla[2],
                "prefix_requests_per_stream": int(u.prefix_steps.iloc[0]),
                "requests_per_stream": int(lu.steps.iloc[0]),
                "shield_rate": float(lu.shield_fired.sum()) / dec if dec else math.nan,
                "n_units": int(lr.size),
            }
        )
    return pd.DataFrame(out, columns=REPORT_COLUMNS)


# ------------------------------------------------------------------------------ second trace
def stand_in_trace(src: Path, dst: Path) -> Path:
    """A CSV arrival trace (``TIMESTAMP`` in seconds) from a Mahimahi packet-delivery trace
    (one delivery time in ms per line): a *real* bursty point process, but of packets, not of
    requests; used only when no second request trace is at hand, and labelled so."""
    try:
        lines = src.read_text().split()
    except OSError as e:
        raise ConfigError(f"--second-trace: cannot read {src} ({e.strerror})") from None
    try:
        ms = [int(x) for x in lines]
    except ValueError:
        raise ConfigError(f"{src}: expected one integer (ms) per line, a Mahimahi trace") from None
    dst.parent.mkdir(parents=True, exist_ok=True)
    with dst.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["TIMESTAMP"])
        w.writerows([[f"{t / 1000.0:.3f}"] for t in ms])
    return dst


def second_trace_path(spec: str | None, data_dir: str, out: Path) -> tuple[Path | None, str]:
    """The second arrival trace and its label. ``auto``: the held-out Azure coding-service
    trace if it is in ``data_dir``, else the Mahimahi stand-in (:func:`stand_in_trace`)."""
    if spec is None or spec == "none":
        return None, ""
    if spec != "auto":
        p = Path(spec)
        if not p.is_file():
            raise ConfigError(f"--second-trace: {p} is not a file (a CSV with a TIMESTAMP column)")
        return p, p.stem
    code = Path(data_dir) / "azure-llm-inference-2023" / "AzureLLMInferenceTrace_code.csv"
    if code.is_file():
        return code, code.stem
    src = Path(data_dir) / "mahimahi" / "traces" / "ATT-LTE-driving.up"
    if not src.is_file():
        log.warning("no second arrival trace: %s and %s are missing", code, src)
        return None, ""
    dst = stand_in_trace(src, out / "arrivals" / "stand_in_mahimahi_att_lte_driving_up.csv")
    return dst, dst.stem


# ------------------------------------------------------------------------------ the report
def run_report(out: Path, s: Settings) -> pd.DataFrame:
    """Train (or load), validate and test; write the report files into ``out``."""
    from modi.agents.bandits import load_learned
    from modi.agents.served import served_from_policy
    from modi.experiments.learned_report import fit_selector

    try:
        cfg = _compose(_overrides(s))
    except Exception as e:  # hydra's errors: an unknown key or a bad override
        raise ConfigError(f"config: {e}") from None
    sim_args: dict[str, Any] = OmegaConf.to_container(cfg.sim, resolve=True)  # type: ignore[assignment]
    if sim_args.get("queue_capacity") is None:
        raise ConfigError(
            f"scenario {s.scenario!r} has no server queue (sim.queue_capacity is null): "
            "the load report needs a loaded scenario (loaded_server or conf/scenario/loaded_*)"
        )
    pool = instantiate_node(cfg, "pool")
    out.mkdir(parents=True, exist_ok=True)
    second, label = second_trace_path(s.second_trace, str(cfg.get("data_dir", "")), out)
    t0 = time.perf_counter()
    if s.policy is not None:
        try:
            agent = load_learned(s.policy)
        except (OSError, ValueError) as e:
            raise ConfigError(f"--policy: cannot load {s.policy}: {e}") from None
    else:
        agent = fit_selector(cfg, s.progress)
        agent.save(out / "policy.pt")
        log.info("trained %s in %.0f s", agent.name, time.perf_counter() - t0)
    name = str(getattr(agent, "name", s.agent))
    served = served_from_policy(agent, out / "selector.onnx", name=name)
    from modi.agents.served import ServedPolicy

    base = ServedPolicy(
        out / "selector.onnx", pool_ids=getattr(agent, "pool_ids", None), name=f"{name}_base"
    )
    rules, table = tune_queue_rules(cfg, pool, s.progress)
    table.to_csv(out / "validation.csv", index=False)
    trained_on = _trace_of(sim_args)
    units = [evaluate_test(cfg, pool, rules, served, s, sim_args, True, base)]
    if second is not None:
        arr = (
            dict(sim_args.get("arrivals") or {})
            if isinstance(sim_args.get("arrivals"), dict)
            else {}
        )
        rate = s.second_rate_hz if s.second_rate_hz is not None else arr.get("rate_hz")
        args2 = {**sim_args, "arrivals": {"trace": str(second), "rate_hz": rate}}
        units.append(evaluate_test(cfg, pool, rules, served, s, args2, False))
    u = pd.concat(units, ignore_index=True)
    u.to_csv(out / "units.csv", index=False)
    report = summarize_units(u, s.scenario, rules, name, trained_on)
    report.to_csv(out / "report.csv", index=False)
    minutes = (time.perf_counter() - t0) / 60
    (out / "report.md").write_text(markdown(report, s, label, minutes))
    return report


def markdown(report: pd.DataFrame, s: Settings, second_label: str, minutes: float) -> str:
    """The report as markdown (percent; points for differences)."""

    def pct(v: float) -> str:
        return "—" if v != v else f"{100 * v:.1f}"

    def ci(m: float, lo: float, hi: float, sign: str = "") -> str:
        if m != m:
            return "—"
        return f"{100 * m:{sign}.1f} [{100 * lo:{sign}.1f}, {100 * hi:{sign}.1f}]"

    lines = [
        f"# Planning under load: {s.scenario}, {report.learned.iloc[0]} as served (test split)",
        "",
        "Effective accuracy in %, 95 % intervals over streams × test seeds; learned − rule "
        "paired on the same requests. Best rule: the best queue-aware rule (setting) per SLA on "
        "validation. The oracle is per-request clairvoyant and **not a bound** under load. The "
        f"lookahead (rollout planner, horizon {s.horizon}, {s.samples} sampled futures, the "
        f"best of the base policies {', '.join(s.lookahead_bases)} after each candidate) "
        "runs on the first "
        f"{int(report.prefix_requests_per_stream.iloc[0])} requests of every stream; "
        "'prefix' columns compare on those requests.",
        "",
    ]
    for (trace, trained), part in report.groupby(["arrivals", "trained_on_arrivals"], sort=False):
        note = "trained on" if trained else "never trained on"
        if not trained and "stand_in" in str(trace):
            note += "; a stand-in: real packet-delivery times, not requests"
        lines += [
            f"## Arrivals: {trace} ({note})",
            "",
            "| SLA (ms) | best rule (validation) | rule % | learned % | learned − rule, pts "
            "| attain. diff, pts | lookahead % (prefix) | rule / learned % (prefix) "
            "| learned − lookahead, pts (prefix) | informed ceiling % | oracle % (not a bound) |",
            "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for _, r in part.iterrows():
            lines.append(
                f"| {r.sla_ms:g} | {r.best_rule} ({r.best_rule_params}) "
                f"| {ci(r.best_rule_eff_acc, r.best_rule_eff_acc_lo, r.best_rule_eff_acc_hi)} "
                f"| {ci(r.learned_eff_acc, r.learned_eff_acc_lo, r.learned_eff_acc_hi)} "
                f"| {ci(r['diff'], r.diff_lo, r.diff_hi, '+')} "
                f"| {100 * r.attainment_diff:+.1f} "
                f"| {ci(r.lookahead_eff_acc, r.lookahead_eff_acc_lo, r.lookahead_eff_acc_hi)} "
                f"| {pct(r.prefix_best_rule_eff_acc)} / {pct(r.prefix_learned_eff_acc)} "
                f"| {ci(r.prefix_learned_minus_lookahead, r.prefix_learned_minus_lookahead_lo, r.prefix_learned_minus_lookahead_hi, '+')} "  # noqa: E501
                f"| {pct(r.informed_ceiling_eff_acc)} | {pct(r.oracle_eff_acc_not_a_bound)} |"
            )
        lines.append("")
    if not second_label:
        lines += ["No second arrival trace was evaluated (none given or found).", ""]
    lines.append(f"Took {minutes:.1f} min.")
    return "\n".join(lines) + "\n"


def format_report(report: pd.DataFrame) -> str:
    """A short text table (percent, points)."""
    t = pd.DataFrame(
        {
            "arrivals": report.arrivals,
            "sla": report.sla_ms.map("{:g}".format),
            "rule": report.best_rule,
            "rule%": (100 * report.best_rule_eff_acc).map("{:.1f}".format),
            "learned%": (100 * report.learned_eff_acc).map("{:.1f}".format),
            "diff pts [95% CI]": [
                f"{100 * d:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"
                for d, lo, hi in zip(report["diff"], report.diff_lo, report.diff_hi, strict=True)
            ],
            "lookahead% (prefix)": (100 * report.lookahead_eff_acc).map(
                lambda v: "" if v != v else f"{v:.1f}"
            ),
            "rule/learned% (prefix)": [
                f"{100 * a:.1f}/{100 * b:.1f}"
                for a, b in zip(
                    report.prefix_best_rule_eff_acc, report.prefix_learned_eff_acc, strict=True
                )
            ],
            "ceiling%": (100 * report.informed_ceiling_eff_acc).map("{:.1f}".format),
            "oracle% (not a bound)": (100 * report.oracle_eff_acc_not_a_bound).map("{:.1f}".format),
        }
    )
    return t.to_string(index=False)


def main(argv: list[str] | None = None) -> int:
    """Console entry point."""
    p = argparse.ArgumentParser(
        prog="modi-load-report",
        description="Planning under load: a learned sequential selector (as served) against the "
        "best queue-aware rule per SLA (chosen on validation) and a lookahead reference, on the "
        "test split of a loaded scenario, and on a second arrival trace.",
    )
    p.add_argument("--out", type=Path, default=Path("outputs/load_report"))
    p.add_argument("--scenario", default="loaded_server", help="a loaded scenario (conf/scenario)")
    p.add_argument("--agent", default="ppo_load", help="agent config (conf/agent)")
    p.add_argument("--policy", type=Path, default=None, help="a saved policy.pt: skip training")
    p.add_argument("--seed", type=int, default=0, help="training seed")
    p.add_argument("--train-requests", type=int, default=None)
    p.add_argument("--n-requests", type=int, default=None, help="test requests per SLA and seed")
    p.add_argument("--val-requests", type=int, default=None, help="validation requests per SLA")
    p.add_argument("--streams", type=int, default=10, help="streams per SLA and seed")
    p.add_argument(
        "--lookahead-requests",
        type=int,
        default=1000,
        help="requests per SLA and seed the lookahead serves (the first of every stream)",
    )
    p.add_argument("--horizon", type=int, default=20, help="lookahead horizon (requests)")
    p.add_argument("--samples", type=int, default=2, help="lookahead sampled futures")
    p.add_argument(
        "--lookahead-bases",
        nargs="+",
        choices=["ceiling", "learned", "rule"],
        default=["ceiling", "learned"],
        help="base policies of the lookahead's rollouts (the best of them after each candidate)",
    )
    p.add_argument("--sla", nargs="+", type=float, default=None, help="SLAs (default: scenario's)")
    p.add_argument(
        "--second-trace",
        default="auto",
        help="a second arrival trace (CSV with a TIMESTAMP column), 'auto' (the held-out Azure "
        "coding trace if present, else a Mahimahi stand-in) or 'none'",
    )
    p.add_argument("--second-rate-hz", type=float, default=None, help="its rate (default: same)")
    p.add_argument("--progress", action="store_true", help="progress bars")
    p.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="config overrides, e.g. tuning.calibrated_greedy_queue.z=[0,1] train.num_envs=16",
    )
    a = p.parse_args(argv)
    for group, name in (("agent", a.agent), ("scenario", a.scenario)):
        known = available(group)
        if name not in known:
            p.error(f"unknown {group} {name!r}; expected one of {known}")
    for flag, v in (
        ("--train-requests", a.train_requests),
        ("--n-requests", a.n_requests),
        ("--val-requests", a.val_requests),
        ("--streams", a.streams),
        ("--lookahead-requests", a.lookahead_requests),
        ("--horizon", a.horizon),
        ("--samples", a.samples),
    ):
        if v is not None and v < 1:
            p.error(f"{flag} must be >= 1, got {v}")
    if a.seed < 0 or (a.sla and any(x <= 0 for x in a.sla)):
        p.error("--seed must be >= 0 and --sla values > 0")
    if a.second_rate_hz is not None and not a.second_rate_hz > 0:
        p.error(f"--second-rate-hz must be > 0, got {a.second_rate_hz}")
    if a.policy is not None and not a.policy.is_file():
        p.error(f"--policy: {a.policy} is not a file (a policy.pt written by modi-train)")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    s = Settings(
        scenario=a.scenario,
        agent=a.agent,
        seed=a.seed,
        policy=a.policy,
        train_requests=a.train_requests,
        n_requests=a.n_requests,
        val_requests=a.val_requests,
        streams=a.streams,
        lookahead_requests=a.lookahead_requests,
        horizon=a.horizon,
        samples=a.samples,
        lookahead_bases=list(a.lookahead_bases),
        sla_ms=a.sla,
        second_trace=a.second_trace,
        second_rate_hz=a.second_rate_hz,
        progress=a.progress,
        overrides=list(a.set),
    )
    try:
        report = run_report(a.out, s)
    except ConfigError as e:
        log.error("%s", e)
        return 2
    sys.stdout.write(format_report(report) + f"\n\nreport: {a.out / 'report.md'}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
