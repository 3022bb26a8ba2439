"""``modi-train -m`` through Hydra's Ray launcher on a local Ray instance (``ray.init`` with no
address): a 2-job sweep, each job writes its own ``results.csv``.

Needs the ``ray`` extra (``pip install -e ".[train,ray]"``, or ``make test-ray``, which builds
``.venv-ray``); skipped without it. The launcher is ``conf/hydra/launcher/ray_local.yaml``;
the joblib launcher's settings live in ``local_joblib.yaml``, so nothing needs dropping.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip(
    "hydra_plugins.hydra_ray_launcher",
    reason="hydra-ray-launcher not installed: the `ray` extra (make test-ray) runs this test",
)
pytest.importorskip("ray", reason="ray not installed: the `ray` extra (make test-ray)")

TINY = [
    "train.requests=6400",
    "train.penalty_requests=1600",
    "train.num_envs=32",
    "train.log_every=3200",
    "eval.n_requests=400",
    "eval.streams_per_point=4",
    "eval.sla_ms=[115,200]",
    "export=false",
    "tracking=none",
]
# Ray's Unix sockets live under $TMPDIR/ray/session_<date>_<pid>/sockets/: AF_UNIX paths stop
# at 107 bytes, so a deep pytest tmp_path can be too long for Ray's temp dir.
_SOCKET_SUFFIX = len("/ray/session_2026-01-01_00-00-00_000000_4194304/sockets/plasma_store")


def _ray_tmpdir(tmp_path: Path) -> tuple[Path, bool]:
    """A temp dir for Ray: inside ``tmp_path`` when short enough, else a short one in /tmp
    (the bool says it must be removed afterwards)."""
    inside = tmp_path / "tmp"
    if len(str(inside)) + _SOCKET_SUFFIX <= 100:
        inside.mkdir()
        return inside, False
    return Path(tempfile.mkdtemp(prefix="modiray", dir="/tmp")), True


def test_two_job_sweep_through_ray_launcher(tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("modi-train")
    assert exe.exists(), f"modi-train not installed beside {sys.executable}"
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    ray_tmp, cleanup = _ray_tmpdir(tmp_path)
    env = {
        **os.environ,
        # Ray writes its auth token under $HOME/.ray and its session files under $TMPDIR/ray.
        "HOME": str(home),
        "TMPDIR": str(ray_tmp),
        "RAY_USAGE_STATS_ENABLED": "0",
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
    }
    cmd = [
        str(exe),
        "-m",
        "hydra/launcher=ray_local",
        "hydra.sweep.dir=multirun/sweep",
        "agent=linucb,neural",
        "seed=0",
        *TINY,
    ]
    try:
        proc = subprocess.run(
            cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False
        )
    finally:
        if cleanup:
            shutil.rmtree(ray_tmp, ignore_errors=True)
    out = proc.stdout + proc.stderr
    log = out[-6000:]
    assert proc.returncode == 0, log
    assert "Ray Launcher is launching 2 jobs" in out, log
    for job, agent in (("0", "linucb"), ("1", "neural")):
        results = cwd / "multirun" / "sweep" / job / "results.csv"
        assert results.is_file(), f"job {job} wrote no results.csv\n{log}"
        df = pd.read_csv(results)
        assert agent in set(df.policy), (job, sorted(set(df.policy)))
        assert {"modipick", "oracle"} <= set(df.policy)
        assert sorted(df.sla_ms.unique()) == [115.0, 200.0]
