"""The linear theory fitted to plateaus: GLS on correlated gaps, a forms test valid at the boundary u = 0, an
interval for c², φ only where it means d/n, and the model-size regime decided by parameters against tokens.

Size, power and coverage are measured by simulation from a known answer (fixed seeds, numpy/scipy only).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.analysis.theory_fit import (
    compare_model_sizes,
    fit_linear_theory,
    gap_covariance_from_draws,
    gap_covariance_from_seeds,
    interpolation_regime,
    theory_gap,
)
from pipeline.theory import linear

FRACTIONS = np.array([0.0, 0.1, 0.3, 0.6, 1.0])
C2, CLEAN = 0.8, 2.0
# Plateaus fitted with one shared exponent move together: a common component as large as each one's own noise.
PLATEAU_NOISE = 0.01 * np.eye(FRACTIONS.size) + 0.01 * np.ones((FRACTIONS.size, FRACTIONS.size))


def _plateaus(u: float) -> np.ndarray:
    return CLEAN + C2 * (FRACTIONS**2 + FRACTIONS * (1 - FRACTIONS) * u)


def _observed_and_draws(rng, u: float, draws: int = 200) -> tuple[dict, np.ndarray]:
    """Plateaus measured once with correlated noise, and a joint bootstrap of them (same noise around the estimate)."""
    observed = _plateaus(u) + PLATEAU_NOISE @ rng.standard_normal(FRACTIONS.size)
    bootstrap = observed + (PLATEAU_NOISE @ rng.standard_normal((FRACTIONS.size, draws))).T
    return dict(zip(FRACTIONS.tolist(), observed.tolist())), bootstrap


def _fit_simulated(rng, u: float, replicate: int) -> dict:
    points, draws = _observed_and_draws(rng, u)
    return fit_linear_theory(points, gap_covariance_from_draws(draws, FRACTIONS), replicates=399, seed=replicate)


def test_forms_test_holds_its_level_at_the_boundary_u_0():
    rng = np.random.default_rng(20)
    p_values = np.array([_fit_simulated(rng, 0.0, r)["forms_test"]["p_value"] for r in range(600)])
    size = float(np.mean(p_values < 0.05))
    print(f"\nforms test, plateau draws, u = 0: rejection rate at 5% = {size:.3f} (600 data sets)")
    assert 0.02 <= size <= 0.08


def test_forms_test_has_power_when_u_is_positive():
    rng = np.random.default_rng(21)
    rejected = [_fit_simulated(rng, 0.2, r)["supported"] == "finite_n" for r in range(200)]
    power = float(np.mean(rejected))
    print(f"\nforms test, plateau draws, u = 0.2: power at 5% = {power:.3f} (200 data sets)")
    assert power >= 0.8


def test_c2_interval_covers_the_truth():
    rng = np.random.default_rng(22)
    covered = []
    for replicate in range(600):
        points, draws = _observed_and_draws(rng, 0.0)
        low, high = fit_linear_theory(points, gap_covariance_from_draws(draws, FRACTIONS),
                                      replicates=19)["asymptotic"]["c2_ci"]
        covered.append(low <= C2 <= high)
    coverage = float(np.mean(covered))
    print(f"\nc2 95% interval, plateau draws: coverage = {coverage:.3f} (600 data sets)")
    assert 0.90 <= coverage <= 0.99


def test_forms_test_on_losses_at_a_budget_with_two_seeds_holds_its_level():
    """Seeds give the covariance with few degrees of freedom (5 here): the bootstrap redraws its scale."""
    rng = np.random.default_rng(23)
    rejected, covered = [], []
    for replicate in range(600):
        seeds = {p: (_plateaus(0.0)[i] + 0.02 * rng.standard_normal(2)).tolist() for i, p in enumerate(FRACTIONS)}
        points = {p: float(np.mean(v)) for p, v in seeds.items()}
        result = fit_linear_theory(points, gap_covariance_from_seeds(seeds), plateaus=False, replicates=399,
                                   seed=replicate)
        rejected.append(result["forms_test"]["p_value"] < 0.05)
        covered.append(result["asymptotic"]["c2_ci"][0] <= C2 <= result["asymptotic"]["c2_ci"][1])
    print(f"\nforms test, 2 seeds per cell, u = 0: rejection rate {np.mean(rejected):.3f}; "
          f"c2 coverage {np.mean(covered):.3f} (600 data sets)")
    assert 0.02 <= np.mean(rejected) <= 0.08
    assert 0.90 <= np.mean(covered) <= 0.99


def test_gls_recovers_c2_and_u_and_phi_only_at_a_budget():
    rng = np.random.default_rng(24)
    points, draws = _observed_and_draws(rng, 0.3, draws=400)
    covariance = gap_covariance_from_draws(draws, FRACTIONS)
    on_plateaus = fit_linear_theory(points, covariance)
    finite = on_plateaus["finite_n"]
    assert on_plateaus["supported"] == "finite_n" and "not the finite-n phi" in on_plateaus["verdict"]
    assert finite["c2"] == pytest.approx(C2, rel=0.1) and finite["u"] == pytest.approx(0.3, abs=0.1)
    assert finite["phi"] is None and "not phi" in finite["u_meaning"]
    assert finite["c2_ci"][0] <= finite["c2"] <= finite["c2_ci"][1]
    at_budget = fit_linear_theory(points, covariance, plateaus=False)["finite_n"]
    assert at_budget["phi"] == pytest.approx(at_budget["u"] / (1 + at_budget["u"]))
    drawn = theory_gap(finite, FRACTIONS[1:])
    expected = linear.isotropic_mixture_risk(finite["u"] / (1 + finite["u"]), FRACTIONS[1:], finite["c2"], 0.0)
    np.testing.assert_allclose(drawn, expected)
    json.dumps(on_plateaus)


def test_without_a_covariance_the_forms_are_fitted_but_not_compared():
    result = fit_linear_theory({0.0: 3.0, 0.2: 3.05, 0.5: 3.3, 1.0: 3.9})
    assert result["supported"] is None and result["forms_test"] is None
    assert "not compared" in result["verdict"] and result["asymptotic"]["c2_ci"] is None
    assert result["asymptotic"]["c2"] > 0
    one = fit_linear_theory({0.0: 3.0, 0.5: 3.2}, {"matrix": [[1e-4]], "dof": 10, "source": "test"})
    assert one["supported"] is None and "needs at least 2" in one["verdict"] and one["asymptotic"]["c2_ci"]
    helped = fit_linear_theory({0.0: 3.0, 0.5: 2.9, 1.0: 2.8})
    assert helped["asymptotic"]["c2"] == 0 and "warning" in helped


def test_covariance_from_draws_is_the_covariance_of_the_gaps():
    rng = np.random.default_rng(25)
    shuffled = [0.6, 0.0, 1.0, 0.1, 0.3]  # draws come in the order of `fractions`, whatever it is
    order = [list(FRACTIONS).index(p) for p in shuffled]
    draws = (PLATEAU_NOISE @ rng.standard_normal((FRACTIONS.size, 20000))).T
    draws[5, 2] = np.nan  # a failed refit is dropped, not propagated
    covariance = gap_covariance_from_draws(draws[:, order], shuffled)
    difference = np.c_[-np.ones(4), np.eye(4)]  # gaps E_p − E_0 of the ascending fractions
    truth = difference @ PLATEAU_NOISE @ PLATEAU_NOISE.T @ difference.T
    np.testing.assert_allclose(covariance["matrix"], truth, atol=0.05 * truth.max())
    assert covariance["dof"] == 20000 - 2
    assert gap_covariance_from_draws(None, shuffled) is None
    assert gap_covariance_from_draws(draws[:5], shuffled) is None, "too few draws to estimate a covariance"
    assert gap_covariance_from_draws(np.ones((50, 5)), shuffled) is None, "draws that do not vary"
    with pytest.raises(ValueError, match="one per fraction"):
        gap_covariance_from_draws(draws[:, :3], shuffled)


def test_covariance_from_seeds_pools_the_cells_and_shares_the_clean_mean():
    seeds = {0.0: [1.0, 1.2, 1.1], 0.5: [2.0, 2.2], 1.0: [3.0, 3.4]}
    covariance = gap_covariance_from_seeds(seeds)
    pooled = (0.02 + 0.02 + 0.08) / 4
    np.testing.assert_allclose(covariance["matrix"],
                               [[pooled * (1 / 2 + 1 / 3), pooled / 3], [pooled / 3, pooled * (1 / 2 + 1 / 3)]])
    assert covariance["dof"] == 4
    assert gap_covariance_from_seeds({0.0: [1.0], 0.5: [2.0]}) is None, "one seed per cell: no variance"
    assert gap_covariance_from_seeds({0.0: [1.0, 1.0], 0.5: [2.0, 2.0]}) is None, "seeds that agree exactly"


def test_interpolation_regime_follows_parameters_against_tokens():
    assert interpolation_regime([10, 20], 100)["regime"] == "below"
    assert interpolation_regime([120_000, 1_990_000], 160_000)["regime"] == "straddles"
    above = interpolation_regime([540_000, 1_990_000], 160_000)
    assert above["regime"] == "above" and "more parameters than tokens" in above["why"]


def test_model_sizes_are_predicted_in_both_regimes_and_the_counts_pick_one():
    # The collapse gap grows with size: what the random-projection model predicts below the threshold.
    plateaus = {10**5: {0.0: 3.0, 0.3: 3.05}, 4 * 10**5: {0.0: 2.8, 0.3: 2.9}, 16 * 10**5: {0.0: 2.6, 0.3: 2.8}}
    below = compare_model_sizes(plateaus, tokens=10**7)
    above = compare_model_sizes(plateaus, tokens=10**4)
    json.dumps(below)
    assert below["applies"] == "below" and above["applies"] == "above"
    for result in (below, above):
        predicted = result["fractions"]["0.3"]["predicted"]
        assert predicted["below"]["gap_order"] == sorted(plateaus), "below: larger models, larger gaps"
        assert predicted["above"]["gap_order"] == sorted(plateaus, reverse=True), "above: larger, smaller gaps"
        assert predicted["below"]["gap_order_agrees"] and not predicted["above"]["gap_order_agrees"]
    assert below["fractions"]["0.3"]["observed_gap_order"] == sorted(plateaus)
    straddling = compare_model_sizes(plateaus, tokens=10**6)
    assert straddling["applies"] == "straddles" and "straddles" in straddling["fractions"]["0.3"]["predicted"]
    assert straddling["projection_sizes"]["straddles"]["1600000"] > 50 > straddling["projection_sizes"]["straddles"]["400000"]
    with pytest.raises(ValueError, match="two model sizes"):
        compare_model_sizes({1: {0.0: 1.0}}, tokens=10)
