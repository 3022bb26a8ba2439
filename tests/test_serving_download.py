"""The client's download history as a feature (issue 13 item 1, feature schema v3, serving
side): ``client_dl_ms``/``client_dlvar_ms`` in requests and the selector's request block
(unknown: encoded as ``UNKNOWN_HISTORY``, which never makes the selector fall back, nor does
NaN; a known value out of the training range fires the shield), sent to ``modi-serve`` as
fields or headers, counted, logged; ``modi-client`` and the emulated phones measure it and send
it from their second request on; a selector of schema v2 is refused with the reason; decision
logs of v1 and v2 stay readable."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("PIL")
pytest.importorskip("onnx")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient
from serving_helpers import build_tiny_pool
from serving_helpers import infer as _infer
from serving_helpers import serve_config as _cfg
from serving_helpers import with_props as _with_props

from modi.experiments.client import DownloadHistory, run_clients
from modi.experiments.phone import run_phones
from modi.experiments.serve import create_app
from modi.runtime import PoolProfile, Request, RequestBatch, Selector
from modi.runtime import features as F
from modi.runtime.decision_log import (
    SCHEMA_V1,
    SCHEMA_V2,
    UNKNOWN_VALUES,
    V1_REQUEST_DIM,
    V2_REQUEST_DIM,
    read_decision_log,
)
from modi.runtime.metadata import RANGE_FEATURES, SCHEMA_REQUEST_DIMS, FeatureRanges, RangeRecorder
from modi.runtime.requests import RequestLimits
from modi.runtime.selector import SelectorLoadError
from modi.serving import InferenceServer, ServerConfigError
from modi.serving.core import CLIENT_DL_HEADER, CLIENT_DLVAR_HEADER, CLIENT_MISMATCH_HEADER

POOL = PoolProfile.from_lists(["tiny_fast", "tiny_slow"], [0.6, 0.9], [5.0, 40.0], [1.0, 5.0])
GOOD = {"sla_ms": 200.0, "elapsed_ms": 10.0, "upload_ms": 5.0, "payload_bytes": 1000.0}
#: Training ranges of a selector that reads the download history (widened by 25 % of the
#: width: client_dl_ms in [0, 120], client_dlvar_ms in [2.5, 47.5]: the encoded unknown, -1,
#: lies below both).
DL_RANGES = FeatureRanges(("client_dl_ms", "client_dlvar_ms"), (20.0, 10.0), (100.0, 40.0), 1000)
UNKNOWN_RTT = "shield: srtt_ms is unknown (NaN) and the policy reads it"
NONE_YET = F.UNKNOWN_HISTORY  # the encoded "no download history yet"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: Any) -> dict[str, Path]:
    d = build_tiny_pool(tmp_path_factory.mktemp("tiny"))
    sel = d["sel"]
    _with_props(sel / "a.onnx", sel / "dl.onnx", training_ranges=DL_RANGES.to_json())
    both = FeatureRanges(
        ("srtt_ms", "rttvar_ms", "client_dl_ms", "client_dlvar_ms"),
        (10.0, 0.0, 20.0, 10.0), (200.0, 100.0, 100.0, 40.0), 1000,
    )  # fmt: skip
    _with_props(sel / "a.onnx", sel / "both.onnx", training_ranges=both.to_json())
    v2 = [f[0] for f in F.REQUEST_FEATURES[:V2_REQUEST_DIM]]
    _with_props(sel / "a.onnx", sel / "v2.onnx", schema_version="2",
                request_features=json.dumps(v2))  # fmt: skip
    return d


def _req(dl: float | None = None, dlvar: float | None = None, srtt: float | None = None) -> Request:
    return Request(200.0, 10.0, 5.0, 1000.0, "c", srtt_ms=srtt, rttvar_ms=None if srtt is None
                   else 1.0, client_dl_ms=dl, client_dlvar_ms=dlvar)  # fmt: skip


# ---------------------------------------------------------------- requests and features
def test_the_request_block_carries_the_download_history_and_none_is_encoded() -> None:
    sel = Selector(POOL)
    f = sel.features(_req(42.5, 7.25))
    assert f[F.CLIENT_DL] == np.float32(42.5) and f[F.CLIENT_DLVAR] == np.float32(7.25)
    f = sel.features(_req())
    assert f[F.CLIENT_DL] == NONE_YET and f[F.CLIENT_DLVAR] == NONE_YET and NONE_YET < 0
    f = sel.features({**GOOD, "client_dl_ms": 12, "client_dlvar_ms": None})
    assert f[F.CLIENT_DL] == 12.0 and f[F.CLIENT_DLVAR] == NONE_YET
    assert f[F.CLIENT_MISMATCH] == NONE_YET  # schema v4: none sent
    f = sel.features({**GOOD, "client_dl_ms": 12, "client_dl_mismatch": 0.25})
    assert f[F.CLIENT_MISMATCH] == np.float32(0.25)
    # the scalar fast path writes what encode() computes, bit for bit
    mu, sigma = sel.profiles
    want = F.encode(200.0, 10.0, 5.0, 1.0, 5.0, 0.0, 0.0, 1.0, mu, sigma, POOL.accuracy,
                    np.nan, np.nan, 33.3, 4.4)  # fmt: skip
    got = Selector(POOL).features(_req(33.3, 4.4))
    np.testing.assert_array_equal(got, want[0])
    want = F.encode(200.0, 10.0, 5.0, 1.0, 5.0, 0.0, 0.0, 1.0, mu, sigma, POOL.accuracy)
    np.testing.assert_array_equal(Selector(POOL).features(_req()), want[0])
    # the columnar form and a sequence of requests build the same block
    cols = RequestBatch([200.0] * 2, [10.0] * 2, [5.0] * 2, [1000.0] * 2,
                        client_dl_ms=[np.nan, 20.0], client_dlvar_ms=[np.nan, 3.0],
                        client_dl_mismatch=[np.nan, 0.0])  # fmt: skip
    assert cols.row(0).client_dl_ms is None and cols.row(1).client_dl_ms == 20.0
    assert cols.row(0).client_dl_mismatch is None and cols.row(1).client_dl_mismatch == 0.0
    back = RequestBatch.from_requests([cols.row(0), cols.row(1)])
    assert back.client_dl_ms is not None and back.client_dl_ms[1] == 20.0
    assert np.isnan(back.client_dl_ms[0]) and back.client_dlvar_ms is not None
    assert back.client_dl_mismatch is not None and back.client_dl_mismatch[1] == 0.0


@pytest.mark.parametrize(
    ("field", "value", "why"),
    [("client_dl_ms", -1.0, "client_dl_ms must be >= 0"),
     ("client_dl_ms", math.nan, "client_dl_ms is NaN"),
     ("client_dl_ms", math.inf, "client_dl_ms is infinite"),
     ("client_dlvar_ms", 1e9, "client_dlvar_ms = 1000000000.0 exceeds the limit"),
     ("client_dl_ms", "slow", "client_dl_ms must be a number"),
     ("client_dlvar_ms", -0.5, "client_dlvar_ms must be >= 0"),
     ("client_dl_mismatch", -0.1, "client_dl_mismatch must be >= 0"),
     ("client_dl_mismatch", 25.0, "client_dl_mismatch = 25.0 exceeds the limit 20.0 "
                                  "(RequestLimits.max_dl_mismatch)")],
)  # fmt: skip
def test_a_bad_download_history_makes_the_request_invalid_naming_the_field(
    field: str, value: Any, why: str
) -> None:
    sel = Selector(POOL)
    d = sel.select({**GOOD, field: value})
    assert d.source == "fallback" and d.reason.startswith("invalid request: " + why), d.reason
    ds = sel.select_batch([GOOD, {**GOOD, field: value}])
    assert ds[0].reason.startswith("no learned model")  # the good row is unaffected
    assert ds[1].reason.startswith("invalid request: " + why), ds[1].reason
    if isinstance(value, float) and not math.isnan(value):  # (a NaN column entry: unknown)
        # the columnar form finds the same row and reason
        cols = RequestBatch([200.0] * 2, [10.0] * 2, [5.0] * 2, [1000.0] * 2,
                            **{field: [1.0, value]})  # fmt: skip
        dc = sel.select_batch(cols)
        assert [d.reason for d in dc] == [d.reason for d in ds]


def test_the_download_limit_is_a_request_limit() -> None:
    sel = Selector(POOL, limits=RequestLimits(max_download_ms=50.0))
    assert sel.select({**GOOD, "client_dl_ms": 50.0}).reason.startswith("no learned model")
    d = sel.select({**GOOD, "client_dl_ms": 50.5})
    assert "client_dl_ms = 50.5 exceeds the limit 50.0 (RequestLimits.max_download_ms)" in d.reason


# ---------------------------------------------------------------- the shield
def test_an_unknown_download_history_never_falls_back(tiny: dict[str, Path]) -> None:
    reqs = [_req(), _req(50.0, 5.0), _req(500.0, 5.0), _req(50.0, 60.0), _req(None, 5.0),
            _req(50.0, 1.0)]  # fmt: skip
    want_src = ["learned", "learned", "fallback", "fallback", "learned", "fallback"]
    sel = Selector.load(tiny["sel"] / "dl.onnx", POOL, strict=True)
    one = [sel.select(r) for r in reqs]
    assert [d.source for d in one] == want_src, [d.reason for d in one]
    assert one[2].reason.startswith("shield: client_dl_ms = 500 outside training range [20, 100]")
    assert one[3].reason.startswith("shield: client_dlvar_ms = 60 outside training range [10, 40]")
    assert one[5].reason.startswith("shield: client_dlvar_ms = 1 outside training range [10, 40]")
    batch = Selector.load(tiny["sel"] / "dl.onnx", POOL, strict=True).select_batch(reqs)
    assert [(d.source, d.reason) for d in batch] == [(d.source, d.reason) for d in one]
    n = len(reqs)
    cols = RequestBatch([200.0] * n, [10.0] * n, [5.0] * n, [1000.0] * n, ["c"] * n,
                        client_dl_ms=[np.nan, 50.0, 500.0, 50.0, np.nan, 50.0],
                        client_dlvar_ms=[np.nan, 5.0, 5.0, 60.0, 5.0, 1.0])  # fmt: skip
    again = Selector.load(tiny["sel"] / "dl.onnx", POOL, strict=True).select_batch(cols)
    assert [(d.source, d.reason) for d in again] == [(d.source, d.reason) for d in one]
    # a batch whose only firing is a known value below its range
    low = Selector.load(tiny["sel"] / "dl.onnx", POOL, strict=True).select_batch(
        [_req(), _req(50.0, 1.0)]
    )
    assert low.learned.tolist() == [True, False] and low[1].reason == one[5].reason
    # prebuilt observations (the simulators' path): the encoded unknown, any value below 0 or
    # NaN there is unknown, not invalid, and never fires
    feats = np.stack([Selector(POOL).features(r) for r in reqs])
    assert feats[0, F.CLIENT_DL] == NONE_YET and feats[4, F.CLIENT_DL] == NONE_YET
    fed = Selector.load(tiny["sel"] / "dl.onnx", POOL, strict=True)
    obs = fed.select_features(feats)
    assert [(d.source, d.reason) for d in obs] == [(d.source, d.reason) for d in one]
    for unknown in (np.nan, -7.0):
        other = feats.copy()
        other[[0, 4], F.CLIENT_DL] = unknown
        other[0, F.CLIENT_DLVAR] = unknown
        assert [d.source for d in fed.select_features(other)] == want_src, unknown
    # a batch past the tiled comparison (over 4096 rows): the same verdicts
    m = 5000
    big = RequestBatch([200.0] * m, [10.0] * m, [5.0] * m, [1000.0] * m,
                       client_dl_ms=np.where(np.arange(m) % 3 == 0, np.nan, 50.0),
                       client_dlvar_ms=np.where(np.arange(m) == 7, 99.0, 5.0))  # fmt: skip
    dec = Selector.load(tiny["sel"] / "dl.onnx", POOL, strict=True).select_batch(big)
    fired = np.flatnonzero(~dec.learned)
    assert fired.tolist() == [7], [dec[i].reason for i in fired[:3]]
    assert dec[7].reason.startswith("shield: client_dlvar_ms = 99 outside training range")


def test_an_unknown_rtt_still_fires_beside_an_unknown_download_history(
    tiny: dict[str, Path],
) -> None:
    sel = Selector.load(tiny["sel"] / "both.onnx", POOL, strict=True)
    reqs = [_req(srtt=20.0), _req(), _req(50.0, 5.0, srtt=20.0), _req(500.0, 5.0, srtt=20.0)]
    one = [sel.select(r) for r in reqs]
    assert [d.source for d in one] == ["learned", "fallback", "learned", "fallback"]
    assert one[1].reason == UNKNOWN_RTT
    assert one[3].reason.startswith("shield: client_dl_ms = 500")
    batch = Selector.load(tiny["sel"] / "both.onnx", POOL, strict=True).select_batch(reqs)
    assert [d.reason for d in batch] == [d.reason for d in one]


def test_a_policy_without_download_ranges_ignores_the_history(tiny: dict[str, Path]) -> None:
    plain = Selector.load(tiny["sel"] / "a.onnx", POOL, strict=True)
    assert plain.select(_req(1e5, 1e5)).learned and plain.select(_req()).learned


def test_training_ranges_keep_the_features_seen_known() -> None:
    """A feature never seen known in training (e.g. no training client had a download
    history: NaN or the encoded "none yet") has no range, and the others are still recorded
    (not: no ranges at all)."""
    rec = RangeRecorder()
    obs = np.zeros((4, F.R + F.P * 2), dtype=np.float32)
    obs[:, F.SLA] = [100.0, 200.0, 300.0, 150.0]
    obs[:, [F.CLIENT_DL, F.CLIENT_DLVAR]] = [[np.nan, np.nan], [NONE_YET, NONE_YET]] * 2
    rec.update(obs)
    r = rec.ranges()
    assert r is not None and r.get("sla_ms") == (100.0, 300.0)
    assert r.get("client_dl_ms") is None and "client_dl_ms" not in r.names
    assert set(r.names) == set(RANGE_FEATURES) - {"client_dl_ms", "client_dlvar_ms"}
    again = RangeRecorder.from_ranges(r)  # a saved subset continues
    obs[:, F.CLIENT_DL] = [30.0, NONE_YET, 45.0, np.nan]
    again.update(obs)
    r2 = again.ranges()
    assert r2 is not None and r2.get("client_dl_ms") == (30.0, 45.0)
    assert r2.get("sla_ms") == (100.0, 300.0) and r2.observations == 8
    with pytest.raises(ValueError, match="cannot merge ranges of"):
        again.merge(FeatureRanges(("nonsense",), (0.0,), (1.0,), 1))


# ---------------------------------------------------------------- schema v2 selectors
def test_a_v2_selector_is_refused_with_what_changed(tiny: dict[str, Path]) -> None:
    why = (r"v2, this runtime builds modi.model_selection v4 \(v3 added client_dl_ms, "
           r"client_dlvar_ms; v4 added client_dl_mismatch to the request block\): "
           r"retrain it")  # fmt: skip
    with pytest.raises(SelectorLoadError, match=why):
        Selector.load(tiny["sel"] / "v2.onnx", POOL, strict=True)
    sel = Selector.load(tiny["sel"] / "v2.onnx", POOL)
    d = sel.select(_req(20.0, 1.0))
    assert not sel.learned and "v3 added client_dl_ms" in d.reason
    with pytest.raises(ServerConfigError, match=r"v2\.onnx: .*v3 added client_dl_ms"):
        InferenceServer(_cfg(tiny, "v2.onnx"))


# ---------------------------------------------------------------- the server
def test_the_server_takes_the_history_from_fields_or_headers_counts_and_logs_it(
    tiny: dict[str, Path], tmp_path: Path
) -> None:
    logf = tmp_path / "log.jsonl"
    server = InferenceServer(_cfg(tiny, "dl.onnx", decision_log=logf))
    assert server.reads_download and not server.reads_rtt
    with TestClient(create_app(server)) as c:
        r = _infer(c).json()  # a first request: no history, still the learned choice
        assert r["source"] == "learned" and r["client_dl_ms"] is None
        r = _infer(c, client_dl_ms=40.0, client_dlvar_ms=8.0).json()
        assert (r["client_dl_ms"], r["client_dlvar_ms"], r["source"]) == (40.0, 8.0, "learned")
        r = _infer(c, headers={CLIENT_DL_HEADER: "60", CLIENT_DLVAR_HEADER: "9.5",
                               CLIENT_MISMATCH_HEADER: "0.5"}).json()  # fmt: skip
        assert (r["client_dl_ms"], r["client_dlvar_ms"]) == (60.0, 9.5)
        assert r["client_dl_mismatch"] == 0.5
        r = _infer(c, client_dl_ms=900.0, client_dlvar_ms=8.0).json()  # plausible, untrained
        assert r["source"] == "fallback" and r["reason"].startswith("shield: client_dl_ms = 900")
        for params, hdr, name in (
            ({"client_dl_ms": -3}, {}, "client_dl_ms"),
            ({"client_dl_ms": "nan"}, {}, "client_dl_ms"),
            ({"client_dlvar_ms": "inf"}, {}, "client_dlvar_ms"),
            ({"client_dl_ms": "1e9"}, {}, "client_dl_ms"),
            ({}, {CLIENT_DLVAR_HEADER: "later"}, CLIENT_DLVAR_HEADER),
            ({"client_dl_ms": 5}, {CLIENT_DL_HEADER: "5"}, "not both"),
            ({"client_dl_mismatch": 21}, {}, "client_dl_mismatch = 21 exceeds 20: not plausible"),
            ({"client_dl_mismatch": -1}, {}, "client_dl_mismatch"),
            ({"client_dl_mismatch": 1}, {CLIENT_MISMATCH_HEADER: "1"}, "not both"),
        ):  # fmt: skip
            bad = _infer(c, headers=hdr, **params)
            assert bad.status_code == 400 and name in bad.json()["error"], bad.text
        health = c.get("/healthz").json()["download_history"]
        assert health == {"selector_reads_it": True, "requests": {"carried": 3, "none": 1}}
        metrics = c.get("/metrics").text
        assert 'modi_download_history_total{history="carried"} 3.0' in metrics
        assert 'modi_download_history_total{history="none"} 1.0' in metrics
    assert server.log is not None and server.log.flush()
    server.close()
    lines = [json.loads(x) for x in logf.read_text().splitlines()]
    assert len(lines) == 4
    assert lines[0]["features"][F.CLIENT_DL] is None
    assert lines[0]["features"][F.CLIENT_DLVAR] is None
    assert (lines[1]["features"][F.CLIENT_DL], lines[1]["features"][F.CLIENT_DLVAR]) == (40.0, 8.0)
    assert lines[2]["connection"]["client_dl_ms"] == 60.0
    assert lines[2]["connection"]["client_dl_mismatch"] == 0.5
    assert lines[2]["features"][F.CLIENT_MISMATCH] == 0.5
    assert lines[1]["features"][F.CLIENT_MISMATCH] is None  # none sent
    assert lines[0]["connection"]["client_dl_ms"] is None
    lg = read_decision_log(logf)
    # null reads back as the encoded unknown: the logged vector is the one the selector saw
    assert lg.features[0, F.CLIENT_DL] == NONE_YET and lg.features[1, F.CLIENT_DL] == 40.0
    assert lg.reasons[3].startswith("shield: client_dl_ms = 900")


def test_the_shadow_sees_the_history_the_champion_saw(
    tiny: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The log writes an unknown history as null; the shadow reads it back as the encoded
    unknown, so a challenger that reads the history decides on what the champion saw."""
    logf = tmp_path / "log.jsonl"
    shadow = tiny["sel"] / "dl.onnx"
    server = InferenceServer(_cfg(tiny, "dl.onnx", decision_log=logf, shadow=shadow))
    assert server.shadow is not None
    shadow_sel = server.shadow.selector
    seen: list[np.ndarray] = []
    decide = shadow_sel.select_features

    def spy(x: np.ndarray) -> Any:
        seen.append(np.array(x))
        return decide(x)

    monkeypatch.setattr(shadow_sel, "select_features", spy)
    with TestClient(create_app(server)) as c:
        assert _infer(c).json()["source"] == "learned"
        assert _infer(c, client_dl_ms=50.0, client_dlvar_ms=5.0).json()["source"] == "learned"
    assert server.log is not None and server.log.flush()
    server.close()
    x = np.concatenate(seen)
    assert x.shape[0] == 2 and (x[0, [F.CLIENT_DL, F.CLIENT_DLVAR]] == NONE_YET).all()
    assert x[1, F.CLIENT_DL] == 50.0
    assert shadow_sel.counts["learned"] == 2 and shadow_sel.counts["shield"] == 0
    lg = read_decision_log(logf)
    assert lg.has_shadow.all() and (lg.shadow_actions == lg.actions).all()


def test_a_selector_that_ignores_the_history_is_unaffected(tiny: dict[str, Path]) -> None:
    server = InferenceServer(_cfg(tiny))
    assert not server.reads_download
    with TestClient(create_app(server)) as c:
        assert _infer(c, client_dl_ms=5e5, client_dlvar_ms=1.0).json()["source"] == "learned"
        assert c.get("/healthz").json()["download_history"]["selector_reads_it"] is False
    server.close()


# ---------------------------------------------------------------- logs of schema v1, v2, v3
def test_v1_and_v2_decision_logs_read_with_the_history_unknown(
    tiny: dict[str, Path], tmp_path: Path
) -> None:
    logf = tmp_path / "new.jsonl"
    server = InferenceServer(_cfg(tiny, decision_log=logf))
    with TestClient(create_app(server)) as c:
        for dl in (20.0, 30.0):
            r = _infer(c, srtt_ms=15.0, rttvar_ms=2.0, client_dl_ms=dl, client_dlvar_ms=1.0)
            assert r.status_code == 200
    assert server.log is not None and server.log.flush()
    server.close()
    recs = [json.loads(x) for x in logf.read_text().splitlines()]
    new = read_decision_log(logf)
    assert (new.features[:, F.CLIENT_DL] == [20.0, 30.0]).all()
    v3 = (f"{F.SCHEMA_NAME} v3", SCHEMA_REQUEST_DIMS[3])  # before client_dl_mismatch
    for schema, dim in (v3, (SCHEMA_V2, V2_REQUEST_DIM), (SCHEMA_V1, V1_REQUEST_DIM)):
        old = [{**r, "schema": schema, "features": r["features"][:dim] + r["features"][F.R :]}
               for r in recs]  # fmt: skip
        if schema == SCHEMA_V2:  # a v2 server wrote an unknown RTT as null
            old[1]["features"][F.RTTVAR] = None
        path = tmp_path / f"old{dim}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in old))
        lg = read_decision_log(path)
        assert lg.schema == F.ObsLayout.schema and lg.features.shape == new.features.shape
        for c in range(dim, F.R):  # what that version lacked: unknown, as encoded today
            np.testing.assert_array_equal(lg.features[:, c], UNKNOWN_VALUES[c])
        assert UNKNOWN_VALUES[F.CLIENT_DL] == NONE_YET and math.isnan(UNKNOWN_VALUES[F.SRTT])
        np.testing.assert_array_equal(lg.features[:, :dim][0], new.features[0, :dim])
        np.testing.assert_array_equal(lg.features[:, F.R :], new.features[:, F.R :])
        if schema == SCHEMA_V2:
            assert np.isnan(lg.features[1, F.RTTVAR]) and lg.features[1, F.SRTT] == 15.0
        short = tmp_path / f"short{dim}.jsonl"
        short.write_text(json.dumps({**old[0], "features": old[0]["features"][:-1]}) + "\n")
        with pytest.raises(ValueError, match=rf"field 'features'.*schema {schema} with 2 models"):
            read_decision_log(short)
        mixed = tmp_path / f"mixed{dim}.jsonl"  # old records beside new ones: one log
        mixed.write_text(json.dumps(old[0]) + "\n" + json.dumps(recs[1]) + "\n")
        assert read_decision_log(mixed).features.shape == (2, new.features.shape[1])
    # a v1 record cannot carry null where v1 had no optional column
    feats = recs[0]["features"][:V1_REQUEST_DIM] + recs[0]["features"][F.R :]
    v1 = {**recs[0], "schema": SCHEMA_V1, "features": feats}
    v1["features"][F.SLA] = None
    (tmp_path / "null.jsonl").write_text(json.dumps(v1) + "\n")
    with pytest.raises(ValueError, match=rf"features\[{F.SLA}\].*finite number"):
        read_decision_log(tmp_path / "null.jsonl")


# ---------------------------------------------------------------- the clients
def test_download_history_folds_what_the_client_measures() -> None:
    h = DownloadHistory()
    assert h.fields() == {}  # a first request carries none
    assert h.record(130.0, 30.0, 100.0) == 100.0
    # the download took as long as the request's upload: mismatch 0
    assert h.fields() == {"client_dl_ms": 100.0, "client_dlvar_ms": 50.0,
                          "client_dl_mismatch": 0.0, "prev_download_ms": 100.0}  # fmt: skip
    assert h.record(20.0, 30.0, 5.0) == 0.0  # a server time beyond the response time: no download
    dl, var = F.client_dl_update(*F.client_dl_update(math.nan, math.nan, 100.0), 0.0)
    assert (h.dl_ms, h.dlvar_ms, h.last_ms) == (dl, var, 0.0)
    # a download of 0 against an upload of 5 ms: ln(5 / 0.01) (the floor), folded with gain 1/4
    want = F.CLIENT_MISMATCH_GAIN * math.log(5.0 / F.MISMATCH_FLOOR_MS)
    assert h.mismatch == pytest.approx(want) and h.fields()["client_dl_mismatch"] == round(want, 6)


def test_modi_client_sends_its_history_from_its_second_request_on(
    tiny: dict[str, Path], tmp_path: Path
) -> None:
    import httpx

    logf = tmp_path / "log.jsonl"
    server = InferenceServer(_cfg(tiny, decision_log=logf))
    app = create_app(server)
    _, rows = asyncio.run(run_clients(
        "http://modi.test", 800.0, 3, 1, network="campus", images="digits",
        transport=httpx.ASGITransport(app=app),
    ))  # fmt: skip
    assert server.log is not None and server.log.flush()
    server.close()
    assert [r["ok"] for r in rows] == [True] * 3
    recs = [json.loads(x) for x in logf.read_text().splitlines()]
    assert [r["request_id"] for r in recs] == [r["request_id"] for r in rows]
    assert recs[0]["features"][F.CLIENT_DL] is None and rows[0]["client_dl_ms"] is None
    assert recs[0]["connection"]["prev_download_ms"] is None
    dl = dlvar = mis = math.nan
    for i in (1, 2):
        prev = rows[i - 1]
        # the download contains the emulated download leg, not the server's time
        assert prev["download_ms"] >= prev["t_out_ms"] - 1.0, prev
        dl, dlvar = F.client_dl_update(dl, dlvar, prev["download_ms"])
        conn = recs[i]["connection"]
        assert conn["client_dl_ms"] == round(dl, 3) and conn["client_dlvar_ms"] == round(dlvar, 3)
        assert conn["prev_download_ms"] == round(prev["download_ms"], 3)
        # each download against the upload_ms the same request carried
        mis = F.client_mismatch_update(mis, prev["download_ms"], round(prev["t_in_ms"], 3))
        assert conn["client_dl_mismatch"] == round(mis, 6)
        assert recs[i]["features"][F.CLIENT_DL] == float(np.float32(round(dl, 3)))
    assert server.downloads.counts == {"carried": 2, "none": 1}


def test_an_emulated_phone_sends_its_history_from_its_second_offload_on(
    tiny: dict[str, Path], tmp_path: Path
) -> None:
    import httpx

    logf = tmp_path / "log.jsonl"
    server = InferenceServer(_cfg(tiny, decision_log=logf))
    app = create_app(server)
    _, rows = asyncio.run(run_phones(
        "http://modi.test", "mid", "static_remote", None, 2000.0, 3, 1, "link_wifi", "digits",
        transport=httpx.ASGITransport(app=app),
    ))  # fmt: skip
    assert server.log is not None and server.log.flush()
    server.close()
    assert all(r["placement"] == "offload" and "model_id" in r for r in rows), rows
    recs = [json.loads(x) for x in logf.read_text().splitlines()]
    assert len(recs) == 3 and recs[0]["features"][F.CLIENT_DL] is None
    dl = dlvar = math.nan
    for i in (1, 2):
        dl, dlvar = F.client_dl_update(dl, dlvar, rows[i - 1]["download_ms"])
        assert recs[i]["connection"]["client_dl_ms"] == round(dl, 3)
        assert recs[i]["features"][F.CLIENT_DLVAR] == float(np.float32(round(dlvar, 3)))
