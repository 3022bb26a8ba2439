"""The serving path: a real ONNX pool built here, modi-profile's measured pool YAML, and the
reference server (FastAPI TestClient) — answers, metrics, decision log, admin reload, bad input."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
pytest.importorskip("sklearn")
pytest.importorskip("PIL")

from fastapi.testclient import TestClient

from modi.agents.bandits import LinUCB
from modi.agents.export import export_onnx
from modi.envs.pools import ModelPool
from modi.experiments.imaging import (
    PIXELS_CONTENT_TYPE,
    encode_image,
    to_model_input,
)
from modi.experiments.profile import profile_dir, write_pool_yaml
from modi.experiments.serve import (
    InferenceServer,
    ServeConfig,
    ServerConfigError,
    create_app,
)
from modi.experiments.zoo import (
    DIGITS_TEST,
    build_digits,
    build_imagenet,
    read_manifest,
    write_manifest,
)
from modi.runtime import features as F

TOKEN = "test-token"


@pytest.fixture(scope="module")
def digits(tmp_path_factory: Any) -> dict[str, Path]:
    """Two digits classifiers trained briefly, profiled into a pool YAML, and two selectors."""
    d = tmp_path_factory.mktemp("zoo")
    pool_dir = d / "digits"
    build_digits(pool_dir, epochs=8, ids=["digits_logreg", "digits_mlp64"])
    profiles = profile_dir(pool_dir, runs=20, warmup=2, labels=pool_dir / DIGITS_TEST)
    pool_yaml = write_pool_yaml(profiles, d / "digits_pool.yaml", "digits", 20, 2, 1)
    sel = d / "selectors"
    sel.mkdir()
    greedy = LinUCB()
    greedy.theta = np.zeros_like(greedy.theta)
    greedy.theta[0] = 1.0
    export_onnx(greedy, sel / "a.onnx", run_id="a")
    export_onnx(LinUCB(seed=1), sel / "b.onnx", run_id="b")
    (sel / "bad.onnx").write_bytes(os.urandom(4096))
    return {"dir": pool_dir, "yaml": pool_yaml, "sel": sel}


def _server(digits: dict[str, Path], tmp_path: Path, **kw: Any) -> InferenceServer:
    cfg = ServeConfig(
        pool_dir=digits["dir"],
        pool_yaml=digits["yaml"],
        selector=digits["sel"] / "a.onnx",
        admin_token=TOKEN,
        decision_log=tmp_path / "decisions.jsonl",
        **kw,
    )
    return InferenceServer(cfg)


@pytest.fixture
def client(digits: dict[str, Path], tmp_path: Path) -> Any:
    server = _server(digits, tmp_path, max_body_bytes=200_000)
    with TestClient(create_app(server)) as c:
        c.server = server  # type: ignore[attr-defined]
        yield c
    server.close()


def _digit_png(i: int = 0, size: int = 96) -> tuple[bytes, int]:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    img = (x[i].reshape(8, 8) / 16.0 * 255).round().astype(np.uint8)
    big = np.repeat(np.repeat(img, size // 8, 0), size // 8, 1)
    return encode_image(np.stack([big] * 3, axis=-1), "PNG"), int(y[i])


def _infer(c: Any, body: bytes, ctype: str = "image/png", **params: Any) -> Any:
    q = {"sla_ms": 200, "upload_ms": 5.0, "elapsed_ms": 10.0, "client_id": "p1", **params}
    return c.post("/v1/infer", params=q, content=body, headers={"content-type": ctype})


# ---------------------------------------------------------------- pool and profile
def test_digits_pool_accuracy_is_measured_and_the_yaml_loads_as_a_model_pool(
    digits: dict[str, Path],
) -> None:
    pool = ModelPool.from_config("digits", path=digits["yaml"])
    assert pool.ids == ("digits_logreg", "digits_mlp64")
    manifest = {e.id: e for e in read_manifest(digits["dir"])}
    for m in pool.models:
        # modi-profile re-measures on the saved held-out split: it agrees with training's number
        assert m.accuracy == pytest.approx(manifest[m.id].accuracy, abs=1e-3), m.id
        assert m.accuracy > 0.5, f"{m.id} learnt nothing: accuracy {m.accuracy}"
        assert m.mean_ms > 0 and m.std_ms >= 0


def test_profile_yaml_records_percentiles_and_the_accuracy_source(
    digits: dict[str, Path],
) -> None:
    import yaml

    doc = yaml.safe_load(digits["yaml"].read_text())
    e = doc["models"][0]
    assert e["min_ms"] <= e["p50_ms"] <= e["p90_ms"] <= e["p99_ms"] <= e["max_ms"]
    assert e["runs"] == 20 and "measured on" in e["accuracy_source"]
    assert doc["measured"]["tool"] == "modi-profile"


def test_an_imagenet_architecture_exports_and_is_profiled_with_its_published_accuracy(
    tmp_path: Path,
) -> None:
    build_imagenet(tmp_path, ["mobilenet_v1_0.25"])
    (p,) = profile_dir(tmp_path, runs=3, warmup=1)
    assert p.id == "mobilenet_v1_0.25" and p.accuracy == pytest.approx(0.498)
    assert "published top-1" in p.accuracy_source and p.times_ms.shape == (3,)


def test_profile_refuses_a_model_without_any_accuracy(tmp_path: Path) -> None:
    build_imagenet(tmp_path, ["mobilenet_v1_0.25"])
    (tmp_path / "manifest.json").unlink()
    with pytest.raises(ValueError, match=r"no accuracy for mobilenet_v1_0\.25\.onnx"):
        profile_dir(tmp_path, runs=2, warmup=0)


def test_device_and_server_preprocessing_give_the_digit_back_exactly() -> None:
    body, _ = _digit_png(3)
    from modi.experiments.imaging import decode_image

    x = to_model_input(decode_image(body), [1, 8, 8], "gray", 1.0, [0.0], [1.0])
    from sklearn.datasets import load_digits

    want = load_digits().data[3].reshape(8, 8) / 16.0
    np.testing.assert_allclose(x[0, 0], want, atol=1 / 255)


# ---------------------------------------------------------------- serving
def test_infer_answers_with_a_pool_model_and_a_correct_digit(client: Any) -> None:
    hits = 0
    for i in range(10):
        body, label = _digit_png(i)
        r = _infer(client, body, label=label)
        assert r.status_code == 200, r.text
        doc = r.json()
        assert doc["model_id"] in ("digits_logreg", "digits_mlp64")
        assert doc["source"] == "learned", doc["reason"]
        assert set(doc["timings_ms"]) >= {"select", "exec", "server", "queue", "decode"}
        hits += doc["correct"]
    assert hits >= 7, f"only {hits}/10 digits right"


def test_device_preprocessed_pixels_are_served(client: Any) -> None:
    px = np.full((8, 8, 3), 128, np.uint8)
    r = _infer(client, px.tobytes(), PIXELS_CONTENT_TYPE, shape="8x8x3")
    assert r.status_code == 200, r.text


def test_capture_timestamp_gives_the_elapsed_time(client: Any) -> None:
    import time

    body, _ = _digit_png(0)
    q = {"sla_ms": 300, "upload_ms": 5, "capture_ts_ms": time.time() * 1e3 - 50.0}
    r = client.post("/v1/infer", params=q, content=body, headers={"content-type": "image/png"})
    assert r.status_code == 200, r.text
    assert 50.0 <= r.json()["elapsed_ms_at_selection"] < 5000.0


def test_models_health_and_metrics(client: Any) -> None:
    body, _ = _digit_png(0)
    _infer(client, body)
    _infer(client, body, sla_ms=1)  # nothing fits a 1 ms SLA: the shield or ModiPick answers
    doc = client.get("/v1/models").json()
    assert [m["id"] for m in doc["models"]] == ["digits_logreg", "digits_mlp64"]
    assert all("measured on" in m["accuracy_source"] for m in doc["models"])
    assert client.get("/healthz").json()["ok"] is True
    text = client.get("/metrics").text
    for needle in (
        "modi_decisions_total{",
        "modi_select_ms_bucket{le=",
        "modi_exec_ms_count{model=",
        'modi_requests_total{code="200"}',
        "process_resident_memory_bytes",
    ):
        assert needle in text, f"{needle!r} missing from /metrics"


def test_execution_times_update_the_profiles_online(client: Any) -> None:
    server = client.server
    before = server.selector.profiles[0].copy()
    body, _ = _digit_png(0)
    for _ in range(5):
        _infer(client, body)
    assert not np.array_equal(before, server.selector.profiles[0])


def test_decision_log_has_features_choice_probabilities_and_outcome(
    client: Any, tmp_path: Path
) -> None:
    body, label = _digit_png(1)
    answer = _infer(client, body, label=label).json()
    client.server.close()
    lines = (tmp_path / "decisions.jsonl").read_text().splitlines()
    recs = [json.loads(x) for x in lines]
    assert len(recs) == 1
    r = recs[0]
    pool = list(client.server.pool.ids)
    from modi.runtime import obs_dim
    from modi.runtime.metadata import pool_hash

    assert r["v"] == 1 and r["request_id"] == answer["request_id"]
    assert r["schema"] == f"modi.model_selection v{F.SCHEMA_VERSION}"
    assert r["pool"] == pool and r["pool_hash"] == pool_hash(pool)
    assert r["selector"]["name"] == "a.onnx" and r["selector"]["version"].startswith("sha256:")
    assert r["selector"]["exploration"]["kind"] == "none"
    assert len(r["features"]) == obs_dim(len(pool))
    # the test client has no socket and the request no RTT: unknown, logged as null
    assert r["features"][F.SRTT] is None and r["connection"]["rtt_source"] == "none"
    assert r["model_id"] == pool[r["action"]] == answer["model_id"]
    assert r["probabilities"][r["action"]] == 1.0 and sum(r["probabilities"]) == 1.0
    assert r["source"] == "learned" and r["shadow"] is None
    out = r["outcome"]
    assert out["correct"] == answer["correct"] and out["accuracy"] == answer["accuracy"]
    assert out["latency_ms"] >= 10.0 and out["met"] == (out["latency_ms"] <= 200)


@pytest.mark.parametrize(
    ("params", "body", "ctype", "status", "needle"),
    [
        ({}, b"x" * 300_000, "image/png", 413, "limit"),
        ({}, b"hello", "text/plain", 415, "content type"),
        ({}, b"definitely not a png", "image/png", 415, "not a PNG image"),
        ({"sla_ms": "nan"}, None, "image/png", 400, "sla_ms is NaN"),
        ({"sla_ms": "-5"}, None, "image/png", 400, "sla_ms must be > 0"),
        ({"sla_ms": "inf"}, None, "image/png", 400, "sla_ms is infinite"),
        ({"upload_ms": "-1"}, None, "image/png", 400, "upload_ms must be >= 0"),
        ({"color": "red"}, None, "image/png", 400, "unknown fields ['color']"),
        ({"sla_ms": None}, None, "image/png", 400, "missing field 'sla_ms'"),
        ({"client_id": "../../etc"}, None, "image/png", 400, "client_id"),
        ({"shape": "8x8x3"}, None, PIXELS_CONTENT_TYPE, 400, "body has"),
        ({}, None, PIXELS_CONTENT_TYPE, 400, "needs shape"),
        ({}, b"", "image/png", 400, "empty body"),
    ],
)
def test_bad_input_gets_a_4xx_json_naming_the_problem_and_the_server_keeps_serving(
    client: Any, params: dict[str, Any], body: bytes | None, ctype: str, status: int, needle: str
) -> None:
    good, _ = _digit_png(0)
    q = {"sla_ms": 200, "upload_ms": 5.0, "elapsed_ms": 10.0, **params}
    q = {k: v for k, v in q.items() if v is not None}
    r = client.post(
        "/v1/infer", params=q, content=good if body is None else body,
        headers={"content-type": ctype},
    )  # fmt: skip
    assert r.status_code == status, r.text
    assert needle in r.json()["error"], r.json()
    assert _infer(client, good).status_code == 200


def test_admin_reload_needs_the_token(client: Any) -> None:
    r = client.post("/v1/admin/reload")
    assert r.status_code == 401 and "missing admin token" in r.json()["error"]
    r = client.post("/v1/admin/reload", headers={"authorization": "Bearer nope"})
    assert r.status_code == 403 and "wrong admin token" in r.json()["error"]


def test_reload_swaps_and_a_bad_file_is_refused_while_the_old_keeps_serving(client: Any) -> None:
    h = {"authorization": f"Bearer {TOKEN}"}
    r = client.post("/v1/admin/reload", headers=h, json={"selector": "b.onnx"})
    assert r.status_code == 200 and "b.onnx" in r.json()["selector"], r.text
    r = client.post("/v1/admin/reload", headers=h, json={"selector": "bad.onnx"})
    assert r.status_code == 409 and "refused bad.onnx" in r.json()["error"], r.text
    assert "b.onnx" in client.server.selector.status
    body, _ = _digit_png(0)
    assert _infer(client, body).json()["source"] == "learned"
    for name, needle in (("../a.onnx", "plain file name"), ("missing.onnx", "does not exist")):
        r = client.post("/v1/admin/reload", headers=h, json={"selector": name})
        assert r.status_code == 409 and needle in r.json()["error"], r.text
    r = client.post("/v1/admin/reload", headers=h, json={"selector": "a.onnx", "path": "/x"})
    assert r.status_code == 400 and "unknown fields ['path']" in r.json()["error"]
    assert 'modi_reloads_total{result="refused"}' in client.get("/metrics").text


def test_admin_is_disabled_without_a_configured_token(
    digits: dict[str, Path], tmp_path: Path
) -> None:
    server = _server(digits, tmp_path)
    server.cfg.admin_token = None
    with TestClient(create_app(server)) as c:
        r = c.post("/v1/admin/reload", headers={"authorization": "Bearer x"})
        assert r.status_code == 403 and "disabled" in r.json()["error"]


def test_model_files_come_only_from_the_pool_folder(
    digits: dict[str, Path], tmp_path: Path
) -> None:
    pool = tmp_path / "pool"
    pool.mkdir()
    entries = read_manifest(digits["dir"])
    for e in entries:
        (pool / e.file).write_bytes((digits["dir"] / e.file).read_bytes())
    entries[0].file = "../digits_logreg.onnx"
    write_manifest(pool, "digits", entries)
    with pytest.raises(ServerConfigError, match="is not allowed"):
        InferenceServer(ServeConfig(pool_dir=pool, pool_yaml=digits["yaml"]))


def test_without_a_selector_modipick_serves_fallbacks_are_counted_and_logged_with_propensity(
    digits: dict[str, Path], tmp_path: Path
) -> None:
    logf = tmp_path / "fb.jsonl"
    cfg = ServeConfig(pool_dir=digits["dir"], pool_yaml=digits["yaml"], decision_log=logf)
    server = InferenceServer(cfg)
    with TestClient(create_app(server)) as c:
        body, _ = _digit_png(0)
        assert _infer(c, body).json()["source"] == "fallback"
        assert 'modi_fallbacks_total{cause="no learned model"} 1.0' in c.get("/metrics").text
    server.close()
    (rec,) = [json.loads(x) for x in logf.read_text().splitlines()]
    assert rec["source"] == "fallback" and rec["selector"]["name"] == "modipick"
    assert rec["selector"]["exploration"]["kind"] == "rule"
    p = rec["probabilities"]
    assert 0.0 < p[rec["action"]] <= 1.0 and abs(sum(p) - 1.0) < 1e-9


def test_serving_code_never_unpickles() -> None:
    import modi.experiments.imaging as im
    import modi.experiments.serve as sv
    import modi.serving.core as core
    import modi.serving.images as simg
    import modi.serving.logwriter as lw

    for mod in (sv, im, core, simg, lw):
        src = Path(mod.__file__ or "").read_text()
        for bad in ("import pickle", "pickle.load", "torch.load", "joblib", "allow_pickle=True"):
            assert bad not in src, f"{mod.__name__} uses {bad}"


def test_emulated_phones_drive_the_server_with_real_digits_and_replayed_network(
    digits: dict[str, Path], tmp_path: Path
) -> None:
    import asyncio

    import httpx

    from modi.experiments.client import run_clients

    server = _server(digits, tmp_path)
    app = create_app(server)
    rep, rows = asyncio.run(
        run_clients(
            "http://modi.test", 400.0, 8, 2, network="campus", images="digits",
            preprocess="mix", transport=httpx.ASGITransport(app=app),
        )
    )  # fmt: skip
    assert rep.requests == 8 and rep.failed == 0, rep.errors
    assert rep.accuracy >= 0.6, f"digits accuracy {rep.accuracy}"
    # the replayed campus network (one-way ~58 ms) is in every end-to-end latency
    assert all(r["e2e_ms"] >= r["t_in_ms"] for r in rows)
    assert rep.e2e_p50_ms > 40.0 and 0.0 <= rep.attainment <= 1.0
    assert sum(rep.usage.values()) == 8


def test_prototype_config_loads_with_overrides() -> None:
    from modi.experiments.prototype import CONFIG, load_config

    cfg = load_config(CONFIG, ["requests_per_point=5", "sla_ms=[100, 200]"])
    assert cfg["requests_per_point"] == 5 and cfg["sla_ms"] == [100, 200]
    with pytest.raises(ValueError, match="expected KEY=VALUE"):
        load_config(CONFIG, ["nope=1"])
