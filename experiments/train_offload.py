"""``modi-train env=offload``: train, tune, evaluate and export a learned *device* policy.

The protocol is the server side's (DESIGN.md §4, :mod:`modi.experiments.splits`):

* **Splits.** Training, validation and test use the seeds of ``splits`` (the top-level config
  group; the training seed is ``env.train.seed``), disjoint by construction, and trace-driven
  networks (``lte_tmobile``, Mahimahi / throughput traces) read only their split's segment of
  every trace (``splits.segments``). Every request stream is keyed by what it *is*,
  :func:`~modi.experiments.splits.stream_key` ``(scenario, split, seed, SLA)``: all policies of a
  point meet the same requests (common random numbers), and adding a policy, an SLA or a
  scenario changes no other number.
* **Training** (train split): one shared option scorer (:mod:`modi.agents.device_scorer`) on a
  mixture of device tiers × networks × SLAs (``env.devices`` × ``env.networks``, weighted by
  ``env.mixture``), with the tier and the device's own network history among its features.
* **Validation** (val split): every rule's parameters are tuned on a grid (``env.tuning``; one
  setting per scenario, the best mean effective accuracy over the SLAs, ties to less energy);
  the best tuned rule of every scenario × SLA is chosen (highest effective accuracy, ties
  within ``env.eval.tie_tolerance`` to less energy); the learned policy's energy weight is
  chosen among ``env.frontier.w_energy_per_j`` (the weight at which the learned policy is ≥
  the best rule in effective accuracy at ≤ energy at the most validation points).
* **Test** (test split): the learned policy *as exported* — the ONNX file run decision by
  decision by :class:`modi.runtime.DeviceSelector` — beside every tuned rule and ceiling, on
  the same streams; 95 % intervals over independent streams (seed × stream), paired intervals
  for differences (:mod:`modi.experiments.stats`).

Writes into the run folder:

* ``results.csv`` — one row per (scenario, policy, SLA) with the columns of
  ``modi-compare-offload`` (means over the test seeds), ``params`` (the tuned setting),
  ``n_seeds``, ``n_units`` and the 95 % intervals of effective accuracy, attainment and energy
  (``*_lo``, ``*_hi``); the learned row is ``policy = learned`` (served through
  ``DeviceSelector``, ``fallback_rate``: decisions that fell back to PieSlicer);
* ``results_per_seed.csv``, ``units.csv`` (per stream), ``validation.csv`` (every grid point)
  and ``validation_units.csv`` (its per-stream rows), ``tuned.csv`` (the setting kept per
  scenario × rule), ``weights.csv`` (the choice of the energy weight, tie tolerance and anchor
  margin on validation), ``contexts.csv`` (with ``env.select.per_context``: the same choice per
  decision context);
* ``paired.csv`` — per scenario × SLA: the best tuned rule (chosen on validation) against the
  learned policy, paired 95 % intervals of the accuracy and energy differences, verdicts, the
  ceilings, and the gaps closed (PieSlicer's gap to the device oracle);
* ``frontier.csv`` (+ ``frontier_<scenario>.png``) — the learned scorer under each energy
  weight against the tuned rules' (energy, effective accuracy) points on the same test
  streams, and which rule points strictly dominate a learned one;
* ``device_policy.onnx``, ``device_policy.pt``, ``training.csv`` (loss per epoch).
"""

from __future__ import annotations

import copy
import itertools
import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from modi.agents.device_scorer import (
    CONTEXTS,
    DEFAULT_ANCHORS,
    DeviceScorerError,
    DeviceScorerPolicy,
    ServedDevicePolicy,
    anchor_indices,
    device_spec,
    export_device_onnx,
    option_contexts,
    train_device_scorer,
)
from modi.agents.offload_policies import (
    DEVICE_POLICY_NAMES,
    OffloadRollout,
    PieSlicer,
    PrepCeiling,
    make_device_policy,
    rollout_offload,
)
from modi.envs.catalog import PresetError, load_preset, preset_config
from modi.envs.devices import DeviceProfile, radio_profile
from modi.envs.offload import OffloadError, OffloadSim
from modi.envs.pools import ModelPool
from modi.experiments.common import ConfigError, as_float_list, as_int, instantiate_node
from modi.experiments.compare_offload import RESULT_COLUMNS
from modi.experiments.splits import Splits, stream_key, takes_segment
from modi.experiments.stats import mean_ci, paired_ci
from modi.runtime import device_features as dfeat
from modi.runtime.device_meta import context_initializers, radio_class

log = logging.getLogger(__name__)

LEARNED = "learned"
#: The learned device policy with the learned server selector (``env.joint.server_selector``).
JOINT = "learned+server_selector"
#: Metrics with 95 % intervals over streams in ``results.csv``.
CI_COLUMNS = ("effective_accuracy", "attainment", "energy_mj")
#: Grid keys with this prefix go to the rule's server policy (e.g. ``server_gamma``).
SERVER_PREFIX = "server_"


# ============================================================================ config helpers
def _names(node: DictConfig, key: str) -> list[str]:
    value = node.get(key)
    items = [value] if isinstance(value, str) else list(value or [])
    if not items or not all(isinstance(v, str) for v in items):
        raise ConfigError(f"env.{key} must be a name or a non-empty list of names, got {value!r}")
    if len(set(items)) != len(items):
        raise ConfigError(f"env.{key} lists a name twice: {items}")
    return items


def mixture_weights(
    env: DictConfig, key: str, names: Sequence[str], where: str | None = None
) -> dict[str, float]:
    """Relative training weight of each device tier / network (``env.mixture.<key>``; missing:
    1). Every weight must be a finite number > 0 (drop a component from the list instead of
    giving it weight 0), and only listed names may have one; ``where`` names the lists the
    names come from in messages (default ``env.<key>``)."""
    where = where or f"env.{key}"
    node = (env.get("mixture") or {}).get(key)
    raw: Any = {} if node is None else OmegaConf.to_container(node, resolve=True)
    if not isinstance(raw, dict):
        raise ConfigError(f"env.mixture.{key} must be a mapping name -> weight, got {node!r}")
    extra = sorted(set(raw) - set(names))
    if extra:
        raise ConfigError(
            f"env.mixture.{key} weights {extra}, which are not in {where} {list(names)}"
        )
    out = {}
    for n in names:
        w = raw.get(n, 1.0)
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w <= 0:
            raise ConfigError(
                f"env.mixture.{key}.{n} must be a number > 0, got {w!r} (a mixture component "
                f"with zero weight: remove {n!r} from {where} instead)"
            )
        out[n] = float(w)
    return out


def tuning_grid(env: DictConfig, rule: str) -> list[dict[str, Any]]:
    """The settings of ``env.tuning.<rule>`` (every combination of its lists); ``[{}]`` when the
    rule has no grid (its ``env.policy_args`` only)."""
    node = (env.get("tuning") or {}).get(rule)
    if node is None:
        return [{}]
    raw: Any = OmegaConf.to_container(node, resolve=True)
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"env.tuning.{rule} must be a mapping parameter -> list, got {node!r}")
    keys, values = [], []
    for k, v in raw.items():
        vals = v if isinstance(v, list) else [v]
        if not vals:
            raise ConfigError(f"env.tuning.{rule}.{k} is an empty list")
        keys.append(str(k))
        values.append(vals)
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*values)]


def _split_params(params: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    own = {k: v for k, v in params.items() if not k.startswith(SERVER_PREFIX)}
    srv = {k[len(SERVER_PREFIX) :]: v for k, v in params.items() if k.startswith(SERVER_PREFIX)}
    return own, srv


def _server_policy(env: DictConfig, name: str, overrides: dict[str, Any] | None = None) -> Any:
    from modi.agents.baselines import make_policy

    args = dict((env.get("server_policy_args") or {}).get(name, {}) or {})
    args.update(overrides or {})
    try:
        return make_policy(name, **args)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"server policy {name!r} {args}: {e}") from None


# ============================================================================ scenarios
@dataclass
class Scenario:
    """One device tier × network: the presets and the sims of every split."""

    device: str
    network: str
    profile: DeviceProfile
    radio: str
    networks: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """``<device>_<network>``."""
        return f"{self.device}_{self.network}"


def _network(name: str, split: str, splits: Splits) -> Any:
    node = OmegaConf.create(preset_config("network", name))
    if split in splits.segments and takes_segment(node):
        return load_preset("network", name, segment=list(splits.segments[split]))
    return load_preset("network", name)


def build_scenarios(
    env: DictConfig,
    devices: Sequence[str],
    networks: Sequence[str],
    splits: Splits,
    key: str = "env.networks",
) -> list[Scenario]:
    """Load every device and network preset (per split: trace segments) before anything runs,
    so an unknown tier or network fails first, naming it (and ``key``, the list it is in)."""
    profiles: dict[str, DeviceProfile] = {}
    for d in devices:
        try:
            p = load_preset("device", d)
        except (PresetError, ValueError, TypeError) as e:
            raise ConfigError(f"env.devices: {e}") from None
        if not isinstance(p, DeviceProfile):
            raise ConfigError(f"env.devices: preset {d!r} does not build a DeviceProfile")
        profiles[d] = p
    table = env.get("radio") or {}
    out = []
    nets: dict[tuple[str, str], Any] = {}
    for n in networks:
        for split in ("train", "val", "test"):
            try:
                nets[n, split] = _network(n, split, splits)
            except (PresetError, ValueError, TypeError) as e:
                raise ConfigError(f"{key}: {e}") from None
    default = str(table.get("default", "wifi"))
    unlisted = [n for n in networks if n not in table]
    if unlisted:
        log.warning(
            "%s %s: no entry in env.radio, priced with its default radio %r (set "
            "env.radio.<network>=wifi|lte|3g)",
            key,
            unlisted,
            default,
        )
    for d in devices:
        for n in networks:
            sc = Scenario(d, n, profiles[d], str(table.get(n, default)))
            sc.networks = {s: nets[n, s] for s in ("train", "val", "test")}
            out.append(sc)
    return out


def make_sim(
    env: DictConfig,
    sc: Scenario,
    split: str,
    pool: ModelPool,
    num_envs: int,
    objective: tuple[float, float],
    **kwargs: Any,
) -> OffloadSim:
    """A sim of scenario ``sc`` on ``split``'s network (its own copy of the network)."""
    args: dict[str, Any] = OmegaConf.to_container(env.get("sim", {}), resolve=True)  # type: ignore[assignment]
    args = {k: v for k, v in args.items() if v is not None}
    try:
        return OffloadSim(
            sc.profile,
            copy.deepcopy(sc.networks[split]),
            pool,
            num_envs=num_envs,
            radio=sc.radio,
            energy_cost_per_j=objective[0],
            bandwidth_cost_per_mb=objective[1],
            **args,
            **kwargs,
        )
    except (TypeError, OffloadError) as e:
        raise ConfigError(f"env.sim: {e}") from None


# ============================================================================ rollouts
def unit_metrics(r: OffloadRollout) -> dict[str, np.ndarray[Any, Any]]:
    """Per stream (the independent unit): effective accuracy, attainment, energy (mJ)."""
    f = r.fields
    return {
        "effective_accuracy": f["accuracy"].mean(axis=0),
        "attainment": f["met"].mean(axis=0),
        "energy_mj": f["energy_mj"].mean(axis=0),
    }


def run_point(
    policy: Any, sim: OffloadSim, sla_ms: float, key: list[int], steps: int
) -> OffloadRollout:
    """``policy`` on the stream ``key`` of one SLA point (every stream of ``sim`` at
    ``sla_ms``)."""
    sim.sla_ms[:] = sla_ms
    return rollout_offload(policy, sim, steps, key)


class _Recorder:
    """Collects per-seed summary rows and per-stream unit rows."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.units: list[dict[str, Any]] = []

    def add(self, r: OffloadRollout, sim: OffloadSim, meta: dict[str, Any]) -> dict[str, Any]:
        row = meta | r.summary(sim.num_local)
        self.rows.append(row)
        u = unit_metrics(r)
        for k in range(sim.num_envs):
            self.units.append(
                {
                    "scenario": meta["scenario"],
                    "policy": meta["policy"],
                    "sla_ms": meta["sla_ms"],
                    "seed": meta["seed"],
                    "stream": k,
                    "params": meta.get("params", ""),
                }
                | {c: float(u[c][k]) for c in CI_COLUMNS}
            )
        return row


def make_rule(
    env: DictConfig,
    name: str,
    params: dict[str, Any],
    sc: Scenario,
    pool: ModelPool,
    objective: tuple[float, float],
    train_seed: int,
    fits: dict[tuple[str, str], Any],
) -> tuple[Any, Any, str]:
    """A rule (or ceiling) with ``policy_args`` + ``params``, its server policy and its name.
    PieSlicer is fitted on the *training* split (its measurement campaign), once per scenario
    and fit setting; the ceilings are bound to the sim by the caller."""
    own, srv_over = _split_params(params)
    args = dict((env.get("policy_args") or {}).get(name, {}) or {}) | own
    try:
        pol = make_device_policy(name, **args)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"env.policy_args/env.tuning {name} {args}: {e}") from None
    server_name = getattr(pol, "server_policy", None) or str(env.get("server_policy", "modipick"))
    server = _server_policy(env, server_name, srv_over)
    if isinstance(pol, PieSlicer):
        fkey = (sc.name, f"{pol.bandwidth}/{pol.use_network_features}/{pol.fit_requests}")
        if fkey not in fits:
            fit_sim = make_sim(env, sc, "train", pool, 10, objective, sla_ms=10_000.0)
            fit_sim.set_server_policy(server)
            key = stream_key(f"{sc.name}/pieslicer_fit", "train", train_seed, 0.0)
            fits[fkey] = pol.fit(fit_sim, seed=key)
        pol.coef = fits[fkey]
    return pol, server, server_name


# ============================================================================ tables
def aggregate(per_seed: pd.DataFrame, units: pd.DataFrame) -> pd.DataFrame:
    """``results.csv``: means over seeds, 95 % intervals over streams (seed × stream)."""
    keys = ["scenario", "device", "network", "policy", "server_policy", "sla_ms"]
    extra = [c for c in ("params", "fallback_rate") if c in per_seed.columns]
    rows = []
    ukey = units.set_index(["scenario", "policy", "sla_ms"]).sort_index()
    for k, g in per_seed.groupby(keys, sort=False):
        row = dict(zip(keys, k, strict=True))
        row |= g.drop(columns=[*keys, "seed", *extra]).mean(numeric_only=True).to_dict()
        for c in extra:
            row[c] = g[c].iloc[0]
        row["seed"] = -1
        row["n_seeds"] = len(g)
        u = ukey.loc[(row["scenario"], row["policy"], row["sla_ms"])]
        row["n_units"] = len(u)
        for c in CI_COLUMNS:
            _, lo, hi = mean_ci(u[c].to_numpy())
            row[f"{c}_lo"], row[f"{c}_hi"] = lo, hi
        rows.append(row)
    cols = (
        RESULT_COLUMNS
        + extra
        + ["n_seeds", "n_units"]
        + [f"{c}_{s}" for c in CI_COLUMNS for s in ("lo", "hi")]
    )
    return pd.DataFrame(rows)[cols]


#: The rule whose action is the default anchor (offload with on-device preprocessing, no
#: backup, the env's server policy): paired.csv's ``anchor_*`` columns compare it alone
#: (written when the exported policy is anchored on it alone).
ANCHOR_RULE = "static_local"


def choose_best_rule(val: pd.DataFrame, rules: Sequence[str], tol: float) -> dict[Any, str]:
    """Per (scenario, SLA): the rule with the highest validation effective accuracy; rules
    within ``tol`` of it are tied and the one with less energy is kept."""
    out = {}
    for (scen, sla), g in val[val.policy.isin(rules)].groupby(["scenario", "sla_ms"]):
        m = g.groupby("policy")[["effective_accuracy", "energy_mj"]].mean()
        top = m[m.effective_accuracy >= m.effective_accuracy.max() - tol]
        out[scen, sla] = str(top.energy_mj.idxmin())
    return out


def choose_budget_rule(
    val: pd.DataFrame, rules: Sequence[str], learned: str, tol: float
) -> dict[Any, str | None]:
    """Per (scenario, SLA): the most accurate rule on validation among those whose validation
    energy is at most the learned policy's (``learned``: its validation name), ties within
    ``tol`` to less energy; ``None`` where every rule spends more. The other reading of "at
    equal or lower energy": the best rule an engineer could run within the learned policy's
    energy budget (the frontier question at the exported setting)."""
    out: dict[Any, str | None] = {}
    for (scen, sla), g in val.groupby(["scenario", "sla_ms"]):
        m = g.groupby("policy")[["effective_accuracy", "energy_mj"]].mean()
        if learned not in m.index or not math.isfinite(float(m.energy_mj[learned])):
            continue  # no budget: not chosen (paired_table reports the point as not judged)
        budget = float(m.energy_mj[learned]) * (1 + 1e-9) + 1e-9
        r = m[m.index.isin(rules) & (m.energy_mj <= budget)]
        if r.empty:
            out[scen, sla] = None
            continue
        top = r[r.effective_accuracy >= r.effective_accuracy.max() - tol]
        out[scen, sla] = str(top.energy_mj.idxmin())
    return out


def _verdict(lo: float, hi: float, up: str, down: str) -> str:
    if lo > 0:
        return up
    if hi < 0:
        return down
    return "tie"


def _ge_at_le_energy(d_lo: float, d_hi: float, e_lo: float, e_hi: float) -> bool:
    """The paired verdict "at least as accurate at no more energy": the accuracy interval is
    not below zero and the energy interval not above."""
    return (
        _verdict(d_lo, d_hi, "better", "worse") != "worse"
        and _verdict(e_lo, e_hi, "more", "less") != "more"
    )


def paired_table(
    units: pd.DataFrame,
    best: dict[Any, str],
    rules: Sequence[str],
    matters_points: float = 0.005,
    anchor_rule: str | None = ANCHOR_RULE,
    budget: dict[Any, str | None] | None = None,
) -> pd.DataFrame:
    """Learned − the best tuned rule (chosen on validation) per scenario × SLA, paired over
    the same streams, with the ceilings and gaps closed (PieSlicer's gap closed to the
    clairvoyant ``oracle``, ``pieslicer_gap_closed``, and to the informed ``prep_ceiling``,
    ``pieslicer_gap_closed_prep``; NaN where PieSlicer is within 0.1 point of it or above).
    ``choice_matters``: the device oracle beats the best tuned rule by at least
    ``matters_points`` of effective accuracy on test (room for a better decision; where a rule
    already reaches the ceiling, only energy is left to gain). With ``budget``
    (:func:`choose_budget_rule`), also learned − the best rule within the learned policy's
    validation energy (``budget_*``; ``budget_rule`` "none" where no rule fits the budget, ""
    where the point has no validation budget; ``budget_not_worse``: the accuracy interval is
    not below zero, or no rule fits)."""
    out = []
    for (scen, sla), g in units.groupby(["scenario", "sla_ms"], sort=False):
        rule = best.get((scen, sla))
        if rule is None or LEARNED not in set(g.policy):
            continue

        def col(p: str, c: str, g: pd.DataFrame = g) -> np.ndarray[Any, Any]:
            return g[g.policy == p].sort_values(["seed", "stream"])[c].to_numpy()

        la, ra = col(LEARNED, "effective_accuracy"), col(rule, "effective_accuracy")
        le, re = col(LEARNED, "energy_mj"), col(rule, "energy_mj")
        d, d_lo, d_hi = paired_ci(la, ra)
        e, e_lo, e_hi = paired_ci(le, re)
        means = g.groupby("policy").effective_accuracy.mean()
        have = [r for r in rules if r in means.index]
        room = float(means["oracle"]) - float(ra.mean()) if "oracle" in means.index else math.nan
        acc_v = _verdict(d_lo, d_hi, "better", "worse")
        en_v = _verdict(e_lo, e_hi, "more", "less")
        row: dict[str, Any] = {
            "scenario": scen,
            "sla_ms": sla,
            "best_rule": rule,
            "best_rule_eff_acc": float(ra.mean()),
            "learned_eff_acc": float(la.mean()),
            "diff": d,
            "diff_lo": d_lo,
            "diff_hi": d_hi,
            "best_rule_energy_mj": float(re.mean()),
            "learned_energy_mj": float(le.mean()),
            "energy_diff_mj": e,
            "energy_diff_lo": e_lo,
            "energy_diff_hi": e_hi,
            "accuracy_verdict": acc_v,
            "energy_verdict": en_v,
            "ge_at_le_energy": _ge_at_le_energy(d_lo, d_hi, e_lo, e_hi),
            "choice_matters": bool(room >= matters_points),
            "best_test_rule": str(means[have].idxmax()),
            "best_test_rule_eff_acc": float(means[have].max()),
        }
        if anchor_rule is not None and anchor_rule in means.index:
            # the anchor alone (the rule the anchored policy departs from), same verdict
            aa, ae = col(anchor_rule, "effective_accuracy"), col(anchor_rule, "energy_mj")
            a_d, a_lo, a_hi = paired_ci(aa, ra)
            _, ae_lo, ae_hi = paired_ci(ae, re)
            row["anchor_eff_acc"] = float(aa.mean())
            row["anchor_diff"] = a_d
            row["anchor_ge_at_le_energy"] = _ge_at_le_energy(a_lo, a_hi, ae_lo, ae_hi)
        if budget is not None:
            brule = budget.get((scen, sla), "")  # "": not chosen (no validation budget)
            # "none": every rule spends more than the learned policy (nothing to be worse than)
            row["budget_rule"] = "none" if brule is None else brule
            b_acc = b_en = b_d = b_lo = b_hi = math.nan
            if brule:
                ba = col(brule, "effective_accuracy")
                b_acc, b_en = float(ba.mean()), float(col(brule, "energy_mj").mean())
                b_d, b_lo, b_hi = paired_ci(la, ba)
            row |= {"budget_rule_eff_acc": b_acc, "budget_rule_energy_mj": b_en,
                    "budget_diff": b_d, "budget_diff_lo": b_lo, "budget_diff_hi": b_hi,
                    "budget_not_worse": brule is None or bool(brule and not b_hi < 0)}  # fmt: skip
        for ceil in ("prep_ceiling", "oracle"):
            row[f"{ceil}_eff_acc"] = float(means[ceil]) if ceil in means.index else math.nan
        if "oracle" in means.index:
            gap = float(means["oracle"]) - row["best_rule_eff_acc"]
            row["gap_closed_to_oracle"] = d / gap if gap > 1e-3 else math.nan
        if "pieslicer" in means.index:
            ps = float(means["pieslicer"])
            row["pieslicer_eff_acc"] = ps
            # PieSlicer's gap closed to each device ceiling: the clairvoyant oracle, and
            # prep_ceiling (the informed one: the location of lower expected pre-execution time
            # under the simulator's laws); NaN where PieSlicer is not below the ceiling
            for ceil, key in (("oracle", "pieslicer_gap_closed"),
                              ("prep_ceiling", "pieslicer_gap_closed_prep")):  # fmt: skip
                if ceil in means.index:
                    gap = float(means[ceil]) - ps
                    row[key] = (row["learned_eff_acc"] - ps) / gap if gap > 1e-3 else math.nan
        out.append(row)
    return pd.DataFrame(out)


def dominated_by(frontier: pd.DataFrame) -> list[str]:
    """For each learned frontier point, the rules (same scenario and SLA) that strictly dominate
    it: at least its effective accuracy at no more energy, better in one of the two ("" if
    none); empty for the rules' own rows."""
    out = []
    for _, r in frontier.iterrows():
        if r.kind != "learned":
            out.append("")
            continue
        rules = frontier[
            (frontier.kind == "rule")
            & (frontier.scenario == r.scenario)
            & (frontier.sla_ms == r.sla_ms)
        ]
        dom = rules[
            (rules.effective_accuracy >= r.effective_accuracy)
            & (rules.energy_mj <= r.energy_mj)
            & ((rules.effective_accuracy > r.effective_accuracy) | (rules.energy_mj < r.energy_mj))
        ]
        out.append(";".join(dom.policy))
    return out


def dominated_by_paired(frontier: pd.DataFrame, front_units: pd.DataFrame,
                        units: pd.DataFrame) -> list[str]:  # fmt: skip
    """:func:`dominated_by` with paired 95 % intervals over the same streams: for each learned
    frontier point, the rules whose paired verdict against it is "at least as accurate at no
    more energy" (neither interval against the rule) with one of the two significantly better
    (accuracy interval above zero or energy interval below). A rule equal to the learned
    point up to the streams' noise does not dominate it. ``front_units``: the learned
    frontier's per-stream rows (``scenario, policy, sla_ms, seed, stream, effective_accuracy,
    energy_mj``); ``units``: the test split's (the rules' rows are taken on the same seeds and
    streams)."""
    keys = ["seed", "stream"]
    cols = ["effective_accuracy", "energy_mj"]

    def by_point(df: pd.DataFrame) -> dict[tuple[Any, ...], pd.DataFrame]:
        groups = df.groupby(["scenario", "policy", "sla_ms"], sort=False)
        return {k: g.set_index(keys)[cols] for k, g in groups}

    mine_at, theirs_at = by_point(front_units), by_point(units)
    rules = frontier[frontier.kind == "rule"]
    rules_at = rules.groupby(["scenario", "sla_ms"], sort=False).policy.apply(list).to_dict()
    out = []
    for r in frontier.itertuples():
        mine = mine_at.get((r.scenario, r.policy, r.sla_ms))
        if r.kind != "learned" or mine is None:
            out.append("")
            continue
        dom = []
        for rule in rules_at.get((r.scenario, r.sla_ms), []):
            theirs = theirs_at.get((r.scenario, rule, r.sla_ms))
            if theirs is None:
                continue
            both = mine.join(theirs.add_suffix("_rule"), how="inner")
            if both.empty:
                continue
            _, a_lo, a_hi = paired_ci(both.effective_accuracy_rule, both.effective_accuracy)
            _, e_lo, e_hi = paired_ci(both.energy_mj_rule, both.energy_mj)
            if _ge_at_le_energy(a_lo, a_hi, e_lo, e_hi) and (a_lo > 0 or e_hi < 0):
                dom.append(str(rule))
        out.append(";".join(dom))
    return out


def learned_name(
    w_energy_per_j: float, tie_tolerance: float = 0.0, anchor_margin: float | None = None
) -> str:
    """The validation / frontier name of the learned policy under one choice setting."""
    name = f"{LEARNED}_w{w_energy_per_j:g}"
    if tie_tolerance > 0:
        name += f"_t{tie_tolerance:g}"
    return name if anchor_margin is None else f"{name}_a{anchor_margin:g}"


#: The validation name of the per-context policy (``env.select.per_context``).
CONTEXT_POLICY = f"{LEARNED}_contexts"

#: One choice setting of the exported policy: (energy weight, tie tolerance, anchor margin).
Setting = tuple[float, float, float | None]


def anchor_margins(
    select: Any, where: str = "env.select.anchor_margin", default: Any = (None,)
) -> list[float | None]:
    """``env.select.anchor_margin`` (or the node's ``anchor_margin``, named ``where`` in
    errors): a list of margins >= 0 or ``null`` (off). Missing: ``default`` (``[null]``); an
    empty list is refused unless ``default`` is empty too."""
    raw = select.get("anchor_margin", list(default)) if select else list(default)
    if raw is None or isinstance(raw, (int, float)):
        raw = [raw]
    out: list[float | None] = []
    for v in raw:
        if v is None:
            out.append(None)
            continue
        try:
            f = float(v)
        except (TypeError, ValueError):
            f = math.nan
        if not (math.isfinite(f) and f >= 0) or isinstance(v, bool):
            raise ConfigError(f"{where}: expected null or numbers >= 0, got {v!r}")
        out.append(f)
    if not out and not default:
        return out
    if not out:
        raise ConfigError(f"{where}: empty list (use [null] for off)")
    return out


def points_ge_at_le_energy(
    val: pd.DataFrame,
    best: dict[Any, str],
    name: str,
    tol: float,
    units: pd.DataFrame | None = None,
) -> tuple[int, float]:
    """The validation points (of ``best``: (scenario, SLA) → best rule) at which the policy
    ``name`` is ≥ the best rule in effective accuracy at ≤ its energy, and its mean effective
    accuracy over them. A point counts when the means of ``val`` say so (accuracy ≥ the
    rule's − ``tol``, energy ≤ the rule's) or, given the validation ``units`` (per stream),
    when the paired 95 % intervals say neither "worse" nor "more energy" (the test's
    verdict)."""
    return _points(*_indexed(val, units), best, name, tol)


def _indexed(val: pd.DataFrame, units: pd.DataFrame | None) -> tuple[pd.DataFrame, Any]:
    """``val``'s means and ``units`` indexed by (scenario, SLA, policy), once per choice."""
    m = val.groupby(["scenario", "sla_ms", "policy"])[["effective_accuracy", "energy_mj"]].mean()
    u = None if units is None else units.set_index(["scenario", "sla_ms", "policy"]).sort_index()
    return m, u


def _points(
    m: pd.DataFrame, u: Any, best: dict[Any, str], name: str, tol: float
) -> tuple[int, float]:
    ok = 0
    accs = 0.0
    for (scen, sla), rule in best.items():
        lr, rl = m.loc[(scen, sla, name)], m.loc[(scen, sla, rule)]
        good = bool(
            lr.effective_accuracy >= rl.effective_accuracy - tol
            and lr.energy_mj <= rl.energy_mj * (1 + 1e-9) + 1e-9
        )
        if not good and u is not None:
            a = u.loc[(scen, sla, name)].sort_values(["seed", "stream"])
            b = u.loc[(scen, sla, rule)].sort_values(["seed", "stream"])
            _, _, d_hi = paired_ci(a.effective_accuracy, b.effective_accuracy)
            _, e_lo, _ = paired_ci(a.energy_mj, b.energy_mj)
            good = bool(d_hi >= 0 and e_lo <= 0)
        ok += int(good)
        accs += float(lr.effective_accuracy)
    return ok, accs / max(1, len(best))


def choose_setting(
    val: pd.DataFrame,
    best: dict[Any, str],
    settings: Sequence[Setting],
    tol: float,
    units: pd.DataFrame | None = None,
) -> tuple[Setting, pd.DataFrame]:
    """The exported policy's (energy weight, tie tolerance, anchor margin), chosen on
    validation: the setting at which the learned policy is ≥ the best rule in effective
    accuracy at ≤ its energy at the most scenario × SLA points
    (:func:`points_ge_at_le_energy`); ties: higher mean effective accuracy, then the smaller
    weight, tolerance and anchor margin (off first). Returns it and the table of every
    setting."""
    rows = []
    m, u = _indexed(val, units)
    for w, t, anchor in settings:
        ok, acc = _points(m, u, best, learned_name(w, t, anchor), tol)
        rows.append(
            {
                "w_energy_per_j": w,
                "tie_tolerance": t,
                "anchor_margin": anchor,
                "points_ge_at_le_energy": float(ok),
                "points": len(best),
                "mean_eff_acc": acc,
            }
        )
    table = pd.DataFrame(rows)
    off_first = [-1.0 if r["anchor_margin"] is None else r["anchor_margin"] for r in rows]
    order = table.assign(_a=off_first).sort_values(
        ["points_ge_at_le_energy", "mean_eff_acc", "w_energy_per_j", "tie_tolerance", "_a"],
        ascending=[False, False, True, True, True],
    )
    top = order.iloc[0]
    a = None if top._a < 0 else float(top._a)
    return (float(top.w_energy_per_j), float(top.tie_tolerance), a), table


def scenario_context(sc: Scenario) -> str:
    """The decision context (:data:`~modi.agents.device_scorer.CONTEXTS`) of a scenario's
    rows: its tier and the class of the radio it is priced with (what its observations say)."""
    return f"{sc.profile.tier}/{radio_class(radio_profile(sc.radio).active_mw / 1e3)}"


def means_from_units(units: pd.DataFrame) -> pd.DataFrame:
    """Per-seed mean rows (``choose_setting``'s ``val``) of per-stream validation rows."""
    keys = ["scenario", "sla_ms", "policy", "seed"]
    return units.groupby(keys, as_index=False)[["effective_accuracy", "energy_mj"]].mean()


def choose_context_settings(
    val: pd.DataFrame,
    best: dict[Any, str],
    settings: Sequence[Setting],
    tol: float,
    units: pd.DataFrame | None,
    context_of: Mapping[str, str],
    fallback: Setting,
) -> tuple[dict[str, Setting], pd.DataFrame]:
    """A setting per decision context, each chosen by :func:`choose_setting` on the points of
    that context's scenarios (``context_of``: scenario → context); a context without a
    validation scenario gets ``fallback``. Returns the choice and the table of every
    (context, setting)."""
    out: dict[str, Setting] = {}
    tables = []
    for ctx in CONTEXTS:
        sub = {k: v for k, v in best.items() if context_of.get(k[0]) == ctx}
        if not sub:
            out[ctx] = fallback
            continue
        out[ctx], table = choose_setting(val, sub, settings, tol, units)
        a = table.anchor_margin.astype(float).fillna(-1.0)
        want = -1.0 if out[ctx][2] is None else out[ctx][2]
        tables.append(
            table.assign(
                context=ctx,
                chosen=(table.w_energy_per_j == out[ctx][0])
                & (table.tie_tolerance == out[ctx][1])
                & (a == want),
            )
        )
    cols = ["context", "w_energy_per_j", "tie_tolerance", "anchor_margin"]
    table = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=cols)
    return out, table[[*cols, *[c for c in table.columns if c not in cols]]]


def context_rows(
    val: pd.DataFrame, choice: Mapping[str, Setting], context_of: Mapping[str, str], name: str
) -> pd.DataFrame:
    """The validation rows of the per-context policy, named ``name``: in each scenario, the
    rows of its context's setting."""
    parts = [
        val[(val.scenario == scen) & (val.policy == learned_name(*choice[ctx]))]
        for scen, ctx in context_of.items()
        if ctx in choice
    ]
    return pd.concat(parts, ignore_index=True).assign(policy=name)


def frontier_settings(
    val: pd.DataFrame,
    weights: Sequence[float],
    settings: Sequence[Setting],
    shipped: Setting,
    w_bytes_per_mb: float = 0.0,
    dominated: Mapping[str, int] | None = None,
) -> tuple[dict[float, Setting], pd.DataFrame]:
    """The learned frontier's choice setting per energy weight, chosen on validation: at each
    weight ``w`` of the frontier, the (tie tolerance, anchor margin) of ``settings`` with the
    fewest validation points a rule dominates (``dominated``: the count per learned name, from
    :func:`validation_frontier`; the criterion the frontier is judged by, as the shipped
    setting is chosen by its points against the rules), then the highest validation objective
    *at that weight* (mean of effective accuracy − ``w`` × energy (J) − ``w_bytes_per_mb`` × MB
    sent), then the smaller tolerance and the smaller margin (off first); at the shipped
    weight, the shipped setting (the exported policy is a point of its frontier). Returns the
    choice per weight and the table of every candidate."""
    m = val.groupby("policy")[["effective_accuracy", "energy_mj", "kb_sent"]].mean()
    rows: list[dict[str, Any]] = []
    out: dict[float, Setting] = {}
    for w in weights:
        cands: list[tuple[int, float, float, float | None]] = []
        for ww, t, a in settings:
            if ww != w:
                continue
            r = m.loc[learned_name(w, t, a)]
            obj = float(
                r.effective_accuracy - w * r.energy_mj / 1e3 - w_bytes_per_mb * r.kb_sent / 1e3
            )
            dom = 0 if dominated is None else int(dominated.get(learned_name(w, t, a), 0))
            cands.append((-dom, obj, t, a))
            rows.append(
                {"w_energy_per_j": w, "tie_tolerance": t, "anchor_margin": a,
                 "val_dominated": dom, "val_objective": obj}
            )  # fmt: skip
        if not cands:
            raise ConfigError(f"env.frontier: no validation setting at energy weight {w:g}")
        if w == shipped[0]:
            out[w] = shipped
            continue
        best = max(cands, key=lambda c: (c[0], c[1], -c[2], -(-1.0 if c[3] is None else c[3])))
        out[w] = (w, best[2], best[3])
    for r in rows:
        r["chosen"] = out[r["w_energy_per_j"]][1:] == (r["tie_tolerance"], r["anchor_margin"])
    return out, pd.DataFrame(rows)


def validation_frontier(
    val: pd.DataFrame, val_units: pd.DataFrame, rules: Sequence[str], names: Sequence[str]
) -> pd.DataFrame:
    """The frontier of the learned policies ``names`` (one per energy weight) against every
    tuned rule on the *validation* split (``val``/``val_units``: the tuned rules' and the
    learned settings' rows), with :func:`dominated_by_paired` on the validation streams: what
    a frontier choice is judged by before the test split."""
    keep = val[val.policy.isin([*rules, *names])]
    fr = (
        keep.groupby(["scenario", "policy", "sla_ms"], sort=False)[
            ["effective_accuracy", "energy_mj"]
        ]
        .mean()
        .reset_index()
    )
    fr["kind"] = np.where(fr.policy.isin(list(names)), "learned", "rule")
    fr["dominated_by_ci"] = dominated_by_paired(
        fr, val_units[val_units.policy.isin(list(names))], val_units
    )
    return fr


# ============================================================================ parity
def check_parity(
    policy: DeviceScorerPolicy,
    onnx_path: Path,
    sims: list[OffloadSim],
    n_obs: int,
    keys: Sequence[list[int]],
) -> float:
    """Fraction of ``n_obs`` env observations (the policy's own rollouts on ``sims``, reset
    with ``keys``) on which the ONNX file picks the same action as the trained policy."""
    import onnxruntime as ort

    # a per-context policy: each decision context's setting fed to the graph's setting
    # inputs (as DeviceSelector runs it); the file as it is otherwise
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    settings = (
        [{}]
        if policy.contexts is None
        else [context_initializers(policy.contexts[c], policy.w_bytes_per_mb) for c in CONTEXTS]
    )
    same = total = 0
    per_sim = max(1, math.ceil(n_obs / len(sims)))
    for sim, key in zip(sims, keys, strict=True):
        obs = sim.reset(key)
        got = 0
        while got < per_sim:
            a = policy.select(obs)
            options = dfeat.option_features(obs)
            ctx_of = option_contexts(options) if policy.contexts is not None else None
            scores = np.empty(options.shape[:2], dtype=np.float64)
            for i, setting in enumerate(settings):
                rows = np.ones(len(options), bool) if ctx_of is None else ctx_of == i
                if rows.any():
                    feeds = {"options": options[rows], **setting}
                    scores[rows] = sess.run(["scores"], feeds)[0]
            b = dfeat.option_actions(sim.num_local)[scores.argmax(axis=1)]
            take = min(per_sim - got, len(obs))
            same += int((a[:take] == b[:take]).all(axis=1).sum())
            total += take
            got += take
            sim.step(a)
            obs = sim.obs
    return same / total


class _Agreement:
    """Wraps the served policy and counts how often its decisions equal the trained scorer's."""

    def __init__(self, served: ServedDevicePolicy, trained: DeviceScorerPolicy) -> None:
        self.served, self.trained = served, trained
        self.name = served.name
        self.server_policy = served.server_policy
        self.same = self.total = 0

    def reset(self, num_envs: int, seed: int | None = None) -> None:
        """Deterministic."""

    def select(self, obs: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        """The served decisions."""
        a = self.served.select(obs)
        self.same += int((a == self.trained.select(obs)).all(axis=1).sum())
        self.total += len(a)
        return a


def _joint_server(env: DictConfig, pool: ModelPool) -> Any:
    """The learned server selector of ``env.joint.server_selector`` (an exported ``.onnx``,
    served through :class:`modi.runtime.Selector` with its shipped defaults), or None."""
    path = (env.get("joint") or {}).get("server_selector")
    if path is None:
        return None
    from modi.agents.served import ServedPolicy

    try:
        served = ServedPolicy(str(path), name="server_selector")
    except Exception as e:  # a file the runtime refuses: named, before training
        raise ConfigError(f"env.joint.server_selector {path}: {e}") from None
    from modi.agents.export import read_metadata

    meta = read_metadata(Path(str(path)))
    ids = None if meta.pool_agnostic else list(meta.pool_model_ids)
    if ids is not None and len(ids) != len(pool):
        raise ConfigError(
            f"env.joint.server_selector {path} serves {len(ids)} models, the env's server pool "
            f"has {len(pool)}"
        )
    return served


# ============================================================================ the run
def _tracking(cfg: DictConfig, env: DictConfig, seed: int) -> tuple[Any, Any]:
    tracking_cfg = cfg.get("tracking") or {}
    if str(tracking_cfg.get("uri")) == "disabled":
        return nullcontext(None), None
    import mlflow

    from modi.experiments.tracking import mlflow_run

    ctx = mlflow_run(
        tracking_cfg.get("uri"),
        str(tracking_cfg.get("experiment", "modi")),
        run_name=f"device-scorer-s{seed}",
        params={"env": OmegaConf.to_container(env, resolve=True)},
        tags={"agent": "device_scorer", "env": "offload", "seed": str(seed)},
    )
    return ctx, mlflow


def run_offload_training(cfg: DictConfig, out_dir: Path) -> dict[str, float]:
    """Train (train split), tune and choose (validation), export, evaluate (test split) and
    track a device policy as ``cfg.env`` says; returns summary metrics
    (``eval_effective_accuracy`` is the learned policy's mean)."""
    env = cfg.env
    devices = _names(env, "devices")
    networks = _names(env, "networks")
    # networks the scorer trains on beside env.networks, never evaluated (their own traces)
    extra = _names(env, "train_networks") if env.get("train_networks") else []
    both = sorted(set(networks) & set(extra))
    if both:
        raise ConfigError(
            f"env.train_networks {both} are in env.networks too: list each network once (a "
            "network of env.networks is trained on and evaluated)"
        )
    w_dev = mixture_weights(env, "devices", devices)
    w_net = mixture_weights(
        env, "networks", networks + extra, "env.networks + env.train_networks" if extra else None
    )
    tr, ev = env.train, env.eval
    seed = as_int(tr.seed, "env.train.seed", minimum=0)
    streams = as_int(tr.streams, "env.train.streams")
    steps = as_int(tr.steps, "env.train.steps")
    rounds = as_int(tr.rounds, "env.train.rounds")
    sla_range = as_float_list(tr.sla_range_ms, "env.train.sla_range_ms")
    if len(sla_range) != 2 or sla_range[0] > sla_range[1]:
        raise ConfigError(f"env.train.sla_range_ms must be [low, high], got {sla_range}")
    slas = as_float_list(ev.sla_ms, "env.eval.sla_ms")
    n_req = as_int(ev.requests_per_point, "env.eval.requests_per_point")
    val_req = as_int(ev.get("val_requests_per_point", n_req), "env.eval.val_requests_per_point")
    per_point = as_int(ev.streams_per_point, "env.eval.streams_per_point")
    tol = float(ev.get("tie_tolerance", 0.0005))
    rules = [str(r) for r in ev.rules]
    ceilings = [str(r) for r in ev.ceilings]
    unknown = [p for p in rules + ceilings if p not in DEVICE_POLICY_NAMES]
    if unknown:
        raise ConfigError(
            f"env.eval: unknown policies {unknown}; expected {list(DEVICE_POLICY_NAMES)}"
        )
    tuned_unknown = sorted(set((env.get("tuning") or {}).keys()) - set(rules))
    if tuned_unknown:
        raise ConfigError(f"env.tuning: {tuned_unknown} are not rules of env.eval.rules {rules}")
    grids = {r: tuning_grid(env, r) for r in rules}
    objective = (float(env.objective.w_energy_per_j), float(env.objective.w_bytes_per_mb))
    weights = as_float_list(
        env.frontier.w_energy_per_j, "env.frontier.w_energy_per_j", positive=False
    )
    sel = env.get("select") or {}
    settings: list[Setting] = [
        (w, t, a)
        for w in as_float_list(
            sel.get("w_energy_per_j", weights), "env.select.w_energy_per_j", positive=False
        )
        for t in as_float_list(
            sel.get("tie_tolerance", [0.0]), "env.select.tie_tolerance", positive=False
        )
        for a in anchor_margins(sel)
    ]
    try:
        raw = sel.get("anchors", DEFAULT_ANCHORS)
        anchors = (raw,) if isinstance(raw, str) else tuple(str(a) for a in raw)
        anchor_indices(anchors)
    except (DeviceScorerError, TypeError) as e:
        raise ConfigError(f"env.select.{e}") from None
    frontier_seeds = as_int(env.frontier.get("test_seeds", 2), "env.frontier.test_seeds")
    per_context = sel.get("per_context", False)
    if not isinstance(per_context, bool):
        raise ConfigError(f"env.select.per_context: expected true or false, got {per_context!r}")
    per_weight = env.frontier.get("per_weight_setting", False)
    if not isinstance(per_weight, bool):
        raise ConfigError(
            f"env.frontier.per_weight_setting: expected true or false, got {per_weight!r}"
        )
    # the frontier's own settings, validated too when each weight gets its own (per_weight):
    # the shipped grid's tie tolerances and anchor margins, and env.frontier.anchor_margin's
    front_margins = list(
        dict.fromkeys(
            [
                *(x[2] for x in settings),
                *anchor_margins(env.frontier, "env.frontier.anchor_margin", default=()),
            ]
        )
    )
    front_settings: list[Setting] = (
        [(w, t, a) for w in weights for t in sorted({x[1] for x in settings})
         for a in front_margins]
        if per_weight else []
    )  # fmt: skip
    val_settings = list(dict.fromkeys([*settings, *front_settings]))
    splits = Splits.from_cfg(cfg, train_seeds=[seed])
    val_seeds, test_seeds = splits.seeds("val"), splits.seeds("test")
    pool = instantiate_node(cfg, "pool")
    if not isinstance(pool, ModelPool):
        raise ConfigError(f"pool must build a ModelPool, got {type(pool).__name__}")
    scenarios = build_scenarios(env, devices, networks, splits)
    train_scenarios = scenarios + (
        build_scenarios(env, devices, extra, splits, key="env.train_networks") if extra else []
    )
    for sc in train_scenarios:
        if sc.profile.tier not in ("low", "mid", "high"):
            raise ConfigError(
                f"env.devices: {sc.device!r} has tier {sc.profile.tier!r}; the device feature "
                "schema knows low, mid, high"
            )
    joint_server = _joint_server(env, pool)
    out_dir.mkdir(parents=True, exist_ok=True)
    server_name = str(env.get("server_policy", "modipick"))
    mean_w = float(np.mean([w_dev[s.device] * w_net[s.network] for s in train_scenarios]))

    ctx, mlflow = _tracking(cfg, env, seed)
    with ctx:
        t0 = time.perf_counter()
        # ---------------------------------------------------------------- train split
        sims = []
        for sc in train_scenarios:
            k = max(1, round(streams * w_dev[sc.device] * w_net[sc.network] / mean_w))
            sim = make_sim(env, sc, "train", pool, k, objective, sla_range_ms=tuple(sla_range))
            sim.set_server_policy(_server_policy(env, server_name))
            sims.append(sim)
        hist_rows: list[dict[str, float]] = []

        def on_round(r: int, hist: list[dict[str, float]]) -> None:
            for h in hist:
                hist_rows.append({"round": float(r)} | h)
                if mlflow is not None:
                    step = int(r * 1000 + h["epoch"])
                    mlflow.log_metric("train_diff_mse", h["train_diff_mse"], step=step)

        def train_keys(r: int) -> list[list[int]]:
            return [[*stream_key(sc.name, "train", seed, 0.0), r] for sc in train_scenarios]

        load = tr.get("load")
        try:
            if load is not None:
                policy = DeviceScorerPolicy.load(str(load))
                log.info("device scorer loaded from %s (not trained)", load)
            else:
                policy = train_device_scorer(
                    sims,
                    steps,
                    seed,
                    rounds=rounds,
                    epsilon=float(tr.epsilon),
                    hidden=[int(h) for h in tr.hidden],
                    epochs=as_int(tr.epochs, "env.train.epochs"),
                    batch_size=as_int(tr.batch_size, "env.train.batch_size"),
                    level_weight=float(tr.get("level_weight", 0.1)),
                    twin_weight=float(tr.get("twin_weight", 10.0)),
                    lr=float(tr.lr),
                    w_energy_per_j=objective[0],
                    w_bytes_per_mb=objective[1],
                    trained_on={
                        "devices": devices,
                        "networks": networks + extra,
                        "sla_range_ms": sla_range,
                        "mixture": {"devices": w_dev, "networks": w_net},
                    },
                    on_round=on_round,
                    reset_seeds=train_keys,
                )
        except (DeviceScorerError, OSError) as e:
            raise ConfigError(f"env.train: {e}") from None
        train_s = time.perf_counter() - t0
        pd.DataFrame(hist_rows).to_csv(out_dir / "training.csv", index=False)
        policy.save(out_dir / "device_policy.pt")
        log.info("device scorer trained in %.0f s", train_s)

        # ---------------------------------------------------------------- validation split
        fits: dict[tuple[str, str], Any] = {}
        val_rec = _Recorder()
        tuned: dict[tuple[str, str], dict[str, Any]] = {}
        steps_val = math.ceil(val_req / per_point)
        tuned_rows = []
        for sc in scenarios:
            sim = make_sim(env, sc, "val", pool, per_point, objective, block_len=steps_val + 1)
            for rule in rules:
                scores = []
                for params in grids[rule]:
                    pol, server, srv_name = make_rule(
                        env, rule, params, sc, pool, objective, seed, fits
                    )
                    sim.set_server_policy(server)
                    res = []
                    for v in val_seeds:
                        for sla in slas:
                            r = run_point(
                                pol, sim, sla, stream_key(sc.name, "val", v, sla), steps_val
                            )
                            meta = {
                                "scenario": sc.name,
                                "policy": rule,
                                "sla_ms": sla,
                                "seed": v,
                                "params": json.dumps(params, sort_keys=True),
                            }
                            res.append(val_rec.add(r, sim, meta))
                    acc = float(np.mean([x["effective_accuracy"] for x in res]))
                    en = float(np.mean([x["energy_mj"] for x in res]))
                    scores.append((acc, -en, params))
                top = max(s[0] for s in scores)
                acc, neg_en, params = max(
                    (s for s in scores if s[0] >= top - tol), key=lambda s: s[1]
                )
                tuned[sc.name, rule] = params
                tuned_rows.append(
                    {
                        "scenario": sc.name,
                        "policy": rule,
                        "val_effective_accuracy": acc,
                        "val_energy_mj": -neg_en,
                        "params": json.dumps(params, sort_keys=True),
                        "grid_points": len(scores),
                    }
                )
            sim.set_server_policy(_server_policy(env, server_name))
            for w, t, a in val_settings:
                pol_w = policy.with_weights(w, tie_tolerance=t, anchor_margin=a, anchors=anchors)
                for v in val_seeds:
                    for sla in slas:
                        r = run_point(
                            pol_w, sim, sla, stream_key(sc.name, "val", v, sla), steps_val
                        )
                        meta = {
                            "scenario": sc.name,
                            "policy": learned_name(w, t, a),
                            "sla_ms": sla,
                            "seed": v,
                            "params": "",
                        }
                        val_rec.add(r, sim, meta)
            log.info("validation: %s tuned", sc.name)
        val_all = pd.DataFrame(val_rec.rows)
        val_all.to_csv(out_dir / "validation.csv", index=False)
        pd.DataFrame(val_rec.units).to_csv(out_dir / "validation_units.csv", index=False)
        pd.DataFrame(tuned_rows).to_csv(out_dir / "tuned.csv", index=False)
        # the tuned setting's validation rows only
        keep = val_all[
            val_all.policy.str.startswith(f"{LEARNED}_w")
            | val_all.apply(
                lambda x: x.params == json.dumps(tuned.get((x.scenario, x.policy)), sort_keys=True),
                axis=1,
            )
        ]
        best = choose_best_rule(keep, rules, tol)
        vu = pd.DataFrame(val_rec.units)
        vu = vu[
            vu.policy.str.startswith(f"{LEARNED}_w")
            | vu.apply(
                lambda x: x.params == json.dumps(tuned.get((x.scenario, x.policy)), sort_keys=True),
                axis=1,
            )
        ]
        (w_chosen, t_chosen, a_chosen), w_table = choose_setting(keep, best, settings, tol, vu)
        w_table.to_csv(out_dir / "weights.csv", index=False)
        log.info(
            "chosen on validation: energy weight %g per J, tie tolerance %g, anchor margin %s",
            w_chosen,
            t_chosen,
            a_chosen,
        )
        # a setting per decision context (tier x radio class), chosen on its own points
        contexts: dict[str, Setting] | None = None
        ctx_held: dict[str, int] = {}
        if per_context:
            context_of = {sc.name: scenario_context(sc) for sc in scenarios}
            chosen = (w_chosen, t_chosen, a_chosen)

            def by_context(sub: pd.DataFrame) -> dict[str, Setting]:
                return choose_context_settings(
                    means_from_units(sub), best, settings, tol, sub, context_of, chosen
                )[0]

            def held_out_points(choice: Mapping[str, Setting], sub: pd.DataFrame) -> int:
                rows = context_rows(sub, choice, context_of, CONTEXT_POLICY)
                both = pd.concat([sub, rows], ignore_index=True)
                return points_ge_at_le_energy(
                    means_from_units(both), best, CONTEXT_POLICY, tol, both
                )[0]

            # a check of the method inside validation: choose on the even streams, count the
            # points on the odd ones (one setting everywhere and a setting per context)
            even, odd = vu[vu.stream % 2 == 0], vu[vu.stream % 2 == 1]
            one_even, _ = choose_setting(means_from_units(even), best, settings, tol, even)
            ctx_held = {
                "one setting": held_out_points({c: one_even for c in CONTEXTS}, odd),
                "per context": held_out_points(by_context(even), odd),
            }
            contexts, c_table = choose_context_settings(
                keep, best, settings, tol, vu, context_of, chosen
            )
            c_table.to_csv(out_dir / "contexts.csv", index=False)
            log.info(
                "settings per context, validation's odd streams (chosen on the even ones), "
                "points >= rule at <= energy: %s; chosen: %s (optimistic: the halves share "
                "their seed, trace segment and the rules' tuning; on fresh validation streams "
                "per context had fewer points than one setting, docs/results.md)",
                ", ".join(f"{k} {v} of {len(best)}" for k, v in ctx_held.items()),
                contexts,
            )
        # the frontier's setting per energy weight: the shipped one at every weight, or (with
        # env.frontier.per_weight_setting) each weight's own, chosen on validation
        front_choice: dict[float, Setting] = {w: (w, t_chosen, a_chosen) for w in weights}
        if per_weight:
            shipped = (w_chosen, t_chosen, a_chosen)
            names_all = [learned_name(*x) for x in front_settings]

            def dominated_counts(sub: pd.DataFrame) -> dict[str, int]:
                vf = validation_frontier(keep, sub, rules, names_all)
                vl = vf[vf.kind == "learned"]
                return {str(k): int(v) for k, v in
                        (vl.dominated_by_ci != "").groupby(vl.policy).sum().items()}  # fmt: skip

            def choose_front(sub: pd.DataFrame) -> tuple[dict[float, Setting], pd.DataFrame]:
                # per-stream rows: the objective's tie-break leaves out the bytes (no
                # kb_sent per stream; env.objective.w_bytes_per_mb is 0 by default)
                means = sub if "kb_sent" in sub else sub.assign(kb_sent=0.0)
                return frontier_settings(
                    means, weights, front_settings, shipped, objective[1],
                    dominated=dominated_counts(sub),
                )  # fmt: skip

            # a check of the method inside validation: choose on the even streams, count the
            # points a rule dominates on the odd ones (the shipped setting's and the choice's)
            even, odd = vu[vu.stream % 2 == 0], vu[vu.stream % 2 == 1]
            choice_even, _ = choose_front(even)
            held_out = dominated_counts(odd)
            counts = {
                label: int(sum(held_out.get(learned_name(*x), 0) for x in choice))
                for label, choice in (
                    ("shipped setting", [(w, t_chosen, a_chosen) for w in weights]),
                    ("per weight", [choice_even[w] for w in weights]),
                )
            }
            front_choice, f_table = choose_front(vu)  # the choice: every validation stream
            f_table.to_csv(out_dir / "frontier_settings.csv", index=False)
            log.info(
                "frontier, validation's odd streams (chosen on the even ones), points a rule "
                "dominates (paired intervals): %s",
                ", ".join(f"{k} {v} of {len(weights) * len(scenarios) * len(slas)}"
                          for k, v in counts.items()),
            )  # fmt: skip

        # ---------------------------------------------------------------- export + parity
        policy = policy.with_weights(
            w_chosen, tie_tolerance=t_chosen, anchor_margin=a_chosen, anchors=anchors
        ).with_contexts(contexts)
        policy.save(out_dir / "device_policy.pt")
        onnx_path = export_device_onnx(policy, out_dir / "device_policy.onnx")
        par_sims, par_keys = [], []
        for sc in scenarios:
            psim = make_sim(
                env, sc, "val", pool, per_point, objective, sla_range_ms=tuple(sla_range)
            )
            psim.set_server_policy(_server_policy(env, server_name))
            par_sims.append(psim)
            par_keys.append(stream_key(f"{sc.name}/parity", "val", val_seeds[0], 0.0))
        parity = check_parity(
            policy, onnx_path, par_sims, as_int(ev.parity_observations, "parity"), par_keys
        )
        log.info("ONNX parity on validation observations: %.4f", parity)

        # ---------------------------------------------------------------- test split
        steps_test = math.ceil(n_req / per_point)
        rec = _Recorder()
        front: list[dict[str, Any]] = []
        front_units: list[dict[str, Any]] = []  # the learned frontier's per-stream rows
        agree_same = agree_total = fallbacks = decisions = 0
        for sc in scenarios:
            sim = make_sim(env, sc, "test", pool, per_point, objective, block_len=steps_test + 1)
            served = ServedDevicePolicy(onnx_path, device_spec(sc.profile), name=LEARNED)
            agree = _Agreement(served, policy)
            entries: list[tuple[str, Any, Any, str, dict[str, Any]]] = [
                (LEARNED, agree, _server_policy(env, server_name), server_name, {})
            ]
            for name in rules + ceilings:
                params = tuned.get((sc.name, name), {})
                pol, server, srv_name = make_rule(
                    env, name, params, sc, pool, objective, seed, fits
                )
                if isinstance(pol, PrepCeiling):
                    try:
                        pol.bind(sim)
                    except ValueError:
                        log.info("%s: prep_ceiling needs a link model, skipped", sc.name)
                        continue
                entries.append((name, pol, server, srv_name, params))
            if joint_server is not None:
                entries.append((JOINT, agree, joint_server, "selector", {}))
            for name, pol, server, srv_name, params in entries:
                sim.set_server_policy(server)
                for s in test_seeds:
                    for sla in slas:
                        f0 = served.fallbacks
                        r = run_point(
                            pol, sim, sla, stream_key(sc.name, "test", s, sla), steps_test
                        )
                        meta = {
                            "scenario": sc.name,
                            "device": sc.device,
                            "network": sc.network,
                            "policy": name,
                            "server_policy": srv_name,
                            "sla_ms": sla,
                            "seed": s,
                            "params": json.dumps(params, sort_keys=True),
                        }
                        if name in (LEARNED, JOINT):
                            n = r.fields["e2e_ms"].size
                            meta["fallback_rate"] = (served.fallbacks - f0) / n
                        row = rec.add(r, sim, meta)
                        if name in rules and s in test_seeds[:frontier_seeds]:
                            front.append(row | {"kind": "rule", "w_energy_per_j": math.nan})
            agree_same += agree.same
            agree_total += agree.total
            fallbacks += served.fallbacks
            decisions += served.decisions
            if served.reasons:
                log.warning("%s: DeviceSelector fell back: %s", sc.name, served.reasons)
            # the learned frontier: the scorer under each energy weight, same streams
            sim.set_server_policy(_server_policy(env, server_name))
            for w in weights:
                _, t_w, a_w = front_choice[w]
                pol_w = policy.with_weights(w, tie_tolerance=t_w, anchor_margin=a_w)
                for s in test_seeds[:frontier_seeds]:
                    for sla in slas:
                        r = run_point(
                            pol_w, sim, sla, stream_key(sc.name, "test", s, sla), steps_test
                        )
                        meta = {
                            "scenario": sc.name,
                            "policy": learned_name(w, t_w, a_w),
                            "kind": "learned",
                            "w_energy_per_j": w,
                            "sla_ms": sla,
                            "seed": s,
                        }
                        front.append(meta | r.summary(sim.num_local))
                        u = unit_metrics(r)
                        front_units.extend(
                            meta | {"stream": k} | {c: float(u[c][k]) for c in CI_COLUMNS}
                            for k in range(sim.num_envs)
                        )
            log.info("test: %s evaluated", sc.name)
        per_seed = pd.DataFrame(rec.rows)
        per_seed["fallback_rate"] = per_seed.get("fallback_rate", np.nan)
        per_seed.to_csv(out_dir / "results_per_seed.csv", index=False)
        units = pd.DataFrame(rec.units)
        units.to_csv(out_dir / "units.csv", index=False)
        results = aggregate(per_seed, units)
        results.to_csv(out_dir / "results.csv", index=False)
        # the anchor alone beside the learned row, where one rule is the anchor
        margins = [a_chosen] if contexts is None else [c[2] for c in contexts.values()]
        anchored = any(m is not None for m in margins)
        anchor_rule = ANCHOR_RULE if anchored and anchors == ("offload",) else None
        if contexts is None:
            budget = choose_budget_rule(
                keep, rules, learned_name(w_chosen, t_chosen, a_chosen), tol
            )
        else:  # the per-context policy's validation rows: its context's setting per scenario
            ctx_val = context_rows(keep, contexts, context_of, CONTEXT_POLICY)
            budget = choose_budget_rule(
                pd.concat([keep, ctx_val], ignore_index=True), rules, CONTEXT_POLICY, tol
            )
        paired = paired_table(units, best, rules, anchor_rule=anchor_rule, budget=budget)
        if len(paired):
            paired.insert(
                3,
                "best_rule_params",
                [
                    json.dumps(tuned.get((s, r), {}), sort_keys=True)
                    for s, r in zip(paired.scenario, paired.best_rule, strict=True)
                ],
            )
        paired.to_csv(out_dir / "paired.csv", index=False)
        if joint_server is not None:
            # device-learned x server-learned against the best rule pair (the device rule with
            # its tuned server rule), same streams
            ju = units[units.policy != LEARNED].replace({"policy": {JOINT: LEARNED}})
            paired_table(ju, best, rules).to_csv(out_dir / "joint.csv", index=False)
        fr = pd.DataFrame(front)
        frontier = (
            fr.groupby(["scenario", "policy", "kind", "sla_ms"], sort=False, dropna=False)
            .agg(
                effective_accuracy=("effective_accuracy", "mean"),
                energy_mj=("energy_mj", "mean"),
                attainment=("attainment", "mean"),
                w_energy_per_j=("w_energy_per_j", "first"),
            )
            .reset_index()
        )
        frontier["dominated_by"] = dominated_by(frontier)
        frontier["dominated_by_ci"] = dominated_by_paired(
            frontier, pd.DataFrame(front_units), units
        )
        frontier.to_csv(out_dir / "frontier.csv", index=False)
        figures: list[Path] = []
        if cfg.get("figures", True):
            from modi.experiments.plots import device_frontier

            figures = device_frontier(frontier, out_dir)
        learned = results[results.policy == LEARNED]
        lf = frontier[frontier.kind == "learned"]
        matters = paired[paired.choice_matters] if len(paired) else paired
        metrics = {
            "eval_effective_accuracy": float(learned.effective_accuracy.mean()),
            "eval_attainment": float(learned.attainment.mean()),
            "eval_energy_mj": float(learned.energy_mj.mean()),
            "w_energy_per_j": w_chosen,
            "tie_tolerance": t_chosen,
            "anchor_margin": math.nan if a_chosen is None else a_chosen,
            "onnx_parity": parity,
            "served_agreement": agree_same / max(1, agree_total),
            "served_fallback_rate": fallbacks / max(1, decisions),
            "train_seconds": train_s,
            "points": float(len(paired)),
            "points_ge_at_le_energy": float(paired.ge_at_le_energy.sum()) if len(paired) else 0.0,
            "points_choice_matters": float(len(matters)),
            "matters_ge_at_le_energy": float(matters.ge_at_le_energy.sum())
            if len(matters)
            else 0.0,
            "frontier_points_dominated": float((lf.dominated_by != "").sum()),
            "frontier_points_dominated_ci": float((lf.dominated_by_ci != "").sum()),
            "frontier_points": float(len(lf)),
            "mean_diff_vs_best_rule": float(paired["diff"].mean()) if len(paired) else math.nan,
        }
        if ctx_held:  # the per-context choice's check inside validation (odd streams)
            metrics["val_held_out_points_one_setting"] = float(ctx_held["one setting"])
            metrics["val_held_out_points_per_context"] = float(ctx_held["per context"])
        # where the choice matters: points with a PieSlicer gap to each device ceiling, and
        # those whose gap the learned policy closes by at least half
        for key, name in (("pieslicer_gap_closed", "oracle"),
                          ("pieslicer_gap_closed_prep", "prep")):  # fmt: skip
            closed = matters[key].dropna() if key in matters else pd.Series(dtype=float)
            metrics[f"pieslicer_gap_points_{name}"] = float(len(closed))
            metrics[f"pieslicer_half_closed_{name}"] = float((closed >= 0.5).sum())
        if mlflow is not None:
            mlflow.log_metrics(metrics)
            for f in [onnx_path, out_dir / "device_policy.pt"]:
                mlflow.log_artifact(str(f), "policy")
            names = ("results.csv", "paired.csv", "frontier.csv", "training.csv", "tuned.csv")
            for f in [out_dir / n for n in names] + figures:
                mlflow.log_artifact(str(f), "results")
    log.info(
        "device policy: %s; run folder %s", {k: round(v, 4) for k, v in metrics.items()}, out_dir
    )
    return metrics


def offload_main(cfg: DictConfig) -> float:
    """``modi-train env=offload``: run in the Hydra run folder; a config error exits with 2."""
    import sys

    from hydra.core.hydra_config import HydraConfig

    out = Path(HydraConfig.get().runtime.output_dir)
    try:
        metrics = run_offload_training(cfg, out)
    except (ConfigError, ValueError) as e:
        log.error("%s", e)
        sys.exit(2)
    print(summary_text(out))
    return metrics["eval_effective_accuracy"]


def summary_text(out: Path) -> str:
    """A short console summary: learned vs the best tuned rule per scenario × SLA."""
    p = pd.read_csv(out / "paired.csv")
    lines = [
        "learned device policy (as served) vs the best tuned rule chosen on validation "
        "(test split, effective accuracy %, paired 95 % CI; energy mJ):"
    ]
    if len(p):
        t = p[
            [
                "scenario",
                "sla_ms",
                "best_rule",
                "best_rule_eff_acc",
                "learned_eff_acc",
                "diff_lo",
                "diff_hi",
                "energy_diff_mj",
                "ge_at_le_energy",
                "choice_matters",
            ]
        ].copy()
        for c in ("best_rule_eff_acc", "learned_eff_acc", "diff_lo", "diff_hi"):
            t[c] = (100 * t[c]).round(2)
        t["energy_diff_mj"] = t["energy_diff_mj"].round(0)
        lines.append(t.to_string(index=False))
        lines.append(
            f"learned >= best rule at <= energy: {int(p.ge_at_le_energy.sum())} of {len(p)} "
            f"points; where the choice matters: "
            f"{int(p[p.choice_matters].ge_at_le_energy.sum())} of {int(p.choice_matters.sum())}"
        )
        if "anchor_ge_at_le_energy" in p:
            lines.append(
                f"the anchor alone ({ANCHOR_RULE}): {int(p.anchor_ge_at_le_energy.sum())} of "
                f"{len(p)} points; where the choice matters: "
                f"{int(p[p.choice_matters].anchor_ge_at_le_energy.sum())}; mean difference "
                f"{100 * p.anchor_diff.mean():+.2f} points (learned: {100 * p['diff'].mean():+.2f})"
            )
        if "budget_not_worse" in p:
            cm = p[p.choice_matters]
            lines.append(
                "learned not less accurate than the best rule within its energy (chosen on "
                "validation): "
                f"{int(p.budget_not_worse.sum())} of {len(p)} points; where the choice "
                f"matters: {int(cm.budget_not_worse.sum())} of {len(cm)}; mean difference "
                f"{100 * p.budget_diff.mean():+.2f} points"
            )
    lines.append(f"files: {out / 'results.csv'}, paired.csv, frontier.csv, device_policy.onnx")
    return "\n".join(lines)


__all__ = [
    "LEARNED",
    "Scenario",
    "aggregate",
    "build_scenarios",
    "check_parity",
    "choose_best_rule",
    "choose_budget_rule",
    "choose_setting",
    "dominated_by",
    "learned_name",
    "make_sim",
    "mixture_weights",
    "offload_main",
    "paired_table",
    "run_offload_training",
    "summary_text",
    "tuning_grid",
]
