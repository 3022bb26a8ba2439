"""Fixtures shared by test modules."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from modi.agents.bandits import LinUCB
from modi.agents.export import export_onnx
from modi.envs.model_selection import build_sim


@pytest.fixture(scope="session")
def trained_linucb() -> Iterator[LinUCB]:
    """A LinUCB trained on 10,000 requests of the campus network (SLAs 50-400 ms)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # small-batch training: much faster single-threaded here
    try:
        pol = LinUCB(seed=0)
        pol.fit(build_sim(num_envs=64, sla_range_ms=(50.0, 400.0)), 10_000, seed=0, progress=False)
    finally:
        torch.set_num_threads(n)
    yield pol


@pytest.fixture(scope="session")
def bandit_selector_files(trained_linucb: LinUCB, tmp_path_factory: Any) -> dict[str, Path]:
    """Exported pool-agnostic selectors: ``linucb`` (:func:`trained_linucb`) and ``greedy``
    (P(met) = 1 for every model, i.e. always the most accurate model, which the shield has to
    correct for tight budgets)."""
    d = tmp_path_factory.mktemp("bandit_selectors")
    greedy = LinUCB()
    greedy.theta = np.zeros_like(greedy.theta)
    greedy.theta[0] = 1.0
    return {
        "linucb": export_onnx(trained_linucb, d / "linucb.onnx", run_id="r1"),
        "greedy": export_onnx(greedy, d / "greedy.onnx", run_id="r2"),
    }
