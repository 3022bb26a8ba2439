"""``agent.pair_accuracy``: a P(met) scorer that does not read the model's accuracy predicts the
same for two models that differ only in accuracy, fuses exactly, and saves and loads the option
(a file from before the option loads with the accuracy read, as it was trained)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from modi.agents.bandits import NeuralBandit, load_learned
from modi.agents.fused import fuse_selector, plausible_inputs, same_scores
from modi.agents.scorers import NUM_PAIR_FEATURES, ArgmaxSelector, MetNet
from modi.runtime import features as F


def _randomised(net: MetNet) -> MetNet:
    torch.manual_seed(0)
    with torch.no_grad():
        for p in net.mlp.parameters():
            p.normal_()
        net.norm_mean.normal_()  # type: ignore[operator]
        net.norm_std.uniform_(0.5, 2.0)  # type: ignore[operator]
    return net


@pytest.mark.parametrize("relative", [False, True])
def test_p_met_ignores_the_accuracy_only_without_it(relative: bool) -> None:
    r, m = plausible_inputs(128, 5, seed=3)
    other = m.clone()
    other[:, :, F.ACC] = torch.rand(other.shape[:2], generator=torch.Generator().manual_seed(1))
    blind = _randomised(MetNet(relative=relative, accuracy=False))
    seeing = _randomised(MetNet(relative=relative))
    assert blind.pairs.num_features == seeing.pairs.num_features - 1
    assert blind.pairs.num_features == NUM_PAIR_FEATURES - 1 + (2 if relative else 0)
    with torch.no_grad():
        assert torch.equal(blind.p_met(r, m), blind.p_met(r, other))
        assert not torch.allclose(seeing.p_met(r, m), seeing.p_met(r, other))
        # the score still weighs P(met) by the accuracy
        assert not torch.allclose(blind(r, m), blind(r, other))


@pytest.mark.parametrize("relative", [False, True])
def test_scorer_without_accuracy_fuses_exactly(relative: bool) -> None:
    sel = ArgmaxSelector(_randomised(MetNet(relative=relative, accuracy=False))).eval()
    fused, what = fuse_selector(sel)
    assert what == ["MetNet"]
    assert same_scores(sel, fused)


def test_pair_accuracy_is_saved_and_old_files_read_the_accuracy(tmp_path: Path) -> None:
    back = load_learned(NeuralBandit(seed=0, pair_accuracy=False).save(tmp_path / "blind.pt"))
    assert isinstance(back, NeuralBandit)
    assert back.hparams["pair_accuracy"] is False
    assert back.net.pairs.affine.accuracy is False
    path = NeuralBandit(seed=0).save(tmp_path / "old.pt")
    st = torch.load(path, weights_only=False)
    del st["hparams"]["pair_accuracy"]  # a file from before the option existed
    torch.save(st, path)
    old = load_learned(path)
    assert isinstance(old, NeuralBandit)
    assert old.net.pairs.affine.accuracy is True
