"""ModiPick (§3.3) stage by stage on hand-worked examples, its ablations, its sampling, and the
online profiles it relies on (EWMA updates and re-evaluation of cold models)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from modi.agents.baselines import DynamicGreedy, make_policy
from modi.envs.model_selection import ModelSelectionEnv
from modi.envs.networks import GaussianOneWay
from modi.envs.pools import ModelPool, ModelSpec
from modi.envs.simulator import ModelSelectionSim
from modi.runtime.features import BUDGET, MU, SIGMA, ObsLayout, encode
from modi.runtime.modipick import MIN_DISTANCE_MS, modipick_select, modipick_stages
from modi.runtime.profiles import ProfileTracker

# --------------------------------------------------------------------------- Figure 4 example
# Three models, A(m3) > A(m1) > A(m2). T_U = 100 ms, T_threshold = 10 ms so T_L = 90 ms.
#   m1: A 0.70, μ 96, σ 5  -> μ+σ = 101 >= T_U: neither a base model nor eligible
#   m2: A 0.60, μ 86, σ 1  -> μ+σ = 87 < 100, μ−σ = 85 < 90: qualifies for Eq. 2
#   m3: A 0.80, μ 80, σ 3  -> μ+σ = 83 < 100, μ−σ = 77 < 90: qualifies, most accurate -> base
# T_E = [T_L − d, T_L + d], d = |T_L − μ(m3)| + σ(m3) = 10 + 3 = 13 -> [77, 103].
# M_E = {m2, m3} (m1's μ is in T_E but μ+σ >= T_U), as in Figure 4.
# U(m2) = 0.60 · (100 − 87) / |90 − 86| = 1.95;  U(m3) = 0.80 · (100 − 83) / |90 − 80| = 1.36.
FIG4_ACC = np.array([0.70, 0.60, 0.80])
FIG4_MU = np.array([96.0, 86.0, 80.0])
FIG4_SIGMA = np.array([5.0, 1.0, 3.0])
FIG4_BUDGET = np.array([100.0])
FIG4_THRESHOLD = 10.0
FIG4_U = np.array([0.0, 0.60 * 13 / 4, 0.80 * 17 / 10])
FIG4_PROB = FIG4_U / FIG4_U.sum()

# A second example for the ablations: M_E holds a model more accurate than the base.
#   fast: A 0.50, μ 5,  σ 0.1 -> qualifies for Eq. 2, but μ far below T_E
#   a:    A 0.60, μ 86, σ 1   -> qualifies, eligible
#   b:    A 0.80, μ 80, σ 3   -> base (T_E = [77, 103] as above), eligible
#   c:    A 0.90, μ 95, σ 1   -> μ−σ = 94 >= T_L: not a base candidate; μ ∈ T_E, 96 < T_U: eligible
#   d:    A 0.95, μ 99, σ 2   -> μ+σ = 101 >= T_U: excluded
ABL_ACC = np.array([0.50, 0.60, 0.80, 0.90, 0.95])
ABL_MU = np.array([5.0, 86.0, 80.0, 95.0, 99.0])
ABL_SIGMA = np.array([0.1, 1.0, 3.0, 1.0, 2.0])
ABL_ELIGIBLE = np.array([False, True, True, True, False])
ABL_U = np.array([0.0, 0.60 * 13 / 4, 0.80 * 17 / 10, 0.90 * 4 / 5, 0.0])


def test_figure4_stage_one_picks_the_most_accurate_qualifying_model() -> None:
    st_ = modipick_stages(FIG4_BUDGET, FIG4_MU, FIG4_SIGMA, FIG4_ACC, FIG4_THRESHOLD)
    assert st_.t_upper_ms.tolist() == [100.0]
    assert st_.t_lower_ms.tolist() == [90.0]
    assert st_.has_base.tolist() == [True]
    assert st_.base.tolist() == [2], "m3 is the base model in Figure 4"


def test_figure4_stage_two_builds_the_exploration_range_and_eligible_set() -> None:
    st_ = modipick_stages(FIG4_BUDGET, FIG4_MU, FIG4_SIGMA, FIG4_ACC, FIG4_THRESHOLD)
    assert st_.explore_lo_ms.tolist() == [77.0]
    assert st_.explore_hi_ms.tolist() == [103.0]
    assert st_.eligible.tolist() == [[False, True, True]], "M_E = {m2, m3}"


def test_figure4_stage_three_probabilities_follow_eqs_3_and_4() -> None:
    st_ = modipick_stages(FIG4_BUDGET, FIG4_MU, FIG4_SIGMA, FIG4_ACC, FIG4_THRESHOLD)
    np.testing.assert_allclose(st_.probability[0], FIG4_PROB, rtol=1e-12)
    assert st_.probability[0, 0] == 0.0
    # Closer to the soft limit wins over more accurate here: Pr(m2) ≈ 0.589 > Pr(m3) ≈ 0.411.
    assert st_.probability[0, 1] == pytest.approx(1.95 / 3.31)


def test_exploration_range_excludes_models_far_below_the_soft_limit() -> None:
    st_ = modipick_stages(FIG4_BUDGET, ABL_MU, ABL_SIGMA, ABL_ACC, FIG4_THRESHOLD)
    assert st_.base.tolist() == [2]
    assert st_.eligible[0].tolist() == ABL_ELIGIBLE.tolist()
    np.testing.assert_allclose(st_.probability[0], ABL_U / ABL_U.sum(), rtol=1e-12)


def test_rows_of_a_batch_are_decided_independently() -> None:
    budgets = np.array([100.0, 3.0, 60.0, 250.0])
    batch = modipick_stages(budgets, ABL_MU, ABL_SIGMA, ABL_ACC, FIG4_THRESHOLD)
    for i, b in enumerate(budgets):
        one = modipick_stages(np.array([b]), ABL_MU, ABL_SIGMA, ABL_ACC, FIG4_THRESHOLD)
        assert batch.base[i] == one.base[0]
        assert batch.eligible[i].tolist() == one.eligible[0].tolist()
        np.testing.assert_array_equal(batch.probability[i], one.probability[0])


def test_without_a_base_model_the_fastest_model_is_chosen() -> None:
    # T_U = 3 ms: no model has μ+σ < 3, so Eq. 2 has no solution; best effort = lowest μ.
    acc = np.array([0.9, 0.5, 0.7])
    mu = np.array([40.0, 3.5, 6.0])
    sigma = np.array([1.0, 0.2, 0.5])
    st_ = modipick_stages(np.array([3.0]), mu, sigma, acc, 10.0)
    assert st_.has_base.tolist() == [False]
    assert st_.base.tolist() == [1]
    assert st_.eligible.tolist() == [[False, True, False]]
    assert st_.probability.tolist() == [[0.0, 1.0, 0.0]]
    for variant in ("modipick", "related_random", "related_accurate"):
        picks = modipick_select(
            np.full(50, 3.0), mu, sigma, acc, np.linspace(0, 0.999, 50), 10.0, variant
        )
        assert set(picks.tolist()) == {1}, variant


def test_a_model_exactly_at_the_soft_limit_gets_a_finite_dominant_utility() -> None:
    acc = np.array([0.6, 0.8])
    mu = np.array([90.0, 80.0])  # the first sits exactly at T_L = 90
    sigma = np.array([1.0, 3.0])
    st_ = modipick_stages(np.array([100.0]), mu, sigma, acc, 10.0)
    u_at = 0.6 * (100 - 91) / MIN_DISTANCE_MS
    u_base = 0.8 * 17 / 10
    assert np.all(np.isfinite(st_.probability))
    np.testing.assert_allclose(st_.probability[0], [u_at, u_base] / np.float64(u_at + u_base))


@settings(deadline=None, max_examples=60)
@given(
    data=st.data(),
    k=st.integers(1, 6),
    n=st.integers(1, 8),
)
def test_zero_threshold_and_tight_profiles_give_dynamic_greedys_base(
    data: st.DataObject, k: int, n: int
) -> None:
    """§3.3.1: with T_threshold = 0 and σ < ε, Eq. 2's base model is Eq. 1's choice."""
    floats = st.floats(1.0, 300.0, allow_nan=False, width=32)
    mu = np.array(data.draw(st.lists(floats, min_size=k, max_size=k, unique=True)))
    acc = np.array(data.draw(st.lists(st.floats(0.0, 1.0, width=32), min_size=k, max_size=k)))
    sla = np.array(data.draw(st.lists(st.floats(20.0, 600.0, width=32), min_size=n, max_size=n)))
    t_in = np.array(data.draw(st.lists(st.floats(0.0, 200.0, width=32), min_size=n, max_size=n)))
    obs = encode(sla, t_in, t_in, 330.0, t_in, 0.0, 0.0, 1.0, mu, np.full(k, 1e-9), acc)
    layout = ObsLayout(k)
    budget = layout.request(obs)[:, BUDGET].astype(np.float64)
    mu32 = layout.models(obs)[0, :, MU].astype(np.float64)
    # Eq. 1 uses μ <= T_budget, Eq. 2 uses μ + σ < T_U: they may only differ at the boundary.
    assume(np.all(np.abs(budget[:, None] - mu32[None, :]) > 1e-6))
    models = layout.models(obs)
    stages = modipick_stages(
        budget, models[:, :, MU], models[:, :, SIGMA], models[:, :, 2], threshold_ms=0.0
    )
    greedy = DynamicGreedy().select(obs)
    np.testing.assert_array_equal(stages.base, greedy)


def test_related_accurate_picks_the_most_accurate_eligible_model() -> None:
    picks = modipick_select(
        np.full(20, 100.0),
        ABL_MU,
        ABL_SIGMA,
        ABL_ACC,
        np.linspace(0, 0.99, 20),
        10.0,
        "related_accurate",
    )
    # Model c (A 0.90) is in M_E but not the base; model d (A 0.95) is not eligible.
    assert set(picks.tolist()) == {3}


def _chi_square(counts: np.ndarray, prob: np.ndarray) -> float:
    support = prob > 0
    expected = prob[support] * counts.sum()
    return float((((counts[support] - expected) ** 2) / expected).sum())


N_SAMPLES = 20_000
# 99.9th percentile of chi-square with 2 degrees of freedom is 13.8; loose on purpose.
CHI2_LIMIT = 16.0


def test_related_random_samples_uniformly_over_the_eligible_set() -> None:
    u = np.random.default_rng(0).random(N_SAMPLES)
    picks = modipick_select(
        np.full(N_SAMPLES, 100.0), ABL_MU, ABL_SIGMA, ABL_ACC, u, 10.0, "related_random"
    )
    counts = np.bincount(picks, minlength=ABL_MU.size)
    assert counts[~ABL_ELIGIBLE].sum() == 0
    uniform = ABL_ELIGIBLE / ABL_ELIGIBLE.sum()
    assert _chi_square(counts, uniform) < CHI2_LIMIT, counts


def test_modipick_sampling_frequencies_match_its_probabilities() -> None:
    u = np.random.default_rng(1).random(N_SAMPLES)
    picks = modipick_select(np.full(N_SAMPLES, 100.0), ABL_MU, ABL_SIGMA, ABL_ACC, u, 10.0)
    counts = np.bincount(picks, minlength=ABL_MU.size)
    prob = ABL_U / ABL_U.sum()
    assert counts[prob == 0].sum() == 0
    assert _chi_square(counts, prob) < CHI2_LIMIT, (counts / N_SAMPLES, prob)


def test_modipick_policy_on_observations_samples_the_same_distribution() -> None:
    """The baseline policy reads T_U from the observation (budget column) and profiles from the
    model block; with T_budget = 100 it must reproduce the Figure 4 probabilities."""
    sla = np.full(N_SAMPLES, 140.0)
    t_in = np.full(N_SAMPLES, 20.0)  # T_U = 140 − 2·20 = 100
    obs = encode(sla, t_in, t_in, 330.0, t_in, 0.0, 0, 1.0, FIG4_MU, FIG4_SIGMA, FIG4_ACC)
    policy = make_policy("modipick", threshold_ms=FIG4_THRESHOLD)
    policy.reset(N_SAMPLES, seed=3)
    picks = policy.select(obs)  # type: ignore[union-attr]
    counts = np.bincount(picks, minlength=3)
    assert counts[0] == 0
    assert _chi_square(counts, FIG4_PROB) < CHI2_LIMIT, (counts / N_SAMPLES, FIG4_PROB)
    accurate = make_policy("related_accurate", threshold_ms=FIG4_THRESHOLD)
    assert set(accurate.select(obs[:10]).tolist()) == {2}  # type: ignore[union-attr]


def test_unknown_variant_is_refused() -> None:
    with pytest.raises(ValueError, match="variant 'greedy'"):
        modipick_select(FIG4_BUDGET, FIG4_MU, FIG4_SIGMA, FIG4_ACC, np.zeros(1), 10.0, "greedy")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- online profiles
def test_profile_tracker_ewma_update_by_hand() -> None:
    tr = ProfileTracker([10.0, 50.0], [2.0, 5.0], num_rows=2, alpha=0.1)
    tr.update(np.array([0]), np.array([0]), np.array([20.0]), step=3)
    # d = 20 − 10 = 10; μ = 10 + 0.1·10 = 11; var = 0.9 · (4 + 0.1·100) = 12.6
    assert tr.mu[0, 0] == pytest.approx(11.0)
    assert tr.var[0, 0] == pytest.approx(12.6)
    assert tr.sigma[0, 0] == pytest.approx(math.sqrt(12.6))
    assert tr.last_update.tolist() == [[3, 0], [0, 0]]
    # Untouched (row, model) pairs keep their initial profiles.
    assert tr.mu[1].tolist() == [10.0, 50.0] and tr.mu[0, 1] == 50.0
    assert tr.sigma[1].tolist() == [2.0, 5.0]
    # Second observation of the same model: d = 0 − 11 = −11.
    tr.update(np.array([0]), np.array([0]), np.array([0.0]), step=4)
    assert tr.mu[0, 0] == pytest.approx(11.0 - 1.1)
    assert tr.var[0, 0] == pytest.approx(0.9 * (12.6 + 0.1 * 121.0))
    # Batched update of several rows at once.
    tr.update(np.array([0, 1]), np.array([1, 0]), np.array([40.0, 10.0]), step=9)
    assert tr.mu[0, 1] == pytest.approx(49.0)
    assert tr.var[0, 1] == pytest.approx(0.9 * (25.0 + 0.1 * 100.0))
    assert tr.mu[1, 0] == 10.0 and tr.var[1, 0] == pytest.approx(0.9 * 4.0)
    assert tr.last_update.tolist() == [[4, 9], [9, 0]]
    assert tr.stale(step=10, max_age=6).tolist() == [[True, False], [False, True]]
    tr.reset(np.array([True, False]))
    assert tr.mu[0].tolist() == [10.0, 50.0] and tr.last_update[0].tolist() == [0, 0]
    assert tr.mu[1, 0] == 10.0 and tr.last_update[1].tolist() == [9, 0]


def _reprofile_pools() -> tuple[ModelPool, ModelPool]:
    believed = ModelPool(
        "believed",
        (
            ModelSpec("a", 0.5, 5.0, 1.0),
            ModelSpec("b", 0.7, 30.0, 2.0),
            ModelSpec("c", 0.9, 60.0, 3.0),
        ),
    )
    # The server's real times are deterministic (σ = 0) and differ from the profile, so every
    # re-evaluation moves μ by exactly α·(true − μ).
    actual = ModelPool(
        "actual",
        (
            ModelSpec("a", 0.5, 6.0, 0.0),
            ModelSpec("b", 0.7, 20.0, 0.0),
            ModelSpec("c", 0.9, 90.0, 0.0),
        ),
    )
    return believed, actual


EVERY = 5
ALPHA = 0.25


def _expected_mu(mu0: float, true: float, updates: int) -> float:
    mu = mu0
    for _ in range(updates):
        mu += ALPHA * (true - mu)
    return mu


@pytest.mark.parametrize("num_envs", [1, 2])
def test_cold_models_are_re_evaluated_every_reprofile_period(num_envs: int) -> None:
    believed, actual = _reprofile_pools()
    sim = ModelSelectionSim(
        believed,
        GaussianOneWay(20.0, 5.0),
        num_envs=num_envs,
        sla_ms=200.0,
        profile_alpha=ALPHA,
        reprofile_every=EVERY,
        true_pool=actual,
    )
    sim.reset(seed=0)
    layout = ObsLayout(3)
    always_a = np.zeros(num_envs, dtype=np.intp)
    for _ in range(EVERY - 1):
        sim.step(always_a)
    # Before the period ends, b and c were never run: untouched profiles, last_update 0.
    assert sim.tracker.last_update[:, 1:].tolist() == [[0, 0]] * num_envs
    assert sim.tracker.mu[:, 1:].tolist() == [[30.0, 60.0]] * num_envs
    sim.step(always_a)
    assert sim.tracker.last_update.tolist() == [[EVERY] * 3] * num_envs
    np.testing.assert_allclose(sim.tracker.mu[:, 1], _expected_mu(30.0, 20.0, 1))
    np.testing.assert_allclose(sim.tracker.mu[:, 2], _expected_mu(60.0, 90.0, 1))
    # Model a was run every step and is not re-profiled on top of that.
    np.testing.assert_allclose(sim.tracker.mu[:, 0], _expected_mu(5.0, 6.0, EVERY))
    # The next observation carries the re-evaluated profiles.
    np.testing.assert_allclose(
        layout.models(sim.obs)[:, :, MU], sim.tracker.mu.astype(np.float32), rtol=0
    )
    for _ in range(EVERY):
        sim.step(always_a)
    assert sim.tracker.last_update.tolist() == [[2 * EVERY] * 3] * num_envs
    np.testing.assert_allclose(sim.tracker.mu[:, 2], _expected_mu(60.0, 90.0, 2))


def test_single_env_fast_path_re_evaluates_cold_models_too() -> None:
    believed, actual = _reprofile_pools()
    env = ModelSelectionEnv(
        pool=believed,
        network=GaussianOneWay(20.0, 5.0),
        sla_ms=200.0,
        profile_alpha=ALPHA,
        reprofile_every=EVERY,
        true_pool=actual,
    )
    env.reset(seed=0)
    layout = ObsLayout(3)
    for _ in range(EVERY - 1):
        obs = env.step(0)[0]
    assert layout.models(obs)[2, MU] == pytest.approx(60.0)
    obs = env.step(0)[0]
    assert env.sim.tracker.last_update[0].tolist() == [EVERY] * 3
    assert layout.models(obs)[2, MU] == pytest.approx(_expected_mu(60.0, 90.0, 1))
    assert layout.models(obs)[1, MU] == pytest.approx(_expected_mu(30.0, 20.0, 1))


def test_reprofiling_can_be_turned_off() -> None:
    believed, actual = _reprofile_pools()
    sim = ModelSelectionSim(
        believed, GaussianOneWay(20.0, 5.0), reprofile_every=0, true_pool=actual
    )
    sim.reset(seed=0)
    for _ in range(50):
        sim.step(np.array([0]))
    assert sim.tracker.last_update[0, 1:].tolist() == [0, 0]
    assert sim.tracker.mu[0, 1:].tolist() == [30.0, 60.0]


# --------------------------------------------------------------------------- scalar rule
_times = st.floats(0.0, 300.0, allow_nan=False)


@settings(max_examples=400, deadline=None)
@given(
    k=st.integers(1, 140),
    seed=st.integers(0, 2**32 - 1),
    budget=st.floats(-50.0, 500.0, allow_nan=False),
    threshold=st.sampled_from([0.0, 5.0, 10.0, 40.0]),
    u=st.floats(0.0, 1.0, exclude_max=True),
    ties=st.booleans(),
)
def test_scalar_modipick_makes_the_batched_rules_choice(
    k: int, seed: int, budget: float, threshold: float, u: float, ties: bool
) -> None:
    """modipick_select_one (the serving path's batch-1 rule) picks exactly what the numpy
    modipick_select picks for the same uniform, on pools of any size, ties included."""
    from modi.runtime.modipick import modipick_select_one

    rng = np.random.default_rng(seed)
    mu = rng.uniform(0.5, 300.0, k)
    sigma = rng.uniform(0.0, 20.0, k)
    acc = rng.uniform(0.3, 0.9, k)
    if ties:  # duplicated profiles and accuracies exercise the tie-breaking of stage one
        mu = np.round(mu / 50.0) * 50.0 + 1.0
        acc = np.round(acc, 1)
    want = int(modipick_select(np.array([budget]), mu, sigma, acc, np.array([u]), threshold)[0])
    got = modipick_select_one(budget, mu.tolist(), sigma.tolist(), acc.tolist(), u, threshold)
    assert got == want, f"scalar rule chose {got}, numpy rule {want}"


def test_scalar_modipick_on_figure_4() -> None:
    """The scalar rule walks Figure 4: u below Pr(m2) picks m2, above it m3; never m1."""
    from modi.runtime.modipick import modipick_select_one

    args = (FIG4_MU.tolist(), FIG4_SIGMA.tolist(), FIG4_ACC.tolist())
    p2 = FIG4_PROB[1]
    assert modipick_select_one(100.0, *args, uniform=p2 * 0.99, threshold_ms=10.0) == 1
    assert modipick_select_one(100.0, *args, uniform=p2 * 1.01, threshold_ms=10.0) == 2
    # No model qualifies for Eq. 2: the fastest model outright.
    assert modipick_select_one(1.0, *args, uniform=0.5, threshold_ms=10.0) == 2
