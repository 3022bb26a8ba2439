"""The device runtime's batch-1 path (issue 14): :meth:`OptionBuilder.pack` gives the
:func:`option_features` vectors bit for bit, :meth:`DeviceSelector.decide`'s fast path answers
like its checked path, and the folded export graph (:mod:`modi.agents.device_graph`) computes
the trained scorer's predictions."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import helper
from test_device_policy import _device, _sim

from modi.agents.device_graph import fold_layers, scorer_graph
from modi.agents.device_scorer import (
    DeviceScorerPolicy,
    collect,
    device_spec,
    export_device_onnx,
    fit_scorer,
)
from modi.runtime import DeviceSelector
from modi.runtime import device_features as dfeat


@pytest.fixture(scope="module")
def policy_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[DeviceScorerPolicy, Path]:
    sim = _sim(8)
    data = collect([sim], 30, seed=1)
    net, _ = fit_scorer(data, hidden=(16, 16), epochs=1, seed=1)
    x = data[0][0].reshape(-1, dfeat.F)
    pol = DeviceScorerPolicy(net, 0.2, 0.1, x.min(axis=0), x.max(axis=0))
    return pol, export_device_onnx(pol, tmp_path_factory.mktemp("fast") / "device.onnx")


def test_pack_writes_the_option_features_bit_for_bit() -> None:
    """On env observations (1 and 4 on-device models, models loaded and unloaded, every action
    kind): the scalar path writes exactly :func:`option_features`' float32 vectors."""
    for models in (1, 4):
        sim = _sim(4, models)
        obs = sim.reset(21)
        rng = np.random.default_rng(3)
        for _ in range(120):
            x = dfeat.option_features(obs)
            for i in range(4):
                builder = dfeat.OptionBuilder(obs[i, dfeat.R :].reshape(models, dfeat.P))
                out = np.full((1, *x.shape[1:]), np.nan, dtype=np.float32)
                builder.pack(out, obs[i, : dfeat.R].tolist())
                np.testing.assert_array_equal(out[0], x[i])
            sim.step(rng.integers(0, sim.action_nvec, size=(4, 3)))
            obs = sim.obs


def test_pack_refuses_values_beyond_float32() -> None:
    sim = _sim(1, 3)
    obs = sim.reset(0)
    builder = dfeat.OptionBuilder(obs[0, dfeat.R :].reshape(3, dfeat.P))
    out = np.zeros((1, 7, dfeat.F), dtype=np.float32)
    req = obs[0, : dfeat.R].tolist()
    req[dfeat.RAW_KB] = 3e38  # its upload time at 1 kbit/s is beyond float32
    req[dfeat.NET_UPLINK_LAST] = 1e-3
    with pytest.raises(OverflowError):
        builder.pack(out, req)


def test_fast_decisions_equal_the_checked_path(
    policy_file: tuple[DeviceScorerPolicy, Path],
) -> None:
    """The fast path and the fully checked path (numpy option builder, run()) agree on the
    action and the scores, across captures, network measurements and model loads."""
    _, path = policy_file
    spec = device_spec(_device(3))
    sel = DeviceSelector.load(path, spec)
    sel.start(20.0, 10.0, 0.0)
    rng = np.random.default_rng(5)
    t = 0.0
    for i in range(400):
        t += float(rng.uniform(100.0, 2000.0))
        if i % 3 == 0:
            sel.record(float(rng.uniform(2, 80)), float(rng.uniform(0.5, 200)), t - 50.0)
        if i % 50 == 0:
            sel.set_loaded(spec.models[i % 3].model_id, bool(i % 100))
        args = (t, float(rng.uniform(80, 3000)), float(rng.uniform(0.1, 16)), 0.0)
        args = (*args[:3], args[2] * float(rng.uniform(1e5, 5e5)))
        fast = sel.decide(*args)
        checked = sel._decide_checked(*args)
        assert fast.source == "learned" and checked.source == "learned"
        assert fast.action == checked.action and fast.scores == checked.scores


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        ((1000.0, math.nan, 4.0, 1.5e6), "non-finite"),
        ((1000.0, 500.0, math.inf, 1.5e6), "non-finite"),
        ((1000.0, 500.0, 4.0, -1.0), "must be > 0"),
        ((1000.0, 500.0, 4.0, 1e45), "float32"),
        ((1000.0, None, 4.0, 1.5e6), "non-finite"),
    ],
)
def test_fast_path_leaves_bad_requests_to_the_checked_path(
    policy_file: tuple[DeviceScorerPolicy, Path], args: tuple[float, ...], fragment: str
) -> None:
    _, path = policy_file
    sel = DeviceSelector.load(path, device_spec(_device(3)))
    sel.start(20.0, 10.0, 0.0)
    d = sel.decide(*args)
    assert d.source == "fallback" and fragment in d.reason, d
    assert d.placement == "offload" and not d.backup


def test_folded_graph_computes_the_scorer(policy_file: tuple[DeviceScorerPolicy, Path]) -> None:
    """The exported graph's predictions and scores are the trained scorer's (float64), and
    the folding itself is exact algebra (checked against the unfolded formula)."""
    pol, path = policy_file
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    sim = _sim(16)
    obs = sim.reset(2)
    x = dfeat.option_features(obs)
    pred, scores = sess.run(["predictions", "scores"], {"options": x})
    np.testing.assert_allclose(pred, pol.predict(x), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(scores, pol.scores(obs), rtol=1e-9, atol=1e-9)
    assert scores.dtype == np.float64 and scores.shape == x.shape[:2]
    net = pol.net
    lin = [m for m in net.mlp if isinstance(m, torch.nn.Linear)]
    w = [m.weight.detach().numpy().T for m in lin]
    b = [m.bias.detach().numpy() for m in lin]
    wf, bf = fold_layers(w, b, net.x_mean.numpy(), net.x_std.numpy(),
                         net.y_mean.numpy(), net.y_std.numpy())  # fmt: skip
    h = x.reshape(-1, dfeat.F).astype(np.float64)
    for i, (wi, bi) in enumerate(zip(wf, bf, strict=True)):
        h = h @ wi + bi
        if i < len(wf) - 1:
            h = np.maximum(h, 0.0)
    np.testing.assert_allclose(h.reshape(pred.shape), pred, rtol=1e-12, atol=1e-12)
    nodes = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert nodes.count("Gemm") == len(lin) and "Sub" not in nodes and "Div" not in nodes


def test_scorer_graph_checks_its_shapes() -> None:
    w = [np.zeros((dfeat.F + 1, 4)), np.zeros((4, 3))]
    b = [np.zeros(4), np.zeros(3)]
    z = np.zeros(dfeat.F + 1)
    with pytest.raises(ValueError, match="features"):
        scorer_graph(w, b, z, z + 1, np.zeros(3), np.ones(3), np.ones(3))
    with pytest.raises(ValueError, match="as many weights"):
        scorer_graph(w, b[:1], z, z + 1, np.zeros(3), np.ones(3), np.ones(3))
    g = scorer_graph(
        [np.ones((dfeat.F, 2)), np.ones((2, 3))],
        [np.zeros(2), np.zeros(3)],
        np.zeros(dfeat.F),
        np.ones(dfeat.F),
        np.zeros(3),
        np.ones(3),
        np.array([1.0, -0.5, 0.0]),
    )
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.ones((2, 5, dfeat.F), dtype=np.float32)
    pred, scores = sess.run(None, {"options": x})
    assert pred.shape == (2, 5, 3) and scores.shape == (2, 5)
    np.testing.assert_allclose(scores, dfeat.F)  # each prediction 2F; score 2F - 0.5 x 2F


def test_device_bench_times_the_references_and_decides_like_before() -> None:
    """A small run of the device benchmark: every reference present, and the new path (fast
    decide, folded graph) takes the same action as the previous one on every capture."""
    from modi.experiments.bench_device import run_device_bench, shipped_hidden

    res = run_device_bench(n=400, warmup=50, rounds=2, block=100)
    kinds = ("device_selector", "device_selector_tie", "device_selector_shipped",
             "device_selector_before", "device_fallback", "device_onnxruntime_run",
             "device_onnxruntime_bound_run")  # fmt: skip
    for kind in kinds:
        assert 0 < res[f"{kind}_p50_us"] <= res[f"{kind}_p99_us"], kind
    for kind in ("device_selector", "device_selector_shipped"):
        assert res[f"{kind}_p99_us_min"] <= res[f"{kind}_p99_us_median"]
        assert res[f"{kind}_p99_us_median"] <= res[f"{kind}_p99_us_max"]
    # the shipped figures measure the layers modi-train env=offload trains by default
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="modi.conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=["env=offload"])
    assert list(shipped_hidden()) == list(cfg.env.train.hidden)
    assert res["device_selector_shipped_hidden"] == "x".join(map(str, cfg.env.train.hidden))
    # ... and its choice rule: the anchor rule where the default grid has a margin
    margins = [m for m in cfg.env.select.anchor_margin if m is not None]
    anchors = "+".join(cfg.env.select.anchors) if margins else "off"
    assert res["device_selector_shipped_anchors"] == anchors
    per_context = "per_context" if cfg.env.select.get("per_context", False) else "off"
    assert res["device_selector_shipped_contexts"] == per_context
    assert res["device_decisions_timed"] == 800
    assert res["device_before_same_action"] == 1.0


def test_pack_refuses_a_buffer_of_another_size() -> None:
    """A buffer that does not hold exactly the K options' F features is refused (nothing is
    written past it)."""
    sim = _sim(1, 3)
    obs = sim.reset(0)
    builder = dfeat.OptionBuilder(obs[0, dfeat.R :].reshape(3, dfeat.P))
    req = obs[0, : dfeat.R].tolist()
    for k in (6, 8):
        with pytest.raises(ValueError, match="expected"):
            builder.pack(np.zeros((1, k, dfeat.F), dtype=np.float32), req)
    out = np.zeros((1, 7, dfeat.F), dtype=np.float32)
    builder.pack(out, req)
    np.testing.assert_array_equal(out[0], dfeat.option_features(obs[:1])[0])


def test_scalar_fold_is_the_env_fold_bit_for_bit() -> None:
    """The phone's history update (Python floats) gives the env's numpy values exactly."""
    rng = np.random.default_rng(11)
    for _ in range(2000):
        lat_m, bw_m, var, lat, bw = (float(v) for v in rng.exponential(30.0, 5))
        alpha = float(rng.uniform(0.05, 0.95))
        got = dfeat.fold_measurement_scalar(lat_m, bw_m, var, lat, bw, alpha)
        ref = dfeat.fold_measurement(lat_m, bw_m, var, lat, bw, alpha)
        assert all(type(v) is float for v in got)
        assert [v.hex() for v in got] == [float(v).hex() for v in ref]


def _agreement(
    pol: DeviceScorerPolicy, served: Any, sim: Any, obs: np.ndarray, steps: int
) -> tuple[int, int, np.ndarray]:
    """Step ``sim`` with ``pol``'s actions; how many of ``served``'s equal them, of how many,
    and the last observation."""
    same = total = 0
    for _ in range(steps):
        a = pol.select(obs)
        b = served.select(obs)
        same += int((a == b).all(axis=1).sum())
        total += len(a)
        sim.step(a)
        obs = sim.obs
    return same, total, obs


@pytest.mark.parametrize(
    ("tie_tolerance", "anchor_margin"), [(0.0, None), (0.01, None), (0.01, 0.05), (0.0, 0.02)]
)
def test_selector_decides_like_the_trained_policy_on_10000_env_observations(
    policy_file: tuple[DeviceScorerPolicy, Path],
    tmp_path: Path,
    tie_tolerance: float,
    anchor_margin: float | None,
) -> None:
    """Parity through the runtime: every decision of :class:`DeviceSelector` (its fast path:
    packed option vectors, bound onnxruntime call, the decision's precomputed fields), with the
    device's state of each observation, is the trained policy's, with and without the tie
    choice and the anchor rule in the graph; none falls back."""
    from modi.agents.device_scorer import ServedDevicePolicy

    base, _ = policy_file
    pol = base.with_weights(
        base.w_energy_per_j, base.w_bytes_per_mb, tie_tolerance, anchor_margin=anchor_margin
    )
    path = export_device_onnx(pol, tmp_path / "device.onnx")
    served = ServedDevicePolicy(path, device_spec(_device(3)))
    assert served.selector._run_bound is not None  # the bound onnxruntime call is in use
    sim = _sim(50)
    same, total, _ = _agreement(pol, served, sim, sim.reset(13), 200)
    assert total == 10_000
    assert served.selector._fast  # the decisions took the batch-1 fast path
    assert served.fallbacks == 0, served.reasons
    assert same == total


def test_a_file_with_other_dimension_names_decides_the_same(
    policy_file: tuple[DeviceScorerPolicy, Path], tmp_path: Path
) -> None:
    """The selector fixes the export's free dimensions (N = 1, K) for speed; a file whose
    input names them otherwise runs as it is, with the same decisions."""
    _, path = policy_file
    model = onnx.load(str(path))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[0].dim_param, dims[1].dim_param = "batch", "options"
    other = tmp_path / "renamed.onnx"
    onnx.save(model, str(other))
    spec = device_spec(_device(3))
    a, b = DeviceSelector.load(path, spec), DeviceSelector.load(other, spec)
    for sel in (a, b):
        sel.start(20.0, 10.0, 0.0)
    assert b._run_bound is not None
    rng = np.random.default_rng(2)
    for i in range(300):
        args = (1e3 * (i + 1), *rng.uniform((150.0, 0.5, 1e5), (2500.0, 12.0, 4e6)).tolist())
        da, db = a.decide(*args), b.decide(*args)
        assert da.source == db.source == "learned"
        assert da.action == db.action and da.scores == db.scores


#: A setting per decision context that exercises every branch of the per-context graph.
_CONTEXT_TABLE = {
    "low/wifi": (0.0, 0.0, None),
    "low/cellular": (0.01, 0.01, 0.05),
    "mid/wifi": (0.1, 0.003, None),
    "mid/cellular": (0.0, 0.0, 0.02),
    "high/wifi": (0.03, 0.01, 0.1),
    "high/cellular": (1.0, 0.0, None),
}


@pytest.mark.parametrize(("tier", "radio"), [("low", "wifi"), ("mid", "lte"), ("high", "3g")])
def test_per_context_policy_decides_like_its_onnx_through_the_selector(
    policy_file: tuple[DeviceScorerPolicy, Path], tmp_path: Path, tier: str, radio: str
) -> None:
    """A setting per decision context (tier × radio class): the exported graph picks each
    decision's setting from its option vectors as the trained policy does, through the
    runtime's fast path (2,000 env observations of a device of that tier on that radio)."""
    from modi.agents.device_scorer import ServedDevicePolicy, option_contexts

    base, _ = policy_file
    pol = base.with_contexts(_CONTEXT_TABLE)
    path = export_device_onnx(pol, tmp_path / "device.onnx")
    device = _device(3, tier=tier)
    served = ServedDevicePolicy(path, device_spec(device))
    sim = _sim(20, tier=tier, radio=radio)
    obs = sim.reset(5)
    want = ("low", "mid", "high").index(tier) * 2 + (radio != "wifi")
    assert (option_contexts(dfeat.option_features(obs)) == want).all()
    same, total, obs = _agreement(pol, served, sim, obs, 100)
    assert served.fallbacks == 0, served.reasons
    assert same == total == 2_000
    # ... and in that context it is the policy of that context's setting alone
    w, t, m = _CONTEXT_TABLE[
        ("low", "mid", "high")[want // 2] + "/" + ("wifi", "cellular")[want % 2]
    ]
    alone = base.with_weights(w, tie_tolerance=t, anchor_margin=m)
    np.testing.assert_array_equal(pol.scores(obs), alone.scores(obs))


def test_per_context_settings_are_checked_and_saved(
    policy_file: tuple[DeviceScorerPolicy, Path], tmp_path: Path
) -> None:
    """A missing context or a bad value is refused naming it; the settings survive save/load
    and are named in the export's metadata; ``with_weights`` drops them (one setting)."""
    import json

    from modi.agents.device_scorer import DeviceScorerError
    from modi.runtime.device_meta import PREFIX

    base, _ = policy_file
    with pytest.raises(DeviceScorerError, match="contexts: expected a setting for each"):
        base.with_contexts({"low/wifi": (0.0, 0.0, None)})
    with pytest.raises(DeviceScorerError, match="tie_tolerance"):
        base.with_contexts(_CONTEXT_TABLE | {"mid/wifi": (0.0, -1.0, None)})
    with pytest.raises(DeviceScorerError, match=r"contexts\['high/wifi'\]"):
        short: Any = (0.0, 0.0)  # a setting without its anchor margin
        base.with_contexts(_CONTEXT_TABLE | {"high/wifi": short})
    numpy_weight = base.with_contexts(_CONTEXT_TABLE | {"mid/wifi": (np.float32(0.5), 0.0, None)})
    assert numpy_weight.contexts is not None and numpy_weight.contexts["mid/wifi"][0] == 0.5
    pol = base.with_contexts(_CONTEXT_TABLE)
    again = DeviceScorerPolicy.load(pol.save(tmp_path / "p.pt"))
    assert again.contexts == pol.contexts
    assert pol.with_weights(0.01).contexts is None
    path = export_device_onnx(pol, tmp_path / "device.onnx")
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    saved = json.loads(props[PREFIX + "trained_on"])["contexts"]
    assert {k: tuple(v) for k, v in saved.items()} == pol.contexts


def test_per_context_file_takes_the_radio_s_setting_and_runs_alone_with_its_fallback(
    policy_file: tuple[DeviceScorerPolicy, Path], tmp_path: Path
) -> None:
    """A per-context file carries its setting in graph inputs: the selector feeds its context's
    (switching with the radio, on one session), and a bare onnxruntime session runs the file's
    own one setting; the graph has one node more than a one-setting graph with both rules."""
    base, _ = policy_file
    pol = base.with_weights(0.01, tie_tolerance=0.003, anchor_margin=0.05).with_contexts(
        _CONTEXT_TABLE
    )
    path = export_device_onnx(pol, tmp_path / "device.onnx")
    one = export_device_onnx(
        base.with_weights(0.01, tie_tolerance=0.003, anchor_margin=0.05), tmp_path / "one.onnx"
    )
    assert len(onnx.load(str(path)).graph.node) == len(onnx.load(str(one)).graph.node) + 1
    sim = _sim(20, tier="mid", radio="lte")
    obs = sim.reset(7)
    options = dfeat.option_features(obs)
    bare = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(
        bare.run(["scores"], {"options": options})[0],
        ort.InferenceSession(str(one), providers=["CPUExecutionProvider"]).run(
            ["scores"], {"options": options}
        )[0],
    )
    spec = device_spec(_device(3, tier="mid"))
    sel = DeviceSelector.load(path, spec, radio="lte")
    assert sel.load_error is None and sel.context == "mid/cellular"
    sel.start(40.0, 8.0, 0.0)
    args = (900.0, 800.0, 3.0, 1.2e6)
    for radio, key in (("lte", "mid/cellular"), ("wifi", "mid/wifi"), ("3g", "mid/cellular")):
        sel.set_radio(radio)
        assert sel.context == key
        w, t, m = _CONTEXT_TABLE[key]
        alone = export_device_onnx(
            base.with_weights(w, tie_tolerance=t, anchor_margin=m), tmp_path / "alone.onnx"
        )
        ref = DeviceSelector.load(alone, spec, radio=radio)
        ref.start(40.0, 8.0, 0.0)
        got, want = sel.decide(*args), ref.decide(*args)
        assert got.source == want.source == "learned"
        assert got.action == want.action
        np.testing.assert_allclose(got.scores, want.scores, rtol=0, atol=1e-9)
    assert DeviceSelector.load(one, spec).context is None


def test_per_context_metadata_without_setting_inputs_or_malformed_falls_back(
    policy_file: tuple[DeviceScorerPolicy, Path], tmp_path: Path
) -> None:
    """A file whose metadata names contexts its graph cannot take (no setting inputs), or
    whose contexts are malformed, is not loaded: the selector falls back and says why."""
    import json

    from modi.runtime.device_meta import PREFIX

    base, one = policy_file
    spec = device_spec(_device(3))
    model = onnx.load(str(one))
    helper.set_metadata_props(
        model,
        {p.key: p.value for p in model.metadata_props}
        | {PREFIX + "contexts": json.dumps({k: list(v) for k, v in _CONTEXT_TABLE.items()})},
    )
    pasted = tmp_path / "pasted.onnx"
    onnx.save(model, str(pasted))
    sel = DeviceSelector.load(pasted, spec)
    assert sel.load_error is not None and "no setting inputs" in sel.load_error
    sel.start(20.0, 10.0, 0.0)
    d = sel.decide(1000.0, 500.0, 4.0, 1.5e6)
    assert d.source == "fallback" and "no setting inputs" in d.reason
    ctx = export_device_onnx(base.with_contexts(_CONTEXT_TABLE), tmp_path / "ctx.onnx")
    huge = "1" + "0" * 400  # an integer beyond float's range, as JSON may hold it
    good = json.dumps({k: list(v) for k, v in _CONTEXT_TABLE.items()})
    for key, value, match in (
        ("contexts", json.dumps({"low/wifi": [0.0, 0.0, None]}), "expected a setting for each"),
        ("contexts", json.dumps({k: [0.0, -1.0, None] for k in _CONTEXT_TABLE}), "tie_tolerance"),
        ("contexts", good.replace("[0.0, 0.0, null]", f"[{huge}, 0.0, null]", 1), "w_energy_"),
        ("metadata_version", "3", "metadata_version is 3; this runtime reads 1 to 2"),
        ("metadata_version", "1", "contexts needs metadata_version >= 2"),
    ):
        model = onnx.load(str(ctx))
        helper.set_metadata_props(
            model, {p.key: p.value for p in model.metadata_props} | {PREFIX + key: value}
        )
        onnx.save(model, str(tmp_path / "bad.onnx"))
        sel = DeviceSelector.load(tmp_path / "bad.onnx", spec)
        assert sel.load_error is not None and match in sel.load_error, (key, value[:60])


def test_per_context_selector_after_a_bad_radio_decides_with_the_new_radio_s_setting(
    policy_file: tuple[DeviceScorerPolicy, Path], tmp_path: Path
) -> None:
    """An invalid radio makes the selector fall back; a valid one after it binds that radio's
    context, and the fast and the checked paths give the same scores."""
    base, _ = policy_file
    path = export_device_onnx(base.with_contexts(_CONTEXT_TABLE), tmp_path / "device.onnx")
    spec = device_spec(_device(3, tier="high"))
    sel = DeviceSelector.load(path, spec, radio="bogus")
    sel.start(30.0, 12.0, 0.0)
    args = (700.0, 500.0, 2.0, 8e5)
    assert sel.decide(*args).source == "fallback"
    for radio, key in (("3g", "high/cellular"), (float("nan"), None), ("wifi", "high/wifi")):
        sel.set_radio(radio)
        if key is None:
            assert sel.decide(*args).source == "fallback"
            continue
        assert sel.context == key
        w, t, m = _CONTEXT_TABLE[key]
        alone = DeviceSelector.load(
            export_device_onnx(
                base.with_weights(w, tie_tolerance=t, anchor_margin=m), tmp_path / "a.onnx"
            ),
            spec,
            radio=radio,
        )
        alone.start(30.0, 12.0, 0.0)
        fast, checked, want = sel.decide(*args), sel._decide_checked(*args), alone.decide(*args)
        assert fast.source == checked.source == want.source == "learned"
        assert fast.scores == checked.scores
        np.testing.assert_allclose(fast.scores, want.scores, rtol=0, atol=1e-9)
