"""``modi-calibration``: how well a learned selector's ``P(met)`` matches what happens, per model,
SLA and split.

A scorer that ranks models by ``(accuracy + penalty) · P(met)`` is only as good as its
``P(met)``. This command rolls out a scenario's streams (the ``modi-compare`` settings: scenario,
network, pool, ``sla_ms``, ``split``, ``seeds``, ``n_requests``) and at every request records,
for *every* model of the pool, the selector's predicted ``P(met)``, the informed ceiling's
``P(met)`` (it knows the download's distribution at that moment) and whether that model would
have met the SLA (the simulator's counterfactual outcome of the same request). The streams are
driven by the informed ceiling's choices, so every selector is checked on the same requests.

Writes ``calibration.csv`` (``split, sla_ms, model, n, realised, predicted, ceiling, gap``: the
mean of each over the split's requests; ``gap = predicted - realised``) and its reliability
figure ``calibration.png`` in the run folder, and prints the models that meet the SLA at least
2 % of the time::

    modi-calibration scenario=lte_trace 'sla_ms=[115,200,300]' split=test learned=[POLICY.pt]

Bandit selectors only (``policy.pt`` of a neural bandit, LinUCB or linear Thompson sampling),
whose scorer has a ``p_met``; the selector is the saved policy, which its export reproduces
(parity is checked by ``modi-train``).
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
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from tqdm.auto import tqdm

from modi.agents.references import InformedCeiling
from modi.agents.scorers import split_obs
from modi.envs.pools import ModelPool
from modi.experiments import plots
from modi.experiments.common import ConfigError, instantiate_node
from modi.experiments.compare import _point_sims, eval_setup, resolve_policy_path
from modi.experiments.splits import stream_key

log = logging.getLogger(__name__)

COLUMNS = ["split", "sla_ms", "model", "n", "realised", "predicted", "ceiling", "gap"]
#: Models printed: those that meet the SLA at least this often.
PRINT_MIN_REALISED = 0.02


def _scorer(item: Any) -> Any:
    """The ``p_met`` module of the saved selector named by ``learned``."""
    from modi.agents.bandits import load_learned

    path = resolve_policy_path(str(item))
    try:
        policy = load_learned(path)
    except (OSError, ValueError) as e:
        raise ConfigError(f"learned: cannot load {item!r}: {e}") from None
    scorer = policy.scorer()
    if not hasattr(scorer, "p_met"):
        raise ConfigError(
            f"learned: {item!r} is a {type(policy).__name__}, whose scorer has no P(met); "
            "modi-calibration checks the bandit selectors (neural, linucb, lints)"
        )
    return scorer


def calibration(cfg: DictConfig) -> pd.DataFrame:
    """Per SLA point and model: mean predicted, informed and realised ``P(met)``."""
    learned = cfg.get("learned") or []
    items = [learned] if isinstance(learned, str) else list(learned)
    if len(items) != 1:
        raise ConfigError(f"learned must name one saved selector (policy.pt), got {items!r}")
    scorer = _scorer(items[0])
    pool = instantiate_node(cfg, "pool")
    if not isinstance(pool, ModelPool):
        raise ConfigError(f"pool must build a ModelPool, got {type(pool).__name__}")
    setup = eval_setup(cfg)
    steps = math.ceil(setup.n_requests / setup.streams)
    ceiling = InformedCeiling()
    sims = _point_sims(cfg, pool, setup)
    rows = []
    bar = tqdm(total=len(sims) * len(setup.seeds), desc=f"calibration {setup.scenario}")
    for sla, cv, sim in sims:
        pred, info, met = [], [], []
        for seed in setup.seeds:
            obs = sim.reset(stream_key(setup.scenario, setup.split, seed, sla, cv))
            for _ in range(steps):
                with torch.no_grad():
                    r, m = split_obs(torch.as_tensor(obs, dtype=torch.float32))
                    pred.append(scorer.p_met(r, m).double().numpy())
                q = ceiling.p_met(obs, sim)
                info.append(q)
                met.append(sim.current_e2e_ms() <= sim.current_sla_ms()[:, None])
                sim.step(ceiling.select_informed(obs, sim, q))
                obs = sim.obs
            bar.update(1)
        p, q, y = (np.concatenate(x) for x in (pred, info, met))
        for k, model in enumerate(pool.ids):
            rows.append(
                {
                    "split": setup.split,
                    "sla_ms": sla,
                    "model": model,
                    "n": int(y.shape[0]),
                    "realised": float(y[:, k].mean()),
                    "predicted": float(p[:, k].mean()),
                    "ceiling": float(q[:, k].mean()),
                    "gap": float(p[:, k].mean() - y[:, k].mean()),
                }
            )
    bar.close()
    return pd.DataFrame(rows, columns=COLUMNS)


@hydra.main(version_base="1.3", config_path="pkg://modi.conf", config_name="compare")
def main(cfg: DictConfig) -> None:
    """Hydra entry point."""
    out = Path(HydraConfig.get().runtime.output_dir)
    try:
        table = calibration(cfg)
    except (ConfigError, ValueError) as e:
        log.error("%s", e)
        sys.exit(2)
    table.to_csv(out / "calibration.csv", index=False)
    split = str(table.split.iloc[0]) if len(table) else ""
    fig = plots.calibration(
        table, out / "calibration.png", f"P(met) against what happens ({cfg.scenario}, {split})"
    )
    shown = table[table.realised >= PRINT_MIN_REALISED]
    print(
        shown.to_string(
            index=False,
            formatters={"sla_ms": "{:g}".format},
            float_format=lambda v: f"{v:.4f}",
        )
    )
    print(f"\ncalibration: {out / 'calibration.csv'}, {fig}")


if __name__ == "__main__":
    main()
