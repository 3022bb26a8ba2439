"""Load, soak and reload-under-load checks of ``modi-serve`` (the issue's must-show numbers).

Starts ``modi-serve`` in a subprocess on the given pool and drives it with ``modi-client``'s
emulated phones:

* ``load``: ``--concurrency`` clients, ``--requests`` requests: failed requests and throughput.
* ``soak``: clients for ``--duration-s``; the server's RSS sampled every 10 s (start/end/max).
* ``reload``: clients run while the admin endpoint alternates two good selectors every 0.3 s
  and pushes a corrupt one every third time; failed requests must be 0, every corrupt file
  refused (409) with the good one still serving.

Usage::

    python -m modi.experiments.serving_checks load --pool-dir serving_pool/imagenet \\
        --pool imagenet_pool.yaml --selector learned.onnx --concurrency 16 --requests 800
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from modi.experiments.client import run_clients
from modi.experiments.prototype import ServerProcess

log = logging.getLogger(__name__)
TOKEN_ENV = "MODI_ADMIN_TOKEN"


def _client_kwargs(a: argparse.Namespace) -> dict[str, Any]:
    return {
        "sla_ms": a.sla_ms, "concurrency": a.concurrency, "network": a.network,
        "images": a.images, "preprocess": a.preprocess, "seed": a.seed,
    }  # fmt: skip


async def _soak(url: str, srv: ServerProcess, a: argparse.Namespace) -> dict[str, Any]:
    rss: list[tuple[float, int]] = [(0.0, srv.rss_bytes())]
    t0 = time.perf_counter()
    task = asyncio.create_task(
        run_clients(url, requests=0, duration_s=a.duration_s, **_client_kwargs(a))
    )
    while not task.done():
        await asyncio.sleep(1.0)
        if time.perf_counter() - t0 >= 10 * len(rss):
            rss.append((time.perf_counter() - t0, srv.rss_bytes()))
    rep, _ = task.result()
    rss.append((time.perf_counter() - t0, srv.rss_bytes()))
    mib = [r / 2**20 for _, r in rss]
    return {
        "report": asdict(rep),
        "rss_mib_start": mib[0],
        "rss_mib_after_10s": mib[1] if len(mib) > 2 else mib[-1],
        "rss_mib_end": mib[-1],
        "rss_mib_max": max(mib),
        "rss_samples": [(round(t, 1), round(m, 1)) for (t, _), m in zip(rss, mib, strict=True)],
    }


async def _reload(url: str, sel_dir: Path, a: argparse.Namespace) -> dict[str, Any]:
    import httpx

    token = os.environ[TOKEN_ENV]
    h = {"authorization": f"Bearer {token}"}
    results: dict[str, int] = {"loaded": 0, "refused_bad": 0, "unexpected": 0}
    task = asyncio.create_task(run_clients(url, requests=a.requests, **_client_kwargs(a)))
    async with httpx.AsyncClient(timeout=30.0) as http:
        i = 0
        while not task.done():
            name = ("bad.onnx", "a.onnx", "b.onnx")[i % 3]
            r = await http.post(f"{url}/v1/admin/reload", headers=h, json={"selector": name})
            if name == "bad.onnx":
                ok = r.status_code == 409
                status = (await http.get(f"{url}/healthz")).json()["selector"]
                ok = ok and status.startswith("learned:")
                results["refused_bad" if ok else "unexpected"] += 1
            else:
                results["loaded" if r.status_code == 200 else "unexpected"] += 1
            i += 1
            await asyncio.sleep(0.3)
        metrics = (await http.get(f"{url}/metrics")).text
    rep, _ = task.result()
    return {"report": asdict(rep), "reloads": results, "metrics_reload_lines": [
        ln for ln in metrics.splitlines() if ln.startswith("modi_reloads_total")
    ]}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    """Command line entry point."""
    p = argparse.ArgumentParser(
        prog="python -m modi.experiments.serving_checks",
        description="Load, soak and reload-under-load checks of modi-serve in a subprocess, "
        "driven by modi-client's emulated phones.",
    )
    p.add_argument("check", choices=("load", "soak", "reload"), help="which check to run")
    p.add_argument("--pool-dir", type=Path, required=True, help="the pool's model folder")
    p.add_argument("--pool", type=Path, required=True, help="pool YAML from modi-profile")
    p.add_argument("--selector", type=Path, required=True, help="the served selector .onnx")
    p.add_argument("--selector-b", type=Path, default=None,
                   help="second good selector the reload check alternates with")  # fmt: skip
    p.add_argument("--concurrency", type=int, default=8, help="emulated phones at once")
    p.add_argument("--requests", type=int, default=400, help="requests of load and reload")
    p.add_argument("--duration-s", type=float, default=120.0, help="length of the soak (s)")
    p.add_argument("--sla-ms", type=float, default=300.0, help="every request's SLA (ms)")
    p.add_argument("--network", default="campus", help="network preset of the phones")
    p.add_argument("--images", default="photos", help="photos or digits")
    p.add_argument("--preprocess", default="mix", help="server, device or mix")
    p.add_argument("--seed", type=int, default=0, help="seed of images and network times")
    p.add_argument("--threads", type=int, default=1, help="onnxruntime threads per execution")
    p.add_argument("--json", type=Path, default=None, help="also write the result here")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    work = Path(tempfile.mkdtemp(prefix="modi-serving-"))
    sel_dir = work / "selectors"
    sel_dir.mkdir()
    shutil.copy(a.selector, sel_dir / "a.onnx")
    shutil.copy(a.selector_b or a.selector, sel_dir / "b.onnx")
    (sel_dir / "bad.onnx").write_bytes(os.urandom(8192))
    env = dict(os.environ)
    env.setdefault(TOKEN_ENV, os.urandom(16).hex())
    os.environ[TOKEN_ENV] = env[TOKEN_ENV]
    args = ["--pool-dir", str(a.pool_dir), "--pool", str(a.pool), "--threads", str(a.threads),
            "--selector", str(sel_dir / "a.onnx"), "--selector-dir", str(sel_dir)]  # fmt: skip
    srv = ServerProcess(args, work / "server.log", env=env)
    try:
        srv.wait_ready()
        if a.check == "load":
            rep, _ = asyncio.run(run_clients(srv.url, requests=a.requests, **_client_kwargs(a)))
            out: dict[str, Any] = {"report": asdict(rep)}
        elif a.check == "soak":
            out = asyncio.run(_soak(srv.url, srv, a))
        else:
            out = asyncio.run(_reload(srv.url, sel_dir, a))
    finally:
        srv.stop()
    text = json.dumps(out, indent=2)
    print(text)  # the CLI's output
    if a.json:
        a.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
