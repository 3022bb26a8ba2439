"""``modi-client`` with emulated phones making the device's decisions (issue 14): a learned
device policy through :class:`modi.runtime.DeviceSelector` and the static rules against a real
``modi-serve`` (uvicorn in a thread), the phone's own network history, bad input."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("httpx")

from serving_helpers import build_tiny_pool
from test_serving_hardening import _uvicorn

from modi.agents.device_scorer import (
    DeviceScorerPolicy,
    collect,
    export_device_onnx,
    fit_scorer,
)
from modi.envs.offload import build_offload_sim
from modi.experiments import client
from modi.experiments.phone import (
    Phone,
    PhoneError,
    compare_device_policies,
    format_table,
    run_phones,
)
from modi.runtime import device_features as dfeat
from modi.serving import InferenceServer, ServeConfig


@pytest.fixture(scope="module")
def policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny device policy trained on the mid tier (its decisions, not its quality, matter)."""
    sim = build_offload_sim("mid", "link_wifi", num_envs=8, sla_range_ms=(150.0, 2500.0))
    data = collect([sim], 30, seed=0)
    net, _ = fit_scorer(data, hidden=(16, 16), epochs=1, seed=0)
    x = data[0][0].reshape(-1, data[0][0].shape[-1])
    pol = DeviceScorerPolicy(net, 0.0, 0.0, x.min(axis=0), x.max(axis=0))
    return export_device_onnx(pol, tmp_path_factory.mktemp("phone") / "device_policy.onnx")


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tiny = build_tiny_pool(tmp_path_factory.mktemp("tiny"))
    server = InferenceServer(
        ServeConfig(pool_dir=tiny["dir"], pool_yaml=tiny["yaml"], selector=tiny["sel"] / "a.onnx")
    )
    with _uvicorn(server) as port:
        yield f"http://127.0.0.1:{port}"


def test_phones_decide_with_the_device_selector_against_modi_serve(url: str, policy: Path) -> None:
    rep, rows = asyncio.run(
        run_phones(url, "mid", "learned", policy, 800.0, 10, 2, "link_wifi", "digits", seed=1)
    )
    assert rep.requests == len(rows) == 10 and rep.failed == 0
    assert rep.learned_decisions == 10 and not rep.fallbacks  # every decision the policy's
    for r in rows:
        assert r["source"] == "learned" and r["policy"] == "learned"
        if r["placement"] == "offload":  # answered by the real server's pool
            assert r["model_id"] in ("tiny_fast", "tiny_slow") and r["bytes_sent"] > 0
        else:
            assert r["answered_by"] in ("local", "none") and r["bytes_sent"] == 0
    assert 0.0 <= rep.effective_accuracy <= rep.attainment <= 1.0


def test_the_phone_measures_only_completed_offloads() -> None:
    """The start-up probe starts the history; an offload's measurement enters it when its
    response is back (record), stamped with that request's capture time."""
    net = client.NetworkReplay("link_wifi", 1, 0)
    ph = Phone("mid", "static_remote", None, net, 0)
    sel = ph.selector
    assert sel._history_ok and sel._last_ms == 0.0
    t_in, t_out, bw = ph.measure(200_000)
    assert t_in > 0 and t_out > 0 and bw > 0
    sel.record(t_out, bw, 1234.0)
    assert sel._last_ms == 1234.0 and sel._bw_last == bw
    obs = sel.observation(2000.0, 500.0, 2.0, 4e5)
    assert obs[dfeat.NET_AGE] == pytest.approx(2000.0 - 1234.0)


@pytest.mark.parametrize(("network", "radio"), [("link_wifi", "wifi"), ("link_5g", "lte")])
def test_the_phone_is_on_its_networks_radio(network: str, radio: str) -> None:
    """A phone's observation carries the radio of its network preset (the device env's
    ``radio`` table), as the env's does."""
    ph = Phone("mid", "static_remote", None, client.NetworkReplay(network, 1, 0), 0)
    obs = ph.selector.observation(0.0, 500.0, 2.0, 4e5)
    assert obs[dfeat.RADIO_ACTIVE_W] == pytest.approx(dfeat.RADIO_ACTIVE_POWER_W[radio])


def test_compare_runs_every_tier_and_policy_on_the_same_server(url: str, policy: Path) -> None:
    reports = asyncio.run(
        compare_device_policies(
            url, policy, 800.0, 4, 1, "link_wifi", "digits", tiers=("low", "mid")
        )
    )
    assert [(r.tier, r.policy) for r in reports] == [
        (t, p) for t in ("low", "mid") for p in ("learned", "static_local", "static_remote")
    ]
    by = {(r.tier, r.policy): r for r in reports}
    for t in ("low", "mid"):
        assert by[t, "static_local"].device_preprocessed == 1.0 == by[t, "static_local"].offloaded
        assert by[t, "static_remote"].device_preprocessed == 0.0
        assert by[t, "static_remote"].offloaded == 1.0
        assert by[t, "static_remote"].learned_decisions == 0
    table = format_table(reports)
    assert table.count("\n") == len(reports) and "eff_acc" in table


def test_a_corrupt_policy_file_makes_every_phone_fall_back_with_its_reason(
    url: str, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    rep, rows = asyncio.run(
        run_phones(url, "mid", "learned", bad, 800.0, 4, 1, "link_wifi", "digits")
    )
    assert rep.requests == 4 and rep.learned_decisions == 0
    assert rep.fallbacks == {"no learned model": 4}
    assert all(r["placement"] == "offload" and not r["backup"] for r in rows)  # PieSlicer's rule


def test_bad_phone_settings_are_refused_with_the_field_named(policy: Path) -> None:
    net = client.NetworkReplay("link_wifi", 1, 0)
    with pytest.raises(PhoneError, match="unknown device tier 'flagship'"):
        Phone("flagship", "learned", policy, net, 0)
    with pytest.raises(PhoneError, match="unknown device policy"):
        Phone("mid", "oracle", None, net, 0)
    with pytest.raises(PhoneError, match="needs --device-policy"):
        Phone("mid", "learned", None, net, 0)
    with pytest.raises(SystemExit):
        client.main(["--device", "learned", "--tier", "flagship", "--device-policy", str(policy)])
    with pytest.raises(SystemExit):
        client.main(["--compare-device"])


def test_the_cli_prints_the_table_and_writes_json(
    url: str, policy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "phones.json"
    client.main(["--url", url, "--device", "static_local", "--tier", "high", "--requests", "3",
                 "--concurrency", "1", "--network", "link_wifi", "--images", "digits",
                 "--sla-ms", "800", "--json", str(out), "--no-progress"])  # fmt: skip
    text = capsys.readouterr().out
    assert "static_local" in text and "high" in text
    (rep,) = json.loads(out.read_text())
    assert rep["requests"] == 3 and rep["tier"] == "high" and rep["offloaded"] == 1.0
    assert np.isfinite(rep["attainment"])


def test_on_device_phones_never_offload_and_load_what_they_run(url: str) -> None:
    rep, rows = asyncio.run(
        run_phones(url, "high", "on_device", None, 2000.0, 6, 1, "link_wifi", "digits")
    )
    assert rep.offloaded == 0.0 and rep.mb_sent == 0.0 and rep.learned_decisions == 0
    assert all(r["placement"] != "offload" and r["answered_by"] in ("local", "none") for r in rows)
    assert set(rep.answered_by) <= {"local", "none"}
