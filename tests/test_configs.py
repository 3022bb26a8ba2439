"""Hydra config groups: every preset composes and instantiates; every experiment runs a tiny
budget through ``run_compare`` and writes well-formed results, reproducibly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_module
from hydra.utils import instantiate
from omegaconf import DictConfig

from modi.envs import catalog
from modi.envs.networks import BlockContext
from modi.envs.pools import ModelPool
from modi.experiments.compare import run_compare

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CONF = Path(__file__).resolve().parents[1] / "conf"
POOLS = sorted(p.stem for p in (CONF / "pool").glob("*.yaml"))
NETWORKS = sorted(p.stem for p in (CONF / "network").glob("*.yaml"))
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
TINY = ["n_requests=200", "streams_per_point=2"]
REQUIRED_COLUMNS = [
    "scenario",
    "policy",
    "sla_ms",
    "cv",
    "seed",
    "n_requests",
    "attainment",
    "accuracy",
    "effective_accuracy",
    "latency_mean_ms",
    "latency_p50_ms",
    "latency_p95_ms",
    "latency_p99_ms",
]
FIGURES = {
    "latency_accuracy": "latency_accuracy.png",
    "usage_sla": "usage_sla.png",
    "cv": "cv_sweep.png",
    "usage_cv": "usage_cv.png",
}
# Table 2 of ModiPick (11 models, 12 with NasNet Fictional) and the MDInference p2 pool (23).
POOL_SIZES = {"modipick_table2": 11, "modipick_table2_fictional": 12, "mdinference_p2": 23}


def _needs_data(group: str, name: str) -> pytest.MarkDecorator:
    """Skip a preset that reads the measured data in ../shared/data when it is not there."""
    reads_data = "${data_dir}" in (CONF / group / f"{name}.yaml").read_text()
    return pytest.mark.skipif(
        reads_data and not DATA.is_dir(), reason=f"real data not found at {DATA}"
    )


def _presets(group: str, names: list[str]) -> list[object]:
    return [pytest.param(n, marks=_needs_data(group, n)) for n in names]


def _compose(*overrides: str) -> DictConfig:
    with initialize_config_module(config_module="modi.conf", version_base="1.3"):
        return compose(config_name="compare", overrides=list(overrides))


def test_config_groups_are_not_empty() -> None:
    assert catalog.available("pool") == POOLS
    assert catalog.available("network") == NETWORKS
    assert {"modipick_table2", "mdinference_p2"} <= set(POOLS)
    assert {"campus", "paper_cv"} <= set(NETWORKS)
    assert EXPERIMENTS, "conf/experiment has no presets"


@pytest.mark.parametrize("name", _presets("pool", POOLS))
def test_every_pool_preset_composes_and_instantiates(name: str) -> None:
    cfg = _compose(f"pool={name}")
    pool = instantiate(cfg.pool, _convert_="all")
    assert isinstance(pool, ModelPool)
    assert pool.name == name
    assert len(pool) == POOL_SIZES.get(name, len(pool)) >= 1
    assert np.all((pool.accuracy >= 0) & (pool.accuracy <= 1)), "accuracy must be a fraction"
    assert np.all(pool.mean_ms > 0) and np.all(pool.std_ms >= 0)
    # The catalog (no Hydra) builds the very same pool from the same file.
    assert catalog.load_preset("pool", name) == pool


def test_table2_pool_has_the_papers_numbers() -> None:
    pool = instantiate(_compose("pool=modipick_table2").pool, _convert_="all")
    nasnet = pool.models[pool.index("nasnet_large")]
    assert (nasnet.accuracy, nasnet.mean_ms, nasnet.std_ms) == (0.826, 112.61, 0.36)
    assert "nasnet_fictional" not in pool.ids


@pytest.mark.parametrize("name", _presets("network", NETWORKS))
def test_every_network_preset_composes_and_instantiates(name: str) -> None:
    cfg = _compose(f"network={name}")
    net = instantiate(cfg.network, _convert_="all")
    assert net.name == name
    assert catalog.load_preset("network", name).name == name
    # It samples a block of positive upload/download times shaped like the requests.
    rng = np.random.default_rng(0)
    net.reset(rng, 2, 3)
    shape = (5, 2)
    ctx = BlockContext(
        client=rng.integers(0, 3, size=shape),
        time_ms=np.cumsum(np.full(shape, 50.0), axis=0),
        payload_bytes=np.full(shape, 330e3),
        response_bytes=np.full(shape, 1e3),
    )
    t_in, t_out = net.sample(rng, ctx)
    assert np.shape(t_in) == np.shape(t_out) == shape
    assert np.all(np.asarray(t_in) > 0) and np.all(np.asarray(t_out) > 0)


def test_campus_network_has_the_papers_wifi_numbers() -> None:
    net = catalog.load_preset("network", "campus")
    assert net.mean_ms.tolist() == pytest.approx([57.87], abs=0.01)
    assert net.std_ms.tolist() == pytest.approx([30.78], abs=0.01)


def test_load_preset_passes_overrides_to_the_target() -> None:
    net = catalog.load_preset("network", "paper_cv", cv=[0.0, 0.5, 1.0])
    assert net.std_ms.tolist() == [0.0, 25.0, 50.0]
    pool = catalog.load_preset("pool", "modipick_table2", include=["squeezenet", "nasnet_large"])
    assert pool.ids == ("squeezenet", "nasnet_large")


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_composes(name: str) -> None:
    cfg = _compose(f"experiment={name}")
    assert cfg.pool._target_ and cfg.network._target_
    assert list(cfg.policies) and list(cfg.sla_ms)
    assert cfg.scenario
    assert set(cfg.figures) <= set(FIGURES)


def _check_results(cfg: DictConfig, out: Path) -> pd.DataFrame:
    results = pd.read_csv(out / "results.csv")
    assert list(results.columns[: len(REQUIRED_COLUMNS)]) == REQUIRED_COLUMNS
    slas = [float(s) for s in cfg.sla_ms]
    cvs = [None] if cfg.cv is None else [float(c) for c in cfg.cv]
    assert len(results) == len(cfg.policies) * len(slas) * len(cvs)
    assert set(results.policy) == set(cfg.policies)
    assert sorted(set(results.sla_ms)) == sorted(set(slas))
    if cfg.cv is None:
        assert results.cv.isna().all()
    else:
        assert sorted(set(results.cv)) == sorted(set(cvs))
    seeds = [cfg.seed] if cfg.seed is not None else list(cfg.splits.test.seeds)
    assert (results.seed == seeds[0]).all()
    assert (results.n_seeds == len(seeds)).all()
    assert (results.n_requests == cfg.n_requests * len(seeds)).all()
    assert (results.scenario == cfg.scenario).all()
    for col in ("attainment", "accuracy", "effective_accuracy"):
        assert results[col].between(0.0, 1.0).all(), col
    assert (results.effective_accuracy <= results.accuracy + 1e-12).all()
    assert (results.effective_accuracy <= results.attainment + 1e-12).all()
    assert (results.latency_p50_ms <= results.latency_p95_ms).all()
    assert (results.latency_p95_ms <= results.latency_p99_ms).all()
    assert (results.latency_mean_ms > 0).all()
    if "oracle" in set(results.policy):
        point = ["sla_ms", "cv"]
        best = results.groupby(point, dropna=False).effective_accuracy.transform("max")
        oracle = results[results.policy == "oracle"]
        assert np.allclose(oracle.effective_accuracy, best[oracle.index]), (
            "the oracle must have the highest effective accuracy at every sweep point"
        )

    usage = pd.read_csv(out / "usage.csv")
    assert {"policy", "sla_ms", "cv", "model", "requests", "fraction"} <= set(usage.columns)
    totals = usage.groupby(["policy", "sla_ms", "cv"], dropna=False).agg(
        requests=("requests", "sum"), fraction=("fraction", "sum")
    )
    assert (totals.requests == cfg.n_requests * len(seeds)).all()
    assert np.allclose(totals.fraction, 1.0)
    assert usage.fraction.between(0.0, 1.0).all()

    for fig in cfg.figures:
        png = out / FIGURES[fig]
        assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    return results


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_runs_a_tiny_budget(name: str, tmp_path: Path) -> None:
    cfg = _compose(f"experiment={name}", *TINY)
    results, _ = run_compare(cfg, tmp_path, progress=False)
    on_disk = _check_results(cfg, tmp_path)
    assert len(on_disk) == len(results)


def test_same_seed_gives_identical_results_csv(tmp_path: Path) -> None:
    cfg = _compose("experiment=modipick_fig9", *TINY, "sla_ms=[75,150]")
    run_compare(cfg, tmp_path / "a", progress=False)
    run_compare(cfg, tmp_path / "b", progress=False)
    a = (tmp_path / "a" / "results.csv").read_bytes()
    assert a == (tmp_path / "b" / "results.csv").read_bytes()
    assert (tmp_path / "a" / "usage.csv").read_bytes() == (
        tmp_path / "b" / "usage.csv"
    ).read_bytes()
    other = _compose("experiment=modipick_fig9", *TINY, "sla_ms=[75,150]", "seed=1")
    run_compare(other, tmp_path / "c", progress=False)
    assert a != (tmp_path / "c" / "results.csv").read_bytes(), "the seed is ignored"


def test_a_points_numbers_do_not_depend_on_the_rest_of_the_sweep(tmp_path: Path) -> None:
    """A point's stream is keyed by (scenario, split, seed, SLA): sweeping more SLAs, or
    listing them in another order, changes no number of the point."""
    pols = "policies=[modipick,mdinference,oracle]"
    alone = _compose(*TINY, "sla_ms=[115]", pols, "figures=[]")
    sweep = _compose(*TINY, "sla_ms=[200,115,75]", pols, "figures=[]")
    a, _ = run_compare(alone, tmp_path / "a", progress=False)
    b, _ = run_compare(sweep, tmp_path / "b", progress=False)
    cols = ["policy", "effective_accuracy", "attainment", "latency_p99_ms"]
    b115 = b[b.sla_ms == 115.0][cols].reset_index(drop=True)
    pd.testing.assert_frame_equal(a[cols].reset_index(drop=True), b115)


def test_results_carry_intervals_and_the_test_split(tmp_path: Path) -> None:
    cfg = _compose(*TINY, "sla_ms=[115]", "policies=[modipick,oracle]", "figures=[]")
    res, _ = run_compare(cfg, tmp_path, progress=False)
    assert (res.split == "test").all()
    assert (res.effective_accuracy_lo <= res.effective_accuracy).all()
    assert (res.effective_accuracy <= res.effective_accuracy_hi).all()
    assert (res.effective_accuracy_hi > res.effective_accuracy_lo).all()
    units = pd.read_csv(tmp_path / "units.csv")
    n_units = len(cfg.splits.test.seeds) * cfg.streams_per_point
    assert (units.groupby("policy").size() == n_units).all()


def test_compare_takes_train_style_eval_keys(tmp_path: Path) -> None:
    """``modi-compare`` reads ``eval.*`` like ``modi-train`` (the top-level keys still work)."""
    from modi.experiments.common import ConfigError

    cfg = _compose(*TINY, "eval.sla_ms=[150]", "eval.policies=[modipick]", "figures=[]")
    res, _ = run_compare(cfg, tmp_path, progress=False)
    assert list(res.sla_ms) == [150.0] and list(res.policy) == ["modipick"]
    with pytest.raises(ConfigError, match=r"eval\.n_requests must be an integer >= 1"):
        run_compare(_compose(*TINY, "eval.n_requests=0"), tmp_path, progress=False)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("seeds=[100]", "belong to another split"),
        ("splits.val.seeds=[1000]", "in both val and test"),
        ("splits.segments.val=[0.5,0.9]", "overlap"),
        ("tuning.calibrated_greedy.quantile=[]", "is empty"),
        ("tuning.calibrated_greedy.quantile=[1.5]", "out of range"),
    ],
)
def test_overlapping_splits_and_bad_grids_are_refused(
    override: str, message: str, tmp_path: Path
) -> None:
    from modi.experiments.common import ConfigError

    cfg = _compose(*TINY, "sla_ms=[115]", "policies=[calibrated_greedy]", "figures=[]", override)
    with pytest.raises(ConfigError, match=message):
        run_compare(cfg, tmp_path, progress=False)


@_needs_data("pool", "mdinference_p2")
def test_compare_runs_on_the_real_mdinference_pool(tmp_path: Path) -> None:
    cfg = _compose(
        "pool=mdinference_p2", *TINY, "sla_ms=[100]", "policies=[modipick,oracle]", "figures=[]"
    )
    run_compare(cfg, tmp_path, progress=False)
    results = _check_results(cfg, tmp_path)
    assert len(results) == 2
