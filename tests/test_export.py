"""ONNX export of learned selectors: parity with the policy on simulated requests, the graph's
signature and metadata, pool-specific exports, the fused and accurate-sigmoid rewrites, MLflow
registration and the ``modi-export`` console script."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from modi.agents.bandits import (
    LearnedPolicy,
    LinearThompson,
    LinUCB,
    NeuralBandit,
    load_learned,
)
from modi.agents.export import (
    ExportError,
    check_parity,
    export_onnx,
    main,
    read_metadata,
    simulated_observations,
)
from modi.agents.fused import fuse_selector, plausible_inputs
from modi.agents.scorers import ArgmaxSelector
from modi.envs.catalog import load_preset
from modi.envs.model_selection import build_sim
from modi.runtime import PoolProfile, Request, Selector
from modi.runtime import features as F
from modi.runtime.metadata import ACTION_MEANING, METADATA_VERSION, RANGE_FEATURES, pool_hash

PARITY_REQUESTS = 10_000
#: Small training budgets: enough for non-trivial decisions, a few seconds each.
BUDGETS = {
    "linucb": 20_000,
    "linucb_regime": 20_000,
    "lints": 20_000,
    "neural": 8_000,
    "neural_relative": 8_000,
}


class RegimeLinUCB(LinUCB):
    """LinUCB stepping over the headrooms beyond the connection's RTT (conf/agent/linucb_regime)."""

    def __init__(self, seed: int | None = None) -> None:
        super().__init__(seed=seed, width_ms=2.0, steps=("slack", "net_headroom", "net_margin"))


class RelativeNeural(NeuralBandit):
    """The neural bandit with the scale-free pair features (conf/agent/neural: relative)."""

    def __init__(self, seed: int | None = None) -> None:
        super().__init__(seed=seed, relative=True)


POLICIES: dict[str, type[LearnedPolicy]] = {
    "linucb": LinUCB,
    "linucb_regime": RegimeLinUCB,
    "lints": LinearThompson,
    "neural": NeuralBandit,
    "neural_relative": RelativeNeural,
}


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    # Small-batch training is much faster single-threaded on small shared machines.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def trained() -> dict[str, LearnedPolicy]:
    out = {}
    for kind, cls in POLICIES.items():
        sim = build_sim(num_envs=64, sla_range_ms=(50.0, 400.0))
        pol = cls(seed=0)
        pol.fit(sim, BUDGETS[kind], seed=0, progress=False)
        out[kind] = pol
    return out


@pytest.fixture(scope="module")
def exported(trained: dict[str, LearnedPolicy], tmp_path_factory: Any) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("onnx")
    return {k: export_onnx(p, d / f"{k}.onnx", run_id=f"run-{k}") for k, p in trained.items()}


@pytest.mark.parametrize("kind", list(POLICIES))
def test_onnx_chooses_exactly_what_the_policy_chooses_on_simulated_requests(
    kind: str, trained: dict[str, LearnedPolicy], exported: dict[str, Path]
) -> None:
    obs = simulated_observations(trained[kind], "modipick_table2", PARITY_REQUESTS, seed=1)
    assert obs.shape == (PARITY_REQUESTS, F.obs_dim(11))
    agreement = check_parity(trained[kind], exported[kind], obs)
    assert agreement == 1.0, f"{kind}: ONNX agrees with policy.select on {agreement:.4%}"


@pytest.mark.parametrize("kind", list(POLICIES))
def test_pool_agnostic_onnx_serves_a_pool_of_another_size(
    kind: str, trained: dict[str, LearnedPolicy], exported: dict[str, Path]
) -> None:
    obs = simulated_observations(trained[kind], "mdinference_p2", 3000, seed=2)
    k = F.ObsLayout.from_obs_dim(obs.shape[1]).num_models
    assert k != 11, "the other pool must have another size"
    assert check_parity(trained[kind], exported[kind], obs) == 1.0


@pytest.mark.parametrize("kind", list(POLICIES))
def test_hopeless_requests_go_to_the_fastest_model_in_torch_and_onnx(
    kind: str, trained: dict[str, LearnedPolicy], exported: dict[str, Path]
) -> None:
    """A request no model can meet (budget far below every model's time) has P(met) under the
    floor for every model: policy and ONNX both answer with the fastest model instead of an
    argmax over scores that differ by float32 rounding."""
    rng = np.random.default_rng(3)
    mu = rng.uniform(5.0, 120.0, (64, 11))
    sigma = rng.uniform(0.1, 1.0, (64, 11))
    acc = rng.uniform(0.5, 0.8, (64, 11))
    up = np.full(64, 900.0)  # 1.8 s of network against a 100 ms SLA
    obs = F.encode(100.0, up, up, 330.0, up, 5.0, 0.0, 1.0, mu, sigma, acc, 2 * up, 0.1 * up)
    pol = trained[kind]
    scores = pol.scores(obs)
    assert np.all(scores == 0.0), f"hopeless requests must score exactly 0, got {scores.max()}"
    fastest = mu.argmin(axis=1)
    np.testing.assert_array_equal(pol.select(obs), fastest)
    layout = F.ObsLayout(11)
    sess = ort.InferenceSession(str(exported[kind]), providers=["CPUExecutionProvider"])
    feed = {
        "request": np.ascontiguousarray(layout.request(obs)),
        "models": np.ascontiguousarray(layout.models(obs)),
    }
    np.testing.assert_array_equal(sess.run(["action"], feed)[0], fastest)
    # A request some model can meet is still decided by the scores.
    fast = np.full(64, 20.0)
    easy = F.encode(400.0, fast, fast, 330.0, fast, 5.0, 0.0, 1.0, mu, sigma, acc, fast, 1.0)
    assert np.all(pol.scores(easy).max(axis=1) > 0.0)
    np.testing.assert_array_equal(pol.select(easy), pol.scores(easy).argmax(axis=1))


def test_graph_signature_opset_and_self_contained_file(exported: dict[str, Path]) -> None:
    path = exported["neural"]
    onnx.checker.check_model(str(path), full_check=True)
    model = onnx.load(str(path))
    assert {o.domain: o.version for o in model.opset_import}.get("", 0) == 18
    assert all(t.data_location == onnx.TensorProto.DEFAULT for t in model.graph.initializer), (
        "weights must be inside the file (no external data)"
    )

    def sig(vi: Any) -> tuple[str, int, list[Any]]:
        dims = [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]
        return vi.name, vi.type.tensor_type.elem_type, dims

    (req, req_t, req_d), (mod, mod_t, mod_d) = (sig(v) for v in model.graph.input)
    (act, act_t, act_d), (sco, sco_t, sco_d) = (sig(v) for v in model.graph.output)
    assert (req, mod, act, sco) == ("request", "models", "action", "scores")
    assert (req_t, mod_t, sco_t) == (onnx.TensorProto.FLOAT,) * 3
    assert act_t == onnx.TensorProto.INT64
    assert isinstance(req_d[0], str) and req_d[1] == F.R, f"request dims {req_d}"
    assert isinstance(mod_d[0], str) and isinstance(mod_d[1], str) and mod_d[2] == F.P, (
        f"models dims {mod_d}: batch and model dimensions must be dynamic"
    )
    assert mod_d[0] == req_d[0] == act_d[0] == sco_d[0], "one batch dimension throughout"
    assert not any(n.op_type == "Sigmoid" for n in model.graph.node), (
        "Sigmoid must be rewritten as 1 / (1 + Exp(-x)) (onnxruntime's is approximate)"
    )
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for n, k in ((1, 1), (3, 7), (5, 30)):
        r, m = plausible_inputs(n, k, seed=n)
        a, s = sess.run(None, {"request": r.numpy(), "models": m.numpy()})
        assert a.shape == (n,) and a.dtype == np.int64 and s.shape == (n, k)


def test_metadata_travels_inside_the_file(exported: dict[str, Path]) -> None:
    model = onnx.load(str(exported["linucb"]))
    props = {p.key: p.value for p in model.metadata_props}
    assert props["modi.schema_name"] == F.SCHEMA_NAME
    assert props["modi.schema_version"] == str(F.SCHEMA_VERSION)
    assert props["modi.pool_agnostic"] == "true"
    assert props["modi.training_run_id"] == "run-linucb"
    assert props["modi.policy_kind"] == "linucb" and props["modi.policy_name"] == "linucb"
    assert props["modi.version"] and props["modi.action_meaning"] == ACTION_MEANING
    assert json.loads(props["modi.request_features"]) == [c[0] for c in F.REQUEST_FEATURES]
    meta = read_metadata(exported["linucb"])
    assert meta.pool_agnostic and meta.pool_model_ids == () and meta.graph == "fused"
    assert model.producer_name == "modi"


@pytest.mark.parametrize("kind", list(POLICIES))
def test_training_ranges_are_recorded_saved_and_exported(
    kind: str, trained: dict[str, LearnedPolicy], exported: dict[str, Path], tmp_path: Path
) -> None:
    """Training records the range of every request feature and of mu/sigma over what the policy
    saw; save/load keeps it, export writes it into the metadata (version 2)."""
    pol = trained[kind]
    everything = pol.ranges.ranges()
    assert everything is not None and everything.names == RANGE_FEATURES
    assert everything.observations == BUDGETS[kind] // 64 * 64
    sla = everything.get("sla_ms")
    assert sla is not None and sla[0] >= 50.0 and sla[1] <= 400.0
    assert everything.get("queue_len") == (0.0, 0.0)
    # What is exported (and checked by the shield) is what the policy's scorer reads.
    r = pol.feature_ranges
    assert r is not None
    reads = pol.reads
    assert r.names == (
        RANGE_FEATURES if reads is None else tuple(n for n in RANGE_FEATURES if n in reads)
    )
    assert r.get("slowdown") == (1.0, 1.0)
    mu = load_preset("pool", "modipick_table2").mean_ms
    lo, hi = r.get("mu_ms")  # type: ignore[misc]
    assert lo <= mu.min() * 1.1 and hi >= mu.max() * 0.9
    meta = read_metadata(exported[kind])
    assert meta.metadata_version == METADATA_VERSION == 2 and meta.training_ranges == r
    back = load_learned(pol.save(tmp_path / f"{kind}.pt"))
    assert back.feature_ranges == r


def test_a_policy_saved_without_ranges_loads_and_exports(
    trained: dict[str, LearnedPolicy], tmp_path: Path
) -> None:
    """Files saved before ranges were recorded: no ``training_ranges`` key."""
    path = trained["linucb"].save(tmp_path / "old.pt")
    st = torch.load(path, weights_only=False)
    del st["training_ranges"]
    torch.save(st, path)
    old = load_learned(path)
    assert old.feature_ranges is None
    out = export_onnx(old, tmp_path / "old.onnx")
    assert read_metadata(out).training_ranges is None
    props = {p.key for p in onnx.load(str(out)).metadata_props}
    assert "modi.training_ranges" not in props
    sel = Selector.load(out, PoolProfile.from_pool(load_preset("pool", "modipick_table2")))
    assert sel.learned and "nothing to check" in sel.status


def test_malformed_training_ranges_are_refused(exported: dict[str, Path], tmp_path: Path) -> None:
    model = onnx.load(str(exported["linucb"]))
    for p in model.metadata_props:
        if p.key == "modi.training_ranges":
            doc = json.loads(p.value)
            doc["lo"][0], doc["hi"][0] = 5.0, 1.0
            p.value = json.dumps(doc)
    bad = tmp_path / "bad.onnx"
    onnx.save(model, str(bad))
    pool = PoolProfile.from_pool(load_preset("pool", "modipick_table2"))
    sel = Selector.load(bad, pool)
    first = doc["features"][0]
    assert not sel.learned and f"training range of {first!r}" in sel.status


def test_pool_specific_export_fixes_the_model_dimension_and_records_the_pool(
    trained: dict[str, LearnedPolicy], tmp_path: Path
) -> None:
    pool = load_preset("pool", "modipick_table2")
    path = export_onnx(
        trained["lints"], tmp_path / "s.onnx", list(pool.ids), pool_accuracy=list(pool.accuracy)
    )
    meta = read_metadata(path)
    assert not meta.pool_agnostic
    assert meta.pool_model_ids == pool.ids
    assert meta.pool_hash == pool_hash(pool.ids, pool.accuracy)
    assert meta.pool_hash_covers == "ids+accuracy"
    dims = onnx.load(str(path)).graph.input[1].type.tensor_type.shape.dim
    assert dims[1].dim_value == len(pool), "pool-specific graphs take exactly K models"
    obs = simulated_observations(trained["lints"], pool, 2000, seed=3)
    assert check_parity(trained["lints"], path, obs) == 1.0


class _FixedHead(LinUCB):
    """A stand-in for a pool-specific policy (e.g. an SB3 agent with a Discrete(K) head)."""

    pool_agnostic = False


def test_pool_specific_policy_needs_its_pool_ids(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="pool_ids"):
        export_onnx(_FixedHead(), tmp_path / "x.onnx")
    pol = _FixedHead()
    pol.pool_ids = ["a", "b"]  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="differ"):
        export_onnx(pol, tmp_path / "x.onnx", pool_ids=["b", "a"])
    path = export_onnx(pol, tmp_path / "x.onnx")
    assert read_metadata(path).pool_model_ids == ("a", "b")


@pytest.mark.parametrize("kind", ["linucb", "neural"])
def test_fused_graph_is_smaller_and_decides_like_the_traced_one(
    kind: str, trained: dict[str, LearnedPolicy], exported: dict[str, Path], tmp_path: Path
) -> None:
    plain = export_onnx(trained[kind], tmp_path / "plain.onnx", fuse=False)
    assert read_metadata(plain).graph == "plain"
    n_fused = len(onnx.load(str(exported[kind])).graph.node)
    n_plain = len(onnx.load(str(plain)).graph.node)
    assert n_fused < n_plain / 2, f"fused {n_fused} nodes vs traced {n_plain}"
    obs = simulated_observations(trained[kind], "modipick_table2", 3000, seed=4)
    assert check_parity(trained[kind], plain, obs) == 1.0


def test_fusion_falls_back_to_the_original_when_it_cannot_reproduce_it() -> None:
    class Odd(torch.nn.Module):
        def forward(self, request: torch.Tensor, models: torch.Tensor) -> Any:
            s = models[:, :, F.ACC] * torch.sin(request[:, :1])
            return s.argmax(1), s

    m = Odd()
    fused, what = fuse_selector(m)
    assert fused is m and what == []


@pytest.mark.parametrize("kind", ["linucb", "neural"])
@pytest.mark.parametrize("pool_ids", [None, [f"m{i}" for i in range(11)]], ids=["any-k", "k-11"])
def test_graph_rewrites_change_nothing_but_speed(
    kind: str,
    pool_ids: list[str] | None,
    trained: dict[str, LearnedPolicy],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The Expand-before-Add and Slice-to-Gather rewrites: applied where they match, and the
    graph's actions and scores bit for bit those of the graph without them."""
    import modi.agents.export as E

    pol = trained[kind]
    fast = export_onnx(pol, tmp_path / "fast.onnx", pool_ids=pool_ids)
    with monkeypatch.context() as mp:
        mp.setattr(E, "_expand_broadcast_adds", lambda m: 0)
        mp.setattr(E, "_gather_columns", lambda m: 0)
        slow = export_onnx(pol, tmp_path / "slow.onnx", pool_ids=pool_ids)
    model = onnx.load(str(fast))
    ops = [n.op_type for n in model.graph.node]
    assert "Expand" in ops and "Slice" not in ops, ops
    shapes = E._shapes(model)
    for n in model.graph.node:  # no Add broadcasts a middle axis any more
        if n.op_type == "Add" and len(n.input) == 2:
            a, b = (shapes.get(i) for i in n.input)
            assert not (E._middle_broadcast(a, b) or E._middle_broadcast(b, a)), n.name
    cpu = ["CPUExecutionProvider"]
    sessions = [ort.InferenceSession(str(p), providers=cpu) for p in (fast, slow)]
    for i, k in enumerate([11] if pool_ids else [1, 4, 11]):
        for n in (1, 257):
            r, m = plausible_inputs(n, k, seed=50 + 10 * i + n)
            feed = {"request": r.numpy(), "models": m.numpy()}
            (a1, s1), (a2, s2) = (s.run(None, feed) for s in sessions)
            np.testing.assert_array_equal(a1, a2)
            np.testing.assert_array_equal(s1.view(np.int32), s2.view(np.int32))


def test_fused_step_scorer_matches_the_basis_in_both_tails(
    trained: dict[str, LearnedPolicy],
) -> None:
    """One exp per headroom feature (shifted by constants per centre) gives the per-centre
    sigmoids' P(met), including requests where one feature's exp overflows float32 and the
    other's underflows (without the cap, inf * 0 would make it NaN)."""
    from modi.agents.fused import FusedStepLinearScorer

    scorer = trained["linucb"].selector_module().scorer  # type: ignore[attr-defined]
    fused = FusedStepLinearScorer.build(scorer)
    assert fused is not None
    rng = np.random.default_rng(9)
    n, k = 4096, 11
    t_in = rng.choice([1.0, 50.0, 2_000.0, 20_000.0], n)  # up to a 20 s upload: the two
    sla = rng.uniform(-5_000.0, 30_000.0, n)  # headroom features then differ by ~200 steps
    mu = rng.uniform(1.0, 300.0, (n, k))
    obs = F.encode(sla, t_in, t_in, 330.0, t_in, 5.0, 1.0, rng.uniform(0.8, 2.5, n), mu,
                   rng.uniform(0.0, 50.0, (n, k)), rng.uniform(0.4, 0.85, (n, k)))  # fmt: skip
    layout = F.ObsLayout(k)
    r = torch.as_tensor(np.ascontiguousarray(layout.request(obs)))
    m = torch.as_tensor(np.ascontiguousarray(layout.models(obs)))
    with torch.no_grad():
        want = copy.deepcopy(scorer).double().p_met(r.double(), m.double())
        got = fused.p_met(r, m)
    assert torch.isfinite(got).all()
    assert float((got.double() - want).abs().max()) < 1e-5
    with torch.no_grad():  # the float32 evaluation of the original is no closer
        ref32 = scorer.p_met(r, m).double()
    assert float((got.double() - want).abs().max()) <= 10 * float((ref32 - want).abs().max()) + 1e-6


def test_skipped_sub_and_concat_give_the_same_pair_features_bit_for_bit(
    trained: dict[str, LearnedPolicy],
) -> None:
    """The step scorer's pair features skip ``request - origin`` (the origin meets only zero rows
    of A) and the ``Concat`` with the plain model terms (all zero): the same float32 values as
    the full form, in torch and in onnxruntime's graph alike (the graph is checked against
    torch by the parity tests)."""
    from modi.agents.fused import FusedStepLinearScorer
    from modi.agents.scorers import ImputeRequest

    fused = FusedStepLinearScorer.build(trained["linucb"].selector_module().scorer)  # type: ignore[attr-defined]
    assert fused is not None
    # the headroom steps read no imputed column: the graph skips the imputation
    assert fused.pre.impute is None
    pre = fused.pre.affine
    assert not pre.centred and not pre.plain and pre.cross_col is not None
    r, m = plausible_inputs(2000, 11, seed=5)
    s = pre.cross_col
    with torch.no_grad():
        got = fused.pre(r, m)
        rx = ImputeRequest()(r)
        base = ((rx - pre.origin) @ pre.a + pre.c).unsqueeze(1)
        scaled = m * r[:, s : s + 1].unsqueeze(-1)
        full = base + torch.cat([m, scaled], dim=-1) @ torch.cat([pre.b, pre.b_cross])
    assert torch.equal(got.view(torch.int32), full.view(torch.int32))


def test_step_scorer_with_a_very_wide_grid_keeps_the_per_centre_form() -> None:
    from modi.agents.fused import FusedStepLinearScorer
    from modi.agents.scorers import LinearScorer, StepBasis

    basis = StepBasis(centres_ms=(-2_000.0, 0.0, 2_000.0), width_ms=8.0)  # 250 widths apart
    scorer = LinearScorer(basis, torch.zeros(basis.dim))
    assert FusedStepLinearScorer.build(scorer) is None
    original = ArgmaxSelector(scorer)
    fused, what = fuse_selector(original)
    assert what == ["PairFeatures"]  # only the pair features: the steps stay one per centre
    r, m = plausible_inputs(64, 5, seed=3)
    with torch.no_grad():
        torch.testing.assert_close(fused(r, m)[1], original(r, m)[1], rtol=1e-5, atol=1e-6)


def test_onnxruntime_sigmoid_is_inaccurate_so_export_rewrites_it() -> None:
    # The reason for the rewrite: onnxruntime's Sigmoid has ~1e-7 absolute error, which is
    # enormous relative to P(met) of a hopeless request and reorders models.
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"])
    g = helper.make_graph([helper.make_node("Sigmoid", ["x"], ["y"])], "g", [x], [y])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    v = np.array([-15.0, -20.0], dtype=np.float32)
    got = sess.run(None, {"x": v})[0]
    want = torch.sigmoid(torch.from_numpy(v)).numpy()
    if np.allclose(got, want, rtol=1e-3, atol=0):
        pytest.skip("this onnxruntime's Sigmoid is accurate; the rewrite is harmless")
    assert not np.allclose(got, want, rtol=1e-3, atol=0)


def test_verification_catches_a_graph_that_disagrees(tmp_path: Path) -> None:
    # A scorer whose scores are tiny sigmoid tails: onnxruntime's approximate Sigmoid gets
    # them wrong, and verification must notice.
    class Tail(LinUCB):
        def scorer(self) -> torch.nn.Module:
            class S(torch.nn.Module):
                def forward(self, request: torch.Tensor, models: torch.Tensor) -> torch.Tensor:
                    return torch.sigmoid(-25.0 + models[:, :, F.ACC]) * 1e9

            return S()

    with pytest.raises(ExportError, match="differ"):
        export_onnx(Tail(), tmp_path / "t.onnx", fuse=False, accurate_sigmoid=False)


def test_export_overwrites_atomically_and_leaves_no_temporary_files(
    trained: dict[str, LearnedPolicy], tmp_path: Path
) -> None:
    out = tmp_path / "sel.onnx"
    export_onnx(trained["lints"], out)
    export_onnx(trained["lints"], out, run_id="second")
    assert read_metadata(out).training_run_id == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sel.onnx"]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_log_to_mlflow_registers_an_alias_the_selector_loads(
    exported: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("mlflow")
    from modi.agents.export import log_to_mlflow

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    import mlflow

    old = mlflow.get_tracking_uri()
    try:
        reg = log_to_mlflow(exported["linucb"], "modi-selector-test", tracking_uri=uri)
        assert reg.model_uri == "models:/modi-selector-test@champion"
        assert reg.version == "1"
        pool = PoolProfile.from_pool(load_preset("pool", "modipick_table2"))
        sel = Selector.load(reg.model_uri, pool, strict=True)
        assert sel.learned and sel.metadata is not None
        assert sel.metadata.training_run_id == "run-linucb"
        local = Selector.load(exported["linucb"], pool, strict=True)
        rng = np.random.default_rng(0)
        for _ in range(50):
            t = float(rng.uniform(10, 200))
            r = Request(float(rng.uniform(50, 400)), t, t, 330_000.0)
            assert sel.select(r).index == local.select(r).index
    finally:
        mlflow.set_tracking_uri(old)


def test_modi_export_cli_writes_a_pool_specific_selector(
    trained: dict[str, LearnedPolicy], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    saved = trained["linucb"].save(tmp_path / "linucb.pt")
    out = tmp_path / "cli.onnx"
    main([str(saved), str(out), "--pool", "modipick_table2", "--parity", "500"])
    result = json.loads(capsys.readouterr().out)
    assert result["parity"] == 1.0
    meta = read_metadata(out)
    assert not meta.pool_agnostic and len(meta.pool_model_ids) == 11
    with pytest.raises(SystemExit):
        main([str(tmp_path / "missing.pt"), str(out)])
    with pytest.raises(SystemExit):
        main([str(saved), str(out), "--pool", "no_such_pool"])
