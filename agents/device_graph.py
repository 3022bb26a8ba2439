"""The ONNX graph of an exported device scorer, built for the phone's batch-1 call.

:func:`scorer_graph` turns the normalised MLP of :class:`~modi.agents.device_scorer.ScorerNet`
into ``options (N, K, F) float32 -> predictions (N, K, 3) float64, scores (N, K) float64``
with the normalisations folded into the weights (done once, in float64):

* the input standardisation ``(x - mean) / std`` into the first layer
  (``W' = W / std``, ``b' = b - (mean / std) W``);
* the target de-standardisation ``y * y_std + y_mean`` into the last layer.

The option matrix is reshaped to ``(N·K, F)`` so every layer is one ``Gemm`` (the bias added in
the same kernel): 12 nodes instead of 15, and fewer, larger kernels (Cast, Sub, Div, MatMul +
Add per layer, Mul, Add, MatMul, Squeeze before). Everything after the Cast is float64, as in
the trained policy's :meth:`~modi.agents.device_scorer.DeviceScorerPolicy.predict`: the two
agree on the argmax except at ties far below any meaningful difference (folding changes the
rounding only in float64's last bits). ``modi-bench``'s ``device_*`` figures run this graph.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from numpy.typing import NDArray
from onnx import TensorProto, helper, numpy_helper

from modi.runtime import device_features as dfeat

#: Names of the graph's input and outputs (:mod:`modi.runtime.device_meta`'s contract).
INPUT = "options"
OUTPUTS = ("predictions", "scores")


def fold_layers(
    weights: Sequence[NDArray[np.floating]],
    biases: Sequence[NDArray[np.floating]],
    x_mean: NDArray[np.floating],
    x_std: NDArray[np.floating],
    y_mean: NDArray[np.floating],
    y_std: NDArray[np.floating],
) -> tuple[list[NDArray[np.float64]], list[NDArray[np.float64]]]:
    """Layers ``(in, out)`` / ``(out,)`` with the input and target normalisations folded in
    (float64): ``mlp((x - x_mean) / x_std) * y_std + y_mean`` = the folded MLP of ``x``."""
    if len(weights) != len(biases) or not weights:
        raise ValueError(
            f"need as many weights as biases (>= 1), got {len(weights)} and {len(biases)}"
        )
    w = [np.asarray(a, dtype=np.float64) for a in weights]
    b = [np.asarray(a, dtype=np.float64) for a in biases]
    mean = np.asarray(x_mean, dtype=np.float64)
    std = np.asarray(x_std, dtype=np.float64)
    b[0] = b[0] - (mean / std) @ w[0]
    w[0] = w[0] / std[:, None]
    ys = np.asarray(y_std, dtype=np.float64)
    w[-1] = w[-1] * ys[None, :]
    b[-1] = b[-1] * ys + np.asarray(y_mean, dtype=np.float64)
    return w, b


def scorer_graph(
    weights: Sequence[NDArray[np.floating]],
    biases: Sequence[NDArray[np.floating]],
    x_mean: NDArray[np.floating],
    x_std: NDArray[np.floating],
    y_mean: NDArray[np.floating],
    y_std: NDArray[np.floating],
    objective: NDArray[np.floating],
    name: str = "modi_device_scorer",
) -> onnx.GraphProto:
    """The device scorer's graph (see the module docstring). ``weights[i]`` is ``(in, out)``
    (a torch ``Linear``'s weight transposed), ReLU between layers; ``objective`` ``(3,)`` are
    the weights of (accuracy, energy J, MB sent) in the score."""
    w, b = fold_layers(weights, biases, x_mean, x_std, y_mean, y_std)
    obj = np.asarray(objective, dtype=np.float64).reshape(-1, 1)
    if w[0].shape[0] != dfeat.F or obj.shape[0] != w[-1].shape[1]:
        raise ValueError(
            f"first layer takes {w[0].shape[0]} features (expected {dfeat.F}); objective has "
            f"{obj.shape[0]} weights for {w[-1].shape[1]} predictions"
        )
    inits = [
        numpy_helper.from_array(np.array([-1, dfeat.F], dtype=np.int64), "rows_shape"),
        numpy_helper.from_array(obj, "objective"),
        numpy_helper.from_array(np.array([len(obj)], dtype=np.int64), "num_targets"),
    ]
    nodes = [
        helper.make_node("Cast", [INPUT], ["xd"], to=TensorProto.DOUBLE),
        helper.make_node("Reshape", ["xd", "rows_shape"], ["h0"]),
    ]
    cur = "h0"
    for i, (wi, bi) in enumerate(zip(w, b, strict=True)):
        inits += [numpy_helper.from_array(wi, f"w{i}"), numpy_helper.from_array(bi, f"b{i}")]
        last = i == len(w) - 1
        out = "pred_rows" if last else f"a{i}"
        nodes.append(helper.make_node("Gemm", [cur, f"w{i}", f"b{i}"], [out]))
        if not last:
            nodes.append(helper.make_node("Relu", [out], [f"h{i + 1}"]))
            cur = f"h{i + 1}"
    # (N·K, 3) back to (N, K, 3) and the scores (N·K, 1) to (N, K)
    nodes += [
        helper.make_node("Shape", [INPUT], ["nk"], end=2),
        helper.make_node("Concat", ["nk", "num_targets"], ["pred_dims"], axis=0),
        helper.make_node("Reshape", ["pred_rows", "pred_dims"], ["predictions"]),
        helper.make_node("MatMul", ["pred_rows", "objective"], ["score_rows"]),
        helper.make_node("Reshape", ["score_rows", "nk"], ["scores"]),
    ]
    return helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["N", "K", dfeat.F])],
        [
            helper.make_tensor_value_info("predictions", TensorProto.DOUBLE, ["N", "K", 3]),
            helper.make_tensor_value_info("scores", TensorProto.DOUBLE, ["N", "K"]),
        ],
        inits,
    )
