"""``modi-transfer-report``: one selector, every network family, round-trip time and pool.

The selector (``--policy``: a ``policy.pt`` or exported ``.onnx``; default: train one with
``modi-train``'s defaults, i.e. the mixture selector) is evaluated *as served* (the exported
ONNX through :class:`modi.runtime.Selector` with its shipped defaults, shield included) without
retraining, on each condition's test split beside the rules tuned on that condition's
validation split, the informed ceiling and the oracle:

* each network family at its own round-trip time (``rtt x1``) and at ``0.5x`` and ``2x`` it
  (the default mixture ``mix.rtt_scale`` trains on 0.4-1.5x: 2x is outside it);
* pools it never trained on: Table 2 ten times slower and ten times faster
  (``pool.time_scale``), and the MDInference p2 pool.

Writes ``report.csv`` (one row per condition and SLA: the summary columns of ``modi-train``
plus ``condition``, ``rtt_factor``, ``pool`` and the same comparison on the validation split,
``val_*``), ``verdicts.csv`` and ``report.md`` (per condition: the worst SLA's paired interval,
attainment, gap closed; the criterion of issue 13 checked per condition, on the test split and,
for choosing between selectors without reading the test split, on validation).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig

from modi.envs.catalog import available
from modi.experiments.common import ConfigError

log = logging.getLogger(__name__)

#: Families evaluated (conf/scenario), each at these RTT factors.
DEFAULT_SCENARIOS = ["realistic_wifi", "lte_trace", "hsdpa_trace", "5g_walking", "paper_campus"]
DEFAULT_RTT_FACTORS = [1.0, 0.5, 2.0]
#: Each family's SLA sweep here (five points across the scenario's range, where the choice
#: matters), so the 18 conditions fit in well under an hour on two cores; --sla overrides.
TRANSFER_SLAS: dict[str, list[float]] = {
    "realistic_wifi": [75, 100, 150, 200, 300],
    "lte_trace": [75, 115, 150, 200, 300],
    "hsdpa_trace": [300, 500, 700, 1000, 2000],
    "5g_walking": [100, 150, 200, 300, 600],
    "paper_campus": [75, 100, 150, 200, 300],
}
#: Pool transfers: (label, overrides, SLA sweep or None for the scenario's), on realistic_wifi.
POOL_CONDITIONS: list[tuple[str, list[str], list[float] | None]] = [
    ("table2_x10", ["pool.time_scale=10"], [150, 200, 300, 400, 600, 800, 1000, 1300]),
    ("table2_x0.1", ["pool.time_scale=0.1"], None),
    ("mdinference_p2", ["pool=mdinference_p2"], None),
]
#: Issue 13's criterion: lower end of the paired interval, attainment, gap closed.
MIN_DIFF_LO = -0.005
MIN_ATTAINMENT_DIFF = -0.01
MIN_GAP_CLOSED = 0.5
GAP_FLOOR = 0.02
#: Columns of a condition's validation comparison kept in ``report.csv`` (``val_`` + name).
VAL_COLUMNS = ("best_rule_eff_acc", "learned_eff_acc", "diff", "diff_lo", "diff_hi",
               "attainment_diff", "attainment_diff_lo", "attainment_diff_hi", "ceiling_gap",
               "gap_closed")  # fmt: skip


def with_validation(summary: pd.DataFrame, val: pd.DataFrame) -> pd.DataFrame:
    """``summary`` (test split) with the validation split's comparison of the same learned
    selector and rule per SLA as ``val_*`` columns (:data:`VAL_COLUMNS`)."""
    for name, frame in (("test", summary), ("validation", val)):
        if frame.sla_ms.duplicated().any():
            raise ValueError(f"{name} summary has several rows per SLA (a CV sweep?): one expected")
    v = val[["sla_ms", *VAL_COLUMNS]].rename(columns={c: f"val_{c}" for c in VAL_COLUMNS})
    return summary.merge(v, on="sla_ms", how="left")


@dataclass(frozen=True)
class Condition:
    """One evaluation condition: a scenario and overrides."""

    label: str
    scenario: str
    rtt_factor: float
    pool: str
    overrides: tuple[str, ...]


def rtt_overrides(cfg: DictConfig, factor: float) -> list[str]:
    """Overrides that scale the scenario network's round-trip time by ``factor``
    (``network.rtt_ms``; the papers' Gaussian network: its one-way mean and std)."""
    if factor == 1.0:
        return []
    net = cfg.network
    if net.get("rtt_ms") is not None:
        return [f"network.rtt_ms={float(net.rtt_ms) * factor:g}"]
    if net.get("mean_ms") is not None:
        return [
            f"network.mean_ms={float(net.mean_ms) * factor:g}",
            f"network.std_ms={float(net.std_ms) * factor:g}",
        ]
    raise ConfigError(f"network {net.get('name')!r} has no rtt_ms or mean_ms to scale")


def conditions(
    scenarios: Sequence[str], factors: Sequence[float], pools: bool, compose: Any
) -> list[Condition]:
    """Every condition to evaluate."""
    out = []
    for sc in scenarios:
        cfg = compose([f"scenario={sc}"])
        for f in factors:
            out.append(
                Condition(
                    f"{sc} rtt x{f:g}", sc, f, str(cfg.pool.name), tuple(rtt_overrides(cfg, f))
                )
            )
    if pools:
        for label, ov, slas in POOL_CONDITIONS:
            extra = list(ov)
            if slas is not None:
                extra.append(f"sla_ms=[{','.join(f'{s:g}' for s in slas)}]")
            label_c = f"realistic_wifi pool {label}"
            out.append(Condition(label_c, "realistic_wifi", 1.0, label, tuple(extra)))
    return out


def verdict(part: pd.DataFrame) -> dict[str, Any]:
    """Issue 13's criterion on one condition's rows."""
    gap = part[part.ceiling_gap >= GAP_FLOOR]
    gc_min = float(gap.gap_closed.min()) if not gap.empty else float("nan")
    ok = (
        bool((part.diff_lo >= MIN_DIFF_LO).all())
        and bool((part.attainment_diff >= MIN_ATTAINMENT_DIFF).all())
        and (gap.empty or gc_min >= MIN_GAP_CLOSED)
    )
    worst = part.loc[part.diff_lo.idxmin()]
    val: dict[str, Any] = {}
    if "val_diff_lo" in part and part.val_diff_lo.notna().all():
        vgap = part[part.val_ceiling_gap >= GAP_FLOOR]
        vworst = part.loc[part.val_diff_lo.idxmin()]
        val = {
            "val_worst_sla_ms": float(vworst.sla_ms),
            "val_worst_diff": float(vworst.val_diff),
            "val_worst_diff_lo": float(vworst.val_diff_lo),
            "val_min_attainment_diff": float(part.val_attainment_diff.min()),
            "val_meets_criterion": bool((part.val_diff_lo >= MIN_DIFF_LO).all())
            and bool((part.val_attainment_diff >= MIN_ATTAINMENT_DIFF).all())
            and (vgap.empty or float(vgap.val_gap_closed.min()) >= MIN_GAP_CLOSED),
        }
    return {
        "condition": part.condition.iloc[0],
        "best_rule": part.best_rule.iloc[0],
        "worst_sla_ms": float(worst.sla_ms),
        "worst_diff": float(worst["diff"]),
        "worst_diff_lo": float(worst.diff_lo),
        "worst_diff_hi": float(worst.diff_hi),
        "min_attainment_diff": float(part.attainment_diff.min()),
        "mean_diff": float(part["diff"].mean()),
        "min_gap_closed": gc_min,
        "gap_slas": len(gap),
        "shield_rate_max": float(part.shield_rate.max()),
        "meets_criterion": ok,
        **val,
    }


def _md(report: pd.DataFrame, verdicts: pd.DataFrame, policy: str, minutes: float) -> str:
    lines = [
        f"# One selector everywhere: `{policy}` as served, without retraining (test split)\n",
        "Per condition, the learned selector (exported ONNX + runtime defaults, shield on) "
        "against the best rule tuned on that condition's validation split. Criterion (issue "
        "13): at every SLA the paired 95 % interval's lower end ≥ −0.5 points, attainment ≥ "
        "−1 point, and ≥ 50 % of the rule's gap to the informed ceiling closed where that gap "
        "is ≥ 2 points.\n",
        "| condition | best rule | worst SLA | learned − rule there, pts (95 % CI) | mean diff, "
        "pts | min attainment diff, pts | min gap closed | meets |",
        "|---|---|---:|---:|---:|---:|---:|:---:|",
    ]
    for _, v in verdicts.iterrows():
        gc = "—" if v.min_gap_closed != v.min_gap_closed else f"{100 * v.min_gap_closed:.0f} %"
        lines.append(
            f"| {v.condition} | {v.best_rule} | {v.worst_sla_ms:g} | "
            f"{100 * v.worst_diff:+.2f} [{100 * v.worst_diff_lo:+.2f}, "
            f"{100 * v.worst_diff_hi:+.2f}] | {100 * v.mean_diff:+.2f} | "
            f"{100 * v.min_attainment_diff:+.2f} | {gc} | {'yes' if v.meets_criterion else 'no'} |"
        )
    n_ok = int(verdicts.meets_criterion.sum())
    val_ok = ""
    if "val_meets_criterion" in verdicts and verdicts.val_meets_criterion.notna().all():
        val_ok = (
            f" On the validation split (the rules' tuning split; to choose between selectors "
            f"without the test split, `val_*` in report.csv and verdicts.csv): "
            f"{int(verdicts.val_meets_criterion.astype(bool).sum())} of {len(verdicts)}, worst "
            f"SLA {100 * float(verdicts.val_worst_diff_lo.min()):+.2f} points (interval's "
            f"lower end)."
        )
    lines += [
        "",
        f"{n_ok} of {len(verdicts)} conditions meet the criterion"
        + (f"; {minutes:.1f} min." if minutes else " (parts run in parallel, merged).")
        + val_ok,
        "",
        "## Per SLA",
        "",
        "| condition | SLA | rule % | learned % | diff, pts (95 % CI) | ceiling % | oracle % | "
        "gap closed | attainment diff, pts | shield % |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for _, r in report.iterrows():
        gc = "—" if r.gap_closed != r.gap_closed else f"{100 * r.gap_closed:.0f} %"
        lines.append(
            f"| {r.condition} | {r.sla_ms:g} | {100 * r.best_rule_eff_acc:.1f} | "
            f"{100 * r.learned_eff_acc:.1f} | {100 * r['diff']:+.2f} [{100 * r.diff_lo:+.2f}, "
            f"{100 * r.diff_hi:+.2f}] | {100 * r.informed_ceiling_eff_acc:.1f} | "
            f"{100 * r.oracle_eff_acc:.1f} | {gc} | {100 * r.attainment_diff:+.2f} | "
            f"{100 * r.shield_rate:.2f} |"
        )
    return "\n".join(lines) + "\n"


def _exported(policy: Path, out: Path) -> Path:
    """The file a server runs: an ``.onnx`` as given, a ``policy.pt`` exported (pool-agnostic)."""
    if policy.suffix == ".onnx":
        return policy
    from modi.agents.bandits import load_learned
    from modi.agents.export import export_onnx

    return export_onnx(load_learned(policy), out / "selector.onnx")


def _train_default(out: Path, extra: Sequence[str], progress: bool) -> Path:
    """Train ``modi-train``'s default selector (the mixture) into ``out/train``."""
    from modi.experiments.learned_report import _compose
    from modi.experiments.train import prepare_training

    cfg = _compose("train", ["tracking=none", *extra])
    ts = prepare_training(cfg)
    ts.agent.fit(ts.sim, ts.requests, ts.seed, progress=progress)  # type: ignore[arg-type]
    return ts.agent.save(out / "train" / "policy.pt")


def main(argv: list[str] | None = None) -> int:
    """Console entry point."""
    from modi.agents.served import ServedPolicy
    from modi.experiments.learned_report import _compose
    from modi.experiments.summary import summarize
    from modi.experiments.train import evaluate_learned

    p = argparse.ArgumentParser(
        prog="modi-transfer-report",
        description="Evaluate one selector as served, without retraining, on every network "
        "family at its RTT and at 0.5x/2x it, and on pools ten times slower/faster, against "
        "the best rule tuned on each condition's validation split.",
    )
    p.add_argument(
        "--policy",
        type=Path,
        default=None,
        help="policy.pt or .onnx (default: train modi-train's default selector)",
    )
    p.add_argument("--out", type=Path, default=Path("outputs/transfer_report"))
    p.add_argument("--scenarios", nargs="+", default=DEFAULT_SCENARIOS)
    p.add_argument("--rtt-factors", nargs="+", type=float, default=DEFAULT_RTT_FACTORS)
    p.add_argument("--no-pools", action="store_true", help="skip the pool transfers")
    p.add_argument(
        "--no-families",
        action="store_true",
        help="only the pool transfers (with --scenarios/--rtt-factors ignored)",
    )
    p.add_argument(
        "--merge",
        nargs="+",
        type=Path,
        default=None,
        help="combine the report.csv of earlier runs (e.g. parts run in parallel) "
        "into --out's report.csv, verdicts.csv and report.md; nothing is evaluated",
    )
    p.add_argument("--n-requests", type=int, default=None, help="test requests per SLA, seed")
    p.add_argument("--val-requests", type=int, default=None, help="validation requests per SLA")
    p.add_argument(
        "--train-requests",
        type=int,
        default=None,
        help="training requests when no --policy is given",
    )
    p.add_argument(
        "--sla",
        nargs="+",
        type=float,
        default=None,
        help="SLAs (default: TRANSFER_SLAS per scenario, the pools' own sweeps)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    a = p.parse_args(argv)  # fmt: skip
    if a.merge:
        missing = [m for m in a.merge if not (m / "report.csv").is_file()]
        if missing:
            p.error(f"--merge: no report.csv in {', '.join(map(str, missing))}")
        a.out.mkdir(parents=True, exist_ok=True)
        merged = pd.concat([pd.read_csv(m / "report.csv") for m in a.merge], ignore_index=True)
        _write(merged, a.out, ", ".join(str(m) for m in a.merge), 0.0)
        return 0
    known = available("scenario")
    for sc in a.scenarios:
        if sc not in known:
            p.error(f"unknown scenario {sc!r}; expected one of {known}")
    if any(f <= 0 for f in a.rtt_factors):
        p.error("--rtt-factors must be > 0")
    for flag, v in (("--n-requests", a.n_requests), ("--val-requests", a.val_requests),
                    ("--train-requests", a.train_requests)):  # fmt: skip
        if v is not None and v < 1:
            p.error(f"{flag} must be >= 1")
    if a.policy is not None and not a.policy.is_file():
        p.error(f"--policy {a.policy}: no such file (a policy.pt or an exported .onnx)")
    extra = []
    if a.n_requests:
        extra.append(f"eval.n_requests={a.n_requests}")
    if a.val_requests:
        extra += [f"eval.val_n_requests={a.val_requests}", f"tuning.n_requests={a.val_requests}"]
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    a.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    try:
        policy = a.policy
        if policy is None:
            tr = [f"train.requests={a.train_requests}"] if a.train_requests else []
            policy = _train_default(a.out, tr, not a.quiet)
        onnx = _exported(policy, a.out)
        conds = conditions(
            [] if a.no_families else a.scenarios, a.rtt_factors, not a.no_pools,
            lambda ov: _compose("train", ["tracking=none", *ov]),
        )  # fmt: skip
        parts = []
        for c in conds:
            log.info("== %s", c.label)
            ov = [f"scenario={c.scenario}", "tracking=none", *extra, *c.overrides]
            slas = a.sla or (
                None
                if any(o.startswith("sla_ms=") for o in c.overrides)
                else TRANSFER_SLAS.get(c.scenario)
            )
            if slas:
                ov.append(f"sla_ms=[{','.join(f'{s:g}' for s in slas)}]")
            cfg = _compose("train", ov)
            folder = a.out / c.label.replace(" ", "_")
            # a fresh served selector per condition: it binds to the condition's pool
            served = ServedPolicy(onnx)
            val_res, _, summary = evaluate_learned(cfg, served, folder, not a.quiet)
            val_units = pd.read_csv(folder / "val" / "units.csv")
            rule = str(summary.best_rule.iloc[0])
            summary = with_validation(summary, summarize(val_res, val_units, served.name, rule))
            summary.insert(0, "condition", c.label)
            summary.insert(1, "rtt_factor", c.rtt_factor)
            summary.insert(2, "pool", c.pool)
            parts.append(summary)
            pd.concat(parts, ignore_index=True).to_csv(a.out / "report.csv", index=False)
    except ConfigError as e:
        log.error("%s", e)
        return 2
    report = pd.concat(parts, ignore_index=True)
    _write(report, a.out, str(policy), (time.perf_counter() - t0) / 60)
    return 0


def _write(report: pd.DataFrame, out: Path, policy: str, minutes: float) -> None:
    """``report.csv``, ``verdicts.csv`` and ``report.md`` into ``out``; the verdicts to stdout."""
    report.to_csv(out / "report.csv", index=False)
    verdicts = pd.DataFrame([verdict(part) for _, part in report.groupby("condition", sort=False)])
    verdicts.to_csv(out / "verdicts.csv", index=False)
    md = _md(report, verdicts, policy, minutes)
    (out / "report.md").write_text(md)
    sys.stdout.write(md.split("## Per SLA")[0])


if __name__ == "__main__":
    raise SystemExit(main())
