"""Export a learned selector to one self-contained ONNX file, check it, register it in MLflow.

The exported graph is the *whole* decision (DESIGN.md §5, STYLE.md "Stable-Baselines3"):
``(request (N, R), models (N, K, P)) -> (action (N,) int64, scores (N, K) float32)``, i.e. the
policy's :meth:`~modi.agents.bandits.LearnedPolicy.selector_module` (pair features,
normalisation, scorer, argmax) traced with the dynamo exporter at opset 18, weights inside the
file. Pool-agnostic selectors get a dynamic model dimension ``K``; pool-specific ones (a policy
with ``pool_agnostic = False``, or any policy exported with ``pool_ids``) a fixed ``K`` and the
pool's ordered ids and fingerprint in the metadata, so the runtime refuses any other pool.

The metadata contract is :class:`modi.runtime.metadata.SelectorMetadata`; the runtime that
reads it is :class:`modi.runtime.Selector`. The policy's training ranges (what it saw while
training, :attr:`~modi.agents.bandits.LearnedPolicy.feature_ranges`) go into the metadata too,
for the selector's calibrated shield; a policy without them exports without them.

Console script ``modi-export``: ``modi-export POLICY.pt OUT.onnx [--pool NAME]
[--mlflow-register NAME]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import torch
from numpy.typing import NDArray
from onnx import helper, numpy_helper

import modi
from modi.agents.fused import fuse_selector, plausible_inputs
from modi.runtime import features as F
from modi.runtime.metadata import (
    INPUT_MODELS,
    INPUT_REQUEST,
    OUTPUT_ACTION,
    OUTPUT_SCORES,
    PREFIX,
    SelectorMetadata,
    pool_hash,
)

if TYPE_CHECKING:
    from modi.agents.bandits import LearnedPolicy

log = logging.getLogger(__name__)

OPSET = 18
#: Observations per onnxruntime call in :func:`check_parity`.
_PARITY_CHUNK = 4096


class ExportError(RuntimeError):
    """The exported graph failed a check (onnx checker or agreement with the policy)."""


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the dynamo exporter's warnings about optional packages and deprecations."""
    names = ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript", "onnx_ir")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lvl in zip(loggers, levels, strict=True):
            lg.setLevel(lvl)


def _squeeze_vector_matmuls(model: onnx.ModelProto) -> int:
    """Rewrite ``MatMul(X, w)`` with a 1-D initializer ``w`` as ``Squeeze(MatMul(X, w[:, None]))``
    (same result; onnxruntime's 1-D path is an order of magnitude slower). Returns the count."""
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    nodes = []
    changed = set()
    for node in g.node:
        w = inits.get(node.input[1]) if node.op_type == "MatMul" else None
        if w is None or len(w.dims) != 1:
            nodes.append(node)
            continue
        if w.name not in changed:
            arr = numpy_helper.to_array(w)
            w.CopyFrom(numpy_helper.from_array(arr.reshape(-1, 1), w.name))
            changed.add(w.name)
        out = node.output[0]
        col = f"{out}__col"
        axes = f"{out}__axes"
        g.initializer.append(numpy_helper.from_array(np.array([-1], dtype=np.int64), axes))
        node.output[0] = col
        nodes.append(node)
        nodes.append(helper.make_node("Squeeze", [col, axes], [out], name=f"{node.name}__squeeze"))
    if changed:
        keep = [v for v in g.value_info if v.name not in changed]
        del g.value_info[:]
        g.value_info.extend(keep)
        del g.node[:]
        g.node.extend(nodes)
    return len(changed)


def _accurate_sigmoids(model: onnx.ModelProto) -> int:
    """Rewrite ``Sigmoid(x)`` as ``Reciprocal(1 + Exp(-x))`` (the same function). onnxruntime's
    Sigmoid kernel is a fast approximation with an *absolute* error near 1e-7 (sigmoid(-15) comes
    out 17 % high, anything below -18 is 0), which reorders the tiny P(met) of hopeless requests
    and so the argmax; its Exp is vectorised and accurate to the last bits in both tails
    (``exp`` overflowing to ``inf`` gives exactly 0). Returns the count."""
    g = model.graph
    nodes = []
    count = 0
    one = None
    for node in g.node:
        if node.op_type != "Sigmoid":
            nodes.append(node)
            continue
        if one is None:
            one = f"{node.output[0]}__one"
            g.initializer.append(numpy_helper.from_array(np.array(1.0, dtype=np.float32), one))
        count += 1
        x, y = node.input[0], node.output[0]
        base = node.name or f"sigmoid{count}"
        nodes += [
            helper.make_node("Neg", [x], [f"{y}__neg"], name=f"{base}__neg"),
            helper.make_node("Exp", [f"{y}__neg"], [f"{y}__exp"], name=f"{base}__exp"),
            helper.make_node("Add", [f"{y}__exp", one], [f"{y}__den"], name=f"{base}__den"),
            helper.make_node("Reciprocal", [f"{y}__den"], [y], name=f"{base}__recip"),
        ]
    if count:
        del g.node[:]
        g.node.extend(nodes)
    return count


def _shapes(model: onnx.ModelProto) -> dict[str, list[int | str]]:
    """Known tensor shapes (inputs, outputs, intermediates, initializers): a dim is its size or
    its symbol (``""`` when unknown)."""
    g = model.graph
    out: dict[str, list[int | str]] = {}
    for v in [*g.input, *g.value_info, *g.output]:
        t = v.type.tensor_type
        if t.HasField("shape"):
            dims = t.shape.dim
            out[v.name] = [d.dim_param if d.HasField("dim_param") else d.dim_value for d in dims]
    for i in g.initializer:
        out[i.name] = list(i.dims)
    return out


def _middle_broadcast(x: list[int | str] | None, y: list[int | str] | None) -> bool:
    """Whether ``x`` is ``(N, 1, H)`` and ``y`` is ``(N, K, H)`` with a known ``K != 1``."""
    return (
        x is not None
        and y is not None
        and len(x) == len(y) == 3
        and x[0] == y[0]
        and x[2] == y[2]
        and x[1] == 1
        and y[1] not in (1, 0, "")
    )


def _expand_broadcast_adds(model: onnx.ModelProto) -> int:
    """Rewrite ``Add(x (N, 1, H), y (N, K, H))`` as ``Add(Expand(x, shape(y)), y)`` (the same
    sums). onnxruntime broadcasts a middle axis one ``H``-long span per ``(n, k)``, about 4x
    slower at batch 1024 than an ``Expand`` and a same-shape ``Add``. ``shape(y)`` is a constant
    when ``K`` is the ``models`` input's fixed size (which onnxruntime enforces), otherwise a
    ``Shape`` node (exact whatever the shapes turn out to be: ``Expand`` broadcasts both ways).
    Returns the count."""
    g = model.graph
    shapes = _shapes(model)
    fixed_k = shapes.get(INPUT_MODELS, [None, None])[1]
    nodes = []
    count = 0
    for node in g.node:
        if node.op_type == "Add" and len(node.input) == 2:
            a, b = (shapes.get(n) for n in node.input)
            small = 0 if _middle_broadcast(a, b) else 1 if _middle_broadcast(b, a) else None
            if small is not None:
                count += 1
                base = node.name or f"add{count}"
                x, y = node.input[small], node.input[1 - small]
                k = (a, b)[1 - small][1]  # type: ignore[index]
                if isinstance(k, int) and k == fixed_k:  # the models input's own (checked) size
                    target = f"{base}__target"
                    shape = np.array([1, k, 1], np.int64)
                    g.initializer.append(numpy_helper.from_array(shape, target))
                else:
                    target = f"{base}__shape"
                    nodes.append(helper.make_node("Shape", [y], [target], name=target))
                wide = f"{base}__expanded"
                nodes.append(helper.make_node("Expand", [x, target], [wide], name=wide))
                node.input[small] = wide
        nodes.append(node)
    if count:
        del g.node[:]
        g.node.extend(nodes)
    return count


def _gather_columns(model: onnx.ModelProto) -> int:
    """Rewrite ``Unsqueeze(Slice(x (N, C), [s], [s+1], axes=[1]), [-1])`` (one column of a
    matrix as ``(N, 1, 1)``) as ``Gather(x, [[s]], axis=1)``: the same values, one node.
    Returns the count."""
    g = model.graph
    shapes = _shapes(model)
    consts = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    users: dict[str, int] = {}
    for node in g.node:
        for name in node.input:
            users[name] = users.get(name, 0) + 1
    slices = {n.output[0]: n for n in g.node if n.op_type == "Slice"}
    drop: set[str] = set()
    count = 0
    for node in g.node:
        if node.op_type != "Unsqueeze" or len(node.input) != 2:
            continue
        sl = slices.get(node.input[0])
        if sl is None or users.get(sl.output[0], 0) != 1 or len(sl.input) < 4:
            continue
        x = sl.input[0]
        args = [consts.get(n) for n in sl.input[1:]]
        axes = consts.get(node.input[1])
        step = args[3] if len(args) > 3 else np.array([1])
        if any(a is None for a in args[:3]) or axes is None or step is None:
            continue
        start, end, ax = (np.asarray(a).reshape(-1) for a in args[:3])
        if not (
            len(shapes.get(x, [])) == 2
            and start.size == end.size == ax.size == 1
            and int(ax[0]) in (1, -1)
            and int(start[0]) >= 0
            and int(end[0]) == int(start[0]) + 1
            and np.asarray(step).reshape(-1).tolist() == [1]
            and np.asarray(axes).reshape(-1).tolist() in ([-1], [2])
        ):
            continue
        count += 1
        idx = f"{node.output[0]}__index"
        g.initializer.append(numpy_helper.from_array(np.array([[int(start[0])]], np.int64), idx))
        node.op_type = "Gather"
        del node.input[:]
        node.input.extend([x, idx])
        node.attribute.append(helper.make_attribute("axis", 1))
        drop.add(sl.output[0])
    if count:
        keep = [n for n in g.node if not (n.op_type == "Slice" and n.output[0] in drop)]
        del g.node[:]
        g.node.extend(keep)
    return count


def _drop_unused_initializers(model: onnx.ModelProto) -> int:
    """Remove initializers no node reads (left by the rewrites; onnxruntime warns about them).
    Returns the count."""
    g = model.graph
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
           for node in g.node for a in node.attribute):  # fmt: skip
        return 0  # subgraphs may read outer initializers: leave them alone
    used = {name for node in g.node for name in node.input} | {o.name for o in g.output}
    keep = [i for i in g.initializer if i.name in used]
    dropped = len(g.initializer) - len(keep)
    if dropped:
        del g.initializer[:]
        g.initializer.extend(keep)
    return dropped


def _example(n: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    return plausible_inputs(n, k, seed=7)


def export_onnx(
    policy: LearnedPolicy,
    path: str | os.PathLike[str],
    pool_ids: Sequence[str] | None = None,
    run_id: str | None = None,
    *,
    pool_accuracy: Sequence[float] | None = None,
    fuse: bool = True,
    accurate_sigmoid: bool = True,
    verify: bool = True,
    opset: int = OPSET,
) -> Path:
    """Write ``policy``'s decision as one ONNX file at ``path`` and return the path.

    Args:
        policy: a learned policy with ``selector_module()`` (bandits, SB3 agents).
        path: output ``.onnx`` (written atomically: a temporary file, then a rename).
        pool_ids: make the selector pool-specific for these ordered model ids (required for a
            policy with ``pool_agnostic = False`` unless it carries ``pool_ids`` itself).
        run_id: the training run (MLflow run id) recorded in the metadata.
        pool_accuracy: the pool's accuracies, to include them in the pool fingerprint.
        fuse: replace recognised scorers by algebraically equal, faster graphs
            (:mod:`modi.agents.fused`; checked, and skipped when they disagree).
        accurate_sigmoid: compute sigmoids as ``1 / (1 + exp(-x))`` in the graph, so
            onnxruntime agrees with torch on requests whose P(met) is tiny for every model
            (see :func:`_accurate_sigmoids`).
        verify: check the file with onnxruntime against the torch module on random inputs.
        opset: ONNX opset (18: what the dynamo exporter handles; 17 produces invalid models).
    """
    out = Path(path)
    agnostic = bool(getattr(policy, "pool_agnostic", True))
    own_ids = getattr(policy, "pool_ids", None)
    if not agnostic:
        if pool_ids is None and own_ids is None:
            raise ValueError(
                f"{type(policy).__name__} has a pool-specific head: give pool_ids (the ordered "
                "model ids it was trained on)"
            )
        if pool_ids is not None and own_ids is not None and list(pool_ids) != list(own_ids):
            raise ValueError(
                f"pool_ids {list(pool_ids)} differ from the ids the policy was trained on "
                f"{list(own_ids)}"
            )
        pool_ids = list(pool_ids if pool_ids is not None else own_ids)  # type: ignore[arg-type]
    ids = None if pool_ids is None else [str(i) for i in pool_ids]
    if ids is not None and (not ids or len(set(ids)) != len(ids)):
        raise ValueError(f"pool_ids must be non-empty and unique, got {ids}")
    if pool_accuracy is not None and (ids is None or len(pool_accuracy) != len(ids)):
        raise ValueError("pool_accuracy needs pool_ids and one accuracy per model")

    module = policy.selector_module().eval()
    k_fixed = None if ids is None else len(ids)
    graph_module, fused = fuse_selector(module, k_fixed) if fuse else (module, [])
    batch = torch.export.Dim("batch")
    if k_fixed is None:
        example = _example(2, 3)
        dynamic: dict[str, Any] = {
            INPUT_REQUEST: {0: batch},
            INPUT_MODELS: {0: batch, 1: torch.export.Dim("models")},
        }
    else:
        example = _example(2, k_fixed)
        dynamic = {INPUT_REQUEST: {0: batch}, INPUT_MODELS: {0: batch}}
    with _quiet_exporter(), torch.no_grad():
        program = torch.onnx.export(
            graph_module,
            example,
            None,
            dynamo=True,
            opset_version=opset,
            external_data=False,
            input_names=[INPUT_REQUEST, INPUT_MODELS],
            output_names=[OUTPUT_ACTION, OUTPUT_SCORES],
            dynamic_shapes=dynamic,
            verbose=False,
        )
    if program is None:  # pragma: no cover - dynamo=True always returns a program
        raise ExportError("torch.onnx.export returned no program")
    model = program.model_proto
    _squeeze_vector_matmuls(model)
    if accurate_sigmoid:
        _accurate_sigmoids(model)
    _expand_broadcast_adds(model)
    _gather_columns(model)
    _drop_unused_initializers(model)

    meta = SelectorMetadata(
        policy_kind=str(getattr(policy, "kind", type(policy).__name__)),
        policy_name=str(getattr(policy, "name", type(policy).__name__)),
        pool_agnostic=ids is None,
        pool_model_ids=tuple(ids or ()),
        pool_hash="" if ids is None else pool_hash(ids, pool_accuracy),
        pool_hash_covers="" if ids is None else ("ids+accuracy" if pool_accuracy else "ids"),
        training_run_id=run_id or "",
        modi_version=modi.__version__,
        graph="fused" if fused else "plain",
        extra={"fused": ",".join(fused)} if fused else {},
        training_ranges=getattr(policy, "feature_ranges", None),
    )
    props = {p.key: p.value for p in model.metadata_props if not p.key.startswith(PREFIX)}
    helper.set_metadata_props(model, {**props, **meta.to_props()})
    model.producer_name = "modi"
    model.producer_version = modi.__version__
    model.doc_string = (
        f"modi selector '{meta.policy_name}' ({meta.policy_kind}), "
        f"{'pool-agnostic' if ids is None else f'pool-specific ({len(ids)} models)'}, "
        f"schema {meta.schema_name} v{meta.schema_version}"
    )
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as e:
        raise ExportError(f"the exported graph fails the ONNX checker: {e}") from None
    if verify:
        _verify(module, model, (1, 4, 11) if k_fixed is None else (k_fixed,))

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        onnx.save_model(model, str(tmp))
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    log.info(
        "exported %s (%s, %s graph) to %s", meta.policy_name, meta.policy_kind, meta.graph, out
    )
    return out


def _session(model: onnx.ModelProto | str | os.PathLike[str]) -> Any:
    import onnxruntime as ort

    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else os.fspath(model)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])


def _verify(module: torch.nn.Module, model: onnx.ModelProto, ks: tuple[int, ...]) -> None:
    """onnxruntime vs torch on random plausible inputs: scores close, argmax equal except
    where torch's two best scores are within the score tolerance (a genuine tie)."""
    sess = _session(model)
    for i, k in enumerate(ks):
        for n in (1, 257):
            r, m = plausible_inputs(n, k, seed=1000 + 10 * i + n)
            with torch.no_grad():
                ta, ts = (x.numpy() for x in module(r, m))
            oa, os_ = sess.run(None, {INPUT_REQUEST: r.numpy(), INPUT_MODELS: m.numpy()})
            if oa.dtype != np.int64 or oa.shape != (n,) or os_.shape != (n, k):
                raise ExportError(
                    f"onnxruntime returned action {oa.dtype}{oa.shape} and scores {os_.shape}; "
                    f"expected int64 ({n},) and ({n}, {k})"
                )
            if not np.allclose(os_, ts, rtol=1e-4, atol=1e-4):
                raise ExportError(
                    f"onnxruntime scores differ from torch by up to {np.abs(os_ - ts).max():.3g} "
                    f"(K={k})"
                )
            top2 = np.sort(ts, axis=1)[:, -2:] if k > 1 else np.zeros((n, 2))
            tie = (top2[:, 1] - top2[:, 0]) <= 1e-4
            bad = (oa != ta) & ~tie
            if bad.any():
                raise ExportError(
                    f"onnxruntime picks a different model than torch on {int(bad.sum())} of {n} "
                    f"random requests (K={k}) without a tie"
                )


def check_parity(
    policy: LearnedPolicy, path: str | os.PathLike[str], obs: NDArray[np.floating]
) -> float:
    """Fraction of observations ``(N, R + P*K)`` on which the ONNX file at ``path`` (run by
    onnxruntime) chooses the same model as ``policy.select(obs)``."""
    x = np.atleast_2d(np.asarray(obs, dtype=np.float32))
    if x.shape[0] == 0:
        raise ValueError("check_parity needs at least one observation")
    layout = F.ObsLayout.from_obs_dim(x.shape[1])
    sess = _session(path)
    got = np.empty(x.shape[0], dtype=np.int64)
    for s in range(0, x.shape[0], _PARITY_CHUNK):
        chunk = x[s : s + _PARITY_CHUNK]
        feed = {
            INPUT_REQUEST: np.ascontiguousarray(layout.request(chunk)),
            INPUT_MODELS: np.ascontiguousarray(layout.models(chunk)),
        }
        got[s : s + chunk.shape[0]] = sess.run([OUTPUT_ACTION], feed)[0]
    want = np.asarray(policy.select(x))
    return float(np.mean(got == want))


def simulated_observations(
    policy: Any, pool: Any = "modipick_table2", n: int = 10_000, seed: int = 0
) -> NDArray[np.float32]:
    """``n`` observations from the model-selection simulator (SLAs uniform in 50-400 ms, the
    campus network), served by ``policy`` so profiles evolve as they would in deployment."""
    from modi.envs.model_selection import build_sim

    streams = min(n, 256)
    sim = build_sim(pool, num_envs=streams, sla_range_ms=(50.0, 400.0))
    obs = sim.reset(seed=seed)
    out = []
    for _ in range(-(-n // streams)):
        out.append(obs.copy())
        sim.step(policy.select(obs))
        obs = sim.obs
    return np.concatenate(out)[:n]


def read_metadata(path: str | os.PathLike[str]) -> SelectorMetadata:
    """The :class:`SelectorMetadata` stored in an exported file."""
    model = onnx.load(os.fspath(path), load_external_data=False)
    return SelectorMetadata.from_props({p.key: p.value for p in model.metadata_props})


@dataclass(frozen=True)
class RegisteredSelector:
    """Where :func:`log_to_mlflow` put a selector."""

    name: str
    version: str
    alias: str
    run_id: str
    model_uri: str  # models:/name@alias, what Selector.load accepts


def log_to_mlflow(
    path: str | os.PathLike[str],
    registered_model_name: str | None,
    alias: str | None = "champion",
    *,
    run_id: str | None = None,
    tracking_uri: str | None = None,
    artifact_name: str = "selector",
) -> RegisteredSelector:
    """Log the ONNX file as an MLflow model (``mlflow.onnx``, CPU provider, weights inside the
    file), register it as a new version of ``registered_model_name`` and point ``alias`` at it
    (no registration without a name, no alias without an alias).

    Logs into ``run_id`` if given, else the active run, else a new run. The tracking store is
    ``tracking_uri``, else MLflow's default (``MLFLOW_TRACKING_URI``, or ``sqlite:///mlflow.db``
    in the working directory).
    """
    import mlflow
    import mlflow.onnx
    from mlflow import MlflowClient

    if tracking_uri is not None:
        mlflow.set_tracking_uri(tracking_uri)
    model = onnx.load(os.fspath(path))
    meta = SelectorMetadata.from_props({p.key: p.value for p in model.metadata_props})
    active = mlflow.active_run()
    if run_id is not None or active is None:
        ctx: Any = mlflow.start_run(run_id=run_id, run_name=None if run_id else "modi-export")
    else:
        ctx = contextlib.nullcontext(active)
    with _quiet_mlflow(), ctx as run:
        info = mlflow.onnx.log_model(
            model,
            name=artifact_name,
            registered_model_name=registered_model_name or None,
            onnx_execution_providers=["CPUExecutionProvider"],
            save_as_external_data=False,
            metadata={k: v for k, v in meta.to_props().items() if len(v) < 500},
        )
        mlflow.set_tags(
            {
                "modi.policy_kind": meta.policy_kind,
                "modi.pool_agnostic": str(meta.pool_agnostic).lower(),
                "modi.schema": f"{meta.schema_name} v{meta.schema_version}",
            }
        )
        rid = run.info.run_id
    if not registered_model_name:
        log.info("logged selector %s (run %s), not registered", info.model_uri, rid)
        return RegisteredSelector("", "", "", rid, str(info.model_uri))
    version = str(info.registered_model_version)
    if alias:
        MlflowClient().set_registered_model_alias(registered_model_name, alias, version)
        uri = f"models:/{registered_model_name}@{alias}"
    else:
        uri = f"models:/{registered_model_name}/{version}"
    log.info("registered %s version %s as %s (run %s)", registered_model_name, version, uri, rid)
    return RegisteredSelector(registered_model_name, version, alias or "", rid, uri)


@contextlib.contextmanager
def _quiet_mlflow() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def main(argv: list[str] | None = None) -> None:
    """``modi-export``: saved policy -> ONNX selector (optionally pool-specific, registered)."""
    p = argparse.ArgumentParser(
        prog="modi-export",
        description="Export a saved learned policy (LearnedPolicy.save) to an ONNX selector "
        "for modi.runtime.Selector.",
    )
    p.add_argument("policy", type=Path, help="saved policy file (from LearnedPolicy.save)")
    p.add_argument("out", type=Path, help="output .onnx file")
    p.add_argument(
        "--pool",
        default=None,
        help="pool preset (e.g. modipick_table2): export a pool-specific selector for it; "
        "default: pool-agnostic",
    )
    p.add_argument("--run-id", default=None, help="training run id to record in the metadata")
    p.add_argument("--no-fuse", action="store_true", help="export the scorer graph as traced")
    p.add_argument(
        "--parity",
        type=int,
        default=2000,
        help="check agreement with the policy on this many simulated requests (0: skip)",
    )
    p.add_argument("--mlflow-register", metavar="NAME", default=None, help="register in MLflow")
    p.add_argument("--alias", default="champion", help="alias of the registered version")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI")
    args = p.parse_args(argv)
    if args.parity < 0:
        p.error("--parity must be >= 0")
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from modi.agents.bandits import load_learned

    if args.policy.suffix == ".onnx":
        p.error(
            f"{args.policy} is already an exported selector; modi-export takes the saved "
            "policy a training run writes (policy.pt in the run folder, or LearnedPolicy.save)"
        )
    try:
        policy = load_learned(args.policy)
    except (FileNotFoundError, ValueError) as e:
        p.error(str(e))
    pool = None
    if args.pool is not None:
        from modi.envs.catalog import PresetError, load_preset

        try:
            pool = load_preset("pool", args.pool)
        except PresetError as e:
            p.error(str(e))
    path = export_onnx(
        policy,
        args.out,
        pool_ids=None if pool is None else list(pool.ids),
        run_id=args.run_id,
        pool_accuracy=None if pool is None else pool.accuracy.tolist(),
        fuse=not args.no_fuse,
    )
    result: dict[str, Any] = {"path": str(path), "metadata": read_metadata(path).to_props()}
    if args.parity:
        obs = simulated_observations(policy, pool or "modipick_table2", args.parity)
        result["parity"] = check_parity(policy, path, obs)
    if args.mlflow_register:
        reg = log_to_mlflow(path, args.mlflow_register, args.alias, tracking_uri=args.tracking_uri)
        result["registered"] = reg.__dict__
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
