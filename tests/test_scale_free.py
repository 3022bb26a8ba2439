"""The scale-free pair features (issue 13, item 2): the same request on another time scale is the
same problem to the scorer, the features stay in fixed ranges, and older saved selectors (without
them) still load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from modi.agents import scorers
from modi.agents.bandits import NeuralBandit, load_learned
from modi.agents.fused import (
    SCORE_ATOL,
    SCORE_RTOL,
    fuse_selector,
    plausible_inputs,
    same_scores,
)
from modi.agents.scorers import (
    _REL_GATED,
    _REL_HI,
    _REL_LO,
    DEFAULT_RELATIVE,
    GATE_WIDTH,
    NUM_PAIR_FEATURES,
    RELATIVE_FEATURES,
    RELATIVE_NAMES,
    ArgmaxSelector,
    MetNet,
    PairFeatures,
    relative_names,
)
from modi.runtime import features as F

#: Request columns and model columns that are durations (scaled together below).
TIME_REQUEST_COLS = (
    F.SLA, F.ELAPSED, F.T_INPUT, F.REMAINING, F.BUDGET, F.NET_MEAN, F.NET_STD, F.SRTT, F.RTTVAR,
    F.CLIENT_DL, F.CLIENT_DLVAR,
)  # fmt: skip
TIME_MODEL_COLS = (F.MU, F.SIGMA)
REL = {name: i for i, name in enumerate(RELATIVE_NAMES)}
MU_REL, BUDGET_REL, EXEC_Z = REL["mu_rel"], REL["budget_rel"], REL["exec_z"]


def _scaled(r: torch.Tensor, m: torch.Tensor, c: float) -> tuple[torch.Tensor, torch.Tensor]:
    r2, m2 = r.clone(), m.clone()
    known = r2[:, F.CLIENT_DL] >= 0  # the "no history" marker is not a duration
    for col in TIME_REQUEST_COLS:
        if col in (F.CLIENT_DL, F.CLIENT_DLVAR):
            r2[:, col] = torch.where(known, r2[:, col] * c, r2[:, col])
        else:
            r2[:, col] *= c
    for col in TIME_MODEL_COLS:
        m2[:, :, col] *= c
    return r2, m2


def test_relative_features_do_not_change_when_every_duration_scales() -> None:
    r, m = plausible_inputs(256, 6, seed=3, dtype=torch.float64)
    r[:, F.SLA] += 400.0  # above the 1 ms floors at every scale below
    r[:, F.REMAINING] += 400.0
    r[:, F.BUDGET] += 400.0
    m[:, :, F.SIGMA] += 0.5
    r[:, F.RTTVAR] += 1.0
    r[:, F.CLIENT_DLVAR] += 1.0
    pairs = PairFeatures(relative=RELATIVE_NAMES).double()
    base = pairs(r, m)[..., NUM_PAIR_FEATURES:]
    assert base.shape == (256, 6, len(RELATIVE_NAMES))
    for c in (2.0, 10.0):  # up from a request above every floor (1 ms, 0.05 ms)
        got = pairs(*_scaled(r, m, c))[..., NUM_PAIR_FEATURES:]
        assert torch.allclose(got, base, rtol=1e-9, atol=1e-9), c
    # ... while the plain headroom features move with the scale
    plain = pairs(*_scaled(r, m, 10.0))[..., :NUM_PAIR_FEATURES]
    assert not torch.allclose(plain, pairs(r, m)[..., :NUM_PAIR_FEATURES])


def test_relative_features_stay_in_their_ranges_on_extreme_requests() -> None:
    r, m = plausible_inputs(512, 5, seed=4)
    r[:128, F.REMAINING] = -50.0  # already late
    m[128:256, :, F.MU] = 1e5  # a model far slower than any budget
    m[256:384, :, F.SIGMA] = 0.0  # a perfectly steady model
    f = PairFeatures(relative=RELATIVE_NAMES)(r, m)[..., NUM_PAIR_FEATURES:]
    assert torch.isfinite(f).all()
    lo = torch.tensor([_REL_LO[x] for x in RELATIVE_NAMES])
    hi = torch.tensor([_REL_HI[x] for x in RELATIVE_NAMES])
    assert (f >= lo).all() and (f <= hi).all()
    assert len(RELATIVE_FEATURES) == len(_REL_LO) == len(_REL_GATED)


def test_exec_z_is_a_sharp_step_at_the_papers_budget_where_the_upload_predicts_the_download() -> (
    None
):
    # the papers' network: the download takes as long as the upload, so the budget is exact
    # and a model meets the SLA iff its run fits under it: exec_z crosses 0 exactly there
    r, m = plausible_inputs(1, 3, seed=5, dtype=torch.float64)
    r[0, F.REMAINING], r[0, F.T_INPUT], r[0, F.BUDGET] = 200.0, 80.0, 120.0
    budget = 120.0
    m[0, :, F.SIGMA] = 0.2
    r[0, F.SLOWDOWN] = 1.0
    m[0, :, F.MU] = torch.tensor([budget - 0.4, budget, budget + 0.4])
    # ... a client each of whose downloads took as long as its own request's upload
    # (client_dl_mismatch 0, feature schema v4): the gate is open
    r[0, F.CLIENT_MISMATCH] = 0.0
    pairs = PairFeatures(relative=RELATIVE_NAMES).double()
    z = pairs(r, m)[0, :, NUM_PAIR_FEATURES + EXEC_Z]
    assert z.tolist() == pytest.approx([2.0, 0.0, -2.0], abs=1e-4)
    # half open halfway to GATE_WIDTH
    r[0, F.CLIENT_MISMATCH] = 0.5 * GATE_WIDTH
    z = pairs(r, m)[0, :, NUM_PAIR_FEATURES + EXEC_Z]
    assert z.tolist() == pytest.approx([1.0, 0.0, -1.0], abs=1e-4)
    # a client whose downloads differ from their uploads (LTE at twice its RTT, a 30 KB image
    # up, 1 KB back: a mismatch of 0.1 or more): the upload says nothing exact about the
    # download, and the gated features are neutral
    for closed in (GATE_WIDTH, 0.1, 3.0):
        r[0, F.CLIENT_MISMATCH] = closed
        f = pairs(r, m)[0, :, NUM_PAIR_FEATURES:]
        assert (f[:, EXEC_Z] == 0).all() and (f[:, BUDGET_REL] == 0).all()
        assert (f[:, MU_REL] > 0).all()  # the ungated ones are unchanged
    # whatever the means say: downloads as long as uploads on average and uploads as long as
    # the one-way delay (what the v3 gate read) do not open it
    r[0, F.CLIENT_DL] = r[0, F.NET_MEAN] = 60.0
    r[0, F.SRTT] = 120.0
    assert (pairs(r, m)[0, :, NUM_PAIR_FEATURES + EXEC_Z] == 0).all()
    # nor is it open for a client's first request (no download history yet: -1 or NaN), and
    # NaN never reaches the features
    for unknown in (F.UNKNOWN_HISTORY, float("nan")):
        r[0, F.CLIENT_MISMATCH] = unknown
        f = pairs(r, m)[0, :, NUM_PAIR_FEATURES:]
        assert (f[:, EXEC_Z] == 0).all() and (f[:, BUDGET_REL] == 0).all()
        assert torch.isfinite(f).all() and (f[:, MU_REL] > 0).all()


@pytest.mark.parametrize("relative", [True, list(RELATIVE_NAMES), ["sigma_rel", "dl_z"]])
def test_relative_scorer_fuses_exactly(
    relative: bool | list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.manual_seed(0)
    net = MetNet(relative=relative)
    with torch.no_grad():
        net.norm_mean.normal_()  # type: ignore[operator]
        net.norm_std.uniform_(0.5, 2.0)  # type: ignore[operator]
    sel = ArgmaxSelector(net).eval()
    fused, what = fuse_selector(sel)
    assert what == ["MetNet"]
    assert same_scores(sel, fused)
    # and where the gate is open or partly open: clients whose downloads took about as long as
    # their own uploads
    r, m = plausible_inputs(256, 4, seed=7)
    g = torch.Generator().manual_seed(7)
    r[:, F.CLIENT_MISMATCH] = GATE_WIDTH * torch.rand(256, generator=g) * (r[:, 0] > 100)
    with torch.no_grad():
        a, b = sel(r, m)[1], fused(r, m)[1]
        assert torch.allclose(a, b, rtol=SCORE_RTOL, atol=SCORE_ATOL)
        if relative is True:  # these rows do open it: closing it (same inputs) changes scores
            monkeypatch.setattr(scorers, "GATE_WIDTH", 1e-12)
            closed = sel(r, m)[1]
            assert torch.isfinite(closed).all()
            assert not torch.allclose(a, closed, rtol=SCORE_RTOL, atol=SCORE_ATOL)


def test_relative_setting_names_the_features_or_is_refused() -> None:
    assert relative_names(True) == DEFAULT_RELATIVE
    assert relative_names(False) == relative_names([]) == ()
    assert relative_names(["net_z", "mu_rel"]) == ("mu_rel", "net_z")  # catalogue order
    with pytest.raises(ValueError, match=r"mu_rel.*got \['headroom_rel'\]"):
        relative_names(["headroom_rel"])
    with pytest.raises(ValueError, match="distinct"):
        NeuralBandit(relative=["exec_z", "exec_z"])
    with pytest.raises(ValueError, match=r"true/false or distinct names.*got 1"):
        relative_names(1)  # type: ignore[arg-type]  # `agent.relative=1` on the command line


def test_a_selector_saved_before_the_relative_features_loads_without_them(
    tmp_path: Path,
) -> None:
    nb = NeuralBandit(seed=0)
    path = nb.save(tmp_path / "old.pt")
    st = torch.load(path, weights_only=False)
    del st["hparams"]["relative"]  # a file from before the option existed
    torch.save(st, path)
    back = load_learned(path)
    assert isinstance(back, NeuralBandit)
    assert back.net.pairs.relative is None
    rel = NeuralBandit(seed=0, relative=["mu_rel", "exec_z"])
    back_rel = load_learned(rel.save(tmp_path / "rel.pt"))
    assert back_rel.net.pairs.relative.names == ("mu_rel", "exec_z")  # type: ignore[attr-defined]
    obs = np.zeros((1, F.obs_dim(3)), dtype=np.float32)
    assert back_rel.select(obs).shape == (1,)
