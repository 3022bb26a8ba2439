"""MLflow tracking for modi runs: embedded sqlite default, reachability check, flattened params,
tags, and a run that always ends with a status (FINISHED, FAILED or KILLED).

``mlflow`` is imported lazily (it costs ~2 s), never from :mod:`modi.runtime`.
"""

from __future__ import annotations

import logging
import os
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from modi.experiments.common import ConfigError

log = logging.getLogger(__name__)


def resolve_uri(uri: str | None) -> str:
    """``uri`` if given, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<cwd>/mlflow.db``."""
    if uri:
        return str(uri)
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Fail early, naming ``tracking.uri``, when an HTTP tracking server does not answer or a
    sqlite store's folder does not exist."""
    if uri.startswith(("http://", "https://")):
        url = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as r:
                if r.status != 200:
                    raise ConfigError(f"tracking.uri={uri}: /health answered HTTP {r.status}")
        except (urllib.error.URLError, OSError) as e:
            raise ConfigError(
                f"tracking.uri={uri}: MLflow tracking server cannot be reached ({e}); start it "
                "or unset MLFLOW_TRACKING_URI to use the local sqlite store"
            ) from None
    elif uri.startswith("sqlite:///"):
        folder = Path(uri[len("sqlite:///") :]).parent
        if not folder.is_dir():
            raise ConfigError(f"tracking.uri={uri}: folder {folder} does not exist")
    elif uri.startswith("file:") or "://" not in uri:
        raise ConfigError(
            f"tracking.uri={uri}: MLflow 3 refuses the plain file store; use sqlite:///PATH "
            "or an http(s):// server"
        )


def init_store(uri: str) -> None:
    """Create (or migrate) a sqlite store under a file lock: parallel sweep jobs starting on a
    fresh ``mlflow.db`` would otherwise race in MLflow's schema migration."""
    if not uri.startswith("sqlite:///"):
        return
    import fcntl

    from mlflow.tracking import MlflowClient

    lock = Path(uri[len("sqlite:///") :] + ".lock")
    with lock.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}} -> {"a.b": 1}`` (lists become strings)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v if isinstance(v, (int, float, str, bool)) or v is None else str(v)
    return out


def git_commit() -> str:
    """The checkout's commit (``unknown`` outside a git checkout)."""
    try:
        here = Path(__file__).resolve().parent
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


@contextmanager
def mlflow_run(
    uri: str | None,
    experiment: str,
    run_name: str | None = None,
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, str] | None = None,
    resume_run_id: str | None = None,
) -> Iterator[Any]:
    """Start (or resume) an MLflow run; on an exception it ends FAILED, on Ctrl-C KILLED.

    The tracking URI is set for the run's duration and restored afterwards, and the experiment
    is passed by id (no global ``set_experiment``), so one process can track into several
    stores in turn.
    """
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    resolved = resolve_uri(uri)
    check_reachable(resolved)
    init_store(resolved)
    client = MlflowClient(tracking_uri=resolved)
    if resume_run_id:
        try:
            client.get_run(resume_run_id)
        except MlflowException as e:
            raise ConfigError(f"resume={resume_run_id}: no such MLflow run ({e})") from None
    else:
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            try:
                exp_id = client.create_experiment(experiment)
            except MlflowException:  # a parallel sweep job created it first
                exp_id = client.get_experiment_by_name(experiment).experiment_id  # type: ignore[union-attr]
        else:
            exp_id = exp.experiment_id
    previous_uri = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(resolved)
    if resume_run_id:
        run = mlflow.start_run(run_id=resume_run_id)
    else:
        run = mlflow.start_run(run_name=run_name, experiment_id=exp_id)
    try:
        if params and not resume_run_id:
            flat = flatten(params)
            items = list(flat.items())
            for i in range(0, len(items), 100):
                mlflow.log_params(dict(items[i : i + 100]))
        mlflow.set_tags({"git_commit": git_commit(), **(tags or {})})
        yield run
    except KeyboardInterrupt:
        mlflow.end_run(status="KILLED")
        raise
    except BaseException:
        mlflow.end_run(status="FAILED")
        raise
    else:
        mlflow.end_run(status="FINISHED")
    finally:
        mlflow.set_tracking_uri(previous_uri)
