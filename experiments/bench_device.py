"""Latency of the device runtime (:class:`modi.runtime.DeviceSelector`) at batch 1.

* ``device_selector_p50_us`` / ``device_selector_p99_us``: one full
  :meth:`~modi.runtime.DeviceSelector.decide` (input checks, the request block, the option
  vectors, onnxruntime, the argmax and the decision object) for the mid-range preset with a
  device policy of the default architecture (:mod:`modi.agents.device_scorer`, hidden 64 x 64),
  over a stream of varied captures with a network measurement folded in every fourth one;
* ``device_fallback_p99_us``: the same call answered by the PieSlicer fallback (no model).

Target (issue 14): p99 <= 50 µs. Shared machines are noisy: compare with the server selector's
figures of the same ``modi-bench`` run (``device_vs_selector_p99``).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from modi.agents.device_scorer import (
    DeviceScorerPolicy,
    collect,
    device_spec,
    export_device_onnx,
    fit_scorer,
)
from modi.envs.catalog import load_preset
from modi.envs.offload import build_offload_sim
from modi.runtime import DeviceSelector


def _policy_file(out: Path, seed: int = 0) -> Path:
    """A device policy of the default architecture, fitted on a small collection (its
    latency does not depend on how well it is trained)."""
    sim = build_offload_sim("mid", "link_wifi", num_envs=8, sla_range_ms=(150.0, 2500.0))
    data = collect([sim], 40, seed)
    net, _ = fit_scorer(data, hidden=(64, 64), epochs=1, seed=seed)
    x = data[0][0].reshape(-1, data[0][0].shape[-1])
    lo, hi = x.min(axis=0), x.max(axis=0)
    return export_device_onnx(DeviceScorerPolicy(net, 0.0, 0.0, lo, hi), out / "device.onnx")


def _time(sel: DeviceSelector, n: int, seed: int) -> np.ndarray[Any, Any]:
    rng = np.random.default_rng(seed)
    sla = rng.uniform(200.0, 2000.0, n).tolist()
    mp = rng.uniform(0.5, 12.0, n).tolist()
    raw = (np.asarray(mp) * rng.uniform(2e5, 4e5, n)).tolist()
    lat = rng.uniform(5.0, 40.0, n).tolist()
    bw = rng.uniform(5.0, 100.0, n).tolist()
    out = np.empty(n, dtype=np.int64)
    clock = time.perf_counter_ns
    t = 1000.0
    for i in range(n):
        t += 1000.0
        if i % 4 == 0:
            sel.record(lat[i], bw[i], t - 500.0)
        t0 = clock()
        sel.decide(t, sla[i], mp[i], raw[i])
        out[i] = clock() - t0
    return out


def run_device_bench(n: int = 20_000, warmup: int = 2_000, seed: int = 0) -> dict[str, float]:
    """The device runtime's batch-1 latency figures (µs)."""
    spec = device_spec(load_preset("device", "mid"))
    with tempfile.TemporaryDirectory() as tmp:
        path = _policy_file(Path(tmp), seed)
        sel = DeviceSelector.load(path, spec)
        sel.start(20.0, 30.0, 0.0)
        probe = sel.decide(1000.0, 500.0, 4.0, 1.5e6)
        if probe.source != "learned":
            raise RuntimeError(f"the benchmark's device policy fell back: {probe.reason}")
        _time(sel, warmup, seed)
        t_sel = _time(sel, n, seed + 1) / 1e3
    fb = DeviceSelector(spec, None)
    fb.start(20.0, 30.0, 0.0)
    _time(fb, warmup, seed)
    t_fb = _time(fb, n, seed + 1) / 1e3
    p50, p99 = np.percentile(t_sel, [50, 99])
    f50, f99 = np.percentile(t_fb, [50, 99])
    return {
        "device_selector_p50_us": round(float(p50), 1),
        "device_selector_p99_us": round(float(p99), 1),
        "device_fallback_p50_us": round(float(f50), 1),
        "device_fallback_p99_us": round(float(f99), 1),
    }
