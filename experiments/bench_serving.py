"""Serving benchmarks of issue 15, each a comparison measured in the same run:

* ``flood``: the server's RSS under a flood of large images (default: 50 requests, 8 at once,
  of a 6000×6000 PNG of ~100 KB, then of a 3000×2000 photo-like JPEG), for the server before the
  hardening (``modi-serve`` as of commit ``5d67c54``, run from ``git show``) and now. RSS is
  sampled every 10 ms from ``/proc``: baseline, peak, and held 2 s after the flood.
* ``shadow``: the decision path's cost per request (features, selector, probabilities, the
  log record and its hand-off) with and without ``--shadow``, alternating blocks on two servers
  in one process, and the shadow's own cost per decision (batched, in the log's thread).

Usage::

    python -m modi.experiments.bench_serving flood --out runs/bench_serving
    python -m modi.experiments.bench_serving shadow --decisions 20000
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

#: The last commit before the serving hardening (the "before" server of ``flood``).
BEFORE_COMMIT = "5d67c54"


# ---------------------------------------------------------------- a tiny pool
def _classifier(path: Path, seed: int) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array(rng.normal(size=(64, 10)).astype(np.float32), "w")
    shape = numpy_helper.from_array(np.array([1, 64], np.int64), "shape")
    nodes = [
        helper.make_node("Reshape", ["x", "shape"], ["flat"]),
        helper.make_node("MatMul", ["flat", "w"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])],
        [w, shape],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)


def build_tiny_pool(d: Path, selectors: bool = True) -> dict[str, Path]:
    """``{"dir", "yaml", "sel"}``: a two-model pool of hand-made 8x8 classifiers (milliseconds
    to build, no training) and, with ``selectors``, a folder with ``a.onnx`` (a greedy LinUCB),
    ``b.onnx`` (another LinUCB) and ``bad.onnx`` (random bytes)."""
    from modi.experiments.zoo import ZooEntry, write_manifest

    pool_dir = d / "tiny"
    pool_dir.mkdir(parents=True)
    entries = []
    for i, (mid, acc) in enumerate((("tiny_fast", 0.6), ("tiny_slow", 0.9))):
        _classifier(pool_dir / f"{mid}.onnx", i)
        entries.append(ZooEntry(mid, f"{mid}.onnx", [1, 8, 8], "gray", 1.0, [0.0], [1.0], acc,
                                "hand-made", "digits"))  # fmt: skip
    write_manifest(pool_dir, "tiny", entries)
    yml = d / "tiny_pool.yaml"
    yml.write_text(
        "models:\n"
        "  - {id: tiny_fast, accuracy: 0.6, mean_ms: 5.0, std_ms: 1.0}\n"
        "  - {id: tiny_slow, accuracy: 0.9, mean_ms: 40.0, std_ms: 5.0}\n"
    )
    sel = d / "selectors"
    sel.mkdir()
    if selectors:
        from modi.agents.bandits import LinUCB
        from modi.agents.export import export_onnx

        greedy = LinUCB()
        greedy.theta = np.zeros_like(greedy.theta)
        greedy.theta[0] = 1.0
        export_onnx(greedy, sel / "a.onnx", run_id="a")
        export_onnx(LinUCB(seed=1), sel / "b.onnx", run_id="b")
        (sel / "bad.onnx").write_bytes(os.urandom(4096))
    return {"dir": pool_dir, "yaml": yml, "sel": sel}


# ---------------------------------------------------------------- flood
def bomb_png(side: int = 6000) -> bytes:
    """A flat ``side`` x ``side`` RGB PNG (a few hundred pixels per byte)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (side, side), (90, 120, 150)).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def photo_jpeg(w: int = 3000, h: int = 2000, seed: int = 0) -> bytes:
    """A photo-like JPEG (smooth gradients plus noise: a few pixels per byte)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 // w, yy * 255 // h, (xx + yy) * 255 // (w + h)], axis=-1)
    px = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(px).save(buf, format="JPEG", quality=85)
    return buf.getvalue()


class _RssSampler:
    def __init__(self, pid: int, every_s: float = 0.01) -> None:
        self.pid = pid
        self.every_s = every_s
        self.peak = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def rss(self) -> int:
        with open(f"/proc/{self.pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self.rss())
            except OSError:
                return
            time.sleep(self.every_s)

    def __enter__(self) -> _RssSampler:
        self.peak = self.rss()
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()


async def _send(url: str, body: bytes, ctype: str, n: int, concurrency: int) -> dict[str, int]:
    import httpx

    codes: dict[str, int] = {}
    left = list(range(n))

    async def worker(client: httpx.AsyncClient) -> None:
        while left:
            left.pop()
            try:
                r = await client.post(f"{url}/v1/infer", params={"sla_ms": 500},
                                      content=body, headers={"content-type": ctype})  # fmt: skip
                key = str(r.status_code)
            except httpx.HTTPError as e:
                key = type(e).__name__
            codes[key] = codes.get(key, 0) + 1

    async with httpx.AsyncClient(timeout=120.0) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return codes


def flood(
    out: Path,
    requests: int = 50,
    concurrency: int = 8,
    which: tuple[str, ...] = ("before", "after"),
) -> list[dict[str, Any]]:
    """RSS of the server before and after the hardening under image floods; one row each."""
    from modi.experiments.prototype import ServerProcess

    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="modi-flood-"))
    pool = build_tiny_pool(tmp, selectors=False)
    old_src = subprocess.run(
        ["git", "show", f"{BEFORE_COMMIT}:experiments/serve.py"], capture_output=True,
        text=True, check=True, cwd=Path(__file__).resolve().parents[1],
    ).stdout  # fmt: skip
    (tmp / "serve_before.py").write_text(old_src)
    bodies = {"png_6000x6000": (bomb_png(), "image/png"),
              "jpeg_3000x2000": (photo_jpeg(), "image/jpeg")}  # fmt: skip
    servers = {"before": [sys.executable, str(tmp / "serve_before.py")], "after": None}
    servers = {k: v for k, v in servers.items() if k in which}
    rows = []
    for image, (body, ctype) in bodies.items():
        for name, program in servers.items():
            srv = ServerProcess(["--pool-dir", str(pool["dir"]), "--pool", str(pool["yaml"])],
                                out / f"server_{name}_{image}.log", program=program)  # fmt: skip
            try:
                srv.wait_ready()
                with _RssSampler(srv.proc.pid) as s:
                    base = s.rss()
                    t0 = time.perf_counter()
                    codes = asyncio.run(_send(srv.url, body, ctype, requests, concurrency))
                    wall = time.perf_counter() - t0
                time.sleep(2.0)
                held = s.rss()
            finally:
                srv.stop()
            row = {
                "server": name, "image": image, "body_kb": round(len(body) / 1024, 1),
                "requests": requests, "concurrency": concurrency, "codes": codes,
                "rss_base_mb": round(base / 2**20, 1), "rss_peak_mb": round(s.peak / 2**20, 1),
                "rss_held_mb": round(held / 2**20, 1), "wall_s": round(wall, 2),
            }  # fmt: skip
            print(json.dumps(row), flush=True)
            rows.append(row)
    (out / "flood.json").write_text(json.dumps(rows, indent=2) + "\n")
    return rows


# ---------------------------------------------------------------- shadow overhead
def shadow_overhead(decisions: int = 20000, blocks: int = 10, seed: int = 0) -> dict[str, Any]:
    """Per-decision cost of the decision path with and without a shadow (same run)."""
    from modi.runtime import Request
    from modi.serving import InferenceServer, ServeConfig

    tmp = Path(tempfile.mkdtemp(prefix="modi-shadow-"))
    pool = build_tiny_pool(tmp)
    common: dict[str, Any] = {"pool_dir": pool["dir"], "pool_yaml": pool["yaml"],
              "selector": pool["sel"] / "a.onnx"}  # fmt: skip
    servers = {
        "without": InferenceServer(ServeConfig(**common, decision_log=tmp / "off.jsonl")),
        "with": InferenceServer(ServeConfig(**common, decision_log=tmp / "on.jsonl",
                                            shadow=pool["sel"] / "b.onnx")),
    }  # fmt: skip
    rng = np.random.default_rng(seed)
    n = decisions // blocks
    reqs = [
        Request(float(rng.uniform(20, 200)), float(rng.uniform(0, 20)), float(rng.uniform(1, 30)),
                float(rng.uniform(1e4, 5e5)), f"c{int(rng.integers(50))}")
        for _ in range(n)
    ]  # fmt: skip
    per: dict[str, list[float]] = {k: [] for k in servers}
    for b in range(blocks + 1):  # block 0 warms up
        order = list(servers) if b % 2 else list(servers)[::-1]
        for name in order:
            srv = servers[name]
            assert srv.log is not None
            t0 = time.perf_counter()
            for i, req in enumerate(reqs):
                c = srv.decide(req)
                srv.log.submit(srv.decision_record(c, req.sla_ms, str(i), 0.0, 50.0, None))
            dt = (time.perf_counter() - t0) / n * 1e6
            srv.log.flush(60.0)
            if b:
                per[name].append(dt)
    shadow = servers["with"].shadow
    assert shadow is not None
    shadow_us = shadow.busy_s / max(shadow.decisions, 1) * 1e6
    # The shadow alone (no request thread competing for the GIL): batches of 256 records.
    srv = servers["with"]
    recs = [srv.decision_record(srv.decide(r), r.sla_ms, "x", 0.0, 50.0, None) for r in reqs[:256]]
    t0 = time.perf_counter()
    for _ in range(20):
        shadow.fill(recs)
    alone_us = (time.perf_counter() - t0) / (20 * len(recs)) * 1e6
    for srv in servers.values():
        srv.close()
    off_us = float(np.median(per["without"]))
    on_us = float(np.median(per["with"]))
    res = {
        "decisions_per_block": n, "blocks": blocks,
        "path_us_without_shadow": round(off_us, 2), "path_us_with_shadow": round(on_us, 2),
        "path_added_pct": round((on_us / off_us - 1) * 100, 2),
        "shadow_us_per_decision_in_writer_thread": round(shadow_us, 3),
        "shadow_us_per_decision_alone": round(alone_us, 3),
        "shadow_alone_share_of_path_pct": round(alone_us / off_us * 100, 2),
        "shadow_decisions": shadow.decisions,
    }  # fmt: skip
    print(json.dumps(res), flush=True)
    return res


def main(argv: list[str] | None = None) -> None:
    """Command line entry point."""
    p = argparse.ArgumentParser(
        prog="python -m modi.experiments.bench_serving",
        description="Serving benchmarks: RSS under an image flood (before/after the "
        "hardening) and the shadow selector's added cost.",
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("flood", help="RSS under a flood of large images, before and after")
    f.add_argument("--out", type=Path, default=Path("runs/bench_serving"), help="output folder")
    f.add_argument("--requests", type=int, default=50, help="requests per flood")
    f.add_argument("--concurrency", type=int, default=8, help="requests at once")
    f.add_argument("--servers", default="before,after",
                   help="comma-separated servers to flood: before, after")  # fmt: skip
    s = sub.add_parser("shadow", help="decision-path cost with and without --shadow")
    s.add_argument("--decisions", type=int, default=20000, help="decisions per server")
    s.add_argument("--blocks", type=int, default=10, help="alternating blocks")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if a.cmd == "flood":
        flood(a.out, a.requests, a.concurrency, tuple(a.servers.split(",")))
    else:
        shadow_overhead(a.decisions, a.blocks)


if __name__ == "__main__":
    main()
