"""The connection's RTT as a feature (issue 13 item 1, serving side): ``srtt_ms``/``rttvar_ms``
in requests and the selector's request block, read by ``modi-serve`` from the socket
(``TCP_INFO``) or the request's header/field, counted by source, logged, refused when bad; a
selector of feature schema v1 is refused at load; decision logs of v1 stay readable."""

from __future__ import annotations

import json
import math
import socket
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("PIL")
pytest.importorskip("onnx")

from fastapi.testclient import TestClient
from serving_helpers import build_tiny_pool
from serving_helpers import infer as _infer
from serving_helpers import serve_config as _cfg
from serving_helpers import with_props as _with_props

from modi.experiments.serve import create_app, header_deadline_protocol
from modi.runtime import PoolProfile, Request, RequestBatch, Selector
from modi.runtime import features as F
from modi.runtime.decision_log import SCHEMA_V1, V1_REQUEST_DIM, read_decision_log
from modi.runtime.metadata import FeatureRanges
from modi.runtime.selector import SelectorLoadError
from modi.serving import InferenceServer, ServerConfigError
from modi.serving.tcpinfo import SRTT_HEADER, RttSources, read_tcp_rtt, tcp_info_supported

POOL = PoolProfile.from_lists(["tiny_fast", "tiny_slow"], [0.6, 0.9], [5.0, 40.0], [1.0, 5.0])
UNKNOWN = "shield: srtt_ms is unknown (NaN) and the policy reads it"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: Any) -> dict[str, Path]:
    d = build_tiny_pool(tmp_path_factory.mktemp("tiny"))
    # a selector that reads the connection's RTT: its training ranges name srtt_ms/rttvar_ms
    ranges = FeatureRanges(("srtt_ms", "rttvar_ms"), (10.0, 0.0), (200.0, 100.0), 1000)
    _with_props(d["sel"] / "a.onnx", d["sel"] / "rtt.onnx", training_ranges=ranges.to_json())
    v1 = [f[0] for f in F.REQUEST_FEATURES[:V1_REQUEST_DIM]]
    _with_props(d["sel"] / "a.onnx", d["sel"] / "v1.onnx", schema_version="1",
                request_features=json.dumps(v1))  # fmt: skip
    return d


def _req(srtt: float | None = None, rttvar: float | None = None, client: str = "c") -> Request:
    return Request(200.0, 10.0, 5.0, 1000.0, client, srtt_ms=srtt, rttvar_ms=rttvar)


# ---------------------------------------------------------------- the runtime
def test_the_request_block_carries_the_rtt_and_unknown_is_nan() -> None:
    sel = Selector(POOL)
    f = sel.features(_req(31.5, 4.25))
    assert f[F.SRTT] == np.float32(31.5) and f[F.RTTVAR] == np.float32(4.25)
    f = sel.features(_req())
    assert math.isnan(f[F.SRTT]) and math.isnan(f[F.RTTVAR])
    f = sel.features({"sla_ms": 200, "elapsed_ms": 10, "upload_ms": 5, "payload_bytes": 1000,
                      "srtt_ms": 12, "rttvar_ms": None})  # fmt: skip
    assert f[F.SRTT] == 12.0 and math.isnan(f[F.RTTVAR])


@pytest.mark.parametrize(
    ("field", "value", "why"),
    [("srtt_ms", -1.0, "srtt_ms must be >= 0"), ("srtt_ms", math.nan, "srtt_ms is NaN"),
     ("srtt_ms", math.inf, "srtt_ms is infinite"), ("rttvar_ms", 1e9, "rttvar_ms = 1000000000.0"),
     ("srtt_ms", "fast", "srtt_ms must be a number"), ("rttvar_ms", -0.5, "rttvar_ms must be")],
)  # fmt: skip
def test_a_bad_rtt_makes_the_request_invalid_naming_the_field(
    field: str, value: Any, why: str
) -> None:
    sel = Selector(POOL)
    good = {"sla_ms": 200.0, "elapsed_ms": 10.0, "upload_ms": 5.0, "payload_bytes": 1000.0}
    d = sel.select({**good, field: value})
    assert d.source == "fallback" and d.reason.startswith("invalid request: " + why), d.reason
    ds = sel.select_batch([good, {**good, field: value}])
    assert ds[0].reason.startswith("no learned model")  # the good row is unaffected
    assert ds[1].reason.startswith("invalid request: " + why), ds[1].reason


def test_select_and_select_batch_see_the_same_rtt(tiny: dict[str, Path]) -> None:
    reads = Selector.load(tiny["sel"] / "rtt.onnx", POOL, strict=True)
    reqs = [_req(20.0, 5.0), _req(), _req(500.0, 5.0), _req(30.0, 2.0)]
    one = [reads.select(r) for r in reqs]
    assert [d.source for d in one] == ["learned", "fallback", "fallback", "learned"]
    assert one[1].reason == UNKNOWN
    assert one[2].reason.startswith("shield: srtt_ms = 500 outside training range [10, 200]")
    batch = Selector.load(tiny["sel"] / "rtt.onnx", POOL, strict=True).select_batch(reqs)
    assert [d.source for d in batch] == [d.source for d in one]
    assert [d.reason for d in batch] == [d.reason for d in one]
    cols = RequestBatch([200.0] * 4, [10.0] * 4, [5.0] * 4, [1000.0] * 4, ["c"] * 4,
                        srtt_ms=[20.0, np.nan, 500.0, 30.0],
                        rttvar_ms=[5.0, np.nan, 5.0, 2.0])  # fmt: skip
    again = Selector.load(tiny["sel"] / "rtt.onnx", POOL, strict=True).select_batch(cols)
    assert [d.reason for d in again] == [d.reason for d in one]
    # a policy that does not read the RTT is unaffected by its absence
    plain = Selector.load(tiny["sel"] / "a.onnx", POOL, strict=True)
    assert all(d.learned for d in plain.select_batch(reqs)) and plain.select(_req()).learned


def test_a_v1_selector_is_refused_at_load_with_the_reason(tiny: dict[str, Path]) -> None:
    with pytest.raises(
        SelectorLoadError, match=r"v1, this runtime builds .* v4 \(v2 added srtt_ms"
    ):
        Selector.load(tiny["sel"] / "v1.onnx", POOL, strict=True)
    sel = Selector.load(tiny["sel"] / "v1.onnx", POOL)
    assert not sel.learned and "feature schema mismatch" in sel.select(_req(20.0, 1.0)).reason
    with pytest.raises(ServerConfigError, match=r"v1\.onnx: .*feature schema mismatch.*v1"):
        InferenceServer(_cfg(tiny, "v1.onnx"))
    server = InferenceServer(_cfg(tiny, "v1.onnx", allow_fallback=True))
    assert "feature schema mismatch" in server.health()["selector"]


# ---------------------------------------------------------------- the server (no socket)
def test_without_a_socket_the_rtt_comes_from_the_header_or_the_field(
    tiny: dict[str, Path], tmp_path: Path
) -> None:
    logf = tmp_path / "log.jsonl"
    server = InferenceServer(_cfg(tiny, "rtt.onnx", decision_log=logf))
    assert server.reads_rtt
    with TestClient(create_app(server)) as c:  # the test client has no socket
        r = _infer(c).json()
        assert (r["rtt_source"], r["srtt_ms"], r["source"]) == ("none", None, "fallback")
        assert r["reason"] == UNKNOWN
        r = _infer(c, srtt_ms=40.0, rttvar_ms=8.0).json()
        assert (r["rtt_source"], r["srtt_ms"], r["rttvar_ms"]) == ("field", 40.0, 8.0)
        assert r["source"] == "learned"
        r = _infer(c, headers={SRTT_HEADER: "60", "x-modi-rttvar-ms": "9.5"}, srtt_ms=40.0).json()
        assert (r["rtt_source"], r["srtt_ms"], r["rttvar_ms"]) == ("header", 60.0, 9.5)
        for params, hdr, name in (
            ({"srtt_ms": -3}, {}, "srtt_ms"), ({"srtt_ms": "nan"}, {}, "srtt_ms"),
            ({"rttvar_ms": "1e9"}, {}, "rttvar_ms"), ({}, {SRTT_HEADER: "soon"}, SRTT_HEADER),
            ({"prev_download_ms": -1}, {}, "prev_download_ms"),
        ):  # fmt: skip
            bad = _infer(c, headers=hdr, **params)
            assert bad.status_code == 400 and name in bad.json()["error"], bad.text
        r = _infer(c, srtt_ms=25.0, prev_download_ms=33.0).json()
        assert r["rtt_source"] == "field" and r["rttvar_ms"] is None
        health = c.get("/healthz").json()["rtt"]
        assert health["mode"] == "auto" and health["selector_reads_it"] is True
        assert health["sources"] == {"tcp_info": 0, "header": 1, "field": 2, "none": 1}
        metrics = c.get("/metrics").text
        assert 'modi_rtt_source_total{source="field"} 2.0' in metrics
    assert server.log is not None and server.log.flush()
    lines = [json.loads(x) for x in logf.read_text().splitlines()]
    assert lines[0]["features"][F.SRTT] is None and lines[0]["connection"]["rtt_source"] == "none"
    assert lines[1]["features"][F.SRTT] == 40.0 and lines[1]["features"][F.RTTVAR] == 8.0
    assert lines[-1]["connection"]["prev_download_ms"] == 33.0
    assert lines[-1]["features"][F.RTTVAR] is None  # srtt without rttvar: rttvar unknown
    lg = read_decision_log(logf)
    assert math.isnan(lg.features[0, F.SRTT]) and lg.features[1, F.SRTT] == 40.0
    assert lg.reasons[0] == UNKNOWN
    server.close()


def test_rtt_source_none_and_request_modes(
    tiny: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(ServerConfigError, match="rtt_source"):
        InferenceServer(_cfg(tiny, rtt_source="kernel"))
    with caplog.at_level("INFO", logger="modi.serving.core"):
        InferenceServer(_cfg(tiny, "rtt.onnx", rtt_source="none"))
    assert "srtt_ms/rttvar_ms) from nothing" in caplog.text and "selector reads it" in caplog.text
    assert "every request falls back" in caplog.text
    server = InferenceServer(_cfg(tiny, rtt_source="none"))
    with TestClient(create_app(server)) as c:
        r = _infer(c, srtt_ms=40.0).json()
        assert r["rtt_source"] == "none" and r["srtt_ms"] is None and r["source"] == "learned"
    src = RttSources("request")
    assert src.choose((1.0, 0.5), (None, None), (7.0, 1.0)) == (7.0, 1.0, "field")
    assert RttSources("socket").choose(None, (3.0, 1.0), (7.0, 1.0)) == (None, None, "none")
    assert RttSources("auto").choose((1.0, 0.5), (3.0, 1.0), (7.0, 1.0))[2] == "tcp_info"


# ---------------------------------------------------------------- a real socket
def test_read_tcp_rtt_on_sockets() -> None:
    assert read_tcp_rtt(None) is None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        assert read_tcp_rtt(u) is None  # not TCP
    with (
        socket.create_server(("127.0.0.1", 0)) as srv,
        socket.create_connection(srv.getsockname()) as c,
    ):
        s, _ = srv.accept()
        with s:
            for _ in range(3):
                c.sendall(b"x" * 100)
                s.recv(100)
                s.sendall(b"y" * 100)
                c.recv(100)
            got = read_tcp_rtt(s)
    if not tcp_info_supported():
        assert got is None
        return
    assert got is not None
    srtt, rttvar = got
    assert 0.0 < srtt < 1000.0 and 0.0 <= rttvar < 1000.0, got  # loopback: well under a second


def test_a_request_over_tcp_gets_the_sockets_rtt(tiny: dict[str, Path], tmp_path: Path) -> None:
    import httpx
    from test_serving_hardening import _uvicorn

    logf = tmp_path / "log.jsonl"
    server = InferenceServer(_cfg(tiny, decision_log=logf))
    with _uvicorn(server, http=header_deadline_protocol(10.0)) as port:
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base) as c:  # one keep-alive connection
            answers = [_infer(c, srtt_ms=999.0).json() for _ in range(3)]
            health = c.get("/healthz").json()["rtt"]
            metrics = c.get("/metrics").text
    if sys.platform.startswith("linux"):
        for a in answers:
            assert a["rtt_source"] == "tcp_info", a  # the socket wins over the client's claim
            assert math.isfinite(a["srtt_ms"]) and 0.0 < a["srtt_ms"] < 999.0, a
            assert math.isfinite(a["rttvar_ms"]) and a["rttvar_ms"] >= 0.0, a
        assert health["tcp_info"] is True and health["sources"]["tcp_info"] == 3
        assert 'modi_rtt_source_total{source="tcp_info"} 3.0' in metrics
        assert server.log is not None and server.log.flush()
        lg = read_decision_log(logf)
        np.testing.assert_array_equal(
            lg.features[:, F.SRTT], np.float32([a["srtt_ms"] for a in answers])
        )
    else:  # no TCP_INFO: the client's field
        assert all(a["rtt_source"] == "field" for a in answers)
    server.close()


# ---------------------------------------------------------------- decision logs of schema v1
def test_a_v1_decision_log_reads_as_v2_with_the_rtt_unknown(
    tiny: dict[str, Path], tmp_path: Path
) -> None:
    logf = tmp_path / "new.jsonl"
    server = InferenceServer(_cfg(tiny, decision_log=logf))
    with TestClient(create_app(server)) as c:
        for srtt in (20.0, 30.0):
            assert _infer(c, srtt_ms=srtt, rttvar_ms=2.0).status_code == 200
    assert server.log is not None and server.log.flush()
    server.close()
    recs = [json.loads(x) for x in logf.read_text().splitlines()]
    old = []
    for r in recs:  # what a v1 server wrote: no RTT columns
        feats = r["features"]
        old.append({**r, "schema": SCHEMA_V1, "features": feats[:V1_REQUEST_DIM] + feats[F.R :]})
    v1 = tmp_path / "old.jsonl"
    v1.write_text("".join(json.dumps(r) + "\n" for r in old))
    lg = read_decision_log(v1)
    assert lg.schema == F.ObsLayout.schema and lg.features.shape == (2, F.ObsLayout(2).dim)
    assert np.isnan(lg.features[:, [F.SRTT, F.RTTVAR]]).all()
    new = read_decision_log(logf)
    keep = [c for c in range(new.features.shape[1]) if c not in F.OPTIONAL_COLUMNS]
    np.testing.assert_array_equal(lg.features[:, keep], new.features[:, keep])
    # a v1 record of the wrong length, or a v2 record with text where the RTT goes: refused
    short = tmp_path / "short.jsonl"
    short.write_text(json.dumps({**old[0], "features": old[0]["features"][:-1]}) + "\n")
    with pytest.raises(ValueError, match=r"field 'features'.*schema modi.model_selection v1"):
        read_decision_log(short)
    bad = dict(recs[0])
    bad["features"] = list(recs[0]["features"])
    bad["features"][F.SRTT] = "fast"
    (tmp_path / "bad.jsonl").write_text(json.dumps(bad) + "\n")
    with pytest.raises(ValueError, match=rf"features\[{F.SRTT}\].*finite number"):
        read_decision_log(tmp_path / "bad.jsonl")


def test_the_shadow_decides_on_logged_features_with_an_unknown_rtt(
    tiny: dict[str, Path], tmp_path: Path
) -> None:
    """The log writes an unknown RTT as null; the shadow reads those records back as NaN and
    answers (a challenger that reads the RTT: its fallback with the reason)."""
    logf = tmp_path / "log.jsonl"
    server = InferenceServer(_cfg(tiny, decision_log=logf, shadow=tiny["sel"] / "rtt.onnx"))
    with TestClient(create_app(server)) as c:
        assert _infer(c).status_code == 200
        assert _infer(c, srtt_ms=50.0, rttvar_ms=5.0).status_code == 200
    assert server.log is not None and server.log.flush()
    server.close()
    assert server.log.stats.errors == 0 and server.log.stats.hook_errors == 0
    lg = read_decision_log(logf)
    assert lg.has_shadow.all() and np.isnan(lg.features[0, F.SRTT])
    assert server.shadow is not None and server.shadow.selector.counts["shield"] == 1
