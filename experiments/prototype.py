"""The end-to-end prototype experiment (the paper's Figure 5) on the real server.

Steps, each skipped when its output exists: build the ImageNet-architecture pool
(:mod:`modi.experiments.zoo`), measure it (``modi-profile``), train a LinUCB selector in the
simulator on the measured pool and the configured network and export it to ONNX; then for
ModiPick (a server without a learned selector) and the learned selector, start ``modi-serve`` in
a subprocess and sweep the SLA with ``modi-client``. Writes ``results.csv`` (one row per policy
and SLA), ``fig5.png`` (attainment and effective accuracy vs SLA) and ``summary.json`` (the
selection cost as a share of the median end-to-end latency). Settings come from
``conf/serving/prototype_fig5.yaml``; ``--set key=value`` overrides a top-level key. Usage::

    python -m modi.experiments.prototype --out runs/prototype_fig5
    python -m modi.experiments.prototype --out /tmp/p --set requests_per_point=20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import socket
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from modi.experiments.client import RunReport, run_clients

log = logging.getLogger(__name__)

CONFIG = Path(__file__).resolve().parents[1] / "conf" / "serving" / "prototype_fig5.yaml"


def load_config(path: Path, overrides: list[str]) -> dict[str, Any]:
    """The YAML config with ``key=value`` overrides (values parsed as YAML)."""
    import yaml

    cfg = yaml.safe_load(path.read_text())
    for o in overrides:
        key, sep, val = o.partition("=")
        if not sep or key not in cfg:
            raise ValueError(f"override {o!r}: expected KEY=VALUE with KEY one of {list(cfg)}")
        cfg[key] = yaml.safe_load(val)
    return cfg


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """``modi-serve`` (or ``program``, another server command) in a subprocess on a free
    loopback port."""

    def __init__(
        self,
        args: list[str],
        log_path: Path,
        env: dict[str, str] | None = None,
        program: list[str] | None = None,
    ) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        prog = program or [sys.executable, "-m", "modi.experiments.serve"]
        cmd = [*prog, "--port", str(self.port), *args]
        self._log = open(log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env)

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Block until ``/healthz`` answers."""
        import httpx

        t_end = time.monotonic() + timeout_s
        while time.monotonic() < t_end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"modi-serve exited with {self.proc.returncode}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"modi-serve did not answer on {self.url} in {timeout_s} s")

    def rss_bytes(self) -> int:
        """The server's resident set size."""
        with open(f"/proc/{self.proc.pid}/statm") as f:
            import os

            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def stop(self) -> None:
        """Terminate the server (this process started it)."""
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._log.close()


def prepare(cfg: dict[str, Any], out: Path) -> tuple[Path, Path, Path]:
    """Pool folder, measured pool YAML and learned selector, built when missing."""
    from modi.experiments.profile import profile_dir, write_pool_yaml
    from modi.experiments.zoo import MANIFEST, build_imagenet

    pool_dir = Path(cfg["pool_dir"])
    if not (pool_dir / MANIFEST).is_file():
        log.info("building the model pool in %s", pool_dir)
        build_imagenet(pool_dir, seed=int(cfg["seed"]))
    pool_yaml = Path(cfg["pool_yaml"])
    if not pool_yaml.is_file():
        log.info("profiling %s into %s", pool_dir, pool_yaml)
        pr = cfg["profile"]
        profiles = profile_dir(pool_dir, int(pr["runs"]), int(pr["warmup"]))
        write_pool_yaml(profiles, pool_yaml, pool_dir.name, int(pr["runs"]), int(pr["warmup"]), 1)
    selector = out / "learned.onnx"
    if not selector.is_file():
        selector = train_selector(cfg, pool_yaml, selector)
    return pool_dir, pool_yaml, selector


def train_selector(cfg: dict[str, Any], pool_yaml: Path, path: Path) -> Path:
    """Train LinUCB in the simulator on the measured pool and network; export it to ONNX."""
    from modi.agents.bandits import LinUCB
    from modi.agents.export import export_onnx
    from modi.envs.model_selection import build_sim
    from modi.envs.pools import ModelPool

    tr = cfg["train"]
    if tr["agent"] != "linucb":
        raise ValueError(f"train.agent {tr['agent']!r}: only linucb is wired here")
    pool = ModelPool.from_config(pool_yaml.stem, path=pool_yaml)
    lo, hi = (float(v) for v in tr["sla_range_ms"])
    sim = build_sim(pool, str(cfg["network"]), num_envs=int(tr["num_envs"]), sla_range_ms=(lo, hi))
    pol = LinUCB(seed=int(tr["seed"]))
    t0 = time.perf_counter()
    pol.fit(sim, int(tr["requests"]), seed=int(tr["seed"]), progress=False)
    log.info(
        "trained LinUCB on %d simulated requests in %.1f s",
        tr["requests"],
        time.perf_counter() - t0,
    )
    return Path(export_onnx(pol, path, run_id=f"prototype_fig5-seed{tr['seed']}"))


def sweep(cfg: dict[str, Any], url: str, policy: str) -> list[tuple[str, RunReport]]:
    """One client run per SLA against the server at ``url``."""
    out = []
    for sla in cfg["sla_ms"]:
        rep, _ = asyncio.run(
            run_clients(
                url, float(sla), int(cfg["requests_per_point"]), int(cfg["concurrency"]),
                str(cfg["network"]), str(cfg["images"]), str(cfg["preprocess"]), int(cfg["seed"]),
            )
        )  # fmt: skip
        log.info(
            "%-8s SLA %4.0f ms: attainment %.2f  eff. accuracy %.3f  p50 e2e %.0f ms  failed %d",
            policy, sla, rep.attainment, rep.effective_accuracy, rep.e2e_p50_ms, rep.failed,
        )  # fmt: skip
        out.append((policy, rep))
    return out


def plot(df: Any, path: Path) -> None:
    """Attainment and effective accuracy vs SLA, one line per policy (like the paper's Fig. 5)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for policy, g in df.groupby("policy"):
        axes[0].plot(g.sla_ms, 100 * g.attainment, marker="o", label=policy)
        axes[1].plot(g.sla_ms, 100 * g.effective_accuracy, marker="o", label=policy)
    axes[0].set_ylabel("SLA attainment (%)")
    axes[1].set_ylabel("effective accuracy (%)")
    for ax in axes:
        ax.set_xlabel("SLA (ms)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("Real server, measured pool, campus WiFi replayed (loopback)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(cfg: dict[str, Any], out: Path) -> dict[str, Any]:
    """The whole experiment; returns the summary."""
    import pandas as pd

    out.mkdir(parents=True, exist_ok=True)
    pool_dir, pool_yaml, selector = prepare(cfg, out)
    rows: list[tuple[str, RunReport]] = []
    base = ["--pool-dir", str(pool_dir), "--pool", str(pool_yaml)]
    for policy, extra in (("modipick", []), ("learned", ["--selector", str(selector)])):
        srv = ServerProcess(base + extra, out / f"server_{policy}.log")
        try:
            srv.wait_ready()
            rows += sweep(cfg, srv.url, policy)
        finally:
            srv.stop()
    df = pd.DataFrame([{"policy": p, **asdict(r)} for p, r in rows])
    df.to_csv(out / "results.csv", index=False)
    plot(df, out / "fig5.png")
    share = df.select_p50_ms / df.e2e_p50_ms
    summary = {
        "selection_share_of_median_e2e_max": float(share.max()),
        "select_p50_ms_max": float(df.select_p50_ms.max()),
        "e2e_p50_ms_min": float(df.e2e_p50_ms.min()),
        "failed": int(df.failed.sum()),
        "by_sla": {
            str(s): {
                p: {
                    "attainment": float(g.attainment.iloc[0]),
                    "effective_accuracy": float(g.effective_accuracy.iloc[0]),
                }
                for p, g in d.groupby("policy")
            }
            for s, d in df.groupby("sla_ms")
        },
        "attainment_monotone": {
            str(p): bool(np.all(np.diff(g.sort_values("sla_ms").attainment) >= -0.05))
            for p, g in df.groupby("policy")
        },
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv: list[str] | None = None) -> None:
    """Command line entry point."""
    p = argparse.ArgumentParser(prog="python -m modi.experiments.prototype")
    p.add_argument("--out", type=Path, default=Path("runs/prototype_fig5"))
    p.add_argument("--config", type=Path, default=CONFIG)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    summary = run(load_config(a.config, a.set), a.out)
    print(json.dumps(summary, indent=2))  # the CLI's output


if __name__ == "__main__":
    main()
