"""Bad input to the device runtime (issue 14): :class:`modi.runtime.DeviceSelector` never raises
and answers with the PieSlicer fallback and its reason for a policy file of another schema or
on-device pool, an unknown tier, and NaN / inf / negative phone measurements; and it works in an
install without extras."""

from __future__ import annotations

import json
import math
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from modi.agents.device_scorer import DeviceScorerPolicy, collect, export_device_onnx, fit_scorer
from modi.envs.catalog import load_preset
from modi.envs.offload import build_offload_sim
from modi.experiments.phone import device_spec
from modi.runtime import DeviceSelector
from modi.runtime import device_features as dfeat
from modi.runtime.device_meta import PREFIX
from modi.runtime.device_selector import DeviceModel, DeviceSpec

ARGS = (5000.0, 600.0, 4.0, 1.5e6)


@pytest.fixture(scope="module")
def policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    sim = build_offload_sim("mid", "link_wifi", num_envs=8, sla_range_ms=(150.0, 2500.0))
    data = collect([sim], 30, seed=2)
    net, _ = fit_scorer(data, hidden=(16, 16), epochs=1, seed=2)
    x = data[0][0].reshape(-1, dfeat.F)
    pol = DeviceScorerPolicy(net, 0.0, 0.0, x.min(axis=0), x.max(axis=0))
    return export_device_onnx(pol, tmp_path_factory.mktemp("bad") / "device_policy.onnx")


def _mid() -> DeviceSpec:
    return device_spec(load_preset("device", "mid"))


def _sel(path: Path | None, spec: DeviceSpec | None = None) -> DeviceSelector:
    sel = DeviceSelector.load(path, spec or _mid()) if path else DeviceSelector(spec or _mid())
    sel.start(20.0, 30.0, 0.0)
    return sel


def _falls_back(sel: DeviceSelector, fragment: str, args: tuple[Any, ...] = ARGS) -> str:
    d = sel.decide(*args)
    assert d.source == "fallback" and fragment in d.reason, d
    assert d.placement == "offload" and not d.backup and d.prep in ("device", "server")
    assert d.action[1] == len(sel.spec.models)  # the offload option
    return d.reason


def _edited(path: Path, out: Path, **props: str) -> Path:
    m = onnx.load(str(path))
    for p in m.metadata_props:
        if p.key[len(PREFIX) :] in props:
            p.value = props[p.key[len(PREFIX) :]]
    onnx.save(m, str(out))
    return out


def test_the_policy_decides_when_everything_is_right(policy: Path) -> None:
    assert _sel(policy).decide(*ARGS).source == "learned"


@pytest.mark.parametrize(
    ("props", "named"),
    [
        ({"device_schema": "modi.other_device"}, "device_schema"),
        ({"device_schema_version": str(dfeat.SCHEMA_VERSION + 1)}, "device_schema"),
        ({"option_schema_version": "99"}, "option_schema"),
        ({"option_features": json.dumps(["sla_s"] * dfeat.F)}, "option_schema"),
        ({"feature_min": "[0.0, 1.0]"}, "feature_min"),
        ({"w_energy_per_j": "lots"}, "malformed"),
    ],
)
def test_a_file_for_another_device_schema_falls_back_naming_the_key(
    policy: Path, tmp_path: Path, props: dict[str, str], named: str
) -> None:
    sel = _sel(_edited(policy, tmp_path / "other.onnx", **props))
    assert sel.load_error is not None and named in sel.load_error
    _falls_back(sel, "no learned model")


def test_a_server_selector_file_is_not_a_device_policy(tmp_path: Path) -> None:
    from modi.agents.bandits import LinUCB
    from modi.agents.export import export_onnx

    path = export_onnx(LinUCB(), tmp_path / "server_selector.onnx")
    sel = _sel(path)
    assert sel.load_error is not None and "modi.device." in sel.load_error
    _falls_back(sel, "no learned model")


def test_missing_corrupt_and_empty_files_fall_back(tmp_path: Path) -> None:
    (tmp_path / "corrupt.onnx").write_bytes(b"\x08\x01garbage")
    (tmp_path / "empty.onnx").write_bytes(b"")
    for name in ("missing.onnx", "corrupt.onnx", "empty.onnx"):
        _falls_back(_sel(tmp_path / name), "no learned model")


def test_another_on_device_pool_outside_the_training_range_falls_back(policy: Path) -> None:
    spec = _mid()
    # a much slower pool (another device): its option columns leave the training range
    slow = tuple(DeviceModel(m.model_id, m.accuracy, 20 * m.mean_ms, m.std_ms, 20 * m.load_ms)
                 for m in spec.models)  # fmt: skip
    other = DeviceSpec("mid", slow, spec.backup, spec.prep_intercept_ms, spec.prep_ms_per_mp)
    reason = _falls_back(_sel(policy, other), "out of range")
    assert "model_mu_s" in reason or "model_load_s" in reason
    # another number of models, each inside the range: the pool-agnostic scorer decides
    backup = next(m for m in spec.models if m.model_id == spec.backup)
    others = [m for m in spec.models if m.model_id != spec.backup][:2]
    fewer = DeviceSpec("mid", (backup, *others), spec.backup, spec.prep_intercept_ms,
                       spec.prep_ms_per_mp)  # fmt: skip
    d = _sel(policy, fewer).decide(*ARGS)
    assert d.source == "learned" and len(d.scores) == dfeat.num_options(3)


@pytest.mark.parametrize("tier", ["flagship", "", "MID"])
def test_an_unknown_tier_falls_back(policy: Path, tier: str) -> None:
    spec = _mid()
    sel = _sel(policy, DeviceSpec(tier, spec.models, spec.backup, 15.0, 36.0))
    _falls_back(sel, f"unknown device tier {tier!r}")


@pytest.mark.parametrize(
    "models",
    [
        (),
        (DeviceModel("m", 1.5, 10.0, 1.0, 5.0),),
        (DeviceModel("m", 0.5, math.nan, 1.0, 5.0),),
        (DeviceModel("m", 0.5, 10.0, -1.0, 5.0),),
    ],
)
def test_a_bad_device_spec_falls_back(policy: Path, models: tuple[DeviceModel, ...]) -> None:
    spec = DeviceSpec("mid", models, models[0].model_id if models else "m", 15.0, 36.0)
    _falls_back(_sel(policy, spec), "invalid device")


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, -1.0, None, "fast"])
def test_bad_history_values_fall_back_until_a_valid_measurement(policy: Path, bad: Any) -> None:
    """A restored history (or start-up probe) with a NaN / inf / negative / non-numeric value:
    every decision falls back with the history in the reason; a valid measurement restarts it."""
    sel = _sel(policy)
    for pos in range(4):  # latency, uplink, its variance, newest uplink
        vals: list[Any] = [20.0, 30.0, 4.0, 30.0, 100.0]
        vals[pos] = bad
        sel.set_history(*vals)
        _falls_back(sel, "invalid input: network history")
    sel.start(bad, 30.0, 0.0)
    _falls_back(sel, "invalid input: network history")
    assert sel.record(25.0, 12.0, 4000.0)
    assert sel.decide(*ARGS).source == "learned"


@pytest.mark.parametrize(
    "measurement",
    [(math.nan, 10.0), (10.0, math.nan), (math.inf, 10.0), (10.0, math.inf), (-1.0, 10.0),
     (10.0, -0.5), (None, 10.0), ("x", 10.0)],
)  # fmt: skip
def test_a_bad_measurement_never_reaches_a_decision(policy: Path, measurement: Any) -> None:
    """:meth:`record` refuses it (False, counted, the history unchanged): the next decision is
    the same as without it."""
    sel, ref = _sel(policy), _sel(policy)
    for s in (sel, ref):
        s.record(15.0, 25.0, 1000.0)
    assert not sel.record(*measurement, 2000.0)
    assert sel.ignored_measurements == 1
    d, r = sel.decide(*ARGS), ref.decide(*ARGS)
    assert d.source == "learned" and d.action == r.action and d.scores == r.scores
    assert not sel.record(10.0, 10.0, math.nan)


@pytest.mark.parametrize(
    "args",
    [(math.nan, 600.0, 4.0, 1.5e6), (5000.0, -600.0, 4.0, 1.5e6), (5000.0, 600.0, 0.0, 1.5e6),
     (5000.0, 600.0, 4.0, math.inf), (5000.0, 600.0, 4.0, 1e50), (5000.0, None, 4.0, 1.5e6),
     (5000.0, np.array([600.0, 700.0]), 4.0, 1.5e6)],
)  # fmt: skip
def test_bad_request_fields_fall_back(policy: Path, args: tuple[Any, ...]) -> None:
    _falls_back(_sel(policy), "invalid input", args)


def test_the_fallback_preprocesses_where_the_pieslicer_rule_says() -> None:
    """No model: offload, no backup; preprocessing on the device on a slow uplink (the raw
    upload costs more), in the cloud on a fast one."""
    slow, fast = DeviceSelector(_mid()), DeviceSelector(_mid())
    slow.start(20.0, 0.5, 0.0)
    fast.start(20.0, 500.0, 0.0)
    assert slow.decide(*ARGS).prep == "device"
    assert fast.decide(*ARGS).prep == "server"


@pytest.mark.slow
def test_a_core_only_install_decides_with_a_device_policy(policy: Path, tmp_path: Path) -> None:
    """``pip install modi`` without extras (numpy + onnxruntime): ``from modi.runtime import
    DeviceSelector`` loads an exported device policy and decides, with the training stack
    absent (the wheel and venv of ``test_selector``'s core-only test)."""
    from test_selector import _core_only_venv

    py, mode = _core_only_venv(tmp_path)
    mid = _mid()
    models = [(m.model_id, m.accuracy, m.mean_ms, m.std_ms, m.load_ms) for m in mid.models]
    code = textwrap.dedent(
        f"""
        import importlib.util
        from modi.runtime import DeviceSelector
        from modi.runtime.device_selector import DeviceModel, DeviceSpec
        spec = DeviceSpec("mid", [DeviceModel(*m) for m in {models!r}], {mid.backup!r},
                          {mid.prep_intercept_ms!r}, {mid.prep_ms_per_mp!r})
        sel = DeviceSelector.load({str(policy)!r}, spec)
        sel.start(20.0, 30.0, 0.0)
        d = sel.decide(5000.0, 600.0, 4.0, 1.5e6)
        assert d.source == "learned", d.reason
        bad = DeviceSelector(spec).decide(5000.0, float("nan"), 4.0, 1.5e6)
        assert bad.source == "fallback", bad
        absent = [m for m in ("torch", "gymnasium", "stable_baselines3", "mlflow", "hydra",
                              "onnx") if importlib.util.find_spec(m) is not None]
        print("ok", d.placement, "present:", absent)
        """
    )
    out = subprocess.run([str(py), "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"[{mode}] {out.stderr[-2000:]}"
    assert out.stdout.startswith("ok") and out.stdout.strip().endswith("present: []"), out.stdout


@pytest.mark.parametrize("radio", ["bluetooth", math.nan, -1.0, "x", None])
def test_an_unknown_radio_falls_back_naming_it(policy: Path, radio: Any) -> None:
    sel = _sel(policy)
    sel.set_radio(radio)
    _falls_back(sel, "radio")
    assert math.isnan(sel.radio_active_w) or sel.radio_active_w < 0
    sel.set_radio("lte")  # a valid radio again: the learned decision
    assert sel.radio_active_w == dfeat.RADIO_ACTIVE_POWER_W["lte"]
    assert sel.decide(*ARGS).source == "learned"
