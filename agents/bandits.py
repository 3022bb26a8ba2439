"""Contextual bandits that learn ``P(SLA met | request, model)`` with shared (pool-agnostic)
weights and pick the model with the highest expected reward ``A(m)·P(met)``.

* :class:`LinUCB` — ridge regression over :class:`~modi.agents.scorers.StepBasis`, optimism
  ``α·sqrt(bᵀA⁻¹b)`` while training; the posterior mean decides at evaluation and export.
* :class:`LinearThompson` — same model, a posterior sample of ``θ`` per request while training.
* :class:`NeuralBandit` — :class:`~modi.agents.scorers.MetNet` (shared per-model MLP) trained
  with binary cross-entropy on the outcomes of its own choices, ε-greedy exploration.

All satisfy :class:`~modi.agents.protocol.Policy` (deterministic ``select``) and
:class:`LearnedPolicy` (``explore`` + ``observe`` while training, ``selector_module`` for
export, ``save``/``load``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from numpy.typing import NDArray

from modi.agents.protocol import Actions, Obs
from modi.agents.scorers import (
    DEFAULT_STEPS,
    ArgmaxSelector,
    LinearScorer,
    MetNet,
    StepBasis,
    relative_names,
    split_obs,
)
from modi.runtime import features as F
from modi.runtime.metadata import FeatureRanges, RangeRecorder

if TYPE_CHECKING:
    from modi.agents.training import TrainingHistory
    from modi.envs.simulator import ModelSelectionSim

log = logging.getLogger(__name__)


class LearnedPolicy:
    """Base of learned selectors: a torch scorer over ``(request, models)`` and an argmax."""

    name: str = "learned"
    kind: ClassVar[str] = "learned"
    #: Requests between training-curve points (and checkpoints) in :meth:`fit`.
    log_every: int = 20_000

    def __init__(self, miss_penalty: float = 0.0, seed: int | None = None) -> None:
        if miss_penalty < 0:
            raise ValueError(f"miss_penalty must be >= 0, got {miss_penalty}")
        self.miss_penalty = float(miss_penalty)
        self._rng = np.random.default_rng(seed)
        torch.manual_seed(0 if seed is None else seed)
        #: Range of every monitored feature over the observations seen in training (the
        #: runtime shield's reference; :func:`modi.agents.export.export_onnx` writes it).
        self.ranges = RangeRecorder()

    #: The features the policy's scorer reads (``None``: all of them). Only these are written
    #: into an export's training ranges, so the runtime's shield checks what the policy would
    #: misjudge, not a column it ignores (the queue, for a policy that does not look at it).
    @property
    def reads(self) -> tuple[str, ...] | None:
        """The features the scorer reads (``None``: all of them)."""
        return None

    @property
    def feature_ranges(self) -> FeatureRanges | None:
        """What :attr:`ranges` recorded (``None``: not trained here, e.g. an older file), for
        the features the policy reads (:attr:`reads`)."""
        r = self.ranges.ranges()
        return r if r is None or self.reads is None else r.subset(self.reads)

    def record_observations(self, obs: Obs) -> None:
        """Fold training observations ``(N, R + P*K)`` into :attr:`ranges` (training loops
        call it for every batch the policy sees)."""
        self.ranges.update(obs)

    # -- protocol -----------------------------------------------------------------------------
    def reset(self, num_envs: int, seed: int | None = None) -> None:
        """Evaluation is deterministic; nothing to reset."""

    def scorer(self) -> torch.nn.Module:
        """The deterministic decision model: ``(request, models) -> scores (N, K)``."""
        raise NotImplementedError

    def selector_module(self) -> ArgmaxSelector:
        """``(request, models) -> (action, scores)``, what :mod:`modi.agents.export` exports."""
        return ArgmaxSelector(self.scorer()).eval()

    @torch.no_grad()
    def scores(self, obs: Obs) -> NDArray[np.float32]:
        """Scores ``(N, K)`` of the deterministic decision."""
        req, models = split_obs(torch.as_tensor(np.atleast_2d(obs), dtype=torch.float32))
        return self.scorer()(req, models).numpy()

    @torch.no_grad()
    def set_decision_penalty(self, miss_penalty: float) -> None:
        """Rank models by ``(A + penalty)·P(met)`` from now on (what the saved and exported
        policy ships): the penalty trades accuracy for attainment at decision time and leaves
        the learned ``P(met)`` as it is, so it can be chosen on validation after training."""
        if not np.isfinite(miss_penalty) or miss_penalty < 0:
            raise ValueError(f"miss_penalty must be a number >= 0, got {miss_penalty!r}")
        self.miss_penalty = float(miss_penalty)
        net = getattr(self, "net", None)
        if net is not None and hasattr(net, "miss_penalty"):
            net.miss_penalty = float(miss_penalty)

    def select(self, obs: Obs) -> Actions:
        """Deterministic choice: the best-scoring model per row (the fastest when every model
        is hopeless), exactly what :meth:`selector_module` and its ONNX export compute."""
        req, models = split_obs(torch.as_tensor(np.atleast_2d(obs), dtype=torch.float32))
        action, _ = self.selector_module()(req, models)
        return np.asarray(action.numpy(), dtype=np.intp)

    # -- training -----------------------------------------------------------------------------
    def fit(
        self,
        sim: ModelSelectionSim,
        total_requests: int,
        seed: int,
        progress: bool = True,
        callback: Callable[[int, dict[str, float]], None] | None = None,
    ) -> TrainingHistory:
        """Train on ``total_requests`` requests of ``sim`` (online: explore, observe).

        Torch runs single-threaded meanwhile: the batches are small, and on a 2-core machine
        extra threads only contend (seen 5-30x slower with the default thread count).
        """
        from modi.agents.training import train_online

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return train_online(
                self, sim, total_requests, seed, progress, self.log_every, callback=callback
            )
        finally:
            torch.set_num_threads(threads)

    def explore(self, obs: Obs) -> Actions:
        """Choice while training (with exploration)."""
        raise NotImplementedError

    def observe(self, obs: Obs, actions: Actions, met: NDArray[np.bool_]) -> None:
        """Learn from the outcome (SLA met or not) of ``actions`` taken on ``obs``."""
        raise NotImplementedError

    # -- persistence --------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Everything needed to rebuild the policy."""
        raise NotImplementedError

    def save(self, path: str | Path) -> Path:
        """Write the policy to ``path`` (a torch file)."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        st = {
            "kind": self.kind,
            "name": self.name,
            "schema_version": F.SCHEMA_VERSION,
            **self.state(),
        }
        st["training_ranges"] = self.ranges.state()
        torch.save(st, p)
        return p

    def _restore_ranges(self, st: dict[str, Any]) -> None:
        """Ranges of a saved state (absent in files saved before they were recorded)."""
        doc = st.get("training_ranges")
        if doc is not None:
            import json

            self.ranges = RangeRecorder.from_ranges(FeatureRanges.from_json(json.dumps(doc)))


class _LinearBandit(LearnedPolicy):
    """Ridge regression of ``met`` on the step basis, shared by all models."""

    @property
    def reads(self) -> tuple[str, ...]:
        """What the step basis reads: its headrooms' columns, mu, sigma and the slowdown."""
        return self.basis.reads

    def __init__(
        self,
        alpha: float = 0.5,
        ridge: float = 1.0,
        width_ms: float = 8.0,
        miss_penalty: float = 0.0,
        seed: int | None = None,
        centres_ms: Sequence[float] | None = None,
        steps: Sequence[str] | None = None,
    ) -> None:
        super().__init__(miss_penalty, seed)
        if centres_ms is not None:
            c = [float(x) for x in centres_ms]
            if not c or any(not np.isfinite(x) for x in c) or len(set(c)) != len(c):
                raise ValueError(
                    f"{self.kind}.centres_ms must be distinct finite numbers (ms), got {centres_ms}"
                )
        if width_ms <= 0:
            raise ValueError(f"{self.kind}.width_ms must be > 0, got {width_ms}")
        if alpha < 0:
            raise ValueError(f"{self.kind}.alpha must be >= 0, got {alpha}")
        if ridge <= 0:
            raise ValueError(f"{self.kind}.ridge must be > 0, got {ridge}")
        self.alpha = float(alpha)
        self.ridge = float(ridge)
        self.centres_ms = (
            None if centres_ms is None else tuple(sorted(float(x) for x in centres_ms))
        )
        try:
            self.basis = StepBasis(
                centres_ms=self.centres_ms,
                width_ms=width_ms,
                steps=DEFAULT_STEPS if steps is None else tuple(str(x) for x in steps),
            )
        except ValueError as e:
            raise ValueError(f"{self.kind}.{e}") from None
        d = self.basis.dim
        self.A = np.eye(d) * self.ridge
        self.b = np.zeros(d)
        self.theta = np.zeros(d)
        self.A_inv = np.eye(d) / self.ridge

    def _basis(self, obs: Obs) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        with torch.no_grad():
            req, models = split_obs(torch.as_tensor(np.atleast_2d(obs), dtype=torch.float32))
            phi = self.basis(req, models).double().numpy()
        return phi, np.atleast_2d(obs)[:, F.R + F.ACC :: F.P].astype(np.float64)

    def scorer(self) -> torch.nn.Module:
        """Posterior-mean scorer."""
        return LinearScorer(self.basis, torch.as_tensor(self.theta), self.miss_penalty).eval()

    def _exp_reward(self, acc: NDArray[np.float64], p: NDArray[np.float64]) -> NDArray[np.float64]:
        pen = self.miss_penalty
        return (acc + pen) * p - pen

    def observe(self, obs: Obs, actions: Actions, met: NDArray[np.bool_]) -> None:
        """Rank-N update of the ridge regression."""
        phi, _ = self._basis(obs)
        x = phi[np.arange(phi.shape[0]), actions]
        self.A += x.T @ x
        self.b += x.T @ np.asarray(met, dtype=np.float64)
        self.A_inv = np.asarray(np.linalg.inv(self.A), dtype=np.float64)
        self.theta = np.asarray(self.A_inv @ self.b, dtype=np.float64)

    def state(self) -> dict[str, Any]:
        """Hyper-parameters and sufficient statistics."""
        return {
            "alpha": self.alpha,
            "ridge": self.ridge,
            "width_ms": self.basis.width * 100.0,
            "centres_ms": None if self.centres_ms is None else list(self.centres_ms),
            "steps": list(self.basis.steps),
            "miss_penalty": self.miss_penalty,
            "A": self.A,
            "b": self.b,
        }

    def _load_state(self, st: dict[str, Any]) -> None:
        self.A = np.asarray(st["A"], dtype=np.float64)
        self.b = np.asarray(st["b"], dtype=np.float64)
        self.A_inv = np.asarray(np.linalg.inv(self.A), dtype=np.float64)
        self.theta = np.asarray(self.A_inv @ self.b, dtype=np.float64)


class LinUCB(_LinearBandit):
    """Shared-weight LinUCB (upper confidence bound on ``P(met)``)."""

    name = "linucb"
    kind = "linucb"

    def explore(self, obs: Obs) -> Actions:
        """Optimistic choice."""
        phi, acc = self._basis(obs)
        mean = phi @ self.theta
        bonus = np.sqrt(np.maximum(((phi @ self.A_inv) * phi).sum(axis=-1), 0.0))
        p = np.clip(mean + self.alpha * bonus, 0.0, 1.0)
        return np.asarray(self._exp_reward(acc, p).argmax(axis=1), dtype=np.intp)


class LinearThompson(_LinearBandit):
    """Shared-weight linear Thompson sampling: one posterior sample of θ per request."""

    name = "lints"
    kind = "lints"

    def explore(self, obs: Obs) -> Actions:
        """Choice under a posterior sample (scale ``alpha``)."""
        phi, acc = self._basis(obs)
        n = phi.shape[0]
        chol = np.linalg.cholesky(self.A_inv + 1e-12 * np.eye(self.A_inv.shape[0]))
        thetas = self.theta + self.alpha * self._rng.standard_normal((n, self.theta.size)) @ chol.T
        p = np.clip(np.einsum("nkd,nd->nk", phi, thetas), 0.0, 1.0)
        return np.asarray(self._exp_reward(acc, p).argmax(axis=1), dtype=np.intp)


class NeuralBandit(LearnedPolicy):
    """A shared per-model MLP predicting ``P(met)``; ε-greedy while training. ``relative``: the
    MLP also reads the scale-free pair features (:data:`~modi.agents.scorers.RELATIVE_FEATURES`);
    ``pair_accuracy=False``: it does not read the model's accuracy
    (:class:`~modi.agents.scorers.AffinePairFeatures`).
    """

    name = "neural"
    kind = "neural"

    def __init__(
        self,
        hidden: int = 64,
        layers: int = 2,
        lr: float = 3e-3,
        batch_size: int = 512,
        buffer_size: int = 200_000,
        epsilon_start: float = 0.3,
        epsilon_end: float = 0.02,
        epsilon_decay_steps: int = 200_000,
        updates_per_step: int = 1,
        miss_penalty: float = 0.0,
        seed: int | None = None,
        norm_samples: int = 1024,
        relative: bool | Sequence[str] = False,
        pair_accuracy: bool = True,
    ) -> None:
        super().__init__(miss_penalty, seed)
        for name, v in (
            ("hidden", hidden),
            ("layers", layers),
            ("batch_size", batch_size),
            ("norm_samples", norm_samples),
        ):
            if v < 1:
                raise ValueError(f"neural.{name} must be >= 1, got {v}")
        if not 0 <= epsilon_end <= epsilon_start <= 1:
            raise ValueError(
                "neural.epsilon_start/epsilon_end must satisfy 0 <= end <= start <= 1, got "
                f"{epsilon_start}, {epsilon_end}"
            )
        self.hparams: dict[str, Any] = {
            "hidden": hidden,
            "layers": layers,
            "lr": lr,
            "batch_size": batch_size,
            "buffer_size": buffer_size,
            "epsilon_start": epsilon_start,
            "epsilon_end": epsilon_end,
            "epsilon_decay_steps": epsilon_decay_steps,
            "updates_per_step": updates_per_step,
            "norm_samples": norm_samples,
            "relative": list(relative_names(relative)),
            "pair_accuracy": bool(pair_accuracy),
        }
        self.net = MetNet(hidden, layers, miss_penalty, relative_names(relative), pair_accuracy)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=lr)
        self._buf_req = np.zeros((buffer_size, F.R), dtype=np.float32)
        self._buf_mod = np.zeros((buffer_size, 1, F.P), dtype=np.float32)
        self._buf_y = np.zeros(buffer_size, dtype=np.float32)
        self._size = 0
        self._pos = 0
        self.seen = 0
        self._normed = False

    @property
    def epsilon(self) -> float:
        """Current exploration rate."""
        h = self.hparams
        frac = min(1.0, self.seen / max(1, int(h["epsilon_decay_steps"])))
        return float(h["epsilon_start"] + frac * (h["epsilon_end"] - h["epsilon_start"]))

    def scorer(self) -> torch.nn.Module:
        """The trained network."""
        return self.net.eval()

    def explore(self, obs: Obs) -> Actions:
        """ε-greedy around the current network."""
        obs2 = np.atleast_2d(obs)
        greedy = self.select(obs2)
        n, k = obs2.shape[0], (obs2.shape[1] - F.R) // F.P
        rand = self._rng.random(n) < self.epsilon
        return np.where(rand, self._rng.integers(0, k, size=n), greedy).astype(np.intp)

    def observe(self, obs: Obs, actions: Actions, met: NDArray[np.bool_]) -> None:
        """Store the chosen (request, model) pairs and take gradient steps."""
        obs2 = np.atleast_2d(obs)
        n = obs2.shape[0]
        req = obs2[:, : F.R]
        mod = obs2[:, F.R :].reshape(n, -1, F.P)[np.arange(n), actions][:, None, :]
        idx = (self._pos + np.arange(n)) % self._buf_y.size
        self._buf_req[idx] = req
        self._buf_mod[idx] = mod
        self._buf_y[idx] = met
        self._pos = int((self._pos + n) % self._buf_y.size)
        self._size = min(self._size + n, self._buf_y.size)
        self.seen += n
        if not self._normed and self._size >= min(
            int(self.hparams.get("norm_samples", 1024)), self._buf_y.size
        ):
            self._fit_norm()
        if not self._normed:
            return
        self.net.train()
        bs = int(self.hparams["batch_size"])
        for _ in range(int(self.hparams["updates_per_step"])):
            j = self._rng.integers(0, self._size, size=bs)
            logits = self.net.logits(
                torch.from_numpy(self._buf_req[j]), torch.from_numpy(self._buf_mod[j])
            ).squeeze(-1)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                logits, torch.from_numpy(self._buf_y[j])
            )
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
        self.net.eval()

    def _fit_norm(self) -> None:
        with torch.no_grad():
            f = self.net.pairs(
                torch.from_numpy(self._buf_req[: self._size]),
                torch.from_numpy(self._buf_mod[: self._size]),
            ).reshape(-1, self.net.norm_mean.numel())  # type: ignore[operator]
            self.net.norm_mean.copy_(f.mean(0))  # type: ignore[operator]
            # a feature nearly constant in these samples (e.g. one network family so far) must
            # not be blown up where it later varies: at least 0.01 of its unit scale
            self.net.norm_std.copy_(f.std(0).clamp_min(1e-2))  # type: ignore[operator]
        self._normed = True

    def state(self) -> dict[str, Any]:
        """Hyper-parameters and network weights."""
        return {
            "hparams": self.hparams,
            "miss_penalty": self.miss_penalty,
            "state_dict": self.net.state_dict(),
            "seen": self.seen,
        }


BANDITS: dict[str, type[LearnedPolicy]] = {
    "linucb": LinUCB,
    "lints": LinearThompson,
    "neural": NeuralBandit,
}


def load_learned(path: str | Path) -> LearnedPolicy:
    """Load a policy written by :meth:`LearnedPolicy.save` (bandits; SB3 agents register too)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"saved policy {p} does not exist")
    try:
        st = torch.load(p, weights_only=False)
    except Exception as e:  # any unpickling failure means a bad file
        raise ValueError(
            f"{p} is not a saved modi policy (expected the policy.pt a training run writes, "
            f"not an exported .onnx): {e}"
        ) from None
    kind = st.get("kind") if isinstance(st, dict) else None
    version = st.get("schema_version", 1) if isinstance(st, dict) else None
    if kind is not None and version != F.SCHEMA_VERSION:
        from modi.runtime.metadata import schema_changes

        changes = schema_changes(int(version)) if isinstance(version, int) else ""
        raise ValueError(
            f"{p} was trained on feature schema {F.SCHEMA_NAME} v{version}; this modi builds "
            f"v{F.SCHEMA_VERSION}" + (f" ({changes})" if changes else "") + ": retrain it "
            "with modi-train"
        )
    if kind in ("linucb", "lints"):
        cls = LinUCB if kind == "linucb" else LinearThompson
        pol: LearnedPolicy = cls(
            alpha=st["alpha"],
            ridge=st["ridge"],
            width_ms=st["width_ms"],
            miss_penalty=st["miss_penalty"],
            centres_ms=st.get("centres_ms"),
            steps=st.get("steps"),
        )
        pol._load_state(st)  # type: ignore[attr-defined]
        pol._restore_ranges(st)
        return pol
    if kind == "neural":
        nb = NeuralBandit(**st["hparams"], miss_penalty=st["miss_penalty"])
        nb.net.load_state_dict(st["state_dict"])
        nb._normed = True
        nb.seen = int(st["seen"])
        nb._restore_ranges(st)
        return nb
    if kind in ("ppo", "dqn", "a2c"):
        from modi.agents.sb3_agents import load_sb3

        return load_sb3(st)
    known = [*sorted(BANDITS), "ppo", "dqn", "a2c"]
    raise ValueError(f"{p}: unknown policy kind {kind!r}; expected one of {known}")
