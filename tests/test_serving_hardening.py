"""The reliability audit's failures of ``modi-serve`` (issue 15), each reproduced: a failing
decision log, torn lines and rotation, prometheus metrics, declared image formats and pixel
bounds, slow bodies, nested JSON, 405 ``Allow``, the OpenAPI schema (fuzzed by schemathesis),
bounded error messages, no paths in health, start-up refusals, absurd SLAs."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("PIL")
pytest.importorskip("prometheus_client")

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from serving_helpers import TOKEN, build_tiny_pool, png

from modi.experiments.serve import create_app, main
from modi.serving import INFER_FIELDS, InferenceServer, ServeConfig, ServerConfigError
from modi.serving.logwriter import DecisionLogWriter
from modi.serving.metrics import SELECTOR_KINDS


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: Any) -> dict[str, Path]:
    return build_tiny_pool(tmp_path_factory.mktemp("tiny"))


def _cfg(tiny: dict[str, Path], **kw: Any) -> ServeConfig:
    base: dict[str, Any] = {
        "pool_dir": tiny["dir"], "pool_yaml": tiny["yaml"], "selector": tiny["sel"] / "a.onnx",
        "admin_token": TOKEN,
    }  # fmt: skip
    base.update(kw)
    return ServeConfig(**base)


def _infer(c: Any, body: bytes | None = None, ctype: str = "image/png", **params: Any) -> Any:
    q = {"sla_ms": 200, "upload_ms": 5.0, "elapsed_ms": 10.0, "client_id": "p1", **params}
    return c.post("/v1/infer", params=q, content=png() if body is None else body,
                  headers={"content-type": ctype})  # fmt: skip


def _metrics(c: Any) -> dict[str, list[tuple[dict[str, str], float]]]:
    fams = text_string_to_metric_families(c.get("/metrics").text)
    return {f.name: [(s.labels, s.value) for s in f.samples] for f in fams}


def _value(m: dict[str, Any], family: str, **labels: str) -> float:
    return sum(v for lab, v in m[family] if all(lab.get(k) == x for k, x in labels.items()))


# ---------------------------------------------------------------- 1. a failing decision log
def test_a_failing_decision_log_never_fails_a_request_and_is_reported(tiny: Any) -> None:
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    server = InferenceServer(_cfg(tiny, decision_log=Path("/dev/full")))
    with TestClient(create_app(server)) as c:
        assert c.get("/healthz").json()["status"] == "ok"
        for _ in range(5):
            r = _infer(c)
            assert r.status_code == 200, r.text
        assert server.log is not None and server.log.flush()
        m = _metrics(c)
        assert _value(m, "modi_decision_log_write_errors") == 5
        assert _value(m, "modi_requests", code="200") == 5
        assert _value(m, "modi_degraded") == 1
        h = c.get("/healthz").json()
        assert h["status"] == "degraded" and h["ok"] is False
        assert h["decision_log"]["errors"] == 5 and "No space" in h["decision_log"]["last_error"]
    server.close()


# ---------------------------------------------------------------- 3. whole lines, rotation
def _records(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_bytes().split(b"\n"):
        if line.strip():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


def test_a_short_write_is_truncated_back_and_the_next_record_is_whole(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    w = DecisionLogWriter(path)
    real = os.write
    calls = {"n": 0}

    def flaky(fd: int, data: bytes) -> int:
        calls["n"] += 1
        if calls["n"] == 2:  # the disk fills half-way through the second record
            return real(fd, data[: len(data) // 2])
        return real(fd, data)

    w._raw_write = flaky
    for i in range(3):
        w.submit({"i": i, "pad": "x" * 100})
    w.close()
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b""  # the file ends with a whole line
    assert [json.loads(x)["i"] for x in lines[:-1]] == [0, 2]  # every line is a whole record
    assert w.stats.errors == 1 and w.stats.written == 2


def test_when_truncation_fails_the_next_record_starts_on_a_new_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import modi.serving.logwriter as lw

    path = tmp_path / "log.jsonl"
    w = DecisionLogWriter(path)
    real = os.write
    calls = {"n": 0}

    def flaky(fd: int, data: bytes) -> int:
        calls["n"] += 1
        return real(fd, data[:10]) if calls["n"] == 2 else real(fd, data)

    def no_truncate(fd: int, size: int) -> None:
        raise OSError(28, "No space left on device")

    w._raw_write = flaky
    monkeypatch.setattr(lw.os, "ftruncate", no_truncate)
    for i in range(3):
        w.submit({"i": i, "pad": "y" * 50})
    w.close()
    assert [r["i"] for r in _records(path)] == [0, 2]
    # the torn fragment is a line of its own, never glued to record 2
    assert any(x.startswith(b'{"i":2') for x in path.read_bytes().split(b"\n"))


def test_the_log_is_reopened_after_a_logrotate_move_and_a_deletion(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    w = DecisionLogWriter(path)
    w.submit({"i": 0})
    assert w.flush()
    path.rename(tmp_path / "log.jsonl.1")
    w.submit({"i": 1})
    assert w.flush()
    path.unlink()
    w.submit({"i": 2})
    w.close()
    assert [r["i"] for r in _records(tmp_path / "log.jsonl.1")] == [0]
    assert [r["i"] for r in _records(path)] == [2]
    assert w.stats.reopened == 2 and w.stats.errors == 0


def test_an_unwritable_log_location_refuses_to_start(tiny: Any, tmp_path: Path) -> None:
    with pytest.raises(ServerConfigError, match="cannot open the decision log"):
        InferenceServer(_cfg(tiny, decision_log=tmp_path / "no" / "such" / "dir.jsonl"))


# ---------------------------------------------------------------- 4. prometheus metrics
def test_metrics_parse_with_prometheus_client_and_count_selector_kinds(
    tiny: Any, tmp_path: Path
) -> None:
    server = InferenceServer(_cfg(tiny, decision_log=tmp_path / "d.jsonl"))
    with TestClient(create_app(server)) as c:
        for sla in (200, 200, 20, 6, 1):
            assert _infer(c, sla_ms=sla).status_code == 200
        _infer(c, body=b"junk")
        m = _metrics(c)
        counts = server.selector.counts
        kinds = {lab["kind"]: v for lab, v in m["modi_selector_decisions"]}
        assert set(SELECTOR_KINDS) <= set(kinds)
        assert kinds == {k: float(v) for k, v in counts.items()}
        assert sum(kinds.values()) == 5
        assert _value(m, "modi_requests", code="200") == 5
        assert _value(m, "modi_requests", code="415") == 1
        assert _value(m, "modi_decisions") == 5
        assert _value(m, "modi_fallbacks") == 5 - counts["learned"]
        assert m["process_resident_memory_bytes"][0][1] > 1e6
        assert _value(m, "modi_select_ms", le="+Inf") == 5  # histogram buckets
    server.close()


def test_counters_keep_full_precision(tiny: Any) -> None:
    server = InferenceServer(_cfg(tiny))
    assert server.metrics is not None
    server.metrics.requests.labels(code="200").inc(1234567)
    text = server.metrics.render().decode()
    assert 'modi_requests_total{code="200"} 1.234567e+06' in text


# ---------------------------------------------------------------- 5. declared formats only
@pytest.mark.parametrize("fmt", ["GIF", "TIFF", "ICO", "PNG"])
def test_only_the_declared_format_is_decoded(tiny: Any, fmt: str) -> None:
    server = InferenceServer(_cfg(tiny))
    with TestClient(create_app(server)) as c:
        r = _infer(c, body=png(32, "RGB", fmt), ctype="image/jpeg")
        assert r.status_code == 415 and "not a JPEG image" in r.json()["error"], r.text
        assert _infer(c, body=png(32, "RGB", "JPEG"), ctype="image/jpeg").status_code == 200


def test_an_image_over_the_pixel_bound_is_refused_before_decoding(tiny: Any) -> None:
    body = png(2500)  # 6.25 MP in a few kB: far more pixels per byte than any photo
    assert len(body) < 50_000
    server = InferenceServer(_cfg(tiny))
    with TestClient(create_app(server)) as c:
        r = _infer(c, body=body)
        assert r.status_code == 413 and "pixels" in r.json()["error"], r.text
        assert _value(_metrics(c), "modi_images_refused", reason="pixels") == 1


# ---------------------------------------------------------------- 6. slow bodies
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _uvicorn(server: Any, **config: Any) -> Iterator[int]:
    """Serve ``server`` with uvicorn on a free loopback port in a thread; yields the port."""
    import uvicorn

    port = _free_port()
    uv = uvicorn.Server(uvicorn.Config(create_app(server), host="127.0.0.1", port=port,
                                       log_level="warning", **config))  # fmt: skip
    t = threading.Thread(target=uv.run, daemon=True)
    t.start()
    try:
        for _ in range(100):
            if uv.started:
                break
            time.sleep(0.05)
        yield port
    finally:
        uv.should_exit = True
        t.join(timeout=10)


def test_slow_headers_are_cut_off_by_the_header_deadline(tiny: Any) -> None:
    """Slowloris: a client that never finishes its headers is disconnected after the header
    deadline (uvicorn has none of its own); a normal request on the same server still works."""
    from modi.experiments.serve import header_deadline_protocol

    server = InferenceServer(_cfg(tiny))
    with _uvicorn(server, http=header_deadline_protocol(0.5)) as port:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\n")  # headers never end
            t0 = time.monotonic()
            assert s.recv(65536) == b"", "the server must close the connection"
            waited = time.monotonic() - t0
        assert 0.3 < waited < 5.0, waited
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        assert data.startswith(b"HTTP/1.1 200"), data[:80]


def test_a_slow_upload_gets_408_and_its_connection_is_closed(tiny: Any) -> None:
    import httpx

    server = InferenceServer(_cfg(tiny, body_timeout_s=0.5))
    with _uvicorn(server) as port:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(
                b"POST /v1/infer?sla_ms=200 HTTP/1.1\r\nhost: x\r\ncontent-type: image/png\r\n"
                b"content-length: 8000000\r\n\r\n" + b"\0" * 1024
            )
            t0 = time.monotonic()
            data = b""
            while chunk := s.recv(65536):  # until the server closes the connection
                data += chunk
            waited = time.monotonic() - t0
        assert data.startswith(b"HTTP/1.1 408"), data[:200]
        assert b"not received within 0.5 s" in data
        assert waited < 9.0  # closed by the deadline, not by the socket's own timeout
        ok = httpx.post(f"http://127.0.0.1:{port}/v1/infer", params={"sla_ms": 200},
                        content=png(), headers={"content-type": "image/png"})  # fmt: skip
        assert ok.status_code == 200, ok.text


# ---------------------------------------------------------------- 7. the smaller ones
def test_deeply_nested_json_on_the_admin_endpoint_is_a_400(tiny: Any) -> None:
    with TestClient(create_app(InferenceServer(_cfg(tiny)))) as c:
        h = {"authorization": f"Bearer {TOKEN}", "content-type": "application/json"}
        for body in (b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 50 + b"1" + b"}" * 50):
            r = c.post("/v1/admin/reload", content=body, headers=h)
            assert r.status_code == 400 and "deeper" in r.json()["error"], r.text
        r = c.post("/v1/admin/reload", content=b'{"selector": ', headers=h)
        assert r.status_code == 400 and "not JSON" in r.json()["error"]


def test_405_carries_allow(tiny: Any) -> None:
    with TestClient(create_app(InferenceServer(_cfg(tiny)))) as c:
        r = c.get("/v1/infer")
        assert r.status_code == 405 and r.headers["allow"] == "POST"
        r = c.post("/healthz")
        assert r.status_code == 405 and "GET" in r.headers["allow"]


def test_errors_never_echo_unbounded_input_or_heap_addresses(tiny: Any) -> None:
    with TestClient(create_app(InferenceServer(_cfg(tiny)))) as c:
        long = "9" * 20_000
        for params in ({"sla_ms": "x" * 20_000}, {"z" * 20_000: "1"}, {"label": long},
                       {"client_id": "!" * 20_000}):  # fmt: skip
            r = _infer(c, **params)
            assert r.status_code == 400, r.text
            msg = r.json()["error"]
            assert len(msg) <= 400 and " at 0x" not in msg, msg
        r = _infer(c, body=b"\x89PNG\r\n\x1a\n" + os.urandom(2000))
        assert r.status_code in (400, 415) and " at 0x" not in r.json()["error"]


def test_health_and_models_never_show_the_selector_folder(tiny: Any) -> None:
    with TestClient(create_app(InferenceServer(_cfg(tiny)))) as c:
        h = c.get("/healthz").json()
        assert h["selector"].startswith("learned: a.onnx (sha256:"), h
        for path in ("/healthz", "/v1/models"):
            text = c.get(path).text
            assert str(tiny["sel"]) not in text and str(tiny["dir"]) not in text, text


def test_a_corrupt_selector_refuses_to_start_unless_fallback_is_allowed(
    tiny: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tiny["sel"] / "bad.onnx"
    with pytest.raises(ServerConfigError, match=r"--selector bad\.onnx: .*--allow-fallback"):
        InferenceServer(_cfg(tiny, selector=bad))
    server = InferenceServer(_cfg(tiny, selector=bad, allow_fallback=True))
    assert server.health()["selector"].startswith("fallback: ")
    with pytest.raises(SystemExit) as e:
        main(["--pool-dir", str(tiny["dir"]), "--pool", str(tiny["yaml"]), "--selector", str(bad)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("modi-serve: error: --selector bad.onnx"), err
    assert "Traceback" not in "".join(err)


def test_start_up_errors_are_one_line(tiny: Any, capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--pool-dir", "/nonexistent"],
                 ["--pool-dir", str(tiny["dir"]), "--explore", "epsilon:2"],
                 ["--pool-dir", str(tiny["dir"]), "--pool", str(tiny["dir"] / "manifest.json"),
                  "--shadow", "x.onnx"]):  # fmt: skip
        with pytest.raises(SystemExit):
            main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("modi-serve: error: "), err


@pytest.mark.parametrize("sla", ["1e308", "600001", "1e400"])
def test_an_absurd_sla_is_a_4xx(tiny: Any, sla: str) -> None:
    with TestClient(create_app(InferenceServer(_cfg(tiny)))) as c:
        r = _infer(c, sla_ms=sla)
        assert r.status_code == 400 and "sla_ms" in r.json()["error"], r.text


def test_the_openapi_schema_documents_infer_completely(tiny: Any) -> None:
    with TestClient(create_app(InferenceServer(_cfg(tiny)))) as c:
        doc = c.get("/openapi.json").json()
    op = doc["paths"]["/v1/infer"]["post"]
    names = {p["name"] for p in op["parameters"]}
    headers = {"x-modi-srtt-ms", "x-modi-rttvar-ms", "x-modi-client-dl-ms",
               "x-modi-client-dlvar-ms", "x-modi-client-dl-mismatch"}  # fmt: skip
    assert names == {"sla_ms", "upload_ms", "elapsed_ms", "capture_ts_ms", "client_id", "label",
                     "shape", "srtt_ms", "rttvar_ms", "prev_download_ms", "client_dl_ms",
                     "client_dlvar_ms", "client_dl_mismatch"} | headers  # fmt: skip
    assert names - headers == INFER_FIELDS  # every field
    assert {p["in"] for p in op["parameters"] if p["name"] in headers} == {"header"}
    assert set(op["requestBody"]["content"]) == {
        "image/jpeg",
        "image/png",
        "image/webp",
        "image/bmp",
        "application/x-modi-pixels",
    }
    assert {"200", "400", "408", "413", "415"} <= set(op["responses"])
    props = doc["components"]["schemas"]["InferAnswer"]["properties"]
    assert {"model_id", "class_index", "timings_ms", "request_id", "client_dl_ms",
            "client_dlvar_ms"} <= set(props)  # fmt: skip


def test_schemathesis_finds_no_5xx_and_no_schema_violation(tiny: Any) -> None:
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_headers_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    server = InferenceServer(_cfg(tiny))
    app = create_app(server)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    checks = [not_a_server_error, status_code_conformance, content_type_conformance,
              response_schema_conformance, response_headers_conformance]  # fmt: skip
    failures: list[str] = []
    ran = [0]

    def test_of(op: Any) -> Any:
        @given(case=op.as_strategy())
        @settings(max_examples=40, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))  # fmt: skip
        def run(case: Any) -> None:
            ran[0] += 1
            try:
                case.call_and_validate(checks=checks)
            except Exception as e:  # collect, do not stop at the first
                failures.append(f"{op.method.upper()} {op.path}: {str(e)[:300]}")

        return run

    for result in schema.get_all_operations():
        test_of(result.ok())()
    assert ran[0] >= 60  # every operation, ~40 examples for each with inputs
    assert not failures, "\n".join(failures[:5])


# ---------------------------------------------------------------- exploration and shadow
def _log_records(server: InferenceServer, path: Path) -> list[dict[str, Any]]:
    server.close()
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_epsilon_exploration_logs_its_probabilities_and_sometimes_explores(
    tiny: Any, tmp_path: Path
) -> None:
    logf = tmp_path / "d.jsonl"
    server = InferenceServer(_cfg(tiny, decision_log=logf, explore="epsilon:0.5", shield=False))
    with TestClient(create_app(server)) as c:
        answers = [_infer(c).json() for _ in range(40)]
    recs = _log_records(server, logf)
    assert len(recs) == 40
    greedy = [r for r in recs if r["source"] == "learned"]
    assert greedy
    for r in greedy:
        p = np.array(r["probabilities"])
        assert r["selector"]["exploration"] == {"kind": "epsilon", "epsilon": 0.5,
                                                "temperature": None}  # fmt: skip
        assert sorted(p.tolist()) == [0.25, 0.75] and p.sum() == pytest.approx(1.0)
    explored = sum(a["explored"] for a in answers)
    assert 0 < explored < 40  # ε/K = 25 % of decisions serve the non-greedy model
    for a, r in zip(answers, recs, strict=True):
        assert a["model_id"] == r["model_id"] == r["pool"][r["action"]]


def test_softmax_probabilities_are_the_graphs_scores(tiny: Any, tmp_path: Path) -> None:
    import onnxruntime as ort

    from modi.runtime import features as F

    logf = tmp_path / "d.jsonl"
    server = InferenceServer(_cfg(tiny, decision_log=logf, explore="softmax:2.0", shield=False))
    with TestClient(create_app(server)) as c:
        for sla in (30, 60, 200):
            assert _infer(c, sla_ms=sla).status_code == 200
    recs = _log_records(server, logf)
    sess = ort.InferenceSession(str(tiny["sel"] / "a.onnx"))
    for r in recs:
        x = np.asarray(r["features"], np.float32)
        (s,) = sess.run(["scores"], {"request": x[None, : F.R],
                                     "models": x[F.R :].reshape(1, 2, F.P)})  # fmt: skip
        z = np.exp((s[0] - s[0].max()) / 2.0)
        if r["source"] == "learned":
            np.testing.assert_allclose(r["probabilities"], z / z.sum(), rtol=1e-5)


def test_shadow_logs_the_challengers_choice_on_the_same_features(tiny: Any, tmp_path: Path) -> None:
    from modi.runtime import Selector

    logf = tmp_path / "d.jsonl"
    server = InferenceServer(_cfg(tiny, decision_log=logf, shadow=tiny["sel"] / "b.onnx"))
    with TestClient(create_app(server)) as c:
        served = [_infer(c, sla_ms=sla).json()["model_id"] for sla in (15, 30, 45, 60, 200)]
        assert c.get("/healthz").json()["shadow"] == "b.onnx"
        assert server.log is not None and server.log.flush()
        m = _metrics(c)
    recs = _log_records(server, logf)
    assert [r["model_id"] for r in recs] == served  # the champion serves
    ref = Selector.load(tiny["sel"] / "b.onnx", server.pool, strict=True)
    want = ref.select_features(np.asarray([r["features"] for r in recs], np.float32))
    for r, w in zip(recs, want, strict=True):
        sh = r["shadow"]
        assert sh["selector"]["name"] == "b.onnx" and sh["selector"]["version"].startswith("sha")
        assert sh["action"] == w.index and sh["model_id"] == w.model_id
        assert sum(sh["probabilities"]) == pytest.approx(1.0)
    assert _value(m, "modi_shadow_decisions") == 5


def test_the_log_reads_back_with_the_ope_reader(tiny: Any, tmp_path: Path) -> None:
    dl = pytest.importorskip("modi.runtime.decision_log")
    logf = tmp_path / "d.jsonl"
    server = InferenceServer(_cfg(tiny, decision_log=logf, shadow=tiny["sel"] / "b.onnx",
                                  explore="epsilon:0.2"))  # fmt: skip
    with TestClient(create_app(server)) as c:
        for sla in (15, 30, 200, 1):
            assert _infer(c, sla_ms=sla, label=3).status_code == 200
    recs = _log_records(server, logf)
    for i, r in enumerate(recs, 1):
        dl.DecisionRecord.from_dict(r, line=i, path=str(logf))
    if hasattr(dl, "read_decision_log"):
        assert dl.read_decision_log(logf).actions.shape == (4,)


def test_a_bad_shadow_or_exploration_refuses_to_start(tiny: Any, tmp_path: Path) -> None:
    with pytest.raises(ServerConfigError, match="needs --decision-log"):
        InferenceServer(_cfg(tiny, shadow=tiny["sel"] / "b.onnx"))
    with pytest.raises(ServerConfigError, match=r"--shadow bad\.onnx"):
        InferenceServer(_cfg(tiny, shadow=tiny["sel"] / "bad.onnx", decision_log=tmp_path / "d"))
    with pytest.raises(ServerConfigError, match="temperature"):
        InferenceServer(_cfg(tiny, explore="softmax:0"))


# ---------------------------------------------------------------- client-measured outcomes
def test_a_reported_end_to_end_latency_becomes_the_records_outcome(
    tiny: Any, tmp_path: Path
) -> None:
    logf = tmp_path / "d.jsonl"
    server = InferenceServer(_cfg(tiny, decision_log=logf, outcome_hold_s=30.0))
    with TestClient(create_app(server)) as c:
        a = _infer(c, sla_ms=100).json()
        b = _infer(c, sla_ms=100).json()
        r = c.post("/v1/outcome", params={"request_id": a["request_id"], "e2e_ms": 130.5})
        assert r.status_code == 200 and r.json() == {"recorded": True}
        again = c.post("/v1/outcome", params={"request_id": a["request_id"], "e2e_ms": 1})
        assert again.json() == {"recorded": False}  # released: written once
        assert c.post("/v1/outcome", params={"request_id": "nope", "e2e_ms": 1}).json() == {
            "recorded": False
        }
        for bad in ({"request_id": a["request_id"], "e2e_ms": "-1"},
                    {"request_id": "../x", "e2e_ms": "1"}, {"request_id": "x"},
                    {"request_id": "x", "e2e_ms": "1e308"}):  # fmt: skip
            assert c.post("/v1/outcome", params=bad).status_code == 400, bad
    recs = {r["request_id"]: r for r in _log_records(server, logf)}
    assert recs[a["request_id"]]["outcome"]["latency_ms"] == 130.5
    assert recs[a["request_id"]]["outcome"]["met"] is False
    # not reported: written at close with the server's own latency (arrival + server time)
    lat = recs[b["request_id"]]["outcome"]["latency_ms"]
    assert 10.0 <= lat < 100.0 and recs[b["request_id"]]["outcome"]["met"] is True


def test_held_records_are_written_when_their_time_is_up(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    w = DecisionLogWriter(path, hold_s=0.2, interval_s=0.01)
    w.submit({"request_id": "a", "outcome": {}}, meta=100.0)
    time.sleep(0.05)
    assert path.read_text() == "" and w.pending == 1
    time.sleep(0.4)
    assert [r["request_id"] for r in _records(path)] == ["a"] and w.pending == 0
    w.close()


def test_modi_client_reports_outcomes_the_log_records(tiny: Any, tmp_path: Path) -> None:
    import asyncio

    import httpx

    from modi.experiments.client import run_clients

    logf = tmp_path / "d.jsonl"
    server = InferenceServer(_cfg(tiny, decision_log=logf, outcome_hold_s=30.0))
    app = create_app(server)
    _, rows = asyncio.run(run_clients(
        "http://modi.test", 400.0, 6, 2, network="campus", images="digits",
        transport=httpx.ASGITransport(app=app), report_outcomes=True,
    ))  # fmt: skip
    recs = {r["request_id"]: r for r in _log_records(server, logf)}
    assert len(recs) == 6
    for row in rows:
        out = recs[row["request_id"]]["outcome"]
        assert out["latency_ms"] == round(row["e2e_ms"], 3)
        assert out["met"] == (row["e2e_ms"] <= 400.0)
