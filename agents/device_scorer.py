"""A learned device policy for ``modi/Offload-v0``: one shared scorer over placement options.

Every placement option of a capture — each on-device model, offload with on-device or
in-cloud preprocessing, each with or without the on-device backup — is described by one
vector of :func:`modi.runtime.device_features.option_features` (the request, the device's own
network history, and the on-device model the option involves). One small MLP maps an option
vector to the option's expected outcome: effective accuracy, device energy (J) and MB sent.
The policy picks the option with the highest

    score = accuracy - w_energy_per_j * energy_J - w_bytes_per_mb * MB_sent

so any energy weight is one argmax away (the accuracy-energy frontier needs no retraining), and
nothing in the scorer depends on the device's model list: a phone with another on-device pool
needs no retraining (only options whose features leave the training range are refused at run
time, see :class:`modi.runtime.DeviceSelector`).

Training is full-information regression in simulation: at every visited capture the env's
privileged counterfactual outcomes of *all* options (:meth:`OffloadSim.counterfactual_outcomes`)
are the regression targets (the observation stays the honest one), on a mixture of device tiers
× networks × SLAs. States are visited first with uniformly random options, then with the
current scorer (ε-greedy), so the device's network history looks like the learned policy's.
The policy is myopic: it ignores what a model load does to later requests.

Export: :func:`export_device_onnx` writes one ONNX file ``options (N, K, F) -> predictions
(N, K, 3), scores (N, K)`` with the feature schema, the weights and the training range of every
feature in its metadata (:mod:`modi.agents.device_onnx_meta` keys).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import EllipsisType
from typing import Any

import numpy as np
import onnx
import torch
from numpy.typing import NDArray
from onnx import TensorProto, helper, numpy_helper

from modi.agents.device_graph import fold_layers, scorer_graph
from modi.envs.devices import DeviceProfile
from modi.envs.offload import OffloadSim
from modi.runtime import device_features as dfeat
from modi.runtime.device_meta import (
    ANCHOR_BONUS,
    CELLULAR_MIN_W,
    CONTEXTS,
    TIE_OUT,
    ContextSetting,
    DeviceModelMeta,
    check_contexts,
    context_initializers,
    objective_vector,
)
from modi.runtime.device_selector import DeviceSelector, DeviceSpec

log = logging.getLogger(__name__)

#: Prediction targets, in output order.
TARGETS = ("accuracy", "energy_j", "mb_sent")
OPSET = 18


class DeviceScorerError(ValueError):
    """Bad training or export argument; the message names it."""


class ScorerNet(torch.nn.Module):
    """Normalised MLP ``(..., F) -> (..., 3)`` (accuracy, energy J, MB sent)."""

    x_mean: torch.Tensor
    x_std: torch.Tensor
    y_mean: torch.Tensor
    y_std: torch.Tensor

    def __init__(
        self,
        hidden: Sequence[int],
        x_mean: NDArray[np.float32],
        x_std: NDArray[np.float32],
        y_mean: NDArray[np.float32],
        y_std: NDArray[np.float32],
    ) -> None:
        super().__init__()
        layers: list[torch.nn.Module] = []
        width = dfeat.F
        for h in hidden:
            layers += [torch.nn.Linear(width, int(h)), torch.nn.ReLU()]
            width = int(h)
        layers.append(torch.nn.Linear(width, len(TARGETS)))
        self.mlp = torch.nn.Sequential(*layers)
        self.register_buffer("x_mean", torch.as_tensor(x_mean, dtype=torch.float32))
        self.register_buffer("x_std", torch.as_tensor(x_std, dtype=torch.float32))
        self.register_buffer("y_mean", torch.as_tensor(y_mean, dtype=torch.float32))
        self.register_buffer("y_std", torch.as_tensor(y_std, dtype=torch.float32))
        self.hidden = [int(h) for h in hidden]

    def forward_normalised(self, x: torch.Tensor) -> torch.Tensor:
        """Predictions in target-standardised units."""
        return self.mlp((x - self.x_mean) / self.x_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Predictions in target units."""
        return self.forward_normalised(x) * self.y_std + self.y_mean


def _weights_vector(w_energy_per_j: float, w_bytes_per_mb: float) -> NDArray[np.float64]:
    for name, w in (("w_energy_per_j", w_energy_per_j), ("w_bytes_per_mb", w_bytes_per_mb)):
        if not np.isfinite(w) or w < 0:
            raise DeviceScorerError(f"{name} must be a finite number >= 0, got {w!r}")
    return objective_vector(w_energy_per_j, w_bytes_per_mb)


#: Options the anchor rule may keep, by name, as indices from the end of the option list (the
#: offload options follow the ``L`` local models, so an index does not depend on the device's
#: pool): offload with on-device preprocessing (PieSlicer's static choice, what an engineer
#: ships), and the same with the on-device backup (MDInference's).
ANCHORS: dict[str, int] = {
    "offload": dfeat.OFFLOAD_OPTIONS.index((0, 0)) - len(dfeat.OFFLOAD_OPTIONS),
    "offload_backup": dfeat.OFFLOAD_OPTIONS.index((0, 1)) - len(dfeat.OFFLOAD_OPTIONS),
}
#: The default anchor set.
DEFAULT_ANCHORS: tuple[str, ...] = ("offload",)


def anchor_indices(names: Sequence[str]) -> tuple[int, ...]:
    """Option indices (from the end) of anchor names; unknown or no names are refused."""
    names = [names] if isinstance(names, str) else list(names)
    bad = [n for n in names if n not in ANCHORS]
    if bad or not names:
        raise DeviceScorerError(
            f"anchors: expected one or more of {sorted(ANCHORS)}, got {names!r}"
        )
    return tuple(sorted({ANCHORS[n] for n in names}))


def option_contexts(options: NDArray[np.floating]) -> NDArray[np.intp]:
    """The context index (:data:`CONTEXTS`) of each row of option vectors ``(N, K, F)``: the
    tier flag and the radio power of its last option (an offload option, which has both)."""
    x = np.asarray(options)[:, -1]
    tier = x[:, dfeat.OPTION_TIER_COLUMNS].argmax(axis=1)
    cell = x[:, dfeat.OPTION_RADIO_W] >= CELLULAR_MIN_W
    return np.asarray(tier * 2 + cell, dtype=np.intp)


def _check_contexts(contexts: dict[str, ContextSetting] | None) -> None:
    if contexts is None:
        return
    try:
        check_contexts(contexts)
    except (ValueError, OverflowError) as e:
        raise DeviceScorerError(str(e)) from None


def _check_tolerance(tol: float, name: str = "tie_tolerance") -> None:
    if not (isinstance(tol, (int, float)) and math.isfinite(tol) and tol >= 0):
        raise DeviceScorerError(f"{name} must be a finite number >= 0, got {tol!r}")


def _check_anchor(margin: float | None) -> None:
    if margin is not None:
        _check_tolerance(margin, "anchor_margin")


def choice_scores(
    pred: NDArray[np.float64],
    objective: NDArray[np.float64],
    tie_tolerance: float,
    anchor_margin: float | None = None,
    anchors: Sequence[int] = (ANCHORS["offload"],),
) -> NDArray[np.float64]:
    """Scores ``(N, K)`` whose argmax is the decision, from predictions ``(N, K, 3)``: the
    objective ``pred @ objective``; with ``tie_tolerance`` δ > 0, among the options within δ
    of the best objective the one with the least predicted energy (score ``-energy J``; the
    others score :data:`TIE_OUT`). δ buys energy only where the predicted accuracies are
    equal within δ (a loose SLA, where every offload answers with the same model), which an
    energy weight alone cannot do without giving up accuracy at tight SLAs.

    With an ``anchor_margin`` m (``None``: off), the ``anchors`` (option indices from the end,
    :data:`ANCHORS`) whose objective is within m of the best are kept: they score
    :data:`ANCHOR_BONUS` more, so the choice is among them (by the scores above) whenever one
    is kept. The policy departs from the rule an engineer would ship only where the scorer
    predicts a clear gain, so its small prediction errors cannot cost accuracy or energy
    where the rule is already right."""
    s = np.asarray(pred @ objective, dtype=np.float64)
    out = (
        s
        if tie_tolerance <= 0
        else np.where(s >= s.max(axis=-1, keepdims=True) - tie_tolerance, -pred[..., 1], TIE_OUT)
    )
    if anchor_margin is None:
        return out
    idx = list(anchors)
    keep = s[..., idx] >= s.max(axis=-1, keepdims=True) - anchor_margin
    out = out.copy()
    out[..., idx] += np.where(keep, ANCHOR_BONUS, 0.0)
    return out


@dataclass
class DeviceScorerPolicy:
    """The learned device policy (a :class:`~modi.agents.offload_policies.DevicePolicy`)."""

    net: ScorerNet
    w_energy_per_j: float = 0.0
    w_bytes_per_mb: float = 0.0
    feature_min: NDArray[np.float32] = field(default_factory=lambda: np.zeros(dfeat.F, np.float32))
    feature_max: NDArray[np.float32] = field(default_factory=lambda: np.zeros(dfeat.F, np.float32))
    trained_on: dict[str, Any] = field(default_factory=dict)
    name: str = "learned"
    server_policy: str | None = None
    #: Options whose score is within this of the best are tied; of those, the one with the
    #: least predicted energy is chosen (0: plain argmax of the score). See :meth:`scores`.
    tie_tolerance: float = 0.0
    #: Keep an anchor option (``anchors``) unless another option's score beats it by more
    #: than this (``None``: off). See :func:`choice_scores`.
    anchor_margin: float | None = None
    #: Names of the anchor options (:data:`ANCHORS`).
    anchors: tuple[str, ...] = DEFAULT_ANCHORS
    #: Per decision context (:data:`CONTEXTS`: tier × radio class), its own (energy weight,
    #: tie tolerance, anchor margin), which replace the three above in that context's rows
    #: (``None``: the three above everywhere). See :meth:`with_contexts`.
    contexts: dict[str, ContextSetting] | None = None
    _net64: Any = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_tolerance(self.tie_tolerance)
        _check_anchor(self.anchor_margin)
        anchor_indices(self.anchors)  # refuses unknown names
        self.anchors = tuple(self.anchors)
        _check_contexts(self.contexts)
        if self.contexts is not None:
            self.contexts = {
                k: (float(w), float(t), None if a is None else float(a))
                for k, (w, t, a) in self.contexts.items()
            }

    def reset(self, num_envs: int, seed: int | None = None) -> None:
        """Deterministic: nothing to reset."""

    def with_weights(
        self,
        w_energy_per_j: float,
        w_bytes_per_mb: float | None = None,
        tie_tolerance: float | None = None,
        anchor_margin: float | EllipsisType | None = ...,
        anchors: Sequence[str] | None = None,
    ) -> DeviceScorerPolicy:
        """The same scorer under other objective weights (a point of the frontier), tie
        tolerance, anchor margin and anchors (default, or ``...`` for the margin: this
        policy's; ``anchor_margin=None``: off), in every context (no per-context settings)."""
        _weights_vector(
            w_energy_per_j, self.w_bytes_per_mb if w_bytes_per_mb is None else w_bytes_per_mb
        )
        return DeviceScorerPolicy(
            self.net,
            float(w_energy_per_j),
            self.w_bytes_per_mb if w_bytes_per_mb is None else float(w_bytes_per_mb),
            self.feature_min,
            self.feature_max,
            self.trained_on,
            self.name,
            tie_tolerance=self.tie_tolerance if tie_tolerance is None else float(tie_tolerance),
            anchor_margin=self.anchor_margin
            if anchor_margin is ...
            else (None if anchor_margin is None else float(anchor_margin)),
            anchors=self.anchors if anchors is None else tuple(anchors),
            _net64=self._net64,
        )

    def with_contexts(self, contexts: dict[str, ContextSetting] | None) -> DeviceScorerPolicy:
        """The same policy with a setting per decision context (:data:`CONTEXTS`; ``None``:
        none); the policy's own setting stays what it reports as its weights."""
        return dataclasses.replace(self, contexts=None if contexts is None else dict(contexts))

    def predict(self, options: NDArray[np.float32]) -> NDArray[np.float64]:
        """Predicted (accuracy, energy J, MB sent) of option vectors ``(..., F)`` (float32
        inputs, computed in float64 with the exported graph's operations, in numpy: a tiny
        MLP per decision, where torch's thread pool costs more than the arithmetic)."""
        layers = self._net64
        if layers is None:
            net = self.net
            lin = [m for m in net.mlp if isinstance(m, torch.nn.Linear)]
            w, b = fold_layers(
                [m.weight.detach().numpy().T for m in lin],
                [m.bias.detach().numpy() for m in lin],
                net.x_mean.numpy(),
                net.x_std.numpy(),
                net.y_mean.numpy(),
                net.y_std.numpy(),
            )
            layers = list(zip(w, b, strict=True))
            self._net64 = layers
        h = np.asarray(options, np.float32).astype(np.float64)
        for i, (wi, bi) in enumerate(layers):
            h = h @ wi + bi
            if i < len(layers) - 1:
                h = np.maximum(h, 0.0)
        return np.asarray(h, dtype=np.float64)

    def scores(self, obs: NDArray[np.float32]) -> NDArray[np.float64]:
        """Score of every option ``(N, K)`` for device observations ``(N, D)``: the objective
        ``accuracy - w_energy_per_j * J - w_bytes_per_mb * MB`` of the predictions, or with a
        ``tie_tolerance`` δ > 0 the ε-lexicographic choice: minus the predicted energy (J) of
        the options whose objective is within δ of the best, ``TIE_OUT`` for the others; with
        an ``anchor_margin``, kept anchors score ``ANCHOR_BONUS`` more
        (:func:`choice_scores`; the exported graph computes the same)."""
        options = dfeat.option_features(obs)
        pred = self.predict(options)
        anchors = anchor_indices(self.anchors)
        if self.contexts is None:
            return choice_scores(
                pred,
                _weights_vector(self.w_energy_per_j, self.w_bytes_per_mb),
                self.tie_tolerance,
                self.anchor_margin,
                anchors,
            )
        ctx = option_contexts(options)
        out = np.empty(pred.shape[:2], dtype=np.float64)
        for i, key in enumerate(CONTEXTS):
            rows = ctx == i
            if rows.any():
                w, t, a = self.contexts[key]
                out[rows] = choice_scores(
                    pred[rows], _weights_vector(w, self.w_bytes_per_mb), t, a, anchors
                )
        return out

    def select(self, obs: NDArray[np.float32]) -> NDArray[np.int64]:
        """One action ``(preprocessing, placement, backup)`` per observation row."""
        obs = np.atleast_2d(obs)
        s = self.scores(obs)
        big_l = dfeat.DeviceObsLayout.from_obs_dim(obs.shape[1]).num_models
        return dfeat.option_actions(big_l)[s.argmax(axis=1)]

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> Path:
        """Save the scorer (torch state + settings) to ``path``."""
        path = Path(path)
        torch.save(
            {
                "hidden": self.net.hidden,
                "state": self.net.state_dict(),
                "w_energy_per_j": self.w_energy_per_j,
                "w_bytes_per_mb": self.w_bytes_per_mb,
                "feature_min": self.feature_min.tolist(),
                "feature_max": self.feature_max.tolist(),
                "trained_on": self.trained_on,
                "tie_tolerance": self.tie_tolerance,
                "anchor_margin": self.anchor_margin,
                "anchors": list(self.anchors),
                "contexts": None
                if self.contexts is None
                else {k: list(v) for k, v in self.contexts.items()},
                "option_schema": f"{dfeat.OPTION_SCHEMA_NAME} v{dfeat.OPTION_SCHEMA_VERSION}",
            },
            path,
        )
        return path

    @classmethod
    def load(cls, path: str | Path) -> DeviceScorerPolicy:
        """Load a scorer saved by :meth:`save`."""
        d = torch.load(Path(path), weights_only=False)
        schema = f"{dfeat.OPTION_SCHEMA_NAME} v{dfeat.OPTION_SCHEMA_VERSION}"
        if d.get("option_schema") != schema:
            raise DeviceScorerError(
                f"{path}: option schema {d.get('option_schema')!r}, expected {schema!r}"
            )
        z = np.zeros(dfeat.F, np.float32)
        net = ScorerNet(d["hidden"], z, z + 1, np.zeros(3, np.float32), np.ones(3, np.float32))
        net.load_state_dict(d["state"])
        return cls(
            net,
            float(d["w_energy_per_j"]),
            float(d["w_bytes_per_mb"]),
            np.asarray(d["feature_min"], np.float32),
            np.asarray(d["feature_max"], np.float32),
            dict(d.get("trained_on", {})),
            tie_tolerance=float(d.get("tie_tolerance", 0.0)),
            anchor_margin=None if d.get("anchor_margin") is None else float(d["anchor_margin"]),
            anchors=tuple(d.get("anchors", DEFAULT_ANCHORS)),
            contexts=None
            if d.get("contexts") is None
            else {k: tuple(v) for k, v in d["contexts"].items()},
        )


# ============================================================================ training
def _targets(sim: OffloadSim, opt_idx: NDArray[np.intp]) -> NDArray[np.float32]:
    """Counterfactual (accuracy, energy J, MB sent) of every option, ``(N, K, 3)``."""
    o = sim.counterfactual_outcomes()
    n, na = sim.num_envs, len(sim.all_actions())
    y = np.stack(
        [
            o.accuracy.reshape(n, na),
            o.energy_mj.reshape(n, na) / 1e3,
            o.bytes_sent.reshape(n, na) / 1e6,
        ],
        axis=-1,
    )
    return np.asarray(y[:, opt_idx], dtype=np.float32)


def option_action_index(num_local: int) -> NDArray[np.intp]:
    """Index of each option's action in :meth:`OffloadSim.all_actions` order."""
    acts = dfeat.option_actions(num_local)
    return np.asarray((acts[:, 0] * (num_local + 1) + acts[:, 1]) * 2 + acts[:, 2], dtype=np.intp)


#: Per-state training data: option vectors ``(S, K, F)`` and their targets ``(S, K, 3)``.
Batch = tuple[NDArray[np.float32], NDArray[np.float32]]


def collect(
    sims: Sequence[OffloadSim],
    steps: int,
    seed: int,
    behaviour: DeviceScorerPolicy | None = None,
    epsilon: float = 1.0,
    reset_seeds: Sequence[Any] | None = None,
) -> list[Batch]:
    """Visit ``steps`` captures per stream of every sim (reset with ``reset_seeds[i]``, default
    ``seed + i``) and return, per sim, the option vectors ``(S, K, F)`` of every visited
    capture and their counterfactual targets ``(S, K, 3)``. The option taken is uniformly
    random with probability ``epsilon``, else ``behaviour``'s."""
    if reset_seeds is not None and len(reset_seeds) != len(sims):
        raise DeviceScorerError(
            f"reset_seeds must give one seed per sim ({len(sims)}), got {len(reset_seeds)}"
        )
    out: list[Batch] = []
    rng = np.random.default_rng(seed)
    for i, sim in enumerate(sims):
        xs: list[NDArray[np.float32]] = []
        ys: list[NDArray[np.float32]] = []
        obs = sim.reset(seed + i if reset_seeds is None else reset_seeds[i])
        opt_idx = option_action_index(sim.num_local)
        acts = dfeat.option_actions(sim.num_local)
        k = len(acts)
        for _ in range(steps):
            xs.append(dfeat.option_features(obs))
            ys.append(_targets(sim, opt_idx))
            pick = rng.integers(0, k, size=sim.num_envs)
            if behaviour is not None and epsilon < 1.0:
                greedy = rng.random(sim.num_envs) >= epsilon
                if greedy.any():
                    s = behaviour.scores(obs)
                    pick = np.where(greedy, s.argmax(axis=1), pick)
            sim.step(acts[pick])
            obs = sim.obs
        out.append((np.concatenate(xs), np.concatenate(ys)))
    return out


def _by_options(data: Sequence[Batch]) -> list[Batch]:
    """Concatenate batches with the same number of options."""
    groups: dict[int, list[Batch]] = {}
    for x, y in data:
        if x.ndim != 3 or x.shape[2] != dfeat.F or y.shape != (*x.shape[:2], 3):
            raise DeviceScorerError(
                f"training data must be (S, K, {dfeat.F}) options and (S, K, 3) targets, got "
                f"{x.shape} and {y.shape}"
            )
        groups.setdefault(x.shape[1], []).append((x, y))
    return [
        (np.concatenate([g[0] for g in gs]), np.concatenate([g[1] for g in gs]))
        for gs in groups.values()
    ]


def _twin_pairs(num_local: int) -> tuple[list[int], list[int]]:
    """Option pairs that differ in one component of an offload: backup on vs off (each
    preprocessing location) and in-cloud vs on-device preprocessing (each backup setting)."""
    dev, srv, dev_b, srv_b = (num_local + j for j in range(len(dfeat.OFFLOAD_OPTIONS)))
    return [dev_b, srv_b, srv, srv_b], [dev, srv, dev, dev_b]


def fit_scorer(
    data: Sequence[Batch],
    hidden: Sequence[int] = (64, 64),
    epochs: int = 6,
    batch_size: int = 512,
    lr: float = 3e-3,
    seed: int = 0,
    level_weight: float = 0.1,
    twin_weight: float = 10.0,
) -> tuple[ScorerNet, list[dict[str, float]]]:
    """Fit the scorer on per-capture option sets (Adam, standardised targets).

    The loss per capture splits the squared error into the error of the options' differences
    (each option's prediction minus the capture's mean prediction, against the same for the
    targets) and ``level_weight`` × the error of the capture's mean level. The options'
    outcomes are counterfactuals of the *same* request (common random numbers), so their
    differences carry far less noise than their levels (a slow upload lowers every offload
    option alike), and only differences change the argmax. ``level_weight = 1`` is plain MSE.
    ``twin_weight`` × the error of the *twin* differences adds weight to the small, decisive
    ones: backup on − off and in-cloud − on-device preprocessing of the same offload (a few
    points of accuracy against a few hundred mJ). Returns the net and one row of losses per
    epoch."""
    groups = _by_options(data)
    if not groups or any(len(x) == 0 for x, _ in groups):
        raise DeviceScorerError("no training data")
    if epochs < 1 or batch_size < 1 or not lr > 0 or level_weight < 0:
        raise DeviceScorerError(
            f"epochs, batch_size must be >= 1, lr > 0 and level_weight >= 0, got {epochs}, "
            f"{batch_size}, {lr}, {level_weight}"
        )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small batches: one thread is faster than a contended pool
    try:
        return _fit(groups, hidden, epochs, batch_size, lr, seed, level_weight, twin_weight)
    finally:
        torch.set_num_threads(threads)


def _fit(
    groups: list[Batch],
    hidden: Sequence[int],
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    level_weight: float,
    twin_weight: float,
) -> tuple[ScorerNet, list[dict[str, float]]]:
    torch.manual_seed(seed)
    flat_x = np.concatenate([x.reshape(-1, dfeat.F) for x, _ in groups])
    flat_y = np.concatenate([y.reshape(-1, 3) for _, y in groups])
    x_mean, x_std = flat_x.mean(axis=0), flat_x.std(axis=0)
    x_std = np.where(x_std > 1e-6, x_std, 1.0).astype(np.float32)
    y_mean, y_std = flat_y.mean(axis=0), flat_y.std(axis=0)
    y_std = np.where(y_std > 1e-9, y_std, 1.0).astype(np.float32)
    net = ScorerNet(hidden, x_mean.astype(np.float32), x_std, y_mean.astype(np.float32), y_std)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    tensors = [
        (torch.from_numpy(x), (torch.from_numpy(y) - net.y_mean) / net.y_std) for x, y in groups
    ]
    twins = {x.shape[1]: _twin_pairs(x.shape[1] - len(dfeat.OFFLOAD_OPTIONS)) for x, _ in groups}
    gen = torch.Generator().manual_seed(seed)
    history: list[dict[str, float]] = []
    total_states = sum(len(x) for x, _ in groups)
    for epoch in range(epochs):
        t0 = time.perf_counter()
        batches = [
            (g, perm[b : b + batch_size])
            for g, (xt, _) in enumerate(tensors)
            for perm in [torch.randperm(len(xt), generator=gen)]
            for b in range(0, len(xt), batch_size)
        ]
        order = torch.randperm(len(batches), generator=gen).tolist()
        diff_sum = level_sum = 0.0
        for j in order:
            g, idx = batches[j]
            xt, yt = tensors[g]
            pred = net.forward_normalised(xt[idx])  # (B, K, 3)
            tgt = yt[idx]
            pm, tm = pred.mean(dim=1, keepdim=True), tgt.mean(dim=1, keepdim=True)
            diff = torch.mean(((pred - pm) - (tgt - tm)) ** 2)
            level = torch.mean((pm - tm) ** 2)
            loss = diff + level_weight * level
            if twin_weight > 0:
                a, b = twins[xt.shape[1]]
                twin = torch.mean(((pred[:, a] - pred[:, b]) - (tgt[:, a] - tgt[:, b])) ** 2)
                loss = loss + twin_weight * twin
            opt.zero_grad()
            loss.backward()
            opt.step()
            diff_sum += float(diff.detach()) * len(idx)
            level_sum += float(level.detach()) * len(idx)
        sched.step()
        row = {
            "epoch": float(epoch),
            "train_diff_mse": diff_sum / total_states,
            "train_level_mse": level_sum / total_states,
            "seconds": time.perf_counter() - t0,
        }
        history.append(row)
        log.info("scorer epoch %d: %s", epoch, {k: round(v, 4) for k, v in row.items()})
    net.eval()
    return net, history


def train_device_scorer(
    sims: Sequence[OffloadSim],
    steps: int,
    seed: int,
    rounds: int = 2,
    epsilon: float = 0.2,
    hidden: Sequence[int] = (64, 64),
    epochs: int = 6,
    batch_size: int = 512,
    lr: float = 3e-3,
    w_energy_per_j: float = 0.0,
    w_bytes_per_mb: float = 0.0,
    trained_on: dict[str, Any] | None = None,
    on_round: Callable[[int, list[dict[str, float]]], None] | None = None,
    level_weight: float = 0.1,
    twin_weight: float = 10.0,
    reset_seeds: Callable[[int], Sequence[Any]] | None = None,
) -> DeviceScorerPolicy:
    """Collect and fit for ``rounds`` rounds (the first with random options, then ε-greedy with
    the current scorer; data of all rounds kept), return the policy. ``reset_seeds(r)``: the
    reset seed of every sim in round ``r`` (default ``seed + 7919 r + i``; the training split's
    stream keys in ``modi-train env=offload``)."""
    if rounds < 1 or steps < 1 or not sims:
        raise DeviceScorerError(f"need rounds >= 1, steps >= 1 and sims, got {rounds}, {steps}")
    data: list[Batch] = []
    policy: DeviceScorerPolicy | None = None
    for r in range(rounds):
        data += collect(
            sims,
            steps,
            seed + 7919 * r,
            policy,
            1.0 if policy is None else epsilon,
            None if reset_seeds is None else reset_seeds(r),
        )
        net, hist = fit_scorer(
            data, hidden, epochs, batch_size, lr, seed + r, level_weight, twin_weight
        )
        flat = np.concatenate([x.reshape(-1, dfeat.F) for x, _ in data])
        policy = DeviceScorerPolicy(
            net,
            w_energy_per_j,
            w_bytes_per_mb,
            flat.min(axis=0),
            flat.max(axis=0),
            dict(trained_on or {}),
        )
        log.info("device scorer round %d: %d option rows", r, len(flat))
        if on_round is not None:
            on_round(r, hist)
    assert policy is not None
    return policy


# ============================================================================ export
def export_device_onnx(policy: DeviceScorerPolicy, path: str | Path) -> Path:
    """Write the scorer as one ONNX file: ``options (N, K, F) float32 -> predictions
    (N, K, 3), scores (N, K)`` with the metadata of :class:`DeviceModelMeta`."""
    net = policy.net
    linears = [m for m in net.mlp if isinstance(m, torch.nn.Linear)]
    graph = scorer_graph(  # float64 inside, normalisations folded, one Gemm per layer
        [lin.weight.detach().numpy().T for lin in linears],
        [lin.bias.detach().numpy() for lin in linears],
        net.x_mean.numpy(),
        net.x_std.numpy(),
        net.y_mean.numpy(),
        net.y_std.numpy(),
        _weights_vector(policy.w_energy_per_j, policy.w_bytes_per_mb),
    )
    if policy.contexts is not None:
        _add_setting_choice(
            graph,
            (policy.w_energy_per_j, policy.tie_tolerance, policy.anchor_margin),
            policy.w_bytes_per_mb,
            anchor_indices(policy.anchors),
        )
    elif policy.tie_tolerance > 0:
        _add_tie_choice(graph, policy.tie_tolerance)
    if policy.contexts is None and policy.anchor_margin is not None:
        _add_anchor_choice(
            graph, policy.anchor_margin, anchor_indices(policy.anchors), policy.tie_tolerance > 0
        )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    trained_on = dict(policy.trained_on) | {
        "tie_tolerance": policy.tie_tolerance,
        "anchor_margin": policy.anchor_margin,
        "anchors": list(policy.anchors),
        "contexts": None
        if policy.contexts is None
        else {k: list(v) for k, v in policy.contexts.items()},
    }
    meta = DeviceModelMeta(
        w_energy_per_j=policy.w_energy_per_j,
        w_bytes_per_mb=policy.w_bytes_per_mb,
        feature_min=tuple(float(v) for v in policy.feature_min),
        feature_max=tuple(float(v) for v in policy.feature_max),
        trained_on=json.dumps(trained_on, sort_keys=True),
        contexts=policy.contexts,
    )
    helper.set_metadata_props(model, meta.to_props())
    onnx.checker.check_model(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def _rename_scores(graph: onnx.GraphProto, name: str) -> None:
    """Rename the graph's ``scores`` output (its node's) to ``name``: a choice rule follows."""
    for node in graph.node:
        for i, out in enumerate(node.output):
            if out == "scores":
                node.output[i] = name


def _tie_nodes(tolerance: str, out: str) -> tuple[list[onnx.TensorProto], list[onnx.NodeProto]]:
    """:func:`choice_scores`' ε-lexicographic choice from ``objective_scores`` (N, K) and
    ``predictions`` with the tolerance tensor ``tolerance`` (a scalar or one per row) into
    ``out``; it also computes ``best``, the row's best objective (N, 1)."""
    inits = [
        numpy_helper.from_array(np.array([-1], dtype=np.int64), "tie_axis"),
        numpy_helper.from_array(np.array(1, dtype=np.int64), "energy_index"),
        numpy_helper.from_array(np.array(TIE_OUT, dtype=np.float64), "tie_out"),
    ]
    nodes = [
        helper.make_node("ReduceMax", ["objective_scores", "tie_axis"], ["best"], keepdims=1),
        helper.make_node("Sub", ["best", tolerance], ["tie_floor"]),
        helper.make_node("GreaterOrEqual", ["objective_scores", "tie_floor"], ["tied"]),
        helper.make_node("Gather", ["predictions", "energy_index"], ["energy"], axis=2),
        helper.make_node("Neg", ["energy"], ["neg_energy"]),
        helper.make_node("Where", ["tied", "neg_energy", "tie_out"], [out]),
    ]
    return inits, nodes


def _anchor_nodes(
    objective: str, base: str, margin: str, anchors: Sequence[int], have_best: bool
) -> tuple[list[onnx.TensorProto], list[onnx.NodeProto]]:
    """:func:`choice_scores`' anchor rule: ``scores`` = ``base`` + ``ANCHOR_BONUS`` at the anchor
    columns (fixed indices from the end, whatever the number of local models) whose
    ``objective`` is within the margin tensor ``margin`` (a scalar or one per row) of the best
    (``best``, computed here unless ``have_best``)."""
    inits = [
        numpy_helper.from_array(np.array(list(anchors), dtype=np.int64), "anchor_index"),
        numpy_helper.from_array(np.array([0, 1], dtype=np.float32), "anchor_onehot_values"),
        numpy_helper.from_array(np.array(ANCHOR_BONUS, dtype=np.float64), "anchor_bonus"),
    ]
    nodes = []
    if not have_best:
        inits.append(numpy_helper.from_array(np.array([-1], dtype=np.int64), "tie_axis"))
        nodes.append(helper.make_node("ReduceMax", [objective, "tie_axis"], ["best"], keepdims=1))
    nodes += [
        # (N, A) objectives of the anchors, kept where within the margin of the best
        helper.make_node("Gather", [objective, "anchor_index"], ["anchor_objective"], axis=1),
        helper.make_node("Sub", ["best", margin], ["anchor_floor"]),
        helper.make_node("GreaterOrEqual", ["anchor_objective", "anchor_floor"], ["anchor_kept"]),
        helper.make_node("Cast", ["anchor_kept"], ["anchor_kept_f"], to=TensorProto.DOUBLE),
        # (A, K) one-hot columns of the anchors: (N, A) @ (A, K) scatters the kept ones
        helper.make_node("Shape", [objective], ["num_options"], start=1, end=2),
        helper.make_node(
            "OneHot",
            ["anchor_index", "num_options", "anchor_onehot_values"],
            ["anchor_onehot"],
            axis=-1,
        ),
        helper.make_node("Cast", ["anchor_onehot"], ["anchor_columns"], to=TensorProto.DOUBLE),
        helper.make_node("MatMul", ["anchor_kept_f", "anchor_columns"], ["anchor_here"]),
        helper.make_node("Mul", ["anchor_here", "anchor_bonus"], ["anchor_add"]),
        helper.make_node("Add", [base, "anchor_add"], ["scores"]),
    ]
    return inits, nodes


def _add_tie_choice(graph: onnx.GraphProto, tol: float) -> None:
    """Turn the graph's ``scores`` into :func:`choice_scores` with tolerance ``tol``: the
    objective's output is renamed and the ε-lexicographic choice appended (the same float64
    operations as the trained policy)."""
    _rename_scores(graph, "objective_scores")
    inits, nodes = _tie_nodes("tie_tolerance", "scores")
    graph.initializer.extend(
        [numpy_helper.from_array(np.array(float(tol), dtype=np.float64), "tie_tolerance"), *inits]
    )
    graph.node.extend(nodes)


def _add_anchor_choice(
    graph: onnx.GraphProto, margin: float, anchors: Sequence[int], tie: bool
) -> None:
    """Append :func:`choice_scores`' anchor rule with ``margin`` to the graph's ``scores`` (the
    same float64 operations as the trained policy)."""
    objective = "objective_scores" if tie else "objective_scores_a"
    base = "choice_scores" if tie else objective
    _rename_scores(graph, base)
    inits, nodes = _anchor_nodes(objective, base, "anchor_margin", anchors, have_best=tie)
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.array(float(margin), dtype=np.float64), "anchor_margin"),
            *inits,
        ]
    )
    graph.node.extend(nodes)


def _add_setting_choice(
    graph: onnx.GraphProto,
    setting: ContextSetting,
    w_bytes_per_mb: float,
    anchors: Sequence[int],
) -> None:
    """Turn the graph's ``scores`` into :func:`choice_scores` with every rule in the graph and
    its setting in four initializers that are also graph inputs
    (:data:`~modi.runtime.device_meta.SETTING_INPUTS`, values from
    :func:`~modi.runtime.device_meta.context_initializers`; a setting without an anchor has a
    margin no objective reaches). The file carries ``setting``; a runtime that knows its
    decision context feeds that context's (bound once by :class:`~modi.runtime.DeviceSelector`),
    so a per-context policy costs no more per decision than one setting. Being inputs, they
    are never folded into the graph by onnxruntime's optimiser (which does fold a plain
    initializer's value, e.g. drops ``best - tolerance`` when the file's tolerance is 0)."""
    _rename_scores(graph, "objective_scores")
    values = context_initializers(setting, w_bytes_per_mb)
    kept = [i for i in graph.initializer if i.name not in values]
    del graph.initializer[:]
    tie_inits, tie_nodes = _tie_nodes("tie_tolerance", "tie_scores")
    anchor_inits, anchor_nodes = _anchor_nodes(
        "objective_scores", "choice_scores", "anchor_margin", anchors, have_best=True
    )
    graph.initializer.extend(
        [
            *kept,
            *(numpy_helper.from_array(v, k) for k, v in values.items()),
            *tie_inits,
            *anchor_inits,
        ]
    )
    graph.node.extend(
        [
            *tie_nodes,
            helper.make_node(
                "Where", ["use_tie", "tie_scores", "objective_scores"], ["choice_scores"]
            ),
            *anchor_nodes,
        ]
    )
    graph.input.extend(
        helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), list(v.shape))
        for k, v in values.items()
    )


def device_spec(profile: DeviceProfile) -> DeviceSpec:
    """The :class:`~modi.runtime.device_selector.DeviceSpec` of a device preset (what the phone
    knows about itself: the env's profiled values)."""
    return DeviceSpec.from_profile(profile)


class ServedDevicePolicy:
    """The exported file *as the phone runs it*: every decision is
    :meth:`modi.runtime.DeviceSelector.decide` (its option builder, its ONNX session, its
    range checks and PieSlicer fallback), a :class:`~modi.agents.offload_policies.DevicePolicy`
    for the batched env. Before each decision the selector's state (network history, models
    in memory) is set to the device's state in the observation row, so the selector decides
    from exactly what the env's device knows. ``fallbacks`` counts the decisions that were not
    the learned model's (with ``reasons``)."""

    server_policy: str | None = None

    def __init__(self, path: str | Path, spec: DeviceSpec, name: str = "learned") -> None:
        self.name = name
        self.selector = DeviceSelector.load(path, spec)
        if self.selector.load_error is not None:
            raise DeviceScorerError(f"device policy {path}: {self.selector.load_error}")
        self._ids = [m.model_id for m in spec.models]
        self.decisions = 0
        self.fallbacks = 0
        self.reasons: dict[str, int] = {}

    def reset(self, num_envs: int, seed: int | None = None) -> None:
        """Deterministic: nothing to reset (the state comes with each observation)."""

    def select(self, obs: NDArray[np.float32]) -> NDArray[np.int64]:
        """One :meth:`DeviceSelector.decide` per observation row."""
        obs = np.atleast_2d(obs)
        layout = dfeat.DeviceObsLayout.from_obs_dim(obs.shape[1])
        if layout.num_models != len(self._ids):
            raise DeviceScorerError(
                f"observations of {layout.num_models} on-device models, the device spec has "
                f"{len(self._ids)}"
            )
        req = layout.request(obs).astype(np.float64)
        loaded = layout.models(obs)[:, :, dfeat.LOADED] > 0
        sel = self.selector
        out = np.empty((obs.shape[0], 3), dtype=np.int64)
        for i in range(obs.shape[0]):
            r = req[i]
            sel.set_history(
                r[dfeat.NET_LATENCY],
                r[dfeat.NET_UPLINK],
                r[dfeat.NET_UPLINK_STD] ** 2,
                r[dfeat.NET_UPLINK_LAST],
                0.0,
            )
            if r[dfeat.RADIO_ACTIVE_W] != sel.radio_active_w:
                sel.set_radio(float(r[dfeat.RADIO_ACTIVE_W]))
            for j in np.flatnonzero(sel.loaded != loaded[i]):
                sel.set_loaded(self._ids[j], bool(loaded[i, j]))
            d = sel.decide(
                r[dfeat.NET_AGE], r[dfeat.SLA], r[dfeat.MEGAPIXELS], r[dfeat.RAW_KB] * 1e3
            )
            out[i] = d.action
            if d.source != "learned":
                self.fallbacks += 1
                key = d.reason.split(":")[0]
                self.reasons[key] = self.reasons.get(key, 0) + 1
        self.decisions += obs.shape[0]
        return out
