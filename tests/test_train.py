"""modi-train: training, evaluation on another seed, MLflow tracking, resume, bad config."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_module
from omegaconf import DictConfig

from modi.agents.bandits import load_learned
from modi.experiments.common import ConfigError
from modi.experiments.train import train

TINY = [
    "train.requests=6400",
    "train.penalty_requests=1600",
    "train.num_envs=32",
    "train.log_every=3200",
    "eval.n_requests=400",
    "eval.streams_per_point=4",
    "eval.sla_ms=[115,200]",
    "eval.val_n_requests=400",
    "tuning.n_requests=400",
    "export=false",
]


def _cfg(tmp_path: Path, *overrides: str) -> DictConfig:
    with initialize_config_module(config_module="modi.conf", version_base="1.3"):
        return compose(
            config_name="train",
            overrides=[*TINY, f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}", *overrides],
        )


def _runs(tmp_path: Path) -> pd.DataFrame:
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    return mlflow.search_runs(experiment_names=["modi"])


def test_train_writes_results_policy_and_tracks_run(tmp_path: Path) -> None:
    out = tmp_path / "run"
    metrics = train(_cfg(tmp_path, "agent=linucb", "seed=3"), out, progress=False)
    for f in (
        "results.csv",
        "usage.csv",
        "policy.pt",
        "training_curve.csv",
        "learned_vs_modipick.csv",
    ):
        assert (out / f).is_file(), f
    results = pd.read_csv(out / "results.csv")
    assert set(results.policy) == {
        "static_greedy",
        "dynamic_greedy",
        "modipick",
        "mdinference",
        "modipick_tuned",
        "mdinference_tuned",
        "calibrated_greedy",
        "informed_ceiling",
        "oracle",
        "linucb",
    }
    assert (results.seed == 1000).all(), "evaluation must use the test split, not training's"
    assert (results.split == "test").all()
    val = pd.read_csv(out / "val" / "results.csv")
    assert (val.split == "val").all() and (val.seed == 100).all()
    # The learned row is the exported selector as served, and the summary compares it with
    # the rule chosen on validation, with paired intervals.
    assert (out / "selector.onnx").is_file()
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary.sla_ms) == [115.0, 200.0]
    assert (summary.diff_lo <= summary["diff"]).all() and (summary["diff"] <= summary.diff_hi).all()
    assert summary.best_rule.iloc[0] in set(results.policy) - {"linucb", "oracle"}
    # The saved policy decides exactly as the trained one.
    pol = load_learned(out / "policy.pt")
    assert pol.kind == "linucb"
    runs = _runs(tmp_path)
    assert len(runs) == 1
    run = runs.iloc[0]
    assert run.status == "FINISHED"
    assert run["tags.agent"] == "linucb" and run["tags.seed"] == "3"
    assert run["params.train.requests"] == "6400"
    assert run["metrics.eval_effective_accuracy"] == pytest.approx(
        metrics["eval_effective_accuracy"]
    )
    import mlflow

    hist = mlflow.tracking.MlflowClient().get_metric_history(run.run_id, "train_effective_accuracy")
    assert len(hist) >= 2, "training curve must be logged step by step"
    arts = {a.path for a in mlflow.tracking.MlflowClient().list_artifacts(run.run_id)}
    assert {"policy", "results", "checkpoint"} <= arts


def test_failing_run_ends_failed_not_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from modi.agents import bandits

    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("simulated crash during training")

    monkeypatch.setattr(bandits.LinUCB, "fit", boom)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(_cfg(tmp_path, "agent=linucb"), tmp_path / "run", progress=False)
    runs = _runs(tmp_path)
    assert list(runs.status) == ["FAILED"]


def test_interrupted_run_ends_killed_and_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from modi.agents import training

    real = training.train_online

    def interrupted(*args: object, callback: object = None, **kw: object) -> object:
        # Serve half, checkpointing through the callback, then "Ctrl-C".
        kw = dict(kw)
        total = int(args[2])  # type: ignore[call-overload]
        real(args[0], args[1], total // 2, *args[3:], callback=callback, **kw)  # type: ignore[arg-type]
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "train_online", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(tmp_path, "agent=lints"), tmp_path / "run1", progress=False)
    runs = _runs(tmp_path)
    assert list(runs.status) == ["KILLED"]
    run_id = runs.run_id.iloc[0]
    monkeypatch.setattr(training, "train_online", real)
    train(_cfg(tmp_path, "agent=lints", f"resume={run_id}"), tmp_path / "run2", progress=False)
    runs = _runs(tmp_path)
    assert len(runs) == 1 and runs.status.iloc[0] == "FINISHED"
    curve = pd.read_csv(tmp_path / "run2" / "training_curve.csv")
    assert curve.requests.min() > 3200 - 1, "resumed training continues after the checkpoint"


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("train.requests=0", "train.requests"),
        ("train.sla_range_ms=[300,100]", "train.sla_range_ms"),
        ("seed=1000", "in both train and test"),
        ("sla_ms=[-50]", "sla_ms must be > 0"),
        ("eval.sla_ms=[-50]", "eval.sla_ms must be > 0"),
        ("tuning.calibrated_greedy.z=[]", "tuning.calibrated_greedy.z"),
        ("agent.hidden=0", "hidden"),
        ("mix.rtt_scale=[2,1]", "mix.rtt_scale: min 2 > max 1"),
        ("tracking.uri=http://127.0.0.1:9", "tracking.uri"),
        ("tracking.uri=file:///tmp/x", "tracking.uri"),
    ],
)
def test_bad_config_fails_before_training(tmp_path: Path, override: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        train(_cfg(tmp_path, override), tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "policy.pt").exists()


def test_champion_moves_only_to_a_run_that_beats_it_on_validation(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    train(_cfg(tmp_path, "agent=linucb", "export=true"), tmp_path / "a", progress=False)
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    first = client.get_model_version_by_alias("modi-selector", "champion")
    assert first.tags["val_key"] and float(first.tags["val_effective_accuracy"]) > 0
    # The same run again ties on validation: it becomes the challenger, the champion stays.
    train(_cfg(tmp_path, "agent=linucb", "export=true"), tmp_path / "b", progress=False)
    assert client.get_model_version_by_alias("modi-selector", "champion").version == first.version
    second = client.get_model_version_by_alias("modi-selector", "challenger")
    assert second.version != first.version
    assert second.tags["val_effective_accuracy"] == first.tags["val_effective_accuracy"]


def test_unknown_agent_is_a_clear_hydra_error(tmp_path: Path) -> None:
    from hydra.errors import MissingConfigException

    with pytest.raises(MissingConfigException, match="agent"):
        _cfg(tmp_path, "agent=nope")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[str]:
    port = _free_port()
    exe = Path(sys.executable).with_name("mlflow")
    proc = subprocess.Popen(
        [
            str(exe),
            "server",
            "--backend-store-uri",
            f"sqlite:///{tmp_path / 'server.db'}",
            "--artifacts-destination",
            str(tmp_path / "server-artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    import urllib.request

    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(uri + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not start on {uri}")
            time.sleep(0.5)
        yield uri
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)


def test_tiny_sweep_against_real_mlflow_server(tmp_path: Path, mlflow_server: str) -> None:
    import mlflow

    for agent in ("linucb", "neural"):
        for seed in (0, 1):
            with initialize_config_module(config_module="modi.conf", version_base="1.3"):
                cfg = compose(
                    config_name="train",
                    overrides=[
                        *TINY,
                        f"tracking.uri={mlflow_server}",
                        f"agent={agent}",
                        f"seed={seed}",
                    ],
                )
            train(cfg, tmp_path / f"{agent}-{seed}", progress=False)
    mlflow.set_tracking_uri(mlflow_server)
    runs = mlflow.search_runs(experiment_names=["modi"])
    assert len(runs) == 4
    assert set(runs.status) == {"FINISHED"}
    assert sorted(zip(runs["tags.agent"], runs["tags.seed"], strict=True)) == [
        ("linucb", "0"),
        ("linucb", "1"),
        ("neural", "0"),
        ("neural", "1"),
    ]


def test_compare_takes_trained_policies_by_path_and_run_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from modi.experiments.compare import run_compare

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    out = tmp_path / "run"
    train(_cfg(tmp_path, "agent=linucb"), out, progress=False)
    run_id = _runs(tmp_path).run_id.iloc[0]
    with initialize_config_module(config_module="modi.conf", version_base="1.3"):
        cfg = compose(
            config_name="compare",
            overrides=[
                "scenario=realistic_wifi",
                "sla_ms=[150]",
                "n_requests=400",
                "streams_per_point=4",
                "figures=[]",
                f"learned=[{out / 'policy.pt'},runs:/{run_id}]",
            ],
        )
    results, _ = run_compare(cfg, tmp_path / "cmp", progress=False)
    mine = results.set_index("policy")
    assert {"linucb", "linucb_2", "modipick", "oracle"} <= set(mine.index)
    # The same policy loaded two ways decides identically on the same stream.
    assert mine.loc["linucb"].effective_accuracy == mine.loc["linucb_2"].effective_accuracy
    with pytest.raises(ConfigError, match="learned"):
        with initialize_config_module(config_module="modi.conf", version_base="1.3"):
            bad = compose(config_name="compare", overrides=["learned=[/nope/policy.pt]"])
        run_compare(bad, tmp_path / "bad", progress=False)


def test_train_from_decision_logs(tmp_path: Path) -> None:
    """``train.from_logs``: a linear bandit learned offline from a server's decision log is
    exported and evaluated like an online one; a missing log is a clear error before work."""
    from modi.agents.ope import modipick_probabilities
    from modi.envs.model_selection import build_sim
    from modi.experiments.ope_validation import log_stream
    from modi.runtime.decision_log import (
        DecisionRecord,
        Outcome,
        SelectorInfo,
        _pool_hash,
        schema_string,
    )
    from modi.runtime.features import SCHEMA_NAME, SCHEMA_VERSION

    sim = build_sim(num_envs=4, sla_range_ms=(50.0, 400.0))
    run = log_stream(sim, modipick_probabilities, 300, seed=5)
    pool = tuple(str(i) for i in sim.pool.ids)
    schema = schema_string(SCHEMA_NAME, SCHEMA_VERSION)
    rule = SelectorInfo("modipick", "modipick")
    path = tmp_path / "decisions.jsonl"
    with path.open("w") as f:
        for i in range(run.actions.size):
            a = int(run.actions[i])
            f.write(
                DecisionRecord(
                    ts=float(i), request_id=str(i), schema=schema,
                    pool=pool, pool_hash=_pool_hash(pool), selector=rule,
                    features=tuple(float(x) for x in run.obs[i]), action=a, model_id=pool[a],
                    probabilities=tuple(float(p) for p in run.probs[i]), source="fallback",
                    reason="rule", outcome=Outcome(None, bool(run.met[i]), float(run.accuracy[i])),
                ).to_json_line()
            )  # fmt: skip
    out = tmp_path / "run"
    metrics = train(_cfg(tmp_path, "agent=linucb", f"train.from_logs={path}"), out, progress=False)
    assert (out / "selector.onnx").is_file() and (out / "summary.csv").is_file()
    assert not (out / "training_curve.csv").exists(), "no online training happened"
    assert 0.0 < metrics["eval_effective_accuracy"] <= 1.0
    with pytest.raises(ConfigError, match=r"train\.from_logs"):
        train(_cfg(tmp_path, "agent=linucb", "train.from_logs=/nope.jsonl"), tmp_path / "x")
