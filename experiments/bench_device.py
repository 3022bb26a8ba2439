"""Latency of the device runtime (:class:`modi.runtime.DeviceSelector`) at batch 1.

For the mid-range preset with a device policy of ``fit_scorer``'s default architecture
(:mod:`modi.agents.device_scorer`, hidden 64 x 64, exported by ``export_device_onnx``), over a
stream of varied captures with a network measurement folded in before every fourth one (not
timed), in one run:

* ``device_selector_p50_us`` / ``device_selector_p99_us``: one full
  :meth:`~modi.runtime.DeviceSelector.decide` (input checks, the request block, the option
  vectors, onnxruntime, the argmax and the decision object); ``device_selector_p99_us_min`` /
  ``_median`` / ``_max``: the p99 of each round;
* ``device_selector_before_*``: the previous implementation on the same stream: the checked
  path (numpy option builder, per-column request writes) on the 15-node graph of the earlier
  export (Sub/Div normalisation, MatMul + Add per layer);
* ``device_selector_tie_*``: the same policy exported with a tie tolerance (0.01, the largest of
  ``conf/env/offload.yaml``'s ``select.tie_tolerance`` grid): its graph appends the
  ε-lexicographic choice (least predicted energy among the near-best options);
* ``device_selector_shipped_*``: the policy ``modi-train env=offload`` ships by default: the
  hidden layers of ``conf/env/offload.yaml`` (``train.hidden``, 64 x 64) with a tie
  tolerance (0.01; the graph is the same for any tolerance > 0) and, where the
  ``select.anchor_margin`` grid has a margin, the anchor rule over ``select.anchors`` (the
  graph is the same for any margin: the largest graph validation can choose), with a setting
  per decision context where ``select.per_context`` is on (``device_selector_shipped_contexts``);
  ``device_selector_shipped_hidden`` says which layers were measured,
  ``device_selector_shipped_p99_us_min`` / ``_median`` / ``_max`` the p99 of each round;
* ``device_fallback_*``: the same call answered by the PieSlicer fallback (no model);
* ``device_onnxruntime_run_*``: the bare ``session.run`` of the same graph from a feed dict;
  ``device_onnxruntime_bound_run_*``: the IOBinding call ``decide`` makes (the floor under
  ``device_selector_*``).

``device_load_average``: the 1-minute load average at the end (the machine's state).

The kinds are interleaved in blocks (learned, tie, shipped, before, fallback, bare run, bound
run, learned, ...) so all see the same machine state; blocks are long (5,000 calls) because the
first calls after a switch run on cold caches (``modi.experiments.bench_runtime`` found it).
Target (issue 14): p99 <= 50 µs. Shared machines are noisy: compare with the references and
with the server selector's figures of the same ``modi-bench`` run (``device_vs_selector_p99``),
never across runs.
"""

from __future__ import annotations

import gc
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from numpy.typing import NDArray
from onnx import TensorProto, helper, numpy_helper

from modi.agents.device_scorer import (
    CONTEXTS,
    DeviceScorerPolicy,
    collect,
    device_spec,
    export_device_onnx,
    fit_scorer,
)
from modi.envs.catalog import load_preset
from modi.envs.offload import build_offload_sim
from modi.runtime import DeviceSelector
from modi.runtime import device_features as dfeat


def _policy(seed: int = 0, hidden: tuple[int, ...] = (64, 64)) -> DeviceScorerPolicy:
    """A device policy with these hidden layers, fitted on a small collection (its latency
    does not depend on how well it is trained)."""
    sim = build_offload_sim("mid", "link_wifi", num_envs=8, sla_range_ms=(150.0, 2500.0))
    data = collect([sim], 40, seed)
    net, _ = fit_scorer(data, hidden=hidden, epochs=1, seed=seed)
    x = data[0][0].reshape(-1, data[0][0].shape[-1])
    return DeviceScorerPolicy(net, 0.0, 0.0, x.min(axis=0), x.max(axis=0))


def _offload_conf() -> tuple[Path, Any]:
    """``conf/env/offload.yaml`` (the defaults of ``modi-train env=offload``) and its path."""
    from omegaconf import OmegaConf

    import modi.conf

    path = Path(modi.conf.__file__).parent / "env" / "offload.yaml"
    return path, OmegaConf.load(path)


def shipped_hidden() -> tuple[int, ...]:
    """The hidden layers ``modi-train env=offload`` trains by default (``conf/env/offload.yaml``,
    ``train.hidden``)."""
    path, conf = _offload_conf()
    hidden = conf.train.hidden
    if not hidden or not all(isinstance(h, int) and h > 0 for h in hidden):
        raise ValueError(f"{path}: train.hidden must be a list of positive ints, got {hidden}")
    return tuple(int(h) for h in hidden)


def shipped_anchor() -> tuple[float | None, tuple[str, ...]]:
    """The anchor rule of the largest graph ``modi-train env=offload`` can ship by default
    (``conf/env/offload.yaml``, ``select``): a margin (``None`` when the grid has none) and
    the anchors."""
    sel = _offload_conf()[1].select
    margins = [float(m) for m in (sel.get("anchor_margin") or []) if m is not None]
    return (max(margins) if margins else None), tuple(sel.get("anchors", ["offload"]))


def shipped_per_context() -> bool:
    """Whether ``modi-train env=offload`` ships a setting per decision context by default
    (``conf/env/offload.yaml``, ``select.per_context``)."""
    return bool(_offload_conf()[1].select.get("per_context", False))


def _policy_file(out: Path, seed: int = 0) -> Path:
    """The exported file of :func:`_policy` (``out/device.onnx``)."""
    return export_device_onnx(_policy(seed), out / "device.onnx")


def legacy_graph_file(exported: Path, policy: DeviceScorerPolicy, out: Path) -> Path:
    """The earlier export's 15-node graph of ``policy`` (Cast, Sub, Div, MatMul + Add per
    layer, Mul, Add, MatMul, Squeeze; float64 inside) with ``exported``'s metadata: the
    "before" reference."""
    net = policy.net
    inits: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []

    def const(name: str, arr: NDArray[Any]) -> None:
        inits.append(numpy_helper.from_array(np.asarray(arr, dtype=np.float64), name))

    nodes.append(helper.make_node("Cast", ["options"], ["xd"], to=TensorProto.DOUBLE))
    const("x_mean", net.x_mean.numpy())
    const("x_std", net.x_std.numpy())
    nodes.append(helper.make_node("Sub", ["xd", "x_mean"], ["xc"]))
    nodes.append(helper.make_node("Div", ["xc", "x_std"], ["h0"]))
    linears = [m for m in net.mlp if isinstance(m, torch.nn.Linear)]
    cur = "h0"
    for i, lin in enumerate(linears):
        const(f"w{i}", lin.weight.detach().numpy().T)
        const(f"b{i}", lin.bias.detach().numpy())
        nodes.append(helper.make_node("MatMul", [cur, f"w{i}"], [f"m{i}"]))
        out_name = f"a{i}" if i < len(linears) - 1 else "yn"
        nodes.append(helper.make_node("Add", [f"m{i}", f"b{i}"], [out_name]))
        if i < len(linears) - 1:
            nodes.append(helper.make_node("Relu", [out_name], [f"h{i + 1}"]))
            cur = f"h{i + 1}"
    const("y_std", net.y_std.numpy())
    const("y_mean", net.y_mean.numpy())
    nodes.append(helper.make_node("Mul", ["yn", "y_std"], ["ys"]))
    nodes.append(helper.make_node("Add", ["ys", "y_mean"], ["predictions"]))
    w = np.array([1.0, -policy.w_energy_per_j, -policy.w_bytes_per_mb])
    const("objective", w[:, None])
    nodes.append(helper.make_node("MatMul", ["predictions", "objective"], ["score_col"]))
    inits.append(numpy_helper.from_array(np.array([-1], dtype=np.int64), "last_axis"))
    nodes.append(helper.make_node("Squeeze", ["score_col", "last_axis"], ["scores"]))
    graph = helper.make_graph(
        nodes,
        "modi_device_scorer_legacy",
        [helper.make_tensor_value_info("options", TensorProto.FLOAT, ["N", "K", dfeat.F])],
        [
            helper.make_tensor_value_info("predictions", TensorProto.DOUBLE, ["N", "K", 3]),
            helper.make_tensor_value_info("scores", TensorProto.DOUBLE, ["N", "K"]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    props = {p.key: p.value for p in onnx.load(str(exported)).metadata_props}
    helper.set_metadata_props(model, props)
    path = out / "device_legacy.onnx"
    onnx.save(model, str(path))
    return path


def _stream(n: int, seed: int) -> tuple[list[float], ...]:
    rng = np.random.default_rng(seed)
    sla = rng.uniform(200.0, 2000.0, n)
    mp = rng.uniform(0.5, 12.0, n)
    raw = mp * rng.uniform(2e5, 4e5, n)
    lat = rng.uniform(5.0, 40.0, n)
    bw = rng.uniform(5.0, 100.0, n)
    t = 1000.0 * (np.arange(n) + 2.0)
    return tuple(a.tolist() for a in (t, sla, mp, raw, lat, bw))


def _decide_timer(
    decide: Callable[..., Any], sel: DeviceSelector, stream: tuple[list[float], ...]
) -> Callable[[int, int, NDArray[np.int64], int], None]:
    """Times ``decide`` on captures ``lo..hi`` of the stream (a measurement folded in before
    every fourth one, not timed) into ``out[j:]``."""
    t, sla, mp, raw, lat, bw = stream
    clock, record = time.perf_counter_ns, sel.record

    def run(lo: int, hi: int, out: NDArray[np.int64], j: int) -> None:
        for i in range(lo, hi):
            if i % 4 == 0:
                record(lat[i], bw[i], t[i] - 500.0)
            t0 = clock()
            decide(t[i], sla[i], mp[i], raw[i])
            out[j + i - lo] = clock() - t0

    return run


def _call_timer(call: Callable[[], Any]) -> Callable[[int, int, NDArray[np.int64], int], None]:
    clock = time.perf_counter_ns

    def run(lo: int, hi: int, out: NDArray[np.int64], j: int) -> None:
        for i in range(lo, hi):
            t0 = clock()
            call()
            out[j + i - lo] = clock() - t0

    return run


def _pct(ns: NDArray[np.int64]) -> tuple[float, float]:
    p50, p99 = np.percentile(ns / 1e3, [50, 99])
    return round(float(p50), 1), round(float(p99), 1)


def run_device_bench(
    n: int = 20_000, warmup: int = 2_000, seed: int = 0, rounds: int = 3, block: int = 5_000
) -> dict[str, Any]:
    """The device runtime's batch-1 latency figures (µs), see the module docstring: ``rounds``
    rounds of ``n`` captures per kind, interleaved in blocks of ``block``."""
    import onnxruntime as ort

    if min(n, rounds, block) < 1 or warmup < 0:
        raise ValueError(f"need n, rounds, block >= 1 and warmup >= 0, got {n, rounds, block}")
    spec = device_spec(load_preset("device", "mid"))
    stream = _stream(n, seed + 1)
    with tempfile.TemporaryDirectory() as tmp:
        policy = _policy(seed)
        path = export_device_onnx(policy, Path(tmp) / "device.onnx")
        legacy = legacy_graph_file(path, policy, Path(tmp))
        tie = policy.with_weights(policy.w_energy_per_j, policy.w_bytes_per_mb, tie_tolerance=0.01)
        tie_path = export_device_onnx(tie, Path(tmp) / "device_tie.onnx")
        hidden = shipped_hidden()
        margin, anchors = shipped_anchor()
        shipped = _policy(seed, hidden).with_weights(
            0.0, 0.0, tie_tolerance=0.01, anchor_margin=margin, anchors=anchors
        )
        per_context = shipped_per_context()
        if per_context:  # the per-context graph (the same for any settings)
            shipped = shipped.with_contexts({c: (0.0, 0.01, margin) for c in CONTEXTS})
        shipped_path = export_device_onnx(shipped, Path(tmp) / "device_shipped.onnx")
        sels = {
            "learned": DeviceSelector.load(path, spec),
            "tie": DeviceSelector.load(tie_path, spec),
            "shipped": DeviceSelector.load(shipped_path, spec),
            "before": DeviceSelector.load(legacy, spec),
            "fallback": DeviceSelector(spec, None),
        }
        for sel in sels.values():
            sel.start(20.0, 30.0, 0.0)
        for name in ("learned", "tie", "shipped", "before"):
            probe = sels[name].decide(1000.0, 500.0, 4.0, 1.5e6)
            if probe.source != "learned":
                raise RuntimeError(f"the {name} device policy fell back: {probe.reason}")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        bare = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        feeds = {"options": sels["learned"]._x.copy()}
        timers = {
            "learned": _decide_timer(sels["learned"].decide, sels["learned"], stream),
            "tie": _decide_timer(sels["tie"].decide, sels["tie"], stream),
            "shipped": _decide_timer(sels["shipped"].decide, sels["shipped"], stream),
            "before": _decide_timer(sels["before"]._decide_checked, sels["before"], stream),
            "fallback": _decide_timer(sels["fallback"].decide, sels["fallback"], stream),
            "run": _call_timer(lambda: bare.run(["scores"], feeds)),
            "bound": _call_timer(sels["learned"]._run_bound),
        }
        scratch = np.empty(max(warmup, 1), dtype=np.int64)
        for timer in timers.values():  # warm-up: allocator, caches, onnxruntime's first runs
            timer(0, min(warmup, n), scratch, 0)
        times = {k: np.empty(rounds * n, dtype=np.int64) for k in timers}
        gc.collect()
        j = 0
        for _ in range(rounds):
            for lo in range(0, n, block):
                hi = min(lo + block, n)
                for k, timer in timers.items():
                    timer(lo, hi, times[k], j)
                j += hi - lo
        same = sum(
            sels["learned"].decide(*a).action == sels["before"].decide(*a).action
            for a in zip(*stream[:4], strict=True)
        )
    p99_rounds = [_pct(times["learned"][r * n : (r + 1) * n])[1] for r in range(rounds)]
    res: dict[str, Any] = {}
    for key, kind in (
        ("device_selector", "learned"),
        ("device_selector_tie", "tie"),
        ("device_selector_shipped", "shipped"),
        ("device_selector_before", "before"),
        ("device_fallback", "fallback"),
        ("device_onnxruntime_run", "run"),
        ("device_onnxruntime_bound_run", "bound"),
    ):
        res[f"{key}_p50_us"], res[f"{key}_p99_us"] = _pct(times[kind])
    res["device_selector_p99_us_min"] = min(p99_rounds)
    res["device_selector_p99_us_median"] = statistics.median(p99_rounds)
    res["device_selector_p99_us_max"] = max(p99_rounds)
    shipped_rounds = [_pct(times["shipped"][r * n : (r + 1) * n])[1] for r in range(rounds)]
    res["device_selector_shipped_p99_us_min"] = min(shipped_rounds)
    res["device_selector_shipped_p99_us_median"] = statistics.median(shipped_rounds)
    res["device_selector_shipped_p99_us_max"] = max(shipped_rounds)
    res["device_selector_shipped_hidden"] = "x".join(str(h) for h in hidden)
    res["device_selector_shipped_anchors"] = "+".join(anchors) if margin is not None else "off"
    res["device_selector_shipped_contexts"] = "per_context" if per_context else "off"
    res["device_decisions_timed"] = rounds * n
    res["device_load_average"] = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else -1.0
    res["device_before_same_action"] = round(same / n, 4)
    return res


if __name__ == "__main__":  # pragma: no cover - manual runs
    print(json.dumps(run_device_bench(), indent=2))
