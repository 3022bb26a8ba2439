"""Shared pieces of the Hydra apps: config resolvers, instantiation with clear errors."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from modi.envs.catalog import default_data_dir

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A config value has the wrong type or range; the message names the setting."""


def register_resolvers() -> None:
    """``${modi_data_dir:}`` resolves to :func:`modi.envs.catalog.default_data_dir`."""
    if not OmegaConf.has_resolver("modi_data_dir"):
        OmegaConf.register_new_resolver("modi_data_dir", lambda: str(default_data_dir()))


register_resolvers()


def instantiate_node(cfg: DictConfig, key: str, **overrides: Any) -> Any:
    """Instantiate ``cfg[key]`` (a ``_target_`` node) with plain Python containers; a failure
    becomes a :class:`ConfigError` naming the config group."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    node = cfg.get(key)
    if not isinstance(node, DictConfig) or "_target_" not in node:
        raise ConfigError(f"config '{key}' must be a mapping with a _target_, got {node!r}")
    try:
        return instantiate(node, _convert_="all", **overrides)
    except InstantiationException as e:
        cause = e.__cause__ or e
        raise ConfigError(f"{key}: {cause}") from None


def as_float_list(value: Any, key: str, positive: bool = True) -> list[float]:
    """A number or list of numbers from the config, checked."""
    items: Iterable[Any] = value if isinstance(value, (list, tuple, ListConfig)) else [value]
    out = []
    for v in items:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ConfigError(f"{key} must be a number or a list of numbers, got {v!r}")
        f = float(v)
        if (positive and f <= 0) or (not positive and f < 0):
            raise ConfigError(f"{key} must be {'> 0' if positive else '>= 0'}, got {v!r}")
        out.append(f)
    if not out:
        raise ConfigError(f"{key} must not be empty")
    return out


def as_int(value: Any, key: str, minimum: int = 1) -> int:
    """An integer setting, checked against ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{key} must be an integer >= {minimum}, got {value!r}")
    return int(value)
