"""``pool.path=FILE`` works from every pool preset, the default included (issue 13's input trap:
it used to fail with "Key 'path' is not in struct" on pools with inline models)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.utils import instantiate

import modi.experiments.common  # noqa: F401 - registers the ${modi_data_dir:} resolver
from modi.envs import catalog
from modi.envs.pools import ModelPool, PoolError

CONF = Path(__file__).resolve().parents[1] / "conf"
POOLS = sorted(p.stem for p in (CONF / "pool").glob("*.yaml"))

POOL_FILE = """models:
  - {id: tiny, top1_accuracy: 50.0, mean_ms: 2.0, std_ms: 0.1}
  - {id: huge, top1_accuracy: 90.0, mean_ms: 900.0, std_ms: 30.0}
"""


@pytest.fixture
def pool_file(tmp_path: Path) -> Path:
    path = tmp_path / "my_pool.yaml"
    path.write_text(POOL_FILE)
    return path


@pytest.mark.parametrize("preset", [None, *POOLS])
def test_pool_path_from_any_preset(preset: str | None, pool_file: Path) -> None:
    overrides = [f"pool.path={pool_file}"]
    if preset is not None:
        overrides.insert(0, f"pool={preset}")
    with initialize_config_module(config_module="modi.conf", version_base="1.3"):
        cfg = compose(config_name="compare", overrides=overrides)
    pool = instantiate(cfg.pool, _convert_="all")
    assert isinstance(pool, ModelPool)
    assert pool.ids == ("tiny", "huge")
    assert pool.source == str(pool_file)
    if "models" in cfg.pool and cfg.pool.models:  # a preset with inline models
        assert pool.name == "my_pool"


def test_pool_path_through_the_catalog(pool_file: Path) -> None:
    pool = catalog.load_preset("pool", "modipick_table2", path=str(pool_file))
    assert pool.ids == ("tiny", "huge") and pool.name == "my_pool"


def test_a_missing_pool_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(PoolError, match=r"nowhere\.yaml does not exist"):
        catalog.load_preset("pool", "modipick_table2", path=str(tmp_path / "nowhere.yaml"))
