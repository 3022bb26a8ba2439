"""Learned vs the best rule, per SLA: the table the project's one claim rests on.

The best rule is chosen on the *validation* split (highest mean effective accuracy over the
sweep, among every rule evaluated, tuned ones included); the numbers are the *test* split's.
Differences are paired stream by stream (the same requests), with 95 % intervals
(:mod:`modi.experiments.stats`); ``gap_closed`` is measured from the best rule to the informed
ceiling (the limit of any policy that sees the observation).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from modi.experiments.stats import mean_ci, paired_ci

#: Policies that are references, not rules a server could run.
REFERENCES: frozenset[str] = frozenset({"oracle", "informed_ceiling"})

SUMMARY_COLUMNS = [
    "scenario",
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
    "informed_ceiling_eff_acc",
    "oracle_eff_acc",
    "ceiling_gap",
    "gap_closed",
    "best_rule_attainment",
    "learned_attainment",
    "attainment_diff",
    "attainment_diff_lo",
    "attainment_diff_hi",
    "shield_rate",
    "n_units",
]


def best_rule(val_results: pd.DataFrame, exclude: Sequence[str] = ()) -> str:
    """The rule with the highest mean validation effective accuracy over the sweep."""
    skip = set(REFERENCES) | set(exclude)
    rules = val_results[~val_results.policy.isin(skip)]
    if rules.empty:
        raise ValueError("no rule to choose from: the evaluation ran only references/learned")
    score = rules.groupby("policy", sort=False).effective_accuracy.mean()
    return str(score.idxmax())


def summarize(
    results: pd.DataFrame,
    units: pd.DataFrame,
    learned: str,
    rule: str,
    params: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """One row per SLA (and CV) of the test split: ``learned`` against ``rule``."""
    rows = []
    keys = ["sla_ms", "cv"]
    units = units.copy()
    results = results.copy()
    for frame in (units, results):
        frame["cv"] = frame["cv"].fillna(-1.0)
    for (sla, cv), res in results.groupby(keys, sort=True):
        by = res.set_index("policy")
        u = units[(units.sla_ms == sla) & (units.cv == cv)]

        def unit(policy: str, col: str, u: pd.DataFrame = u) -> pd.Series:
            return u[u.policy == policy].sort_values(["seed", "stream"])[col].reset_index(drop=True)

        lr_e, rl_e = unit(learned, "effective_accuracy"), unit(rule, "effective_accuracy")
        d, d_lo, d_hi = paired_ci(lr_e, rl_e)
        a, a_lo, a_hi = paired_ci(unit(learned, "attainment"), unit(rule, "attainment"))
        _, l_lo, l_hi = mean_ci(lr_e)
        _, r_lo, r_hi = mean_ci(rl_e)
        best = float(by.loc[rule, "effective_accuracy"])
        mine = float(by.loc[learned, "effective_accuracy"])
        ceil = (
            float(by.loc["informed_ceiling", "effective_accuracy"])
            if "informed_ceiling" in by.index
            else math.nan
        )
        orc = float(by.loc["oracle", "effective_accuracy"]) if "oracle" in by.index else math.nan
        gap = ceil - best
        shield = by.loc[learned].get("shield_rate", math.nan)
        rows.append(
            {
                "scenario": str(res.scenario.iloc[0]),
                "sla_ms": float(sla),
                "best_rule": rule,
                "best_rule_params": _params(params),
                "best_rule_eff_acc": best,
                "best_rule_eff_acc_lo": r_lo,
                "best_rule_eff_acc_hi": r_hi,
                "learned": learned,
                "learned_eff_acc": mine,
                "learned_eff_acc_lo": l_lo,
                "learned_eff_acc_hi": l_hi,
                "diff": d,
                "diff_lo": d_lo,
                "diff_hi": d_hi,
                "informed_ceiling_eff_acc": ceil,
                "oracle_eff_acc": orc,
                "ceiling_gap": gap,
                "gap_closed": (mine - best) / gap if gap > 1e-3 else math.nan,
                "best_rule_attainment": float(by.loc[rule, "attainment"]),
                "learned_attainment": float(by.loc[learned, "attainment"]),
                "attainment_diff": a,
                "attainment_diff_lo": a_lo,
                "attainment_diff_hi": a_hi,
                "shield_rate": float(shield) if shield == shield else math.nan,
                "n_units": int(lr_e.size),
            }
        )
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def _params(params: Mapping[str, Any] | None) -> str:
    if not params:
        return ""
    return ", ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(params.items())
    )


def format_summary(summary: pd.DataFrame) -> str:
    """The summary as a short text table in percent (points for differences)."""
    t = pd.DataFrame(
        {
            "sla_ms": summary.sla_ms.map(lambda v: f"{v:g}"),
            "best rule": summary.best_rule,
            "rule %": (100 * summary.best_rule_eff_acc).map("{:.1f}".format),
            "learned %": (100 * summary.learned_eff_acc).map("{:.1f}".format),
            "diff (95% CI) pts": [
                f"{100 * d:+.2f} [{100 * lo:+.2f}, {100 * hi:+.2f}]"
                for d, lo, hi in zip(summary["diff"], summary.diff_lo, summary.diff_hi, strict=True)
            ],
            "ceiling %": (100 * summary.informed_ceiling_eff_acc).map("{:.1f}".format),
            "oracle %": (100 * summary.oracle_eff_acc).map("{:.1f}".format),
            "gap closed": summary.gap_closed.map(lambda g: "" if g != g else f"{100 * g:.0f}%"),
            "attain. diff pts": (100 * summary.attainment_diff).map("{:+.2f}".format),
            "shield %": (100 * summary.shield_rate).map(lambda v: "" if v != v else f"{v:.2f}"),
        }
    )
    return t.to_string(index=False)
