"""Emulated phones for ``modi-client``: each phone makes the device's decisions (where to
preprocess, on-device model or offload, backup) for its captures, against a real ``modi-serve``.

A :class:`Phone` is one device of a tier preset (``conf/device``: its preprocessing law, its
on-device models' inference and load times, its backup model). Its decisions come from

* ``learned``: :class:`modi.runtime.DeviceSelector` with an exported device policy (PieSlicer
  fallback on a missing/corrupt file or bad input, with the reason counted in the report);
* a rule of :mod:`modi.agents.offload_policies` (``static_local``: preprocess on the device and
  offload; ``static_remote``: upload the raw image; ``on_device``: always local), run on the
  observation the selector builds.

Either way the phone's own network history feeds the decision through the module
``modi/Offload-v0`` uses (:mod:`modi.runtime.device_features`, via the selector): the start-up
probe, then, for each offloaded request, the download latency and the uplink bandwidth of its
upload (two payloads of :data:`modi.envs.offload.PROBE_BYTES` sampled from the same network
state, as the env measures it), recorded when the response has arrived (DESIGN.md §1). A local
request measures nothing.

What is emulated (the host is not a phone): the device's preprocessing, model load and
inference times are drawn from the tier's profiles and slept; the upload and download are
drawn from the network preset and slept (as ``modi-client`` does). What is real: the request to
``modi-serve`` (its model choice, decoding, preprocessing and inference) and the device-side
resize + JPEG encoding of a device-preprocessed image. An answer counts as the env counts it:
the remote one if it arrives within the SLA, else the backup's if it finished in time (the
more accurate of the two when both do); a local one if it finished in time.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from modi.experiments.client import DownloadHistory
from modi.experiments.imaging import encode_image, resize
from modi.runtime.device_selector import (
    TIERS,
    DeviceDecision,
    DeviceSelector,
    DeviceSpec,
)

#: Device-side decision makers a phone can use.
DEVICE_POLICIES = ("learned", "static_local", "static_remote", "on_device")
#: What ``modi-client --compare-device`` runs per tier, in this order.
COMPARED_POLICIES = ("learned", "static_local", "static_remote")


class PhoneError(ValueError):
    """A bad phone setting (tier, policy, file); the message names it."""


def check_phone_args(tier: str, policy: str, policy_path: str | Path | None) -> None:
    """Refuse an unknown tier or device policy, or ``learned`` without a policy file, with
    the field named (before anything runs)."""
    if tier not in TIERS:
        raise PhoneError(f"unknown device tier {tier!r}; expected one of {list(TIERS)}")
    if policy not in DEVICE_POLICIES:
        raise PhoneError(f"unknown device policy {policy!r}; expected one of {DEVICE_POLICIES}")
    if policy == "learned" and policy_path is None:
        raise PhoneError("device policy 'learned' needs --device-policy PATH.onnx")


def device_spec(profile: Any) -> DeviceSpec:
    """What the phone knows about itself (a :class:`~modi.envs.devices.DeviceProfile`'s
    profiled values), without importing the training stack."""
    return DeviceSpec.from_profile(profile)


def radio_of(network: str) -> str:
    """The radio a phone on network preset ``network`` is on: the device env's table
    (``conf/env/offload.yaml``, ``radio``; its ``default`` for a preset not listed)."""
    from importlib import resources

    import yaml

    table = yaml.safe_load((resources.files("modi.conf") / "env" / "offload.yaml").read_text())
    radios = table.get("radio") or {}
    return str(radios.get(network, radios.get("default", "wifi")))


class Phone:
    """One emulated phone of ``tier`` (a ``conf/device`` preset) deciding with ``policy``."""

    def __init__(
        self,
        tier: str,
        policy: str,
        policy_path: str | Path | None,
        network: Any,
        client: int,
        seed: int = 0,
        cache_models: int = 1,
    ) -> None:
        from modi.agents.offload_policies import make_device_policy
        from modi.envs.catalog import load_preset

        check_phone_args(tier, policy, policy_path)
        self.profile = load_preset("device", tier)
        self.tier, self.policy, self.client = tier, policy, client
        self.net = network
        self.rng = np.random.default_rng([seed, client])
        path = policy_path if policy == "learned" else None
        self.selector = DeviceSelector(
            device_spec(self.profile), path, radio=radio_of(getattr(network, "name", ""))
        )
        self.rule: Any = None if policy == "learned" else make_device_policy(policy)
        self.models = self.profile.models
        self.backup = self.profile.backup_index
        self.cache_models = int(cache_models)
        self.loaded = np.zeros(len(self.models), dtype=bool)
        self._last_used = np.zeros(len(self.models))
        self._use(self.backup)  # the backup is resident (the env's default)
        self.t0 = time.perf_counter()
        from modi.envs.offload import PROBE_BYTES

        t_out, bw = self.measure(int(PROBE_BYTES[0]))[1:]
        self.selector.start(t_out, bw, 0.0)  # the start-up probe
        #: The phone's download history of its answers, sent to the server with each request.
        self.downloads = DownloadHistory()

    def now_ms(self) -> float:
        """The phone's clock (ms since it started)."""
        return (time.perf_counter() - self.t0) * 1e3

    def measure(self, payload_bytes: int) -> tuple[float, float, float]:
        """``(t_in_ms, t_out_ms, uplink_mbps)`` of an upload of ``payload_bytes`` now: the
        times of this payload and the uplink bandwidth the phone measures from it, the two
        probe payloads under the same network state (``modi/Offload-v0``'s measurement)."""
        from modi.envs.networks import BlockContext
        from modi.envs.offload import PROBE_BYTES, OffloadSim, sample_twins

        net = self.net

        def ctx(size: float) -> BlockContext:
            return BlockContext(
                client=np.array([[self.client]], dtype=np.int64),
                time_ms=np.array([[(time.perf_counter() - net.t0) * 1e3]]),
                payload_bytes=np.array([[float(size)]]),
                response_bytes=np.array([[1000.0]]),
            )

        (t_in, t_out), [(t_small, _), (t_large, _)] = sample_twins(
            net.model, net.rng, ctx(payload_bytes), [ctx(PROBE_BYTES[0]), ctx(PROBE_BYTES[1])]
        )
        bw = OffloadSim._uplink_mbps(np.asarray(t_large - t_small, dtype=np.float64))
        return float(t_in.ravel()[0]), float(t_out.ravel()[0]), float(np.ravel(bw)[0])

    def decide(self, now_ms: float, sla_ms: float, megapixels: float, raw_bytes: int) -> Any:
        """``(prep, placement, backup)`` and the selector's decision (``None`` for a rule)."""
        if self.rule is None:
            d: DeviceDecision = self.selector.decide(now_ms, sla_ms, megapixels, float(raw_bytes))
            return d.action, d
        obs = self.selector.observation(now_ms, sla_ms, megapixels, float(raw_bytes))
        a = np.asarray(self.rule.select(obs[None, :]))[0]
        return (int(a[0]), int(a[1]), int(a[2])), None

    def draw_prep_ms(self, megapixels: float) -> float:
        """The device's preprocessing time of an image of ``megapixels``."""
        p = self.profile.preprocessing
        return float(p.mean_ms(megapixels) * p.noise(self.rng.standard_normal()))

    def draw_model_ms(self, j: int) -> float:
        """Load (if not in memory) + inference time of on-device model ``j``."""
        m = self.models[j]
        ex = float(m.exec_ms[self.rng.integers(m.exec_ms.size)])
        load = 0.0 if self.loaded[j] else float(m.load_ms[self.rng.integers(m.load_ms.size)])
        return load + ex

    def _use(self, j: int) -> None:
        """Model ``j`` ran: it is in memory; least recently used others leave (the env's LRU
        with ``cache_models`` besides the resident backup)."""
        self._last_used[j] = time.perf_counter()
        self.loaded[j] = True
        others = [int(k) for k in np.flatnonzero(self.loaded) if k != self.backup]
        others.sort(key=lambda k: self._last_used[k])
        for k in others[: max(0, len(others) - self.cache_models)]:
            self.loaded[k] = False
        for i, m in enumerate(self.models):
            self.selector.set_loaded(m.id, bool(self.loaded[i]))


async def phone_request(
    http: Any, url: str, phone: Phone, shot: Any, sla_ms: float, input_hw: tuple[int, int]
) -> dict[str, Any]:
    """One capture of ``phone``: decide, act (emulated device work, real server request),
    record the phone's measurement; returns the request's row."""
    t_cap = time.perf_counter()
    cap_wall_ms = time.time() * 1e3
    now = phone.now_ms()
    h, w = shot.pixels.shape[:2]
    mp, raw = h * w / 1e6, len(shot.jpeg)
    (prep, place, backup), dec = phone.decide(now, sla_ms, mp, raw)
    big_l = len(phone.models)
    row: dict[str, Any] = {
        "client": phone.client, "tier": phone.tier, "policy": phone.policy, "sla_ms": sla_ms,
        "prep": ("device", "server")[prep], "placement": "offload" if place >= big_l else
        phone.models[place].id, "backup": bool(backup), "ok": False, "bytes_sent": 0,
        "source": None if dec is None else dec.source,
        "fallback_reason": None if dec is None or dec.source == "learned" else dec.reason,
    }  # fmt: skip
    device_prep = place < big_l or prep == 0 or backup
    t_dp = phone.draw_prep_ms(mp) if device_prep else 0.0
    if place < big_l:  # on the device: preprocessing, load if needed, inference
        dev_ms = t_dp + phone.draw_model_ms(place)
        await asyncio.sleep(dev_ms / 1e3)
        phone._use(place)
        acc = float(phone.models[place].accuracy)
        e2e = (time.perf_counter() - t_cap) * 1e3
        met = e2e <= sla_ms
        row.update(ok=True, answered_by="local" if met else "none", e2e_ms=e2e, met=met,
                   accuracy=acc if met else 0.0, model_accuracy=acc)  # fmt: skip
        return row
    backup_ms = t_dp + phone.draw_model_ms(phone.backup) if backup else np.inf
    if prep == 0:  # preprocess on the device, upload the small payload
        await asyncio.sleep(t_dp / 1e3)
        px = resize(shot.pixels, *input_hw)
        body, ctype = encode_image(px, "JPEG", 90), "image/jpeg"
    else:
        body, ctype = shot.jpeg, shot.content_type
    t_in, t_out, bw = phone.measure(len(body))
    row["bytes_sent"] = len(body)
    await asyncio.sleep(t_in / 1e3)
    params = {"sla_ms": sla_ms, "upload_ms": round(t_in, 3), "client_id": f"phone-{phone.client}",
              "capture_ts_ms": round(cap_wall_ms, 3), **phone.downloads.fields()}  # fmt: skip
    if shot.label is not None:
        params["label"] = shot.label
    remote_acc = -1.0
    t_sent = time.perf_counter()
    try:
        r = await http.post(
            f"{url}/v1/infer", params=params, content=body, headers={"content-type": ctype}
        )
        await asyncio.sleep(t_out / 1e3)
        if r.status_code == 200:
            d = r.json()
            response_ms = (time.perf_counter() - t_sent) * 1e3
            row["download_ms"] = phone.downloads.record(
                response_ms, d["timings_ms"]["server"], round(t_in, 3)
            )
            remote_acc = float(d["correct"] if d.get("correct") is not None else d["accuracy"])
            row["model_id"] = d["model_id"]
        else:
            row["error"] = f"HTTP {r.status_code}"
    except Exception as e:  # a transport failure: only the backup can answer
        row["error"] = type(e).__name__
    remote_e2e = (time.perf_counter() - t_cap) * 1e3
    if remote_acc >= 0:  # the response is back: the phone's own measurement of this request
        phone.selector.record(t_out, bw, now)
    if backup:
        phone._use(phone.backup)
    remote_ok = remote_acc >= 0 and remote_e2e <= sla_ms
    backup_ok = bool(backup) and backup_ms <= sla_ms
    acc_b = float(phone.models[phone.backup].accuracy) if backup_ok else 0.0
    acc_r = remote_acc if remote_ok else 0.0
    by = "remote" if remote_ok and acc_r >= acc_b else ("backup" if backup_ok else "none")
    row.update(
        ok=remote_acc >= 0 or backup_ok, answered_by=by, met=by != "none",
        e2e_ms=remote_e2e if by == "remote" else (backup_ms if by == "backup" else remote_e2e),
        accuracy=max(acc_r, acc_b), model_accuracy=max(remote_acc, acc_b, 0.0),
    )  # fmt: skip
    return row


@dataclass
class PhoneReport:
    """What a run of phones measured (one tier, one device policy)."""

    tier: str
    policy: str
    network: str
    sla_ms: float
    requests: int
    failed: int
    attainment: float
    effective_accuracy: float
    accuracy_when_met: float
    e2e_p50_ms: float
    e2e_p99_ms: float
    mb_sent: float
    offloaded: float
    device_preprocessed: float
    backup: float
    learned_decisions: int
    fallbacks: dict[str, int] = field(default_factory=dict)
    answered_by: dict[str, int] = field(default_factory=dict)
    placements: dict[str, int] = field(default_factory=dict)


def summarize_phones(
    rows: Sequence[dict[str, Any]], tier: str, policy: str, network: str, sla_ms: float
) -> PhoneReport:
    """The :class:`PhoneReport` of a run's rows (effective accuracy: accuracy counting 0 for an
    answer outside the SLA, over every request)."""
    n = len(rows)
    met = [r for r in rows if r.get("met")]
    e2e = [r["e2e_ms"] for r in rows if "e2e_ms" in r]
    off = [r for r in rows if r["placement"] == "offload"]

    def share(k: int) -> float:
        return k / n if n else float("nan")

    return PhoneReport(
        tier=tier,
        policy=policy,
        network=network,
        sla_ms=sla_ms,
        requests=n,
        failed=sum(1 for r in rows if not r["ok"]),
        attainment=share(len(met)),
        effective_accuracy=float(sum(r["accuracy"] for r in met) / n) if n else float("nan"),
        accuracy_when_met=float(np.mean([r["accuracy"] for r in met])) if met else float("nan"),
        e2e_p50_ms=float(np.percentile(e2e, 50)) if e2e else float("nan"),
        e2e_p99_ms=float(np.percentile(e2e, 99)) if e2e else float("nan"),
        mb_sent=float(sum(r["bytes_sent"] for r in rows) / 1e6),
        offloaded=share(len(off)),
        device_preprocessed=share(sum(1 for r in off if r["prep"] == "device")),
        backup=share(sum(1 for r in off if r["backup"])),
        learned_decisions=sum(1 for r in rows if r["source"] == "learned"),
        fallbacks=dict(
            Counter(r["fallback_reason"].split(":")[0] for r in rows if r["fallback_reason"])
        ),
        answered_by=dict(Counter(r.get("answered_by", "none") for r in rows)),
        placements=dict(Counter(r["placement"] for r in rows).most_common()),
    )


async def run_phones(
    url: str,
    tier: str,
    policy: str,
    policy_path: str | Path | None,
    sla_ms: float,
    requests: int,
    phones: int,
    network: str = "link_wifi",
    images: str = "photos",
    seed: int = 0,
    transport: Any = None,
) -> tuple[PhoneReport, list[dict[str, Any]]]:
    """``phones`` closed-loop phones of ``tier`` deciding with ``policy`` until ``requests``
    are done; returns the report and one row per request."""
    import httpx

    from modi.experiments.client import NetworkReplay, digits, photos

    check_phone_args(tier, policy, policy_path)
    if requests < 1 or phones < 1 or not (sla_ms > 0 and np.isfinite(sla_ms)):
        raise PhoneError(
            f"need requests, phones >= 1 and sla_ms > 0, got {requests, phones, sla_ms}"
        )
    shots = photos(seed) if images == "photos" else digits(seed=seed)
    net = NetworkReplay(network, phones, seed)
    fleet = [Phone(tier, policy, policy_path, net, c, seed) for c in range(phones)]
    rng = np.random.default_rng([seed, 1])
    limits = httpx.Limits(max_connections=phones, max_keepalive_connections=phones)
    rows: list[dict[str, Any]] = []
    async with httpx.AsyncClient(timeout=60.0, limits=limits, transport=transport) as http:
        doc = (await http.get(f"{url}/v1/models")).json()
        hw = max((tuple(m["input"][1:]) for m in doc["models"]), key=lambda s: s[0] * s[1])
        todo = iter(range(requests))

        async def loop(phone: Phone) -> None:
            for _ in todo:
                shot = shots[int(rng.integers(len(shots)))]
                rows.append(await phone_request(http, url, phone, shot, sla_ms, hw))

        await asyncio.gather(*(loop(p) for p in fleet))
    return summarize_phones(rows, tier, policy, network, sla_ms), rows


async def compare_device_policies(
    url: str,
    policy_path: str | Path | None,
    sla_ms: float,
    requests: int,
    phones: int,
    network: str = "link_wifi",
    images: str = "photos",
    seed: int = 0,
    tiers: Sequence[str] = TIERS,
    policies: Sequence[str] = COMPARED_POLICIES,
    transport: Any = None,
) -> list[PhoneReport]:
    """Every tier x device policy on one network preset, one after the other against the same
    server, each on the same seeds (same images, same network draws per phone)."""
    for t in tiers:
        for p in policies:
            check_phone_args(t, p, policy_path)
    out = []
    for t in tiers:
        for p in policies:
            rep, _ = await run_phones(
                url, t, p, policy_path, sla_ms, requests, phones, network, images, seed, transport
            )
            out.append(rep)
    return out


def format_table(reports: Sequence[PhoneReport]) -> str:
    """A plain-text table of the reports (one line per tier x policy)."""
    head = (
        f"{'tier':<5} {'policy':<14} {'n':>4} {'attain':>7} {'eff_acc':>8} {'acc_met':>8} "
        f"{'p50_ms':>7} {'MB':>6} {'offload':>7} {'dev_prep':>8} {'backup':>6} fallbacks"
    )
    lines = [head]
    for r in reports:
        lines.append(
            f"{r.tier:<5} {r.policy:<14} {r.requests:>4} {r.attainment:>7.3f} "
            f"{r.effective_accuracy:>8.3f} {r.accuracy_when_met:>8.3f} {r.e2e_p50_ms:>7.1f} "
            f"{r.mb_sent:>6.2f} {r.offloaded:>7.2f} {r.device_preprocessed:>8.2f} "
            f"{r.backup:>6.2f} {sum(r.fallbacks.values())}"
        )
    return "\n".join(lines)


def reports_json(reports: Sequence[PhoneReport]) -> list[dict[str, Any]]:
    """The reports as JSON-ready dicts."""
    return [asdict(r) for r in reports]
