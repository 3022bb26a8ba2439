"""modi-learned-report at a tiny budget: the report's columns, its protocol, bad input."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from modi.experiments.common import ConfigError
from modi.experiments.learned_report import REPORT_COLUMNS, main, parse_grid

TINY = [
    "--sla", "150", "--n-requests", "200", "--val-requests", "200",
    "--train-requests", "3200", "--grid", "agent=linucb", "--penalties", "0", "1", "--quiet",
]  # fmt: skip


def test_report_at_a_tiny_budget(tmp_path: Path) -> None:
    out = tmp_path / "rep"
    assert main(["--out", str(out), "--scenarios", "realistic_wifi", *TINY]) == 0
    rep = pd.read_csv(out / "report.csv")
    assert list(rep.columns) == REPORT_COLUMNS
    assert list(rep.scenario) == ["realistic_wifi"] and list(rep.sla_ms) == [150.0]
    r = rep.iloc[0]
    for col in ("best_rule_eff_acc", "learned_eff_acc", "informed_ceiling_eff_acc",
                "oracle_eff_acc", "shield_rate"):  # fmt: skip
        assert 0.0 <= r[col] <= 1.0, col
    assert r.diff_lo <= r["diff"] <= r.diff_hi
    assert r.informed_ceiling_eff_acc <= r.oracle_eff_acc + 1e-9
    assert r.best_rule not in ("oracle", "informed_ceiling", "linucb")
    assert r.learned_params.startswith("agent=linucb miss_penalty=")
    # the choice was made on validation: every candidate is recorded there
    choice = pd.read_csv(out / "realistic_wifi" / "validation_choice.csv")
    assert len(choice) == 2 and {"score", "attainment_drop", "shortfall"} <= set(choice.columns)
    test = pd.read_csv(out / "realistic_wifi" / "test" / "results.csv")
    assert (test.split == "test").all() and set(test.seed) == {1000}
    assert "| realistic_wifi | 150 |" in (out / "report.md").read_text()


def test_bad_report_arguments(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path), "--scenarios", "nowhere", "--quiet"])
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path), "--penalties", "-1", "--quiet"])
    with pytest.raises(ConfigError, match="KEY=V1"):
        parse_grid(["agent.width_ms"])
    assert parse_grid(["agent=linucb,linucb_fine", "agent.alpha=0.5"]) == [
        ["agent=linucb", "agent.alpha=0.5"],
        ["agent=linucb_fine", "agent.alpha=0.5"],
    ]
