"""Rules tuned like the agents: parameters chosen on the validation split.

A learned selector is tuned and chosen on validation; the rules it is compared with get the
same treatment (DESIGN.md §4). Each tuned rule has a grid in the config (``tuning.<policy>``);
every grid point runs on the validation streams at every SLA of the sweep, and the point with
the highest mean effective accuracy over the sweep is kept (one setting per scenario, as one
learned selector serves every SLA of a scenario). Reported numbers then come from the test
split, which no tuning saw.

* ``modipick_tuned``: ModiPick's ``T_threshold`` (``threshold_ms``).
* ``mdinference_tuned``: MDInference's ``γ`` (``gamma``).
* ``calibrated_greedy`` / ``model_switching``: ``z`` and the download estimate
  ``d̂ = a_q + b · T_input`` fitted on validation streams (:func:`download_model`), ``q`` tuned.
"""

from __future__ import annotations

import itertools
import json
import logging
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from modi.envs.pools import ModelPool
from modi.experiments.common import ConfigError, as_int

log = logging.getLogger(__name__)

#: Grid keys per tuned policy and the valid range of each: (low, high, low inclusive).
GRID_KEYS: dict[str, dict[str, tuple[float, float, bool]]] = {
    "modipick_tuned": {"threshold_ms": (0.0, 10_000.0, True)},
    "mdinference_tuned": {"gamma": (0.0, 100.0, True)},
    "calibrated_greedy": {"z": (0.0, 100.0, True), "quantile": (0.0, 1.0, False)},
    "model_switching": {"z": (0.0, 100.0, True), "quantile": (0.0, 1.0, False)},
    # queue-aware calibrated greedy (modi-load-report): also the wait per queued request
    "calibrated_greedy_queue": {
        "z": (0.0, 100.0, True),
        "quantile": (0.0, 1.0, False),
        "wait_ms_per_request": (0.0, 100_000.0, True),
    },
}

_CACHE: dict[str, tuple[dict[str, Any], pd.DataFrame]] = {}
_DL_CACHE: dict[str, dict[float, tuple[float, float]]] = {}


def explicit_args(name: str, args: dict[str, Any]) -> bool:
    """Whether ``policy_args`` already fix every tuned parameter (then nothing is tuned)."""
    if name == "modipick_tuned":
        return "threshold_ms" in args
    if name == "mdinference_tuned":
        return "gamma" in args
    return "z" in args and ("download_ms" in args or "quantile" in args)


def grid(cfg: DictConfig, name: str) -> list[dict[str, float]]:
    """The checked grid ``tuning.<name>`` as a list of parameter settings."""
    keys = GRID_KEYS[name]
    node = (cfg.get("tuning") or {}).get(name)
    if node is None:
        raise ConfigError(f"tuning.{name} is missing: give a grid of {sorted(keys)}")
    raw = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node
    if not isinstance(raw, dict) or set(raw) != set(keys):
        raise ConfigError(f"tuning.{name} must map exactly {sorted(keys)} to lists, got {raw!r}")
    values: dict[str, list[float]] = {}
    for k, (lo, hi, lo_incl) in keys.items():
        v = raw[k]
        items = v if isinstance(v, list) else [v]
        if not items:
            raise ConfigError(f"tuning.{name}.{k} is empty: give at least one value")
        for x in items:
            if isinstance(x, bool) or not isinstance(x, (int, float)):
                raise ConfigError(f"tuning.{name}.{k} must list numbers, got {x!r}")
            ok = (x >= lo if lo_incl else x > lo) and (x <= hi if k != "quantile" else x < hi)
            if not ok:
                bounds = f"{'[' if lo_incl else '('}{lo:g}, {hi:g}{')' if k == 'quantile' else ']'}"
                raise ConfigError(f"tuning.{name}.{k}: {x!r} is out of range {bounds}")
        values[k] = [float(x) for x in items]
    return [dict(zip(values, combo, strict=True)) for combo in itertools.product(*values.values())]


def _tuning_requests(cfg: DictConfig) -> int:
    node = cfg.get("tuning") or {}
    return as_int(node.get("n_requests", 3000), "tuning.n_requests")


def _key(cfg: DictConfig, *parts: Any) -> str:
    doc = {
        "network": OmegaConf.to_container(cfg.network, resolve=True),
        "pool": OmegaConf.to_container(cfg.pool, resolve=True),
        "sim": OmegaConf.to_container(cfg.get("sim", {}), resolve=True),
        "splits": OmegaConf.to_container(cfg.splits, resolve=True),
        "parts": [repr(p) for p in parts],
    }
    return json.dumps(doc, sort_keys=True, default=str)


def download_model(
    cfg: DictConfig, pool: ModelPool, setup: Any, qs: list[float]
) -> dict[float, tuple[float, float]]:
    """The download estimate ``d̂ = a_q + b · T_input`` per quantile ``q``, fitted on the
    validation streams (what the server learns from its own traffic before going live):
    ``b`` is the least-squares slope of the download on the measured upload (clipped to
    ``[0, 1]``; 0 where they are unrelated, 1 on the papers' network where the response takes
    as long as the upload), ``a_q`` the ``q``-quantile of ``download − b · T_input``."""
    from modi.envs.simulator import ModelSelectionSim
    from modi.experiments.splits import network_for_split, stream_key

    key = _key(cfg, "download", setup.scenario, setup.slas[0])
    have = _DL_CACHE.setdefault(key, {})
    missing = [q for q in qs if q not in have]
    if missing:
        net = network_for_split(cfg, "val", setup.splits)
        sim = ModelSelectionSim(
            pool, net, num_envs=setup.streams, sla_ms=setup.slas[0], **setup.sim_args
        )
        steps = max(1, _tuning_requests(cfg) // setup.streams)
        outs, ins = [], []
        for seed in setup.splits.val:
            sim.reset(stream_key(setup.scenario, "val", seed, setup.slas[0]))
            fastest = np.full(sim.num_envs, int(np.argmin(pool.mean_ms)))
            for _ in range(steps):
                st = sim.current_state()
                outs.append(st["t_output_ms"].copy())
                ins.append(st["t_input_ms"].copy())
                sim.step(fastest)
        d = np.concatenate(outs)
        x = np.concatenate(ins)
        var = float(np.var(x))
        slope = float(np.clip(np.cov(x, d, bias=True)[0, 1] / var, 0.0, 1.0)) if var > 0 else 0.0
        rest = d - slope * x
        for q in missing:
            have[q] = (float(np.quantile(rest, q)), slope)
        log.info(
            "%s: validation download model d = a_q + %.3f * t_input, a_q %s",
            setup.scenario,
            slope,
            {q: round(have[q][0], 2) for q in sorted(have)},
        )
    return {q: have[q] for q in qs}


def download_args(cfg: DictConfig, pool: ModelPool, setup: Any, q: float) -> dict[str, float]:
    """``CalibratedGreedy`` arguments of the download estimate at quantile ``q``."""
    a, b = download_model(cfg, pool, setup, [q])[q]
    return {"download_ms": a, "download_per_upload": b}


def tune_rule(
    cfg: DictConfig, name: str, pool: ModelPool, setup: Any, progress: bool = False
) -> tuple[dict[str, Any], pd.DataFrame]:
    """Choose ``name``'s parameters on the validation split; returns the chosen constructor
    arguments (with ``quantile`` kept for the record) and the whole grid's scores."""
    from modi.agents.baselines import make_policy
    from modi.experiments.compare import (
        TUNED_RULES,
        WORKER_RULES,
        eval_setup,
        evaluate_points,
        sim_workers,
    )

    points = grid(cfg, name)
    val = eval_setup(cfg, split="val", n_requests=_tuning_requests(cfg))
    val.slas = list(setup.slas)
    val.cvs = setup.cvs
    key = _key(cfg, name, points, val.n_requests, val.slas, val.seeds)
    if key in _CACHE:
        return _CACHE[key]
    qs = sorted({p["quantile"] for p in points if "quantile" in p})
    dl = download_model(cfg, pool, val, qs) if qs else {}
    pols = []
    settings = []
    for i, p in enumerate(points):
        args: dict[str, Any] = {k: v for k, v in p.items() if k != "quantile"}
        if "quantile" in p:
            a, b = dl[p["quantile"]]
            args["download_ms"] = a
            args["download_per_upload"] = b
        if TUNED_RULES[name] in WORKER_RULES:
            args.setdefault("workers", sim_workers(cfg))
        pol = make_policy(TUNED_RULES[name], profile_mu_ms=pool.mean_ms, **args)
        pol.name = f"{name}#{i}"
        pols.append((pol.name, pol))
        settings.append({**p, **args})
    ev = evaluate_points(cfg, pols, val, pool, progress=progress, desc=f"tune {name}")
    score = ev.results.groupby("policy", sort=False).agg(
        effective_accuracy=("effective_accuracy", "mean"), attainment=("attainment", "mean")
    )
    table = pd.DataFrame(settings)
    table["val_effective_accuracy"] = [score.loc[n, "effective_accuracy"] for n, _ in pols]
    table["val_attainment"] = [score.loc[n, "attainment"] for n, _ in pols]
    best = int(np.argmax(table.val_effective_accuracy.to_numpy()))
    chosen = {
        k: (float(v) if isinstance(v, (int, float, np.floating)) else v)
        for k, v in settings[best].items()
    }
    log.info(
        "%s on %s: chose %s (validation effective accuracy %.4f)",
        name,
        setup.scenario,
        chosen,
        table.val_effective_accuracy.iloc[best],
    )
    _CACHE[key] = (chosen, table)
    return chosen, table
