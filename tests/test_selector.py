"""The serving selector: loading and refusing files, the fallback and its reasons, the shield,
reloads, threads, batch decisions, features identical to the simulator's, and that the runtime
installs and imports without the training stack."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch

from modi.agents.export import export_onnx
from modi.envs.catalog import load_preset
from modi.envs.model_selection import ModelSelectionEnv, build_sim
from modi.runtime import (
    Decision,
    InvalidRequest,
    PoolProfile,
    PoolProfileError,
    Request,
    RequestBatch,
    RequestLimits,
    Selector,
    SelectorLoadError,
)
from modi.runtime import features as F
from modi.runtime.clients import ClientNetworkHistory

REPO = Path(__file__).resolve().parents[1]
TABLE2 = PoolProfile.from_pool(load_preset("pool", "modipick_table2"))


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def files(
    trained_linucb: Any, bandit_selector_files: dict[str, Path], tmp_path_factory: Any
) -> dict[str, Path]:
    """A trained LinUCB (pool-agnostic and pool-specific), a 'most accurate model' selector
    (P(met) = 1 for every model) that the shield has to correct, and a corrupt file."""
    d = tmp_path_factory.mktemp("sel")
    corrupt = d / "corrupt.onnx"
    corrupt.write_bytes(os.urandom(2048))
    pol = trained_linucb
    return {
        "linucb": bandit_selector_files["linucb"],
        "greedy": bandit_selector_files["greedy"],
        "specific": export_onnx(
            pol, d / "specific.onnx", list(TABLE2.ids), pool_accuracy=list(TABLE2.accuracy)
        ),
        "corrupt": corrupt,
    }


def _request(sla: float = 200.0, upload: float = 40.0, client: Any = "c1") -> Request:
    return Request(sla, upload, upload, 330_000.0, client)


def _with_props(src: Path, dst: Path, **changes: str) -> Path:
    model = onnx.load(str(src))
    for p in model.metadata_props:
        if p.key in changes:
            p.value = changes[p.key]
    onnx.save(model, str(dst))
    return dst


# --------------------------------------------------------------------------- loading
def test_loaded_selector_answers_with_a_learned_decision(files: dict[str, Path]) -> None:
    sel = Selector.load(files["linucb"], TABLE2, strict=True)
    assert sel.learned and sel.status.startswith("learned")
    assert sel.metadata is not None and sel.metadata.training_run_id == "r1"
    d = sel.select(_request())
    assert isinstance(d, Decision) and d.source == "learned" and d.reason == ""
    assert d.model_id == TABLE2.ids[d.index]


def test_pool_agnostic_selector_serves_any_pool(files: dict[str, Path]) -> None:
    other = PoolProfile.from_pool(load_preset("pool", "mdinference_p2"))
    sel = Selector.load(files["linucb"], other, strict=True)
    assert sel.select(_request(sla=300.0)).model_id in other.ids
    tiny = PoolProfile.from_lists(["only"], [0.7], [10.0], [1.0])
    assert Selector.load(files["linucb"], tiny, strict=True).select(_request()).index == 0


def test_mismatched_feature_schema_is_refused_with_the_reason(
    files: dict[str, Path], tmp_path: Path
) -> None:
    bad = _with_props(files["linucb"], tmp_path / "v99.onnx", **{"modi.schema_version": "99"})
    sel = Selector.load(bad, TABLE2)
    assert not sel.learned
    assert "feature schema mismatch" in sel.status and "v99" in sel.status
    d = sel.select(_request())
    assert d.source == "fallback" and "no learned model" in d.reason and "schema" in d.reason
    with pytest.raises(SelectorLoadError, match="schema"):
        Selector.load(bad, TABLE2, strict=True)
    renamed = _with_props(
        files["linucb"], tmp_path / "cols.onnx", **{"modi.request_features": '["a"]'}
    )
    with pytest.raises(SelectorLoadError, match="request feature columns"):
        Selector.load(renamed, TABLE2, strict=True)


def test_pool_specific_selector_refuses_another_pool(files: dict[str, Path]) -> None:
    assert Selector.load(files["specific"], TABLE2, strict=True).learned
    other = PoolProfile.from_pool(load_preset("pool", "mdinference_p2"))
    with pytest.raises(SelectorLoadError, match="pool mismatch"):
        Selector.load(files["specific"], other, strict=True)
    ids = list(TABLE2.ids)
    reordered = PoolProfile.from_lists(
        ids[::-1], TABLE2.accuracy[::-1], TABLE2.mean_ms[::-1], TABLE2.std_ms[::-1]
    )
    with pytest.raises(SelectorLoadError, match="in that order"):
        Selector.load(files["specific"], reordered, strict=True)
    requantised = PoolProfile.from_lists(
        ids, [a - 0.06 for a in TABLE2.accuracy], TABLE2.mean_ms, TABLE2.std_ms
    )
    sel = Selector.load(files["specific"], requantised)
    assert not sel.learned and "fingerprint" in sel.status
    assert sel.select(_request()).source == "fallback"


@pytest.mark.parametrize(
    ("case", "expected"),
    [("missing", "does not exist"), ("corrupt", "not a loadable ONNX"), ("plain", "no modi")],
)
def test_unusable_files_leave_the_selector_on_the_fallback(
    case: str, expected: str, files: dict[str, Path], tmp_path: Path
) -> None:
    if case == "missing":
        path = tmp_path / "nope.onnx"
    elif case == "corrupt":
        path = files["corrupt"]
    else:  # a valid ONNX file that is not a modi selector
        model = onnx.load(str(files["linucb"]))
        del model.metadata_props[:]
        path = tmp_path / "plain.onnx"
        onnx.save(model, str(path))
    sel = Selector.load(path, TABLE2)
    assert not sel.learned and expected in sel.status
    d = sel.select(_request())
    assert d.source == "fallback" and expected in d.reason
    with pytest.raises(SelectorLoadError, match=expected):
        Selector.load(path, TABLE2, strict=True)


def test_mlflow_uri_without_mlflow_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)
    monkeypatch.setitem(sys.modules, "mlflow.artifacts", None)
    sel = Selector.load("models:/modi-selector@champion", TABLE2)
    assert not sel.learned and "mlflow is not installed" in sel.status


def test_selector_without_a_file_serves_modipick() -> None:
    sel = Selector(TABLE2, seed=0)
    d = sel.select(_request(sla=150.0, upload=40.0))
    assert d.source == "fallback" and d.reason.startswith("no learned model")
    mu = np.asarray(TABLE2.mean_ms) + np.asarray(TABLE2.std_ms)
    assert mu[d.index] < 150.0 - 80.0, "ModiPick's choice respects mu + sigma < T_U"


# --------------------------------------------------------------------------- bad input
BAD_REQUESTS: list[tuple[Any, str]] = [
    (Request(float("nan"), 10.0, 10.0, 1000.0), "sla_ms is NaN"),
    (Request(200.0, float("inf"), 10.0, 1000.0), "elapsed_ms is infinite"),
    (Request(200.0, 10.0, -5.0, 1000.0), "upload_ms must be >= 0"),
    (Request(-1.0, 10.0, 10.0, 1000.0), "sla_ms must be > 0"),
    (Request(1e12, 10.0, 10.0, 1000.0), "exceeds the limit"),
    (Request(200.0, 10.0, 10.0, 1e15), "payload_bytes"),
    (Request(200.0, 10.0, 10.0, 1000.0, queue_len=-1.0), "queue_len"),
    (Request(200.0, 10.0, 10.0, 1000.0, slowdown=0.0), "slowdown must be > 0"),
    (Request(200.0, 10.0, 10.0, 1000.0, client_id=["x"]), "client_id must be hashable"),
    ({"sla_ms": 200.0, "elapsed_ms": 10.0, "payload_bytes": 10.0}, "missing field 'upload_ms'"),
    ({"sla_ms": "fast", "elapsed_ms": 1, "upload_ms": 1, "payload_bytes": 1}, "must be a number"),
    ({"sla_ms": True, "elapsed_ms": 1, "upload_ms": 1, "payload_bytes": 1}, "must be a number"),
    (None, "must be a modi.runtime.Request or a mapping"),
    (42, "must be a modi.runtime.Request or a mapping"),
]


@pytest.mark.parametrize(("request_", "expected"), BAD_REQUESTS)
def test_invalid_requests_get_modipick_and_the_reason(
    request_: Any, expected: str, files: dict[str, Path]
) -> None:
    sel = Selector.load(files["linucb"], TABLE2, strict=True)
    d = sel.select(request_)
    assert d.source == "fallback"
    assert d.reason.startswith("invalid request") and expected in d.reason, d.reason
    assert 0 <= d.index < TABLE2.num_models and d.model_id == TABLE2.ids[d.index]
    assert sel.counts["invalid"] == 1
    with pytest.raises(InvalidRequest):
        sel.features(request_)


def test_mapping_requests_are_accepted(files: dict[str, Path]) -> None:
    sel = Selector.load(files["linucb"], TABLE2, strict=True)
    d = sel.select({"sla_ms": 200, "elapsed_ms": 40, "upload_ms": 40, "payload_bytes": 330000})
    assert d.source == "learned"


def test_inference_failure_falls_back_with_the_reason(files: dict[str, Path]) -> None:
    sel = Selector.load(files["linucb"], TABLE2, strict=True)

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("device lost")

    object.__setattr__(sel._model, "run_one", broken)
    object.__setattr__(sel._model, "run_batch", broken)
    d = sel.select(_request())
    assert d.source == "fallback" and "inference failed" in d.reason and "device lost" in d.reason
    ds = sel.select_batch([_request(), _request(client="c2")])
    assert not ds.learned.any() and all("device lost" in r for r in ds.reasons)


# --------------------------------------------------------------------------- shield
def test_budget_shield_replaces_a_choice_that_breaks_the_hard_limit(
    files: dict[str, Path],
) -> None:
    """The earlier shield, kept as ``shield="budget"``."""
    # The 'greedy' selector always picks the most accurate model (NasNet Large, mu ~ 113 ms).
    req = _request(sla=160.0, upload=40.0)  # T_U = 160 - 40 - 40 = 80 ms
    off = Selector.load(files["greedy"], TABLE2, shield=False, strict=True)
    d_off = off.select(req)
    assert d_off.source == "learned" and d_off.model_id == "nasnet_large"
    on = Selector.load(files["greedy"], TABLE2, seed=0, strict=True, shield="budget")
    d = on.select(req)
    assert d.source == "fallback" and d.reason.startswith("shield")
    assert "nasnet_large" in d.reason
    assert TABLE2.mean_ms[d.index] + TABLE2.std_ms[d.index] < 80.0
    assert on.counts["shield"] == 1


def test_budget_shield_keeps_the_learned_choice_when_modipick_cannot_do_better(
    files: dict[str, Path],
) -> None:
    sel = Selector.load(files["greedy"], TABLE2, strict=True, shield="budget")
    d = sel.select(_request(sla=60.0, upload=40.0))  # T_U = -20 ms: nothing fits
    assert d.source == "learned" and d.model_id == "nasnet_large"
    assert sel.select(_request(sla=400.0, upload=40.0)).source == "learned"  # it fits


def test_calibrated_shield_fires_far_outside_the_training_range(files: dict[str, Path]) -> None:
    sel = Selector.load(files["linucb"], TABLE2, seed=0, strict=True)
    assert sel.shield_mode == "range" and "nothing to check" not in sel.status
    ranges = sel.metadata.training_ranges if sel.metadata else None
    assert ranges is not None and ranges.observations >= 9_000
    # A linear bandit reads the headrooms only: its ranges (and the shield) cover those.
    assert ranges.get("t_input_ms") is None and ranges.get("queue_len") is None
    lo, hi = ranges.get("remaining_ms")  # type: ignore[misc]
    sla = 10.0 * hi
    far = Request(sla, 40.0, 40.0, 330_000.0, "far")
    d = sel.select(far)
    assert d.source == "fallback" and d.reason.startswith("shield: remaining_ms = "), d.reason
    assert f"outside training range [{lo:.6g}, {hi:.6g}] (+25%)" in d.reason, d.reason
    assert sel.counts["shield"] == 1 and sel.counts["learned"] == 0
    ds = Selector.load(files["linucb"], TABLE2, seed=0, strict=True).select_batch(
        [_request(), Request(sla, 40.0, 40.0, 330_000.0, "far")]
    )
    assert ds.learned.tolist() == [True, False] and ds.reasons[1] == d.reason
    # In range again: the learned model answers; a queue it does not read is not checked.
    assert sel.select(_request(sla=200.0, upload=40.0)).source == "learned"
    q = sel.select(Request(200.0, 40.0, 40.0, 330_000.0, "q", queue_len=3.0))
    assert q.source == "learned", q.reason
    # Off, or the earlier budget shield: no range check.
    assert Selector.load(files["linucb"], TABLE2, shield=False).select(far).source == "learned"
    assert Selector.load(files["linucb"], TABLE2, shield="budget").select(far).reason[:7] != (
        "shield: remaining"
    )


@pytest.mark.parametrize("n", [3, 4097], ids=["small", "past-the-flat-bounds"])
def test_calibrated_shield_flags_the_same_rows_in_a_batch(n: int, files: dict[str, Path]) -> None:
    rng = np.random.default_rng(n)
    up = rng.uniform(5.0, 120.0, n)
    sla = rng.uniform(60.0, 390.0, n)
    far = [0, n // 2, n - 1]
    up[far[0]] = 5000.0
    sla[far[1]] = 5000.0
    cols = RequestBatch(sla, up, up, np.full(n, 330e3), queue_len=np.where(up > 110, 2.0, 0.0))
    ds = Selector.load(files["linucb"], TABLE2, strict=True).select_batch(cols)
    one = Selector.load(files["linucb"], TABLE2, strict=True)
    fired = [i for i, r in enumerate(ds.reasons) if r.startswith("shield: ")]
    assert set(far[:2]) <= set(fired) and len(fired) < n
    for i in {*fired[:20], *far, 1}:
        d = one.select(cols.row(i))
        assert d.reason == ds.reasons[i] and d.learned == ds.learned[i], (i, d, ds.reasons[i])
    assert ds.reasons[far[1]].startswith("shield: remaining_ms = 49")  # SLA 5000 ms
    assert ds.reasons[far[0]].startswith("shield: remaining_ms = -")  # upload 5000 ms


def test_calibrated_shield_checks_the_profiles_too(files: dict[str, Path]) -> None:
    """Profiles that drift past the training range of mu fire the shield for every request, in
    select, select_batch and select_features alike."""
    sel = Selector.load(files["linucb"], TABLE2, seed=0, strict=True, profile_alpha=1.0)
    assert sel.select(_request()).source == "learned"
    assert sel.observe("nasnet_large", 900.0)
    d = sel.select(_request())
    assert d.reason.startswith("shield: mu_ms of model 'nasnet_large' = 900 outside"), d.reason
    assert sel.select_batch([_request(client="b")]).reasons == [d.reason]
    obs = sel.features(_request(client="c"))
    assert sel.select_features(obs).reasons == [d.reason]
    assert sel.observe("nasnet_large", float(TABLE2.mean_ms[-1]))
    assert sel.select(_request()).source == "learned"


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1, 1.5, math.nan, math.inf, True, "0.1", None])
def test_shield_tolerance_outside_0_1_is_refused(bad: Any, files: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match=r"shield_tolerance must be a number in \(0, 1\)"):
        Selector(TABLE2, shield_tolerance=bad)
    with pytest.raises(ValueError, match="shield_tolerance"):
        Selector.load(files["linucb"], TABLE2, shield_tolerance=bad)


def test_unknown_shield_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="shield must be"):
        Selector(TABLE2, shield="modipick")  # type: ignore[arg-type]


def test_a_file_without_training_ranges_loads_and_the_shield_has_nothing_to_check(
    files: dict[str, Path], tmp_path: Path
) -> None:
    model = onnx.load(str(files["linucb"]))
    keep = [p for p in model.metadata_props if p.key != "modi.training_ranges"]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    for p in model.metadata_props:
        if p.key == "modi.metadata_version":
            p.value = "1"
    old = tmp_path / "v1.onnx"
    onnx.save(model, str(old))
    sel = Selector.load(old, TABLE2, strict=True)
    assert sel.learned and sel.metadata is not None and sel.metadata.training_ranges is None
    assert sel.status.startswith("learned") and "nothing to check" in sel.status
    assert "no training ranges" in sel.status
    up = 5000.0
    assert sel.select(Request(400.0, up, up, 330_000.0)).source == "learned"
    assert sel.counts["shield"] == 0
    assert "nothing to check" not in Selector.load(old, TABLE2, shield=False).status


def test_shield_precheck_agrees_with_the_modipick_rule() -> None:
    from modi.runtime import modipick_select

    rng = np.random.default_rng(4)
    sel = Selector(TABLE2, seed=0)
    for _ in range(100):
        sel.observe(TABLE2.ids[int(rng.integers(11))], float(rng.uniform(1, 150)))
    mu, sigma = sel.profiles
    for budget in rng.uniform(-20, 160, 400):
        b = float(np.float32(budget))
        picks = modipick_select(
            np.full(20, b), mu, sigma, np.asarray(TABLE2.accuracy), rng.random(20)
        )
        respects = {bool(mu[m] + sigma[m] < b) for m in picks.tolist()}
        assert respects == {sel._modipick_respects(b)}, f"budget {b}: {respects}"


# --------------------------------------------------------------------------- reload, threads
def test_reload_swaps_atomically_and_a_bad_file_keeps_the_old_model(
    files: dict[str, Path],
) -> None:
    sel = Selector.load(files["linucb"], TABLE2, strict=True)
    assert sel.reload(files["greedy"])
    assert sel.metadata is not None and sel.metadata.training_run_id == "r2"
    assert not sel.reload(files["corrupt"])
    assert sel.learned and sel.metadata.training_run_id == "r2"
    assert "not a loadable ONNX" in sel.last_error
    with pytest.raises(SelectorLoadError):
        sel.reload(files["corrupt"], strict=True)
    assert sel.select(_request(sla=400.0)).source == "learned"


def test_many_threads_select_while_the_model_is_reloaded(files: dict[str, Path]) -> None:
    sel = Selector.load(files["linucb"], TABLE2, strict=True)
    errors: list[BaseException] = []
    decisions: list[Decision] = []
    lock = threading.Lock()
    stop = threading.Event()

    def worker(seed: int) -> None:
        rng = np.random.default_rng(seed)
        local = []
        try:
            while not stop.is_set() and len(local) < 400:
                up = float(rng.uniform(1, 200))
                req: Any = Request(float(rng.uniform(20, 500)), up, up, 330e3, int(seed % 3))
                if rng.random() < 0.1:
                    req = Request(float("nan"), up, up, 1.0)
                if rng.random() < 0.2:
                    ds = sel.select_batch([req, _request(client=seed)])
                    local.extend(ds)
                else:
                    local.append(sel.select(req))
                if rng.random() < 0.05:
                    sel.observe(TABLE2.ids[int(rng.integers(11))], float(rng.uniform(1, 120)))
        except BaseException as e:
            errors.append(e)
        with lock:
            decisions.extend(local)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for i in range(12):
        sel.reload(files["greedy" if i % 2 else "linucb"])
        sel.reload(files["corrupt"])
    stop.set()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    assert len(decisions) > 100
    for d in decisions:
        assert 0 <= d.index < TABLE2.num_models and d.model_id == TABLE2.ids[d.index]
        assert d.source in ("learned", "fallback") and (d.source == "learned") == (not d.reason)


# --------------------------------------------------------------------------- batches
def test_batch_decisions_equal_one_by_one_decisions(files: dict[str, Path]) -> None:
    rng = np.random.default_rng(5)
    reqs: list[Any] = []
    for i in range(300):
        up = float(rng.uniform(1, 250))
        reqs.append(Request(float(rng.uniform(30, 450)), up + 3.0, up, 330e3, int(i % 17)))
    reqs[7] = Request(200.0, 10.0, -1.0, 1.0, 3)
    reqs[8] = {"sla_ms": 100.0}
    one = Selector.load(files["linucb"], TABLE2, strict=True)
    many = Selector.load(files["linucb"], TABLE2, strict=True)
    singles = [one.select(r) for r in reqs]
    batch = many.select_batch(reqs)
    assert len(batch) == len(reqs)
    for i, (a, b) in enumerate(zip(singles, batch, strict=True)):
        assert a.source == b.source, (i, a, b)
        if a.source == "learned":
            assert a.index == b.index, (i, a, b)
        else:
            assert a.reason.split(":")[0] == b.reason.split(":")[0], (i, a.reason, b.reason)
    assert "upload_ms must be >= 0" in batch[7].reason
    assert "missing field 'elapsed_ms'" in batch[8].reason
    cols = RequestBatch.from_requests([r for r in reqs if isinstance(r, Request)])
    again = Selector.load(files["linucb"], TABLE2, strict=True).select_batch(cols)
    expected = [d.index for d, r in zip(singles, reqs, strict=True) if isinstance(r, Request)]
    learned = [d.learned for d, r in zip(singles, reqs, strict=True) if isinstance(r, Request)]
    assert [i for i, ok in zip(again.index.tolist(), learned, strict=True) if ok] == [
        i for i, ok in zip(expected, learned, strict=True) if ok
    ]


def test_a_multithreaded_batch_session_decides_the_same(files: dict[str, Path]) -> None:
    rng = np.random.default_rng(8)
    up = rng.uniform(1, 250, 2000)
    cols = RequestBatch(rng.uniform(30, 450, 2000), up, up, np.full(2000, 330e3))
    one = Selector.load(files["linucb"], TABLE2, strict=True).select_batch(cols)
    two = Selector.load(files["linucb"], TABLE2, strict=True, batch_threads=2).select_batch(cols)
    assert np.array_equal(one.learned, two.learned)
    assert np.array_equal(one.index[one.learned], two.index[two.learned])


def test_empty_batch_and_garbage_batch_never_raise(files: dict[str, Path]) -> None:
    sel = Selector.load(files["linucb"], TABLE2, strict=True)
    assert len(sel.select_batch([])) == 0
    ds = sel.select_batch([None, 3, "x"])  # type: ignore[list-item]
    assert len(ds) == 3 and not ds.learned.any()


def test_client_history_batch_update_equals_sequential_updates() -> None:
    rng = np.random.default_rng(0)
    clients: list[Any] = [int(c) for c in rng.integers(0, 6, 500)]
    clients[::11] = [None] * len(clients[::11])
    up = rng.uniform(1, 200, 500)
    seq = ClientNetworkHistory()
    batch = ClientNetworkHistory()
    want = [seq.update_one(c, float(x)) for c, x in zip(clients, up, strict=True)]
    got_m, got_s = batch.update(clients[:250], up[:250])
    more_m, more_s = batch.update(clients[250:], up[250:])
    np.testing.assert_array_equal(np.concatenate([got_m, more_m]), [w[0] for w in want])
    np.testing.assert_array_equal(np.concatenate([got_s, more_s]), [w[1] for w in want])
    # The first request of a client reports its own upload time and 0 (as the simulator).
    first = clients.index(3)
    assert (want[first][0], want[first][1]) == (up[first], 0.0)


@pytest.mark.parametrize("streams", [1, 3])
def test_client_history_is_the_simulators_arithmetic(streams: int) -> None:
    sim = build_sim(num_envs=streams, num_clients=5)
    rng = np.random.default_rng(streams)
    clients = rng.integers(0, 5, (400, streams))
    t_in = rng.gamma(2.0, 30.0, (400, streams))
    want_m, want_s = sim._client_history(clients, t_in)  # the simulator's own code
    hist = ClientNetworkHistory()
    for j in range(400):  # requests in time order; each stream has its own clients
        keys = [(e, int(c)) for e, c in enumerate(clients[j])]
        m, s = hist.update(keys, t_in[j])
        np.testing.assert_array_equal(m, want_m[j], err_msg=f"row {j}")
        np.testing.assert_array_equal(s, want_s[j], err_msg=f"row {j}")


def test_client_history_forgets_the_least_recently_seen_clients() -> None:
    hist = ClientNetworkHistory(max_clients=8)
    for i in range(100):
        hist.update_one(f"c{i}", 10.0)
        assert len(hist) <= 8
    assert "c99" in hist and "c0" not in hist
    assert hist.peek("c99", 50.0) == (10.0, 0.0)
    assert hist.peek("c0", 50.0) == (50.0, 0.0), "a forgotten client starts afresh"


# --------------------------------------------------------------------------- features
def test_fast_path_features_equal_features_encode_bit_for_bit() -> None:
    rng = np.random.default_rng(1)
    sel = Selector(TABLE2)
    for _ in range(200):
        sel.observe(TABLE2.ids[int(rng.integers(11))], float(rng.uniform(1, 150)))
    mu, sigma = sel.profiles
    for i in range(300):
        sla, el, up = rng.uniform(1, 600), rng.uniform(0, 300), rng.uniform(0, 300)
        pay, q, s = rng.uniform(0, 5e6), float(rng.integers(0, 9)), rng.uniform(0.5, 4)
        req = Request(sla, el, up, pay, client_id=None, queue_len=q, slowdown=s)
        got = sel.features(req)
        want = F.encode(sla, el, up, pay / 1000.0, up, 0.0, q, s, mu, sigma, TABLE2.accuracy)
        np.testing.assert_array_equal(got, want[0], err_msg=f"request {i}: {req}")


def test_pack_request_writes_what_encode_requests_writes() -> None:
    rng = np.random.default_rng(4)
    odd = [math.nan, -0.0, 1e-40, -1e-45, 3.4e38, 7, np.float64(0.1), -math.nan, 1e39, 10**39]
    cases = [[float(x) for x in rng.uniform(-1e6, 1e6, 8) * rng.choice([1e-3, 1.0, 1e3], 8)]
             for _ in range(500)]  # fmt: skip
    cases += [[odd[(i + j) % len(odd)] for j in range(8)] for i in range(len(odd))]
    for v in cases:
        got = np.zeros(F.R, np.float32)
        F.pack_request(got.data, *v)
        with np.errstate(over="ignore", invalid="ignore"):
            want = F.encode_requests(*(np.float64(x) for x in v))
        np.testing.assert_array_equal(got.view(np.int32), want.view(np.int32), err_msg=str(v))


def test_time_before_the_upload_is_taken_off_the_sla(files: dict[str, Path]) -> None:
    """A request that spent d ms before its upload (preprocessing on the phone) is encoded as
    the request with SLA - d that spent none: the time left (remaining, budget) is unchanged,
    and a selector decides the same for both."""
    req = F.encode_requests(300.0, 260.0, 50.0, 330.0, 50.0, 0.0, 0.0, 1.0)
    same = F.encode_requests(90.0, 50.0, 50.0, 330.0, 50.0, 0.0, 0.0, 1.0)
    raw = F.encode_requests(300.0, 50.0, 50.0, 330.0, 50.0, 0.0, 0.0, 1.0)
    np.testing.assert_array_equal(req, same)
    assert req[F.SLA] == 90.0 and req[F.ELAPSED] == 50.0 and req[F.REMAINING] == 40.0
    assert raw[F.SLA] == 300.0 and raw[F.ELAPSED] == 50.0, "nothing before the upload: as given"
    # an upload reported longer than the time since capture (clocks): nothing is taken off
    early = F.encode_requests(300.0, 20.0, 50.0, 330.0, 50.0, 0.0, 0.0, 1.0)
    assert early[F.SLA] == 300.0 and early[F.ELAPSED] == 20.0 and early[F.BUDGET] == 230.0
    sel = Selector.load(files["linucb"], TABLE2, strict=True)
    for sla, before, up in [(300.0, 210.0, 40.0), (500.0, 120.0, 15.0), (250.0, 30.0, 80.0)]:
        a = Request(sla, before + up, up, 330_000.0, client_id=None)
        b = Request(sla - before, up, up, 330_000.0, client_id=None)
        np.testing.assert_array_equal(sel.features(a), sel.features(b))
        assert sel.select(a).index == sel.select(b).index


@pytest.mark.parametrize("k", [1, 40], ids=["one-model", "40-models"])
def test_fast_path_features_of_other_pool_sizes_and_beyond_float32(k: int) -> None:
    """Pools past the item-by-item slack path, and values only raised limits admit (float32
    overflows to inf, as numpy stores it)."""
    rng = np.random.default_rng(k)
    pool = PoolProfile.from_lists(
        [f"m{i}" for i in range(k)],
        rng.uniform(0.4, 0.9, k).tolist(),
        rng.uniform(1, 300, k).tolist(),
        rng.uniform(0, 30, k).tolist(),
    )
    sel = Selector(pool, limits=RequestLimits(max_sla_ms=1e300, max_upload_ms=1e300))
    mu, sigma = sel.profiles
    for sla, up in [(150.0, 40.0), (3e38, 1.0), (1e39, 5.0), (1e39, 1e39), (400.0, 3.5e38)]:
        got = sel.features(Request(sla, 0.0, up, 1e3, client_id=None))
        with np.errstate(over="ignore", invalid="ignore"):
            want = F.encode(sla, 0.0, up, 1.0, up, 0.0, 0.0, 1.0, mu, sigma, pool.accuracy)
        np.testing.assert_array_equal(got, want[0], err_msg=f"sla {sla}, upload {up}")


def test_selector_features_equal_the_env_observation_for_the_same_requests() -> None:
    env = ModelSelectionEnv(
        pool="modipick_table2", num_clients=1, sla_range_ms=(50.0, 400.0), reprofile_every=0
    )
    sim = env.sim
    sel = Selector(PoolProfile.from_pool(sim.pool), profile_alpha=sim.tracker.alpha)
    obs, _ = env.reset(seed=11)
    rng = np.random.default_rng(2)
    for step in range(400):
        _, _, _, _, info = env.step(int(rng.integers(sim.num_models)))
        # the connection's RTT as the env's TCP view reports it (its observation's columns)
        srtt, rttvar = float(obs[F.SRTT]), float(obs[F.RTTVAR])
        assert math.isfinite(srtt) and srtt > 0.0 and rttvar >= 0.0, (srtt, rttvar)
        # the client's download history as the env's client sent it (< 0: none yet)
        dl, dlvar = float(obs[F.CLIENT_DL]), float(obs[F.CLIENT_DLVAR])
        mis = float(obs[F.CLIENT_MISMATCH])
        req = Request(
            info["sla_ms"], info["t_input_ms"], info["t_input_ms"], sim.payload_kb * 1000, "c",
            srtt_ms=srtt, rttvar_ms=rttvar, client_dl_ms=dl if dl >= 0.0 else None,
            client_dlvar_ms=dlvar if dlvar >= 0.0 else None,
            client_dl_mismatch=mis if mis >= 0.0 else None,
        )  # fmt: skip
        got = sel.features(req, record=True)
        np.testing.assert_array_equal(got, obs, err_msg=f"request {step}")
        sel.observe(sim.pool.ids[info["model"]], info["exec_ms"])
        obs = sim.obs[0].copy()


def test_observe_folds_execution_times_into_the_profiles() -> None:
    sel = Selector(TABLE2, profile_alpha=0.5)
    mu0 = TABLE2.mean_ms[0]
    assert sel.observe(TABLE2.ids[0], mu0 + 10.0)
    mu, _ = sel.profiles
    assert mu[0] == pytest.approx(mu0 + 5.0)
    assert not sel.observe("no_such_model", 5.0)
    assert not sel.observe(TABLE2.ids[0], float("nan"))
    assert not sel.observe(TABLE2.ids[0], -3.0)
    assert sel.set_load(queue_len=3, slowdown=1.5)
    assert not sel.set_load(slowdown=-1.0)
    f = sel.features(_request(client=None))
    assert f[F.QUEUE] == 3.0 and f[F.SLOWDOWN] == 1.5


def test_pool_profile_checks_its_fields() -> None:
    with pytest.raises(PoolProfileError, match="accuracy"):
        PoolProfile.from_lists(["a"], [1.5], [1.0], [0.0])
    with pytest.raises(PoolProfileError, match="duplicate"):
        PoolProfile.from_lists(["a", "a"], [0.5, 0.5], [1.0, 1.0], [0.0, 0.0])
    with pytest.raises(PoolProfileError, match="mean_ms"):
        PoolProfile.from_lists(["a"], [0.5], [math.nan], [0.0])
    with pytest.raises(PoolProfileError, match="lacks"):
        PoolProfile.from_pool(object())


# --------------------------------------------------------------------------- packaging
def test_importing_the_runtime_leaves_the_training_stack_out() -> None:
    code = textwrap.dedent(
        """
        import sys
        import modi.runtime
        from modi.runtime import Selector, PoolProfile, Request
        sel = Selector(PoolProfile.from_lists(["a", "b"], [0.6, 0.8], [5.0, 50.0], [1.0, 2.0]))
        sel.select(Request(100.0, 10.0, 10.0, 1000.0, "c"))
        heavy = ["torch", "gymnasium", "stable_baselines3", "mlflow", "hydra", "onnx"]
        print(",".join(m for m in heavy if m in sys.modules))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "", f"modi.runtime imported {out.stdout.strip()}"


@pytest.mark.slow
def test_core_only_install_serves_a_selector(files: dict[str, Path], tmp_path: Path) -> None:
    """``pip install modi`` without extras (numpy + onnxruntime only) gives a working Selector.

    Builds the wheel, installs it into a fresh virtual environment with its declared core
    dependencies (from the machine's package index/wheel folder, offline here), checks that the
    training stack is absent and that a learned selector answers. See ``_core_only_venv``.
    """
    py, mode = _core_only_venv(tmp_path)
    code = textwrap.dedent(
        f"""
        import importlib.util, sys
        from modi.runtime import PoolProfile, Request, Selector
        pool = PoolProfile.from_lists({list(TABLE2.ids)!r}, {list(TABLE2.accuracy)!r},
                                      {list(TABLE2.mean_ms)!r}, {list(TABLE2.std_ms)!r})
        sel = Selector.load({str(files["linucb"])!r}, pool, strict=True)
        d = sel.select(Request(200.0, 40.0, 40.0, 330000.0, "c"))
        assert d.source == "learned", d
        absent = [m for m in ("torch", "gymnasium", "stable_baselines3", "mlflow", "hydra",
                              "onnx") if importlib.util.find_spec(m) is not None]
        print("ok", d.model_id, "present:", absent)
        """
    )
    out = subprocess.run([str(py), "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"[{mode}] {out.stderr[-2000:]}"
    assert out.stdout.startswith("ok") and out.stdout.strip().endswith("present: []"), out.stdout


def _core_only_venv(tmp: Path) -> tuple[Path, str]:
    """A fresh venv (no system site-packages) holding modi's wheel and its core dependencies.

    First choice ("pip"): ``pip install`` the freshly built wheel, letting pip resolve the
    declared core dependencies from the configured index (``/opt/pypi`` and ``/opt/wheels`` on
    these machines, so offline; the network elsewhere). When that fails (no index reachable),
    ("linked") the wheel is installed with ``--no-deps`` and the test environment's own numpy
    and onnxruntime are made visible through a ``.pth`` file, nothing else.
    """
    venv = tmp / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60
    )
    py = venv / "bin" / "python"
    # Build from a copy so setuptools' build/ and egg-info never touch the checkout.
    src = tmp / "src"
    src.mkdir()
    for name in (
        "pyproject.toml",
        "README.md",
        "src",
        "runtime",
        "envs",
        "agents",
        "experiments",
        "serving",
    ):
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif (REPO / name).is_file():
            shutil.copy2(REPO / name, src / name)
    shutil.copytree(REPO / "conf", src / "conf", ignore=shutil.ignore_patterns("__pycache__"))
    wheels = tmp / "wheels"
    pip = [sys.executable, "-m", "pip", "--python", str(py)]
    build = ["wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(src)]
    subprocess.run(
        [sys.executable, "-m", "pip", *build],
        check=True,
        timeout=120,
        capture_output=True,
    )
    (wheel,) = wheels.glob("modi-*.whl")
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    full = subprocess.run(
        [*pip, "install", "-q", "--timeout", "10", "--retries", "0", str(wheel)],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )
    if full.returncode == 0:
        return py, "pip"
    subprocess.run(
        [*pip, "install", "-q", "--no-deps", str(wheel)], check=True, timeout=120, env=env
    )
    import numpy
    import onnxruntime

    links = tmp / "core-deps"
    links.mkdir()
    for mod in (numpy, onnxruntime):
        pkg = Path(mod.__file__ or "").parent
        (links / pkg.name).symlink_to(pkg)
        libs = pkg.parent / f"{pkg.name}.libs"
        if libs.is_dir():
            (links / libs.name).symlink_to(libs)
    site = next((venv / "lib").glob("python3*/site-packages"))
    (site / "core-deps.pth").write_text(str(links) + "\n")
    return py, "linked"


# --------------------------------------------------------------------------- benchmark
def test_runtime_benchmark_reports_every_figure_and_the_machine() -> None:
    """A small run of the runtime benchmark (its figures are for modi-bench, not asserted
    here): every figure present and plausible, the learned selector actually used."""
    from modi.experiments.bench_runtime import _hiccups, run_runtime_bench

    out = run_runtime_bench(
        requests=1000, rounds=1, batch=64, batch_repeats=2, batch_block=1, train_requests=2000,
        block=250, batch_threads=1,
    )  # fmt: skip
    for key in ("selector_p50_us", "selector_p99_us", "modipick_rule_p50_us",
                "selector_budget_shield_p50_us", "selector_budget_shield_p99_us",
                "onnxruntime_bound_run_p50_us", "selector_batch_decisions_per_s"):  # fmt: skip
        assert out[key] > 0, key
    assert out["selector_p50_us"] <= out["selector_p99_us"]
    assert out["requests_timed"] == 1000 and out["policy"] == "linucb"
    assert 0.0 <= out["shielded_fraction"] <= 1.0 and 0.0 <= out["budget_shielded_fraction"] <= 1.0
    assert out["machine_hiccups_per_s"] >= 0 and 0.0 <= out["machine_stolen_fraction"] < 1.0
    gaps, spanned = _hiccups(0.01)
    assert gaps.dtype == np.int64 and np.all(gaps > 20_000)
    assert spanned >= 0.01 * 1e9 * 0.9 and gaps.sum() <= spanned


def test_encoding_an_encoded_request_again_changes_nothing() -> None:
    """``upload_relative`` leaves an encoded block as it is (so reading a current decision log
    changes nothing) and converts one written before (elapsed from capture)."""
    rng = np.random.default_rng(9)
    n = 500
    sla, up = rng.uniform(20, 900, n), rng.uniform(1, 300, n)
    el = up + np.where(rng.random(n) < 0.5, rng.uniform(0, 400, n), 0.0)
    enc = F.encode_requests(sla, el, up, 30.0, up, 0.0, 0.0, 1.0).astype(np.float64)
    np.testing.assert_array_equal(F.upload_relative(enc.copy()), enc)
    old = enc.copy()  # as the encoders wrote it before: the SLA and elapsed time from capture
    old[:, F.SLA], old[:, F.ELAPSED] = np.float32(sla), np.float32(el)
    np.testing.assert_allclose(F.upload_relative(old), enc, rtol=1e-6, atol=1e-3)


@pytest.mark.parametrize(
    "sla, elapsed, upload",
    [
        (150.0, -0.0, 0.0),
        (-0.0, -0.0, 0.0),
        (300, 10**39, 7),
        (10**39, 250, 50),
        (0.0, 5e-324, 0.0),
    ],
)
def test_pack_request_counts_the_upload_as_encode_requests_does(
    sla: float, elapsed: float, upload: float
) -> None:
    got = np.zeros(F.R, np.float32)
    F.pack_request(got.data, sla, elapsed, upload, 30.0, 1.0, 0.0, 0.0, 1.0)
    with np.errstate(over="ignore", invalid="ignore"):
        want = F.encode_requests(*(np.float64(x) for x in (sla, elapsed, upload)), 30.0, 1.0,
                                 0.0, 0.0, 1.0)  # fmt: skip
    np.testing.assert_array_equal(got.view(np.int32), want.view(np.int32))
