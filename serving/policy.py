"""The logging policy's action probabilities, and the exploration a learned selector can be
served with, for decision logs that off-policy evaluation can use.

* A learned decision, no exploration: one-hot on the chosen model.
* ``epsilon:E``: ``E/K + (1 - E) * 1[greedy]``, the served model drawn from it.
* ``softmax:T``: ``softmax(scores / T)`` over the selector graph's ``scores`` output.
* A fallback (ModiPick, also when the shield overrides): ModiPick's stage-three probabilities
  for the request's budget and the profiles in its features (what the rule drew from).
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from modi.runtime import features as F
from modi.runtime.modipick import modipick_stages

EXPLORATION_KINDS = ("none", "epsilon", "softmax", "rule")


@dataclass(frozen=True)
class Exploration:
    """How a learned selector's choice is randomised when served.

    ``kind`` is ``"none"``, ``"epsilon"`` (with ``epsilon`` in [0, 1]) or ``"softmax"``
    (with ``temperature`` > 0); ``"rule"`` describes ModiPick's own randomness.
    """

    kind: str = "none"
    epsilon: float | None = None
    temperature: float | None = None

    @classmethod
    def parse(cls, text: str) -> Exploration:
        """``"none"``, ``"epsilon:0.1"`` or ``"softmax:0.5"``; ``ValueError`` naming the
        problem otherwise."""
        t = text.strip().lower()
        if t in ("", "none"):
            return cls()
        kind, _, value = t.partition(":")
        try:
            x = float(value)
        except ValueError:
            x = math.nan
        if kind == "epsilon":
            if not 0.0 <= x <= 1.0:
                raise ValueError(f"--explore {text!r}: epsilon must be a number in [0, 1]")
            return cls("epsilon", epsilon=x)
        if kind == "softmax":
            if not (math.isfinite(x) and x > 0):
                raise ValueError(f"--explore {text!r}: the temperature must be a number > 0")
            return cls("softmax", temperature=x)
        raise ValueError(f"--explore {text!r}: expected none, epsilon:E or softmax:T")

    def to_dict(self) -> dict[str, Any]:
        """The log's ``exploration`` object."""
        return {"kind": self.kind, "epsilon": self.epsilon, "temperature": self.temperature}


RULE = Exploration("rule")
NONE = Exploration()


def file_version(path: str | os.PathLike[str]) -> str:
    """``"sha256:<hex>"`` of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return "sha256:" + h.hexdigest()


def selector_info(name: str, version: str, exploration: Exploration) -> dict[str, Any]:
    """The log's ``selector`` object."""
    return {"name": name, "version": version, "exploration": exploration.to_dict()}


MODIPICK_INFO = selector_info("modipick", "modipick", RULE)


def one_hot(k: int, index: int) -> NDArray[np.float64]:
    """Probability 1 on ``index`` of ``k`` actions."""
    p = np.zeros(k)
    p[index] = 1.0
    return p


def modipick_probabilities(
    features: NDArray[np.floating], k: int, threshold_ms: float
) -> NDArray[np.float64]:
    """ModiPick's action probabilities for observations ``(R + P*K,)`` or ``(N, R + P*K)``
    (``(K,)`` or ``(N, K)``): each row's budget and the profiles (μ, σ, accuracy) it carries."""
    x = np.asarray(features, dtype=np.float64)
    rows = np.atleast_2d(x)
    mod = rows[:, F.R :].reshape(rows.shape[0], k, F.P)
    st = modipick_stages(
        rows[:, F.BUDGET], mod[:, :, F.MU], mod[:, :, F.SIGMA], mod[:, :, F.ACC], threshold_ms
    )
    p: NDArray[np.float64] = st.probability[0] if x.ndim == 1 else st.probability
    return p


def epsilon_probabilities(k: int, greedy: int, epsilon: float) -> NDArray[np.float64]:
    """ε-greedy: ``ε/K + (1 − ε)·1[greedy]``."""
    p = np.full(k, epsilon / k)
    p[greedy] += 1.0 - epsilon
    return p


def softmax_probabilities(scores: NDArray[np.floating], temperature: float) -> NDArray[np.float64]:
    """``softmax(scores / T)`` (stable; non-finite scores get probability 0)."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1) / temperature
    s = np.where(np.isfinite(s), s, -np.inf)
    s = s - s.max()
    e = np.exp(s)
    out: NDArray[np.float64] = e / e.sum()
    return out


def draw(p: NDArray[np.float64], u: float) -> int:
    """The action of ``p`` at uniform ``u`` in [0, 1) (never a zero-probability one)."""
    c = np.cumsum(p)
    i = int(np.searchsorted(c, u * c[-1], side="right"))
    i = min(i, p.size - 1)
    while p[i] <= 0 and i > 0:
        i -= 1
    return i


class Scorer:
    """The ``scores`` output of a selector graph for one observation (for softmax
    exploration): its own onnxruntime session on the selector file."""

    def __init__(self, path: str | os.PathLike[str], k: int) -> None:
        import onnxruntime as ort

        from modi.runtime.metadata import INPUT_MODELS, INPUT_REQUEST, OUTPUT_SCORES

        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        self._sess = ort.InferenceSession(str(Path(path)), so, providers=["CPUExecutionProvider"])
        self._k = k
        self._names = (INPUT_REQUEST, INPUT_MODELS, OUTPUT_SCORES)

    def scores(self, features: NDArray[np.floating]) -> NDArray[np.float64]:
        """Scores ``(K,)`` of one observation."""
        x = np.asarray(features, dtype=np.float32)
        req_name, mod_name, out = self._names
        feed = {
            req_name: np.ascontiguousarray(x[None, : F.R]),
            mod_name: np.ascontiguousarray(x[F.R :].reshape(1, self._k, F.P)),
        }
        s: NDArray[np.float64] = np.asarray(self._sess.run([out], feed)[0][0], dtype=np.float64)
        return s
