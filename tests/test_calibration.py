"""``modi-calibration``: per model and SLA, the selector's P(met), the informed ceiling's and the
realised counterfactual outcome on the same requests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_module
from omegaconf import DictConfig

from modi.agents.bandits import NeuralBandit
from modi.agents.sb3_agents import PPOAgent
from modi.envs.model_selection import build_sim
from modi.experiments import plots
from modi.experiments.calibration import COLUMNS, calibration
from modi.experiments.common import ConfigError


def _cfg(*extra: str) -> DictConfig:
    with initialize_config_module("modi.conf", version_base="1.3"):
        return compose(
            "compare",
            overrides=["scenario=lte_trace", "sla_ms=[115,300]", "n_requests=600", *extra],
        )


def test_every_model_and_sla_has_a_row_and_the_ceiling_is_calibrated(tmp_path: Path) -> None:
    path = NeuralBandit(seed=0).save(tmp_path / "policy.pt")
    table = calibration(_cfg(f"learned=[{path}]", "split=val"))
    assert list(table.columns) == COLUMNS
    assert len(table) == 2 * 11  # two SLAs x the Table 2 pool
    assert (table.n == 600).all()
    for col in ("realised", "predicted", "ceiling"):
        assert table[col].between(0.0, 1.0).all()
    np.testing.assert_allclose(table.gap, table.predicted - table.realised)
    # a looser SLA is met at least as often, and the ceiling, which knows the download's
    # distribution, is close to what happens on the same requests
    by = table.pivot(index="model", columns="sla_ms", values="realised")
    assert (by[300.0] >= by[115.0]).all()
    assert (table.ceiling - table.realised).abs().max() < 0.06
    png = plots.calibration(table, tmp_path / "calibration.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_needs_one_bandit_selector(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="one saved selector"):
        calibration(_cfg())
    ppo = PPOAgent(seed=0, n_steps=16, batch_size=128, n_epochs=1)
    ppo.fit(build_sim("modipick_table2", num_envs=8), 256, seed=0, progress=False)
    path = ppo.save(tmp_path / "ppo.pt")
    with pytest.raises(ConfigError, match="no P\\(met\\)"):
        calibration(_cfg(f"learned=[{path}]"))
