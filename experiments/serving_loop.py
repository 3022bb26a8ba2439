"""The serving loop of issue 15 on the real server, scripted end to end:

1. a pool of ImageNet architectures measured here (``modi-profile``), a LinUCB selector trained
   in the simulator on it and registered in MLflow as ``modi-selector@challenger``;
2. **log**: ``modi-serve`` serves ModiPick (``--selector models:/modi-selector@champion
   --allow-fallback``: there is no champion yet) with a decision log, driven by ``modi-client``'s
   emulated phones over the SLA sweep;
3. **estimate**: ``modi-ope`` estimates the learned selector on that log (IPS, SNIPS, DM, DR,
   Switch-DR with 95 % intervals);
4. **shadow**: ModiPick serves again with ``--shadow learned.onnx``: how often the challenger
   would have chosen differently;
5. **promote**: ``modi-promote`` moves ``@champion`` to the challenger only if the DR lower bound
   beats ModiPick's logged value, and reloads the server, which now serves the learned selector;
6. **served**: the same traffic again: the effective accuracy the server measures (its decision
   log) and the clients measure, against the OPE estimate.

Writes ``OUT/loop.json`` and prints a short table. The phones report each answer's end-to-end
latency (``POST /v1/outcome``) and the server (``--outcome-hold-s``) logs it as the decision's
outcome, so the logged ``met`` includes the answer's download, as the clients measure it.

Usage::

    python -m modi.experiments.serving_loop --out runs/serving_loop
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from modi.experiments.client import RunReport, run_clients
from modi.experiments.prototype import ServerProcess, train_selector

log = logging.getLogger(__name__)

#: Architectures of the loop's pool (a spread of latency and accuracy).
POOL_IDS = ["mobilenet_v1_0.25", "mobilenet_v1_0.5", "mobilenet_v1_1.0", "resnet18"]
MODEL = "modi-selector"
TOKEN_ENV = "MODI_ADMIN_TOKEN"


def prepare(out: Path, train_requests: int, network: str, seed: int) -> dict[str, Path]:
    """Pool, pool YAML and learned selector under ``out`` (reused when present)."""
    from modi.experiments.profile import profile_dir, write_pool_yaml
    from modi.experiments.zoo import MANIFEST, build_imagenet

    pool_dir = out / "pool"
    if not (pool_dir / MANIFEST).is_file():
        log.info("building %s", POOL_IDS)
        build_imagenet(pool_dir, POOL_IDS, seed=seed)
    pool_yaml = out / "pool.yaml"
    if not pool_yaml.is_file():
        profiles = profile_dir(pool_dir, 30, 5)
        write_pool_yaml(profiles, pool_yaml, "loop", 30, 5, 1)
    learned = out / "learned.onnx"
    if not learned.is_file():
        cfg = {"network": network, "train": {"agent": "linucb", "requests": train_requests,
               "num_envs": 64, "sla_range_ms": [100, 400], "seed": seed}}  # fmt: skip
        train_selector(cfg, pool_yaml, learned)
    return {"pool_dir": pool_dir, "pool_yaml": pool_yaml, "learned": learned}


def register(learned: Path, uri: str, artifacts: Path) -> str:
    """Register ``learned`` as a new version of :data:`MODEL` with the alias ``challenger``
    (and drop an earlier ``champion`` alias: the loop starts from ModiPick)."""
    import mlflow

    from modi.agents.export import log_to_mlflow

    mlflow.set_tracking_uri(uri)
    name = "modi-serving-loop"
    exp = mlflow.get_experiment_by_name(name)
    exp_id = exp.experiment_id if exp else mlflow.create_experiment(
        name, artifact_location=artifacts.resolve().as_uri())  # fmt: skip
    with mlflow.start_run(experiment_id=exp_id, run_name="learned"):
        reg = log_to_mlflow(learned, MODEL, alias="challenger", tracking_uri=uri)
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    with contextlib.suppress(Exception):  # a champion of an earlier loop: ModiPick serves first
        client.delete_registered_model_alias(MODEL, "champion")
    return reg.version


def drive(url: str, slas: list[float], requests: int, concurrency: int, network: str,
          seed: int) -> list[RunReport]:  # fmt: skip
    """One client run per SLA."""
    reps = []
    for i, sla in enumerate(slas):
        rep, _ = asyncio.run(run_clients(url, sla, requests, concurrency, network=network,
                                         images="photos", seed=seed + i,
                                         report_outcomes=True))  # fmt: skip
        reps.append(rep)
    return reps


def log_value(path: Path) -> dict[str, float]:
    """Mean effective accuracy and attainment the server logged (its own measurement)."""
    r, met = [], []
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        o = rec["outcome"]
        met.append(float(bool(o["met"])))
        r.append(float(o["accuracy"]) if o["met"] else 0.0)
    a = np.asarray(r)
    half = 1.96 * a.std(ddof=1) / np.sqrt(a.size) if a.size > 1 else float("nan")
    return {"n": int(a.size), "effective_accuracy": float(a.mean()),
            "lo": float(a.mean() - half), "hi": float(a.mean() + half),
            "attainment": float(np.mean(met))}  # fmt: skip


def _clients(reps: list[RunReport]) -> dict[str, float]:
    n = sum(r.requests for r in reps)
    return {
        "requests": n, "failed": sum(r.failed for r in reps),
        "effective_accuracy": sum(r.effective_accuracy * r.requests for r in reps) / n,
        "attainment": sum(r.attainment * r.requests for r in reps) / n,
    }  # fmt: skip


def run(out: Path, slas: list[float], requests: int, concurrency: int, network: str,
        train_requests: int, seed: int) -> dict[str, Any]:  # fmt: skip
    """The whole loop; returns (and writes) the summary."""
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    paths = prepare(out, train_requests, network, seed)
    uri = f"sqlite:///{(out / 'mlflow.db').resolve()}"
    version = register(paths["learned"], uri, out / "mlartifacts")
    token = "loop-token"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, TOKEN_ENV: token}
    base = ["--pool-dir", str(paths["pool_dir"]), "--pool", str(paths["pool_yaml"]),
            "--outcome-hold-s", "10"]  # fmt: skip
    champion = ["--selector", f"models:/{MODEL}@champion", "--allow-fallback"]
    learned = str(paths["learned"])
    summary: dict[str, Any] = {"slas": slas, "requests_per_sla": requests, "network": network,
                               "registered_version": version}  # fmt: skip

    def serve(phase: str, extra: list[str]) -> ServerProcess:
        sel = [] if "--selector" in extra else champion
        srv = ServerProcess(base + sel + extra, out / f"server_{phase}.log", env=env)
        srv.wait_ready(180.0)
        return srv

    # 2. log: ModiPick serves (no champion yet)
    logs = {p: out / f"decisions_{p}.jsonl" for p in ("modipick", "shadow", "served", "audit")}
    for f in logs.values():
        f.unlink(missing_ok=True)
    srv = serve("modipick", ["--decision-log", str(logs["modipick"])])
    try:
        summary["modipick_clients"] = _clients(
            drive(srv.url, slas, requests, concurrency, network, seed))  # fmt: skip
    finally:
        srv.stop()
    summary["modipick_logged"] = log_value(logs["modipick"])
    # 3. estimate
    ope_dir = out / "ope"
    res = subprocess.run([sys.executable, "-m", "modi.experiments.ope", str(logs["modipick"]),
                          learned, "--out", str(ope_dir)], capture_output=True, text=True,
                         env=env)  # fmt: skip
    if res.returncode != 0:
        raise RuntimeError(f"modi-ope failed ({res.returncode}): {res.stderr[-2000:]}")
    ope = json.loads((ope_dir / "ope.json").read_text())
    cand = ope["candidates"][0]
    summary["ope"] = {"candidate": cand.get("name"), "estimates": cand.get("estimates"),
                      "logging_policy": ope.get("logging_policy")}  # fmt: skip
    # 4. shadow
    srv = serve("shadow", ["--decision-log", str(logs["shadow"]), "--shadow", learned])
    try:
        drive(srv.url, slas, requests, concurrency, network, seed + 100)
    finally:
        srv.stop()
    recs = [json.loads(x) for x in logs["shadow"].read_text().splitlines()]
    agree = [r["shadow"]["action"] == r["action"] for r in recs if r.get("shadow")]
    summary["shadow"] = {"records": len(recs), "with_shadow": len(agree),
                         "agreement": float(np.mean(agree)) if agree else None}  # fmt: skip
    # 5. promote (the server runs: it reloads models:/modi-selector@champion)
    srv = serve("served", ["--decision-log", str(logs["served"])])
    try:
        before = srv_health(srv.url)
        argv = [str(ope_dir / "ope.json"), "--challenger", str(cand.get("name") or learned),
                "--model", MODEL, "--tracking-uri", uri, "--server", srv.url]  # fmt: skip
        os.environ[TOKEN_ENV] = token
        summary["promotion"] = _promote(argv)
        summary["selector_before"] = before
        summary["selector_after"] = srv_health(srv.url)
        # 6. served
        summary["served_clients"] = _clients(
            drive(srv.url, slas, requests, concurrency, network, seed + 200))  # fmt: skip
    finally:
        srv.stop()
    if not summary["promotion"].get("promote"):
        # 7. audit: the learned selector served anyway, to measure what OPE estimated
        srv = serve("audit", ["--decision-log", str(logs["audit"]), "--selector", learned])
        try:
            summary["audit_clients"] = _clients(
                drive(srv.url, slas, requests, concurrency, network, seed + 200))  # fmt: skip
        finally:
            srv.stop()
        summary["audit_logged"] = log_value(logs["audit"])
    summary["served_logged"] = log_value(logs["served"])
    summary["wall_s"] = round(time.perf_counter() - t0, 1)
    (out / "loop.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _promote(argv: list[str]) -> dict[str, Any]:
    """``modi-promote`` with DR, then Switch-DR where modi-ope refused DR (support); the verdict
    (or why no estimate allowed one)."""
    import contextlib
    import io

    from modi.serving.promote import main as promote_main

    refusals = []
    for est in ("dr", "switch_dr"):
        out, err = io.StringIO(), io.StringIO()
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                promote_main([*argv, "--estimator", est])
        except SystemExit:
            refusals.append(err.getvalue().strip())
            continue
        verdict: dict[str, Any] = json.loads(out.getvalue())
        verdict["refused_estimators"] = refusals
        return verdict
    return {"promote": False, "reason": "no estimate: " + " | ".join(refusals)}


def srv_health(url: str) -> str:
    """The selector a server reports."""
    import httpx

    return str(httpx.get(f"{url}/healthz", timeout=10).json()["selector"])


def main(argv: list[str] | None = None) -> None:
    """Command line entry point."""
    p = argparse.ArgumentParser(
        prog="python -m modi.experiments.serving_loop",
        description="Serve ModiPick with a decision log, estimate the learned selector with "
        "modi-ope, shadow it, promote it, and measure it served.",
    )
    p.add_argument("--out", type=Path, default=Path("runs/serving_loop"), help="output folder")
    p.add_argument("--sla-ms", default="150,200,250", help="comma-separated SLAs (ms)")
    p.add_argument("--requests", type=int, default=120, help="requests per SLA and phase")
    p.add_argument("--concurrency", type=int, default=2, help="emulated phones at once")
    p.add_argument("--network", default="campus", help="network preset of the phones")
    p.add_argument("--train-requests", type=int, default=20000,
                   help="simulated requests LinUCB trains on")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="seed of every step")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    s = run(a.out, [float(x) for x in a.sla_ms.split(",")], a.requests, a.concurrency,
            a.network, a.train_requests, a.seed)  # fmt: skip
    for line in summary_lines(s):
        print(line)  # the CLI's output
    print(f"written {a.out / 'loop.json'} in {s['wall_s']} s")


def summary_lines(s: dict[str, Any]) -> list[str]:
    """The loop's summary as a few lines of text."""
    nan = float("nan")
    ests = s["ope"]["estimates"] or {}
    name, est = "none", {"value": nan, "lo": nan, "hi": nan}
    for e in ("dr", "switch_dr", "dm"):
        if "value" in ests.get(e, {}):
            name, est = e, ests[e]
            break
    mp = s["modipick_logged"]
    lines = [
        f"ModiPick   logged eff. acc. {mp['effective_accuracy']:.3f} [{mp['lo']:.3f}, "
        f"{mp['hi']:.3f}]  clients {s['modipick_clients']['effective_accuracy']:.3f}",
        f"OPE        learned ({name}) {est['value']:.3f} [{est['lo']:.3f}, "
        f"{est['hi']:.3f}]",
        f"shadow     agreement with ModiPick {s['shadow']['agreement']}",
        f"promotion  {s['promotion'].get('promote')} ({s['promotion'].get('reason')}); now "
        f"{s.get('selector_after')}",
    ]  # fmt: skip
    for phase in ("served", "audit"):
        if f"{phase}_logged" in s:
            lg = s[f"{phase}_logged"]
            lines.append(
                f"{phase:10s} logged eff. acc. {lg['effective_accuracy']:.3f} [{lg['lo']:.3f}, "
                f"{lg['hi']:.3f}]  clients {s[f'{phase}_clients']['effective_accuracy']:.3f}"
            )
    return lines


if __name__ == "__main__":
    main()
