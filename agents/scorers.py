"""Pool-agnostic scorers: one set of weights scores every (request, model) pair.

A learned selector looks at the request block ``(N, R)`` and the model block ``(N, K, P)`` of an
observation (:mod:`modi.runtime.features`), turns each (request, model) pair into a small
feature vector with :class:`PairFeatures`, scores it with shared weights and takes the best
score. Nothing depends on ``K`` or on which models the pool holds, so a trained selector serves
pools of any size and models it has never seen; its ONNX graph has a dynamic model dimension.

Everything here is a ``torch.nn.Module`` with ``(request, models)`` inputs so that the same code
trains, evaluates and exports (:mod:`modi.agents.export`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import cast

import torch
from torch import nn

from modi.runtime import features as F

#: Pair features built by :class:`PairFeatures`: (name, scale, meaning).
PAIR_FEATURES: tuple[tuple[str, str, str], ...] = (
    (
        "headroom",
        "100 ms",
        "remaining_ms - mu*slowdown: time left for the download after a mean run",
    ),
    ("slack", "100 ms", "budget_ms - (mu + sigma)*slowdown: ModiPick's headroom under T_U"),
    ("sigma", "10 ms", "profiled standard deviation of execution time"),
    ("accuracy", "fraction", "top-1 accuracy of the model"),
    ("mu", "100 ms", "profiled mean execution time"),
    ("t_input", "100 ms", "measured upload time of the request"),
    ("net_mean", "100 ms", "client's EWMA upload time"),
    ("net_std", "100 ms", "client's EW std of upload time"),
    ("queue", "10 requests", "requests ahead in the server queue"),
    ("slowdown", "ratio - 1", "server's recent slowdown"),
    ("sla", "100 ms", "SLA of the request"),
    (
        "net_headroom",
        "100 ms",
        "headroom - srtt/2: time left after a mean run and the connection's one-way delay",
    ),
    ("net_margin", "100 ms", "net_headroom - 2 rttvar: with TCP's RTT variation as margin"),
    ("srtt", "100 ms", "the connection's smoothed RTT (TCP)"),
    ("dl_known", "0/1", "whether the client sent a download history (client_dl_ms known)"),
    (
        "dl_headroom",
        "100 ms",
        "headroom - client_dl: time left after a mean run and the client's smoothed download "
        "(unknown: srtt/2 in its place)",
    ),
    (
        "dl_margin",
        "100 ms",
        "dl_headroom - 2 client_dlvar: with the download's variation as margin (unknown: rttvar)",
    ),
    (
        "dl_per_upload",
        "ratio",
        "client_dl / client_net_mean: the client's downloads against its uploads, clipped to "
        "[0, 4] (unknown: 0)",
    ),
)
#: Pair-feature index by name.
PAIR_INDEX: dict[str, int] = {name: i for i, (name, _, _) in enumerate(PAIR_FEATURES)}
#: Request features each pair feature reads beyond the model block (for the shield's ranges).
PAIR_READS: dict[str, tuple[str, ...]] = {
    "headroom": ("remaining_ms", "slowdown"),
    "slack": ("budget_ms", "slowdown"),
    "net_headroom": ("remaining_ms", "slowdown", "srtt_ms"),
    "net_margin": ("remaining_ms", "slowdown", "srtt_ms", "rttvar_ms"),
}
NUM_PAIR_FEATURES = len(PAIR_FEATURES)
#: Largest ``dl_per_upload``.
MAX_DL_PER_UPLOAD = 4.0


def split_obs(obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split flat observations ``(N, R + P*K)`` into ``(N, R)`` and ``(N, K, P)``."""
    n = obs.shape[0]
    return obs[:, : F.R], obs[:, F.R :].reshape(n, -1, F.P)


#: Width of the imputed request block :class:`ImputeRequest` returns: the request block with
#: the client's download history filled in where unknown, then ``dl_known`` and
#: ``dl_per_upload``.
RX = F.R + 2
DL_KNOWN_COL, DL_RATIO_COL = F.R, F.R + 1
#: Columns of the imputed request block that may differ from the raw request block.
IMPUTED_COLS: tuple[int, ...] = (F.CLIENT_DL, F.CLIENT_DLVAR, DL_KNOWN_COL, DL_RATIO_COL)


class ImputeRequest(nn.Module):
    """``request (N, R) -> (N, RX)``: the client's download history where it is unknown
    (:data:`~modi.runtime.features.UNKNOWN_HISTORY` or NaN: a client's first request) replaced
    by TCP's view (``srtt/2``, ``rttvar``), then whether it was known and the client's
    download/upload ratio (0 when unknown). ``client_dl_mismatch`` passes through as sent
    (below 0 or NaN: unknown; :class:`RelativeSquash` reads it). The only non-affine step of the
    pair features; column gathers only (no ``Slice`` in the exported graph)."""

    head: torch.Tensor
    hist: torch.Tensor
    tail: torch.Tensor
    tcp: torch.Tensor
    tcp_scale: torch.Tensor
    dl: torch.Tensor
    first: torch.Tensor
    up: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        assert (F.CLIENT_DL, F.CLIENT_DLVAR, F.CLIENT_MISMATCH) == (F.R - 3, F.R - 2, F.R - 1)
        self.register_buffer("head", torch.arange(F.CLIENT_DL), persistent=False)
        self.register_buffer("hist", torch.tensor([F.CLIENT_DL, F.CLIENT_DLVAR]), persistent=False)
        self.register_buffer("tail", torch.tensor([F.CLIENT_MISMATCH]), persistent=False)
        self.register_buffer("tcp", torch.tensor([F.SRTT, F.RTTVAR]), persistent=False)
        self.register_buffer("tcp_scale", torch.tensor([0.5, 1.0]), persistent=False)
        self.register_buffer("dl", torch.tensor([F.CLIENT_DL]), persistent=False)
        self.register_buffer("first", torch.tensor([0]), persistent=False)
        self.register_buffer("up", torch.tensor([F.NET_MEAN]), persistent=False)

    def forward(self, request: torch.Tensor) -> torch.Tensor:
        """The imputed request block."""
        known = request.index_select(1, self.dl) >= 0.0  # UNKNOWN_HISTORY (-1) or NaN: no
        tcp = request.index_select(1, self.tcp) * self.tcp_scale.to(request.dtype)
        filled = torch.where(known, request.index_select(1, self.hist), tcp)
        up = torch.clamp(request.index_select(1, self.up), min=1.0)
        ratio = torch.clamp(filled.index_select(1, self.first) / up, 0.0, MAX_DL_PER_UPLOAD)
        ratio = torch.where(known, ratio, 0.0)
        head = request.index_select(1, self.head)
        tail = request.index_select(1, self.tail)
        return torch.cat([head, filled, tail, known.to(request.dtype), ratio], dim=1)


class AffinePairFeatures(nn.Module):
    """``(imputed request (N, RX), models (N, K, P)) -> (N, K, NUM_PAIR_FEATURES)``: affine in
    each block (one product, ``mu * slowdown``), so it fuses (:mod:`modi.agents.fused`).

    ``accuracy=False`` leaves out the model's accuracy (``accuracy``): whether a request meets its
    SLA depends on the model's execution time, not on its accuracy, and a scorer that reads the
    accuracy can learn the training pools' link between the two instead of the time."""

    def __init__(self, accuracy: bool = True) -> None:
        super().__init__()
        self.accuracy = bool(accuracy)
        keep = [i for i in range(NUM_PAIR_FEATURES) if accuracy or i != PAIR_INDEX["accuracy"]]
        self.register_buffer("keep", torch.tensor(keep, dtype=torch.long), persistent=False)

    @property
    def width(self) -> int:
        """Number of features returned."""
        return NUM_PAIR_FEATURES - (0 if self.accuracy else 1)

    def forward(self, request: torch.Tensor, models: torch.Tensor) -> torch.Tensor:
        """Build the pair features."""
        k = models.shape[1]
        mu = models[:, :, F.MU]
        sigma = models[:, :, F.SIGMA]
        acc = models[:, :, F.ACC]
        slow = request[:, F.SLOWDOWN : F.SLOWDOWN + 1]
        remaining = request[:, F.REMAINING : F.REMAINING + 1]
        budget = request[:, F.BUDGET : F.BUDGET + 1]

        def per_request(col: int, scale: float) -> torch.Tensor:
            return (request[:, col : col + 1] / scale).expand(-1, k)

        headroom = remaining - mu * slow
        rttvar = request[:, F.RTTVAR : F.RTTVAR + 1]
        net_headroom = headroom - 0.5 * request[:, F.SRTT : F.SRTT + 1]
        dl_headroom = headroom - request[:, F.CLIENT_DL : F.CLIENT_DL + 1]
        dlvar = request[:, F.CLIENT_DLVAR : F.CLIENT_DLVAR + 1]
        out = torch.stack(
            [
                headroom / 100.0,
                (budget - (mu + sigma) * slow) / 100.0,
                sigma / 10.0,
                acc,
                mu / 100.0,
                per_request(F.T_INPUT, 100.0),
                per_request(F.NET_MEAN, 100.0),
                per_request(F.NET_STD, 100.0),
                per_request(F.QUEUE, 10.0),
                (slow - 1.0).expand(-1, k),
                per_request(F.SLA, 100.0),
                net_headroom / 100.0,
                (net_headroom - 2.0 * rttvar) / 100.0,
                per_request(F.SRTT, 100.0),
                per_request(DL_KNOWN_COL, 1.0),
                dl_headroom / 100.0,
                (dl_headroom - 2.0 * dlvar) / 100.0,
                per_request(DL_RATIO_COL, 1.0),
            ],
            dim=-1,
        )
        return out if self.accuracy else out.index_select(-1, self.keep)  # type: ignore[arg-type]


#: Scale-free pair features (issue 13, item 2) of :class:`RelativePairFeatures`, each a ratio
#: clipped to a fixed range, so a pool or a network on another time scale maps onto the range
#: the scorer trained on: (name, range, meaning). ``ms = mu*slowdown``, ``ss = sigma*slowdown``,
#: ``rem = max(remaining_ms, 1)``; ``gate = clip(1 - client_dl_mismatch / GATE_WIDTH, 0, 1)``
#: (feature schema v4): 1 for a client each of whose downloads took as long as its own request's
#: upload (this request's upload time then predicts its download, as on the papers' networks),
#: 0 where they differed by a factor of ``e^GATE_WIDTH`` (5 %) or more on average, or where the
#: client has sent no such history yet.
RELATIVE_FEATURES: tuple[tuple[str, str, str], ...] = (
    ("mu_rel", "[0, 4]", "ms / rem: the mean run's share of the time left"),
    ("sigma_rel", "[0, 1]", "ss / rem: the run's spread against the time left"),
    (
        "budget_rel",
        "[-4, 1]",
        "gate * (budget_ms - ms) / rem: what is left if the download takes as long as the upload",
    ),
    (
        "exec_z",
        "[-10, 10]",
        "gate * (budget_ms - ms) / max(ss, 0.05 ms): that headroom in execution standard "
        "deviations",
    ),
    ("dl_rel", "[-4, 1]", "dl_headroom / rem: what is left after the client's usual download"),
    (
        "dl_z",
        "[-4, 4]",
        "dl_headroom / max(2 client_dlvar + ss, 1 ms): in the download's and run's spread",
    ),
    (
        "net_z",
        "[-4, 4]",
        "net_headroom / max(2 rttvar + ss, 1 ms): in TCP's RTT variation and the run's spread",
    ),
)
#: ``client_dl_mismatch`` at which the gate of :data:`RELATIVE_FEATURES` closes. On the
#: networks of the mixture the client's smoothed mismatch is 0 on the papers' Gaussian
#: networks (one draw for both directions) and at least 0.09 (1st percentile, validation
#: streams) on LTE at twice its round-trip time, the closest other regime.
GATE_WIDTH = 0.05
RELATIVE_NAMES: tuple[str, ...] = tuple(name for name, _, _ in RELATIVE_FEATURES)
#: Per relative feature: denominator floor (ms), lower and upper clip, whether gated.
_REL_FLOOR = dict(zip(RELATIVE_NAMES, (1.0, 1.0, 1.0, 0.05, 1.0, 1.0, 1.0), strict=True))
_REL_LO = dict(zip(RELATIVE_NAMES, (0.0, 0.0, -4.0, -10.0, -4.0, -4.0, -4.0), strict=True))
_REL_HI = dict(zip(RELATIVE_NAMES, (4.0, 1.0, 1.0, 10.0, 1.0, 4.0, 4.0), strict=True))
_REL_GATED = dict(zip(RELATIVE_NAMES, (0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0), strict=True))
#: What ``relative=True`` means: the two gated features (``agent.relative`` is on by default;
#: docs/results.md, "Scale-free features", has what each choice measured).
DEFAULT_RELATIVE: tuple[str, ...] = ("budget_rel", "exec_z")


def relative_names(relative: bool | Sequence[str] | None) -> tuple[str, ...]:
    """The scale-free features a ``relative`` setting selects: ``False``/``None``/``[]`` none,
    ``True`` :data:`DEFAULT_RELATIVE`, or names from :data:`RELATIVE_NAMES` (in that order)."""
    if relative is None or (isinstance(relative, bool) and not relative):
        return ()
    if isinstance(relative, bool):
        return DEFAULT_RELATIVE
    if isinstance(relative, str):
        relative = [relative]
    expected = f"relative must be true/false or distinct names from {list(RELATIVE_NAMES)}"
    try:
        names = [str(x) for x in relative]
    except TypeError:
        raise ValueError(f"{expected}, got {relative!r}") from None
    bad = [x for x in names if x not in RELATIVE_NAMES]
    if bad or len(set(names)) != len(names):
        raise ValueError(f"{expected}, got {names}")
    return tuple(x for x in RELATIVE_NAMES if x in names)


class RelativeTerms(nn.Module):
    """``(imputed request (N, RX), models (N, K, P)) -> (N, K, 2 G)``: the numerators then the
    denominators of the chosen :data:`RELATIVE_FEATURES`, affine in each block with the one
    product ``slowdown * model`` (so they fuse like :class:`AffinePairFeatures`)."""

    def __init__(self, names: Sequence[str] = DEFAULT_RELATIVE) -> None:
        super().__init__()
        self.names = tuple(names)

    def forward(self, request: torch.Tensor, models: torch.Tensor) -> torch.Tensor:
        """Numerators and denominators."""
        k = models.shape[1]
        slow = request[:, F.SLOWDOWN : F.SLOWDOWN + 1]
        ms = models[:, :, F.MU] * slow
        ss = models[:, :, F.SIGMA] * slow
        remaining = request[:, F.REMAINING : F.REMAINING + 1].expand(-1, k)
        budget = request[:, F.BUDGET : F.BUDGET + 1]
        up_headroom = budget - ms
        headroom = remaining - ms
        dl_headroom = headroom - request[:, F.CLIENT_DL : F.CLIENT_DL + 1]
        terms: dict[str, Callable[[], tuple[torch.Tensor, torch.Tensor]]] = {
            "mu_rel": lambda: (ms, remaining),
            "sigma_rel": lambda: (ss, remaining),
            "budget_rel": lambda: (up_headroom, remaining),
            "exec_z": lambda: (up_headroom, ss),
            "dl_rel": lambda: (dl_headroom, remaining),
            "dl_z": lambda: (
                dl_headroom,
                2.0 * request[:, F.CLIENT_DLVAR : F.CLIENT_DLVAR + 1] + ss,
            ),
            "net_z": lambda: (
                headroom - 0.5 * request[:, F.SRTT : F.SRTT + 1],
                2.0 * request[:, F.RTTVAR : F.RTTVAR + 1] + ss,
            ),
        }
        pairs = [terms[x]() for x in self.names]
        return torch.stack([n for n, _ in pairs] + [d for _, d in pairs], dim=-1)


class RelativeSquash(nn.Module):
    """``(terms (N, K, 2 G), imputed request (N, RX)) -> (N, K, G)``:
    ``clip(num / max(den, floor), lo, hi)`` per feature, the gated ones times the gate."""

    floor: torch.Tensor
    lo: torch.Tensor
    hi: torch.Tensor
    gated: torch.Tensor
    mismatch_col: torch.Tensor

    def __init__(self, names: Sequence[str] = DEFAULT_RELATIVE) -> None:
        super().__init__()

        def vec(table: dict[str, float]) -> torch.Tensor:
            return torch.tensor([table[x] for x in names])

        self.register_buffer("floor", vec(_REL_FLOOR), persistent=False)
        self.register_buffer("lo", vec(_REL_LO), persistent=False)
        self.register_buffer("hi", vec(_REL_HI), persistent=False)
        self.register_buffer("gated", vec(_REL_GATED), persistent=False)
        self.register_buffer("mismatch_col", torch.tensor([F.CLIENT_MISMATCH]), persistent=False)
        self.any_gated = any(_REL_GATED[x] for x in names)

    def forward(self, terms: torch.Tensor, request: torch.Tensor) -> torch.Tensor:
        """The clipped ratios."""
        dt = terms.dtype
        num, den = terms.chunk(2, dim=-1)
        ratio = num / torch.maximum(den, self.floor.to(dt))
        clipped = torch.minimum(torch.maximum(ratio, self.lo.to(dt)), self.hi.to(dt))
        if not self.any_gated:
            return clipped
        mis = request.index_select(1, self.mismatch_col)  # (N, 1); < 0 or NaN: unknown
        gate = torch.clamp(1.0 - mis * (1.0 / GATE_WIDTH), 0.0, 1.0)
        gate = torch.where(mis >= 0.0, gate, 0.0)  # no history yet (or NaN): closed
        return torch.where(self.gated > 0.5, clipped * gate.unsqueeze(1), clipped)


class RelativePairFeatures(nn.Module):
    """``(imputed request (N, RX), models (N, K, P)) -> (N, K, G)``: the chosen scale-free
    features, :class:`RelativeTerms` then :class:`RelativeSquash`."""

    def __init__(self, names: Sequence[str] = DEFAULT_RELATIVE) -> None:
        super().__init__()
        self.names = tuple(names)
        self.terms = RelativeTerms(self.names)
        self.squash = RelativeSquash(self.names)

    def forward(self, request: torch.Tensor, models: torch.Tensor) -> torch.Tensor:
        """The scale-free features."""
        return self.squash(self.terms(request, models), request)


class PairFeatures(nn.Module):
    """``(request (N, R), models (N, K, P)) -> (N, K, num_features)``, roughly unit scale:
    :class:`ImputeRequest` then :class:`AffinePairFeatures` (the :data:`PAIR_FEATURES`), and with
    ``relative`` (see :func:`relative_names`) the chosen scale-free :data:`RELATIVE_FEATURES`
    after them."""

    def __init__(self, relative: bool | Sequence[str] = False, accuracy: bool = True) -> None:
        super().__init__()
        self.impute = ImputeRequest()
        self.affine = AffinePairFeatures(accuracy)
        names = relative_names(relative)
        self.relative = RelativePairFeatures(names) if names else None

    @property
    def num_features(self) -> int:
        """Width of the pair features."""
        rel = len(self.relative.names) if self.relative is not None else 0
        return self.affine.width + rel

    def forward(self, request: torch.Tensor, models: torch.Tensor) -> torch.Tensor:
        """Build the pair features."""
        rx = self.impute(request)
        out: torch.Tensor = self.affine(rx, models)
        if self.relative is None:
            return out
        return torch.cat([out, self.relative(rx, models)], dim=-1)


#: The headroom features of the original step basis (download headroom, ModiPick's slack).
DEFAULT_STEPS: tuple[str, ...] = ("headroom", "slack")
#: Features a step basis may step over (each a headroom in ms, affine in the observation).
STEP_FEATURES: tuple[str, ...] = tuple(PAIR_READS)


class StepBasis(nn.Module):
    """Fixed nonlinear basis for linear bandits: ``[1, σ((h - c_j) / w) ...]`` per model.

    ``h`` is each of the headroom features named in ``steps`` (by default the download
    headroom and ModiPick's slack; ``net_headroom``/``net_margin`` subtract the connection's
    one-way delay as TCP estimates it, so the learned shape is that of the download *beyond*
    it and carries over to other round-trip times), ``c_j`` a grid of centres. A linear model
    over this basis is a monotone-ish mixture of soft steps in the headrooms, i.e. an estimate
    of ``P(met)``: the shape of the download-time distribution.
    """

    def __init__(
        self,
        centres_ms: tuple[float, ...] | None = None,
        width_ms: float = 8.0,
        steps: tuple[str, ...] = DEFAULT_STEPS,
    ) -> None:
        super().__init__()
        bad = [x for x in steps if x not in STEP_FEATURES]
        if not steps or bad or len(set(steps)) != len(steps):
            raise ValueError(
                f"steps must be distinct names from {list(STEP_FEATURES)}, got {list(steps)}"
            )
        c = centres_ms or tuple(float(x) for x in range(-40, 321, 20))
        self.register_buffer("centres", torch.tensor(c, dtype=torch.float32) / 100.0)
        self.width = float(width_ms) / 100.0
        self.steps = tuple(steps)
        self.step_index = tuple(PAIR_INDEX[x] for x in self.steps)
        self.pairs = PairFeatures()

    @property
    def reads(self) -> tuple[str, ...]:
        """The observation features the basis reads."""
        names = {n for x in self.steps for n in PAIR_READS[x]} | {"mu_ms", "sigma_ms"}
        return tuple(sorted(names))

    @property
    def dim(self) -> int:
        """Basis length."""
        return 1 + len(self.steps) * int(self.centres.numel())  # type: ignore[operator]

    def forward(self, request: torch.Tensor, models: torch.Tensor) -> torch.Tensor:
        """``(N, K, dim)``."""
        f = self.pairs(request, models)
        steps = [
            torch.sigmoid((f[..., i : i + 1] - self.centres) / self.width) for i in self.step_index
        ]
        return torch.cat([torch.ones_like(f[..., :1]), *steps], dim=-1)


#: A ``P(met)`` below this counts as 0 in a deterministic decision: such a model is hopeless.
#: Among hopeless models :class:`ArgmaxSelector` takes the fastest (ModiPick's best effort)
#: instead of comparing scores of ~1e-5 that differ by ~1e-10, which two float32
#: implementations of one scorer (torch here, onnxruntime in the server) may order differently.
P_MET_FLOOR = 1e-3
#: Hopeless models rank at ``-HOPELESS_TIE_BREAK * mu_ms``: below every model that is not
#: hopeless (those rank at ``(A + penalty) * P(met) >= 0``), faster ones first; the product is
#: exact in any IEEE implementation, so the order is too.
HOPELESS_TIE_BREAK = 1e-14


def floor_p_met(p_met: torch.Tensor) -> torch.Tensor:
    """``P(met)`` with values below :data:`P_MET_FLOOR` set to exactly 0."""
    return torch.where(p_met < P_MET_FLOOR, 0.0, p_met)


def expected_reward(acc: torch.Tensor, p_met: torch.Tensor, miss_penalty: float) -> torch.Tensor:
    """``A·p − penalty·(1 − p)``: the env's expected reward given ``P(met) = p`` (floored, see
    :data:`P_MET_FLOOR`)."""
    return (acc + miss_penalty) * floor_p_met(p_met) - miss_penalty


class LinearScorer(nn.Module):
    """``P(met) = clip(basis · theta, 0, 1)``; score = expected reward."""

    def __init__(self, basis: StepBasis, theta: torch.Tensor, miss_penalty: float = 0.0) -> None:
        super().__init__()
        self.basis = basis
        self.miss_penalty = float(miss_penalty)
        self.register_buffer("theta", theta.to(torch.float32))

    def p_met(self, request: torch.Tensor, models: torch.Tensor) -> torch.Tensor:
        """``P(met)`` per model, ``(N, K)``."""
        return torch.clamp(self.basis(request, models) @ self.theta, 0.0, 1.0)

    def forward(self, request: torch.Tensor, models: torch.Tensor) -> torch.Tensor:
        """Scores ``(N, K)``: expected reward."""
        return expected_reward(models[:, :, F.ACC], self.p_met(request, models), self.miss_penalty)


class MetNet(nn.Module):
    """Shared per-model MLP: pair features -> logit of meeting the SLA; score = A · P(met).

    ``norm_mean``/``norm_std`` standardise the pair features inside the module, so the
    normalisation travels with the saved and exported policy. ``relative``: scale-free
    :data:`RELATIVE_FEATURES` too (issue 13; :func:`relative_names`); ``accuracy=False``: the
    pair features leave out the model's accuracy (:class:`AffinePairFeatures`).
    """

    def __init__(
        self,
        hidden: int = 64,
        layers: int = 2,
        miss_penalty: float = 0.0,
        relative: bool | Sequence[str] = False,
        accuracy: bool = True,
    ) -> None:
        super().__init__()
        self.pairs = PairFeatures(relative, accuracy)
        self.miss_penalty = float(miss_penalty)
        width = self.pairs.num_features
        dims = [width, *([hidden] * layers)]
        mods: list[nn.Module] = []
        for a, b in itertools.pairwise(dims):
            mods += [nn.Linear(a, b), nn.Tanh()]
        mods.append(nn.Linear(dims[-1], 1))
        self.mlp = nn.Sequential(*mods)
        self.register_buffer("norm_mean", torch.zeros(width))
        self.register_buffer("norm_std", torch.ones(width))

    def logits(self, request: torch.Tensor, models: torch.Tensor) -> torch.Tensor:
        """Logit of P(met) per model, ``(N, K)``."""
        f = (self.pairs(request, models) - self.norm_mean) / self.norm_std
        return self.mlp(f).squeeze(-1)

    def p_met(self, request: torch.Tensor, models: torch.Tensor) -> torch.Tensor:
        """``P(met)`` per model, ``(N, K)``."""
        return torch.sigmoid(self.logits(request, models))

    def forward(self, request: torch.Tensor, models: torch.Tensor) -> torch.Tensor:
        """Scores ``(N, K)``: expected reward ``A·P(met) − penalty·(1 − P(met))``."""
        return expected_reward(models[:, :, F.ACC], self.p_met(request, models), self.miss_penalty)


class ArgmaxSelector(nn.Module):
    """The deterministic decision over a scorer: ``(request, models) -> (action (N,) int64,
    scores (N, K))``.

    For a scorer of expected rewards with ``p_met(request, models)`` and ``miss_penalty`` (all of
    :mod:`modi.agents.scorers`), ``action`` is the model of highest expected reward among those
    whose ``P(met)`` reaches :data:`P_MET_FLOOR`, or the fastest (lowest profiled ``mu_ms``) when
    none does; ``scores`` are the expected rewards, with a hopeless model at
    ``-penalty - HOPELESS_TIE_BREAK * mu`` (the ranking ``action`` is the argmax of, shifted by
    the constant ``-penalty``). Any other scorer: the argmax of its scores.
    """

    def __init__(self, scorer: nn.Module) -> None:
        super().__init__()
        self.scorer = scorer
        self.ranked = callable(getattr(scorer, "p_met", None))
        self.miss_penalty = float(getattr(scorer, "miss_penalty", 0.0))

    def forward(
        self, request: torch.Tensor, models: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Chosen model per row, and the scores."""
        if not self.ranked:
            scores = self.scorer(request, models)
            return torch.argmax(scores, dim=1), scores
        p_met = cast(Callable[[torch.Tensor, torch.Tensor], torch.Tensor], self.scorer.p_met)
        p = p_met(request, models)
        pen = self.miss_penalty
        gain = models[:, :, F.ACC] + pen if pen else models[:, :, F.ACC]
        rank = torch.where(p < P_MET_FLOOR, models[:, :, F.MU] * -HOPELESS_TIE_BREAK, gain * p)
        return torch.argmax(rank, dim=1), (rank - pen if pen else rank)
