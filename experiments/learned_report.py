"""``modi-learned-report``: learned selectors vs ModiPick and the oracle, honestly.

For each scenario and training seed, trains the agent with :func:`modi.experiments.train.train`
(evaluation stream seeded differently from training, every policy on the same requests), then
aggregates over seeds: effective accuracy, attainment, and the share of ModiPick's gap to the
oracle that the learned selector closes, per SLA (mean and spread). Also checks generalisation
without retraining: a selector trained on one scenario/pool evaluated on another.

Writes ``summary.csv``, ``generalisation.csv`` and ``report.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from hydra import compose, initialize_config_module

from modi.agents.bandits import load_learned
from modi.envs.catalog import available
from modi.experiments.common import ConfigError
from modi.experiments.compare import run_compare
from modi.experiments.train import learned_vs_modipick, train

log = logging.getLogger(__name__)


def _compose(config: str, overrides: Sequence[str]) -> object:
    with initialize_config_module(config_module="modi.conf", version_base="1.3"):
        return compose(config_name=config, overrides=list(overrides))


def run_learned(
    out: Path,
    agent: str,
    scenarios: Sequence[str],
    seeds: Sequence[int],
    sla_ms: Sequence[float],
    n_requests: int,
    train_requests: int | None,
    tracking: str,
    progress: bool,
) -> pd.DataFrame:
    """Train ``agent`` on every scenario × seed; one row per (scenario, seed, SLA)."""
    rows = []
    for sc in scenarios:
        for seed in seeds:
            ov = [
                f"scenario={sc}",
                f"agent={agent}",
                f"seed={seed}",
                f"eval.sla_ms=[{','.join(str(s) for s in sla_ms)}]",
                f"eval.n_requests={n_requests}",
                f"tracking={tracking}",
                "export=false",
            ]
            if train_requests:
                ov.append(f"train.requests={train_requests}")
            run_dir = out / "runs" / f"{sc}-{agent}-s{seed}"
            train(_compose("train", ov), run_dir, progress=progress)  # type: ignore[arg-type]
            s = pd.read_csv(run_dir / "learned_vs_modipick.csv")
            res = pd.read_csv(run_dir / "results.csv")
            att = res.pivot_table(index="sla_ms", columns="policy", values="attainment")
            s["scenario"] = sc
            s["seed"] = seed
            s["learned_attainment"] = s.sla_ms.map(att[agent])
            s["modipick_attainment"] = s.sla_ms.map(att["modipick"])
            s = s.rename(columns={f"{agent}_eff_acc": "learned_eff_acc"})
            rows.append(s)
    return pd.concat(rows, ignore_index=True)


def aggregate(per_seed: pd.DataFrame) -> pd.DataFrame:
    """Mean and spread (min, max) over seeds per scenario and SLA."""
    g = per_seed.groupby(["scenario", "sla_ms"])
    out = g.agg(
        modipick_eff_acc=("modipick_eff_acc", "mean"),
        learned_eff_acc=("learned_eff_acc", "mean"),
        learned_eff_acc_min=("learned_eff_acc", "min"),
        learned_eff_acc_max=("learned_eff_acc", "max"),
        oracle_eff_acc=("oracle_eff_acc", "mean"),
        gap_closed=("gap_closed", "mean"),
        gap_closed_min=("gap_closed", "min"),
        gap_closed_max=("gap_closed", "max"),
        attainment_delta_points=("attainment_delta_points", "mean"),
        attainment_delta_min=("attainment_delta_points", "min"),
        seeds=("seed", "nunique"),
    )
    return out.reset_index()


def generalisation(
    out: Path,
    agent: str,
    pairs: Sequence[tuple[str, Sequence[str], str, Sequence[str]]],
    seed: int,
    n_requests: int,
    tracking: str,
    progress: bool,
) -> pd.DataFrame:
    """Train on ``(train_scenario, train_overrides)`` and evaluate without retraining on
    ``(eval_scenario, eval_overrides)`` (e.g. other traces, another pool)."""
    rows = []
    for train_sc, train_extra, eval_sc, extra in pairs:
        tag = "".join(f"_{x.replace('=', '-')}" for x in train_extra)
        run_dir = out / "runs" / f"{train_sc}{tag}-{agent}-s{seed}"
        train_label = f"{train_sc}{' ' + ' '.join(train_extra) if train_extra else ''}"
        if not (run_dir / "policy.pt").is_file():
            ov = [f"scenario={train_sc}", f"agent={agent}", f"seed={seed}", *train_extra]
            ov += [f"tracking={tracking}", "export=false", "eval.n_requests=1000"]
            train(_compose("train", ov), run_dir, progress=progress)  # type: ignore[arg-type]
        policy = load_learned(run_dir / "policy.pt")
        label = f"{eval_sc}{' ' + ' '.join(extra) if extra else ''}"
        cfg = _compose(
            "compare",
            [
                f"scenario={eval_sc}",
                "policies=[modipick,dynamic_greedy,oracle]",
                f"n_requests={n_requests}",
                "seed=2000",
                "figures=[]",
                *extra,
            ],
        )
        dest = (
            out
            / "generalisation"
            / f"{train_sc}{tag}-to-{label.replace(' ', '_').replace('=', '-')}"
        )
        res, _ = run_compare(cfg, dest, progress=progress, learned={agent: policy})  # type: ignore[arg-type]
        s = learned_vs_modipick(res, agent).rename(columns={f"{agent}_eff_acc": "learned_eff_acc"})
        s.insert(0, "evaluated_on", label)
        s.insert(0, "trained_on", train_label)
        rows.append(s)
    return pd.concat(rows, ignore_index=True)


def _md(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        cells = [f"{v:.3f}" if isinstance(v, float) else str(v) for v in r]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Console entry point."""
    p = argparse.ArgumentParser(prog="modi-learned-report", description=__doc__)
    p.add_argument("--out", type=Path, default=Path("outputs/learned_report"))
    p.add_argument("--agent", default="linucb")
    p.add_argument(
        "--scenarios", nargs="+", default=["realistic_wifi", "lte_trace", "paper_campus"]
    )
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--sla", nargs="+", type=float, default=[115.0, 150.0, 200.0])
    p.add_argument("--n-requests", type=int, default=10_000, help="evaluation requests per SLA")
    p.add_argument("--train-requests", type=int, default=None)
    p.add_argument("--tracking", default="local", help="tracking config (local or none)")
    p.add_argument("--no-generalisation", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    a = p.parse_args(argv)
    for group, names in (
        ("agent", [a.agent]),
        ("scenario", a.scenarios),
        ("tracking", [a.tracking]),
    ):
        known = available(group)
        for n in names:
            if n not in known:
                p.error(f"unknown {group} {n!r}; expected one of {known}")
    if a.n_requests < 1 or (a.train_requests is not None and a.train_requests < 1):
        p.error("--n-requests and --train-requests must be >= 1")
    if any(s < 0 for s in a.seeds) or any(s <= 0 for s in a.sla):
        p.error("--seeds must be >= 0 and --sla > 0")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    a.out.mkdir(parents=True, exist_ok=True)
    try:
        per_seed = run_learned(
            a.out,
            a.agent,
            a.scenarios,
            a.seeds,
            a.sla,
            a.n_requests,
            a.train_requests,
            a.tracking,
            not a.quiet,
        )
    except ConfigError as e:
        log.error("%s", e)
        return 2
    per_seed.to_csv(a.out / "per_seed.csv", index=False)
    summary = aggregate(per_seed)
    summary.to_csv(a.out / "summary.csv", index=False)
    report = [f"# {a.agent} vs ModiPick and the oracle\n", _md(summary.round(4))]
    if not a.no_generalisation:
        gen = generalisation(
            a.out,
            a.agent,
            [
                ("lte_trace_att", [], "lte_trace", []),
                ("lte_trace", [], "lte_trace_att", []),
                ("realistic_wifi", [], "realistic_wifi", ["pool=mdinference_p2"]),
                ("realistic_wifi", ["pool=mdinference_p2"], "realistic_wifi", []),
                ("realistic_wifi", [], "lte_trace", []),
            ],
            seed=a.seeds[0],
            n_requests=a.n_requests,
            tracking=a.tracking,
            progress=not a.quiet,
        )
        gen.to_csv(a.out / "generalisation.csv", index=False)
        report += ["\n## Generalisation (no retraining)\n", _md(gen.round(4))]
    (a.out / "report.md").write_text("\n".join(report) + "\n")
    sys.stdout.write("\n".join(report) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
