"""Named presets (pools, networks) read from the packaged config groups in ``modi.conf``,
so ``gymnasium.make("modi/ModelSelection-v0", pool="modipick_table2", network="campus")`` works
without Hydra. Hydra apps instantiate the very same YAML files.
"""

from __future__ import annotations

import importlib
import os
from importlib import resources
from pathlib import Path
from typing import Any

DATA_DIR_ENV = "MODI_DATA_DIR"


class PresetError(ValueError):
    """An unknown preset name or a malformed preset file."""


def default_data_dir() -> Path:
    """Where the shared measured data lives: ``$MODI_DATA_DIR``, else ``../shared/data`` from
    the working directory or from the source checkout."""
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env).expanduser().resolve()
    here = Path(__file__).resolve()
    candidates = [
        Path.cwd() / ".." / "shared" / "data",
        Path.cwd() / "shared" / "data",
        *(p / ".." / "shared" / "data" for p in here.parents),
    ]
    for c in candidates:
        if c.is_dir():
            return c.resolve()
    return (Path.cwd() / ".." / "shared" / "data").resolve()


def available(group: str) -> list[str]:
    """Preset names in a config group (e.g. ``pool``, ``network``)."""
    root = resources.files("modi.conf") / group
    if not root.is_dir():
        return []
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml"))


def preset_config(group: str, name: str) -> dict[str, Any]:
    """The YAML mapping of preset ``group/name`` with ``${data_dir}`` filled in."""
    import yaml

    f = resources.files("modi.conf") / group / f"{name}.yaml"
    if not f.is_file():
        raise PresetError(f"unknown {group} {name!r}; expected one of {available(group)}")
    text = f.read_text().replace("${data_dir}", str(default_data_dir()))
    cfg = yaml.safe_load(text)
    if not isinstance(cfg, dict) or "_target_" not in cfg:
        raise PresetError(f"{group} preset {name!r} must be a mapping with a '_target_'")
    return cfg


def instantiate(cfg: dict[str, Any], **overrides: Any) -> Any:
    """Call ``cfg['_target_']`` with the remaining keys (a minimal ``hydra.utils.instantiate``)."""
    kwargs = {k: v for k, v in cfg.items() if not k.startswith("_")}
    kwargs.update(overrides)
    target = str(cfg["_target_"])
    parts = target.split(".")
    obj: Any = None
    for cut in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError:
            obj = None
        break
    if obj is None or not callable(obj):
        raise PresetError(f"_target_ {target!r} does not name an importable callable")
    return obj(**kwargs)


def load_preset(group: str, name: str, **overrides: Any) -> Any:
    """Instantiate preset ``group/name``."""
    return instantiate(preset_config(group, name), **overrides)
