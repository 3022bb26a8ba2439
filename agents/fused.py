"""Export-time fusion: algebraically equal, much smaller graphs for the scorers of
:mod:`modi.agents.scorers`.

:class:`~modi.agents.scorers.PairFeatures` stacks eleven slices, divisions and broadcasts (about
50 ONNX nodes, most of a batch-1 inference). It is affine in the request block and in the model
block, except that the slowdown column multiplies model columns::

    f(r, m) = c + r A + m B + r[:, s] * (m C)

:meth:`AffinePairs.probe` recovers ``c, A, B, C, s`` by evaluating the module on unit inputs
(in float64) and checks the form on random inputs. The affine map that follows the pair
features in a scorer folds into the same four matrices: the per-column step scaling of
:class:`~modi.agents.scorers.StepBasis` (LinUCB, linear Thompson) and the normalisation and
first ``Linear`` layer of :class:`~modi.agents.scorers.MetNet` (neural bandit, and any SB3
policy built on it). The result: ~20 nodes instead of ~60, and no slow 1-D ``MatMul``.

Since feature schema v3 the pair features first impute the client's download history where it
is unknown (:class:`~modi.agents.scorers.ImputeRequest`, a few ``Where`` nodes); the affine part
is probed on the imputed request block, and a graph whose affine part reads none of the imputed
columns (LinUCB over the headrooms) skips the imputation altogether (:class:`ImputedPairs`).

:func:`fuse_selector` replaces what it recognises (by exact type) anywhere in a selector
module, and keeps the original module whenever the fused one does not reproduce its scores on
random plausible inputs, so a future change to a scorer can only cost speed, never correctness.
"""

from __future__ import annotations

import copy
import logging

import numpy as np
import torch
from torch import nn

from modi.agents.scorers import (
    IMPUTED_COLS,
    RX,
    ImputeRequest,
    LinearScorer,
    MetNet,
    PairFeatures,
    RelativeSquash,
    StepBasis,
    floor_p_met,
)
from modi.runtime import features as F

log = logging.getLogger(__name__)

#: Tolerance of the fused-vs-original check on scores (expected reward, order 1).
SCORE_ATOL = 1e-4
SCORE_RTOL = 1e-4


class AffinePairs(nn.Module):
    """``(request (N, R), models (N, K, P)) -> (N, K, H)``:
    ``c + (r - o) A + m B + r[:, s] (m C)``.

    The expansion point ``o`` is the neutral request (slowdown 1, everything else 0): features
    such as ``slowdown - 1`` are then exactly 0 for a normal server instead of the difference of
    two large folded terms (MetNet divides nearly constant features by a tiny std).
    """

    c: torch.Tensor
    a: torch.Tensor
    b: torch.Tensor
    origin: torch.Tensor
    b_cross: torch.Tensor
    a_used: torch.Tensor
    origin_used: torch.Tensor

    def __init__(
        self,
        c: torch.Tensor,
        a: torch.Tensor,
        b: torch.Tensor,
        cross: torch.Tensor | None,
        cross_col: int | None,
        origin: torch.Tensor,
    ) -> None:
        super().__init__()
        self.register_buffer("c", c.to(torch.float32))
        self.register_buffer("a", a.to(torch.float32))
        self.register_buffer("b", b.to(torch.float32))
        self.register_buffer("origin", origin.to(torch.float32))
        self.cross_col = cross_col
        # Without plain model terms (B = 0, as for the step basis's headroom features) the
        # pair part is the cross part alone: no Concat, a MatMul half as deep.
        self.plain = bool((b != 0).any()) or cross is None
        if cross is not None:
            both = torch.cat([b, cross]) if self.plain else cross
            self.register_buffer("b_cross", both.to(torch.float32))
        self._f64 = (
            c.double(),
            a.double(),
            b.double(),
            None if cross is None else cross.double(),
            origin.double(),
        )
        # Centring only matters where the origin meets a non-zero row of ``A``; elsewhere
        # ``(r - o) A`` and ``r A`` are the same float32 sums, and the graph skips the ``Sub``.
        self.centred = bool(((origin != 0) & (a != 0).any(dim=1)).any())
        # Only the request columns the features read enter the MatMul: an unread column may be
        # NaN (an optional feature the request did not carry, e.g. ``srtt_ms``), and
        # ``NaN * 0`` would poison every score. ``None``: all columns are read.
        used = torch.nonzero((a != 0).any(dim=1)).flatten()
        self.used: torch.Tensor | None
        if used.numel() < a.shape[0]:
            self.register_buffer("used", used.to(torch.int64))
            self.register_buffer("a_used", a[used].to(torch.float32))
            self.register_buffer("origin_used", origin[used].to(torch.float32))
        else:
            self.used = None

    @property
    def out_dim(self) -> int:
        """``H``."""
        return int(self._f64[0].numel())

    def forward(self, request: torch.Tensor, models: torch.Tensor) -> torch.Tensor:
        """The pair features (or their affine image)."""
        if self.used is not None:
            r_used = request.index_select(1, self.used)
            centred = r_used - self.origin_used if self.centred else r_used
            base = (centred @ self.a_used + self.c).unsqueeze(1)
        else:
            centred = request - self.origin if self.centred else request
            base = (centred @ self.a + self.c).unsqueeze(1)
        if self.cross_col is None:
            return base + models @ self.b
        # One MatMul over [m, r_s * m] instead of two plus a product on the (N, K, H) result.
        s = self.cross_col
        scaled = models * request[:, s : s + 1].unsqueeze(-1)
        if not self.plain:
            return base + scaled @ self.b_cross
        return base + torch.cat([models, scaled], dim=-1) @ self.b_cross

    def then(self, w: torch.Tensor, bias: torch.Tensor) -> AffinePairs:
        """``f -> f w + bias`` folded in (computed in float64)."""
        c, a, b, cross, origin = self._f64
        w = w.double()
        return AffinePairs(
            c @ w + bias.double(),
            a @ w,
            b @ w,
            None if cross is None else cross @ w,
            self.cross_col,
            origin,
        )

    @classmethod
    def probe(cls, pairs: nn.Module, r_dim: int = F.R) -> AffinePairs | None:
        """The affine form of ``pairs`` (over request blocks of ``r_dim`` columns: ``F.R``, or
        :data:`~modi.agents.scorers.RX` for the imputed block), or ``None`` when it is not of
        that form."""
        mod = copy.deepcopy(pairs).double().eval()
        p_dim = F.P
        with torch.no_grad():

            def f(r: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
                out: torch.Tensor = mod(r, m)
                return out

            try:
                zr = torch.zeros(1, r_dim, dtype=torch.float64)
                zm = torch.zeros(1, 1, p_dim, dtype=torch.float64)
                eye_r = torch.eye(r_dim, dtype=torch.float64)
                eye_m = torch.eye(p_dim, dtype=torch.float64)
                c = f(zr, zm)[0, 0]
                a = torch.stack([f(eye_r[i : i + 1], zm)[0, 0] - c for i in range(r_dim)])
                b = torch.stack([f(zr, eye_m[j].view(1, 1, p_dim))[0, 0] - c for j in range(p_dim)])
                cross_all = torch.stack(
                    [
                        torch.stack(
                            [
                                f(eye_r[i : i + 1], eye_m[j].view(1, 1, p_dim))[0, 0]
                                - (c + a[i])
                                - b[j]
                                for j in range(p_dim)
                            ]
                        )
                        for i in range(r_dim)
                    ]
                )  # (R, P, H)
            except Exception as e:  # a module of another shape: not ours to fuse
                log.debug("cannot probe %s: %s", type(pairs).__name__, e)
                return None
            cols = [i for i in range(r_dim) if cross_all[i].abs().max() > 0]
            if len(cols) > 1:
                return None
            col = cols[0] if cols else None
            origin = torch.zeros(r_dim, dtype=torch.float64)
            origin[F.SLOWDOWN] = 1.0
            out = cls(
                c + origin @ a,
                a,
                b,
                cross_all[col] if col is not None else None,
                col,
                origin,
            )
            # Check the form on random inputs, in float64.
            r, m = plausible_inputs(64, 7, seed=1, dtype=torch.float64)
            if r_dim == RX:
                r = ImputeRequest()(r)
            want = f(r, m)
            got = out._forward64(r, m)
        if not torch.allclose(got, want, rtol=1e-9, atol=1e-9):
            return None
        return out

    def _forward64(self, request: torch.Tensor, models: torch.Tensor) -> torch.Tensor:
        c, a, b, cross, origin = self._f64
        out = ((request - origin) @ a + c).unsqueeze(1) + models @ b
        if self.cross_col is None or cross is None:
            return out
        s = self.cross_col
        return out + request[:, s : s + 1].unsqueeze(-1) * (models @ cross)


class RelativeImage(nn.Module):
    """The scale-free pair features (:class:`~modi.agents.scorers.RelativePairFeatures`) through
    a linear map ``w``: their numerators and denominators as one :class:`AffinePairs`, the
    clipped ratios, then one ``MatMul``."""

    w: torch.Tensor

    def __init__(self, terms: AffinePairs, w: torch.Tensor, names: tuple[str, ...]) -> None:
        super().__init__()
        self.terms = terms
        self.squash = RelativeSquash(names)
        self.register_buffer("w", w.to(torch.float32))

    def forward(self, request: torch.Tensor, models: torch.Tensor) -> torch.Tensor:
        """``squash(terms(r, m)) @ w``."""
        return self.squash(self.terms(request, models), request) @ self.w


class ImputedPairs(nn.Module):
    """:class:`~modi.agents.scorers.PairFeatures` fused: the imputation of the download history
    (only where the affine part reads an imputed column) then :class:`AffinePairs` over the
    imputed request block; with the scale-free features, their linear image
    (:class:`RelativeImage`, only once a first layer is folded in: :meth:`with_relative`) added
    to it."""

    def __init__(self, affine: AffinePairs, relative: RelativeImage | None = None) -> None:
        super().__init__()
        self.affine = affine
        self.relative = relative
        used = affine.used
        need = used is None or bool(np.isin(used.numpy(), IMPUTED_COLS).any())
        self.impute = ImputeRequest() if need or relative is not None else None

    @classmethod
    def probe(cls, pairs: nn.Module) -> ImputedPairs | None:
        """The fused form of a :class:`~modi.agents.scorers.PairFeatures` without the scale-free
        features, or ``None``."""
        if not isinstance(pairs, PairFeatures) or pairs.relative is not None:
            return None
        affine = AffinePairs.probe(pairs.affine, RX)
        return None if affine is None else cls(affine)

    @classmethod
    def with_relative(
        cls, pairs: PairFeatures, w: torch.Tensor, bias: torch.Tensor
    ) -> ImputedPairs | None:
        """``f -> f w + bias`` of pair features ``f`` (the affine ones, then the scale-free ones)
        in fused form, or ``None``."""
        if pairs.relative is None:
            return None
        affine = AffinePairs.probe(pairs.affine, RX)
        terms = AffinePairs.probe(pairs.relative.terms, RX)
        if affine is None or terms is None:
            return None
        h = affine.out_dim
        return cls(affine.then(w[:h], bias), RelativeImage(terms, w[h:], pairs.relative.names))

    @property
    def out_dim(self) -> int:
        """``H``."""
        return self.affine.out_dim

    def then(self, w: torch.Tensor, bias: torch.Tensor) -> ImputedPairs:
        """``f -> f w + bias`` folded in (see :meth:`AffinePairs.then`)."""
        if self.relative is not None:
            raise ValueError("the scale-free part is already folded into a first layer")
        return ImputedPairs(self.affine.then(w, bias))

    def forward(self, request: torch.Tensor, models: torch.Tensor) -> torch.Tensor:
        """The pair features (or their affine image)."""
        rx = request if self.impute is None else self.impute(request)
        out: torch.Tensor = self.affine(rx, models)
        if self.relative is not None:
            out = out + self.relative(rx, models)
        return out


def _expected_reward(acc: torch.Tensor, p: torch.Tensor, miss_penalty: float) -> torch.Tensor:
    p = floor_p_met(p)
    if miss_penalty == 0.0:
        return acc * p
    return (acc + miss_penalty) * p - miss_penalty


#: ``exp`` arguments are capped here (``e^88`` is finite in float32), so ``inf * 0`` never
#: turns a step of the other headroom feature into NaN.
EXP_CAP = 88.0
#: Largest ``|c_i - c_ref| / w`` the shifted-exponential form allows: the cap then costs at most
#: ``e^-28`` on a step, and an ``exp`` that underflows only hides terms below float32's ``1 + x``.
MAX_SHIFT = 60.0


class FusedStepLinearScorer(nn.Module):
    """:class:`~modi.agents.scorers.LinearScorer` over a :class:`StepBasis`, fused:
    ``P(met) = clip(θ0 + Σ_i θ_i σ((h - c_i) / w), 0, 1)`` for the stepped headroom features ``h``.

    The centres share one width, so ``exp(-(h - c_i) / w) = exp(-(h - c_ref) / w) g_i`` with
    constants ``g_i = exp((c_i - c_ref) / w)``: one ``exp`` per (request, model, feature)
    instead of one per centre, then ``1 + e g_i`` for every step (and the constant 1 of
    ``θ0``) as one small ``MatMul`` over ``[e_0, e_1, ..., 1]`` (the 1 is ``exp`` of an exactly-zero
    third pre-activation column), and ``1 / (...)`` as ``Reciprocal``: the sigmoid written so
    onnxruntime agrees with torch in both tails (see
    :func:`modi.agents.export._accurate_sigmoids`). At batch 1024 onnxruntime takes about a
    quarter less time than on the per-centre form, at the same node count. The zero column
    stays zero while ``models * slowdown`` is finite in float32 (the selector's default limits
    bound it by ~6e8); past that, ``inf * 0`` makes this graph's scores NaN where the
    per-centre form's are 0 (an input no validated request reaches).
    """

    g: torch.Tensor
    theta: torch.Tensor

    def __init__(
        self, pre: ImputedPairs, g: torch.Tensor, theta: torch.Tensor, miss_penalty: float
    ) -> None:
        super().__init__()
        self.pre = pre
        self.register_buffer("g", g.to(torch.float32))
        self.register_buffer("theta", theta.reshape(-1, 1).to(torch.float32))
        self.miss_penalty = float(miss_penalty)

    @classmethod
    def build(cls, scorer: LinearScorer) -> FusedStepLinearScorer | None:
        """Fuse ``scorer`` or return ``None``."""
        basis = scorer.basis
        if type(basis) is not StepBasis:
            return None
        pairs = ImputedPairs.probe(basis.pairs)
        if pairs is None:
            return None
        centres = torch.as_tensor(basis.centres).double()
        n_c = int(centres.numel())
        idx = basis.step_index
        n_s = len(idx)
        theta = scorer.theta.detach().double()  # type: ignore[operator]
        if theta.numel() != 1 + n_s * n_c:
            return None
        width = float(basis.width)
        mid = (centres.max() + centres.min()) / 2
        ref = centres[int(torch.argmin((centres - mid).abs()))]
        shift = (centres - ref) / width
        if float(shift.abs().max()) > MAX_SHIFT:
            return None
        # Negated pre-activations at the reference centre for each stepped headroom feature,
        # and a column of exact zeros (no weights, no bias).
        w = torch.zeros(pairs.out_dim, n_s + 1, dtype=torch.float64)
        for j, i in enumerate(idx):
            w[i, j] = -1.0 / width
        bias = torch.cat([(ref / width).repeat(n_s), torch.zeros(1, dtype=torch.float64)])
        g = torch.zeros(n_s + 1, n_s * n_c + 1, dtype=torch.float64)
        for j in range(n_s):
            g[j, j * n_c : (j + 1) * n_c] = torch.exp(shift)
        g[n_s, :] = 1.0
        # The basis is [1, steps_0, steps_1, ...]; the graph's columns are [steps..., 1].
        theta_cols = torch.cat([theta[1:], theta[:1]])
        return cls(pairs.then(w, bias), g, theta_cols, scorer.miss_penalty)

    def p_met(self, request: torch.Tensor, models: torch.Tensor) -> torch.Tensor:
        """``P(met)`` per model, ``(N, K)``."""
        e = torch.exp(torch.clamp(self.pre(request, models), max=EXP_CAP))
        steps = torch.reciprocal(e @ self.g)
        return torch.clamp((steps @ self.theta).squeeze(-1), 0.0, 1.0)

    def forward(self, request: torch.Tensor, models: torch.Tensor) -> torch.Tensor:
        """Scores ``(N, K)``."""
        return _expected_reward(models[:, :, F.ACC], self.p_met(request, models), self.miss_penalty)


class FusedMetNet(nn.Module):
    """:class:`~modi.agents.scorers.MetNet` with normalisation and the first layer folded into
    the pair features."""

    def __init__(self, pre: ImputedPairs, rest: nn.Module, miss_penalty: float) -> None:
        super().__init__()
        self.pre = pre
        self.rest = rest
        self.miss_penalty = float(miss_penalty)

    @classmethod
    def build(cls, net: MetNet) -> FusedMetNet | None:
        """Fuse ``net`` or return ``None``."""
        first = net.mlp[0]
        if not isinstance(first, nn.Linear) or first.bias is None:
            return None
        mean = net.norm_mean.detach().double()  # type: ignore[operator]
        std = net.norm_std.detach().double()  # type: ignore[operator]
        w1 = first.weight.detach().double()  # (hidden, H)
        b1 = first.bias.detach().double()
        w = w1.T / std[:, None]
        bias = b1 - (mean / std) @ w1.T
        rest = copy.deepcopy(nn.Sequential(*list(net.mlp)[1:]))
        if net.pairs.relative is not None:
            pre = ImputedPairs.with_relative(net.pairs, w, bias)
            return None if pre is None else cls(pre, rest, net.miss_penalty)
        pairs = ImputedPairs.probe(net.pairs)
        if pairs is None:
            return None
        return cls(pairs.then(w, bias), rest, net.miss_penalty)

    def p_met(self, request: torch.Tensor, models: torch.Tensor) -> torch.Tensor:
        """``P(met)`` per model, ``(N, K)``."""
        return torch.sigmoid(self.rest(self.pre(request, models)).squeeze(-1))

    def forward(self, request: torch.Tensor, models: torch.Tensor) -> torch.Tensor:
        """Scores ``(N, K)``."""
        return _expected_reward(models[:, :, F.ACC], self.p_met(request, models), self.miss_penalty)


def _fused_version(m: nn.Module) -> nn.Module | None:
    if type(m) is LinearScorer:
        return FusedStepLinearScorer.build(m)
    if type(m) is MetNet:
        return FusedMetNet.build(m)
    if type(m) is PairFeatures:
        return ImputedPairs.probe(m)
    return None


def plausible_inputs(
    n: int, k: int, seed: int = 0, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ``(request, models)`` blocks in the ranges the envs produce (built by
    :func:`modi.runtime.features.encode`), for checks."""
    rng = np.random.default_rng(seed)
    sla = rng.uniform(20, 500, n)
    t_in = rng.uniform(1, 300, n)
    mu = rng.uniform(1, 150, (n, k))
    srtt = rng.uniform(2, 400, n)
    obs = F.encode(
        sla,
        t_in,
        t_in,
        rng.uniform(10, 2000, n),
        rng.uniform(1, 300, n),
        rng.uniform(0, 100, n),
        rng.integers(0, 6, n),
        rng.uniform(0.8, 2.5, n),
        mu,
        rng.uniform(0, 5, (n, k)),
        rng.uniform(0.4, 0.85, (n, k)),
        srtt,
        srtt * rng.uniform(0.0, 0.6, n),
        # the client's download history, unknown (NaN) for about one request in five
        np.where(rng.random(n) < 0.2, F.UNKNOWN_HISTORY, rng.uniform(2, 600, n)),
        rng.uniform(0, 300, n),
        # its download/upload mismatch: unknown, exactly 0 (the gate open), or around the gate
        np.select(
            [rng.random(n) < 0.2, rng.random(n) < 0.3],
            [F.UNKNOWN_HISTORY, 0.0],
            rng.uniform(0.0, 0.2, n),
        ),
    )
    layout = F.ObsLayout(k)
    req = torch.as_tensor(np.ascontiguousarray(layout.request(obs)), dtype=dtype)
    mods = torch.as_tensor(np.ascontiguousarray(layout.models(obs)), dtype=dtype)
    return req, mods


def same_scores(a: nn.Module, b: nn.Module, ks: tuple[int, ...] = (1, 4, 11)) -> bool:
    """Whether two selector modules give the same scores on random plausible inputs."""
    with torch.no_grad():
        for i, k in enumerate(ks):
            r, m = plausible_inputs(512, k, seed=100 + i)
            sa = a(r, m)[1]
            sb = b(r, m)[1]
            if not torch.allclose(sa, sb, rtol=SCORE_RTOL, atol=SCORE_ATOL):
                log.info("fused scores differ by up to %.3g", float((sa - sb).abs().max()))
                return False
    return True


def fuse_selector(
    selector: nn.Module, num_models: int | None = None
) -> tuple[nn.Module, list[str]]:
    """A copy of ``selector`` (``(request, models) -> (action, scores)``) with every scorer part
    it recognises fused, and the names of what was fused; the original when nothing could be
    fused or the fused copy disagrees with it. ``num_models`` fixes the pool size of the check
    (pool-specific selectors); by default pools of 1, 4 and 11 models are tried."""
    fused = copy.deepcopy(selector)
    replaced: list[str] = []

    def visit(parent: nn.Module) -> None:
        for name, child in list(parent.named_children()):
            new = _fused_version(child)
            if new is not None:
                setattr(parent, name, new)
                replaced.append(type(child).__name__)
            else:
                visit(child)

    visit(fused)
    if not replaced:
        return selector, []
    fused.eval()
    ks = (1, 4, 11) if num_models is None else (num_models,)
    if not same_scores(selector, fused, ks):
        log.warning("fused graph disagrees with %s; exporting it unfused", replaced)
        return selector, []
    return fused, replaced
