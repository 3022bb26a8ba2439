"""``modi-client``: a population of emulated mobile clients driving a ``modi-serve`` server.

Each client is a closed loop: capture a real image (scikit-image's sample photographs when
scikit-image is installed, else generated scenes; or scikit-learn's handwritten digits with their
labels) at a phone camera resolution, optionally preprocess it on the device (resize to the
pool's input and send raw pixels), sleep the upload time drawn from one of the simulator's
network models (``modi.envs`` presets such as ``campus`` or ``link_wifi``), send it with its SLA,
capture time and upload time, then sleep the download time. The end-to-end latency runs from
capture to the answer's arrival, so it includes device preprocessing, both emulated network
legs, the loopback transfer and everything in the server.

Each client keeps its download history (:class:`DownloadHistory`, feature schema v3): after
each answer it measures that answer's download time as the response time of the HTTP request
(sent to answer received, the emulated download included) minus the server's own time
(``timings_ms.server`` of the answer; the emulated upload is slept before the request is sent,
so it is not in the response time), folds it with
:func:`modi.runtime.features.client_dl_update` and sends ``client_dl_ms``/``client_dlvar_ms``
(and the raw ``prev_download_ms``) with its next request; its first request carries none.

The report gives attainment (share of requests within their SLA), accuracy (the chosen model's
accuracy, or measured correctness for labelled digits), effective accuracy (accuracy, counting 0
for a missed SLA), latency percentiles, throughput, failed requests and model usage. Usage::

    modi-client --url http://127.0.0.1:8000 --sla-ms 250 --requests 400 --concurrency 8 \\
        --network campus --images photos --preprocess mix --json report.json

Device decisions (issue 14): with ``--device`` each client is an emulated phone of ``--tier``
whose own decisions (where to preprocess, on-device model or offload, backup) come from a
learned device policy (``--device learned --device-policy PATH.onnx``, run by
:class:`modi.runtime.DeviceSelector`) or a static rule (:mod:`modi.experiments.phone`);
``--compare-device`` runs the three tiers x (learned, static local, static remote) on one
network preset and prints attainment and effective accuracy side by side::

    modi-client --compare-device --device-policy runs/x/device_policy.onnx \\
        --network link_wifi --sla-ms 400 --requests 100 --concurrency 2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from modi.experiments.imaging import PIXELS_CONTENT_TYPE, encode_image, resize
from modi.runtime.features import client_dl_update, client_mismatch_update

log = logging.getLogger(__name__)

#: Phone camera resolutions (height, width) the photographs are resized to.
PHONE_RESOLUTIONS = ((480, 640), (720, 1280), (1080, 1920))
_SKIMAGE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "cat", "hubble_deep_field")


@dataclass
class Shot:
    """One captured image: encoded bytes (as a phone camera writes), pixels, optional label."""

    jpeg: bytes
    pixels: np.ndarray
    label: int | None
    content_type: str = "image/jpeg"


def photos(seed: int = 0) -> list[Shot]:
    """Sample photographs at phone resolutions (generated scenes without scikit-image)."""
    rng = np.random.default_rng(seed)
    raw: list[np.ndarray] = []
    try:
        import skimage.data as sd

        for name in _SKIMAGE_PHOTOS:
            img = np.asarray(getattr(sd, name)())
            if img.ndim == 2:
                img = np.stack([img] * 3, axis=-1)
            raw.append(img[..., :3].astype(np.uint8))
    except ImportError:
        log.warning("scikit-image is not installed: using generated scenes instead of photos")
        for _ in range(6):
            h, w = 480, 640
            yy, xx = np.mgrid[0:h, 0:w]
            base = np.stack([xx / w, yy / h, (xx + yy) / (w + h)], axis=-1) * 255
            raw.append((base + rng.normal(0, 20, base.shape)).clip(0, 255).astype(np.uint8))
    shots = []
    for i, img in enumerate(raw):
        h, w = PHONE_RESOLUTIONS[i % len(PHONE_RESOLUTIONS)]
        px = resize(img, h, w)
        shots.append(Shot(encode_image(px, "JPEG", 90), px, None))
    return shots


def digits(n: int = 64, size: int = 480, seed: int = 0) -> list[Shot]:
    """Handwritten digits (scikit-learn) blown up to ``size`` pixels, as PNG, with labels."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    idx = np.random.default_rng(seed).choice(len(y), size=n, replace=False)
    shots = []
    for i in idx.tolist():
        img = (x[i].reshape(8, 8) / 16.0 * 255).round().astype(np.uint8)
        big = np.repeat(np.repeat(img, size // 8, 0), size // 8, 1)
        px = np.stack([big] * 3, axis=-1)
        shots.append(Shot(encode_image(px, "PNG"), px, int(y[i]), "image/png"))
    return shots


class NetworkReplay:
    """Upload/download times (ms) per request from a simulator network model (a preset name)."""

    def __init__(self, name: str, num_clients: int, seed: int = 0) -> None:
        from modi.envs.catalog import load_preset

        self.name = name
        self.model = load_preset("network", name)
        self.rng = np.random.default_rng(seed)
        self.model.reset(self.rng, 1, num_clients)
        self.t0 = time.perf_counter()

    def sample(
        self, client: int, payload_bytes: int, response_bytes: int = 1000
    ) -> tuple[float, float]:
        """``(t_input_ms, t_output_ms)`` of one request of ``client``."""
        from modi.envs.networks import BlockContext

        ctx = BlockContext(
            client=np.array([[client]], dtype=np.int64),
            time_ms=np.array([[(time.perf_counter() - self.t0) * 1e3]]),
            payload_bytes=np.array([[float(payload_bytes)]]),
            response_bytes=np.array([[float(response_bytes)]]),
        )
        t_in, t_out = self.model.sample(self.rng, ctx)
        return float(np.asarray(t_in).reshape(-1)[0]), float(np.asarray(t_out).reshape(-1)[0])


@dataclass
class DownloadHistory:
    """One client's own measurement of its answers' downloads (feature schema v4).

    ``dl_ms``/``dlvar_ms``: the smoothed download time and its mean deviation
    (:func:`modi.runtime.features.client_dl_update`; NaN before the first answer);
    ``mismatch``: the smoothed ``|ln(download / upload)|``, each download against the upload
    time the client sent with the same request
    (:func:`modi.runtime.features.client_mismatch_update`; NaN before the first answer);
    ``last_ms``: the last measured download (``None`` before the first answer)."""

    dl_ms: float = math.nan
    dlvar_ms: float = math.nan
    mismatch: float = math.nan
    last_ms: float | None = None

    def fields(self) -> dict[str, float]:
        """The query fields the next request carries (none before the first answer)."""
        if self.last_ms is None:
            return {}
        return {
            "client_dl_ms": round(self.dl_ms, 3),
            "client_dlvar_ms": round(self.dlvar_ms, 3),
            "client_dl_mismatch": round(self.mismatch, 6),
            "prev_download_ms": round(self.last_ms, 3),
        }

    def record(self, response_ms: float, server_ms: float, upload_ms: float) -> float:
        """Fold one answer's download, measured as the request's response time (sent to the
        answer received, the download included) minus the server's time, which the answer
        reports (``timings_ms.server``), and ``upload_ms``, the upload time the request carried;
        returns the download (ms, >= 0)."""
        download = max(float(response_ms) - float(server_ms), 0.0)
        self.dl_ms, self.dlvar_ms = client_dl_update(self.dl_ms, self.dlvar_ms, download)
        self.mismatch = client_mismatch_update(self.mismatch, download, float(upload_ms))
        self.last_ms = download
        return download


@dataclass
class RunReport:
    """What a client run measured (latencies in ms)."""

    sla_ms: float
    requests: int
    failed: int
    attainment: float
    accuracy: float
    effective_accuracy: float
    e2e_p50_ms: float
    e2e_p90_ms: float
    e2e_p99_ms: float
    server_p50_ms: float
    select_p50_ms: float
    select_p99_ms: float
    exec_p50_ms: float
    throughput_rps: float
    duration_s: float
    concurrency: int
    network: str
    preprocess: str
    usage: dict[str, int] = field(default_factory=dict)
    sources: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)


async def _one(
    http: Any,
    url: str,
    shot: Shot,
    device_pre: bool,
    input_hw: tuple[int, int],
    sla_ms: float,
    client: int,
    net: NetworkReplay,
    history: DownloadHistory | None = None,
) -> dict[str, Any]:
    """One request of ``client``: capture, upload, answer, download; its row. ``history``: the
    client's download history, sent with the request and updated from its answer."""
    history = DownloadHistory() if history is None else history
    t_cap = time.perf_counter()
    cap_ms = time.time() * 1e3
    if device_pre:
        px = resize(shot.pixels, *input_hw)
        body, ctype = px.tobytes(), PIXELS_CONTENT_TYPE
        shape = f"{px.shape[0]}x{px.shape[1]}x3"
    else:
        body, ctype, shape = shot.jpeg, shot.content_type, None
    t_in, t_out = net.sample(client, len(body))
    await asyncio.sleep(t_in / 1e3)
    params: dict[str, Any] = {
        "sla_ms": sla_ms, "upload_ms": round(t_in, 3), "capture_ts_ms": round(cap_ms, 3),
        "client_id": f"phone-{client}", **history.fields(),
    }  # fmt: skip
    if shape:
        params["shape"] = shape
    if shot.label is not None:
        params["label"] = shot.label
    row: dict[str, Any] = {"client": client, "sla_ms": sla_ms, "t_in_ms": t_in, "t_out_ms": t_out,
                           "ok": False, "client_dl_ms": params.get("client_dl_ms")}  # fmt: skip
    t_sent = time.perf_counter()
    try:
        r = await http.post(
            f"{url}/v1/infer", params=params, content=body, headers={"content-type": ctype}
        )
    except Exception as e:  # a transport failure counts as a failed request
        row["error"] = type(e).__name__
        return row
    await asyncio.sleep(t_out / 1e3)
    t_done = time.perf_counter()
    row["e2e_ms"] = (t_done - t_cap) * 1e3
    if r.status_code != 200:
        row["error"] = f"HTTP {r.status_code}"
        return row
    d = r.json()
    row["download_ms"] = history.record(
        (t_done - t_sent) * 1e3, d["timings_ms"]["server"], params["upload_ms"]
    )
    row.update(
        ok=True, model_id=d["model_id"], source=d["source"], accuracy=d["accuracy"],
        request_id=d.get("request_id"),
        correct=d["correct"], **{f"{k}_ms": v for k, v in d["timings_ms"].items()},
    )  # fmt: skip
    return row


async def run_clients(
    url: str,
    sla_ms: float,
    requests: int,
    concurrency: int,
    network: str = "campus",
    images: str = "photos",
    preprocess: str = "server",
    seed: int = 0,
    duration_s: float | None = None,
    transport: Any = None,
    progress: bool = False,
    report_outcomes: bool = False,
) -> tuple[RunReport, list[dict[str, Any]]]:
    """Drive the server with ``concurrency`` closed-loop clients until ``requests`` are done (or
    ``duration_s`` passed); return the report and one row per request. ``transport``: an httpx
    transport (e.g. ``httpx.ASGITransport(app)`` to drive an app in-process); ``progress``: a
    tqdm progress bar on stderr (requests done, or seconds for ``duration_s``);
    ``report_outcomes``: after each answer, send its end-to-end latency to ``POST
    /v1/outcome`` (a server run with ``--outcome-hold-s`` logs it as the decision's outcome)."""
    import httpx

    shots = photos(seed) if images == "photos" else digits(seed=seed)
    if preprocess not in ("server", "device", "mix"):
        raise ValueError(f"preprocess must be server, device or mix, got {preprocess!r}")
    net = NetworkReplay(network, concurrency, seed)
    rng = np.random.default_rng(seed + 1)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=60.0, limits=limits, transport=transport) as http:
        doc = (await http.get(f"{url}/v1/models")).json()
        h, w = max((tuple(m["input"][1:]) for m in doc["models"]), key=lambda s: s[0] * s[1])
        rows: list[dict[str, Any]] = []
        todo = iter(range(requests if duration_s is None else 1 << 62))
        t_end = None if duration_s is None else time.perf_counter() + duration_s

        bar = _progress_bar(progress, requests, duration_s)

        async def worker(c: int) -> None:
            history = DownloadHistory()  # this client's own, across its requests
            for _ in todo:
                if t_end is not None and time.perf_counter() >= t_end:
                    return
                shot = shots[int(rng.integers(len(shots)))]
                dev = preprocess == "device" or (preprocess == "mix" and rng.random() < 0.5)
                rows.append(await _one(http, url, shot, dev, (h, w), sla_ms, c, net, history))
                if report_outcomes and rows[-1].get("request_id") and "e2e_ms" in rows[-1]:
                    q = {"request_id": rows[-1]["request_id"],
                         "e2e_ms": round(rows[-1]["e2e_ms"], 3)}  # fmt: skip
                    try:
                        await http.post(f"{url}/v1/outcome", params=q)
                    except httpx.HTTPError as e:  # the report is best effort
                        log.debug("outcome report failed: %s", e)
                if bar is not None:
                    bar.update(1)
                    if rows[-1].get("error"):
                        bar.set_postfix(failed=sum(1 for r in rows if r.get("error")))

        t0 = time.perf_counter()
        try:
            await asyncio.gather(*(worker(c) for c in range(concurrency)))
        finally:
            if bar is not None:
                bar.close()
        dur = time.perf_counter() - t0
    return summarize(rows, sla_ms, dur, concurrency, network, preprocess), rows


def summarize(
    rows: Sequence[dict[str, Any]],
    sla_ms: float,
    duration_s: float,
    concurrency: int,
    network: str,
    preprocess: str,
) -> RunReport:
    """The :class:`RunReport` of a run's rows."""
    ok = [r for r in rows if r["ok"]]
    n = len(rows)

    def pct(key: str, q: float) -> float:
        v = [r[key] for r in ok if key in r]
        return float(np.percentile(v, q)) if v else float("nan")

    met = np.array([r["e2e_ms"] <= r["sla_ms"] for r in ok], dtype=bool)
    acc = np.array([float(r["correct"]) if r["correct"] is not None else r["accuracy"] for r in ok])
    return RunReport(
        sla_ms=sla_ms,
        requests=n,
        failed=n - len(ok),
        attainment=float(met.sum() / n) if n else float("nan"),
        accuracy=float(acc.mean()) if ok else float("nan"),
        effective_accuracy=float((acc * met).sum() / n) if n else float("nan"),
        e2e_p50_ms=pct("e2e_ms", 50),
        e2e_p90_ms=pct("e2e_ms", 90),
        e2e_p99_ms=pct("e2e_ms", 99),
        server_p50_ms=pct("server_ms", 50),
        select_p50_ms=pct("select_ms", 50),
        select_p99_ms=pct("select_ms", 99),
        exec_p50_ms=pct("exec_ms", 50),
        throughput_rps=len(ok) / duration_s if duration_s > 0 else float("nan"),
        duration_s=duration_s,
        concurrency=concurrency,
        network=network,
        preprocess=preprocess,
        usage=dict(Counter(r["model_id"] for r in ok).most_common()),
        sources=dict(Counter(r["source"] for r in ok)),
        errors=dict(Counter(r.get("error", "") for r in rows if not r["ok"])),
    )


def _progress_bar(on: bool, requests: int, duration_s: float | None) -> Any:
    """A tqdm bar on stderr counting requests (``None`` when off or tqdm is missing)."""
    if not on:
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm comes with the server extra
        return None
    total = None if duration_s is not None else requests
    return tqdm(total=total, desc="requests", unit="req", dynamic_ncols=True, leave=False)


def main(argv: list[str] | None = None) -> None:
    """Command line entry point."""
    p = argparse.ArgumentParser(
        prog="modi-client",
        description="Emulated mobile clients driving a modi-serve server: real images, "
        "replayed network times, SLAs; prints a report (attainment, accuracy, effective "
        "accuracy, latency percentiles, throughput, model usage) as JSON.",
    )
    p.add_argument("--url", default="http://127.0.0.1:8000", help="the server's base URL")
    p.add_argument("--sla-ms", type=float, default=250.0, help="every request's SLA (ms)")
    p.add_argument("--requests", type=int, default=200, help="requests to send in all")
    p.add_argument("--duration-s", type=float, default=None,
                   help="run for this many seconds instead of a number of requests")  # fmt: skip
    p.add_argument("--concurrency", type=int, default=4, help="closed-loop clients at once")
    p.add_argument(
        "--network",
        default="campus",
        help="network preset of the upload/download times (conf/network)",
    )
    p.add_argument(
        "--images",
        choices=("photos", "digits"),
        default="photos",
        help="photographs at phone resolutions, or labelled handwritten digits",
    )
    p.add_argument(
        "--preprocess",
        choices=("server", "device", "mix"),
        default="server",
        help="send encoded images, device-preprocessed pixels, or half of each",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of images and network times")
    p.add_argument("--json", type=Path, default=None, help="also write the report to this file")
    p.add_argument("--rows", type=Path, default=None,
                   help="write one JSON line per request to this file")  # fmt: skip
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.add_argument(
        "--device",
        choices=("learned", "static_local", "static_remote", "on_device"),
        default=None,
        help="emulated phones making the device's decisions with this policy "
        "(learned: the DEVICE_POLICY file through DeviceSelector)",
    )
    p.add_argument("--device-policy", type=Path, default=None,
                   help="exported device policy (.onnx) for the learned device")  # fmt: skip
    p.add_argument("--tier", default="mid", help="device tier of the phones: low, mid or high")
    p.add_argument(
        "--compare-device",
        action="store_true",
        help="run the tiers low, mid and high with the learned policy, static_local and "
        "static_remote on the network preset (REQUESTS per row, CONCURRENCY phones); print the "
        "table",
    )
    p.add_argument(
        "--report-outcomes",
        action="store_true",
        help="send each answer's end-to-end latency to the server's /v1/outcome",
    )
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if a.compare_device or a.device is not None:
        _device_main(p, a)
        return
    rep, rows = asyncio.run(
        run_clients(
            a.url, a.sla_ms, a.requests, a.concurrency, a.network, a.images, a.preprocess,
            a.seed, a.duration_s, progress=not a.no_progress,
            report_outcomes=a.report_outcomes,
        )
    )  # fmt: skip
    text = json.dumps(asdict(rep), indent=2)
    print(text)  # the CLI's output
    if a.json:
        a.json.write_text(text + "\n")
    if a.rows:
        a.rows.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _device_main(p: argparse.ArgumentParser, a: argparse.Namespace) -> None:
    """``--device`` / ``--compare-device``: emulated phones making the device's decisions."""
    import modi.experiments.phone as ph

    try:
        if a.compare_device:
            if a.device_policy is None:
                raise ph.PhoneError("--compare-device needs --device-policy PATH.onnx")
            reports = asyncio.run(
                ph.compare_device_policies(
                    a.url, a.device_policy, a.sla_ms, a.requests, a.concurrency, a.network,
                    a.images, a.seed,
                )
            )  # fmt: skip
        else:
            rep, rows = asyncio.run(
                ph.run_phones(
                    a.url, a.tier, a.device, a.device_policy, a.sla_ms, a.requests,
                    a.concurrency, a.network, a.images, a.seed,
                )
            )  # fmt: skip
            reports = [rep]
            if a.rows:
                a.rows.write_text("".join(json.dumps(r) + "\n" for r in rows))
    except ph.PhoneError as e:
        p.error(str(e))
    text = json.dumps(ph.reports_json(reports), indent=2)
    print(ph.format_table(reports))  # the CLI's output
    if a.json:
        a.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
