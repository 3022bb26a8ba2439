"""A tiny served pool for the serving tests, built in milliseconds: two hand-made ONNX
classifiers of 8x8 gray images (no training), their manifest and pool YAML, and selectors."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

TOKEN = "test-token"


def _classifier(path: Path, seed: int) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array(rng.normal(size=(64, 10)).astype(np.float32), "w")
    shape = numpy_helper.from_array(np.array([1, 64], np.int64), "shape")
    nodes = [
        helper.make_node("Reshape", ["x", "shape"], ["flat"]),
        helper.make_node("MatMul", ["flat", "w"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])],
        [w, shape],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)


def build_tiny_pool(d: Path) -> dict[str, Path]:
    """``{"dir", "yaml", "sel"}``: a two-model pool and a selector folder with ``a.onnx`` (greedy
    LinUCB), ``b.onnx`` (another LinUCB) and ``bad.onnx`` (random bytes)."""
    from modi.agents.bandits import LinUCB
    from modi.agents.export import export_onnx
    from modi.experiments.zoo import ZooEntry, write_manifest

    pool_dir = d / "tiny"
    pool_dir.mkdir(parents=True)
    entries = []
    for i, (mid, acc) in enumerate((("tiny_fast", 0.6), ("tiny_slow", 0.9))):
        _classifier(pool_dir / f"{mid}.onnx", i)
        entries.append(ZooEntry(mid, f"{mid}.onnx", [1, 8, 8], "gray", 1.0, [0.0], [1.0], acc,
                                "hand-made", "digits"))  # fmt: skip
    write_manifest(pool_dir, "tiny", entries)
    yml = d / "tiny_pool.yaml"
    yml.write_text(
        "models:\n"
        "  - {id: tiny_fast, accuracy: 0.6, mean_ms: 5.0, std_ms: 1.0}\n"
        "  - {id: tiny_slow, accuracy: 0.9, mean_ms: 40.0, std_ms: 5.0}\n"
    )
    sel = d / "selectors"
    sel.mkdir()
    greedy = LinUCB()
    greedy.theta = np.zeros_like(greedy.theta)
    greedy.theta[0] = 1.0
    export_onnx(greedy, sel / "a.onnx", run_id="a")
    export_onnx(LinUCB(seed=1), sel / "b.onnx", run_id="b")
    (sel / "bad.onnx").write_bytes(os.urandom(4096))
    return {"dir": pool_dir, "yaml": yml, "sel": sel}


def png(size: int = 64, mode: str = "L", fmt: str = "PNG") -> bytes:
    """An encoded image of ``size`` x ``size`` pixels."""
    import io

    from PIL import Image

    im = Image.new(mode, (size, size), 128)
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()
